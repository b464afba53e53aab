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

libzmq does not free every message it took. When a connection breaks between
two parts of a message, the parts it took stay in the dropped pipe for good:
libzmq either refuses the next part (zmqio.send_parts) or drops the rest of the
message without a word. One such view would hold its transaction open for
ever, and with it every growth of the map and the spool's close. So a loan
lives no longer than the zmq context that could read its views: each
connection to the receiver has a context and a :class:`Lender` of its own
(sender/push.py), and when the connection ends (broken, replaced or closed)
its context is terminated, every zmq thread that could read a view joined, and
its loans still out end (:meth:`Lender.end_all`).

A map that must grow (``Env.resize_waiting``) waits for every loan. zmq keeps a view
as long as the receiver does not read (a receiver whose disk is full stops
reading), so the link then drops what zmq queued, by opening a new connection,
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
        self._ended = False
        lender.opened(self)

    def take(self) -> None:
        with self._lock:
            self._out += 1

    def give_back(self) -> None:
        with self._lock:
            self._out -= 1
            if self._out or self._ended:
                return
            self._ended = True
        self._end()

    def end_now(self) -> bool:
        """End the transaction whatever is still out (``Lender.end_all``); False if it had ended."""
        with self._lock:
            if self._ended:
                return False
            self._ended = True
        self._end()
        return True

    def _end(self) -> None:
        self._held.close()
        self._lender.returned(self)


class Lender:
    """Opens loans on an environment, at most ``limit`` at once."""

    def __init__(self, env: Env, limit: int = MAX_LOANS) -> None:
        self._env = env
        self._limit = limit
        self._lock = threading.Lock()
        self._reserved = 0  # loans being opened or open
        self._open: set[_Shares] = set()
        self.loans = 0  # opened in all, for tests and diagnostics

    @property
    def open_loans(self) -> int:
        return self._reserved

    def open(self) -> Loan | None:
        """A new loan; None when ``limit`` are open or the map waits to grow."""
        with self._lock:
            if self._reserved >= self._limit:
                return None
            self._reserved += 1
        try:
            held = self._env.hold()
        except BaseException:
            self._unreserve()
            raise
        if held is None:
            self._unreserve()
            return None
        self.loans += 1
        return Loan(held, self)

    def opened(self, shares: _Shares) -> None:
        with self._lock:
            self._open.add(shares)

    def returned(self, shares: _Shares) -> None:
        with self._lock:
            self._open.discard(shares)
            self._reserved -= 1

    def _unreserve(self) -> None:
        with self._lock:
            self._reserved -= 1

    def end_all(self) -> int:
        """End every loan still out, whoever holds its views; returns how many.

        Only once zmq can read none of their views any more: the context they
        were sent in terminated (its I/O threads joined), so what libzmq still
        holds of them, it holds for good.
        """
        with self._lock:
            out = list(self._open)
        return sum(shares.end_now() for shares in out)
