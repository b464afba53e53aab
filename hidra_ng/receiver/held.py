"""Read transactions kept open while zmq sends views of the store's map.

A replayed frame of 4 MiB is sent as a view of LMDB's memory map, not a copy
(``copy=False``): the read transaction that found it must stay open until zmq
no longer needs the bytes, or a later commit could reuse those pages (after
retention freed them) while they are being sent. zmq tells when it is done
through a ``MessageTracker``; the api thread closes finished transactions at
each turn of its loop.

Bounds: at most ``limit`` transactions are held (LMDB has 256 reader slots),
and none is added while a map resize waits for the readers to leave; in both
cases the replay copies instead. A consumer that stops reading keeps its frames
in zmq's queues (its credit window at most), and the transactions with them;
they end when it reads, disconnects or its session is dropped.
"""

from __future__ import annotations

import contextlib

import zmq

#: most read transactions held at once for frames zmq still sends
HELD_LIMIT = 32


class HeldReads:
    def __init__(self, limit: int = HELD_LIMIT) -> None:
        self.limit = limit
        self._held: list[tuple[contextlib.ExitStack, list[zmq.MessageTracker]]] = []

    def __len__(self) -> int:
        return len(self._held)

    @property
    def room(self) -> bool:
        return len(self._held) < self.limit

    def keep(self, txn: contextlib.ExitStack, trackers: list[zmq.MessageTracker]) -> None:
        """``txn`` (an open read) ends once zmq is done with every tracked send."""
        if all(t.done for t in trackers):
            txn.close()
        else:
            self._held.append((txn, trackers))

    def release_done(self) -> None:
        if not self._held:
            return
        still = []
        for txn, trackers in self._held:
            if all(t.done for t in trackers):
                txn.close()
            else:
                still.append((txn, trackers))
        self._held = still

    def release_all(self) -> None:
        """When the api stops: the transactions end whatever zmq still holds.

        Safe only because the receiver stops ingest first (no commit reuses a
        page) and terminates zmq before it closes (unmaps) the store.
        """
        held, self._held = self._held, []
        for txn, _ in held:
            txn.close()
