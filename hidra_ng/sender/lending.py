"""Spooled payloads handed to zmq without a copy: views of the spool's map, lent.

A large payload is sent from the spool's memory map itself (``copy=False``),
not from a ``bytes()`` copy of it, which saves one pass over every frame (a
4 MiB copy took 0.2-1.8 ms on the 2-core VM, with its load; perf/NOTES.md "CPU
per byte").

The views are valid only while the read transaction they came from is open:
after it ends, a later write may reuse the pages, and a growing map moves.
zmq's I/O thread reads a lent view until the message is on the socket (or
dropped with a closed connection), which may be after the link thread went
on. So each lent view is a memoryview object that pyzmq keeps until libzmq
frees the message; when the last view of a transaction and the reader are
done with it, the transaction ends, in whichever thread let go last (pyzmq's
garbage-collector thread, typically). The link thread never waits for it.

At most :data:`MAX_LOANS` transactions are open at once (each takes an LMDB
reader slot); beyond that the link waits for loans to come back.

A map that must grow (``Env.resize_waiting``) waits for every loan. zmq keeps a view
as long as the receiver does not read (a receiver whose disk is full stops
reading), so the link then drops what zmq queued, by opening a new PUSH socket,
and resends it later as after a broken connection (producer.py); meanwhile it
neither lends nor blocks on the spool, so nothing it holds delays the growth.
"""

from __future__ import annotations

import threading
import weakref

from hidra_ng.lmdbenv import Env, Held

#: read transactions lent out at once (the spool's LMDB has 256 reader slots)
MAX_LOANS = 64


class Loan:
    """One read transaction of the spool, open until the reader and every lent view are done.

    ``end()`` says the reader is done (after its send call); a loan that becomes
    garbage without it (an exception in between) ends then, so it never stays open.
    """

    def __init__(self, held: Held, lender: Lender) -> None:
        self.txn = held.txn
        self._shares = _Shares(held, lender)
        self.end = weakref.finalize(self, self._shares.give_back)  # the reader's share, once
        self.end.atexit = False

    def lend(self, view: memoryview | bytes) -> memoryview:
        """A view zmq may keep: the transaction stays open until it is garbage."""
        lent = memoryview(view)
        self._shares.take()
        weakref.finalize(lent, self._shares.give_back).atexit = False
        return lent


class _Shares:
    """Who still uses a loan's transaction: the reader and each lent view; the last ends it."""

    def __init__(self, held: Held, lender: Lender) -> None:
        self._held = held
        self._lender = lender
        self._lock = threading.Lock()
        self._out = 1  # the reader's

    def take(self) -> None:
        with self._lock:
            self._out += 1

    def give_back(self) -> None:
        with self._lock:
            self._out -= 1
            last = self._out == 0
        if last:
            self._held.close()
            self._lender.returned()


class Lender:
    """Opens loans on an environment, at most ``limit`` at once."""

    def __init__(self, env: Env, limit: int = MAX_LOANS) -> None:
        self._env = env
        self._limit = limit
        self._lock = threading.Lock()
        self.open_loans = 0
        self.loans = 0  # opened in all, for tests and diagnostics

    def open(self) -> Loan | None:
        """A new loan; None when ``limit`` are open or the map waits to grow."""
        with self._lock:
            if self.open_loans >= self._limit:
                return None
            self.open_loans += 1
        try:
            held = self._env.hold()
        except BaseException:
            self.returned()
            raise
        if held is None:
            self.returned()
            return None
        self.loans += 1
        return Loan(held, self)

    def returned(self) -> None:
        with self._lock:
            self.open_loans -= 1
