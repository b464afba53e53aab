"""Fault: one of three receivers is killed -9 mid-transfer and restarted (SPEC §14, G1-G5).

30 streams over three receivers by pattern; the receiver of ten of them dies
half way. The other receivers' streams go on while it is down (their spools
drain, its spool holds its streams); after the restart every stream is complete
on the receiver its pattern names: lost = duplicated = unexpected = 0, and no
receiver holds a stream that is not its own. Then a 300-frame series split
over three receivers is read back merged in order while the receiver of one of
its parts is killed and restarted, during the sending and during the reading.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from hidra_ng import Consumer, Producer, StreamFinished
from hidra_ng.shards import load_shard_map, part_name
from tests.helpers import wait_for
from tests.shard_helpers import receivers, write_shard_map

pytestmark = pytest.mark.slow

NAMES = ("r0", "r1", "r2")
STREAMS = [f"{prefix}/scan_{i:02d}" for prefix in ("s0", "s1", "other") for i in range(10)]
HOME = {"s0": "r0", "s1": "r1", "other": "r2"}
MESSAGES = 40  # per stream: 1200 in all
BATCH = 4


def payload(stream: str, k: int) -> bytes:
    """Message ``k`` of ``stream``: 1 to 4 KiB, unique per (stream, k)."""
    rng = np.random.default_rng([sum(stream.encode()), len(stream), k])
    return f"{stream}#{k}|".encode() + rng.bytes(1024 * (1 + k % 4))


def send_rounds(producer: Producer, rounds: range, errors: list[BaseException]) -> None:
    try:
        for first in rounds:
            for stream in STREAMS:
                ks = range(first, first + BATCH)
                producer.send_many(stream, [(payload(stream, k), {"k": k}) for k in ks])
    except BaseException as err:  # reported by the test thread
        errors.append(err)


def read_stream(api: str, stream: str) -> list[bytes]:
    out = []
    with Consumer(api, request_timeout=30) as c:
        while True:
            try:
                frame = c.get(stream, len(out), timeout=30)
            except StreamFinished:
                return out
            assert frame.index == len(out)
            out.append(bytes(frame.data))


def test_one_of_three_receivers_killed_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    with receivers(tmp_path, NAMES) as rxs:
        shards = write_shard_map(tmp_path / "shards.toml", rxs, [["s0/**"], ["s1/**"], ["**"]])
        with Producer(shards=shards, spool_dir=tmp_path / "spool", sender_id="kill3") as p:
            errors: list[BaseException] = []
            send_rounds(p, range(0, MESSAGES // 2, BATCH), errors)
            assert not errors, errors
            wait_for(lambda: p.acked_seqs["r1"] >= 40, timeout=60, what="r1 acks some")
            acked = p.acked_seqs["r1"]
            rxs["r1"].kill()
            assert rxs["r1"].proc.returncode == -9
            assert acked >= 40  # killed with a half of its streams acked, the rest unsent
            # the second half while r1 is down: r0's and r2's streams go on
            sender = threading.Thread(
                target=send_rounds, args=(p, range(MESSAGES // 2, MESSAGES, BATCH), errors)
            )
            sender.start()
            sender.join(120)
            assert not sender.is_alive() and not errors, errors
            for stream in STREAMS:
                p.finish(stream)
            p.links["r0"].flush(60)
            p.links["r2"].flush(60)
            wait_for(lambda: not p.receivers_up["r1"], timeout=30, what="r1 seen down")
            # r1's ten streams wait in its spool: the second half at least
            assert p.links["r1"].spool_messages >= 10 * MESSAGES // 2
            assert p.receivers_up["r0"] and p.receivers_up["r2"]
            rxs["r1"].start()  # the same ports again
            p.flush(120)
            wait_for(lambda: p.spool_messages == 0, what="acked messages released")

        lost, duplicated, unexpected, out_of_order = 0, 0, 0, []
        for name, rx in rxs.items():
            with Consumer(rx.api) as c:
                held = {info.name for info in c.streams()}
            mine = {s for s in STREAMS if HOME[s.split("/")[0]] == name}
            unexpected += len(held - mine)
            for stream in sorted(mine):
                frames = read_stream(rx.api, stream)
                sent = [payload(stream, k) for k in range(MESSAGES)]
                times = Counter(frames)
                lost += sum(1 for b in sent if times[b] == 0)
                duplicated += sum(n - 1 for b, n in times.items() if n > 1)
                unexpected += sum(1 for b in times if b not in set(sent))
                if frames != sent:
                    out_of_order.append(stream)
        assert (lost, duplicated, unexpected) == (0, 0, 0)
        assert out_of_order == []  # G5: each stream in send() order


SERIES = "det/run_0001"
IMAGES = 300


def test_split_series_merged_in_order_while_a_part_receiver_restarts(tmp_path: Path) -> None:
    with receivers(tmp_path, NAMES) as rxs:
        shards = write_shard_map(tmp_path / "shards.toml", rxs, [["**"], ["**"], ["**"]])
        victim = load_shard_map(shards).place(part_name(SERIES, 1)).name
        images = [np.full((8, 8), k, dtype=np.uint32) for k in range(IMAGES)]
        got: list[int] = []
        read_errors: list[BaseException] = []
        halfway = threading.Event()
        restarted = threading.Event()

        def read() -> None:
            try:
                with Consumer(shards=shards, request_timeout=3.0) as c:
                    for frame in c.replay_merged(SERIES, follow=True, window_frames=6):
                        got.append(int(frame.data[0, 0]))
                        if len(got) == IMAGES // 3:
                            halfway.set()
                            restarted.wait(60)  # the kill comes with replays open
            except BaseException as err:
                read_errors.append(err)

        with Producer(
            shards=shards,
            spool_dir=tmp_path / "spool",
            sender_id="split",
            split_parts=3,
            split_block_images=10,
        ) as p:
            reader = threading.Thread(target=read)
            reader.start()
            for first in range(0, IMAGES // 2, 15):
                p.send_many(SERIES, [(im, None) for im in images[first : first + 15]])
            assert halfway.wait(60), "the reader got a third of the series"
            rxs[victim].kill()
            for first in range(IMAGES // 2, IMAGES, 15):  # part 1 waits in the spool
                p.send_many(SERIES, [(im, None) for im in images[first : first + 15]])
            p.finish(SERIES)
            rxs[victim].start()
            restarted.set()
            p.flush(120)
            reader.join(120)
        assert not reader.is_alive() and not read_errors, read_errors
        assert got == list(range(IMAGES))
