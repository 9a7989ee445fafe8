from intervals.dates import days_in_month, is_leap_year


def test_year_divisible_by_400_is_leap():
    assert is_leap_year(2000)
    assert not is_leap_year(1900)
    assert days_in_month(2000, 2) == 29
