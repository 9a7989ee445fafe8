from intervals.dates import add_days


def test_into_december():
    assert add_days(2023, 11, 30, 1) == (2023, 12, 1)
    assert add_days(2023, 11, 20, 20) == (2023, 12, 10)
