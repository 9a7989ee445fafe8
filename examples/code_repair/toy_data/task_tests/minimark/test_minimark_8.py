from minimark.blocks import render


def test_heading_ending_with_hash():
    assert render("# Learn C#") == '<h1 id="learn-c">Learn C#</h1>'
