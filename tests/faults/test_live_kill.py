"""Fault: kill -9 of a receiver that published frames live before their fsync (SPEC G6).

Two senders write one stream while a Subscriber records every live frame it is
given. The first receiver holds the commit that reaches index HOLD_AT inside its
open transaction (tests/faults/held_receiver.py): its frames are out live, the
store never gets them, and the receiver is killed there. A second receiver is
killed at an arbitrary moment. Afterwards the durable stream must be exact, each
sender's messages once, in order (lost = duplicated = unexpected = 0), whatever
the live feed showed; the live feed itself showed only frames that were sent, and
at every index committed before the first kill exactly the frame stored there.
"""

from __future__ import annotations

import re
import sys
import threading
from pathlib import Path

import pytest

from hidra_ng import Consumer, NotYetAvailable, Producer, Subscriber
from hidra_ng.testing import ReceiverProcess
from tests.faults.workload import (
    StoredFrame,
    assert_sender_order,
    check,
    expected_digests,
    message,
    read_finished_stream,
    stored_frame,
)
from tests.helpers import finish_transfer, wait_for

pytestmark = pytest.mark.slow

HELD = Path(__file__).with_name("held_receiver.py")
STREAM = "faults/live-kill"
MESSAGES = 150  # per sender
SENDERS = {"live-a": 21, "live-b": 22}  # sender -> workload seed
BATCH = 5
#: batches a sender has unacknowledged at most: the stream advances with the receiver,
#: so the second kill, too, finds messages in flight
IN_FLIGHT = 4
HOLD_AT = 60
#: the second kill, once this many messages of both senders are acknowledged
KILL_AT_ACKED = 200


class HeldReceiver(ReceiverProcess):
    """``hidra-ng receiver``, or while ``hold_at`` is set, held_receiver.py with it."""

    hold_at: int | None = None

    def command(self) -> list[str]:
        command = super().command()
        if self.hold_at is None:
            return command
        assert command[1:4] == ["-m", "hidra_ng", "receiver"]
        return [sys.executable, str(HELD), str(self.hold_at), *command[3:]]


class LiveRecorder(threading.Thread):
    """Every frame a Subscriber yields, by digest (a reader that keeps up: large buffer)."""

    def __init__(self, publish: str) -> None:
        super().__init__(name="live-recorder")
        # the api is never asked: a port nobody answers
        self.sub = Subscriber(publish, [STREAM], api="tcp://127.0.0.1:9", buffer_frames=256)
        self.frames: list[StoredFrame] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            frame = self.sub.receive(0.1)
            if frame is not None:
                self.frames.append(stored_frame(frame))

    def newest_index(self) -> int:
        return max((f.index for f in self.frames), default=-1)

    def stop(self) -> None:
        self.stopping.set()
        self.join()
        self.sub.close()


def held_from(rx: ReceiverProcess) -> int | None:
    """The first index of the commit held_receiver.py holds, once it says so in its log."""
    found = re.search(r"holding the commit of indices (\d+)\.\.", rx.read_log())
    return None if found is None else int(found.group(1))


def send_all(producer: Producer, seed: int, start: int, errors: list[BaseException]) -> None:
    try:
        for first in range(start, MESSAGES, BATCH):
            behind = first - IN_FLIGHT * BATCH
            wait_for(lambda b=behind: producer.acked_seq >= b, timeout=120, what="acks")
            ks = range(first, min(first + BATCH, MESSAGES))
            producer.send_many(STREAM, [message(seed, k) for k in ks])
    except BaseException as err:  # reported by the test thread
        errors.append(err)


def acked(producers: list[Producer]) -> int:
    return sum(p.stats["acked"] for p in producers)


def test_durable_stream_exact_after_kills_whatever_the_live_feed_showed(tmp_path: Path) -> None:
    # a queue per subscriber that holds every frame of a commit: the recorder, which keeps
    # up, misses none of the held commit (with the default 8, G6 lets it skip some)
    rx = HeldReceiver(tmp_path / "store", "--publish-hwm", "1000")
    rx.hold_at = HOLD_AT
    rx.start()
    recorder = LiveRecorder(rx.publish)
    recorder.start()
    try:
        with (
            Producer(rx.ingest, rx.api, tmp_path / "spool-a", "live-a") as pa,
            Producer(rx.ingest, rx.api, tmp_path / "spool-b", "live-b") as pb,
        ):
            producers = [pa, pb]
            # the recorder's subscription is in effect before the held commit: it got a
            # first frame, live or, if it joined later, as the stream's newest
            pa.send_many(STREAM, [message(SENDERS["live-a"], k) for k in range(BATCH)])
            pa.flush(timeout=60)
            wait_for(lambda: recorder.frames, timeout=60, what="the recorder's first frame")
            errors: list[BaseException] = []
            threads = [
                threading.Thread(target=send_all, args=(p, seed, start, errors))
                for p, seed, start in zip(producers, SENDERS.values(), (BATCH, 0), strict=True)
            ]
            for thread in threads:
                thread.start()
            # 1: the commit reaching HOLD_AT is out live and waits for its fsync forever
            (held,) = wait_for(lambda: (h := held_from(rx)) is not None and (h,), timeout=90,
                               what="the held commit")  # fmt: skip
            wait_for(lambda: recorder.newest_index() >= held, timeout=60, what="its frames live")
            with Consumer(rx.api) as c:
                durable_at_kill = c.info(STREAM).count
                with pytest.raises(NotYetAvailable):
                    c.get(STREAM, recorder.newest_index(), timeout=0)
            assert durable_at_kill <= HOLD_AT
            shown_before_kill = list(recorder.frames)
            rx.kill()
            rx.hold_at = None
            rx.start()
            # 2: a kill at an arbitrary moment
            wait_for(lambda: acked(producers) >= KILL_AT_ACKED, timeout=90, what="acks")
            assert acked(producers) < 2 * MESSAGES, "the kill must come during the transfer"
            rx.kill()
            rx.start()
            for thread in threads:
                thread.join(timeout=120)
            assert not errors, errors
            pb.flush(timeout=120)  # every message of both is stored before the stream ends
            finish_transfer(pa, STREAM, threads[0], errors)
        durable = read_finished_stream(rx.api, STREAM)
    finally:
        recorder.stop()
        rx.kill()

    expected = {sender: expected_digests(seed, range(MESSAGES)) for sender, seed in SENDERS.items()}
    everything = {d: (s, k) for s, digests in expected.items() for d, k in digests.items()}
    verdict = check(durable, everything, required=everything.values())
    assert verdict.ok, verdict.summary()
    assert len(durable) == 2 * MESSAGES
    for sender, digests in expected.items():
        assert_sender_order(durable, digests, sender)
    # the live feed: only frames that were sent; before the kill, at each committed index,
    # the frame stored there; at the provisional ones, whatever (counted, not required)
    assert [f.index for f in recorder.frames if f.digest not in everything] == []
    by_index = {f.index: f for f in durable}
    for f in shown_before_kill:
        if f.index < durable_at_kill:
            assert by_index[f.index] == f, f"live frame {f.index} is not the one stored there"
    provisional = [f for f in shown_before_kill if f.index >= durable_at_kill]
    assert provisional, "no live frame was ahead of the store before the kill"
    print(
        f"live frames: {len(recorder.frames)}; before the kill {len(provisional)} provisional,"
        f" {sum(by_index[f.index] != f for f in provisional)} of them another frame now"
    )
