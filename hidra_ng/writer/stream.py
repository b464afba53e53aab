"""One stream's writer: reads its durable frames in order and feeds a format.

Position and state live beside the files, in ``<dir>/<stream>/.hidra-ng-writer.json``,
written atomically (``.part``, fsync, rename) right after the files they describe
were published. On start the writer removes left-over ``.part`` files and goes
on from that checkpoint; frames after it are written again into files of the
same names (see formats.py), so each frame ends up in the files once.

Frames are read with ``Consumer.replay`` (flow-controlled, what is stored) and,
once caught up, ``Consumer.get(next, timeout=1)``, which waits in the receiver
for the next durable index without polling and returns within a second, so a
stop request is seen promptly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hidra_ng import Consumer, Frame, Gone, NotYetAvailable, StreamFinished
from hidra_ng.errors import HidraError, InvalidStreamName, ReceiverUnavailable
from hidra_ng.writer.announce import AnnounceError, Announcer
from hidra_ng.writer.files import is_disk_full, remove_parts, write_atomic_bytes
from hidra_ng.writer.formats import Options, Published, WriteRefused, make_format

log = logging.getLogger(__name__)

STATE_FILE = ".hidra-ng-writer.json"
WAIT_SECONDS = 1.0  # get() wait for the next index; also the stop latency
RETRY_SECONDS = 2.0  # after a disk full, a lost receiver or broker
STATE_SAVE_SECONDS = 1.0  # checkpoints without a new file are saved at most this often


def stream_directory(root: Path, stream: str) -> Path:
    """``root/<stream>``: one directory per stream (its ``/``-segments nest)."""
    parts = stream.split("/")
    if any(p in (".", "..") for p in parts):
        raise InvalidStreamName(
            f"stream {stream!r} has a segment '.' or '..', which cannot be a directory"
        )
    return root.joinpath(*parts)


@dataclass
class Hooks:
    """What a stream writer reports to its daemon (metrics, liveness)."""

    published: Callable[[str, Published], None]
    error: Callable[[str, str, str], None]  # stream, reason, message
    disk_full: Callable[[str, bool], None]
    beat: Callable[[str], None]
    gone: Callable[[str, int], None]


class StreamWriter:
    def __init__(
        self,
        stream: str,
        root: Path,
        fmt: str,
        options: Options,
        consumer: Callable[[], Consumer],
        hooks: Hooks,
        stop: threading.Event,
        announcer: Announcer | None = None,
    ) -> None:
        self.stream = stream
        self.directory = stream_directory(root, stream)
        self.format_name = fmt
        self.options = options
        self._consumer_factory = consumer
        self.hooks = hooks
        self.stop = stop
        self.announcer = announcer
        self.consumer: Consumer | None = None
        self.next_index = 0  # checkpoint: first index not in a complete file
        self.state: dict[str, Any] = {}
        self.read_index = -1  # the last index handed to the format
        self.failed = ""  # the error that stopped this stream, if any
        self.finished = False
        self._dirty = False
        self._saved_at = 0.0
        self.thread = threading.Thread(target=self.run, name=f"write {stream}", daemon=True)

    # ---------------------------------------------------------- checkpoint

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for part in remove_parts(self.directory):
            log.info("stream %s: removed the incomplete %s", self.stream, part)
        try:
            saved = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return
        if saved.get("stream") != self.stream or saved.get("format") != self.format_name:
            raise WriteRefused(
                f"{self.state_path} belongs to stream {saved.get('stream')!r} written as"
                f" {saved.get('format')!r}, not {self.stream!r} as {self.format_name!r}; use"
                " another --dir",
                "state",
            )
        self.next_index = int(saved["next"])
        self.state = dict(saved.get("state") or {})

    def save(self) -> None:
        body = {
            "stream": self.stream,
            "format": self.format_name,
            "next": self.next_index,
            "state": self.state,
            "saved": time.time(),
        }
        write_atomic_bytes(self.state_path, json.dumps(body, sort_keys=True).encode())
        self._dirty = False
        self._saved_at = time.monotonic()

    # Context for the formats

    def fetch(self, index: int, *, decode: bool = True) -> Frame:
        assert self.consumer is not None
        return self.consumer.get(self.stream, index, timeout=5.0, decode=decode)

    def fetch_table(self, series_unique_id: Any, table: str, channel: Any) -> np.ndarray | None:
        """A table of the series from the sibling ``tables`` stream, if the source sent it."""
        assert self.consumer is not None
        parent = self.stream.rsplit("/", 1)[0] if "/" in self.stream else ""
        if not parent:
            return None
        tables = f"{parent}/tables"
        try:
            self.consumer.info(tables)
        except HidraError:
            return None
        hits = self.consumer.query(
            tables,
            f"meta.type == 'table' and meta.table == {json.dumps(table)}"
            f" and meta.series_unique_id == {json.dumps(str(series_unique_id))}",
        )
        for hit in hits:
            if hit.meta.get("channel") in (channel, None):
                data = self.consumer.get(tables, hit.index, timeout=5.0).data
                return data if isinstance(data, np.ndarray) else None
        return None

    def checkpoint(self, next_index: int, state: dict[str, Any], done: Published | None) -> None:
        if done is not None and done.announce is not None and self.announcer is not None:
            self._announce(done.announce)
        self.next_index, self.state = next_index, state
        self._dirty = True
        if done is not None:
            self.hooks.published(self.stream, done)
            if self.format_name != "tiff":
                self.save()
        if self._dirty and time.monotonic() - self._saved_at >= STATE_SAVE_SECONDS:
            self.save()

    def _announce(self, parameters: dict[str, Any]) -> None:
        assert self.announcer is not None
        failing = False
        while True:
            try:
                ident = self.announcer.publish(parameters)
                log.info("announced %s (%s)", parameters.get("file"), ident)
                return
            except AnnounceError as err:
                if not failing:
                    log.error("stream %s: %s; retrying every %.0f s", self.stream, err,
                              RETRY_SECONDS)  # fmt: skip
                    self.hooks.error(self.stream, "announce", str(err))
                failing = True
                self.hooks.beat(self.stream)
                if self.stop.wait(RETRY_SECONDS):
                    raise

    # ------------------------------------------------------------------ run

    def run(self) -> None:
        full = False
        while not self.stop.is_set():
            self.hooks.beat(self.stream)
            fmt = None
            try:
                self.load()
                with self._consumer_factory() as consumer:
                    self.consumer = consumer
                    fmt = make_format(self.format_name, self, self.state)
                    if full:
                        full = False
                        self.hooks.disk_full(self.stream, False)
                        log.warning("stream %s: writing again", self.stream)
                    self._loop(consumer, fmt)
                    if self.finished:
                        log.info("stream %s finished; all its files are written", self.stream)
                        return
            except WriteRefused as err:
                self._abort(fmt)
                self.failed = str(err)
                log.error("stream %s: %s; its writing stops here", self.stream, err)
                self.hooks.error(self.stream, err.reason, str(err))
                return
            except (ReceiverUnavailable, Gone) as err:
                self._abort(fmt)
                if isinstance(err, Gone):
                    self._skip_gone()
                else:
                    log.warning("stream %s: %s; retrying", self.stream, err)
                    self.stop.wait(RETRY_SECONDS)
            except (OSError, HidraError, RuntimeError, ValueError) as err:
                self._abort(fmt)
                if is_disk_full(err):
                    if not full:
                        log.error("stream %s: the output disk is full (%s); waiting for space,"
                                  " nothing is skipped", self.stream, err)  # fmt: skip
                        self.hooks.disk_full(self.stream, True)
                        self.hooks.error(self.stream, "disk_full", str(err))
                    full = True
                else:
                    log.error("stream %s: writing failed: %s; retrying", self.stream, err)
                    self.hooks.error(self.stream, "io", str(err))
                self.stop.wait(RETRY_SECONDS)
            finally:
                self.consumer = None
        # stopped: what is in progress stays a .part; the checkpoint is saved
        with contextlib.suppress(OSError):
            if self._dirty:
                self.save()

    def _abort(self, fmt: Any) -> None:
        if fmt is not None:
            fmt.abort()

    def _skip_gone(self) -> None:
        with self._consumer_factory() as c:
            first = c.info(self.stream).first
        lost = max(0, first - self.next_index)
        log.error("stream %s: indices %d to %d were removed by retention before they were"
                  " written", self.stream, self.next_index, first - 1)  # fmt: skip
        self.hooks.gone(self.stream, lost)
        self.next_index = first
        with contextlib.suppress(OSError):
            self.save()

    def _loop(self, consumer: Consumer, fmt: Any) -> None:
        """Frames from a reader thread (its own Consumer) into the format, in index order.

        Reading (the receiver's replay) and writing (HDF5, fsync) overlap on two
        threads; the queue between them holds at most PREFETCH frames.
        """
        reader = _Reader(self, self.next_index, fmt.decode)
        reader.thread.start()
        try:
            while not self.stop.is_set():
                try:
                    item = reader.queue.get(timeout=WAIT_SECONDS)
                except queue.Empty:
                    self.hooks.beat(self.stream)
                    if self._dirty and time.monotonic() - self._saved_at >= STATE_SAVE_SECONDS:
                        self.save()
                    continue
                if isinstance(item, Frame):
                    self._add(fmt, item)
                    continue
                if isinstance(item, BaseException):
                    raise item
                # the stream is finished and read to its end
                index = int(item)
                fmt.finish(index)
                self.next_index = max(self.next_index, index)
                self.save()
                self.finished = True
                return
            fmt.abort()
        finally:
            reader.close()

    def _add(self, fmt: Any, frame: Frame) -> None:
        fmt.add(frame)
        self.read_index = frame.index


PREFETCH = 8  # frames read ahead of the writing thread


class _Reader:
    """Reads a stream's durable frames from ``start`` on and queues them.

    ``Consumer.replay`` while frames are stored, then ``Consumer.get(next,
    timeout)``, which waits in the receiver for the next index. Puts Frames, then
    an int (the end index) once the stream is finished, or the exception that
    stopped it.
    """

    def __init__(self, owner: StreamWriter, start: int, decode: bool) -> None:
        self.owner = owner
        self.next = start
        self.decode = decode
        self.queue: queue.Queue[Any] = queue.Queue(maxsize=PREFETCH)
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"read {owner.stream}", daemon=True)

    def _put(self, item: Any) -> bool:
        while not (self.done.is_set() or self.owner.stop.is_set()):
            try:
                self.queue.put(item, timeout=WAIT_SECONDS)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        stream = self.owner.stream
        try:
            with self.owner._consumer_factory() as consumer:
                while not (self.done.is_set() or self.owner.stop.is_set()):
                    for frame in consumer.replay(stream, start=self.next, decode=self.decode):
                        if not self._put(frame):
                            return
                        self.next = frame.index + 1
                    try:
                        frame = consumer.get(
                            stream, self.next, timeout=WAIT_SECONDS, decode=self.decode
                        )
                    except NotYetAvailable:
                        continue
                    except StreamFinished:
                        self._put(self.next)
                        return
                    if not self._put(frame):
                        return
                    self.next = frame.index + 1
        except BaseException as err:  # handed to the writing thread, which decides
            self._put(err)

    def close(self) -> None:
        self.done.set()
        self.thread.join(timeout=3 * WAIT_SECONDS + 10)
