from calc import evaluate


def test_divide_by_negative():
    assert evaluate("8 / -2") == -4
