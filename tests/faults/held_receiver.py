"""A receiver process whose commit of index HOLD_AT never completes: a crash before an fsync.

Usage: held_receiver.py HOLD_AT receiver [hidra-ng receiver options...]

It is ``hidra-ng receiver`` with one change: the group commit whose frames reach
index HOLD_AT (of any stream) never starts. Its frames are out live already, as
every batch's are before its commit is written (SPEC G6, the ingest thread
publishes them before it hands the batch to the committer thread), and the
committer waits until the process is killed. So the test can kill -9 it at the
moment when live subscribers have frames the store will never have.
"""

from __future__ import annotations

import sys
import threading

from hidra_ng.cli import main
from hidra_ng.receiver import store as store_module


def hold_from(hold_at: int) -> None:
    write = store_module.Store.write

    def held_write(self, planned):  # type: ignore[no-untyped-def]
        indices = [c.index for c in planned.result.committed]
        if any(index >= hold_at for index in indices):
            print(f"holding the commit of indices {indices[0]}..", flush=True)
            threading.Event().wait()  # until kill -9
        return write(self, planned)

    store_module.Store.write = held_write  # type: ignore[method-assign]


if __name__ == "__main__":
    hold_from(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
