from minimark.inline import render_inline


def test_two_italic_spans():
    assert render_inline("*a* and *b*") == "<em>a</em> and <em>b</em>"
