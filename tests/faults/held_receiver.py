"""A receiver process whose commit of index HOLD_AT never completes: a crash before an fsync.

Usage: held_receiver.py HOLD_AT receiver [hidra-ng receiver options...]

It is ``hidra-ng receiver`` with one change: the group commit whose frames reach
index HOLD_AT (of any stream) publishes them live, as every commit does before
its fsync (SPEC G6), and then waits inside the open transaction until the process
is killed. So the test can kill -9 it at the moment when live subscribers have
frames the store will never have.
"""

from __future__ import annotations

import sys
import threading

from hidra_ng.cli import main
from hidra_ng.receiver import store as store_module


def hold_from(hold_at: int) -> None:
    append = store_module.Store.append

    def held_append(self, batch, now=None, before_commit=None):  # type: ignore[no-untyped-def]
        def publish_then_hold(committed) -> None:  # type: ignore[no-untyped-def]
            if before_commit is not None:
                before_commit(committed)
            if any(item.index >= hold_at for item in committed):
                print(f"holding the commit of indices {committed[0].index}..", flush=True)
                threading.Event().wait()  # until kill -9

        return append(self, batch, now, before_commit=publish_then_hold)

    store_module.Store.append = held_append  # type: ignore[method-assign]


if __name__ == "__main__":
    hold_from(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
