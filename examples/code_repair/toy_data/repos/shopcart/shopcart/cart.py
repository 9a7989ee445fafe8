"""A shopping cart that reserves stock as items are added."""

from __future__ import annotations

from shopcart.inventory import Inventory
from shopcart.pricing import add_tax, apply_discount, bulk_discount_percent


class Cart:
    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory
        self.lines: dict[str, int] = {}
        self.coupon_percent = 0

    def add(self, sku: str, quantity: int = 1) -> None:
        """Add `quantity` units of `sku`, reserving them in the inventory."""
        self.inventory.reserve(sku, quantity)
        self.lines[sku] = self.lines.get(sku, 0) + quantity

    def remove(self, sku: str, quantity: int | None = None) -> None:
        """Remove `quantity` units of `sku` (all of them when None) and put them back into stock."""
        held = self.lines.get(sku, 0)
        if quantity is None or quantity >= held:
            quantity = held
        self.inventory.release(sku, quantity)
        remaining = held - quantity
        if remaining:
            self.lines[sku] = remaining
        else:
            self.lines.pop(sku, None)

    def item_count(self) -> int:
        return sum(self.lines.values())

    def line_total(self, sku: str) -> int:
        """Price of one cart line in cents, after the bulk discount."""
        quantity = self.lines[sku]
        price = self.inventory.products[sku].price_cents
        return apply_discount(price * quantity, bulk_discount_percent(quantity))

    def subtotal(self) -> int:
        return sum(self.line_total(sku) for sku in self.lines)

    def apply_coupon(self, percent: int) -> None:
        """Coupons take 1 to 50 percent off the subtotal."""
        if not 0 < percent <= 50:
            raise ValueError("a coupon gives between 1 and 50 percent off")
        self.coupon_percent = percent

    def total(self) -> int:
        """The subtotal after the coupon, plus tax."""
        discounted = apply_discount(self.subtotal(), self.coupon_percent)
        return add_tax(discounted)
