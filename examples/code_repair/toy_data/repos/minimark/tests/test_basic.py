from minimark.blocks import render
from minimark.escape import escape_html
from minimark.inline import render_inline


def test_paragraph():
    assert render("hello\nworld") == "<p>hello world</p>"


def test_heading():
    assert render("# Title") == '<h1 id="title">Title</h1>'


def test_bold():
    assert render_inline("a **b** c") == "a <strong>b</strong> c"


def test_code_span():
    assert render_inline("use `x < y`") == "use <code>x &lt; y</code>"


def test_list():
    assert render("- one\n- two") == "<ul><li>one</li><li>two</li></ul>"


def test_escape_ampersand():
    assert escape_html("a & b") == "a &amp; b"
