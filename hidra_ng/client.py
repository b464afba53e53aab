"""Consumer (requests to the receiver's api) and Subscriber (live frames from its PUB)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import zmq

from hidra_ng import protocol as proto
from hidra_ng.errors import (
    REMOTE_ERRORS,
    HidraError,
    NotYetAvailable,
    ProtocolError,
    ReceiverUnavailable,
)
from hidra_ng.frames import Frame, frame_from_record

log = logging.getLogger(__name__)

_record_decoder = msgspec.msgpack.Decoder(proto.Record)
_ref_decoder = msgspec.msgpack.Decoder(proto.FrameRef)
_replay_decoder = msgspec.msgpack.Decoder(proto.FrameRef | str)


def decode_frame(
    ref_body: bytes | memoryview | proto.FrameRef,
    payload: bytes | memoryview,
    *,
    decode: bool = True,
) -> Frame:
    ref = ref_body if isinstance(ref_body, proto.FrameRef) else _ref_decoder.decode(ref_body)
    record = _record_decoder.decode(ref.record)
    return frame_from_record(ref.stream, ref.index, record, payload, decode=decode)


class Consumer:
    """Read stored frames from a receiver (SPEC §4). Not thread-safe: one per thread."""

    def __init__(
        self, api: str = "tcp://localhost:50101", *, request_timeout: float = 10.0
    ) -> None:
        self.api = api
        self.request_timeout = request_timeout
        self._ids = itertools.count(1)
        self._replays: weakref.WeakSet[_Replay] = weakref.WeakSet()
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(api)

    # ------------------------------------------------------------------- api

    def ping(self, timeout: float | None = None) -> None:
        """Raise ReceiverUnavailable unless the receiver answers within ``timeout``."""
        self._call("ping", answer_within=timeout)

    def streams(self) -> list[proto.StreamInfo]:
        body, _ = self._call("streams")
        return msgspec.msgpack.decode(body, type=list[proto.StreamInfo])

    def info(self, stream: str) -> proto.StreamInfo:
        body, _ = self._call("info", stream=proto.check_stream_name(stream))
        return msgspec.msgpack.decode(body, type=proto.StreamInfo)

    def last(self, stream: str, timeout: float = 0.0) -> Frame:
        """The newest frame of ``stream``; waits up to ``timeout`` for a first one."""
        body, payload = self._call("last", stream=proto.check_stream_name(stream), timeout=timeout)
        return decode_frame(body, payload)

    def get(self, stream: str, index: int, timeout: float = 5.0, *, decode: bool = True) -> Frame:
        """Frame ``index`` of ``stream``; waits up to ``timeout`` for a future index.

        ``decode=False`` returns the payload as stored: ``data`` holds the compressed
        bytes, ``compression`` names the codec, ``dtype``/``shape`` describe the array.
        """
        if not isinstance(index, int) or isinstance(index, bool):
            raise TypeError(f"index {index!r} is not an int")
        body, payload = self._call(
            "get", stream=proto.check_stream_name(stream), index=index, timeout=timeout
        )
        return decode_frame(body, payload, decode=decode)

    def replay(
        self,
        stream: str,
        start: int = 0,
        stop: int | None = None,
        follow: bool = False,
        *,
        window_frames: int = 256,
        window_bytes: int = 64 << 20,
        decode: bool = True,
    ) -> Iterator[Frame]:
        """Stored frames of ``stream`` in index order, from ``start`` to ``stop`` (exclusive).

        Flow-controlled: the receiver never has more than ``window_frames`` frames
        or ``window_bytes`` bytes (plus one frame) in flight to this consumer.
        ``follow=False`` ends at the last index stored when the replay gets there;
        ``follow=True`` goes on with frames committed later and ends once a finished
        stream is read to its end. A removed index raises ``Gone``.
        """
        proto.check_stream_name(stream)
        if start < 0 or (stop is not None and stop < start):
            raise ValueError(f"replay range start={start} stop={stop} is not valid")
        if window_frames <= 0 or window_bytes <= 0:
            raise ValueError("window_frames and window_bytes must be positive")
        return _Replay(self, stream, start, stop, follow, window_frames, window_bytes, decode)

    # -------------------------------------------------------------- plumbing

    def _call(
        self, op: str, *, answer_within: float | None = None, **fields: Any
    ) -> tuple[memoryview, memoryview]:
        req = proto.Request(next(self._ids), op, **fields)
        self._sock.send(proto.encode(proto.Kind.REQUEST, req))
        within = self.request_timeout if answer_within is None else answer_within
        deadline = time.monotonic() + req.timeout + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(left * 1000):
                raise ReceiverUnavailable(
                    f"receiver at {self.api} did not answer {op!r} within"
                    f" {req.timeout + within:.1f} s"
                )
            frames = self._sock.recv_multipart(copy=False)
            reply = proto.decode(proto.Kind.REPLY, proto.Reply, frames[0].buffer)
            if reply.id != req.id:
                continue  # the late answer to a request that timed out
            if reply.error:
                raise REMOTE_ERRORS.get(reply.error, HidraError)(reply.message)
            payload = frames[1].buffer if len(frames) > 1 else memoryview(b"")
            return memoryview(reply.body), payload

    def close(self) -> None:
        for replay in list(self._replays):
            replay.close()
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _Replay:
    """A replay iterator with its own DEALER, so other requests do not mix in."""

    def __init__(self, consumer, stream, start, stop, follow, window_frames, window_bytes, decode):
        self.consumer = consumer
        self.stream = stream
        self.next = start
        self.stop = stop
        self.follow = follow
        self.window = (window_frames, window_bytes)
        self.decode = decode
        self._sock = consumer._ctx.socket(zmq.DEALER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.connect(consumer.api)
        consumer._replays.add(self)
        self._id = 0
        self._owed = [0, 0]  # frames and bytes read since the last credit
        self._resumed = False
        self._done = False
        self._request()

    def _request(self) -> None:
        self._id = next(self.consumer._ids)
        self._owed = [0, 0]
        req = proto.Request(
            self._id,
            "replay",
            stream=self.stream,
            index=self.next,
            stop=-1 if self.stop is None else self.stop,
            follow=self.follow,
            credit_frames=self.window[0],
            credit_bytes=self.window[1],
        )
        self._sock.send(proto.encode(proto.Kind.REQUEST, req))

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> Frame:
        if self._done:
            raise StopIteration
        # a waiting follow replay hears "idle" every few seconds; silence is a failure
        silence = self.consumer.request_timeout + (api_idle_seconds() if self.follow else 0)
        while True:
            if not self._sock.poll(silence * 1000):
                if not self._resumed:
                    self._resumed = True  # e.g. a receiver restart: ask again from here
                    log.info("replay of %s silent; asking again from %d", self.stream, self.next)
                    self._request()
                    continue
                self.close()
                raise ReceiverUnavailable(
                    f"receiver at {self.consumer.api} sent nothing for {silence:.0f} s while"
                    f" replaying {self.stream!r} at index {self.next}"
                )
            frames = self._sock.recv_multipart(copy=False)
            reply = proto.decode(proto.Kind.REPLY, proto.Reply, frames[0].buffer)
            if reply.id != self._id:
                continue
            if reply.error:
                self.close()
                raise REMOTE_ERRORS.get(reply.error, HidraError)(reply.message)
            try:
                body = _replay_decoder.decode(reply.body)
            except msgspec.DecodeError as err:
                raise ProtocolError(f"malformed replay message: {err}") from err
            if isinstance(body, str):
                if body == proto.REPLAY_END:
                    self.close()
                    raise StopIteration
                continue  # idle: the receiver is alive and waiting for frames
            payload = frames[1].buffer if len(frames) > 1 else memoryview(b"")
            frame = decode_frame(body, payload, decode=self.decode)
            self.next = frame.index + 1
            self._resumed = False
            self._credit(len(payload))
            return frame

    def _credit(self, nbytes: int) -> None:
        """Give back what was read, in chunks of half a window (fewer messages)."""
        self._owed[0] += 1
        self._owed[1] += nbytes
        if self._owed[0] >= self.window[0] // 2 or self._owed[1] >= self.window[1] // 2:
            req = proto.Request(
                self._id, "credit", credit_frames=self._owed[0], credit_bytes=self._owed[1]
            )
            self._sock.send(proto.encode(proto.Kind.REQUEST, req))
            self._owed = [0, 0]

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(zmq.ZMQError):
            cancel = proto.Request(self._id, "cancel")
            self._sock.send(proto.encode(proto.Kind.REQUEST, cancel), zmq.NOBLOCK)
        self._sock.close(linger=100)
        self.consumer._replays.discard(self)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def api_idle_seconds() -> float:
    from hidra_ng.api import IDLE_SECONDS

    return 3 * IDLE_SECONDS


class Subscriber:
    """Live frames of some streams from the receiver's PUB socket (SPEC §4, G6).

    Iteration yields frames as they are committed; when the reader is slow the
    receiver drops frames for it rather than slowing ingest, and ``skipped``
    counts what was missed (from the gaps in the indices). ``latest()`` returns
    the newest frame, right after joining too: it takes a snapshot from the
    receiver's api (``api``, by default the publish host at port 50101) and
    merges it with the live feed, dropping anything older than what it has.
    """

    def __init__(
        self,
        publish: str = "tcp://localhost:50102",
        streams: Iterable[str] = (),
        *,
        api: str | None = None,
        rcvhwm: int = 8,
    ) -> None:
        self.publish = publish
        self.streams = [proto.check_stream_name(s) for s in streams]
        self.api = api or _default_api(publish)
        self.skipped = 0
        self._reported = 0
        self._last_report = time.monotonic()
        self._seen: dict[str, int] = {}  # stream -> newest index yielded or snapshotted
        self._newest: dict[str, Frame] = {}
        self._snapshotted = False
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for stream in self.streams or [""]:
            # the NUL ends the topic, so "p11/a" does not also match "p11/ab"
            self._sock.setsockopt(zmq.SUBSCRIBE, stream.encode() + b"\0" if stream else b"")
        self._sock.connect(publish)
        self._consumer: Consumer | None = None

    # ------------------------------------------------------------- live feed

    def _recv(self, timeout: float | None) -> Frame | None:
        if not self._sock.poll(None if timeout is None else max(0.0, timeout) * 1000):
            return None
        frames = self._sock.recv_multipart(copy=False)
        if len(frames) != 3:
            raise ProtocolError(f"published message has {len(frames)} frames; expected 3")
        proto.peek_kind(frames[1].buffer)
        return decode_frame(frames[1].buffer[proto.PREAMBLE_SIZE :], frames[2].buffer)

    def _accept(self, frame: Frame) -> bool:
        """Track order per stream; False for a frame older than one already seen."""
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
            left = None if deadline is None else deadline - time.monotonic()
            frame = self._recv(left)
            if frame is None:
                return None
            if self._accept(frame):
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
                raise ValueError("latest() needs stream= when subscribed to several streams")
            stream = self.streams[0]
        if not self._snapshotted:
            self._snapshotted = True
            self._snapshot()
        while (frame := self._recv(0)) is not None:  # drain: keep only what is newer
            self._accept(frame)
        newest = self._newest.get(stream)
        if newest is not None:
            return newest
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            frame = self._recv(left)
            if frame is not None and self._accept(frame) and frame.stream == stream:
                return frame
        raise NotYetAvailable(f"no frame of stream {stream!r} within {timeout} s")

    def _snapshot(self) -> None:
        try:
            self._consumer = self._consumer or Consumer(self.api, request_timeout=2.0)
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

    def _report_skipped(self) -> None:
        """Tell the receiver (its skipped metric) at most once a second, fire and forget."""
        now = time.monotonic()
        if self.skipped == self._reported or now - self._last_report < 1.0:
            return
        self._last_report = now
        with contextlib.suppress(zmq.ZMQError, HidraError):
            self._consumer = self._consumer or Consumer(self.api, request_timeout=2.0)
            req = proto.Request(0, "skipped", count=self.skipped - self._reported)
            self._consumer._sock.send(proto.encode(proto.Kind.REQUEST, req), zmq.NOBLOCK)
            self._reported = self.skipped

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _default_api(publish: str) -> str:
    """The api endpoint beside a publish endpoint: same host, the default api port."""
    host = publish.rsplit(":", 1)[0].replace("*", "localhost").replace("0.0.0.0", "localhost")
    return f"{host}:50101"
