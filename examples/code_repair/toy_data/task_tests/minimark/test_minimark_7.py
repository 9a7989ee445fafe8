from minimark.blocks import render


def test_code_block_keeps_lines():
    assert render("```\na = 1\nb = 2\n```") == "<pre><code>a = 1\nb = 2</code></pre>"
