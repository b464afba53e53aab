"""One stream's writer: reads its durable frames in order and feeds a format.

Position and state live beside the files, in ``<dir>/<stream>/.hidra-ng-writer.json``,
written atomically (``.part``, fsync, rename) right after the files they describe
were published. On start the writer removes left-over ``.part`` files and goes
on from that checkpoint; frames after it are written again into files of the
same names (see formats.py), so each frame ends up in the files once. A
checkpoint without a new file (a metadata message) is saved at most once a
second: the frames after a saved checkpoint are written again anyway.

Publishing (fsync, rename, directory fsync) and committing the checkpoints runs
in a thread of its own (publisher.py), in order, while the format writes the
next file: the disk flushes one file while the next is filled.

Frames are read with one ``Consumer.replay(follow=True)``: flow-controlled (the
receiver sends ahead within a credit window, small frames batched), going on
with frames committed later, ending once a finished stream is read to its end.
The writer waits for frames at most a second, so a stop request is seen promptly
and a pause lets the format complete its file. Frames written as stored keep
their payload as a view of the received message (no copy of a 4 MiB image).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hidra_ng.client.consumer import Consumer
from hidra_ng.errors import (
    Gone,
    HidraError,
    InvalidStreamName,
    ReceiverUnavailable,
)
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import Frame, frame_from_record
from hidra_ng.writer.announce import AnnounceError, Announcer
from hidra_ng.writer.files import is_disk_full, remove_parts, write_atomic_bytes
from hidra_ng.writer.formats import Format, Options, Published, WriteRefused, make_format
from hidra_ng.writer.publisher import Job, Publisher

log = logging.getLogger(__name__)

STATE_FILE = ".hidra-ng-writer.json"
WAIT_SECONDS = 1.0  # get() wait for the next index; also the stop latency
RETRY_SECONDS = 2.0  # after a disk full, a lost receiver or broker
STATE_SAVE_SECONDS = 1.0  # checkpoints without a new file are saved at most this often
READ_FRAMES = 64  # frames taken from the replay at a time


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
        self.publisher: Publisher | None = None  # while frames are read
        self._lock = threading.RLock()  # next_index, state and their saving
        self.thread = threading.Thread(target=self.run, name=f"write {stream}", daemon=True)

    # ---------------------------------------------------------- checkpoint

    @property
    def state_path(self) -> Path:
        return self.directory / STATE_FILE

    def load(self) -> None:
        self._saved_at = time.monotonic()  # the next save without a new file: a second on
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
        with self._lock:  # the publisher's thread commits, the writer's saves when idle
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
        """From the format: handed to the publisher, committed once ``done`` is published."""
        assert self.publisher is not None  # formats run inside _loop
        self.publisher.submit(Job(next_index, state, done), self.stop)

    def _commit(self, jobs: list[Job]) -> None:
        """In the publisher's thread: the files of ``jobs`` are published."""
        files = False
        for job in jobs:
            done = job.done
            if done is not None and done.announce is not None and self.announcer is not None:
                self._announce(done.announce)
            with self._lock:
                self.next_index, self.state = job.next_index, job.state
                self._dirty = True
            if done is not None:
                self.hooks.published(self.stream, done)
                files = files or bool(done.files)
        # TIFF (a file per frame, named by its index) saves like metadata messages
        if files and self.format_name != "tiff":
            self.save()
        else:
            self.save_if_due()

    def save_if_due(self) -> None:
        """Save a checkpoint without a new file, at most once a second."""
        with self._lock:
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

    def _loop(self, consumer: Consumer, fmt: Format) -> None:
        index = self.next_index
        last_frame = beaten = time.monotonic()
        replay = consumer.replay(self.stream, start=index, follow=True, decode=fmt.decode)
        self.publisher = Publisher(self.stream, self._commit)
        raised = True
        try:
            while not self.stop.is_set():
                self.publisher.check()
                try:
                    records = replay.next_records(READ_FRAMES, WAIT_SECONDS)
                except StopIteration:  # the finished stream is read to its end
                    fmt.finish(index)
                    self._close_publisher(raised=False)
                    self.next_index = max(self.next_index, index)
                    self.save()
                    self.finished = True
                    raised = False
                    return
                now = time.monotonic()
                if not records:
                    self.hooks.beat(self.stream)
                    fmt.idle(index, now - last_frame)
                    self.save_if_due()
                    continue
                for at, record, payload in records:
                    self._add(fmt, self._frame(at, record, payload, fmt.decode))
                    index = at + 1
                last_frame = now
                if now - beaten >= WAIT_SECONDS:  # alive while frames keep coming
                    self.hooks.beat(self.stream)
                    beaten = now
            raised = False
        finally:
            replay.close()
            self._close_publisher(raised)
        fmt.abort()

    def _close_publisher(self, raised: bool) -> None:
        """Publish what the format completed, stop the publisher; its error is raised
        unless the writing itself already raised one."""
        publisher, self.publisher = self.publisher, None
        if publisher is None:
            return
        err = publisher.close(drain=True)
        if err is not None:
            if raised:
                log.warning("stream %s: publishing failed too: %s", self.stream, err)
            else:
                raise err

    def _frame(self, index: int, record: proto.Record, payload: memoryview, decode: bool) -> Frame:
        if decode or record.payload not in (proto.Payload.BYTES, proto.Payload.ARRAY):
            return frame_from_record(self.stream, index, record, payload, decode=decode)
        frame = frame_from_record(self.stream, index, record, None)
        # the payload as stored, a view of the received message (bytes-like), not a copy
        return dataclasses.replace(frame, data=payload)  # type: ignore[arg-type]

    def _add(self, fmt: Format, frame: Frame) -> None:
        fmt.add(frame)
        self.read_index = frame.index
