"""An inventory and shopping-cart model (money in integer cents)."""
