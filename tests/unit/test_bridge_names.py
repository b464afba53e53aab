"""hidra stream name -> RabbitMQ stream name (SPEC §13): valid and one to one."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hidra_ng.bridge.names import BROKER_NAME, broker_name, check_prefix, hidra_name
from hidra_ng.errors import ConfigError
from hidra_ng.wire.protocol import MAX_STREAM_NAME, check_stream_name

SEGMENT = st.text(alphabet="aZ09_.-", min_size=1, max_size=60)
NAMES = (
    st.lists(SEGMENT, min_size=1, max_size=12)
    .map("/".join)
    .filter(lambda n: len(n) <= MAX_STREAM_NAME)
)
LONG = st.text(alphabet=".-", min_size=128, max_size=MAX_STREAM_NAME).filter(
    lambda n: n.count(".") + n.count("-") > 0
)


def test_documented_examples() -> None:
    assert broker_name("p11/scan_0001") == "hidra.p11.scan_0001"
    assert broker_name("run-1.5/x") == "hidra.run--1-.5.x"
    assert broker_name("a", "p11.hidra") == "p11.hidra.a"


@given(NAMES)
def test_every_name_maps_to_a_valid_broker_name_that_reads_back(name: str) -> None:
    check_stream_name(name)
    mapped = broker_name(name)
    assert BROKER_NAME.fullmatch(mapped)
    assert len(mapped.encode()) <= 255
    assert not mapped.startswith("amq.")
    if "-h" not in mapped.replace("--", "").replace("-.", ""):
        assert hidra_name(mapped) == name


@given(st.lists(NAMES | LONG, min_size=2, max_size=20, unique=True))
def test_distinct_names_stay_distinct(names: list[str]) -> None:
    mapped = [broker_name(n) for n in names]
    assert len(set(mapped)) == len(names)


@given(NAMES, NAMES)
def test_no_collision_between_pairs(a: str, b: str) -> None:
    assert (broker_name(a) == broker_name(b)) == (a == b)


def test_a_long_name_is_cut_and_hashed_and_never_equals_a_short_one() -> None:
    long = "." * MAX_STREAM_NAME  # not a valid stream name, the worst case of the code
    mapped = broker_name(long)
    assert len(mapped) <= 255 and BROKER_NAME.fullmatch(mapped)
    assert hidra_name(mapped) is None
    assert broker_name("-" * MAX_STREAM_NAME) != mapped


@pytest.mark.parametrize("bad", ["", "amq.x", "a/b", "a..b", "a b", "x" * 41])
def test_bad_prefix_is_named(bad: str) -> None:
    with pytest.raises(ConfigError, match="bridge prefix"):
        check_prefix(bad)
