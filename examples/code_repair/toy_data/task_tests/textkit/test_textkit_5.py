from textkit import to_pascal


def test_pascal_keeps_inner_letters():
    assert to_pascal("model_v2beta") == "ModelV2beta"
