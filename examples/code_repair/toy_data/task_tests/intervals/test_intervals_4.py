from intervals.dates import days_in_month


def test_month_lengths():
    assert days_in_month(2023, 1) == 31
    assert days_in_month(2023, 6) == 30


def test_december():
    assert days_in_month(2023, 12) == 31
