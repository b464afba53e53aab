"""The committer lets a batch's large live frames leave before its write (bounded)."""

from __future__ import annotations

import zmq

from hidra_ng.receiver import committer as committer_module
from hidra_ng.receiver.committer import Committer, _let_leave


class Tracker:
    """A stand-in for zmq.MessageTracker: done at once, or never."""

    def __init__(self, done: bool) -> None:
        self.done = done
        self.waits: list[float] = []

    def wait(self, timeout: float) -> None:
        self.waits.append(timeout)
        if not self.done:
            raise zmq.NotDone


def test_frames_already_out_are_not_waited_for() -> None:
    trackers = [Tracker(True), Tracker(True)]
    assert _let_leave(trackers, 0.01) is True
    assert [t.waits for t in trackers] == [[], []]


def test_a_frame_still_on_its_way_is_waited_for_at_most_the_head_start() -> None:
    out, slow, after = Tracker(True), Tracker(False), Tracker(False)
    assert _let_leave([out, slow, after], 0.01) is False
    assert len(slow.waits) == 1 and 0 < slow.waits[0] <= 0.01
    assert after.waits == [], "once the head start ran out, the write starts"


def test_no_time_left_means_no_wait() -> None:
    slow = Tracker(False)
    assert _let_leave([slow], 0.0) is False
    assert slow.waits == []


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def monotonic(self) -> float:
        return self.now


def test_after_a_head_start_ran_out_batches_do_not_wait_for_a_while(monkeypatch) -> None:
    clock = Clock()
    outcomes: list[bool] = []
    monkeypatch.setattr(committer_module, "time", clock)

    def let_leave(leaving, seconds):
        outcomes.append(leaving[0].done)
        return leaving[0].done

    monkeypatch.setattr(committer_module, "_let_leave", let_leave)
    committer = Committer.__new__(Committer)  # only the head start's state is used
    committer._head_starts_from = 0.0
    committer._head_start([Tracker(False)])  # a slow subscriber: the wait runs out
    clock.now += committer_module.LIVE_HEAD_START_PAUSE_SECONDS / 2
    committer._head_start([Tracker(False)])  # paused: not waited for
    committer._head_start([])  # no large live frames: nothing to wait for
    clock.now += committer_module.LIVE_HEAD_START_PAUSE_SECONDS
    committer._head_start([Tracker(True)])  # the pause is over
    assert outcomes == [False, True]
