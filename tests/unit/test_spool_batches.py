"""The sender's spool with batches of small messages (ADR 0004), and spools written before them."""

from __future__ import annotations

import struct
from pathlib import Path

import lmdb
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng.sender.spool import Spool, entry_bytes
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.block import PACK_BELOW_BYTES

SEQ = struct.Struct(">Q")
BIG = PACK_BELOW_BYTES


def header(k: int, stream: str = "s") -> proto.Header:
    meta = b'{"k":%d}' % k
    return proto.Header(stream, 0, proto.Payload.BYTES, "", (), "none", meta, 1.0)


def item(k: int, size: int) -> tuple[proto.Header, bytes]:
    return header(k), (b"%d:" % k + bytes(size))[:size]


def keys(spool: Spool, name: str) -> list[int]:
    with spool.env.read() as txn:
        return [SEQ.unpack(key)[0] for key, _ in txn.cursor(db=spool.env.dbs[name])]


def values_bytes(spool: Spool) -> int:
    with spool.env.read() as txn:
        return sum(
            len(value)
            for name in ("headers", "payloads", "batches")
            for _, value in txn.cursor(db=spool.env.dbs[name])
        )


def check_read(spool: Spool, sent: dict[int, bytes], start: int) -> None:
    got = spool.read(start, 10_000, 1 << 30)
    assert [o.seq for o in got] == sorted(s for s in sent if s >= start)
    for o in got:
        h = msgspec.msgpack.decode(o.header, type=proto.Header)
        assert (h.seq, o.payload) == (o.seq, sent[o.seq])


@pytest.fixture
def spool(tmp_path: Path):
    s = Spool(tmp_path / "spool", "det")
    yield s
    s.close()


def test_a_send_many_of_small_messages_is_one_value(spool):
    assert spool.append([item(k, 1024) for k in range(100)]) == list(range(100))
    assert keys(spool, "batches") == [99]
    assert keys(spool, "headers") == keys(spool, "payloads") == []
    assert spool.bytes == values_bytes(spool)
    check_read(spool, {k: item(k, 1024)[1] for k in range(100)}, 0)


def test_large_messages_stay_alone_between_batches(spool):
    sizes = [10, 10, BIG, 10, 0, BIG + 1]
    spool.append([item(k, s) for k, s in enumerate(sizes)])
    assert keys(spool, "batches") == [1, 4]
    assert keys(spool, "headers") == keys(spool, "payloads") == [2, 5]
    sent = {k: item(k, s)[1] for k, s in enumerate(sizes)}
    for start in range(len(sizes)):
        check_read(spool, sent, start)
    assert spool.bytes == values_bytes(spool)


def test_read_stops_at_count_and_bytes_but_returns_at_least_one(spool):
    spool.append([item(k, 1000) for k in range(10)])
    assert [o.seq for o in spool.read(3, 4, 1 << 20)] == [3, 4, 5, 6]
    assert [o.seq for o in spool.read(3, 100, 2500)] == [3, 4]
    assert [o.seq for o in spool.read(3, 100, 10)] == [3]


def test_a_partly_acknowledged_batch_stays_until_all_of_it_is_acknowledged(tmp_path):
    spool = Spool(tmp_path / "spool", "det")
    spool.append([item(k, 100) for k in range(10)])
    spool.append([item(k, 100) for k in range(10, 20)])
    full = spool.bytes
    assert spool.release(4) == 0  # inside the first batch: nothing to delete yet
    assert (spool.lowest, spool.count, spool.bytes) == (5, 15, full)
    assert [o.seq for o in spool.read(spool.lowest, 100, 1 << 20)] == list(range(5, 20))
    spool.close()

    spool = Spool(tmp_path / "spool", "det")  # a restart resends nothing acknowledged
    try:
        assert (spool.lowest, spool.count, spool.bytes) == (5, 15, full)
        freed = spool.release(12)
        assert keys(spool, "batches") == [19]
        assert freed == full - values_bytes(spool) > 0
        assert (spool.lowest, spool.count, spool.bytes) == (13, 7, values_bytes(spool))
        spool.release(19)
        assert (spool.lowest, spool.count, spool.bytes) == (20, 0, 0)
        assert spool.append([item(20, 5)]) == [20]
        assert [o.seq for o in spool.read(0, 100, 1 << 20)] == [20]
    finally:
        spool.close()


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    appends=st.lists(
        st.lists(st.sampled_from([0, 7, 1000, BIG]), min_size=1, max_size=8), min_size=1, max_size=5
    ),
    acks=st.lists(st.integers(0, 40), max_size=4),
)
def test_appends_and_releases_keep_every_unacknowledged_message(tmp_path_factory, appends, acks):
    spool = Spool(tmp_path_factory.mktemp("sp"), "det")
    try:
        sent: dict[int, bytes] = {}
        for sizes in appends:
            items = [item(len(sent) + i, s) for i, s in enumerate(sizes)]
            added = spool.bytes
            seqs = spool.append(items)
            assert spool.bytes - added <= sum(entry_bytes(h, p) for h, p in items)  # bound holds
            sent.update({seq: p for seq, (_, p) in zip(seqs, items, strict=True)})
        for up_to in sorted(acks):
            spool.release(up_to)
            sent = {s: p for s, p in sent.items() if s > up_to}
            assert spool.count == len(sent)
            check_read(spool, sent, spool.lowest)
        assert spool.bytes == values_bytes(spool)
    finally:
        spool.close()


def write_old_spool(path: Path, messages: list[bytes]) -> int:
    """A spool as the code before batches wrote it: a header and a payload per seq."""
    env = lmdb.open(str(path), max_dbs=4, map_size=64 << 20)
    dbs = {name: env.open_db(name.encode()) for name in ("state", "headers", "payloads")}
    with env.begin(write=True) as txn:
        txn.put(b"sender", b"det", db=dbs["state"])
        txn.put(b"incarnation", SEQ.pack(77), db=dbs["state"])
        txn.put(b"next_seq", SEQ.pack(len(messages)), db=dbs["state"])
        for seq, data in enumerate(messages):
            encoded = proto.encode_body(msgspec.structs.replace(header(seq), seq=seq))
            if seq >= 2:  # 0 and 1 were acknowledged and released
                txn.put(SEQ.pack(seq), encoded, db=dbs["headers"])
                if data:
                    txn.put(SEQ.pack(seq), data, db=dbs["payloads"])
    env.close()
    return sum(len(d) for d in messages[2:])


def test_a_spool_written_before_batches_opens_reads_and_releases(tmp_path):
    old = [b"", b"x" * 10, b"", b"y" * 3000, b"z" * BIG, b"w"]
    payload_bytes = write_old_spool(tmp_path / "spool", old)
    spool = Spool(tmp_path / "spool", "det")
    try:
        assert (spool.incarnation, spool.next_seq, spool.lowest, spool.count) == (77, 6, 2, 4)
        assert spool.bytes == values_bytes(spool) > payload_bytes
        check_read(spool, dict(enumerate(old)), 2)
        assert spool.append([item(6, 10), item(7, 10)]) == [6, 7]
        check_read(spool, {**dict(enumerate(old)), 6: item(6, 10)[1], 7: item(7, 10)[1]}, 2)
        spool.release(6)
        assert keys(spool, "headers") == keys(spool, "payloads") == []
        assert keys(spool, "batches") == [7]
        assert (spool.lowest, spool.count) == (7, 1)
    finally:
        spool.close()
