from minimark.blocks import render


def test_star_bullets():
    assert render("* one\n* two") == "<ul><li>one</li><li>two</li></ul>"
