import pytest

from calc import EvalError, evaluate, tokenize


def test_tokenize_simple():
    assert [token.text for token in tokenize("1 + 23")] == ["1", "+", "23"]


def test_addition():
    assert evaluate("1 + 2") == 3


def test_precedence():
    assert evaluate("2 + 3 * 4") == 14


def test_parentheses():
    assert evaluate("(2 + 3) * 4") == 20


def test_variables():
    assert evaluate("x * 2", {"x": 5}) == 10


def test_function_call():
    assert evaluate("sqrt(16)") == 4


def test_division_by_zero():
    with pytest.raises(EvalError):
        evaluate("1 / 0")
