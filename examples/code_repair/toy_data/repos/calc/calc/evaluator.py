"""Evaluate the trees built by calc.parser."""

from __future__ import annotations

import math

from calc.parser import parse

FUNCTIONS = {"sqrt": math.sqrt, "abs": abs, "round": round}
CONSTANTS = {"pi": math.pi, "e": math.e}


class EvalError(ValueError):
    """Raised for unknown names and invalid arithmetic."""


def apply_binop(op: str, left: float, right: float) -> float:
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if op == "/":
        if right == 0:
            raise EvalError("division by zero")
        return left / right
    if op == "%":
        return left % right
    if op == "^":
        return left**right
    raise EvalError(f"unknown operator {op!r}")


def eval_tree(tree, variables: dict[str, float] | None = None) -> float:
    variables = variables or {}
    kind = tree[0]
    if kind == "num":
        return tree[1]
    if kind == "neg":
        return -eval_tree(tree[1], variables)
    if kind == "var":
        name = tree[1]
        if name in variables:
            return variables[name]
        if name in CONSTANTS:
            return CONSTANTS[name]
        raise EvalError(f"unknown variable {name!r}")
    if kind == "call":
        function = FUNCTIONS.get(tree[1])
        if function is None:
            raise EvalError(f"unknown function {tree[1]!r}")
        return function(eval_tree(tree[2], variables))
    if kind == "binop":
        return apply_binop(tree[1], eval_tree(tree[2], variables), eval_tree(tree[3], variables))
    raise EvalError(f"bad node {kind!r}")


def evaluate(source: str, variables: dict[str, float] | None = None) -> float:
    """Parse and evaluate `source`; `variables` maps names to values."""
    return eval_tree(parse(source), variables)
