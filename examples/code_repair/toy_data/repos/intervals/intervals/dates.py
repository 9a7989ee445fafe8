"""Calendar helpers on (year, month, day) tuples of the Gregorian calendar."""

from __future__ import annotations

MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def is_leap_year(year: int) -> bool:
    """Every 4th year, except the centuries that are not divisible by 400."""
    return year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)


def days_in_month(year: int, month: int) -> int:
    if not 1 <= month <= 12:
        raise ValueError(f"month must be 1..12, got {month}")
    if month == 2 and is_leap_year(year):
        return 29
    return MONTH_DAYS[month - 1]


def day_of_year(year: int, month: int, day: int) -> int:
    """1 for January 1st, 365 or 366 for December 31st."""
    return sum(days_in_month(year, m) for m in range(1, month)) + day


def add_days(year: int, month: int, day: int, days: int) -> tuple[int, int, int]:
    """The date `days` (>= 0) days after the given one."""
    day += days
    while day > days_in_month(year, month):
        day -= days_in_month(year, month)
        month += 1
        if month > 12:
            month = 1
            year += 1
    return year, month, day


def weekday(year: int, month: int, day: int) -> str:
    """Name of the weekday of a date from 2000 on, counting days from 2000-01-01 (a Saturday)."""
    days = 0
    for y in range(2000, year):
        days += 366 if is_leap_year(y) else 365
    days += day_of_year(year, month, day) - 1
    return WEEKDAYS[(days + 5) % 7]
