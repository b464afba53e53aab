"""The ingest path's steps done once per batch give what the per-message steps gave (issue 17).

Each batch-level shortcut is compared with the per-message way it replaced: the
spool read of a run (``Spool.read_run``) with ``read_views``, a block's ``span``
and ``stop`` with its entries, ``runs`` with a cut entry by entry, ``entries_bytes``
with ``entry_bytes``, admission's run of one envelope with a decision per message,
and a Producer's batch checks with ``check_header`` per message (same error, same
words, nothing spooled).
"""

from __future__ import annotations

import math
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng.errors import HidraError, InvalidFrame, MessageTooLarge
from hidra_ng.receiver.admission import admit
from hidra_ng.receiver.planning import Incoming, Pending
from hidra_ng.sender.gobackn import GoBackN
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.spool import Spool, entries_bytes, entry_bytes
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.block import (
    BLOCK_MAX_BYTES,
    BLOCK_MAX_COUNT,
    PACK_BELOW_BYTES,
    Block,
    pack,
    runs,
)


def runs_one_by_one(sizes: list[int]) -> list[tuple[int, int]]:
    """The cut of ``block.runs`` as it was, entry by entry (the reference)."""
    out, start, total = [], 0, 0
    for i, size in enumerate(sizes):
        if size >= PACK_BELOW_BYTES:
            if start < i:
                out.append((start, i))
            out.append((i, i + 1))
            start, total = i + 1, 0
            continue
        if start < i and (total + size > BLOCK_MAX_BYTES or i - start >= BLOCK_MAX_COUNT):
            out.append((start, i))
            start, total = i, 0
        total += size
    if start < len(sizes):
        out.append((start, len(sizes)))
    return out


@given(
    st.lists(
        st.one_of(
            st.integers(0, 2000),
            st.sampled_from([PACK_BELOW_BYTES - 1, PACK_BELOW_BYTES, BLOCK_MAX_BYTES]),
        ),
        max_size=80,
    )
)
def test_runs_are_the_cut_made_entry_by_entry(sizes):
    assert list(runs(sizes)) == runs_one_by_one(sizes)


@pytest.mark.parametrize(
    "sizes",
    [
        [1] * BLOCK_MAX_COUNT,
        [1] * (BLOCK_MAX_COUNT + 1),
        [BLOCK_MAX_BYTES // 4] * 4,
        [BLOCK_MAX_BYTES // 4] * 4 + [1],
        [PACK_BELOW_BYTES - 1],
        [0, 0, 0],
    ],
)
def test_runs_at_the_edges_of_one_block(sizes):
    assert list(runs(sizes)) == runs_one_by_one(sizes)


entries = st.lists(st.tuples(st.binary(max_size=40), st.binary(max_size=300)), min_size=1)


@given(entries, st.data())
def test_a_span_is_the_run_of_its_entries(items, data):
    block = Block(pack([h for h, _ in items], [p for _, p in items]))
    start = data.draw(st.integers(0, len(items) - 1))
    stop = data.draw(st.integers(start + 1, len(items)))
    heads, sizes, joined = block.span(start, stop)
    assert bytes(heads) == b"".join(h for h, _ in items[start:stop])
    assert sizes == [len(p) for _, p in items[start:stop]]
    assert all(type(size) is int for size in sizes)
    assert bytes(joined) == b"".join(p for _, p in items[start:stop])


@given(entries, st.data())
def test_stop_takes_what_the_count_and_bytes_allow_and_at_least_one(items, data):
    block = Block(pack([h for h, _ in items], [p for _, p in items]))
    start = data.draw(st.integers(0, len(items) - 1))
    max_count = data.draw(st.integers(1, len(items) + 2))
    max_bytes = data.draw(st.integers(0, 2000))
    expected, total = start, 0
    for _, payload in items[start:]:  # the rule of Spool.read: stop before going over
        if expected > start and (expected - start >= max_count or total + len(payload) > max_bytes):
            break
        expected += 1
        total += len(payload)
    assert block.stop(start, max_count, max_bytes) == expected


# ------------------------------------------------------------------- the spool


def header(k: int, stream: str = "s") -> proto.Header:
    return proto.Header(stream, 0, proto.Payload.BYTES, "", (), "none", b'{"k":%d}' % k, 1.0)


@pytest.fixture
def spool(tmp_path: Path):
    s = Spool(tmp_path / "spool", "det", sync="batch")
    yield s
    s.close()


def test_a_run_read_from_a_batch_is_what_read_views_gives(spool):
    small = [(header(k), b"%d" % k * (k % 7)) for k in range(40)]
    big = [(header(99), bytes(PACK_BELOW_BYTES))]
    spool.append(small[:25])
    spool.append(big)
    spool.append(small[25:])
    spool.release(9)  # a partly acknowledged batch: the run starts past its head
    with spool.env.read() as txn:
        for start, max_count, max_bytes in [(10, 100, 1 << 30), (12, 5, 1 << 30), (10, 100, 20)]:
            run = spool.read_run(txn, start, max_count, max_bytes)
            views = spool.read_views(txn, start, max_count, max_bytes)
            assert run is not None and run.first == start
            expected = [o for o in views if o.seq < 25]  # read_views goes on past the batch
            assert len(run) == len(expected)
            assert bytes(run.headers) == b"".join(o.header for o in expected)
            assert run.sizes == [len(o.payload) for o in expected]
            assert bytes(run.payloads) == b"".join(bytes(o.payload) for o in expected)
        assert spool.read_run(txn, 25, 100, 1 << 30) is None  # the large one is kept alone
        after = spool.read_run(txn, 26, 100, 1 << 30)
        assert after is not None and (after.first, len(after)) == (26, 15)
        assert spool.read_run(txn, 41, 100, 1 << 30) is None  # not spooled (yet)


def test_the_packed_frame_of_a_run_decodes_to_its_headers_and_sizes(spool):
    spool.append([(header(k), b"x" * k) for k in range(20)])
    with spool.env.read() as txn:
        run = spool.read_run(txn, 3, 100, 1 << 30)
        assert run is not None
        frame = proto.encode_packed_joined(len(run), run.headers, run.sizes)
    packed = proto.decode_body(proto.Packed, frame)
    assert [h.seq for h in packed.headers] == list(range(3, 20))
    assert [h.meta for h in packed.headers] == [b'{"k":%d}' % k for k in range(3, 20)]
    assert packed.sizes == list(range(3, 20))


def test_entries_bytes_is_the_sum_of_entry_bytes():
    for n in (1, 15, 16, 300):
        items = [(header(k, stream="a/b" * (k % 3 + 1)), b"p" * k) for k in range(n)]
        assert entries_bytes(items) == sum(entry_bytes(h, p) for h, p in items)
    assert entries_bytes([]) == 0


# ------------------------------------------------------------------ the window


def test_a_run_counts_in_the_window_until_its_last_seq_is_acknowledged():
    win = GoBackN(0, window_bytes=100, resend_after=1.0, now=0.0)
    win.on_sent_run(0, [30, 30, 30])
    assert (win.cursor, win.sent_total) == (3, 3)
    assert win.next_send(10, 1000) is not None  # 90 bytes out, the window holds 100
    win.on_sent_run(3, [20])
    assert win.next_send(10, 1000) is None  # 110: full
    win.on_ack(1, 10, now=0.5)  # part of the first run: it stays whole
    assert win.next_send(10, 1000) is None
    win.on_ack(2, 10, now=0.6)
    assert win.next_send(10, 1000) is not None and win.in_flight
    win.on_ack(3, 10, now=0.7)
    assert not win.in_flight and win.acked_total == 4


# ------------------------------------------------------------------ admission


def admit_one_by_one(batch, committed):
    """Admission as it was, each message decided on its own (the reference)."""
    accepted, last_seqs, acks, gaps, duplicates = [], {}, {}, {}, 0
    for position, (env, seq) in enumerate(batch):
        who = (env.sender, env.incarnation)
        last = last_seqs.get(who)
        if last is None:
            last = committed(who)
        if last is None or last + 1 < env.floor:
            last = env.floor - 1
        if seq < last + 1:
            duplicates += 1
            acks[who] = last
        elif seq > last + 1:
            seen = gaps.get(who)
            gaps[who] = (last + 1, max(env.epoch, seen[1]) if seen else env.epoch)
        else:
            last_seqs[who] = acks[who] = seq
            accepted.append(position)
    return accepted, last_seqs, acks, gaps, duplicates


messages = st.lists(  # (sender, floor, epoch, first seq, count): one sender message each
    st.tuples(
        st.sampled_from(["a", "b"]),
        st.integers(0, 6),
        st.integers(0, 2),
        st.integers(0, 12),
        st.integers(1, 6),
    ),
    max_size=8,
)


@given(messages, st.sampled_from([None, 2, 5]), st.booleans())
def test_admission_decides_as_message_by_message(packets, committed_seq, gapped):
    batch = []
    for sender, floor, epoch, first, count in packets:
        envelope = proto.Envelope(sender, 1, floor, epoch)  # one object per sender message
        seqs = list(range(first, first + count))
        if gapped and count > 2:
            seqs[count // 2] += 3  # a hole inside the message
        batch += [(envelope, seq) for seq in seqs]
    plan = admit(batch, lambda who: committed_seq)
    accepted, last_seqs, acks, gaps, duplicates = admit_one_by_one(batch, lambda w: committed_seq)
    assert plan.accepted == accepted
    assert plan.last_seqs == last_seqs and plan.acks == acks and plan.gaps == gaps
    assert plan.duplicates == duplicates


def test_planned_stored_counts_what_committed_holds_per_stream():
    pending = Pending(lambda name: None, lambda key: None, lambda: 0)
    envelope = proto.Envelope("det", 1, 0, 0)

    def incoming(seq: int, stream: str, kind=proto.Payload.BYTES) -> Incoming:
        payload = b"" if kind == proto.Payload.FINISH else b"x" * seq
        return Incoming(
            envelope, proto.Header(stream, seq, kind, "", (), "none", b"{}", 1.0), payload
        )

    planned = pending.plan([incoming(0, "a"), incoming(1, "b"), incoming(2, "a")])
    planned.extend(pending.plan([incoming(3, "a"), incoming(4, "b", proto.Payload.FINISH)]))
    counts: dict[str, list[int]] = {}
    for c in planned.result.committed:
        count = counts.setdefault(c.stream, [0, 0, 0])
        count[0] += 1
        count[1] += len(c.payload)
        count[2] = c.index
    assert planned.result.stored == counts == {"a": [3, 5, 2], "b": [1, 1, 0]}


def test_a_planned_record_is_the_encoded_record_struct():
    pending = Pending(lambda name: None, lambda key: None, lambda: 0)
    envelope = proto.Envelope("det", 3, 0, 0)
    header = proto.Header("img", 0, proto.Payload.ARRAY, "<u2", (2, 3), "none", b'{"a":1}', 9.5)
    planned = pending.plan([Incoming(envelope, header, b"x" * 12)], now=10.25)
    expected = proto.Record("det", 0, proto.Payload.ARRAY, "<u2", (2, 3), "none", b'{"a":1}',
                            9.5, 10.25, 12)  # fmt: skip
    assert planned.result.committed[0].record == proto.encode_body(expected)


# ------------------------------------------------------------ producer checks

BAD_ITEMS = [
    (b"x" * 101, None, MessageTooLarge),
    (b"ok", {"t": object()}, InvalidFrame),
    (b"ok", {"nan": math.nan, "x": "y" * 200}, MessageTooLarge),
    (b"ok", [1], InvalidFrame),
    ("text", None, InvalidFrame),
]


@pytest.fixture
def producer(tmp_path: Path):
    p = Producer(
        "inproc://nobody-ingest",
        "inproc://nobody-api",
        tmp_path / "spool",
        "unit",
        max_message_bytes=100,
        max_meta_bytes=64,
        spool_sync="batch",
    )
    yield p
    p.close()


@pytest.mark.parametrize("data, meta, error", BAD_ITEMS)
def test_a_bad_message_in_a_batch_gets_the_error_it_gets_alone(producer, data, meta, error):
    with pytest.raises(error) as alone:
        producer.send("s", data, meta)
    good = [(b"g%d" % k, {"k": k}) for k in range(5)]
    with pytest.raises(error) as in_batch:
        producer.send_many("s", [*good, (data, meta), *good])
    assert str(in_batch.value) == str(alone.value)
    assert producer.spool_messages == 0  # nothing of the batch was spooled


def test_the_first_bad_message_of_a_batch_is_the_one_reported(producer):
    items = [(b"fine", None), (b"x" * 101, None), ("text", None)]
    with pytest.raises(HidraError, match="101 bytes"):
        producer.send_many("s", items)
    assert producer.send_many("s", [(b"a", None), (b"b", {"k": 1})]) == [0, 1]


@given(st.lists(st.sampled_from([(b"ab", None), (b"", {"k": 1}), (None, {"k": 2})]), max_size=6))
@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_good_batches_spool_headers_check_header_accepts(producer, items):
    prepared = producer._prepare_many("s", items)
    for h, payload in prepared:
        proto.check_header(h, len(payload), max_data_bytes=100, max_meta_bytes=64)
    assert [len(p) for _, p in prepared] == [0 if d is None else len(d) for d, _ in items]


def test_plain_bytes_are_prepared_as_prepare_makes_them(producer):
    items = [(b"ab", None), (b"", None), (b"cd", {"k": 1}), (bytearray(b"ef"), None), (b"gh", None)]
    check = proto.HeaderChecker(max_data_bytes=100, max_meta_bytes=64).check
    batch = producer._prepare_many("s", items)
    one_by_one = [producer._prepare("s", data, meta, check) for data, meta in items]
    for (h, payload), (expected, expected_payload) in zip(batch, one_by_one, strict=True):
        assert msgspec.structs.replace(h, created=0.0) == msgspec.structs.replace(
            expected, created=0.0
        )
        assert bytes(payload) == bytes(expected_payload)


def test_a_meta_limit_below_an_empty_object_refuses_plain_bytes_as_alone(tmp_path):
    with Producer(
        "inproc://nobody-ingest", "inproc://nobody-api", tmp_path / "spool", "unit",
        max_meta_bytes=1, spool_sync="batch",
    ) as p:  # fmt: skip
        with pytest.raises(MessageTooLarge) as alone:
            p.send("s", b"x")
        with pytest.raises(MessageTooLarge) as in_batch:
            p.send_many("s", [(b"x", None), (b"y", None)])
        assert str(in_batch.value) == str(alone.value) and p.spool_messages == 0
