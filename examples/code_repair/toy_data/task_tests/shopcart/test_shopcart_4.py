from shopcart.cart import Cart
from shopcart.inventory import Inventory, Product


def make_inventory():
    inventory = Inventory()
    inventory.add_product(Product("apple", "Apple", 50), 100)
    inventory.add_product(Product("pear", "Pear", 80), 3)
    return inventory


def test_remove_returns_stock():
    inventory = make_inventory()
    cart = Cart(inventory)
    cart.add("apple", 5)
    cart.remove("apple", 2)
    assert inventory.available("apple") == 97
    assert cart.item_count() == 3
