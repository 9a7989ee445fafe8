from minimark.blocks import render


def test_level_six_heading():
    assert render("###### Small") == '<h6 id="small">Small</h6>'
