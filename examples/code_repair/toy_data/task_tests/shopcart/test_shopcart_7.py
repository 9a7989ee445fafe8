from shopcart.cart import Cart
from shopcart.inventory import Inventory, Product


def make_inventory():
    inventory = Inventory()
    inventory.add_product(Product("apple", "Apple", 50), 100)
    inventory.add_product(Product("pear", "Pear", 80), 3)
    return inventory


def test_fifty_percent_coupon():
    cart = Cart(make_inventory())
    cart.add("apple", 2)
    cart.apply_coupon(50)
    assert cart.total() == 54
