"""The receiver's last-value cache: one frame per stream, bounded in bytes (G9)."""

from __future__ import annotations

from hidra_ng.receiver.live import ENTRY_OVERHEAD_BYTES, ZERO_COPY_BYTES, LastValues

RECORD = b"r" * 44  # with the overhead, each entry below costs 300 bytes + its payload


def cost(payload_bytes: int) -> int:
    return len(RECORD) + payload_bytes + ENTRY_OVERHEAD_BYTES


def test_each_stream_keeps_only_its_newest_frame() -> None:
    cache = LastValues(max_bytes=10_000)
    for index in range(5):
        cache.put("s", index, RECORD, bytes(100))
    entry = cache.get("s")
    assert entry is not None and entry.index == 4
    assert (len(cache), cache.bytes) == (1, cost(100))


def test_the_least_recently_updated_streams_go_first_within_the_bound() -> None:
    cache = LastValues(max_bytes=3 * cost(100))
    for name in ("a", "b", "c"):
        cache.put(name, 0, RECORD, bytes(100))
    cache.put("a", 1, RECORD, bytes(100))  # a is now the most recent
    cache.put("d", 0, RECORD, bytes(100))
    assert cache.get("b") is None, "b was updated least recently"
    assert [s for s in "acd" if cache.get(s)] == ["a", "c", "d"]
    assert cache.bytes == 3 * cost(100) <= cache.max_bytes
    cache.put("e", 0, RECORD, bytes(2 * 100 + ENTRY_OVERHEAD_BYTES + len(RECORD)))
    assert [s for s in "acde" if cache.get(s)] == ["d", "e"]
    assert cache.bytes <= cache.max_bytes


def test_a_frame_larger_than_the_bound_is_not_kept_and_drops_the_older_one() -> None:
    cache = LastValues(max_bytes=1000)
    cache.put("s", 0, RECORD, bytes(100))
    cache.put("s", 1, RECORD, bytes(1000))
    assert cache.get("s") is None, "a stale frame must not stand for the newest"
    assert (len(cache), cache.bytes) == (0, 0)
    nothing = LastValues(max_bytes=0)
    nothing.put("s", 0, RECORD, b"")
    assert len(nothing) == 0


def test_a_small_payload_is_copied_out_of_the_batch_it_arrived_in() -> None:
    batch = bytearray(1 << 20)  # a packed message: many small payloads in one buffer
    batch[10:20] = b"0123456789"
    cache = LastValues(max_bytes=1 << 20)
    cache.put("s", 0, RECORD, memoryview(batch)[10:20])
    entry = cache.get("s")
    assert entry is not None and isinstance(entry.payload, bytes) and entry.payload == b"0123456789"
    big = memoryview(bytearray(ZERO_COPY_BYTES))
    cache.put("t", 0, RECORD, big)
    entry = cache.get("t")
    assert entry is not None and entry.payload is big, "a big payload is kept without a copy"


def test_matching_follows_zmq_prefix_rules_on_the_topic() -> None:
    cache = LastValues(max_bytes=1 << 20)
    for name in ("p11/a", "p11/ab", "p12/a"):
        cache.put(name, 0, RECORD, b"x")
    assert [s for s, _ in cache.matching(b"")] == ["p11/a", "p11/ab", "p12/a"]
    assert [s for s, _ in cache.matching(b"p11/")] == ["p11/a", "p11/ab"]
    assert [s for s, _ in cache.matching(b"p11/a\0")] == ["p11/a"]
    cache.forget("p11/a")
    assert [s for s, _ in cache.matching(b"p11/a")] == ["p11/ab"]
