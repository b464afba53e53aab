"""A call of a split series interrupted between its block commits is not spooled twice (§14, G3).

In process, with three in-process receivers: the commit of one block fails (as
a full spool would make it, or as a crash leaves it), then the caller sends the
call again, in the same process or after a restart, whole or in smaller calls,
or sends something else instead. Read back merged: every image once, in order.
(tests/faults/test_split_kill.py does the same with kill -9.)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hidra_ng import Consumer, Producer, SpoolFull
from hidra_ng.sender.split import RECOGNIZED_SEQ
from tests.shard_helpers import in_process_receivers, write_shard_map

NAMES = ("r0", "r1", "r2")
SERIES = "det/resend"


def items(ks) -> list[tuple[bytes, dict[str, int]]]:
    return [(f"image {k}|".encode() + bytes([k % 251]) * 64, {"k": k}) for k in ks]


def fail_at_commit(producer: Any, n: int) -> None:
    """The ``n``-th spool commit of ``producer``'s split series fails, as a full spool."""
    original = producer.split.commit
    done = [0]

    def commit(link, prepared, points):
        done[0] += 1
        if done[0] == n:
            raise SpoolFull("test: no room for this block")
        return original(link, prepared, points)

    producer.split.commit = commit


@pytest.fixture
def options(tmp_path: Path):
    with in_process_receivers(tmp_path, NAMES) as rxs:
        shards = write_shard_map(tmp_path / "shards.toml", rxs, [["**"], ["**"], ["**"]])
        yield {
            "shards": shards,
            "spool_dir": tmp_path / "spool",
            "sender_id": "resend",
            "split_parts": 3,
            "split_block_images": 2,
        }


def finish_and_read(options: dict) -> list[int]:
    with Producer(**options) as p:
        p.finish(SERIES)
        p.flush(30)
    with Consumer(shards=options["shards"]) as c:
        merged = list(c.replay_merged(SERIES))
    assert [f.meta["hidra_split"][0] for f in merged] == list(range(len(merged)))
    return [f.meta["k"] for f in merged]


def test_a_call_sent_again_after_an_error_between_its_blocks_is_spooled_once(options) -> None:
    with Producer(**options) as p:
        fail_at_commit(p, 3)  # two blocks of two spooled, then the error
        with pytest.raises(SpoolFull):
            p.send_many(SERIES, items(range(12)))
        seqs = p.send_many(SERIES, items(range(12)))
        assert seqs[:4] == [RECOGNIZED_SEQ] * 4
        assert all(seq >= 0 for seq in seqs[4:])
        p.send_many(SERIES, items(range(12, 20)))
    assert finish_and_read(options) == list(range(20))


def test_a_restarted_caller_that_sends_other_messages_loses_nothing(options) -> None:
    with Producer(**options) as p:
        fail_at_commit(p, 3)
        with pytest.raises(SpoolFull):
            p.send_many(SERIES, items(range(12)))
    # a detector stream cannot send images 4..11 again: its next images follow
    with Producer(**options) as p:
        assert all(seq >= 0 for seq in p.send_many(SERIES, items(range(100, 106))))
    assert finish_and_read(options) == [0, 1, 2, 3, *range(100, 106)]


def test_a_call_sent_again_in_smaller_calls_across_restarts_is_spooled_once(options) -> None:
    with Producer(**options) as p:
        fail_at_commit(p, 4)  # three blocks: images 0..5 spooled
        with pytest.raises(SpoolFull):
            p.send_many(SERIES, items(range(12)), checkpoint=("src", b"12"))
    with Producer(**options) as p:
        assert p.checkpoint("src") is None  # the call did not return
        seqs = p.send_many(SERIES, items(range(2)), checkpoint=("src", b"2"))
        assert seqs == [RECOGNIZED_SEQ] * 2
    with Producer(**options) as p:  # the record left by a call recognized whole
        assert p.checkpoint("src") == b"2"
        seqs = p.send_many(SERIES, items(range(2, 12)), checkpoint=("src", b"12"))
        assert seqs[:4] == [RECOGNIZED_SEQ] * 4
        assert all(seq >= 0 for seq in seqs[4:])
        assert p.checkpoint("src") == b"12"
    assert finish_and_read(options) == list(range(12))


def test_bad_data_in_a_later_block_is_refused_before_any_block_is_spooled(options) -> None:
    with Producer(**options) as p:
        bad = [*items(range(6)), (object(), {"k": 6})]
        with pytest.raises(Exception, match="cannot be sent"):
            p.send_many(SERIES, bad)  # type: ignore[arg-type]
        assert p.spool_messages == 0
        p.send_many(SERIES, items(range(6)))
    assert finish_and_read(options) == list(range(6))
