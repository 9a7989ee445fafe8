from shopcart.pricing import format_cents


def test_format_negative_amount():
    assert format_cents(-250) == "-$2.50"
