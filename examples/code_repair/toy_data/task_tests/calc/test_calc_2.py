from calc import evaluate


def test_subtraction_is_left_associative():
    assert evaluate("10 - 4 - 3") == 3


def test_power_is_right_associative():
    assert evaluate("2 ^ 3 ^ 2") == 512
