"""Publishing complete files and saving the position, in order, beside the writing.

A format closes a file as ``NAME.part`` and hands it over with its checkpoint
(:meth:`Publisher.submit`); a thread of its own then fsyncs the ``.part`` files,
renames them, fsyncs their directory and commits the checkpoint (announcement,
metrics, the saved position), strictly in the order handed over, while the
format already writes the next file. A checkpoint is committed only after every
file before it is under its final name, so the saved position never runs ahead
of the files (SPEC §15: exactly once, restart-safe).

Checkpoints queued together are committed together: their files fsynced, then
renamed, then one fsync per directory (a TIFF per frame costs one directory
fsync per batch, not per file). At most ``depth`` checkpoints with files wait, so
the files under final names trail the writing by at most that many files.

The first error (a full disk at the fsync, a broker that is gone while stopping)
stops the thread; the writer raises it at its next :meth:`submit` or
:meth:`check`, and the files still queued stay ``.part`` (the next start removes
them and writes them again).
"""

from __future__ import annotations

import logging
import os
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hidra_ng.writer.files import fsync_dir, fsync_file, part_name
from hidra_ng.writer.formats import Published

log = logging.getLogger(__name__)

DEPTH = 2  # checkpoints with files that may wait to be published


@dataclass
class Job:
    next_index: int
    state: dict[str, Any]
    done: Published | None


def publish_parts(finals: list[Path]) -> None:
    """fsync every ``NAME.part`` of ``finals``, rename each to ``NAME``, fsync each
    directory once: all of them under their final names, durably, or raise."""
    job = Job(0, {}, Published(finals, 0, 0))
    fsync_parts([job])
    rename_parts([job])


class Publisher:
    """One stream's publishing thread (see the module's docstring).

    ``commit(jobs)`` runs in this thread after the files of ``jobs`` are published;
    it announces, counts and saves the position of the last one.
    """

    def __init__(self, name: str, commit: Callable[[list[Job]], None], depth: int = DEPTH) -> None:
        self._commit = commit
        self._depth = depth
        self._jobs: deque[Job] = deque()
        self._closing = False
        self._error: BaseException | None = None
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._run, name=f"publish {name}", daemon=True)
        self._thread.start()

    def _waiting_files(self) -> int:
        return sum(1 for job in self._jobs if job.done is not None and job.done.files)

    def submit(self, job: Job, stop: threading.Event | None = None) -> None:
        """Queue ``job``; waits while ``depth`` checkpoints with files wait (or until
        ``stop``), raises the error that stopped the thread."""
        with self._cond:
            while True:
                if self._error is not None:
                    raise self._error
                if not (job.done and job.done.files) or self._waiting_files() < self._depth:
                    break
                if stop is not None and stop.is_set():
                    break  # queued anyway; close() publishes or drops it
                self._cond.wait(0.5)
            self._jobs.append(job)
            self._cond.notify_all()

    def check(self) -> None:
        """Raise the error that stopped the thread, if one did."""
        if self._error is not None:
            raise self._error

    def close(self, drain: bool = True) -> BaseException | None:
        """Stop the thread: with ``drain``, after publishing what is queued; otherwise
        after the batch in progress (the rest stays ``.part``). Returns its error."""
        with self._cond:
            if not drain:
                self._jobs.clear()
            self._closing = True
            self._cond.notify_all()
        self._thread.join()
        return self._error

    # ------------------------------------------------------------ thread

    def _run(self) -> None:
        while True:
            batch = self._take(wait=True)
            if not batch:
                return
            try:
                fsync_parts(batch)
                # what came while those were flushed (a series' master after its last
                # data file) joins them: renamed together, one checkpoint saved
                more = self._take(wait=False)
                fsync_parts(more)
                batch += more
                rename_parts(batch)
                self._commit(batch)
            except BaseException as err:  # handed to the writer thread
                with self._cond:
                    self._error = err
                    self._jobs.clear()
                    self._cond.notify_all()
                return

    def _take(self, wait: bool) -> list[Job]:
        """The queued jobs (waiting for some with ``wait``, unless closing)."""
        with self._cond:
            while wait and not self._jobs and not self._closing:
                self._cond.wait()
            batch = list(self._jobs)
            self._jobs.clear()
            self._cond.notify_all()  # room for the writer's next file
            return batch


def _finals(jobs: list[Job]) -> list[Path]:
    return [f for job in jobs if job.done is not None for f in job.done.files]


def fsync_parts(jobs: list[Job]) -> None:
    for final in _finals(jobs):
        fsync_file(part_name(final))


def rename_parts(jobs: list[Job]) -> None:
    """Rename the (fsynced) ``.part`` files of ``jobs`` in order, fsync each directory."""
    finals = _finals(jobs)
    for final in finals:
        os.replace(part_name(final), final)
    for directory in dict.fromkeys(final.parent for final in finals):
        fsync_dir(directory)
