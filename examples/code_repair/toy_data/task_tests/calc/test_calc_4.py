from calc import evaluate


def test_unary_minus():
    assert evaluate("-5 + 2") == -3
    assert evaluate("4 * -2") == -8
