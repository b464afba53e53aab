"""The block codec of packed small messages (spool batches, store blocks; ADR 0004)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hidra_ng.errors import StorageError
from hidra_ng.wire.block import (
    BLOCK_MAX_BYTES,
    BLOCK_MAX_COUNT,
    PACK_BELOW_BYTES,
    Block,
    pack,
    runs,
)

entries = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), min_size=1)


@given(entries)
def test_every_entry_reads_back_as_packed(items):
    value = pack([h for h, _ in items], [memoryview(p) for _, p in items])
    block = Block(value)
    assert block.count == len(items)
    assert [(bytes(h), bytes(p)) for h, p in (block.entry(j) for j in range(len(items)))] == items
    assert [(bytes(h), bytes(p)) for h, p in block.entries()] == items
    assert [bytes(h) for h in map(block.head, range(len(items)))] == [h for h, _ in items]


@given(entries, st.data())
def test_entries_from_any_start_and_payload_runs_are_slices(items, data):
    block = Block(pack([h for h, _ in items], [p for _, p in items]))
    start = data.draw(st.integers(0, len(items)))
    stop = data.draw(st.integers(start, len(items)))
    assert [(bytes(h), bytes(p)) for h, p in block.entries(start)] == items[start:]
    assert bytes(block.payloads(start, stop)) == b"".join(p for _, p in items[start:stop])


@given(entries, st.data())
def test_a_run_is_the_heads_sizes_and_joined_payloads_of_its_entries(items, data):
    block = Block(pack([h for h, _ in items], [p for _, p in items]))
    start = data.draw(st.integers(0, len(items)))
    stop = data.draw(st.integers(start, len(items)))
    heads, sizes, joined = block.run(start, stop)
    assert [bytes(h) for h in heads] == [h for h, _ in items[start:stop]]
    assert sizes == [len(p) for _, p in items[start:stop]]
    assert bytes(joined) == b"".join(p for _, p in items[start:stop])


def test_an_entry_outside_the_block_is_an_index_error():
    block = Block(pack([b"h"], [b"p"]))
    with pytest.raises(IndexError, match="entry 1 of a block of 1"):
        block.entry(1)
    with pytest.raises(IndexError):
        block.entry(-1)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (b"", "bad magic"),
        (b"XX\x01\x01\x00\x00\x00", "bad magic"),
        (b"HB\x01\x00\x00\x00\x00", "truncated: 7 bytes for 0 entries"),
        (b"HB\x01\x02\x00\x00\x00" + bytes(4), "truncated"),
        (pack([b"head"], [b"payload"])[:-1], "corrupt"),
        (pack([b"head"], [b"payload"]) + b"x", "corrupt"),
    ],
)
def test_a_damaged_value_is_refused_with_where_it_is(value, says):
    with pytest.raises(StorageError, match=f"block 3:9 .*{says}"):
        Block(value, "block 3:9")


def test_pack_refuses_mismatched_or_empty_lists():
    with pytest.raises(ValueError, match="as many heads as payloads"):
        pack([b"a"], [])
    with pytest.raises(ValueError, match="at least one"):
        pack([], [])


sizes = st.lists(
    st.one_of(st.integers(0, 2048), st.integers(PACK_BELOW_BYTES - 2, PACK_BELOW_BYTES + 2)),
    max_size=200,
)


@given(sizes)
def test_runs_cover_every_entry_once_in_order_within_the_limits(sizes):
    cuts = list(runs(sizes))
    assert [i for a, b in cuts for i in range(a, b)] == list(range(len(sizes)))
    for a, b in cuts:
        assert b > a
        if any(s >= PACK_BELOW_BYTES for s in sizes[a:b]):
            assert b - a == 1  # a large payload is alone
        else:
            assert b - a <= BLOCK_MAX_COUNT
            assert b - a == 1 or sum(sizes[a:b]) <= BLOCK_MAX_BYTES


def test_runs_cut_at_the_block_limits():
    assert list(runs([1] * (BLOCK_MAX_COUNT + 1))) == [
        (0, BLOCK_MAX_COUNT),
        (BLOCK_MAX_COUNT, BLOCK_MAX_COUNT + 1),
    ]
    per = PACK_BELOW_BYTES - 1  # 16 of them fit in BLOCK_MAX_BYTES, 17 do not
    assert list(runs([per] * 17)) == [(0, 16), (16, 17)]
    big = PACK_BELOW_BYTES
    assert list(runs([1, 2, big, 3, big, big])) == [(0, 2), (2, 3), (3, 4), (4, 5), (5, 6)]
