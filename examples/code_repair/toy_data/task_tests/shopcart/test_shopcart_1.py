from shopcart.cart import Cart
from shopcart.inventory import Inventory, Product


def make_inventory():
    inventory = Inventory()
    inventory.add_product(Product("apple", "Apple", 50), 100)
    inventory.add_product(Product("pear", "Pear", 80), 3)
    return inventory


def test_reserve_all_remaining_units():
    inventory = make_inventory()
    Cart(inventory).add("pear", 3)
    assert inventory.available("pear") == 0
