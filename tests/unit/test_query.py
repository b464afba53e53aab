"""The metadata filter language (hidra_ng/receiver/query.py): grammar, errors, and a property test
that compares every compiled query with a plain-Python predicate built from the same tree."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng.errors import InvalidInput
from hidra_ng.receiver.query import MAX_DEPTH, MAX_QUERY_CHARS, QueryError, compile_query


def row(meta: dict | None = None, index: int = 0, stored: float = 100.0, created: float = 50.0):
    return (meta or {}, index, stored, created)


def matches(text: str, *rows) -> list[bool]:
    predicate = compile_query(text)
    return [bool(predicate(r)) for r in rows]


# ------------------------------------------------------------------ grammar


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("meta.x == 3", [False, True, False, False]),
        ("meta.x != 3", [True, False, True, True]),
        ("meta.x < 3", [True, False, False, False]),
        ("meta.x <= 3", [True, True, False, False]),
        ("meta.x > 3", [False, False, True, False]),
        ("meta.x >= 3", [False, True, True, False]),
        ("3 == meta.x", [False, True, False, False]),
        ("3 < meta.x", [False, False, True, False]),
    ],
)
def test_comparisons(text, expected):
    rows = [row({"x": 2}), row({"x": 3}), row({"x": 4.5}), row({"y": 3})]
    assert matches(text, *rows) == expected


def test_and_or_not_and_precedence():
    rows = [row({"a": a, "b": b, "c": c}) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    got = matches("meta.a == 1 or meta.b == 1 and meta.c == 1", *rows)
    assert got == [a == 1 or (b == 1 and c == 1) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    got = matches("(meta.a == 1 or meta.b == 1) and meta.c == 1", *rows)
    assert got == [(a == 1 or b == 1) and c == 1 for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    got = matches("not meta.a == 1 and meta.b == 1", *rows)
    assert got == [a != 1 and b == 1 for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    got = matches("not (meta.a == 1 and meta.b == 1)", *rows)
    assert got == [not (a == 1 and b == 1) for a in (0, 1) for b in (0, 1) for c in (0, 1)]
    assert matches("not not meta.a == 1", row({"a": 1}), row({"a": 0})) == [True, False]
    assert matches("((((meta.a == 1))))", row({"a": 1}), row({"a": 0})) == [True, False]


def test_in_lists():
    rows = [row({"s": "x"}), row({"s": "y"}), row({"s": 1}), row({"s": True}), row({})]
    assert matches("meta.s in ['x', 1]", *rows) == [True, False, True, False, False]
    assert matches("meta.s in [true]", *rows) == [False, False, False, True, False]
    assert matches("meta.s in [null]", *rows) == [False, False, False, False, True]
    assert matches("meta.s in []", *rows) == [False] * 5
    assert matches("not meta.s in ['y']", *rows) == [True, False, True, True, True]
    assert matches("index in [0, 2]", row(index=0), row(index=1), row(index=2)) == [
        True,
        False,
        True,
    ]


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("'plain'", "plain"),
        ('"plain"', "plain"),
        (r"'it\'s'", "it's"),
        (r'"say \"hi\""', 'say "hi"'),
        ('"it\'s"', "it's"),
        ("'say \"hi\"'", 'say "hi"'),
        (r"'back\\slash'", "back\\slash"),
        (r"'tab\there'", "tab\there"),
        (r"'line\nbreak'", "line\nbreak"),
        (r"'\x'", "x"),  # any other escaped character stands for itself
        ("''", ""),
        ("'ünï €'", "ünï €"),
        ("'and or not in [ ] ( )'", "and or not in [ ] ( )"),
    ],
)
def test_string_literals_with_both_quotes_and_escapes(literal, value):
    assert matches(f"meta.s == {literal}", row({"s": value}), row({"s": value + "!"})) == [
        True,
        False,
    ]


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        ("0", 0),
        ("42", 42),
        ("-7", -7),
        ("3.25", 3.25),
        ("-0.5", -0.5),
        (".5", 0.5),
        ("5.", 5.0),
        ("1e3", 1000.0),
        ("1E3", 1000.0),
        ("-2.5e-3", -0.0025),
        ("6.02e+23", 6.02e23),
        ("12345678901234567890", 12345678901234567890),
    ],
)
def test_number_literals(literal, value):
    other = value * 2 + 1  # differs from value even for 6.02e23
    assert matches(f"meta.n == {literal}", row({"n": value}), row({"n": other})) == [True, False]
    smaller = value - abs(value) - 1
    assert matches(f"meta.n<{literal}", row({"n": smaller}), row({"n": value})) == [True, False]


def test_ints_and_floats_compare_as_numbers():
    assert matches("meta.n == 2", row({"n": 2.0}), row({"n": 2})) == [True, True]
    assert matches("meta.n < 2.5", row({"n": 2}), row({"n": 3})) == [True, False]


def test_true_false_null():
    rows = [row({"v": True}), row({"v": False}), row({"v": None}), row({}), row({"v": 1})]
    assert matches("meta.v == true", *rows) == [True, False, False, False, False]
    assert matches("meta.v == false", *rows) == [False, True, False, False, False]
    assert matches("meta.v == null", *rows) == [False, False, True, True, False]
    assert matches("meta.v != null", *rows) == [True, True, False, False, True]
    # a bool is not a number: true is not 1, false is not 0
    assert matches("meta.v == 1", *rows) == [False, False, False, False, True]
    assert matches("meta.v == 0", row({"v": False}), row({"v": 0})) == [False, True]


def test_missing_keys_are_null_and_never_ordered():
    rows = [row({}), row({"x": None}), row({"x": "1"}), row({"x": [1]}), row({"x": {"y": 1}})]
    assert matches("meta.x > 0", *rows) == [False] * 5
    assert matches("meta.x < 0", *rows) == [False] * 5
    assert matches("meta.x <= 'z'", *rows) == [False, False, True, False, False]
    assert matches("not meta.x > 0", *rows) == [True] * 5
    assert matches("meta.x == null", *rows) == [True, True, False, False, False]


def test_strings_order_as_strings_only():
    rows = [row({"s": "apple"}), row({"s": "banana"}), row({"s": 5})]
    assert matches("meta.s < 'b'", *rows) == [True, False, False]
    assert matches("meta.s >= 'b'", *rows) == [False, True, False]


def test_bare_operands_are_truthiness():
    rows = [
        row({"f": True}),
        row({"f": 1}),
        row({"f": "x"}),
        row({"f": False}),
        row({"f": 0}),
        row({"f": 0.0}),
        row({"f": ""}),
        row({"f": None}),
        row({}),
        row({"f": []}),  # documented: only null, false, 0 and "" are false
        row({"f": {}}),
    ]
    assert matches("meta.f", *rows) == [True] * 3 + [False] * 6 + [True] * 2
    assert matches("not meta.f", *rows) == [False] * 3 + [True] * 6 + [False] * 2
    assert matches("index", row(index=0), row(index=1)) == [False, True]
    assert matches("true", row()) == [True]
    assert matches("null", row()) == [False]


def test_nested_meta_keys():
    rows = [
        row({"a": {"b": {"c": 5}}}),
        row({"a": {"b": {"c": 6}}}),
        row({"a": {"b": 5}}),
        row({"a": 5}),
        row({"a": [1, 2]}),
        row({}),
    ]
    assert matches("meta.a.b.c == 5", *rows) == [True, False, False, False, False, False]
    assert matches("meta.a.b == 5", *rows) == [False, False, True, False, False, False]
    assert matches("meta.a.b.c == null", *rows) == [False, False, True, True, True, True]


def test_keywords_are_key_names_after_a_dot():
    meta = {"in": 1, "and": 2, "or": 3, "not": 4, "true": 5, "null": 6, "index": 7, "meta": 8}
    text = (
        "meta.in == 1 and meta.and == 2 and meta.or == 3 and meta.not == 4"
        " and meta.true == 5 and meta.null == 6 and meta.index == 7 and meta.meta == 8"
    )
    assert matches(text, row(meta, index=0), row({**meta, "in": 0})) == [True, False]


def test_index_stored_created():
    rows = [row(index=i, stored=1000.0 + i, created=900.0 - i) for i in range(5)]
    assert matches("index >= 2 and index < 4", *rows) == [False, False, True, True, False]
    assert matches("stored > 1002.5", *rows) == [False, False, False, True, True]
    assert matches("created <= 898", *rows) == [False, False, True, True, True]
    with pytest.raises(QueryError, match="position 7"):
        compile_query("stored - 1 > 5")  # no arithmetic


def test_fields_compare_with_each_other():
    rows = [row({"a": 1, "b": 1}), row({"a": 1, "b": 2}), row({"a": 3}, index=3)]
    assert matches("meta.a == meta.b", *rows) == [True, False, False]
    assert matches("meta.a < meta.b", *rows) == [False, True, False]
    assert matches("meta.a == index", *rows) == [False, False, True]


def test_whitespace_is_free():
    assert matches("  meta.x==1and(index<5)  ", row({"x": 1})) == [True]
    assert matches("meta.x\t==\n1", row({"x": 1})) == [True]


def test_keywords_are_lower_case():
    with pytest.raises(QueryError, match="position 12"):
        compile_query("meta.x == 1 AND meta.y == 2")
    with pytest.raises(QueryError, match="position 10"):
        compile_query("meta.x == True")


# ------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("meta.x ==", 9),
        ("meta.x == 1 1", 12),
        ("meta.x === 1", 9),
        ("meta.", 5),
        ("meta", 4),
        ("meta.x == 1 and", 15),
        ("(meta.x == 1", 12),
        ("meta.x == 1)", 11),
        ("meta.x in [1, 2", 15),
        ("meta.x in 1", 10),
        ("meta.x in [1,]", 13),
        ("meta.x in [meta.y]", 11),
        ("foo == 1", 0),
        ("meta.x == 'open", 10),
        ("meta.x == 1 ; drop", 12),
        ("meta.x == 1 && meta.y", 12),
        ("meta.x = 1", 7),
        ("meta.x == 1 or or", 15),
        ("not", 3),
        ("()", 1),
        ("meta.1x == 1", 4),
        ("index + 1 > 2", 6),
    ],
)
def test_syntax_errors_name_the_position(text, position):
    with pytest.raises(QueryError, match=rf"at position {position}\b") as err:
        compile_query(text)
    assert isinstance(err.value, InvalidInput)  # travels to clients as InvalidInput


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os')",
        "__import__('os').system('true')",
        "meta.x == __import__('os')",
        "exec('1')",
        "open('/etc/passwd')",
        "meta.__class__ == 1",
        "[].__class__",
        "lambda: 1",
        "1 if true else 0",
        "meta.x == (1)",
    ],
)
def test_query_is_never_evaluated_as_python(text):
    try:
        predicate = compile_query(text)
    except QueryError:
        return
    # what parses is data: evaluating it only reads the row
    assert predicate(row({"x": 1, "__class__": 1})) in (True, False)


def test_dunder_keys_are_only_dict_keys():
    # meta.__class__ looks the key up in the metadata dict, never an attribute
    assert matches("meta.__class__ == 1", row({"__class__": 1}), row({})) == [True, False]
    assert matches("meta.__class__ == null", row({})) == [True]


def test_empty_and_oversized_queries():
    for text in ("", "   ", "\n"):
        with pytest.raises(QueryError, match="empty"):
            compile_query(text)
    long = "meta.x == 1" + " " * MAX_QUERY_CHARS
    with pytest.raises(QueryError, match=f"at most {MAX_QUERY_CHARS}"):
        compile_query(long)


@pytest.mark.parametrize(
    "text",
    [
        "(" * 1000 + "true" + ")" * 1000,
        "not " * 1000 + "true",
        "(not " * 500 + "true" + ")" * 500,
    ],
)
def test_deep_nesting_is_a_query_error_not_a_crash(text):
    assert len(text) <= MAX_QUERY_CHARS
    with pytest.raises(QueryError, match="nested"):
        compile_query(text)


def test_nesting_up_to_the_limit_works():
    half = MAX_DEPTH // 2
    text = "(" * half + "not " * (MAX_DEPTH - half) + "meta.x == 1" + ")" * half
    expected = [True, False] if MAX_DEPTH % 2 == 0 else [False, True]
    assert matches(text, row({"x": 1}), row({"x": 2})) == expected
    with pytest.raises(QueryError, match=f"deeper than {MAX_DEPTH} levels at position"):
        compile_query("(" + text + ")")
    text = " and ".join(f"meta.x != {i}" for i in range(200))  # long but flat
    assert matches(text, row({"x": 1}), row({"x": 200})) == [False, True]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="metaindx.=!<>()[],'\"\\ 0123456789-+eE_aornotuflsh", max_size=60))
def test_any_text_compiles_or_is_a_query_error(text):
    try:
        predicate = compile_query(text)
    except QueryError as err:
        assert "position" in str(err) or "empty" in str(err)
        return
    for r in (row(), row({"a": 1, "e": "x", "n": None}, index=3)):
        predicate(r)  # never raises


# ----------------------------------------------------- property: vs Python

KEYS = ["a", "b", "c", "in", "x_1"]
INTS = st.integers(-3, 3) | st.integers(-(10**20), 10**20)
FLOATS = st.sampled_from([0.0, -0.0, 0.5, -2.5, 1e-5, 3.0, 1e20]) | st.floats(
    -1e6, 1e6, allow_nan=False, allow_infinity=False
)
STRINGS = st.sampled_from(["", "x", "y", "it's", 'say "hi"', "back\\slash", "tab\t", "a\nb"])
STRINGS = STRINGS | st.text(alphabet="xy'\"\\ \n\té", max_size=5)
SCALARS = st.none() | st.booleans() | INTS | FLOATS | STRINGS


def metas():
    values = st.recursive(
        SCALARS,
        lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.sampled_from(KEYS), inner),
        max_leaves=6,
    )
    return st.dictionaries(st.sampled_from(KEYS), values, max_size=5)


def render_literal(value: Any, quote: str) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        assert math.isfinite(value)
        return repr(value)
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n")
    escaped = escaped.replace("\t", "\\t")
    return quote + escaped + quote


# A tree is a tuple: ("cmp", op, operand, operand) | ("in", operand, [literals])
# | ("bare", operand) | ("not", tree) | ("and", [trees]) | ("or", [trees]).
# An operand is ("field", name) with name "index"/"stored"/"created"/"meta.k.k"
# or ("lit", value, quote).

FIELDS = st.sampled_from(["index", "stored", "created"]) | st.lists(
    st.sampled_from(KEYS), min_size=1, max_size=3
).map(lambda keys: "meta." + ".".join(keys))
LITERALS = st.tuples(st.just("lit"), SCALARS, st.sampled_from("'\""))
OPERANDS = st.tuples(st.just("field"), FIELDS) | LITERALS

ATOMS = (
    st.tuples(
        st.just("cmp"),
        st.sampled_from(["==", "!=", "<", "<=", ">", ">="]),
        OPERANDS,
        OPERANDS,
    )
    | st.tuples(st.just("in"), OPERANDS, st.lists(LITERALS, max_size=4))
    | st.tuples(st.just("bare"), OPERANDS)
)
TREES = st.recursive(
    ATOMS,
    lambda inner: (
        st.tuples(st.just("not"), inner)
        | st.tuples(st.just("and"), st.lists(inner, min_size=2, max_size=3))
        | st.tuples(st.just("or"), st.lists(inner, min_size=2, max_size=3))
    ),
    max_leaves=8,
)
PRECEDENCE = {"or": 1, "and": 2, "not": 3, "cmp": 4, "in": 4, "bare": 4}


def render_operand(operand) -> str:
    if operand[0] == "field":
        return operand[1]
    return render_literal(operand[1], operand[2])


def render(tree, draw_parens) -> str:
    kind = tree[0]
    if kind == "cmp":
        text = f"{render_operand(tree[2])} {tree[1]} {render_operand(tree[3])}"
    elif kind == "in":
        items = ", ".join(render_literal(v, q) for _, v, q in tree[2])
        text = f"{render_operand(tree[1])} in [{items}]"
    elif kind == "bare":
        text = render_operand(tree[1])
    elif kind == "not":
        text = "not " + render_child(tree[1], 3, draw_parens)
    else:
        text = f" {kind} ".join(render_child(t, PRECEDENCE[kind] + 1, draw_parens) for t in tree[1])
    return text


def render_child(tree, needed: int, draw_parens) -> str:
    text = render(tree, draw_parens)
    if PRECEDENCE[tree[0]] < needed or draw_parens():
        return f"({text})"
    return text


def value_of(operand, r) -> Any:
    if operand[0] == "lit":
        return operand[1]
    name = operand[1]
    if name == "index":
        return r[1]
    if name == "stored":
        return r[2]
    if name == "created":
        return r[3]
    value: Any = r[0]
    for key in name.split(".")[1:]:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def same(a, b) -> bool:
    return a == b and isinstance(a, bool) == isinstance(b, bool)


def python_predicate(tree, r) -> bool:
    kind = tree[0]
    if kind == "cmp":
        op, a, b = tree[1], value_of(tree[2], r), value_of(tree[3], r)
        if op == "==":
            return same(a, b)
        if op == "!=":
            return not same(a, b)
        if not ((number(a) and number(b)) or (isinstance(a, str) and isinstance(b, str))):
            return False
        return {"<": a < b, "<=": a <= b, ">": a > b, ">=": a >= b}[op]
    if kind == "in":
        a = value_of(tree[1], r)
        return any(same(a, v) for _, v, _ in tree[2])
    if kind == "bare":
        v = value_of(tree[1], r)
        return not (v is None or v is False or (number(v) and v == 0) or v == "")
    if kind == "not":
        return not python_predicate(tree[1], r)
    if kind == "and":
        return all(python_predicate(t, r) for t in tree[1])
    return any(python_predicate(t, r) for t in tree[1])


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    tree=TREES,
    rows=st.lists(
        st.tuples(metas(), st.integers(0, 10), st.sampled_from([0.0, 2.5, 1e9]), FLOATS),
        min_size=1,
        max_size=8,
    ),
    data=st.data(),
)
def test_compiled_query_equals_python_predicate(tree, rows, data):
    text = render(tree, lambda: data.draw(st.booleans(), label="parens"))
    predicate = compile_query(text)
    for r in rows:
        assert bool(predicate(r)) == python_predicate(tree, r), (text, r)
