from shopcart.pricing import add_tax, percent_of


def test_tax_rounds_to_nearest_cent():
    assert add_tax(1010) == 1091


def test_percent_of_rounds_half_up():
    assert percent_of(5, 50) == 3
