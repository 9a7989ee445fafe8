from textkit import is_palindrome


def test_palindrome_ignores_case():
    assert is_palindrome("Never odd or even")
    assert is_palindrome("Racecar")
