"""A small, safe filter language over frame metadata (``Consumer.query``).

Grammar (parsed by recursive descent, never ``eval``-ed)::

    expr       := or
    or         := and ("or" and)*
    and        := not ("and" not)*
    not        := "not" not | comparison
    comparison := operand (("==" | "!=" | "<" | "<=" | ">" | ">=") operand
                           | "in" "[" [literal ("," literal)*] "]")?
                | "(" expr ")"
    operand    := field | literal
    field      := "index" | "stored" | "created" | "meta" ("." name)+
    literal    := number | string ('...' or "...", backslash escapes) | true | false | null

A missing ``meta`` key is ``null``. ``==``/``!=`` compare any values; ordering
(``<`` ...) is true only between two numbers or two strings, so a comparison
with a missing key or a value of another type is false, never an error. A
bare operand is true when it is neither null, false, 0 nor "". Keywords are
lower case. A syntax error names the position (0-based character offset).
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from typing import Any

from hidra_ng.errors import QueryError

MAX_QUERY_CHARS = 4096
#: parentheses and ``not`` nest at most this deep: the parser and the predicate it
#: builds recurse once per level, and a deeper query must fail as a QueryError, not
#: as a RecursionError that would end the receiver's api thread
MAX_DEPTH = 64

Row = tuple[dict[str, Any], int, float, float]  # meta, index, stored, created
Predicate = Callable[[Row], Any]

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<op>==|!=|<=|>=|<|>|\(|\)|\[|\]|,|\.)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    """,
    re.VERBOSE,
)
_COMPARE = {
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_LITERALS = {"true": True, "false": False, "null": None}
_FIELDS = {"index": 1, "stored": 2, "created": 3}


def compile_query(text: str) -> Predicate:
    """Parse ``text`` into a predicate over (meta, index, stored, created) rows."""
    if not isinstance(text, str) or not text.strip():
        raise QueryError('query is empty; expected e.g. "meta.exposure_s > 0.005"')
    if len(text) > MAX_QUERY_CHARS:
        raise QueryError(f"query has {len(text)} characters; at most {MAX_QUERY_CHARS}")
    parser = _Parser(text)
    predicate = parser.parse()
    return predicate


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None:
                raise QueryError(f"unexpected character {text[pos]!r} at position {pos}")
            kind = match.lastgroup or ""  # every alternative of _TOKEN is a named group
            if kind != "space":
                self.tokens.append((kind, match.group(), pos))
            pos = match.end()
        self.tokens.append(("end", "", len(text)))
        self.i = 0
        self.depth = 0

    # helpers
    def peek(self) -> tuple[str, str, int]:
        return self.tokens[self.i]

    def take(self) -> tuple[str, str, int]:
        token = self.tokens[self.i]
        self.i += 1
        return token

    def accept(self, value: str) -> bool:
        kind, text, _ = self.peek()
        if kind in ("op", "name") and text == value:
            self.i += 1
            return True
        return False

    def expect(self, value: str) -> None:
        if not self.accept(value):
            self.fail(f"expected {value!r}")

    def fail(self, what: str):
        kind, text, pos = self.peek()
        found = "the end" if kind == "end" else repr(text)
        raise QueryError(f"{what} at position {pos}, found {found}, in query {self.text!r}")

    # grammar
    def parse(self) -> Predicate:
        predicate = self.or_()
        if self.peek()[0] != "end":
            self.fail("expected 'and', 'or' or the end")
        return predicate

    def or_(self) -> Predicate:
        parts = [self.and_()]
        while self.accept("or"):
            parts.append(self.and_())
        if len(parts) == 1:
            return parts[0]
        return lambda row: any(p(row) for p in parts)

    def and_(self) -> Predicate:
        parts = [self.not_()]
        while self.accept("and"):
            parts.append(self.not_())
        if len(parts) == 1:
            return parts[0]
        return lambda row: all(p(row) for p in parts)

    def nest(self) -> None:
        """Enter one level of parentheses or ``not``; fail past MAX_DEPTH."""
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.i -= 1
            self.fail(f"query is nested deeper than {MAX_DEPTH} levels")

    def not_(self) -> Predicate:
        if self.accept("not"):
            self.nest()
            inner = self.not_()
            self.depth -= 1
            return lambda row: not inner(row)
        return self.comparison()

    def comparison(self) -> Predicate:
        if self.accept("("):
            self.nest()
            inner = self.or_()
            self.expect(")")
            self.depth -= 1
            return inner
        left = self.operand()
        kind, text, _ = self.peek()
        if kind == "op" and text in _COMPARE:
            self.take()
            right = self.operand()
            return _compare(_COMPARE[text], left, right)
        if self.accept("in"):
            self.expect("[")
            values: list[Any] = []
            if not self.accept("]"):
                values.append(self.literal())
                while self.accept(","):
                    values.append(self.literal())
                self.expect("]")
            return lambda row: _member(left(row), values)
        return lambda row: left(row) not in (None, False, 0, "")

    def operand(self) -> Callable[[Row], Any]:
        kind, text, _ = self.peek()
        if kind == "name" and text == "meta":
            self.take()
            path: list[str] = []
            while self.accept("."):
                kind, name, _ = self.peek()
                if kind != "name":
                    self.fail("expected a key name after '.'")
                self.take()
                path.append(name)
            if not path:
                self.fail("expected '.key' after 'meta'")
            return lambda row: _lookup(row[0], path)
        if kind == "name" and text in _FIELDS:
            self.take()
            slot = _FIELDS[text]
            return lambda row: row[slot]
        value = self.literal()
        return lambda row: value

    def literal(self) -> Any:
        kind, text, _ = self.peek()
        if kind == "number":
            self.take()
            return float(text) if any(c in text for c in ".eE") else int(text)
        if kind == "string":
            self.take()
            return _unquote(text)
        if kind == "name" and text in _LITERALS:
            self.take()
            return _LITERALS[text]
        self.fail("expected a field (index, stored, created, meta.KEY) or a literal")


def _lookup(meta: Any, path: list[str]) -> Any:
    for key in path:
        if not isinstance(meta, dict):
            return None
        meta = meta.get(key)
    return meta


def _kind(value: Any) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _compare(op, left, right) -> Predicate:
    if op in (operator.eq, operator.ne):

        def equal(row: Row) -> bool:
            a, b = left(row), right(row)
            same = a == b and (isinstance(a, bool) == isinstance(b, bool))
            return same if op is operator.eq else not same

        return equal

    def ordered(row: Row) -> bool:
        a, b = left(row), right(row)
        kind = _kind(a)
        return kind is not None and kind == _kind(b) and op(a, b)

    return ordered


def _member(value: Any, values: list[Any]) -> bool:
    return any(value == v and isinstance(value, bool) == isinstance(v, bool) for v in values)


def _unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m.group(1), m.group(1)), body)
