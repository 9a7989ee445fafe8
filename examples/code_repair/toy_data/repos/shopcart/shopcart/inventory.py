"""Products and their stock levels."""

from __future__ import annotations

from dataclasses import dataclass, field


class OutOfStock(Exception):
    """Raised when more units are requested than are in stock."""


@dataclass
class Product:
    sku: str
    name: str
    price_cents: int


@dataclass
class Inventory:
    products: dict[str, Product] = field(default_factory=dict)
    stock: dict[str, int] = field(default_factory=dict)

    def add_product(self, product: Product, quantity: int = 0) -> None:
        self.products[product.sku] = product
        self.stock[product.sku] = self.stock.get(product.sku, 0) + quantity

    def available(self, sku: str) -> int:
        return self.stock.get(sku, 0)

    def reserve(self, sku: str, quantity: int) -> None:
        """Take `quantity` units out of stock, or raise OutOfStock."""
        if quantity <= 0:
            raise ValueError("quantity must be positive")
        if self.available(sku) < quantity:
            raise OutOfStock(f"only {self.available(sku)} of {sku} left")
        self.stock[sku] -= quantity

    def release(self, sku: str, quantity: int) -> None:
        """Put `quantity` units back into stock."""
        self.stock[sku] = self.available(sku) + quantity

    def low_stock(self, threshold: int = 5) -> list[str]:
        """SKUs with fewer than `threshold` units left, sorted."""
        return sorted(sku for sku, count in self.stock.items() if count < threshold)
