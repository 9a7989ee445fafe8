from calc import evaluate


def test_decimal_numbers():
    assert evaluate("1.5 * 2") == 3
    assert evaluate("0.25 + .5") == 0.75
