from intervals.interval import Interval


def test_end_is_excluded():
    assert not Interval(0, 10).contains(10)
    assert Interval(0, 10).contains(9.5)
