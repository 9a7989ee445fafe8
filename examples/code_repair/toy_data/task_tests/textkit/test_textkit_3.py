from textkit import center


def test_center_odd_padding_goes_right():
    assert center("ab", 5, "*") == "*ab**"
