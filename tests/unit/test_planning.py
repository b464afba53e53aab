"""Planning against the pending state, writing in order (receiver/planning.py, ADR 0010)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from hidra_ng.errors import DiskFull, NotYetAvailable
from hidra_ng.receiver.store import Store
from hidra_ng.wire import protocol as proto
from tests.unit.test_store import incoming, stored_payloads


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "store", map_bytes=64 << 20)
    yield s
    s.close()


def indices(planned) -> list[tuple[str, int]]:
    return [(c.stream, c.index) for c in planned.result.committed]


def test_a_batch_planned_on_top_of_an_unwritten_one_continues_its_indices(store):
    first = store.plan([incoming("a", 1, i) for i in range(3)] + [incoming("b", 1, 0, stream="t")])
    second = store.plan([incoming("a", 1, i) for i in range(2, 5)])  # seq 2 again: a duplicate
    assert indices(first) == [("s", 0), ("s", 1), ("s", 2), ("t", 0)]
    assert indices(second) == [("s", 3), ("s", 4)]
    assert (second.result.duplicates, second.result.acks) == (1, {("a", 1): 4})
    # readers see nothing planned, and each batch once its commit is done
    with pytest.raises(NotYetAvailable):
        store.info("s")
    store.write(first)
    assert (store.info("s").count, store.last_seq("a", 1)) == (3, 2)
    store.write(second)
    assert store.info("s").count == 5 and store.info("t").count == 1
    assert stored_payloads(store, "s") == [f"a:1:{i}".encode() for i in range(5)]


def test_a_group_commit_of_two_plans_is_one_write(store):
    batch = store.plan([incoming("a", 1, 0), incoming("a", 1, 1, stream="new")])
    later = store.plan([incoming("a", 1, 2), incoming("b", 7, 0, stream="new")])
    batch.extend(later)
    result = store.write(batch)
    assert [(c.stream, c.index) for c in result.committed] == [
        ("s", 0), ("new", 0), ("s", 1), ("new", 1)
    ]  # fmt: skip
    assert result.acks == {("a", 1): 2, ("b", 7): 0} and result.touched == {"s", "new"}
    assert len(batch.items) == 4 and batch.nbytes == sum(len(i.payload) for i in batch.items)
    assert store.info("new").count == 2 and store.last_seq("b", 7) == 0


def test_a_part_replanned_against_the_committed_state_gets_the_same_indices(store):
    store.append([incoming("a", 1, 0)])
    items = [incoming("a", 1, i, stream=f"s{i % 3}") for i in range(1, 9)]
    planned = store.plan(items)
    later = store.plan([incoming("a", 1, 9, stream="s0")])
    # the commit of ``planned`` fails; the committer commits it in parts, re-planned
    done = []
    for part in (items[:3], items[3:4], items[4:]):
        done += store.write(store.replan(part)).committed
    assert [(c.stream, c.index) for c in done] == indices(planned)
    seqs = [msgspec.msgpack.decode(c.record, type=proto.Record).seq for c in done]
    assert seqs == list(range(1, 9))
    store.write(later)  # planned on top of the batch whose parts were committed instead
    assert indices(later) == [("s0", 2)] and store.info("s0").count == 3
    assert store.last_seq("a", 1) == 9


def test_a_failed_write_changes_nothing_and_can_be_retried(store, monkeypatch):
    planned = store.plan([incoming("a", 1, i) for i in range(3)])

    def full(fill, **options):
        raise DiskFull("simulated: no space left")

    write = store.env.write
    monkeypatch.setattr(store.env, "write", full)
    with pytest.raises(DiskFull):
        store.write(planned)
    assert store.last_seq("a", 1) == -1 and store.next_index("s") == 0
    monkeypatch.setattr(store.env, "write", write)
    assert [c.index for c in store.write(planned).committed] == [0, 1, 2]


def test_append_that_fails_leaves_no_pending_state(store, monkeypatch):
    def full(fill, **options):
        raise DiskFull("simulated: no space left")

    write = store.env.write
    monkeypatch.setattr(store.env, "write", full)
    with pytest.raises(DiskFull):
        store.append([incoming("a", 1, 0), incoming("a", 1, 1)])
    monkeypatch.setattr(store.env, "write", write)
    result = store.append([incoming("a", 1, 0)])  # as if the first never happened
    assert [c.index for c in result.committed] == [0] and result.acks == {("a", 1): 0}


def test_retention_between_plan_and_write_keeps_its_first_index(store):
    store.append([incoming("a", 1, i, payload=bytes(100)) for i in range(5)])
    planned = store.plan([incoming("a", 1, 5, payload=bytes(100))])
    assert store.enforce_retention(max_bytes=300) == 2  # the committed ones only
    store.write(planned)
    info = store.info("s")
    assert (info.first, info.last, info.bytes) == (2, 5, 400)


def test_live_and_stored_record_are_the_same_bytes(store):
    planned = store.plan([incoming("a", 1, 0)], now=123.0)
    store.write(planned)
    record = store.read("s", 0)[0]
    assert record == planned.result.committed[0].record
    assert msgspec.msgpack.decode(record, type=proto.Record).stored == 123.0


def test_settle_follows_the_committed_state_again(store):
    store.plan([incoming("a", 1, 0)])  # given up (a stop while the disk was full)
    store.settle()
    planned = store.plan([incoming("a", 1, 0)])
    assert indices(planned) == [("s", 0)] and planned.result.duplicates == 0
