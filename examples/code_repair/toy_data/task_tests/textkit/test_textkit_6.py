from textkit import top_words


def test_most_frequent_first():
    assert top_words("x y y z z z", 1) == [("z", 3)]
