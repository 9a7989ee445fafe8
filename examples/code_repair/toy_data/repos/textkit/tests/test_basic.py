from textkit import center, to_camel, to_snake, top_words, truncate, word_count, wrap


def test_to_snake():
    assert to_snake("someName") == "some_name"


def test_to_camel():
    assert to_camel("some_long_name") == "someLongName"


def test_truncate_short_text_unchanged():
    assert truncate("hello", 10) == "hello"


def test_wrap():
    assert wrap("the quick brown fox", 10) == ["the quick", "brown fox"]


def test_center_even():
    assert center("ab", 6, "*") == "**ab**"


def test_word_count():
    assert word_count("It's a fine day, isn't it?") == 6


def test_top_words():
    assert top_words("b a b c c b", 2, skip_stop_words=False) == [("b", 3), ("c", 2)]
