"""Discounts, tax and formatting, all in integer cents."""

from __future__ import annotations

TAX_RATE_PERCENT = 8


def percent_of(amount_cents: int, percent: float) -> int:
    """`percent` % of `amount_cents`, rounded half up to a whole cent."""
    return int(amount_cents * percent / 100 + 0.5)


def apply_discount(amount_cents: int, percent: float) -> int:
    """The amount after a discount of `percent` % (0 to 100)."""
    if not 0 <= percent <= 100:
        raise ValueError("a discount is between 0 and 100 percent")
    return amount_cents - percent_of(amount_cents, percent)


def bulk_discount_percent(quantity: int) -> int:
    """10 % off from 10 units of one product, 20 % off from 50 units."""
    if quantity >= 50:
        return 20
    if quantity >= 10:
        return 10
    return 0


def add_tax(amount_cents: int, rate_percent: float = TAX_RATE_PERCENT) -> int:
    return amount_cents + percent_of(amount_cents, rate_percent)


def format_cents(amount_cents: int) -> str:
    """1234 -> "$12.34"; negative amounts get a leading minus: -250 -> "-$2.50"."""
    sign = "-" if amount_cents < 0 else ""
    dollars, cents = divmod(abs(amount_cents), 100)
    return f"{sign}${dollars}.{cents:02d}"
