"""Subscriber: live frames from the receiver's PUB socket, newest first when behind (G6).

ZeroMQ drops the *newest* messages when a queue is full, which would leave a
slow viewer looking at stale frames. So a feed thread drains the SUB socket
all the time into a small buffer that drops the *oldest* frames instead: the
receiver never queues for a slow reader, the reader always gets the newest
frames, and ``skipped`` counts exactly what it missed (gaps in the indices).
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator

import zmq

from hidra_ng.client.consumer import Consumer, decode_frame
from hidra_ng.errors import (
    ConfigError,
    HidraError,
    InvalidArgument,
    NotYetAvailable,
    ProtocolError,
    ReceiverUnavailable,
)
from hidra_ng.security import ClientKeys
from hidra_ng.shards import ShardMap, load_shard_map
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import Frame

log = logging.getLogger(__name__)


class Subscriber:
    """Live frames of some streams (SPEC §4).

    Iteration yields frames as they are committed; a reader slower than the
    stream skips the oldest buffered frames (at most ``buffer_frames`` are kept,
    so memory stays bounded) and ``skipped`` counts them. ``latest()`` returns
    the newest frame, right after joining too: a snapshot from the receiver's
    api (``api``; by default the publish host at port 50101) merged with the live
    feed, anything older than what was already seen dropped.

    ``shards=PATH`` (SPEC §14): the live frames of the receivers that hold
    ``streams`` (all receivers when no streams are given), one SUB socket
    connected to each of their publish endpoints; ``latest()`` asks the
    stream's own receiver.
    """

    def __init__(
        self,
        publish: str = "tcp://localhost:50102",
        streams: Iterable[str] = (),
        *,
        api: str | None = None,
        buffer_frames: int = 16,
        keys_dir: str | None = None,
        server_key_dir: str | None = None,
        shards: str | os.PathLike[str] | ShardMap | None = None,
    ) -> None:
        if buffer_frames < 1:
            raise InvalidArgument(f"buffer_frames {buffer_frames} is not valid; expected 1 or more")
        self.streams = [proto.check_stream_name(s) for s in streams]
        self._shards = None if shards is None else load_shard_map(shards)
        endpoints = [publish]
        if self._shards is not None:
            held = [self._shards.place(s) for s in self.streams] or self._shards.shards
            endpoints = list(dict.fromkeys(shard.publish for shard in held))
            api = api or ", ".join(shard.api for shard in held)
        self.publish = ", ".join(endpoints)
        self.api = api or _default_api(publish)
        self.skipped = 0
        self._reported = 0
        self._last_report = 0.0
        self._seen: dict[str, int] = {}  # stream -> newest index handed out or snapshotted
        self._newest: dict[str, Frame] = {}
        self._snapshotted = False
        self._consumer: Consumer | None = None
        self._keys = {"keys_dir": keys_dir, "server_key_dir": server_key_dir}
        self._feed = _Feed(endpoints, self.streams, buffer_frames, ClientKeys.load(**self._keys))
        self._feed.start()

    # ------------------------------------------------------------- live feed

    def _decode(self, parts: tuple[zmq.Frame, zmq.Frame]) -> Frame | None:
        ref, payload = parts
        try:
            proto.peek_kind(ref.buffer)
            return decode_frame(ref.buffer[proto.PREAMBLE_SIZE :], payload.buffer)
        except HidraError as err:
            log.warning("malformed published message ignored: %s", err)
            return None

    def _accept(self, frame: Frame) -> bool:
        """Track order per stream; False for a frame not newer than one already seen."""
        seen = self._seen.get(frame.stream)
        if seen is not None:
            if frame.index <= seen:
                return False
            self.skipped += frame.index - seen - 1
        self._seen[frame.stream] = frame.index
        self._newest[frame.stream] = frame
        self._report_skipped()
        return True

    def receive(self, timeout: float | None = None) -> Frame | None:
        """The next live frame, or None when none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            parts = self._feed.take(left)
            if parts is None:
                return None
            frame = self._decode(parts)
            if frame is not None and self._accept(frame):
                return frame

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.receive()
            if frame is not None:
                yield frame

    # ------------------------------------------------------------ the newest

    def latest(self, timeout: float = 1.0, stream: str | None = None) -> Frame:
        """The newest committed frame of ``stream`` (default: the one subscribed to)."""
        if stream is None:
            if len(self.streams) != 1:
                raise InvalidArgument("latest() needs stream= when subscribed to several streams")
            stream = self.streams[0]
        if not self._snapshotted:
            self._snapshotted = True
            self._snapshot()
        for parts in self._feed.take_all():
            frame = self._decode(parts)
            if frame is not None:
                self._accept(frame)
        newest = self._newest.get(stream)
        if newest is not None:
            return newest
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = self.receive(left)
            if frame is not None and frame.stream == stream:
                return frame
        raise NotYetAvailable(f"no frame of stream {stream!r} within {timeout} s")

    def _reader(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                self.api, request_timeout=2.0, shards=self._shards, **self._keys
            )
        return self._consumer

    def _snapshot(self) -> None:
        try:
            self._consumer = self._reader()
            for stream in self.streams:
                try:
                    frame = self._consumer.last(stream)
                except NotYetAvailable:
                    continue
                if frame.index > self._seen.get(stream, -1):
                    self._seen[stream] = frame.index
                    self._newest[stream] = frame
        except ReceiverUnavailable as err:
            log.warning("no snapshot from %s (%s); waiting for live frames", self.api, err)

    def _report_skipped(self, final: bool = False) -> None:
        """Tell the receiver (its skipped metric) at most once a second, fire and forget."""
        now = time.monotonic()
        if self.skipped == self._reported or (now - self._last_report < 1.0 and not final):
            return
        self._last_report = now
        with contextlib.suppress(zmq.ZMQError, HidraError):
            self._consumer = self._reader()
            req = proto.SkippedRequest(id=0, count=self.skipped - self._reported)
            self._consumer._sock.send(proto.encode(proto.Kind.REQUEST, req), zmq.NOBLOCK)
            if final:  # give the report a moment to leave before the socket closes
                self._consumer._sock.setsockopt(zmq.LINGER, 500)
            self._reported = self.skipped

    def close(self) -> None:
        self._feed.stop()
        self._report_skipped(final=True)
        if self._consumer is not None:
            self._consumer.close()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Feed(threading.Thread):
    """Owns the SUB socket: drains it into a buffer that drops its oldest entries."""

    def __init__(
        self, publish: list[str], streams: list[str], buffer_frames: int, keys: ClientKeys | None
    ) -> None:
        super().__init__(name="hidra-ng-subscriber", daemon=True)
        self._buffer: collections.deque[tuple[zmq.Frame, zmq.Frame]] = collections.deque()
        self._limit = buffer_frames
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        if keys is not None:
            keys.apply(self._sock)
        for stream in streams or [""]:
            # the NUL ends the topic, so "p11/a" does not also match "p11/ab"
            self._sock.setsockopt(zmq.SUBSCRIBE, stream.encode() + b"\0" if stream else b"")
        try:
            for endpoint in publish:  # one receiver, or each receiver of a shard map
                self._sock.connect(endpoint)
        except zmq.ZMQError as err:
            self._sock.close(linger=0)
            self._ctx.term()
            raise ConfigError(
                f"cannot connect to the publish endpoint {endpoint!r}: {err}"
            ) from err

    def run(self) -> None:
        try:
            while not self._stopping.is_set():
                if not self._sock.poll(100):
                    continue
                for _ in range(256):
                    try:
                        parts = self._sock.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    if len(parts) != 3:
                        log.warning("published message of %d frames ignored", len(parts))
                        continue
                    with self._cond:
                        self._buffer.append((parts[1], parts[2]))
                        while len(self._buffer) > self._limit:
                            self._buffer.popleft()  # the reader is behind: oldest goes
                        self._cond.notify()
        except ProtocolError:
            log.exception("subscriber feed failed")
        finally:
            self._sock.close(linger=0)
            self._ctx.term()

    def take(self, timeout: float | None) -> tuple[zmq.Frame, zmq.Frame] | None:
        with self._cond:
            if not self._cond.wait_for(lambda: self._buffer, timeout):
                return None
            return self._buffer.popleft()

    def take_all(self) -> list[tuple[zmq.Frame, zmq.Frame]]:
        with self._cond:
            items = list(self._buffer)
            self._buffer.clear()
            return items

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _default_api(publish: str) -> str:
    """The api endpoint beside a publish endpoint: same host, the default api port."""
    host = publish.rsplit(":", 1)[0].replace("*", "localhost").replace("0.0.0.0", "localhost")
    return f"{host}:50101"
