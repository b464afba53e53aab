"""Consumer (requests to the receiver's api) and Subscriber (live frames from its PUB)."""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import msgspec
import zmq

from hidra_ng import protocol as proto
from hidra_ng.errors import REMOTE_ERRORS, HidraError, ProtocolError, ReceiverUnavailable
from hidra_ng.frames import Frame, frame_from_record

log = logging.getLogger(__name__)

_record_decoder = msgspec.msgpack.Decoder(proto.Record)
_ref_decoder = msgspec.msgpack.Decoder(proto.FrameRef)


def decode_frame(
    ref_body: bytes | memoryview, payload: bytes | memoryview, *, decode: bool = True
) -> Frame:
    ref = _ref_decoder.decode(ref_body)
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
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Subscriber:
    """Live frames of some streams from the receiver's PUB socket (SPEC §4)."""

    def __init__(
        self,
        publish: str = "tcp://localhost:50102",
        streams: Iterable[str] = (),
        *,
        rcvhwm: int = 8,
    ) -> None:
        self.publish = publish
        self.streams = [proto.check_stream_name(s) for s in streams]
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.SUB)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.RCVHWM, rcvhwm)
        for stream in self.streams or [""]:
            # the NUL ends the topic, so "p11/a" does not also match "p11/ab"
            self._sock.setsockopt(zmq.SUBSCRIBE, stream.encode() + b"\0" if stream else b"")
        self._sock.connect(publish)

    def receive(self, timeout: float | None = None) -> Frame | None:
        """The next live frame, or None when none came within ``timeout`` seconds."""
        if not self._sock.poll(None if timeout is None else timeout * 1000):
            return None
        frames = self._sock.recv_multipart(copy=False)
        if len(frames) != 3:
            raise ProtocolError(f"published message has {len(frames)} frames; expected 3")
        proto.peek_kind(frames[1].buffer)
        return decode_frame(frames[1].buffer[proto.PREAMBLE_SIZE :], frames[2].buffer)

    def __iter__(self) -> Iterator[Frame]:
        while True:
            frame = self.receive()
            if frame is not None:
                yield frame

    def close(self) -> None:
        self._sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
