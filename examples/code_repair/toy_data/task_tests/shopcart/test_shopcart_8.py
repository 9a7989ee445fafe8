from shopcart.cart import Cart
from shopcart.inventory import Inventory, Product


def make_inventory():
    inventory = Inventory()
    inventory.add_product(Product("apple", "Apple", 50), 100)
    inventory.add_product(Product("pear", "Pear", 80), 3)
    return inventory


def test_low_stock_default_threshold():
    assert make_inventory().low_stock() == ["pear"]
