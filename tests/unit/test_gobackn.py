"""The go-back-N pair without I/O: a sender window and the receiver's admission.

In the manner of h11's tests, the sender's :class:`GoBackN` and the receiver's
:func:`admit` are driven as a pair through a fake link that drops, duplicates,
delays (and so reorders) messages and acks and breaks the connection, with a
simulated clock. Whatever the link does, once it works again every message is
stored exactly once (G3), at consecutive indices (G4) in send order (G5), and
the sender never hears an ack for a message not stored (G1).
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hidra_ng.receiver.admission import admit
from hidra_ng.sender.gobackn import GoBackN, Rewind
from hidra_ng.wire.protocol import Envelope

SENDER, INCARNATION = "det", 7
WHO = (SENDER, INCARNATION)
BASE_DELAY = 0.01  # one way, when the link works
RESEND_AFTER = 0.25


@dataclass
class FakeLink:
    """Both directions of the wire between the pair: packets arrive at a time, or never.

    ``faults[k]`` says what happens to the k-th packet sent either way:
    ("ok" | "drop" | "dup" | "delay" | "disconnect", extra delay). Once the
    faults are used up the link works (with BASE_DELAY).
    """

    faults: list[tuple[str, float]]
    _queue: list[tuple[float, int, str, object]] = field(default_factory=list)
    _order: itertools.count = field(default_factory=itertools.count)
    _sent: int = 0
    disconnects: list[float] = field(default_factory=list)

    def send(self, now: float, to: str, packet: object) -> None:
        kind, extra = self.faults[self._sent] if self._sent < len(self.faults) else ("ok", 0)
        self._sent += 1
        if kind == "drop":
            return
        if kind == "disconnect":
            # the connection breaks: what sat in the sender's queue is gone; the
            # sender's monitor reports it a moment later
            self._queue = [item for item in self._queue if item[2] != "receiver"]
            heapq.heapify(self._queue)
            heapq.heappush(self._queue, (now + BASE_DELAY, next(self._order), "monitor", None))
            return
        delay = BASE_DELAY + (extra if kind == "delay" else 0.0)
        heapq.heappush(self._queue, (now + delay, next(self._order), to, packet))
        if kind == "dup":
            heapq.heappush(self._queue, (now + delay + extra, next(self._order), to, packet))

    def next_time(self) -> float | None:
        return self._queue[0][0] if self._queue else None

    def deliver(self, now: float) -> list[tuple[str, object]]:
        out = []
        while self._queue and self._queue[0][0] <= now:
            _, _, to, packet = heapq.heappop(self._queue)
            out.append((to, packet))
        return out


class Pair:
    """A sender window over a spool of messages, a receiver store, the link between."""

    def __init__(self, sizes: list[int], window: int, batch_bytes: int, batch_count: int, link):
        self.sizes = sizes  # payload bytes of seq 0, 1, ...
        self.highest = len(sizes) - 1
        self.win = GoBackN(0, window, RESEND_AFTER, now=0.0)
        self.batch_bytes, self.batch_count = batch_bytes, batch_count
        self.link = link
        self.committed: int | None = None  # the store's last seq of the incarnation
        self.stored: list[int] = []  # seqs in index order
        self.now = 0.0
        self.stuck = False  # a receiver that takes messages but cannot commit them

    # the sender's link thread, without sockets
    def pump(self) -> None:
        while (send := self.win.next_send(self.highest, self.batch_bytes)) is not None:
            batch, total = [], 0
            for seq in range(send.seq, self.highest + 1):
                size = self.sizes[seq]
                if batch and (len(batch) >= self.batch_count or total + size > send.max_bytes):
                    break
                batch.append((seq, size))
                total += size
            envelope = Envelope(SENDER, INCARNATION, send.floor, send.epoch)
            self.link.send(self.now, "receiver", (envelope, [seq for seq, _ in batch]))
            self.win.on_sent(batch)

    def sender_takes(self, packet) -> None:
        kind, value = packet
        if kind == "ack":
            self.win.on_ack(value, self.highest, self.now)
        else:
            expected, epoch = value
            self.win.on_gap(expected, epoch, self.highest, self.now)

    # the receiver's ingest: admission, then the group commit, then acks and gaps
    def receiver_takes(self, packet) -> None:
        if self.stuck:
            return  # the commit fails: nothing stored, nothing acknowledged
        envelope, seqs = packet
        plan = admit([(envelope, seq) for seq in seqs], lambda who: self.committed)
        self.stored.extend(seqs[i] for i in plan.accepted)
        self.committed = plan.last_seqs.get(WHO, self.committed)
        for who, (expected, epoch) in plan.gaps.items():
            assert who == WHO
            self.link.send(self.now, "sender", ("gap", (expected, epoch)))
        for who, last in plan.acks.items():
            assert who == WHO
            self.link.send(self.now, "sender", ("ack", last))

    def step(self) -> bool:
        """Advance the clock to the next event and handle it; False when nothing is left."""
        times = [t for t in (self.link.next_time(), self._tick_time()) if t is not None]
        if not times:
            return False
        self.now = max(self.now, min(times))
        for to, packet in self.link.deliver(self.now):
            if to == "receiver":
                self.receiver_takes(packet)
            elif to == "sender":
                self.sender_takes(packet)
            else:
                self.win.on_disconnect(self.now)
        self.win.tick(self.now)
        self.pump()
        # G1: an ack only for what is stored
        assert self.win.acked <= (-1 if self.committed is None else self.committed)
        return True

    def _tick_time(self) -> float | None:
        left = self.win.timeout(self.now)
        # a hair later than due: now - last_progress must reach the stall time in floats too
        return None if left is None else self.now + left + 1e-9

    def run(self, until: float) -> None:
        self.pump()
        while self.now < until and self.step():
            if self.win.acked == self.highest:
                return


FAULTS = st.lists(
    st.tuples(
        st.sampled_from(["ok", "drop", "dup", "delay", "disconnect"]),
        st.floats(0, 2, allow_nan=False),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sizes=st.lists(st.integers(0, 3000), min_size=1, max_size=40),
    window=st.integers(1, 12_000),
    batch_bytes=st.integers(1, 5000),
    batch_count=st.integers(1, 8),
    faults=FAULTS,
)
def test_every_message_stored_once_in_order_whatever_the_link_does(
    sizes, window, batch_bytes, batch_count, faults
):
    pair = Pair(sizes, window, batch_bytes, batch_count, FakeLink(faults))
    # the faults hit at most 80 packets; after them the link works and the
    # transfer ends (simulated seconds, no real time passes)
    pair.run(until=10_000.0)
    assert pair.win.acked == pair.highest
    assert pair.stored == list(range(len(sizes)))  # G3 once, G4 consecutive, G5 ordered
    assert pair.win.acked_total == len(sizes)


def test_acks_and_gaps_of_an_old_epoch_do_not_rewind_again():
    win = GoBackN(0, window_bytes=10_000, resend_after=RESEND_AFTER, now=0.0)
    win.on_sent([(0, 10), (1, 10), (2, 10)])
    first = win.on_gap(1, epoch=0, highest=2, now=0.1)
    assert first == Rewind(seq=1, epoch=1)
    assert win.acked == 0 and win.cursor == 1
    win.on_sent([(1, 10), (2, 10)])
    # the gap the old epoch's message 2 caused comes late: stale, ignored
    assert win.on_gap(1, epoch=0, highest=2, now=0.2) is None
    assert win.cursor == 3
    assert win.on_ack(2, highest=2, now=0.3) == 2
    assert not win.outstanding


def test_an_ack_beyond_what_was_spooled_is_clamped():
    win = GoBackN(5, window_bytes=100, resend_after=RESEND_AFTER, now=0.0)
    win.on_sent([(5, 1), (6, 1)])
    assert win.on_ack(1000, highest=6, now=0.1) == 2
    assert win.acked == 6 and win.cursor == 7


def test_a_stuck_receiver_gets_probes_of_one_batch_at_doubling_waits():
    """Acks stall (disk full at the receiver): one batch again, then wait twice as long."""
    sizes = [1000] * 40
    link = FakeLink([])
    pair = Pair(sizes, window=8000, batch_bytes=1000, batch_count=8, link=link)
    pair.stuck = True
    probes: list[Rewind] = []
    pair.pump()
    assert pair.win.sent_total == 8  # the first window
    while len(probes) < 7:
        pair.now = pair.now + pair.win.timeout(pair.now) + 1e-9
        rewind = pair.win.tick(pair.now)
        assert rewind is not None and rewind.probe and rewind.seq == 0
        probes.append(rewind)
        pair.pump()
        # each probe is one batch (here one message), not the window again
        assert pair.win.sent_total == 8 + len(probes)
        for _ in link.deliver(pair.now + 1):
            pass  # the stuck receiver takes them and commits nothing
    waits = [p.waited for p in probes]
    assert waits == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0, 4.0]  # doubling, up to 16 x 0.25
    assert pair.win.probes == 7

    # commits work again: the probe in flight is stored, acks move, the rest follows
    pair.stuck = False
    pair.win.tick(pair.now + 10)  # and once more a probe
    pair.now += 10
    pair.pump()
    pair.run(until=pair.now + 1000)
    assert pair.stored == list(range(40))


@pytest.mark.parametrize("floor", [0, 3])
def test_admission_decides_duplicate_gap_accept(floor):
    committed = {WHO: 4}
    env = Envelope(SENDER, INCARNATION, floor, 2)
    plan = admit([(env, 3), (env, 5), (env, 5), (env, 7), (env, 6)], committed.get)
    assert plan.accepted == [1, 4]
    assert plan.duplicates == 2  # 3 (stored before) and the second 5
    assert plan.gaps == {WHO: (6, 2)}  # 7 came before 6
    assert plan.last_seqs == {WHO: 6} and plan.acks == {WHO: 6}
    assert plan.behind == []


def test_admission_takes_the_senders_word_when_the_store_is_behind():
    """A store restored from an older copy lacks acknowledged seqs: start from the floor."""
    env = Envelope(SENDER, INCARNATION, 10, 0)
    plan = admit([(env, 10), (env, 11)], {WHO: 4}.get)
    assert plan.accepted == [0, 1] and plan.last_seqs == {WHO: 11}
    assert plan.behind == [(SENDER, 5, 9)]
    fresh = admit([(Envelope("new", 1, 3, 0), 3)], {}.get)
    assert fresh.accepted == [0] and fresh.behind == []
