"""Small messages packed in the spool and the store (ADR 0004), read back by every reader."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from hidra_ng import Consumer, Gone, NotYetAvailable, StreamFinished
from hidra_ng.wire.block import PACK_BELOW_BYTES
from tests.helpers import wait_for

STREAM = "packed/mixed"
KiB = 1 << 10


def workload(n: int, seed: int = 5) -> list[tuple[bytes | np.ndarray, dict]]:
    """Mostly 1 KiB, some empty, some just under and over the packing threshold, a few arrays."""
    rng = random.Random(seed)
    out: list[tuple[bytes | np.ndarray, dict]] = []
    for k in range(n):
        size = rng.choice([KiB] * 8 + [0, PACK_BELOW_BYTES - 1, PACK_BELOW_BYTES, 300 * KiB])
        data: bytes | np.ndarray = b"%d:" % k + rng.randbytes(size)
        if k % 11 == 0:
            data = np.full((4, 8), k, dtype=np.uint16)
        out.append((data, {"k": k, "even": k % 2 == 0}))
    return out


def same(a, b) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else bytes(a) == bytes(b)


@pytest.fixture
def sent(make_producer):
    """600 messages sent in send_many batches of 1 to 150, then the stream finished."""
    messages = workload(600)
    producer = make_producer("packer")
    rng = random.Random(1)
    at = 0
    while at < len(messages):
        n = rng.randint(1, 150)
        producer.send_many(STREAM, messages[at : at + n])
        at += n
    producer.finish(STREAM)
    producer.flush(30)
    wait_for(lambda: producer.spool_messages == 0, what="the spool released")
    assert producer.spool_bytes == 0
    return messages


def test_get_of_every_index_in_any_order(sent, receiver):
    order = list(range(len(sent)))
    random.Random(2).shuffle(order)
    with Consumer(receiver.endpoints["api"]) as consumer:
        for index in order:
            frame = consumer.get(STREAM, index)
            assert frame.index == index and frame.meta["k"] == index
            assert same(frame.data, sent[index][0]), index
        info = consumer.info(STREAM)
        assert (info.first, info.count, info.finished) == (0, len(sent), True)
        with pytest.raises(StreamFinished):
            consumer.get(STREAM, len(sent))


def test_replay_from_any_start_crosses_blocks(sent, receiver):
    with Consumer(receiver.endpoints["api"]) as consumer:
        for start in (0, 1, 299, 599):
            frames = list(consumer.replay(STREAM, start, window_frames=37))
            assert [f.index for f in frames] == list(range(start, len(sent)))
            assert all(same(f.data, sent[f.index][0]) for f in frames)
        frames = list(consumer.replay(STREAM, 100, 130))
        assert [f.meta["k"] for f in frames] == list(range(100, 130))
        # a byte window smaller than a block: turns end inside runs of packed messages
        frames = list(consumer.replay(STREAM, 3, window_frames=1000, window_bytes=5 * KiB))
        assert [f.index for f in frames] == list(range(3, len(sent)))
        assert all(same(f.data, sent[f.index][0]) for f in frames)


def test_group_members_get_each_packed_message_once(sent, receiver):
    api = receiver.endpoints["api"]
    seen: list[int] = []
    with Consumer(api) as a, Consumer(api) as b:
        held = {a: [], b: []}
        done = set()
        for member in itertools.cycle((a, b)):
            if len(done) == 2:
                break
            try:
                frames = member.next_many(STREAM, "workers", 25, timeout=0.2, ack=held[member])
            except StreamFinished:
                done.add(member)
                held[member] = []
                continue
            except NotYetAvailable:  # the rest is held by the other member; acks went through
                held[member] = []
                continue
            for f in frames:
                assert same(f.data, sent[f.index][0]), f.index
            seen.extend(f.index for f in frames)
            held[member] = frames
    assert sorted(seen) == list(range(len(sent)))


def test_query_scans_blocks_and_large_messages_in_index_order(sent, receiver):
    with Consumer(receiver.endpoints["api"]) as consumer:
        frames = consumer.query(STREAM, "meta.even and meta.k >= 100")
        assert [f.index for f in frames] == list(range(100, len(sent), 2))
        assert all(f.data is None for f in frames)
        assert [f.index for f in consumer.query(STREAM, "true", limit=7)] == list(range(7))


def test_retention_over_blocks_keeps_the_newest_and_never_reuses_an_index(make_producer, receiver):
    producer = make_producer("retained")
    for _ in range(4):
        producer.send_many("packed/kept", [(bytes(KiB), None)] * 100)
    producer.flush(30)
    store = receiver.store
    removed = store.enforce_retention(max_bytes=150 * KiB)
    assert removed == 250
    with Consumer(receiver.endpoints["api"]) as consumer:
        info = consumer.info("packed/kept")
        assert (info.first, info.count) == (250, 150)
        with pytest.raises(Gone):
            consumer.get("packed/kept", 249)
        with pytest.raises(NotYetAvailable):
            consumer.get("packed/kept", 400, timeout=0)
        frames = list(consumer.replay("packed/kept", 250, 400))
        assert [f.index for f in frames] == list(range(250, 400))
    producer.send_many("packed/kept", [(b"after", None)])
    producer.flush(30)
    with Consumer(receiver.endpoints["api"]) as consumer:
        assert consumer.get("packed/kept", 400).data == b"after"
