"""zram-generator's size expressions (``zram-size = min(ram / 2, 4096)``), without eval().

zram-generator evaluates ``zram-size`` and ``zram-resident-limit`` with the fasteval crate
(0.2); this module parses and evaluates the part of fasteval's language that
zram-generator.conf(5) documents, the same way fasteval does, and refuses the rest by name.

Supported (the result is a number of MiB; ``ram`` is MemTotal in MiB):

* numbers: ``4096``, ``0.5``, ``.5``, ``1e3``, and an SI suffix that multiplies:
  ``k``/``K`` 1e3, ``M`` 1e6, ``G`` 1e9, ``T`` 1e12, ``m`` 1e-3, ``u``/``µ`` 1e-6, ``n`` 1e-9,
  ``p`` 1e-12 (so ``4G`` is four billion MiB, not 4 GiB: zram-generator's own test says so);
* variables: ``ram`` and the names set by ``set!NAME=`` directives (genconf.py);
* ``+ - * / % ^``, unary ``+``/``-``, parentheses;
* functions: ``min(a, ...)``, ``max(a, ...)``, ``abs``, ``int`` (truncate), ``ceil``, ``floor``,
  ``sign``, ``round(x)`` / ``round(modulus, x)``, ``log(x)`` (base 10) / ``log(base, x)``,
  ``e()``, ``pi()``, and the trigonometric ``sin cos tan asin acos atan sinh cosh tanh asinh
  acosh atanh``.

fasteval's own rules, kept because they change results: a unary minus binds tighter than ``^``
(``-2^2`` is 4); ``^`` groups right to left; and the binary operators are applied in the order
``^``, ``%``, ``/``, ``*``, ``-``, ``+`` (so ``a * b % c`` is ``a * (b % c)``). Arithmetic is
IEEE double as in Rust: dividing by zero gives an infinity or NaN instead of an exception.

Refused with an error naming the construct: comparisons and logical operators (``< == && ||``
...), ``!``, ``[ ]`` brackets, ``print()``, strings, unknown functions. Expressions longer than
4096 characters or nested 32 deep are refused, as fasteval refuses them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

#: fasteval's limits on an expression
MAX_LENGTH = 4096
MAX_DEPTH = 32

_SI = {"k": 3, "K": 3, "M": 6, "G": 9, "T": 12, "m": -3, "u": -6, "µ": -6, "n": -9, "p": -12}
_SPACE = " \t\r\n"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class ExprError(ValueError):
    """A size expression that does not parse or cannot be evaluated; the message says where."""


# -- syntax tree ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Num:
    value: float


@dataclass(frozen=True, slots=True)
class _Var:
    name: str


@dataclass(frozen=True, slots=True)
class _Neg:
    operand: _Node


@dataclass(frozen=True, slots=True)
class _Call:
    name: str
    args: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Chain:
    """``first op value op value ...``: fasteval keeps a flat chain and applies the operators
    by precedence at evaluation time (see _REDUCTIONS)."""

    first: _Node
    rest: tuple[tuple[str, _Node], ...]


_Node = _Num | _Var | _Neg | _Call | _Chain


# -- IEEE arithmetic as Rust's f64 does it ----------------------------------------------------


def _div(a: float, b: float) -> float:
    if b == 0:
        if a == 0 or math.isnan(a):
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)
    return a / b


def _mod(a: float, b: float) -> float:
    try:
        return math.fmod(a, b)
    except ValueError:  # x % 0, inf % x
        return math.nan


def _pow(a: float, b: float) -> float:
    try:
        return math.pow(a, b)
    except OverflowError:
        return math.inf if a > 0 or (float(b).is_integer() and b % 2 == 0) else -math.inf
    except ValueError:  # 0 ^ negative is infinite; a negative base with a fraction is NaN
        return math.inf if a == 0 else math.nan


def _guard(f: Callable[[float], float]) -> Callable[[float], float]:
    def call(x: float) -> float:
        try:
            return f(x)
        except ValueError:
            return math.nan
        except OverflowError:
            return math.inf

    return call


def _whole(f: Callable[[float], int]) -> Callable[[float], float]:
    """trunc/ceil/floor that leave infinities and NaN alone, as Rust's do."""
    return lambda x: float(f(x)) if math.isfinite(x) else x


def _round_half_away(x: float) -> float:
    """Rust's f64::round: halfway cases away from zero (Python's round() goes to even)."""
    if not math.isfinite(x):
        return x
    t = math.trunc(x)
    return float(t + (math.copysign(1, x) if abs(x - t) >= 0.5 else 0))


def _round(args: Sequence[float]) -> float:
    modulus, x = (1.0, args[0]) if len(args) == 1 else (args[0], args[1])
    return _round_half_away(_div(x, modulus)) * modulus


def _ln(x: float) -> float:
    if x == 0:
        return -math.inf
    if x < 0 or math.isnan(x):
        return math.nan
    return math.log(x)


def _log(args: Sequence[float]) -> float:
    base, x = (10.0, args[0]) if len(args) == 1 else (args[0], args[1])
    if base == 2 and x > 0:
        return math.log2(x)
    if base == 10 and x > 0:
        return math.log10(x)
    return _div(_ln(x), _ln(base))


def _minmax(pick: Callable[[float, float], float]) -> Callable[[Sequence[float]], float]:
    """Rust's f64::min/max: a NaN argument is ignored unless all are NaN."""

    def call(args: Sequence[float]) -> float:
        out = args[0]
        for x in args[1:]:
            out = x if math.isnan(out) else out if math.isnan(x) else pick(out, x)
        return out

    return call


def _unary(f: Callable[[float], float]) -> tuple[int, int, Callable[[Sequence[float]], float]]:
    g = _guard(f)
    return 1, 1, lambda args: g(args[0])


_TRIG = (
    "sin",
    "cos",
    "tan",
    "asin",
    "acos",
    "atan",
    "sinh",
    "cosh",
    "tanh",
    "asinh",
    "acosh",
    "atanh",
)
#: name -> (fewest args, most args, implementation)
_FUNCTIONS: dict[str, tuple[int, int, Callable[[Sequence[float]], float]]] = {
    "min": (1, MAX_LENGTH, _minmax(min)),
    "max": (1, MAX_LENGTH, _minmax(max)),
    "abs": _unary(math.fabs),
    "int": _unary(_whole(math.trunc)),
    "ceil": _unary(_whole(math.ceil)),
    "floor": _unary(_whole(math.floor)),
    "sign": _unary(lambda x: x if math.isnan(x) else math.copysign(1.0, x)),
    "round": (1, 2, _round),
    "log": (1, 2, _log),
    "e": (0, 0, lambda args: math.e),
    "pi": (0, 0, lambda args: math.pi),
    **{name: _unary(getattr(math, name)) for name in _TRIG},
}

_BINARY: dict[str, Callable[[float, float], float]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": _div,
    "%": _mod,
    "^": _pow,
}
#: the order fasteval applies a chain's operators in, and the direction of each
_REDUCTIONS = (("^", True), ("%", False), ("/", False), ("*", True), ("-", False), ("+", True))


# -- parser -----------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0

    def error(self, problem: str, at: int | None = None) -> ExprError:
        column = (self.i if at is None else at) + 1
        return ExprError(f"{problem} (column {column})")

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def skip_space(self) -> None:
        while self.i < len(self.s) and self.s[self.i] in _SPACE:
            self.i += 1

    def expression(self, depth: int) -> _Node:
        if depth >= MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} deep")
        first = self.value(depth)
        rest = []
        while (op := self.operator()) is not None:
            rest.append((op, self.value(depth)))
        return _Chain(first, tuple(rest)) if rest else first

    def operator(self) -> str | None:
        self.skip_space()
        c = self.peek()
        if c and c in _BINARY:
            self.i += 1
            return c
        if c and c in "<>=!&|":
            raise self.error(
                f"{c!r}: comparison and logical operators are not part of zram-size expressions"
            )
        return None

    def value(self, depth: int) -> _Node:
        if depth >= MAX_DEPTH:
            raise self.error(f"nested more than {MAX_DEPTH} deep")
        self.skip_space()
        number = self.number()
        if number is not None:
            return _Num(number)
        c = self.peek()
        if c == "+":
            self.i += 1
            return self.value(depth + 1)
        if c == "-":
            self.i += 1
            return _Neg(self.value(depth + 1))
        if c == "(":
            start = self.i
            self.i += 1
            inner = self.expression(depth + 1)
            self.skip_space()
            if self.peek() != ")":
                raise self.error(f"'(' at column {start + 1} is not closed")
            self.i += 1
            return inner
        if c == "[":
            raise self.error("'[': use parentheses for grouping")
        if c == "!":
            raise self.error("'!': logical operators are not part of zram-size expressions")
        if c == '"':
            raise self.error("strings are not part of zram-size expressions")
        start = self.i
        m = _NAME.match(self.s, start)
        if m:
            name = m.group()
            self.i = m.end()
            self.skip_space()
            if self.peek() == "(":
                return self.call(name, start, depth)
            if self.peek() == "[":
                raise self.error("'[': call functions with parentheses")
            return _Var(name)
        if not c:
            raise self.error("expected a number, a name or '(' but the expression ends")
        hint = " (comments go on a line of their own)" if c in "#;" else ""
        raise self.error(f"unexpected {c!r}{hint}")

    def number(self) -> float | None:
        """fasteval's constant: ``[+-]?[0-9.]+([eE][+-]?[0-9]+)?`` or the same without an
        exponent and with one SI suffix letter. None if no digit starts here (the sign is
        then read as a unary operator)."""
        s, i = self.s, self.i
        j, sign_ok, seen_digit, suffix_ok = i, True, False, True
        while j < len(s):
            c = s[j]
            if (c.isascii() and c.isdigit()) or c == ".":
                seen_digit, sign_ok = True, False
            elif sign_ok and c in "+-":
                sign_ok = False
            elif seen_digit and c in "eE":
                suffix_ok, sign_ok = False, True
            else:
                break
            j += 1
        if not seen_digit:
            return None
        token = s[i:j]
        scale = 0
        if suffix_ok and j < len(s) and s[j] in _SI:
            scale = _SI[s[j]]
            j += 1
        try:
            value = float(token)
        except ValueError:
            raise self.error(f"{s[i:j]!r} is not a number", at=i) from None
        self.i = j
        return value * 10.0**scale if scale else value

    def call(self, name: str, start: int, depth: int) -> _Node:
        if name == "print":
            raise self.error("print() is not part of zram-size expressions", at=start)
        self.i += 1  # the '('
        args: list[_Node] = []
        while True:
            self.skip_space()
            c = self.peek()
            if not c:
                raise self.error(f"{name}( at column {start + 1} is not closed")
            if c == ")":
                self.i += 1
                break
            if args:
                if c not in ",;":
                    raise self.error(f"{name}(): expected ',' or ')' between arguments")
                self.i += 1
            args.append(self.expression(depth + 1))
        spec = _FUNCTIONS.get(name)
        if spec is None:
            if not args:
                return _Var(name)  # fasteval: a name with empty parentheses is a variable
            raise self.error(f"unknown function {name}()", at=start)
        fewest, most, _ = spec
        if not fewest <= len(args) <= most:
            if fewest == most:
                want = str(fewest)
            else:
                want = f"{fewest} or {most}" if most < MAX_DEPTH else f"{fewest} or more"
            raise self.error(f"{name}() takes {want} argument(s), not {len(args)}", at=start)
        return _Call(name, tuple(args))


# -- the public face --------------------------------------------------------------------------


@dataclass(frozen=True)
class Expression:
    """A parsed size expression; ``text`` is what the file said."""

    text: str
    _tree: _Node

    @property
    def variables(self) -> frozenset[str]:
        """The variable names the expression reads."""
        out: set[str] = set()

        def walk(node: _Node) -> None:
            if isinstance(node, _Var):
                out.add(node.name)
            elif isinstance(node, _Neg):
                walk(node.operand)
            elif isinstance(node, _Call):
                for arg in node.args:
                    walk(arg)
            elif isinstance(node, _Chain):
                walk(node.first)
                for _, value in node.rest:
                    walk(value)

        walk(self._tree)
        return frozenset(out)

    def evaluate(self, variables: Mapping[str, float]) -> float:
        """The value, in IEEE double (infinities and NaN included: the caller judges them).
        ExprError names an unknown variable."""
        return _evaluate(self._tree, variables)


def parse(text: str) -> Expression:
    """Parse a size expression. ExprError says what is wrong and at which column."""
    if len(text) > MAX_LENGTH:
        raise ExprError(f"longer than {MAX_LENGTH} characters")
    parser = _Parser(text)
    parser.skip_space()
    if not parser.peek():
        raise ExprError("empty expression")
    tree = parser.expression(0)
    parser.skip_space()
    if parser.i < len(text):
        c = text[parser.i]
        if c == ")":
            raise parser.error("')' without a matching '('")
        hint = " (comments go on a line of their own)" if c in "#;" else ""
        raise parser.error(f"unexpected {c!r} after a complete expression{hint}")
    return Expression(text, tree)


def _evaluate(node: _Node, variables: Mapping[str, float]) -> float:
    if isinstance(node, _Num):
        return node.value
    if isinstance(node, _Var):
        try:
            return variables[node.name]
        except KeyError:
            known = ", ".join(sorted(variables)) or "none"
            hint = f" (functions need parentheses: {node.name}(...))" if (
                node.name in _FUNCTIONS
            ) else ""  # fmt: skip
            raise ExprError(f"unknown variable {node.name!r}{hint}; known: {known}") from None
    if isinstance(node, _Neg):
        return -_evaluate(node.operand, variables)
    if isinstance(node, _Call):
        args = [_evaluate(arg, variables) for arg in node.args]
        return _FUNCTIONS[node.name][2](args)
    values = [_evaluate(node.first, variables)]
    ops = []
    for op, value in node.rest:
        ops.append(op)
        values.append(_evaluate(value, variables))
    for op, right_to_left in _REDUCTIONS:
        order = range(len(ops) - 1, -1, -1) if right_to_left else None
        if order is not None:
            for i in order:
                if ops[i] == op:
                    values[i : i + 2] = [_BINARY[op](values[i], values[i + 1])]
                    del ops[i]
        else:
            i = 0
            while i < len(ops):
                if ops[i] == op:
                    values[i : i + 2] = [_BINARY[op](values[i], values[i + 1])]
                    del ops[i]
                else:
                    i += 1
    return values[0]
