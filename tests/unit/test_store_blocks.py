"""The store's blocks of small messages (ADR 0004): reads, scans, retention, old stores."""

from __future__ import annotations

import random
from pathlib import Path

import lmdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng.errors import Gone
from hidra_ng.receiver.layout import KEY, frame_key
from hidra_ng.receiver.store import Store, StreamMeta, sender_key
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.block import BLOCK_MAX_COUNT, PACK_BELOW_BYTES, Block
from tests.unit.test_store import incoming

KiB = 1 << 10


@pytest.fixture
def store(tmp_path: Path):
    s = Store(tmp_path / "store", map_bytes=64 << 20)
    yield s
    s.close()


def payload(k: int, size: int) -> bytes:
    return (b"%d:" % k + bytes(random.Random(k).randbytes(max(0, size))))[:size]


def table(store: Store, name: str) -> list[tuple[int, int]]:
    """(stream id, index) keys of a table of the store."""
    with store.env.read() as txn:
        return [KEY.unpack(key) for key, _ in txn.cursor(db=store.env.dbs[name])]


def record_of(raw: bytes) -> proto.Record:
    return msgspec.msgpack.decode(raw, type=proto.Record)


SIZES = [1 * KiB] * 5 + [100 * KiB] + [1 * KiB] * 3 + [0, PACK_BELOW_BYTES - 1, PACK_BELOW_BYTES]


def test_small_messages_of_a_commit_share_a_block_large_ones_stay_alone(store):
    sent = [payload(k, size) for k, size in enumerate(SIZES)]
    store.append([incoming("a", 1, k, payload=p) for k, p in enumerate(sent)])
    assert table(store, "records") == [(0, 5), (0, 11)]  # the two of 64 KiB and more
    assert table(store, "payloads") == [(0, 5), (0, 11)]
    assert table(store, "blocks") == [(0, 4), (0, 10)]  # keyed by their last index
    for k, p in enumerate(sent):
        raw, data = store.read("s", k)
        assert data == p
        assert (record_of(raw).seq, record_of(raw).nbytes) == (k, len(p))
    assert store.info("s").bytes == sum(SIZES)


def test_each_stream_of_a_commit_gets_its_own_blocks(store):
    store.append([incoming("a", 1, k, stream=f"s{k % 3}") for k in range(30)])
    assert table(store, "blocks") == [(0, 9), (1, 9), (2, 9)]
    assert table(store, "records") == []
    for k in range(30):
        assert store.read(f"s{k % 3}", k // 3)[1] == b"a:1:%d" % k


def test_a_commit_larger_than_a_block_is_cut_at_the_block_limit(store):
    n = BLOCK_MAX_COUNT + 10
    store.append([incoming("a", 1, k, payload=b"x") for k in range(n)])
    assert table(store, "blocks") == [(0, BLOCK_MAX_COUNT - 1), (0, n - 1)]
    assert store.read("s", BLOCK_MAX_COUNT - 1)[1] == store.read("s", BLOCK_MAX_COUNT)[1] == b"x"


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    commits=st.lists(
        st.lists(st.sampled_from([0, 10, 1 * KiB, PACK_BELOW_BYTES]), min_size=1, max_size=12),
        min_size=1,
        max_size=6,
    ),
    seed=st.integers(0, 1000),
)
def test_get_reader_scan_and_read_range_agree_with_what_was_sent(tmp_path_factory, commits, seed):
    store = Store(tmp_path_factory.mktemp("st"), map_bytes=64 << 20)
    try:
        sent: list[bytes] = []
        for sizes in commits:
            batch = []
            for size in sizes:
                k = len(sent)
                sent.append(payload(k, size))
                batch.append(incoming("a", 1, k, stream="s", payload=sent[-1]))
            store.append(batch)
        order = list(range(len(sent)))
        random.Random(seed).shuffle(order)
        with store.reader("s") as read:  # random order: the reader's block cache is no help
            assert {i: bytes(read(i)[1]) for i in order} == dict(enumerate(sent))
        for start in range(len(sent)):
            rows = store.read_range("s", start, len(sent), max_frames=7, max_bytes=1 << 30)
            assert [(i, p) for i, _, p in rows] == [
                (i, sent[i]) for i in range(start, start + len(rows))
            ]
            assert len(rows) == min(7, len(sent) - start)
        rows, _ = store.select("s", lambda row: row[1] % 2 == 0, 0, len(sent), limit=1000)
        assert [i for i, _ in rows] == [i for i in range(len(sent)) if i % 2 == 0]
    finally:
        store.close()


def test_read_range_stops_at_the_byte_limit_across_blocks(store):
    store.append([incoming("a", 1, k, payload=bytes(1000)) for k in range(10)])
    store.append([incoming("a", 1, k, payload=bytes(1000)) for k in range(10, 20)])
    rows = store.read_range("s", 5, 20, max_frames=100, max_bytes=8000)
    assert [i for i, _, _ in rows] == list(range(5, 13))
    rows = store.read_range("s", 5, 9, max_frames=100, max_bytes=1 << 20)
    assert [i for i, _, _ in rows] == [5, 6, 7, 8]


def test_select_reads_past_blocks_and_alone_messages_in_index_order(store):
    sizes = [10, PACK_BELOW_BYTES, 10, 10, PACK_BELOW_BYTES, 10]
    store.append([incoming("a", 1, k, payload=bytes(s)) for k, s in enumerate(sizes)])
    rows, next_index = store.select("s", lambda row: True, 0, len(sizes), limit=4)
    assert [i for i, _ in rows] == [0, 1, 2, 3]
    assert [record_of(r).nbytes for _, r in rows] == sizes[:4]
    assert next_index == 4  # where a query with start=4 goes on


# ------------------------------------------------------------------ retention


def test_retention_removes_whole_blocks_and_moves_first_inside_a_partial_one(tmp_path):
    store = Store(tmp_path / "st", map_bytes=64 << 20)
    for commit in range(3):  # three blocks of 10 messages of 100 bytes
        store.append([incoming("a", 1, commit * 10 + k, payload=bytes(100)) for k in range(10)])
    assert table(store, "blocks") == [(0, 9), (0, 19), (0, 29)]
    assert store.enforce_retention(max_bytes=1500) == 15  # block 0..9 and half of 10..19
    info = store.info("s")
    assert (info.first, info.count, info.bytes) == (15, 15, 1500)
    assert table(store, "blocks") == [(0, 19), (0, 29)]  # the partial block stays whole
    with pytest.raises(Gone, match="index 14 of stream 's' was removed by retention"):
        store.read("s", 14)
    with pytest.raises(Gone):
        store.read_range("s", 12, 30, 100, 1 << 20)
    assert [i for i, _, _ in store.read_range("s", 15, 30, 100, 1 << 20)] == list(range(15, 30))
    rows, next_index = store.select("s", lambda row: True, 0, 30, 100)
    assert ([i for i, _ in rows], next_index) == (list(range(15, 30)), 30)
    assert store.enforce_retention(max_bytes=900) == 6  # the rest of 10..19, and index 20
    assert table(store, "blocks") == [(0, 29)]
    assert store.info("s").first == 21
    store.close()
    reopened = Store(store.env.path)
    try:
        assert reopened.info("s").first == 21
        assert reopened.read("s", 21)[1] == bytes(100)
        with pytest.raises(Gone):
            reopened.read("s", 20)
    finally:
        reopened.close()


def test_retention_of_mixed_blocks_and_alone_messages_deletes_all_their_keys(store):
    sizes = [10, 10, PACK_BELOW_BYTES, 10, PACK_BELOW_BYTES]
    store.append([incoming("a", 1, k, payload=bytes(s)) for k, s in enumerate(sizes)], now=1.0)
    store.append([incoming("a", 1, 5, payload=bytes(10))], now=100.0)
    assert store.enforce_retention(max_age_seconds=10.0, now=50.0) == 5
    assert table(store, "records") == table(store, "payloads") == []
    assert table(store, "blocks") == [(0, 5)]
    assert store.read("s", 5)[1] == bytes(10)


def test_retention_stops_at_max_delete_inside_a_block_and_goes_on_next_time(store):
    store.append([incoming("a", 1, k, payload=bytes(10)) for k in range(10)], now=1.0)
    assert store.enforce_retention(max_age_seconds=1.0, now=5.0, max_delete=4) == 4
    assert table(store, "blocks") == [(0, 9)]
    assert store.enforce_retention(max_age_seconds=1.0, now=5.0, max_delete=4) == 4
    assert store.enforce_retention(max_age_seconds=1.0, now=5.0, max_delete=4) == 2
    assert table(store, "blocks") == []
    assert store.drain_emptied() == ["s"]


# ------------------------------------------------------------- stores written before blocks


def write_old_store(path: Path, messages: list[bytes]) -> None:
    """A store as the code before blocks wrote it: every message alone, a Record and a payload."""
    env = lmdb.open(str(path), max_dbs=5, map_size=64 << 20)
    dbs = {
        name: env.open_db(name.encode()) for name in ("streams", "records", "payloads", "senders")
    }
    with env.begin(write=True) as txn:
        for k, data in enumerate(messages):
            record = proto.Record(
                "old", k, proto.Payload.BYTES, "", (), "none", b'{"k":%d}' % k, 1.0, 1.0, len(data)
            )
            txn.put(frame_key(0, k), proto.encode_body(record), db=dbs["records"])
            if data:
                txn.put(frame_key(0, k), data, db=dbs["payloads"])
        meta = StreamMeta(0, 0, len(messages), False, sum(map(len, messages)))
        txn.put(b"s", proto.encode_body(meta), db=dbs["streams"])
        txn.put(sender_key("old", 1), (len(messages) - 1).to_bytes(8, "big"), db=dbs["senders"])
    env.close()


def test_a_store_written_before_blocks_opens_reads_and_grows(tmp_path):
    old = [payload(k, 100 * (k % 4)) for k in range(12)]
    write_old_store(tmp_path / "st", old)
    store = Store(tmp_path / "st", map_bytes=64 << 20)
    try:
        assert store.last_seq("old", 1) == 11
        assert [store.read("s", k)[1] for k in range(12)] == old
        new = [payload(k, 50) for k in range(12, 20)]
        result = store.append(
            [incoming("new", 1, k - 12, payload=p) for k, p in enumerate(new, 12)]
        )
        assert [c.index for c in result.committed] == list(range(12, 20))
        assert table(store, "blocks") == [(0, 19)]  # new messages packed, old ones as they were
        everything = old + new
        with store.reader("s") as read:
            assert [bytes(read(i)[1]) for i in range(20)] == everything
        rows = store.read_range("s", 8, 20, 100, 1 << 30)
        assert [p for _, _, p in rows] == everything[8:]
        rows, _ = store.select("s", lambda row: row[1] % 5 == 0, 0, 20, 100)
        assert [i for i, _ in rows] == [0, 5, 10, 15]
        assert store.enforce_retention(max_bytes=sum(map(len, new))) == 12  # all old ones
        assert table(store, "records") == table(store, "payloads") == []
        assert store.read("s", 12)[1] == new[0]
    finally:
        store.close()


def test_a_damaged_block_is_a_storage_error_naming_it(store):
    from hidra_ng.errors import StorageError

    store.append([incoming("a", 1, k) for k in range(3)])
    store.env.write(lambda txn: txn.put(frame_key(0, 2), b"HB\x01junk", db=store.env.dbs["blocks"]))
    with pytest.raises(StorageError, match="block 0:2 is truncated"):
        store.read("s", 1)


def test_blocks_cost_one_value_per_commit_and_stream(store):
    store.append([incoming("a", 1, k, payload=bytes(KiB)) for k in range(100)])
    with store.env.read() as txn:
        stat = txn.stat(store.env.dbs["blocks"])
        value = txn.get(frame_key(0, 99), db=store.env.dbs["blocks"])
        assert Block(value).count == 100
    assert stat["entries"] == 1
    assert table(store, "records") == []
