"""Stream-name globs (SPEC §13): '*' within a segment, '**' across segments."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hidra_ng.errors import InvalidInput
from hidra_ng.patterns import Patterns, matches

SEGMENT = st.text(alphabet="abcXYZ019._-", min_size=1, max_size=8)
NAMES = st.lists(SEGMENT, min_size=1, max_size=5).map("/".join)


@pytest.mark.parametrize(
    ("pattern", "name", "expected"),
    [
        ("p11/*", "p11/scan_0001", True),
        ("p11/*", "p11/eiger/threshold_1", False),
        ("p11/**", "p11/scan_0001", True),
        ("p11/**", "p11/eiger/threshold_1", True),
        ("p11/**", "p11", False),
        ("p11/**", "p110/scan", False),
        ("**", "a", True),
        ("**", "a/b/c", True),
        ("*", "a", True),
        ("*", "a/b", False),
        ("**/scan_*", "scan_1", True),
        ("**/scan_*", "p11/eiger/scan_1", True),
        ("**/scan_*", "p11/eiger/xscan_1", False),
        ("**/threshold_1", "p11/eiger/threshold_10", False),
        ("p11/scan_*/data", "p11/scan_7/data", True),
        ("p11/scan_*/data", "p11/scan_7/x/data", False),
        ("p11/scan.1", "p11/scanx1", False),  # '.' is literal
        ("p11/scan.1", "p11/scan.1", True),
        ("a*c", "abc", True),
        ("a*c", "ab/c", False),
        ("a**c", "ab/c", True),
    ],
)
def test_examples(pattern: str, name: str, expected: bool) -> None:
    assert matches(pattern, name) is expected


@pytest.mark.parametrize("bad", ["", "p11//x", "/p11", "p11/", "a b", "p11/***", "a?b", "x[1]"])
def test_bad_patterns_are_named(bad: str) -> None:
    with pytest.raises(InvalidInput, match="stream pattern"):
        matches(bad, "x")


@given(NAMES)
def test_a_name_matches_itself_and_all(name: str) -> None:
    assert matches(name, name)
    assert matches("**", name)


@given(NAMES, NAMES)
def test_star_stays_in_one_segment(first: str, rest: str) -> None:
    segments = first.split("/")
    star = "/".join(["*"] * len(segments))
    assert matches(star, first)
    assert not matches(star, first + "/" + rest)
    assert matches(segments[0] + "/**", first + "/" + rest)


def test_patterns_any_and_unmatched() -> None:
    chosen = Patterns(["p11/*", "p12/**"])
    assert chosen("p11/a") and chosen("p12/a/b") and not chosen("p13/a")
    assert chosen.unmatched(["p11/a"]) == ["p12/**"]
    assert Patterns()("anything/at/all")
