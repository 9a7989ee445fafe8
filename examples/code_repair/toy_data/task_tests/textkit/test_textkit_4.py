from textkit import to_kebab, to_snake


def test_digit_before_capital_splits():
    assert to_snake("version2Beta") == "version2_beta"
    assert to_kebab("utf8String") == "utf8-string"
