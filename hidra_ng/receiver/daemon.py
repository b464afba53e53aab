"""The receiver daemon: ingest -> store -> ack, publish, serve requests.

Two threads, each owning its sockets:

* ingest: PULL -> validate -> group commit (one LMDB transaction and one fsync
  for everything that arrived while the previous commit ran; each frame goes
  out on the XPUB once it has its index in that transaction, before the fsync:
  receiver/live.py) -> a notice to the api thread. Between commits it answers
  new subscriptions with their streams' newest frames.
* api (hidra_ng/receiver/api.py): ROUTER. Senders say HELLO and get cumulative ACKs
  and GAP (resend) requests once their messages are durable; consumers get
  frames, wait for future ones and replay with flow control.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import zmq

from hidra_ng.config import ReceiverConfig
from hidra_ng.errors import (
    HidraError,
    InvalidInput,
    ProtocolError,
    StorageError,
    reason,
)
from hidra_ng.metrics import ReceiverMetrics, serve
from hidra_ng.receiver.api import ApiServer, Notice
from hidra_ng.receiver.groups import Groups
from hidra_ng.receiver.live import LivePublisher
from hidra_ng.receiver.sockets import ReceiverSockets
from hidra_ng.receiver.store import RETENTION_BATCH, AppendResult, Committed, Incoming, Store
from hidra_ng.service import Heartbeats
from hidra_ng.wire import protocol as proto
from hidra_ng.zmqio import recv_parts

log = logging.getLogger(__name__)

#: a loop that has not gone round for this long counts as hung: the watchdog starves
HUNG_SECONDS = 20.0


class Receiver:
    """A receiver bound to its endpoints with its store open; ``start()`` runs it."""

    def __init__(self, config: ReceiverConfig) -> None:
        self.config = config
        self.metrics = ReceiverMetrics()
        self.store = Store(Path(config.data_dir), map_bytes=config.initial_map_bytes)
        self.groups = Groups(
            Path(config.data_dir) / "groups", self.store, ack_timeout=config.ack_timeout_seconds
        )
        self._stop_ingest = threading.Event()
        self._stop_api = threading.Event()
        self.heartbeats = Heartbeats()
        self._threads: list[threading.Thread] = []
        self.metrics_server = None
        self.commits = 0  # group commits done, for status lines
        s = None
        try:
            s = ReceiverSockets(
                config, on_refused=lambda why: self.metrics.rejected.labels(why).inc()
            )
            self.metrics_server = serve(self.metrics.registry, config.metrics_port)
        except BaseException:
            if s is not None:
                s.close()
            self.groups.close()
            self.store.close()
            raise
        for info in self.store.streams():
            if info.last is not None:
                self.metrics.last_index.labels(info.name).set(info.last)
        self.metrics.store_bytes.set_function(self.store.env.disk_bytes)
        self._next_retention = 0.0
        self.sockets, self.endpoints = s, s.endpoints
        self.pull, self.router, self.pub = s.pull, s.router, s.pub
        self._notice_rx, self._notice_tx = s.notice_rx, s.notice_tx
        self.live = LivePublisher(self.pub, self.store, self.metrics, config.publish_cache_bytes)

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        api = ApiServer(
            self.store,
            self.router,
            self._notice_rx,
            self.metrics,
            self.groups,
            beat=lambda: self.heartbeats.beat("api"),
        )
        self.api_server = api  # read-only from other threads: waiters.waiting(stream)
        for target, name in (
            (self._ingest_loop, "ingest"),
            (lambda: api.run(self._stop_api), "api"),
        ):
            thread = threading.Thread(target=target, name=f"hidra-ng-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        """True while both threads run and went round their loops lately (the watchdog asks)."""
        running = bool(self._threads) and all(t.is_alive() for t in self._threads)
        return running and self.heartbeats.fresh(HUNG_SECONDS)

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
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            # closing sockets under a running thread could crash it mid-call
            log.error("threads %s did not stop within %.0f s; exiting without closing", stuck,
                      timeout)  # fmt: skip
            return
        self.sockets.close(graceful=True)
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
        self.groups.close()
        self.store.close()

    def __enter__(self) -> Receiver:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- ingest

    def _ingest_loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self.pull, zmq.POLLIN)
        poller.register(self.pub, zmq.POLLIN)  # subscriptions: new ones get the newest frame
        try:
            while not self._stop_ingest.is_set():
                self.heartbeats.beat("ingest")
                ready = dict(poller.poll(100))
                if self.pub in ready:
                    self.live.take_subscriptions()
                if self.pull in ready:
                    batch = self._receive_batch()
                    if batch:
                        self._commit(batch)
                self._retention()
        except Exception:
            log.exception("ingest thread failed")
            raise

    def _retention(self) -> None:
        """Apply max_store_bytes / max_age_seconds: after commits that overflow, and each second."""
        c = self.config
        if not (c.max_store_bytes or c.max_age_seconds):
            return
        now = time.monotonic()
        over = c.max_store_bytes and self.store.stored_bytes() > c.max_store_bytes
        if not over and now < self._next_retention:
            return
        self._next_retention = now + 1.0
        try:
            while (
                self.store.enforce_retention(c.max_store_bytes, c.max_age_seconds)
                >= RETENTION_BATCH
                and not self._stop_ingest.is_set()
            ):
                pass
        except StorageError as err:
            log.error("retention failed: %s", err)
        for stream in self.store.drain_emptied():
            self.metrics.forget_stream(stream)
            self.live.forget(stream)

    def _receive_batch(self) -> list[Incoming]:
        """Everything that arrived, up to the commit limits, without waiting."""
        batch: list[Incoming] = []
        nbytes = 0
        limit_n, limit_bytes = self.config.commit_max_messages, self.config.commit_max_bytes
        while len(batch) < limit_n and nbytes < limit_bytes:
            try:
                frames = recv_parts(self.pull)
            except zmq.Again:
                break
            try:
                items = self._decode_data(frames)
            except Exception:
                # a bug must cost one message, never the ingest thread (SPEC §9)
                self.metrics.rejected.labels("internal").inc()
                log.exception("ingest message could not be decoded; refused")
                continue
            batch.extend(items)
            nbytes += sum(len(item.payload) for item in items)
        return batch

    def _decode_data(self, frames: list[zmq.Frame]) -> list[Incoming]:
        """Validate one ingest message (DATA or DATA_PACKED); refused parts are counted."""
        c = self.config
        packed = None
        try:
            is_packed = proto.peek_kind(frames[0].buffer) == proto.Kind.DATA_PACKED
            if is_packed:
                if len(frames) != 3:
                    raise ProtocolError(
                        f"packed ingest message has {len(frames)} frames; expected 3: envelope,"
                        " headers and sizes, payloads"
                    )
            elif len(frames) < 3 or len(frames) % 2 != 1:
                raise ProtocolError(
                    f"ingest message has {len(frames)} frames; expected an envelope followed"
                    " by header and payload pairs"
                )
            kind = proto.Kind.DATA_PACKED if is_packed else proto.Kind.DATA  # others: refused
            envelope = proto.decode(kind, proto.Envelope, frames[0].bytes)
            proto.check_envelope(envelope)
            if is_packed:
                packed = proto.decode_body(proto.Packed, frames[1].buffer)
                payloads = proto.unpack_payloads(packed, frames[2].buffer)
        except (ProtocolError, InvalidInput) as err:
            self._reject(err)
            return []
        count = len(payloads) if packed else len(frames) // 2
        items: list[Incoming] = []
        for i in range(count):
            try:
                if packed:
                    header, payload = packed.headers[i], payloads[i]
                else:
                    payload = frames[2 * i + 2].buffer
                    header = proto.decode_body(proto.Header, frames[2 * i + 1].bytes)
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
        self.metrics.rejected.labels(reason(err)).inc()
        log.warning("refused ingest message from sender %s: %s", sender, err)

    def _commit(self, batch: list[Incoming]) -> None:
        """Group commit with retries: until a message is durable it is not acked.

        When a commit fails (a full disk, typically) the batch is kept and
        committed in ever smaller chunks, in order, down to one message, retrying
        each second: whatever space comes free is used and nothing is reordered.
        Senders keep everything spooled meanwhile; reads go on.
        """
        pending = batch
        chunk = len(batch)
        failed_since = None
        published: dict[str, int] = {}  # a frame goes out live once, whatever is retried

        def publish(committed: list[Committed]) -> None:
            self.live.publish(committed, published)

        while pending:
            part = pending[:chunk]
            started = time.perf_counter()
            try:
                # live frames go out from inside the transaction, before its fsync (G6)
                result = self.store.append(part, before_commit=publish)
            except StorageError as err:
                self.metrics.commit_failures.inc()
                if failed_since is None:
                    failed_since = time.monotonic()
                    log.error("commit failed, not acknowledging until it works: %s", err)
                if chunk > 1:
                    chunk //= 2
                    continue
                self.heartbeats.beat("ingest")  # waiting for space is not hanging
                if self._stop_ingest.wait(1.0):
                    log.error("stopping with an uncommitted batch; senders keep it spooled")
                    return
                continue
            if failed_since is not None:
                log.warning("commits work again after %.1f s", time.monotonic() - failed_since)
                failed_since = None
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            self.commits += 1
            self._after_commit(result)
            pending = pending[len(part) :]

    def _after_commit(self, result: AppendResult) -> None:
        m = self.metrics
        counts: dict[str, list[int]] = {}  # stream -> [messages, bytes, last index]
        for item in result.committed:
            count = counts.setdefault(item.stream, [0, 0, 0])
            count[0] += 1
            count[1] += len(item.payload)
            count[2] = item.index
        # metrics once per stream and commit, not per message
        for stream, (messages, nbytes, last) in counts.items():
            m.stream_committed(stream, messages, nbytes, last)
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
