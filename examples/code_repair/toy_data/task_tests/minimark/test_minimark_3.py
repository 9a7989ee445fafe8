from minimark.blocks import render


def test_heading_id_uses_dashes():
    assert render("## Getting Started") == '<h2 id="getting-started">Getting Started</h2>'
