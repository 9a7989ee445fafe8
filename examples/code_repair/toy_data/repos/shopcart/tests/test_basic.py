import pytest

from shopcart.cart import Cart
from shopcart.inventory import Inventory, OutOfStock, Product
from shopcart.pricing import format_cents


def make_inventory():
    inventory = Inventory()
    inventory.add_product(Product("apple", "Apple", 50), 100)
    inventory.add_product(Product("pear", "Pear", 80), 3)
    return inventory


def test_add_reserves_stock():
    inventory = make_inventory()
    cart = Cart(inventory)
    cart.add("apple", 4)
    assert inventory.available("apple") == 96
    assert cart.item_count() == 4


def test_out_of_stock():
    cart = Cart(make_inventory())
    with pytest.raises(OutOfStock):
        cart.add("pear", 4)


def test_subtotal_without_discount():
    cart = Cart(make_inventory())
    cart.add("apple", 2)
    cart.add("pear", 1)
    assert cart.subtotal() == 180


def test_total_includes_tax():
    cart = Cart(make_inventory())
    cart.add("apple", 2)
    assert cart.total() == 108


def test_format_cents():
    assert format_cents(1234) == "$12.34"
