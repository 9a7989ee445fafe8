from intervals.dates import add_days, days_in_month, is_leap_year, weekday
from intervals.interval import Interval, merge


def test_length():
    assert Interval(2, 5).length == 3


def test_contains_start():
    assert Interval(0, 10).contains(0)


def test_merge_overlapping():
    assert merge([Interval(5, 8), Interval(1, 3), Interval(2, 4)]) == [Interval(1, 4), Interval(5, 8)]


def test_leap_years():
    assert is_leap_year(2024)
    assert not is_leap_year(2023)


def test_days_in_april():
    assert days_in_month(2023, 4) == 30


def test_add_days_within_month():
    assert add_days(2023, 3, 10, 5) == (2023, 3, 15)


def test_weekday_of_epoch():
    assert weekday(2000, 1, 1) == "Saturday"
