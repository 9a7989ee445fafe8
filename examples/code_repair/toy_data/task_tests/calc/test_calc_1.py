from calc import evaluate


def test_subtraction_order():
    assert evaluate("10 - 4") == 6
    assert evaluate("3 - 5") == -2
