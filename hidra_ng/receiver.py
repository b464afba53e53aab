"""The receiver daemon: ingest -> store -> ack, publish, serve requests.

Two threads, each owning its sockets:

* ingest: PULL -> validate -> group commit (one LMDB transaction and one fsync
  for everything that arrived while the previous commit ran) -> PUB of each
  committed frame (never blocks: PUB drops for a slow subscriber) -> a notice
  to the api thread.
* api: ROUTER. Senders say HELLO and get cumulative ACKs and GAP (resend)
  requests once their messages are durable; consumers send requests. A ``get``
  of a future index waits here, without polling, until the index is committed
  or its timeout ends.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import msgspec
import zmq

from hidra_ng import protocol as proto
from hidra_ng.config import ReceiverConfig
from hidra_ng.errors import HidraError, InvalidInput, ProtocolError, StorageError
from hidra_ng.metrics import ReceiverMetrics, serve
from hidra_ng.store import AppendResult, Incoming, Store

log = logging.getLogger(__name__)

NOTICE_ENDPOINT = "inproc://hidra-ng-commits-{}"
_ids = itertools.count()


class Notice(msgspec.Struct, array_like=True):
    """Ingest -> api: what a commit made durable."""

    acks: list[tuple[str, int, int]]  # sender, incarnation, last seq
    gaps: list[tuple[str, int, int, int]]  # sender, incarnation, expected, epoch
    streams: list[str]  # streams with new messages or newly finished


@dataclass(order=True)
class _Waiter:
    deadline: float
    order: int
    ident: bytes
    request: proto.Request
    done: bool = False


class Receiver:
    """A receiver bound to its endpoints with its store open; ``start()`` runs it."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self.metrics = ReceiverMetrics()
        self.store = Store(Path(config.data_dir), map_bytes=config.initial_map_bytes)
        self._ctx = zmq.Context()
        self._stop_ingest = threading.Event()
        self._stop_api = threading.Event()
        self._threads: list[threading.Thread] = []
        self.metrics_server = None
        self.commits = 0  # group commits done, for status lines
        try:
            self._bind()
            self.metrics_server = serve(self.metrics.registry, config.metrics_port)
        except BaseException:
            self._close_sockets()
            self.store.close()
            raise
        for info in self.store.streams():
            if info.last is not None:
                self.metrics.last_index.labels(info.name).set(info.last)

    def _bind(self) -> None:
        c = self.config
        self.pull = self._socket(zmq.PULL, rcvhwm=1000, maxmsgsize=c.max_message_bytes)
        self.router = self._socket(zmq.ROUTER, maxmsgsize=1 << 20)
        self.pub = self._socket(zmq.PUB, sndhwm=c.publish_hwm)
        endpoint = NOTICE_ENDPOINT.format(next(_ids))
        self._notice_rx = self._socket(zmq.PAIR)
        self._notice_tx = self._socket(zmq.PAIR)
        self._notice_rx.bind(endpoint)
        self._notice_tx.connect(endpoint)
        for sock, ep, name in (
            (self.pull, c.ingest, "ingest"),
            (self.router, c.api, "api"),
            (self.pub, c.publish, "publish"),
        ):
            try:
                sock.bind(ep)
            except zmq.ZMQError as err:
                raise StorageError(f"cannot bind {name} endpoint {ep}: {err}") from err
        self.endpoints = {
            "ingest": self.pull.getsockopt_string(zmq.LAST_ENDPOINT),
            "api": self.router.getsockopt_string(zmq.LAST_ENDPOINT),
            "publish": self.pub.getsockopt_string(zmq.LAST_ENDPOINT),
        }

    def _socket(self, kind: int, **options: int) -> zmq.Socket:
        sock = self._ctx.socket(kind)
        sock.setsockopt(zmq.LINGER, 0)
        for name, value in options.items():
            sock.setsockopt(getattr(zmq, name.upper()), value)
        return sock

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        for target, name in ((self._ingest_loop, "ingest"), (self._api_loop, "api")):
            thread = threading.Thread(target=target, name=f"hidra-ng-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        """True while both threads run (the watchdog asks this)."""
        return bool(self._threads) and all(t.is_alive() for t in self._threads)

    def status(self) -> str:
        streams = self.store.streams()
        return (
            f"{len(streams)} streams, {sum(s.count for s in streams)} messages,"
            f" {self.commits} commits"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop input, finish the commit in flight, send its acks, close everything."""
        self._stop_ingest.set()
        if self._threads:
            self._threads[0].join(timeout)
        self._stop_api.set()
        for thread in self._threads[1:]:
            thread.join(timeout)
        self._close_sockets()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.store.close()

    def _close_sockets(self) -> None:
        for name in ("pull", "router", "pub", "_notice_rx", "_notice_tx"):
            sock = getattr(self, name, None)
            if sock is not None:
                sock.close(linger=0)
        self._ctx.term()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- ingest

    def _ingest_loop(self) -> None:
        try:
            while not self._stop_ingest.is_set():
                if not self.pull.poll(100):
                    continue
                batch = self._receive_batch()
                if batch:
                    self._commit(batch)
        except Exception:
            log.exception("ingest thread failed")
            raise

    def _receive_batch(self) -> list[Incoming]:
        """Everything that arrived, up to the commit limits, without waiting."""
        batch: list[Incoming] = []
        nbytes = 0
        limit_n, limit_bytes = self.config.commit_max_messages, self.config.commit_max_bytes
        while len(batch) < limit_n and nbytes < limit_bytes:
            try:
                frames = self.pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            items = self._decode_data(frames)
            batch.extend(items)
            nbytes += sum(len(item.payload) for item in items)
        return batch

    def _decode_data(self, frames: list[zmq.Frame]) -> list[Incoming]:
        """Validate one ingest message; refused parts are counted and logged."""
        c = self.config
        try:
            if len(frames) < 3 or len(frames) % 2 != 1:
                raise ProtocolError(
                    f"ingest message has {len(frames)} frames; expected an envelope followed"
                    " by header and payload pairs"
                )
            envelope = proto.decode(proto.Kind.DATA, proto.Envelope, frames[0].bytes)
            proto.check_envelope(envelope)
        except (ProtocolError, InvalidInput) as err:
            self._reject(err)
            return []
        items: list[Incoming] = []
        for i in range(1, len(frames), 2):
            payload = frames[i + 1].buffer
            try:
                header = proto.decode_body(proto.Header, frames[i].bytes)
                proto.check_header(
                    header,
                    len(payload),
                    max_data_bytes=c.max_message_bytes,
                    max_meta_bytes=c.max_meta_bytes,
                )
            except (ProtocolError, InvalidInput) as err:
                # The sender's messages after this one would wait for it forever; it is
                # refused and the rest of this message too (the sender validates locally,
                # so only a broken or hostile peer gets here).
                self._reject(err, envelope.sender)
                break
            items.append(Incoming(envelope, header, payload))
        return items

    def _reject(self, err: HidraError, sender: str = "?") -> None:
        reason = type(err).__name__
        self.metrics.rejected.labels(reason).inc()
        log.warning("refused ingest message from sender %s: %s", sender, err)

    def _commit(self, batch: list[Incoming]) -> None:
        """Group commit with retries: until it is durable nothing is acked."""
        failed_since = None
        while True:
            started = time.perf_counter()
            try:
                result = self.store.append(batch)
                break
            except StorageError as err:
                self.metrics.commit_failures.inc()
                if failed_since is None:
                    failed_since = time.monotonic()
                    log.error("commit failed, not acknowledging until it works: %s", err)
                if self._stop_ingest.wait(1.0):
                    log.error("stopping with an uncommitted batch; senders keep it spooled")
                    return
        if failed_since is not None:
            log.warning("commits work again after %.1f s", time.monotonic() - failed_since)
        self.metrics.commit_seconds.observe(time.perf_counter() - started)
        self.commits += 1
        self._after_commit(result)

    def _after_commit(self, result: AppendResult) -> None:
        m = self.metrics
        for item in result.committed:
            m.messages.labels(item.stream).inc()
            m.bytes.labels(item.stream).inc(len(item.payload))
            ref = proto.FrameRef(item.stream, item.index, msgspec.Raw(item.record))
            try:
                self.pub.send_multipart(
                    [
                        item.stream.encode() + b"\0",
                        proto.encode(proto.Kind.PUBLISH, ref),
                        item.payload,
                    ],
                    zmq.NOBLOCK,
                    copy=False,
                )
                m.published.inc()
            except zmq.Again:
                pass  # no subscriber can take it now: live viewers skip frames
        last: dict[str, int] = {}
        for item in result.committed:
            last[item.stream] = item.index
        for stream, index in last.items():
            m.last_index.labels(stream).set(index)
        if result.duplicates:
            m.duplicates.inc(result.duplicates)
        if result.gaps:
            m.gaps.inc(len(result.gaps))
        notice = Notice(
            acks=[(s, i, seq) for (s, i), seq in result.acks.items()],
            gaps=[(s, i, exp, ep) for (s, i), (exp, ep) in result.gaps.items()],
            streams=sorted(result.touched),
        )
        self._notice_tx.send(proto.encode_body(notice))

    # ------------------------------------------------------------------- api

    def _api_loop(self) -> None:
        self._senders: dict[tuple[str, int], bytes] = {}  # (sender, incarnation) -> ident
        self._waiters: dict[str, list[_Waiter]] = {}
        self._deadlines: list[_Waiter] = []
        self._order = itertools.count()
        self._notice_decoder = msgspec.msgpack.Decoder(Notice)
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self._notice_rx, zmq.POLLIN)
        try:
            while True:
                stopping = self._stop_api.is_set()
                timeout = 100
                if self._deadlines:
                    wait = self._deadlines[0].deadline - time.monotonic()
                    timeout = max(0, min(timeout, int(wait * 1000) + 1))
                events = dict(poller.poll(0 if stopping else timeout))
                if self._notice_rx in events:
                    self._take_notices()
                if self.router in events:
                    self._take_requests()
                self._expire_waiters()
                if stopping and not events:
                    return
        except Exception:
            log.exception("api thread failed")
            raise

    def _take_notices(self) -> None:
        while True:
            try:
                data = self._notice_rx.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            notice = self._notice_decoder.decode(data)
            for sender, incarnation, last in notice.acks:
                self._to_sender(sender, incarnation, proto.Kind.ACK, proto.Ack(incarnation, last))
            for sender, incarnation, expected, epoch in notice.gaps:
                self._to_sender(
                    sender, incarnation, proto.Kind.GAP, proto.Gap(incarnation, expected, epoch)
                )
            for stream in notice.streams:
                self._wake_waiters(stream)

    def _to_sender(self, sender: str, incarnation: int, kind: proto.Kind, body) -> None:
        ident = self._senders.get((sender, incarnation))
        if ident is None:
            return  # not said HELLO yet: its next HELLO gets the current ack
        # a full pipe drops the ack: the sender's heartbeat HELLO fetches it again
        with contextlib.suppress(zmq.Again):
            self.router.send_multipart([ident, proto.encode(kind, body)], zmq.NOBLOCK)

    def _take_requests(self) -> None:
        for _ in range(1000):  # then let notices and deadlines have a turn
            try:
                frames = self.router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            if len(frames) != 2:
                self.metrics.rejected.labels("ProtocolError").inc()
                continue
            ident, frame = frames
            try:
                kind = proto.peek_kind(frame)
                if kind == proto.Kind.HELLO:
                    self._on_hello(ident, proto.decode(kind, proto.Hello, frame))
                elif kind == proto.Kind.REQUEST:
                    self._on_request(ident, proto.decode(kind, proto.Request, frame))
                else:
                    raise ProtocolError(f"{kind.name} is not a request")
            except (ProtocolError, InvalidInput) as err:
                self._reject(err)

    def _on_hello(self, ident: bytes, hello: proto.Hello) -> None:
        proto.check_sender_id(hello.sender)
        key = (hello.sender, hello.incarnation)
        if self._senders.get(key) != ident:
            log.info("sender %s (incarnation %x) connected", hello.sender, hello.incarnation)
            self._senders[key] = ident
        last = self.store.last_seq(hello.sender, hello.incarnation)
        self._to_sender(
            hello.sender, hello.incarnation, proto.Kind.ACK, proto.Ack(hello.incarnation, last)
        )

    # -- requests

    def _on_request(self, ident: bytes, req: proto.Request) -> None:
        handler: Callable[[bytes, proto.Request], None] | None = getattr(
            self, f"_op_{req.op}", None
        )
        self.metrics.requests.labels(req.op if handler else "unknown").inc()
        try:
            if handler is None:
                raise InvalidInput(
                    f"operation {req.op!r} is unknown; expected one of ping, streams, info,"
                    " last, get"
                )
            handler(ident, req)
        except HidraError as err:
            self._reply_error(ident, req, err)

    def _reply(self, ident: bytes, req: proto.Request, body=None, payload=None) -> None:
        reply = proto.Reply(req.id, body=msgspec.Raw(proto.encode_body(body)))
        frames = [ident, proto.encode(proto.Kind.REPLY, reply)]
        if payload is not None:
            frames.append(payload)
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK, copy=False)
        except zmq.Again:
            log.debug("reply to a consumer that does not read was dropped")

    def _reply_error(self, ident: bytes, req: proto.Request, err: HidraError) -> None:
        reply = proto.Reply(req.id, error=type(err).__name__, message=str(err))
        with contextlib.suppress(zmq.Again):
            self.router.send_multipart([ident, proto.encode(proto.Kind.REPLY, reply)], zmq.NOBLOCK)

    def _op_ping(self, ident: bytes, req: proto.Request) -> None:
        self._reply(ident, req, "pong")

    def _op_streams(self, ident: bytes, req: proto.Request) -> None:
        self._reply(ident, req, self.store.streams())

    def _op_info(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        self._reply(ident, req, self.store.info(req.stream))

    def _op_last(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        index = self.store.next_index(req.stream) - 1
        if index < 0:
            self._wait_or_fail(ident, req, 0)
            return
        self._send_frame(ident, req, index)

    def _op_get(self, ident: bytes, req: proto.Request) -> None:
        proto.check_stream_name(req.stream)
        if req.index >= self.store.next_index(req.stream):
            self._wait_or_fail(ident, req, req.index)
            return
        self._send_frame(ident, req, req.index)

    def _send_frame(self, ident: bytes, req: proto.Request, index: int) -> None:
        record, payload = self.store.read(req.stream, index)
        ref = proto.FrameRef(req.stream, index, msgspec.Raw(record))
        self._reply(ident, req, ref, payload)

    def _wait_or_fail(self, ident: bytes, req: proto.Request, index: int) -> None:
        """Fail now if ``index`` can never come or the request does not wait; else wait."""
        if req.timeout <= 0 or self.store.is_finished(req.stream):
            self.store.check_index(req.stream, index)  # NotYetAvailable or StreamFinished
        deadline = time.monotonic() + min(req.timeout, 3600.0)
        waiter = _Waiter(deadline, next(self._order), ident, req)
        self._waiters.setdefault(req.stream, []).append(waiter)
        heapq.heappush(self._deadlines, waiter)

    def _wake_waiters(self, stream: str) -> None:
        """Serve the waiting requests of ``stream`` that a commit made answerable."""
        next_index = self.store.next_index(stream)
        finished = self.store.is_finished(stream)
        for w in self._waiters.pop(stream, []):
            if w.done:
                continue
            if _waited_index(w.request) < next_index or finished:
                w.done = True
                self._on_request(w.ident, msgspec.structs.replace(w.request, timeout=0.0))
            else:
                self._waiters.setdefault(stream, []).append(w)

    def _expire_waiters(self) -> None:
        now = time.monotonic()
        while self._deadlines and self._deadlines[0].deadline <= now:
            w = heapq.heappop(self._deadlines)
            if w.done:
                continue
            w.done = True
            stream = w.request.stream
            pending = [x for x in self._waiters.get(stream, []) if not x.done]
            if pending:
                self._waiters[stream] = pending
            else:
                self._waiters.pop(stream, None)
            self._on_request(w.ident, msgspec.structs.replace(w.request, timeout=0.0))


def _waited_index(req: proto.Request) -> int:
    return req.index if req.op == "get" else 0
