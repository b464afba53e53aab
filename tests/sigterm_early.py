"""``hidra-ng ARGS`` that sends itself SIGTERM inside its daemon's constructor.

Usage: ``python tests/sigterm_early.py MODULE:CLASS HIDRA_NG_ARGS...``

The constructor of ``CLASS`` (the receiver, the sender daemon, the writer, the
bridge) runs to its end (sockets bound, store or spool open, lock and lease
taken), then the process signals itself, before ``service.run`` was called: the
window in which a SIGTERM used to kill a daemon with exit code -15. A plain
script (no pytest): the test runs it as a child process.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys

from hidra_ng.cli import main


def signal_in_constructor(target: str) -> None:
    module_name, class_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), class_name)
    original = cls.__init__

    def init(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        print("constructed; sending SIGTERM", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGTERM)

    cls.__init__ = init


if __name__ == "__main__":
    signal_in_constructor(sys.argv[1])
    sys.exit(main(sys.argv[2:]))
