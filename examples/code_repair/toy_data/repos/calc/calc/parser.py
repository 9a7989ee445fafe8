"""Precedence-climbing parser: tokens -> a tree of tuples."""

from __future__ import annotations

from calc.tokenizer import Token, tokenize

# Binding power of each binary operator; higher binds tighter.
PRECEDENCE = {"+": 10, "-": 10, "*": 20, "/": 20, "%": 20, "^": 30}
RIGHT_ASSOC = {"^"}


class ParseError(ValueError):
    """Raised when the tokens do not form a valid expression."""


class Parser:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.index = 0

    def peek(self) -> Token | None:
        if self.index < len(self.tokens):
            return self.tokens[self.index]
        return None

    def advance(self) -> Token:
        token = self.peek()
        if token is None:
            raise ParseError("unexpected end of input")
        self.index += 1
        return token

    def expect(self, text: str) -> None:
        token = self.advance()
        if token.text != text:
            raise ParseError(f"expected {text!r} at position {token.pos}, got {token.text!r}")

    def expression(self, min_power: int = 0):
        left = self.unary()
        while True:
            token = self.peek()
            if token is None or token.kind != "op" or token.text not in PRECEDENCE:
                return left
            power = PRECEDENCE[token.text]
            if power < min_power:
                return left
            self.advance()
            next_min = power if token.text in RIGHT_ASSOC else power + 1
            right = self.expression(next_min)
            left = ("binop", token.text, left, right)

    def unary(self):
        token = self.peek()
        if token is not None and token.kind == "op" and token.text == "-":
            self.advance()
            return ("neg", self.unary())
        return self.primary()

    def primary(self):
        token = self.advance()
        if token.kind == "num":
            return ("num", float(token.text))
        if token.kind == "name":
            after = self.peek()
            if after is not None and after.text == "(":
                self.advance()
                argument = self.expression()
                self.expect(")")
                return ("call", token.text, argument)
            return ("var", token.text)
        if token.text == "(":
            inner = self.expression()
            self.expect(")")
            return inner
        raise ParseError(f"unexpected token {token.text!r} at position {token.pos}")


def parse(source: str):
    """Parse `source` into an expression tree."""
    parser = Parser(tokenize(source))
    tree = parser.expression()
    leftover = parser.peek()
    if leftover is not None:
        raise ParseError(f"unexpected token {leftover.text!r} at position {leftover.pos}")
    return tree
