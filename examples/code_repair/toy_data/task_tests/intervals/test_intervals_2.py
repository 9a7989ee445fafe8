from intervals.interval import Interval


def test_disjoint_intervals_do_not_overlap():
    assert not Interval(0, 2).overlaps(Interval(5, 7))


def test_intersection_of_disjoint_is_none():
    assert Interval(0, 2).intersection(Interval(5, 7)) is None
