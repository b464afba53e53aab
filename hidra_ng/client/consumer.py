"""Consumer: requests to the receiver's api (get, last, info, streams, replay)."""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import time
import weakref
from collections import deque
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

import msgspec
import zmq

from hidra_ng.client.queries import QueryPage, check_page_bounds, page_of, query_pages
from hidra_ng.errors import (
    REMOTE_ERRORS,
    ConfigError,
    HidraError,
    InvalidArgument,
    InvalidArgumentType,
    ProtocolError,
    ReceiverUnavailable,
)
from hidra_ng.security import ClientKeys
from hidra_ng.shards import ShardMap
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import Frame, frame_from_record

if TYPE_CHECKING:
    from hidra_ng.client.worker import GroupWorker

log = logging.getLogger(__name__)

_record_decoder = msgspec.msgpack.Decoder(proto.Record)
_ref_decoder = msgspec.msgpack.Decoder(proto.FrameRef)
_replay_decoder = msgspec.msgpack.Decoder(proto.FrameRef | proto.ReplayEvent)
_replay_batch_decoder = msgspec.msgpack.Decoder(proto.FrameBatch | proto.ReplayEvent)
_batch_decoder = msgspec.msgpack.Decoder(proto.FrameBatch)


class _RecordRef(msgspec.Struct, array_like=True, frozen=True):
    """A FrameRef decoded with its record (a replay read with ``next_records``)."""

    stream: str
    index: int
    record: proto.Record
    group: str = ""
    deliveries: int = 0


class _RecordBatch(msgspec.Struct, array_like=True, frozen=True):
    frames: list[_RecordRef]
    sizes: list[int]


_replay_records_decoder = msgspec.msgpack.Decoder(_RecordBatch | proto.ReplayEvent)


def decode_frame(
    ref_body: bytes | memoryview | proto.FrameRef,
    payload: bytes | memoryview,
    *,
    decode: bool = True,
) -> Frame:
    ref = ref_body if isinstance(ref_body, proto.FrameRef) else _ref_decoder.decode(ref_body)
    record = _record_decoder.decode(ref.record)
    return frame_from_record(
        ref.stream,
        ref.index,
        record,
        payload,
        decode=decode,
        group=ref.group,
        deliveries=ref.deliveries,
    )


class Consumer:
    """Read stored frames from a receiver (SPEC §4). Not thread-safe: one per thread.

    ``shards=PATH`` (SPEC §14) reads from every receiver of a shard map instead:
    each request goes to the receiver that holds its stream (client/sharded.py).
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Consumer:
        if cls is Consumer and kwargs.get("shards"):
            from hidra_ng.client.sharded import ShardedConsumer

            return super().__new__(ShardedConsumer)
        return super().__new__(cls)

    def __init__(
        self,
        api: str = "tcp://localhost:50101",
        *,
        request_timeout: float = 10.0,
        keys_dir: str | None = None,
        server_key_dir: str | None = None,
        shards: str | os.PathLike[str] | ShardMap | None = None,
    ) -> None:
        self.api = api
        self.request_timeout = request_timeout
        self._keys = ClientKeys.load(keys_dir, server_key_dir)
        self._ids = itertools.count(1)
        self._replays: weakref.WeakSet[_Replay] = weakref.WeakSet()
        self._ctx = zmq.Context()
        try:
            self._sock = _dealer(self._ctx, self.api, self._keys)
        except ConfigError:
            self._ctx.term()
            raise

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
            raise InvalidArgumentType(f"index {index!r} is not an int")
        body, payload = self._call(
            "get", stream=proto.check_stream_name(stream), index=index, timeout=timeout
        )
        return decode_frame(body, payload, decode=decode)

    # ------------------------------------------------------- consumer groups

    def next(
        self,
        stream: str,
        group: str,
        timeout: float = 5.0,
        *,
        ack_timeout: float | None = None,
        max_deliveries: int | None = None,
        decode: bool = True,
    ) -> Frame:
        """The next message of ``stream`` for ``group``: redeliveries first, then new ones.

        Each message goes to one member of the group at a time; ack it with
        :meth:`ack` within the group's ack timeout (receiver ``--ack-timeout``, or
        ``ack_timeout`` here, which sets it for the group) or it is handed out
        again; after ``max_deliveries`` it is parked (see :meth:`parked`).
        Raises ``StreamFinished`` once the stream is finished and every message
        is acknowledged in the group, ``NotYetAvailable`` after ``timeout``.
        """
        fields = _next_fields(stream, group, timeout, ack_timeout, max_deliveries)
        body, payload = self._call("next", **fields)
        return decode_frame(body, payload, decode=decode)

    def next_many(
        self,
        stream: str,
        group: str,
        max_count: int = 16,
        timeout: float = 5.0,
        *,
        ack: Iterable[Frame] = (),
        ack_timeout: float | None = None,
        max_deliveries: int | None = None,
        decode: bool = True,
    ) -> list[Frame]:
        """Like :meth:`next`, for up to ``max_count`` messages in one round trip.

        Returns at once with what the group can hand out now (redeliveries first,
        at most 64 MiB of payload), or waits up to ``timeout`` for at least one.
        Every frame returned is handed to this member: ack each (or all with
        :meth:`ack_many`) within the ack timeout. Fewer round trips and one
        commit per batch on the receiver make this several times faster than
        :meth:`next` for small messages.

        ``ack``: frames of this stream and group to acknowledge first, in the same
        round trip; a worker loops ``frames = c.next_many(s, g, ack=frames)``. The
        acks hold even when the call then raises ``NotYetAvailable`` or
        ``StreamFinished``; after ``ReceiverUnavailable`` ack them again (acks
        are idempotent).
        """
        if not isinstance(max_count, int) or not 1 <= max_count <= proto.MAX_BATCH:
            raise InvalidArgument(
                f"max_count {max_count!r} is not valid; expected 1 to {proto.MAX_BATCH}"
            )
        ack = list(ack)
        indices = _acked_indices(ack, stream, group)
        if len(indices) > proto.MAX_BATCH:
            self.ack_many(ack)  # too many for one request
            indices = []
        fields = _next_fields(stream, group, timeout, ack_timeout, max_deliveries)
        body, payloads = self._call_all(
            "next", max_count=max_count, indices=tuple(indices), **fields
        )
        return decode_batch(body, payloads, decode=decode)

    def worker(self, stream: str, group: str, **options: Any) -> GroupWorker:
        """A member of ``group`` with batches in flight: see client/worker.GroupWorker."""
        from hidra_ng.client.worker import GroupWorker

        return GroupWorker(self, stream, group, **options)

    def ack(self, frame: Frame) -> None:
        """Acknowledge a frame from :meth:`next`: its group will not hand it out again."""
        self._call("ack", **_group_fields(frame))

    def ack_many(self, frames: Iterable[Frame]) -> None:
        """Acknowledge frames from :meth:`next` or :meth:`next_many`, one request per group."""
        batches: dict[tuple[str, str], list[int]] = {}
        for frame in frames:
            fields = _group_fields(frame)
            batches.setdefault((fields["stream"], fields["group"]), []).append(frame.index)
        for (stream, group), indices in batches.items():
            for start in range(0, len(indices), proto.MAX_BATCH):
                chunk = tuple(indices[start : start + proto.MAX_BATCH])
                self._call("ack", stream=stream, group=group, indices=chunk)

    def nack(self, frame: Frame, delay: float = 0.0) -> None:
        """Give a frame from :meth:`next` back to its group, to be handed out after ``delay``."""
        self._call("nack", delay=delay, **_group_fields(frame))

    def parked(self, stream: str, group: str) -> list[int]:
        """Indices that ``group`` delivered ``max_deliveries`` times without an ack."""
        body, _ = self._call("parked", stream=proto.check_stream_name(stream), group=group)
        return msgspec.msgpack.decode(body, type=list[int])

    def query(
        self, stream: str, expr: str, *, limit: int = 0, start: int = 0, scan_limit: int = 0
    ) -> list[Frame]:
        """Metadata-only frames (data None) of ``stream`` matching ``expr``, in index order.

        The filter language is described in hidra_ng/receiver/query.py and the README. At
        most ``limit`` results (default 10,000), from index ``start`` on. The receiver
        answers a query in pages of at most ``scan_limit`` records examined (default
        100,000); this asks page after page until it has ``limit`` matches or has
        examined the last record stored. :meth:`iter_query` yields them as they come.
        """
        want = limit or proto.DEFAULT_QUERY_LIMIT
        return list(
            itertools.islice(
                self.iter_query(stream, expr, limit=want, start=start, scan_limit=scan_limit),
                want,
            )
        )

    def iter_query(
        self, stream: str, expr: str, *, limit: int = 0, start: int = 0, scan_limit: int = 0
    ) -> Iterator[Frame]:
        """The matches of :meth:`query`, page by page: at most ``limit`` in all, 0 for no
        limit (it goes on to the last record stored when the last page began)."""
        return query_pages(self.query_page, stream, expr, limit, start, scan_limit)

    def query_page(
        self, stream: str, expr: str, *, start: int = 0, limit: int = 0, scan_limit: int = 0
    ) -> QueryPage:
        """One request of a query: the matches among at most ``scan_limit`` records from
        ``start`` (at most ``limit`` of them), and where to go on (:class:`QueryPage`)."""
        check_page_bounds(start=start, limit=limit, scan_limit=scan_limit)
        body, _ = self._call(
            "query",
            stream=proto.check_stream_name(stream),
            expr=expr,
            start=start,
            limit=limit,
            scan_limit=scan_limit,
        )
        return page_of(body)

    # --------------------------------------------------------------- replay

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
    ) -> _Replay:
        """Stored frames of ``stream`` in index order, from ``start`` to ``stop`` (exclusive).

        Flow-controlled: the receiver never has more than ``window_frames`` frames
        or ``window_bytes`` bytes (plus one frame) in flight to this consumer.
        ``follow=False`` ends at the last index stored when the replay gets there;
        ``follow=True`` goes on with frames committed later and ends once a finished
        stream is read to its end. A removed index raises ``Gone``.
        """
        proto.check_stream_name(stream)
        check_replay_range(start, stop, window_frames, window_bytes)
        return _Replay(self, stream, start, stop, follow, window_frames, window_bytes, decode)

    def replay_merged(
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
        """A series split into ``STREAM/part-K`` (SPEC §14) as one sequence in image order.

        ``start``/``stop`` are image numbers (the ``i`` of ``hidra_split``); each part
        is replayed with its share of the flow-control window; ``follow=True`` ends
        once the series is finished (every part finished and read to its end).
        client/merged.py describes how.
        """
        from hidra_ng.client.merged import replay_merged

        return replay_merged(self, stream, start, stop, follow, window_frames, window_bytes, decode)

    # -------------------------------------------------------------- plumbing

    def _call(
        self, op: str, *, answer_within: float | None = None, **fields: Any
    ) -> tuple[memoryview, memoryview]:
        """(body, payload) of the reply: a request answered by at most one frame."""
        body, payloads = self._call_all(op, answer_within=answer_within, **fields)
        return body, payloads[0] if payloads else memoryview(b"")

    def _call_all(
        self, op: str, *, answer_within: float | None = None, **fields: Any
    ) -> tuple[memoryview, list[memoryview]]:
        """(body, payloads) of the reply to one request; waits its timeout + answer_within."""
        req = proto.make_request(next(self._ids), op, **fields)
        try:
            self._sock.send(proto.encode(proto.Kind.REQUEST, req))
        except zmq.ZMQError as err:
            raise ReceiverUnavailable(f"cannot send {op!r} to {self.api}: {err}") from err
        within = self.request_timeout if answer_within is None else answer_within
        waits: float = getattr(req, "timeout", 0.0)
        deadline = time.monotonic() + waits + within
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sock.poll(left * 1000):  # type: ignore[arg-type]
                raise ReceiverUnavailable(
                    f"receiver at {self.api} did not answer {op!r} within {waits + within:.1f} s"
                )
            answer = _read_reply(self._sock, req.id)
            if answer is not None:
                return answer

    def close(self) -> None:
        for replay in list(self._replays):
            replay.close()
        self._sock.close()  # with its LINGER option: 0 unless a last message must leave
        self._ctx.term()

    def __enter__(self) -> Consumer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _dealer(ctx: zmq.Context, api: str, keys: ClientKeys | None) -> zmq.Socket:
    """A DEALER to the api, with CurveZMQ when keys are configured."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        keys.apply(sock)
    try:
        sock.connect(api)
    except zmq.ZMQError as err:
        sock.close(linger=0)
        raise ConfigError(f"cannot connect to the receiver api {api!r}: {err}") from err
    return sock


def _read_reply(sock: zmq.Socket, request_id: int) -> tuple[memoryview, list[memoryview]] | None:
    """(body, payloads) of the reply to ``request_id``; None for a stray (late) reply.

    A reply carrying an error raises it as the class the receiver named.
    """
    frames = sock.recv_multipart(copy=False)
    reply = proto.decode(proto.Kind.REPLY, proto.Reply, frames[0].buffer)
    if reply.id != request_id:
        return None  # the late answer to a request that timed out
    return answer_of(reply, frames)


def answer_of(reply: proto.Reply, frames: list) -> tuple[memoryview, list[memoryview]]:
    """(body, payloads) of ``reply``; an error reply raises the class the receiver named."""
    if reply.error:
        raise REMOTE_ERRORS.get(reply.error, HidraError)(reply.message)
    return memoryview(reply.body), [f.buffer for f in frames[1:]]


def decode_batch(body: memoryview, payloads: list[memoryview], *, decode: bool) -> list[Frame]:
    """The frames of a ``next`` reply that carries a FrameBatch."""
    batch = _batch_decoder.decode(body)
    joined = payloads[0] if payloads else memoryview(b"")
    views = proto.cut_payloads(joined, batch.sizes, len(batch.frames), "next reply")
    return [
        decode_frame(ref, view, decode=decode)
        for ref, view in zip(batch.frames, views, strict=True)
    ]


def _next_fields(
    stream: str, group: str, timeout: float, ack_timeout: float | None, max_deliveries: int | None
) -> dict:
    """Request fields every next takes (0 for the receiver's defaults)."""
    return {
        "stream": proto.check_stream_name(stream),
        "group": group,
        "timeout": timeout,
        "ack_timeout": ack_timeout or 0.0,
        "max_deliveries": max_deliveries or 0,
    }


def _acked_indices(ack: list[Frame], stream: str, group: str) -> list[int]:
    """The indices of frames acked with a next of ``stream`` and ``group``."""
    indices = []
    for frame in ack:
        fields = _group_fields(frame)
        if (fields["stream"], fields["group"]) != (stream, group):
            raise InvalidArgument(
                f"frame {frame.stream!r} #{frame.index} of group {frame.group!r} cannot be"
                f" acked with a next of group {group!r} of stream {stream!r}; use ack_many"
            )
        indices.append(frame.index)
    return indices


def check_replay_range(
    start: int, stop: int | None, window_frames: int, window_bytes: int, what: str = "replay"
) -> None:
    """A replay's range and window, or InvalidArgument naming the bad values."""
    if start < 0 or (stop is not None and stop < start):
        raise InvalidArgument(f"{what} range start={start} stop={stop} is not valid")
    if window_frames <= 0 or window_bytes <= 0:
        raise InvalidArgument(
            f"window_frames={window_frames} and window_bytes={window_bytes} are not valid;"
            " expected both positive"
        )


def _group_fields(frame: Frame) -> dict:
    if not frame.group:
        raise InvalidArgument(
            f"frame {frame.stream!r} #{frame.index} did not come from Consumer.next(); only"
            " those can be acked or nacked"
        )
    return {"stream": frame.stream, "group": frame.group, "index": frame.index}


class _Replay:
    """A replay iterator with its own DEALER, so other requests do not mix in.

    It asks for batched replies (several small frames per reply); frames of a
    batch wait in ``_ready`` and are credited back as they are taken.
    """

    def __init__(self, consumer, stream, start, stop, follow, window_frames, window_bytes, decode):
        self.consumer = consumer
        self.stream = stream
        self.next = start
        self.stop = stop
        self.follow = follow
        self.window = (window_frames, window_bytes)
        self.decode = decode
        self._sock = _dealer(consumer._ctx, consumer.api, consumer._keys)
        consumer._replays.add(self)
        self._id = 0
        self._owed = [0, 0]  # frames and bytes read since the last credit
        self._ready: deque[tuple[proto.FrameRef | _RecordRef, memoryview]] = deque()
        self._records = False  # next_records reads: records decoded with their batch
        self._heard = 0.0  # when the receiver last said something (or was asked)
        self._resumed = False
        self._done = False
        self._request()

    def _request(self) -> None:
        self._id = next(self.consumer._ids)
        self._owed = [0, 0]
        self._heard = time.monotonic()
        req = proto.ReplayRequest(
            id=self._id,
            stream=self.stream,
            index=self.next,
            stop=-1 if self.stop is None else self.stop,
            follow=self.follow,
            credit_frames=self.window[0],
            credit_bytes=self.window[1],
            batch=True,
        )
        self._sock.send(proto.encode(proto.Kind.REQUEST, req))

    def __iter__(self) -> _Replay:
        return self

    def __next__(self) -> Frame:
        while True:
            frame = self.next_frame(None)
            if frame is not None:
                return frame

    def next_frame(self, timeout: float | None) -> Frame | None:
        """The next frame, or None when none came within ``timeout`` seconds (None: wait).

        Raises StopIteration at the end of the replay, like ``next()``.
        """
        if self._ready or self._wait(timeout):
            return self._take()
        return None

    def _wait(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` (None: for ever) for frames; False if none came."""
        if self._ready:
            return True
        if self._done:
            raise StopIteration
        called = time.monotonic()
        deadline = None if timeout is None else called + timeout
        # a waiting follow replay hears "idle" every few seconds; silence is a failure
        silence = self.consumer.request_timeout + (api_idle_seconds() if self.follow else 0)
        while True:
            now = time.monotonic()
            quiet_until = max(self._heard, called) + silence
            wait = quiet_until - now if deadline is None else min(quiet_until, deadline) - now
            if wait > 0 and self._sock.poll(wait * 1000):
                self._heard = time.monotonic()
                if self._receive():
                    return True
                continue
            if deadline is not None and time.monotonic() >= deadline:
                return False
            if time.monotonic() < quiet_until:
                continue
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

    def buffered(self, max_count: int) -> list[Frame]:
        """Up to ``max_count`` frames already received, without waiting (maybe none)."""
        out: list[Frame] = []
        while self._ready and len(out) < max_count:
            out.append(self._take())
        return out

    def next_records(
        self, max_count: int, timeout: float | None = None
    ) -> list[tuple[int, proto.Record, memoryview]]:
        """The next frames as received: (index, Record, payload as stored), at least one
        (waiting like ``next()``; none if none came within ``timeout`` seconds), at most
        ``max_count``; StopIteration at the end.

        For a reader that forwards what is stored (the bridge, the writer): no Frame is
        made, the meta stays JSON text, the payload a view of the received message.
        """
        self._records = True
        if not self._ready and not self._wait(timeout):
            return []
        ready = self._ready
        taken = [ready.popleft() for _ in range(min(len(ready), max_count))]
        self.next = taken[-1][0].index + 1
        self._resumed = False
        self._credit(len(taken), sum(len(payload) for _, payload in taken))
        return [(ref.index, _record_of(ref), payload) for ref, payload in taken]

    def _receive(self) -> bool:
        """Read one reply; True if it brought frames. StopIteration at the end."""
        try:
            answer = _read_reply(self._sock, self._id)
        except HidraError:
            self.close()
            raise
        if answer is None:
            return False
        reply_body, payloads = answer
        joined = payloads[0] if payloads else memoryview(b"")
        decoder = _replay_records_decoder if self._records else _replay_batch_decoder
        try:
            body = decoder.decode(reply_body)
        except msgspec.DecodeError:
            try:  # a receiver that sends one FrameRef per reply
                body = _replay_decoder.decode(reply_body)
            except msgspec.DecodeError as err:
                raise ProtocolError(f"malformed replay message: {err}") from err
        if isinstance(body, proto.ReplayEvent):
            if body is proto.ReplayEvent.END:
                self.close()
                raise StopIteration
            return False  # idle: the receiver is alive and waiting for frames
        if isinstance(body, proto.FrameRef):
            self._ready.append((body, joined))
            return True
        views = proto.cut_payloads(joined, body.sizes, len(body.frames), "replay reply")
        self._ready.extend(zip(body.frames, views, strict=True))
        return True

    def _take(self) -> Frame:
        ref, payload = self._take_raw()
        if isinstance(ref, proto.FrameRef):
            return decode_frame(ref, payload, decode=self.decode)
        return frame_from_record(
            ref.stream,
            ref.index,
            ref.record,
            payload,
            decode=self.decode,
            group=ref.group,
            deliveries=ref.deliveries,
        )

    def _take_raw(self) -> tuple[proto.FrameRef | _RecordRef, memoryview]:
        ref, payload = self._ready.popleft()
        self.next = ref.index + 1
        self._resumed = False
        self._credit(1, len(payload))
        return ref, payload

    def _credit(self, frames: int, nbytes: int) -> None:
        """Give back what was read, in chunks of half a window (fewer messages)."""
        self._owed[0] += frames
        self._owed[1] += nbytes
        if self._owed[0] >= self.window[0] // 2 or self._owed[1] >= self.window[1] // 2:
            req = proto.CreditRequest(
                id=self._id, credit_frames=self._owed[0], credit_bytes=self._owed[1]
            )
            self._sock.send(proto.encode(proto.Kind.REQUEST, req))
            self._owed = [0, 0]

    def close(self) -> None:
        if self._done:
            return
        self._done = True
        with contextlib.suppress(zmq.ZMQError):
            cancel = proto.CancelRequest(id=self._id)
            self._sock.send(proto.encode(proto.Kind.REQUEST, cancel), zmq.NOBLOCK)
        self._sock.close(linger=100)
        self.consumer._replays.discard(self)

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()


def _record_of(ref: proto.FrameRef | _RecordRef) -> proto.Record:
    if isinstance(ref, _RecordRef):
        return ref.record
    return _record_decoder.decode(ref.record)


def api_idle_seconds() -> float:
    return 3 * proto.REPLAY_IDLE_SECONDS
