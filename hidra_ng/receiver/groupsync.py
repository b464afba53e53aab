"""The durable commit of consumer-group state, in a thread of its own (SPEC G8).

A reply that confirms a change of group state (a hand-out, an ack, a nack) may
only leave once that change would survive a machine crash, as stored frames do.
The api thread hands each turn's changes (encoded: nothing shared with it is
touched here) to this writer and goes on serving; the writer commits everything
handed to it since its last commit in one transaction and reports which turns
are durable, and the api thread then sends the replies of those turns.

Flushes: the environment commits with ``metasync=False``: a commit flushes its
pages, then writes the meta page that makes it current without flushing it;
LMDB's integrity holds on a crash, and the commit is durable once that meta page
is flushed. Under load the next commit's page flush does that, so a stream of
commits costs one flush each; when no commit follows, the writer syncs. Turns
that queue while a commit runs share the next one.

A failed commit (a full disk) is reported for its turns, whose replies are
withheld (the members ask again); its changes are retried with the next.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from dataclasses import dataclass, field

from hidra_ng.errors import StorageError
from hidra_ng.lmdbenv import Env

log = logging.getLogger(__name__)


@dataclass
class Changes:
    """Encoded puts (bytes) and deletes (None) per database of the groups environment."""

    groups: dict[bytes, bytes | None] = field(default_factory=dict)
    entries: dict[bytes, bytes | None] = field(default_factory=dict)

    def update(self, later: Changes) -> None:
        self.groups.update(later.groups)
        self.entries.update(later.entries)

    def __bool__(self) -> bool:
        return bool(self.groups or self.entries)


def commit(env: Env, changes: Changes) -> bool:
    """One write transaction with every change; whether it changed anything (LMDB writes
    and flushes nothing for a transaction that changed nothing)."""

    def fill(txn) -> bool:
        changed = False
        for name, writes in (("groups", changes.groups), ("entries", changes.entries)):
            db = env.dbs[name]
            puts = []
            for key, value in writes.items():
                if value is None:
                    changed = txn.delete(key, db=db) or changed
                else:
                    puts.append((key, value))
            if puts:  # one call for all of them: the loop runs in C, not in Python
                _, added = txn.cursor(db=db).putmulti(puts)
                changed = changed or added > 0
        return changed

    return env.write(fill)


class GroupWriter:
    """Commits submitted changes in its thread; tells the api thread through a pipe.

    ``submit`` and ``results`` are for the api thread; the thread starts with the
    first submit and ends with :meth:`stop`.
    """

    def __init__(self, env: Env) -> None:
        self.env = env
        self._cond = threading.Condition()
        self._queue: list[tuple[int, Changes | None]] = []
        self._results: list[tuple[int, StorageError | None]] = []
        self._submitted = 0  # the last turn handed over
        self._done_through = 0  # the last turn the writer finished (under _cond)
        self._reported = 0  # the last turn whose result the api thread took
        self._stopping = False
        self._retry: Changes | None = None  # a failed commit's changes, retried with the next
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._thread: threading.Thread | None = None
        self.commits = 0  # commits that wrote pages (status, tests)
        self.syncs = 0  # syncs of a commit's meta page that no next commit flushed

    def fileno(self) -> int:
        """Readable when results wait: the api thread polls it beside its sockets."""
        return self._read_fd

    @property
    def idle(self) -> bool:
        """Everything submitted is reported (api thread)."""
        return self._reported == self._submitted

    def submit(self, changes: Changes | None) -> int:
        """Hand over one turn's changes (None: none, only the turn); returns the turn's number."""
        with self._cond:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="hidra-ng-groups-writer", daemon=True
                )
                self._thread.start()
            self._submitted += 1
            self._queue.append((self._submitted, changes))
            self._cond.notify()
            return self._submitted

    def results(self) -> list[tuple[int, StorageError | None]]:
        """(last turn of a commit, its error or None), in order, since the last call."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self._read_fd, 4096):
                pass
        with self._cond:
            results, self._results = self._results, []
        if results:
            self._reported = results[-1][0]
        return results

    def wait(self, timeout: float) -> bool:
        """Block until everything submitted is committed or failed (stop, tests)."""
        with self._cond:
            return self._cond.wait_for(
                lambda: not self._queue and self._done_through >= self._submitted, timeout
            )

    def stop(self) -> None:
        """Commit what is queued, then end the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None:
            thread.join()
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _run(self) -> None:
        unflushed = 0  # the last turn committed whose meta page is not flushed yet
        while True:
            with self._cond:
                if not unflushed:
                    self._cond.wait_for(lambda: self._queue or self._stopping)
                    if not self._queue:
                        return
                batch, self._queue = self._queue, []
            if not batch:  # nothing came while the last commit ran: flush its meta page
                self._report(unflushed, self._flush())
                unflushed = 0
                continue
            turn = batch[-1][0]
            merged = self._retry or Changes()
            for _, changes in batch:
                if changes:
                    merged.update(changes)
            wrote, error = self._commit(merged) if merged else (False, None)
            if wrote:
                # this commit flushed its pages and, with them, the last commit's meta page
                if unflushed:
                    self._report(unflushed, None)
                unflushed = turn
                continue
            if unflushed:  # nothing flushed by this batch: the last commit needs a sync
                self._report(unflushed, self._flush())
                unflushed = 0
            self._report(turn, error)

    def _commit(self, changes: Changes) -> tuple[bool, StorageError | None]:
        """(whether LMDB wrote and flushed pages, the error)."""
        try:
            wrote = commit(self.env, changes)
        except StorageError as err:
            self._retry = changes
            return False, err
        except Exception as err:  # a bug must cost these replies, not the thread
            log.exception("group commit failed")
            self._retry = changes
            return False, StorageError(f"group commit failed: {err!r}")
        self._retry = None
        self.commits += wrote
        return wrote, None

    def _flush(self) -> StorageError | None:
        try:
            self.env.sync()
        except StorageError as err:
            return err
        self.syncs += 1
        return None

    def _report(self, turn: int, error: StorageError | None) -> None:
        """Turns up to ``turn`` are durable (or failed): tell the api thread."""
        with self._cond:
            self._results.append((turn, error))
            self._done_through = turn
            self._cond.notify_all()
        with contextlib.suppress(BlockingIOError):  # full of wake-ups already
            os.write(self._write_fd, b"!")
