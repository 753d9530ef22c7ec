"""S-expressions of VNN-LIB / SMT-LIB text, and the linear terms built from them.

Comments run from ``;`` to the end of the line.  Every node remembers the line
it starts on so that errors can point at the offending text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Container, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, NoReturn

from relugate.compiler.errors import BadSpec

MAX_DEPTH = 200
"""Deepest nesting accepted; deeper input is rejected rather than overflowing the stack."""

NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\Z")
"""A decimal literal: ``3``, ``-0.5``, ``.5``, ``1e-3``; no ``nan``, ``inf`` or hex."""

_TOKEN = re.compile(r"[()]|[^\s()]+")
_Bad = Callable[["SExpr", str], NoReturn]


class Symbol(NamedTuple):
    """A bare token: a number, an operator or a name."""

    text: str
    line: int


class SList(NamedTuple):
    """A parenthesised list of expressions."""

    items: tuple[SExpr, ...]
    line: int


SExpr = Symbol | SList


def fail(source: str, line: int, message: str, text: str) -> NoReturn:
    """Raise ``BadSpec`` as ``source:line: message: text``."""
    raise BadSpec(f"{source}:{line}: {message}: {clip(text)}")


def clip(text: str, limit: int = 120) -> str:
    """``text`` cut to ``limit`` characters, marked with `` ...`` when cut."""
    return text if len(text) <= limit else text[:limit] + " ..."


def parse_sexprs(text: str, source: str = "<string>") -> list[SExpr]:
    """Parse every top-level expression of ``text``."""
    lines = text.splitlines()
    top: list[SExpr] = []
    stack: list[tuple[int, list[SExpr]]] = []
    out = top
    for lineno, raw in enumerate(lines, start=1):
        for token in _TOKEN.findall(raw.split(";", 1)[0]):
            if token == "(":
                if len(stack) >= MAX_DEPTH:
                    fail(source, lineno, f"nesting deeper than {MAX_DEPTH} levels", raw.strip())
                out = []
                stack.append((lineno, out))
            elif token == ")":
                if not stack:
                    fail(source, lineno, "unexpected ')' with no matching '('", raw.strip())
                start, items = stack.pop()
                out = stack[-1][1] if stack else top
                out.append(SList(tuple(items), start))
            else:
                out.append(Symbol(token, lineno))
    if stack:
        start = stack[0][0]
        fail(source, start, "unbalanced parentheses: '(' is never closed", lines[start - 1].strip())
    return top


def _tokens(expr: SExpr) -> Iterator[str]:
    if isinstance(expr, Symbol):
        yield expr.text
        return
    yield "("
    for i, item in enumerate(expr.items):
        if i:
            yield " "
        yield from _tokens(item)
    yield ")"


def render(expr: SExpr, limit: int = 120) -> str:
    """The text of ``expr`` on one line, cut to about ``limit`` characters."""
    out: list[str] = []
    size = 0
    for token in _tokens(expr):
        out.append(token)
        size += len(token)
        if size > limit:
            break
    return clip("".join(out), limit)


@dataclass(slots=True)
class Linear:
    """``sum(coeffs[name] * name) + const``."""

    coeffs: dict[str, float]
    const: float

    def scaled(self, k: float) -> Linear:
        return Linear({v: k * c for v, c in self.coeffs.items()}, k * self.const)

    def add(self, other: Linear, sign: float = 1.0) -> Linear:
        coeffs = dict(self.coeffs)
        for v, c in other.coeffs.items():
            coeffs[v] = coeffs.get(v, 0.0) + sign * c
        return Linear(coeffs, self.const + sign * other.const)


def linear_term(expr: SExpr, ctx: SExpr, source: str, declared: Container[str]) -> Linear:
    """Read a number, a ``declared`` variable, ``(+ ...)``, ``(- ...)`` or ``(* ...)``.

    Errors quote ``ctx`` (the enclosing comparison) and the line of ``expr``.
    """

    def bad(at: SExpr, message: str) -> NoReturn:
        fail(source, at.line, message, render(ctx))

    if isinstance(expr, Symbol):
        return _symbol(expr, declared, bad)
    if not expr.items:
        bad(expr, "empty term ()")
    head = expr.items[0]
    op = head.text if isinstance(head, Symbol) else render(head, 40)
    if op not in ("+", "-", "*"):
        bad(expr, f"unknown operator {op!r} in a term (expected +, -, *)")
    if len(expr.items) < 2:
        bad(expr, f"({op}) needs at least one argument")
    args = [linear_term(arg, ctx, source, declared) for arg in expr.items[1:]]
    if op == "+":
        return _sum(args)
    if op == "-":
        return args[0].scaled(-1.0) if len(args) == 1 else args[0].add(_sum(args[1:]), -1.0)
    variable = [a for a in args if a.coeffs]
    if len(variable) > 1:
        bad(expr, "nonlinear term: (*) may have only one non-constant factor")
    k = math.prod(a.const for a in args if not a.coeffs)
    return variable[0].scaled(k) if variable else Linear({}, k)


def _symbol(sym: Symbol, declared: Container[str], bad: _Bad) -> Linear:
    text = sym.text
    if text in declared:
        return Linear({text: 1.0}, 0.0)
    if NUMBER.match(text):
        value = float(text)
        if not math.isfinite(value):
            bad(sym, f"number {text} is out of range")
        return Linear({}, value)
    if text[0].isdigit() or text[0] in "+-.":
        bad(sym, f"{text!r} is not a valid number")
    bad(sym, f"{text!r} is not a number or a declared variable")


def _sum(args: Sequence[Linear]) -> Linear:
    total = Linear({}, 0.0)
    for arg in args:
        total = total.add(arg)
    return total
