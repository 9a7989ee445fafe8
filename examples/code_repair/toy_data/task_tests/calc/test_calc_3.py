from calc import evaluate


def test_power_operator():
    assert evaluate("2 ^ 3") == 8
