"""The sender's go-back-N window, without I/O (docs/adr/0001-ack-path.md).

:class:`GoBackN` owns no socket, spool, clock or thread, in the manner of
h11's connection objects: the link thread feeds it what happened (an ack, a
gap, a broken connection, the time) and asks it what to send; it answers with
plain values. So the window's rules are tested alone and, paired with the
receiver's :mod:`hidra_ng.receiver.admission`, through a fake lossy link with an
injected clock (tests/unit/test_gobackn.py).

The rules:

* messages go out in seq order from ``cursor`` while the unacknowledged bytes
  in flight stay under ``window_bytes``;
* an ack (cumulative: every seq up to ``last_seq``) frees the window;
* a gap from the receiver (it expected ``expected`` and got a later seq) in the
  current epoch, or a broken connection, rewinds: everything from the first
  unacknowledged seq is sent again, in a new epoch, so the gaps caused by the
  old epoch's messages still in flight are ignored;
* when acks stall for ``stall_after`` seconds with neither, only the first
  unacknowledged batch is sent again, as a probe, and the wait before the next
  probe doubles (up to ``MAX_STALL_FACTOR`` x ``resend_after``): a receiver that
  cannot commit (disk full) looks like a lost tail from here, and must not get
  a copy of the whole window queued at every stall.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Rewind:
    """Send everything again from ``seq`` in epoch ``epoch``."""

    seq: int
    epoch: int
    probe: bool = False  #: after a stall: one batch only until acks move
    waited: float = 0.0  #: for a probe, how long acks had stalled


@dataclass(frozen=True, slots=True)
class Send:
    """Send the spooled messages from ``seq`` on, at most ``max_bytes`` of payloads.

    ``floor`` and ``epoch`` go into the envelope: the first unacknowledged seq
    and the current epoch.
    """

    seq: int
    max_bytes: int
    floor: int
    epoch: int


class GoBackN:
    """The window of one sender incarnation: what is acknowledged, in flight, to send."""

    #: while acks stay stalled the wait before each resend doubles, up to this multiple
    MAX_STALL_FACTOR = 16

    def __init__(self, first_seq: int, window_bytes: int, resend_after: float, now: float) -> None:
        self.window_bytes = window_bytes
        self.resend_after = resend_after
        #: every seq up to this one is acknowledged
        self.acked = first_seq - 1
        #: the next seq to send
        self.cursor = first_seq
        self.epoch = 0
        #: messages sent and acknowledged (acknowledged ones counted once)
        self.sent_total = 0
        self.acked_total = 0
        self.probes = 0
        self._inflight: collections.deque[tuple[int, int]] = collections.deque()
        self._inflight_bytes = 0
        self._last_progress = now
        self._stall_after = resend_after  # doubles while acks stay stalled
        self._probing = False  # after a stall: one batch in flight until acks move

    # ----------------------------------------------------------------- inputs

    @property
    def outstanding(self) -> bool:
        """Something was sent and is not acknowledged yet."""
        return self.cursor - 1 > self.acked

    @property
    def in_flight(self) -> bool:
        """Messages were sent in this epoch and are not acknowledged yet."""
        return bool(self._inflight)

    def on_ack(self, last_seq: int, highest: int, now: float) -> int:
        """The receiver holds every seq up to ``last_seq``; returns how many are new.

        ``highest`` is the highest seq ever spooled: an ack beyond it (from a
        receiver that confuses incarnations) is clamped.
        """
        if last_seq <= self.acked:
            return 0
        last_seq = min(last_seq, highest)
        newly = last_seq - self.acked
        self.acked_total += newly
        self._last_progress = now
        self._probing = False
        self._stall_after = self.resend_after
        while self._inflight and self._inflight[0][0] <= last_seq:
            self._inflight_bytes -= self._inflight.popleft()[1]
        self.acked = last_seq
        if self.cursor <= last_seq:
            self.cursor = last_seq + 1
        return newly

    def on_gap(self, expected: int, epoch: int, highest: int, now: float) -> Rewind | None:
        """The receiver holds every seq below ``expected`` and got a later one.

        Returns the rewind to do, or None when the gap is stale: of an older
        epoch, or for seqs already being sent again.
        """
        self.on_ack(expected - 1, highest, now)
        if epoch == self.epoch and expected < self.cursor:
            return self._rewind(now)
        return None

    def on_disconnect(self, now: float) -> Rewind | None:
        """The connection broke: what sat in its queue is lost; resend it now."""
        return self._rewind(now) if self.outstanding else None

    def tick(self, now: float) -> Rewind | None:
        """Check for stalled acks; returns a probe when they stalled long enough."""
        if not self.outstanding:
            self._last_progress = now
            return None
        if now - self._last_progress < self._stall_after:
            return None
        waited = self._stall_after
        rewind = self._rewind(now, probe=True, waited=waited)
        self._stall_after = min(2 * waited, self.MAX_STALL_FACTOR * self.resend_after)
        self.probes += 1
        return rewind

    def next_send(self, highest: int, max_batch_bytes: int) -> Send | None:
        """What to send next, if the window allows: the messages from ``cursor`` on.

        ``highest`` is the highest seq spooled. After :meth:`on_sent` says what
        went out, ask again.
        """
        if self.cursor > highest or self._inflight_bytes >= self.window_bytes:
            return None
        if self._probing and self._inflight:
            return None  # the probe is out; more only once acks move again
        return Send(
            self.cursor, min(max_batch_bytes, self.window_bytes), self.acked + 1, self.epoch
        )

    def on_sent(self, sent: list[tuple[int, int]]) -> None:
        """``(seq, payload bytes)`` of each message of the batch that went out, in order."""
        for seq, nbytes in sent:
            self._inflight.append((seq, nbytes))
            self._inflight_bytes += nbytes
        if sent:
            self.sent_total += len(sent)
            self.cursor = sent[-1][0] + 1

    def on_sent_run(self, first: int, sizes: list[int]) -> None:
        """:meth:`on_sent` of consecutive messages from seq ``first`` with payload ``sizes``.

        The run counts in the window as one entry: its bytes leave the window once
        its last seq is acknowledged (a partly acknowledged run counts whole).
        """
        if not sizes:
            return
        last = first + len(sizes) - 1
        nbytes = sum(sizes)
        self._inflight.append((last, nbytes))
        self._inflight_bytes += nbytes
        self.sent_total += len(sizes)
        self.cursor = last + 1

    def timeout(self, now: float) -> float | None:
        """Seconds until :meth:`tick` may probe; None while nothing is outstanding."""
        if not self.outstanding:
            return None
        return max(0.0, self._last_progress + self._stall_after - now)

    # --------------------------------------------------------------- internal

    def _rewind(self, now: float, *, probe: bool = False, waited: float = 0.0) -> Rewind:
        self.epoch += 1
        self.cursor = self.acked + 1
        self._inflight.clear()
        self._inflight_bytes = 0
        self._probing = probe
        if not probe:  # the receiver answered (gap) or the connection is new
            self._stall_after = self.resend_after
        self._last_progress = now
        return Rewind(self.cursor, self.epoch, probe, waited)
