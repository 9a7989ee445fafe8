from minimark.inline import render_inline


def test_link_target_and_text():
    assert render_inline("see [docs](http://x.org)") == 'see <a href="http://x.org">docs</a>'
