from minimark.escape import escape_html


def test_brackets_escaped_once():
    assert escape_html("<b>") == "&lt;b&gt;"
    assert escape_html("a < b & c") == "a &lt; b &amp; c"
