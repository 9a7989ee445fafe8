from calc import evaluate, tokenize


def test_names_with_digits():
    assert evaluate("x2 + 1", {"x2": 4}) == 5


def test_name_token_keeps_digits():
    assert [token.text for token in tokenize("rate_3")] == ["rate_3"]
