"""The receiver's committer thread: writes planned batches, one at a time, then acks them.

The ingest thread (hidra_ng/receiver/daemon.py) plans each batch against the
pending state (hidra_ng/receiver/planning.py), publishes its frames live and
hands it over here (:meth:`Committer.hand_over`, only while :attr:`idle`). This
thread writes it in one LMDB transaction with one fsync (:meth:`Store.write`;
the store's write transactions, retention's included, all belong to this
thread) and then sends the commit's notice (acks, gaps, touched streams) to the
api thread: an ack never precedes the fsync (G1), and readers see the frames
only once they are durable (G6). Depth one: while batch k is written, the ingest
thread goes on receiving, planning and publishing, collecting what arrives into
batch k+1 (the group commit) up to the commit limits, and hands it over when
this thread is idle again; a pipe it polls beside its sockets tells it.

**A failed commit** (a full disk, SPEC §8) is retried here until it works, as
the ingest thread did before: in ever smaller parts, in order, down to one
message, then each second, each part re-planned against the committed state,
which gives each message the index it was planned with. Nothing of the batch
is acked meanwhile, the next batch waits in the ingest thread (bounded by the
commit limits and the PULL queue), nothing is reordered or lost. Stopping
gives up a batch that cannot be committed, and every batch after it (planned on
top of it, so even their acks of duplicates could name its seqs): their senders
keep them spooled and resend them. (docs/adr/0010-committer-thread.md)
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence

import zmq

from hidra_ng.config import ReceiverConfig
from hidra_ng.errors import StorageError
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.api import Notice
from hidra_ng.receiver.planning import AppendResult, Planned
from hidra_ng.receiver.store import RETENTION_BATCH, Store
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)

#: A batch's write waits for its large live frames to leave, this long at most:
#: on a machine with few cores the commit's copies (LMDB's pages, then the page
#: cache) and a frame's way to its subscribers compete for the same cores and
#: memory bandwidth, and the frame's latency is what a viewer sees (G6). The
#: receiving and the publishing of what comes next never wait for it.
LIVE_HEAD_START_SECONDS = 0.010
#: After a wait that ran out (a subscriber slower than its frames), no batch waits
#: for this long: a slow or stuck subscriber delays acks by at most one head start
#: a second.
LIVE_HEAD_START_PAUSE_SECONDS = 1.0


class Committer:
    """Commits the batches the ingest thread hands over, in its own thread (:meth:`run`).

    ``notice`` is the PAIR socket to the api thread; only this thread uses it.
    ``stop`` is the receiver's stop of input: a commit that keeps failing is given
    up once it is set. ``beat`` is called every turn (the watchdog's heartbeat).
    """

    def __init__(
        self,
        store: Store,
        config: ReceiverConfig,
        metrics: ReceiverMetrics,
        notice: zmq.Socket,
        stop: threading.Event,
        beat: Callable[[], None],
    ) -> None:
        self.store, self.config, self.metrics = store, config, metrics
        self._notice, self._stop, self._beat = notice, stop, beat
        self._cond = threading.Condition()
        self._batch: Planned | None = None  # handed over, not done yet (under _cond)
        self._leaving: Sequence[zmq.MessageTracker] = ()  # its live frames on their way
        self._head_starts_from = 0.0  # monotonic time; none before it (after one ran out)
        self._stopping = False
        self._ended = False  # run() returned or failed (under _cond)
        #: a batch was given up on stop: later ones were planned on top of it, and their
        #: acks (duplicates acked up to seqs of the batch given up) must not go out
        self._gave_up = False
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._next_retention = 0.0
        self.commits = 0  # group commits done, for status lines
        #: streams retention emptied, for the ingest thread to forget their live frames
        self.emptied: collections.deque[str] = collections.deque()

    # ------------------------------------------------------- ingest thread's side

    def fileno(self) -> int:
        """Readable after a batch is done: the ingest thread polls it beside its sockets."""
        return self._read_fd

    @property
    def idle(self) -> bool:
        """Nothing handed over is still being written (its notice is sent)."""
        with self._cond:
            return self._batch is None

    def hand_over(self, planned: Planned, leaving: Sequence[zmq.MessageTracker] = ()) -> None:
        """Write ``planned`` next; only while :attr:`idle` (depth one).

        ``leaving``: trackers of its live frames still being sent to subscribers; the
        write starts once they are out, or after ``LIVE_HEAD_START_SECONDS`` at most.
        """
        with self._cond:
            if self._batch is not None:
                raise RuntimeError("a batch was handed over while the last one is being written")
            self._batch, self._leaving = planned, leaving
            self._cond.notify_all()

    def wait_idle(self) -> bool:
        """Block until the batch handed over is done (committed, or given up on stop): True;
        or this thread ended without it: False."""
        with self._cond:
            self._cond.wait_for(lambda: self._batch is None or self._ended)
            return self._batch is None

    def clear_wakeups(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass

    def stop(self) -> None:
        """End :meth:`run` once the batch handed over is done."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()

    def close(self) -> None:
        os.close(self._read_fd)
        os.close(self._write_fd)

    # ------------------------------------------------------------- this thread

    def run(self) -> None:
        try:
            while True:
                with self._cond:
                    # wake each second: the heartbeat, and retention by age
                    self._cond.wait_for(lambda: self._batch is not None or self._stopping, 1.0)
                    batch, stopping, leaving = self._batch, self._stopping, self._leaving
                self._beat()
                if batch is not None:
                    self._head_start(leaving)
                    self._commit(batch)
                    with self._cond:
                        self._batch = None
                        self._cond.notify_all()
                    with contextlib.suppress(BlockingIOError):  # full of wake-ups already
                        os.write(self._write_fd, b"!")
                elif stopping:
                    return
                self._retention()
        except Exception:
            log.exception("committer thread failed")
            raise
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def _head_start(self, leaving: Sequence[zmq.MessageTracker]) -> None:
        """Let the batch's live frames leave before its write starts (bounded, see above)."""
        if not leaving or time.monotonic() < self._head_starts_from:
            return
        if not _let_leave(leaving, LIVE_HEAD_START_SECONDS):
            self._head_starts_from = time.monotonic() + LIVE_HEAD_START_PAUSE_SECONDS

    def _commit(self, planned: Planned) -> None:
        """Commit a planned batch, retrying a failed commit in parts (see the module doc)."""
        if self._gave_up:
            return
        items, part = planned.items, planned
        chunk = len(items)
        failed_since = None
        while True:
            started = time.perf_counter()
            try:
                result = self.store.write(part)
            except StorageError as err:
                self.metrics.commit_failures.inc()
                if failed_since is None:
                    failed_since = time.monotonic()
                    log.error("commit failed, not acknowledging until it works: %s", err)
                if chunk > 1:
                    chunk //= 2
                else:
                    self._beat()  # waiting for space is not hanging
                    if self._stop.wait(1.0):
                        log.error("stopping with an uncommitted batch; senders keep it spooled")
                        self._gave_up = True
                        return
                part = self.store.replan(items[:chunk])
                continue
            if failed_since is not None:
                log.warning("commits work again after %.1f s", time.monotonic() - failed_since)
                failed_since = None
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self.commits += 1
            self._after_commit(result)
            items = items[len(part.items) :]
            if not items:
                return
            chunk = min(chunk, len(items))
            part = self.store.replan(items[:chunk])

    def _after_commit(self, result: AppendResult) -> None:
        m = self.metrics
        # metrics once per stream and commit, not per message (counted when planned)
        for stream, (messages, nbytes, last) in result.stored.items():
            m.stream_committed(stream, messages, nbytes, last)
        if result.duplicates:
            m.duplicates.inc(result.duplicates)
        if result.gaps:
            m.gaps.inc(len(result.gaps))
        notice = Notice(
            acks=[(s, i, seq) for (s, i), seq in result.acks.items()],
            gaps=[(s, i, exp, ep) for (s, i), (exp, ep) in result.gaps.items()],
            streams=sorted(result.touched),
        )
        self._notice.send(proto.encode_body(notice))

    def _retention(self) -> None:
        """Apply max_store_bytes / max_age_seconds: after commits that overflow, and each second."""
        c = self.config
        if not (c.max_store_bytes or c.max_age_seconds):
            return
        now = time.monotonic()
        over = c.max_store_bytes and self.store.stored_bytes() > c.max_store_bytes
        if not over and now < self._next_retention:
            return
        self._next_retention = now + 1.0
        try:
            while (
                self.store.enforce_retention(c.max_store_bytes, c.max_age_seconds)
                >= RETENTION_BATCH
                and not self._stop.is_set()
            ):
                pass
        except StorageError as err:
            log.error("retention failed: %s", err)
        for stream in self.store.drain_emptied():
            self.metrics.forget_stream(stream)
            self.emptied.append(stream)


def _let_leave(leaving: Sequence[zmq.MessageTracker], seconds: float) -> bool:
    """Wait until every tracker is done (True), or at most ``seconds`` (False)."""
    deadline = time.monotonic() + seconds
    for tracker in leaving:
        if tracker.done:
            continue
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        try:
            tracker.wait(left)
        except zmq.NotDone:
            return False
    return True
