from textkit import truncate


def test_truncate_respects_width():
    assert truncate("hello world", 8) == "hello..."
    assert len(truncate("a" * 50, 20)) == 20
