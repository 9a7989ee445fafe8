"""A small arithmetic expression evaluator."""

from calc.evaluator import EvalError, evaluate
from calc.parser import ParseError, parse
from calc.tokenizer import TokenizeError, tokenize

__all__ = ["EvalError", "ParseError", "TokenizeError", "evaluate", "parse", "tokenize"]
