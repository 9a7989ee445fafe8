from textkit import wrap


def test_line_of_exactly_width_fits():
    assert wrap("aaaa bbbbb", 10) == ["aaaa bbbbb"]
