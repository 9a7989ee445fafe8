from textkit import dedent_lines


def test_dedent_keeps_relative_indentation():
    assert dedent_lines(["  a", "    b"]) == ["a", "  b"]
