"""cProfile for every thread of a process (cProfile alone sees only the thread that enabled it).

As a library: :func:`install` profiles the calling thread and every thread started
afterwards; :func:`dump` writes one ``LABEL-THREAD.prof`` per thread.

As a script, to profile a daemon in a child process::

    python perf/threadprof.py OUT_DIR LABEL MODULE [ARGS...]

runs ``python -m MODULE ARGS...`` with every thread profiled and dumps the
profiles when the process exits normally (a daemon stopped with SIGTERM does).
"""

from __future__ import annotations

import atexit
import cProfile
import re
import runpy
import sys
import threading
from pathlib import Path

_profiles: list[tuple[str, cProfile.Profile]] = []
_lock = threading.Lock()


def _start_in_thread(_frame, _event, _arg) -> None:
    """threading.setprofile hook: on a new thread's first event, hand over to cProfile."""
    sys.setprofile(None)
    prof = cProfile.Profile()
    with _lock:
        _profiles.append((threading.current_thread().name, prof))
    prof.enable()


def install() -> cProfile.Profile:
    """Profile this thread (returned, already enabled) and every thread started from now on."""
    threading.setprofile(_start_in_thread)
    main = cProfile.Profile()
    with _lock:
        _profiles.append((threading.current_thread().name, main))
    main.enable()
    return main


def dump(out_dir: Path, label: str) -> list[Path]:
    """Stop profiling and write one .prof file per thread; returns their paths."""
    threading.setprofile(None)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with _lock:
        profiles = list(_profiles)
        _profiles.clear()
    # this thread's profiler first: disabling another thread's profiler from here
    # also clears this thread's hook, which must not happen while ours still runs
    current = threading.current_thread().name
    profiles.sort(key=lambda item: item[0] != current)
    for name, prof in profiles:
        prof.disable()
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        path = out_dir / f"{label}-{safe}.prof"
        prof.dump_stats(path)
        written.append(path)
    return written


def main(argv: list[str]) -> None:
    out_dir, label, module, *args = argv
    install()
    atexit.register(dump, Path(out_dir), label)
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
