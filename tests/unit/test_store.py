"""The receiver's store without a network: indices, ordering, dedupe, restart."""

from __future__ import annotations

import random
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng.errors import Gone, NotYetAvailable, StreamFinished
from hidra_ng.receiver.store import Incoming, Store
from hidra_ng.wire import protocol as proto


def incoming(sender, incarnation, seq, stream="s", floor=0, epoch=0, payload=None, finish=False):
    if payload is None:
        payload = f"{sender}:{incarnation}:{seq}".encode()
    kind = proto.Payload.FINISH if finish else proto.Payload.BYTES
    header = proto.Header(stream, seq, kind, "", (), "none", b"{}", 0.0)
    return Incoming(
        proto.Envelope(sender, incarnation, floor, epoch), header, b"" if finish else payload
    )


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "store", map_bytes=64 << 20)
    yield s
    s.close()


def stored_payloads(store: Store, stream: str) -> list[bytes]:
    info = store.info(stream)
    return [store.read(stream, i)[1] for i in range(info.first, info.count)]


def test_indices_are_consecutive_from_zero_per_stream(store):
    result = store.append([incoming("a", 1, i, stream=f"s{i % 2}") for i in range(6)])
    assert [(c.stream, c.index) for c in result.committed] == [
        ("s0", 0), ("s1", 0), ("s0", 1), ("s1", 1), ("s0", 2), ("s1", 2)
    ]  # fmt: skip
    assert result.acks == {("a", 1): 5}
    assert store.info("s0").last == 2 and store.info("s1").count == 3


def test_stored_is_the_commit_time_one_clock_reading_per_commit(store, monkeypatch):
    clock = iter([1000.0, 2000.0])
    monkeypatch.setattr("hidra_ng.receiver.store.time.time", lambda: next(clock))
    result = store.append([incoming("a", 1, i) for i in range(3)])
    store.append([incoming("a", 1, 3)])

    def stored(record: bytes) -> float:
        return msgspec.msgpack.decode(record, type=proto.Record).stored

    assert [stored(c.record) for c in result.committed] == [1000.0] * 3  # as published
    assert [stored(store.read("s", i)[0]) for i in range(4)] == [1000.0] * 3 + [2000.0]


def test_resends_are_stored_once_and_acked_again(store):
    store.append([incoming("a", 1, i) for i in range(3)])
    result = store.append([incoming("a", 1, i) for i in range(4)])
    assert result.duplicates == 3
    assert [c.index for c in result.committed] == [3]
    assert result.acks == {("a", 1): 3}
    assert stored_payloads(store, "s") == [b"a:1:0", b"a:1:1", b"a:1:2", b"a:1:3"]


def test_a_gap_stores_nothing_after_it_and_asks_for_a_resend(store):
    result = store.append([incoming("a", 1, 0), incoming("a", 1, 2, epoch=4), incoming("a", 1, 3)])
    assert [c.index for c in result.committed] == [0]
    assert result.gaps == {("a", 1): (1, 4)}
    result = store.append([incoming("a", 1, 1), incoming("a", 1, 2)])
    assert stored_payloads(store, "s") == [b"a:1:0", b"a:1:1", b"a:1:2"]


def test_a_new_incarnation_starts_at_its_floor(store):
    result = store.append([incoming("a", 9, 100, floor=100), incoming("a", 9, 101, floor=100)])
    assert result.acks == {("a", 9): 101}
    # a message below the floor of an unknown incarnation is an old duplicate
    other = store.append([incoming("b", 1, 4, floor=5)])
    assert other.duplicates == 1 and not other.committed


def test_same_sender_new_incarnation_is_not_a_duplicate(store):
    store.append([incoming("a", 1, i) for i in range(3)])
    result = store.append([incoming("a", 2, i) for i in range(3)])
    assert len(result.committed) == 3 and result.duplicates == 0


def test_finish_and_reads(store):
    store.append([incoming("a", 1, 0), incoming("a", 1, 1, finish=True)])
    info = store.info("s")
    assert (info.first, info.last, info.count, info.finished) == (0, 0, 1, True)
    with pytest.raises(StreamFinished, match="stream 's' is finished; its last index is 0"):
        store.check_index("s", 1)
    with pytest.raises(NotYetAvailable, match="index 0 of stream 'other' is not written yet"):
        store.check_index("other", 0)
    with pytest.raises(Gone, match="negative"):
        store.check_index("s", -1)
    with pytest.raises(NotYetAvailable, match="has no messages yet"):
        store.info("other")


def test_restart_resumes_indices_and_dedupe(tmp_path):
    s = Store(tmp_path / "st", map_bytes=64 << 20)
    s.append([incoming("a", 1, i) for i in range(5)])
    s.close()
    s = Store(tmp_path / "st", map_bytes=64 << 20)
    assert s.last_seq("a", 1) == 4
    result = s.append([incoming("a", 1, i) for i in range(3, 7)])
    assert [c.index for c in result.committed] == [5, 6] and result.duplicates == 2
    s.close()


def test_the_map_grows_when_full(tmp_path):
    s = Store(tmp_path / "st", map_bytes=1)  # clamped to the 64 MiB minimum
    start = s.env.map_bytes
    big = bytes(8 << 20)
    for i in range(12):
        s.append([incoming("a", 1, i, payload=big)])
    assert s.env.map_bytes > start
    assert s.info("s").count == 12 and s.read("s", 11)[1] == big
    s.close()


class Model:
    """What the store must do, in plain Python: per incarnation, go-back-N."""

    def __init__(self):
        self.last: dict[tuple[str, int], int] = {}
        self.streams: dict[str, list[bytes]] = {}

    def offer(self, item: Incoming) -> None:
        key = (item.envelope.sender, item.envelope.incarnation)
        last = self.last.get(key, item.envelope.floor - 1)
        if item.header.seq == last + 1:
            self.last[key] = item.header.seq
            self.streams.setdefault(item.header.stream, []).append(bytes(item.payload))


@given(
    plan=st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),  # sender
            st.integers(1, 2),  # incarnation
            st.integers(0, 12),  # seq
            st.sampled_from(["x", "y/z"]),  # stream
        ),
        max_size=80,
    ),
    batch_cut=st.integers(1, 10),
    restart_at=st.integers(0, 80),
)
@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
def test_store_matches_the_go_back_n_model(tmp_path_factory, plan, batch_cut, restart_at):
    path = tmp_path_factory.mktemp("prop") / "st"
    store = Store(path, map_bytes=64 << 20)
    model = Model()
    items = [
        incoming(s, inc, seq, stream=stream, payload=f"{s}{inc}-{seq}".encode())
        for s, inc, seq, stream in plan
    ]
    try:
        for start in range(0, len(items), batch_cut):
            if start >= restart_at > start - batch_cut:
                store.close()
                store = Store(path, map_bytes=64 << 20)
            batch = items[start : start + batch_cut]
            store.append(batch)
            for item in batch:
                model.offer(item)
        for stream, expected in model.streams.items():
            info = store.info(stream)
            assert (info.first, info.count) == (0, len(expected))  # consecutive, no gaps
            assert stored_payloads(store, stream) == expected  # once each, in seq order
        assert {i.name for i in store.streams()} == set(model.streams)
        for (sender, inc), last in model.last.items():
            assert store.last_seq(sender, inc) == last
    finally:
        store.close()


def test_many_random_batches_never_duplicate(tmp_path):
    rng = random.Random(7)
    store = Store(tmp_path / "st", map_bytes=64 << 20)
    sent = [incoming("a", 1, i, payload=rng.randbytes(50)) for i in range(300)]
    delivered = 0
    while delivered < 300:
        # resend from a little before what was acked, with loss and reordering
        start = max(0, delivered - rng.randint(0, 5))
        window = sent[start : start + rng.randint(1, 30)]
        rng.shuffle(window) if rng.random() < 0.3 else None
        result = store.append(window)
        delivered = result.acks.get(("a", 1), delivered - 1) + 1
    assert stored_payloads(store, "s") == [bytes(i.payload) for i in sent]
    store.close()


def test_retention_by_age_removes_what_is_older_and_never_reuses_indices(tmp_path):
    store = Store(tmp_path / "st", map_bytes=64 << 20)
    try:
        for i in range(10):  # stored at t = 100 .. 109
            store.append([incoming("a", 1, i, stream="old")], now=100.0 + i)
        store.append([incoming("a", 1, 10, stream="new")], now=200.0)
        assert store.enforce_retention(max_age_seconds=50.0, now=149.9) == 0  # none older
        removed = store.enforce_retention(max_age_seconds=50.0, now=156.5)
        assert removed == 7  # stored at 100 .. 106 are older than 106.5
        info = store.info("old")
        assert (info.first, info.last, info.count) == (7, 9, 3)
        with pytest.raises(Gone):
            store.read("old", 6)
        assert store.read("old", 7)[1] == b"a:1:7"
        store.append([incoming("a", 1, 11, stream="old")], now=300.0)
        assert store.info("old").last == 10  # the next index, never a reused one
        assert store.info("new").count == 1
    finally:
        store.close()


def test_retention_by_size_takes_the_oldest_streams_first(tmp_path):
    store = Store(tmp_path / "st", map_bytes=64 << 20)
    try:
        seq = 0
        for stream in ("first", "second"):
            for _ in range(5):
                store.append([incoming("a", 1, seq, stream=stream, payload=bytes(100))])
                seq += 1
        assert store.enforce_retention(max_bytes=550) == 5
        first, second = store.info("first"), store.info("second")
        assert (first.count, second.count) == (0, 5)  # the older stream went first
        assert (first.first, first.bytes, second.bytes) == (5, 0, 500)
        assert store.enforce_retention(max_bytes=350) == 2  # then the next oldest
        assert (store.info("second").first, store.stored_bytes()) == (2, 300)
    finally:
        store.close()


def test_retention_lets_lmdb_reuse_the_space(tmp_path):
    """A store at its size limit stops growing on disk: freed pages are reused."""
    store = Store(tmp_path / "st", map_bytes=64 << 20)
    frame = bytes(64 << 10)
    try:
        sizes = []
        for i in range(400):  # 25 MiB written through a 1 MiB store
            store.append([incoming("a", 1, i, payload=frame)])
            store.enforce_retention(max_bytes=1 << 20)
            if i % 100 == 99:
                sizes.append(store.env.disk_bytes())
        assert store.stored_bytes() <= 1 << 20
        assert sizes[-1] < 8 << 20, sizes  # not the 25 MiB that went through
        assert sizes[-1] <= sizes[0] * 1.5, sizes  # flat once at the limit
    finally:
        store.close()


def test_messages_written_in_order_fill_their_pages(store):
    """1 KiB payloads: at least 3 per 4 KiB page (LMDB's middle split left 2: 1.5x the disk).

    Since ADR 0004 they are packed in blocks (overflow pages, ~4 per page).
    """
    for batch in range(3):
        store.append([incoming("a", 1, batch * 100 + i, payload=bytes(1024)) for i in range(100)])
    with store.env.read() as txn:
        stats = [txn.stat(store.env.dbs[name]) for name in ("payloads", "records", "blocks")]
    pages = sum(s["leaf_pages"] + s["overflow_pages"] for s in stats)
    assert pages <= 300 // 3 + 1


def test_older_streams_are_still_written_after_a_newer_one(store):
    """Keys of an older stream are not the highest: they are put, not appended."""
    store.append([incoming("a", 1, 0, stream="old"), incoming("a", 1, 1, stream="new")])
    store.append([incoming("a", 1, 2, stream="old"), incoming("a", 1, 3, stream="new")])
    store.append([incoming("a", 1, 4, stream="old")])
    assert stored_payloads(store, "old") == [b"a:1:0", b"a:1:2", b"a:1:4"]
    assert stored_payloads(store, "new") == [b"a:1:1", b"a:1:3"]
