from calc import evaluate


def test_modulo_precedence():
    assert evaluate("1 + 7 % 4") == 4
    assert evaluate("10 - 9 % 4") == 9
