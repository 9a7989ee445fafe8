from intervals.dates import weekday


def test_weekday_after_2000():
    assert weekday(2024, 3, 15) == "Friday"
    assert weekday(2001, 1, 1) == "Monday"
