"""The receiver daemon: ingest -> store -> ack, publish, serve requests.

Three threads (docs/adr/0003-threads.md):

* ingest: PULL -> validate -> plan (admission, indices, Records against the
  pending state: receiver/planning.py) -> each frame out on the XPUB at once,
  before any write (receiver/live.py, G6) -> the batch handed to the committer.
  While the committer writes, what arrives next is planned, published and
  collected into the next batch (the group commit). It also answers new
  subscriptions with their streams' newest frames.
* committer (receiver/committer.py): one LMDB transaction and one fsync per
  batch, retried until it works; then a notice to the api thread; retention.
* api (hidra_ng/receiver/api.py): ROUTER. Senders say HELLO and get cumulative ACKs
  and GAP (resend) requests once their messages are durable; consumers get
  frames, wait for future ones and replay with flow control.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import zmq

from hidra_ng.config import ReceiverConfig
from hidra_ng.errors import HidraError, InvalidInput, ProtocolError, reason
from hidra_ng.metrics import ReceiverMetrics, serve
from hidra_ng.receiver.api import ApiServer
from hidra_ng.receiver.committer import Committer
from hidra_ng.receiver.groups import Groups
from hidra_ng.receiver.live import LivePublisher
from hidra_ng.receiver.planning import Incoming, Planned
from hidra_ng.receiver.sockets import ReceiverSockets
from hidra_ng.receiver.store import Store
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
        self.sockets, self.endpoints = s, s.endpoints
        self.pull, self.router, self.pub = s.pull, s.router, s.pub
        self._notice_rx = s.notice_rx
        self.live = LivePublisher(self.pub, self.store, self.metrics, config.publish_cache_bytes)
        self.committer = Committer(
            self.store, config, self.metrics, s.notice_tx, self._stop_ingest,
            beat=lambda: self.heartbeats.beat("commit"),
        )  # fmt: skip

    @property
    def commits(self) -> int:
        """Group commits done, for status lines."""
        return self.committer.commits

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
            (self.committer.run, "commit"),
            (lambda: api.run(self._stop_api), "api"),
        ):
            thread = threading.Thread(target=target, name=f"hidra-ng-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def alive(self) -> bool:
        """True while the threads run and went round their loops lately (the watchdog asks)."""
        running = bool(self._threads) and all(t.is_alive() for t in self._threads)
        return running and self.heartbeats.fresh(HUNG_SECONDS)

    def status(self) -> str:
        streams = self.store.streams()
        return (
            f"{len(streams)} streams, {sum(s.count for s in streams)} messages,"
            f" {self.commits} commits"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop input, finish the commits in flight, send their acks, close everything."""
        self._stop_ingest.set()
        if self._threads:
            self._threads[0].join(timeout)  # hands its last batch to the committer
            self.committer.stop()
            self._threads[1].join(timeout)
        self._stop_api.set()
        for thread in self._threads[2:]:
            thread.join(timeout)
        stuck = [t.name for t in self._threads if t.is_alive()]
        if stuck:
            # closing sockets under a running thread could crash it mid-call
            log.error("threads %s did not stop within %.0f s; exiting without closing", stuck,
                      timeout)  # fmt: skip
            return
        self.sockets.close(graceful=True)
        self.committer.close()
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
        poller.register(self.pub, zmq.POLLIN)  # subscriptions: new ones get the newest frame
        poller.register(self.committer.fileno(), zmq.POLLIN)  # a commit is done
        batch: Planned | None = None  # planned and published, not handed over yet
        try:
            while not self._stop_ingest.is_set():
                self.heartbeats.beat("ingest")
                room = self._room(batch)
                # a full batch leaves the rest queued at the PULL (bounded, G9)
                poller.register(self.pull, zmq.POLLIN if room else 0)
                ready = dict(poller.poll(100))
                if self.pub in ready:
                    self.live.take_subscriptions()
                if self.committer.fileno() in ready:
                    self.committer.clear_wakeups()
                if room and self.pull in ready:
                    batch = self._take(batch, *room)
                batch = self._hand_over(batch)
                while self.committer.emptied:
                    self.live.forget(self.committer.emptied.popleft())
            # stopping: the last batch's frames are out live; commit them too
            if batch is not None and self.committer.wait_idle():
                self.committer.hand_over(batch, self.live.take_leaving())
        except Exception:
            log.exception("ingest thread failed")
            raise

    def _room(self, batch: Planned | None) -> tuple[int, int] | None:
        """(messages, bytes) the batch being collected may still take; None when full."""
        c = self.config
        if batch is None:
            return c.commit_max_messages, c.commit_max_bytes
        n, nbytes = c.commit_max_messages - len(batch.items), c.commit_max_bytes - batch.nbytes
        return (n, nbytes) if n > 0 and nbytes > 0 else None

    def _take(self, batch: Planned | None, max_n: int, max_bytes: int) -> Planned | None:
        """Receive what arrived, plan it on top of everything planned, publish it live."""
        items = self._receive_batch(max_n, max_bytes)
        if not items:
            return batch
        planned = self.store.plan(items)
        # live frames go out now, before their commit is written and fsynced (G6)
        self.live.publish(planned.result.committed)
        if batch is None:
            return planned
        batch.extend(planned)
        return batch

    def _hand_over(self, batch: Planned | None) -> Planned | None:
        """Give the batch to the committer once it is idle (depth one); None once given."""
        if not self.committer.idle:
            return batch
        if batch is None:
            self.store.settle()  # everything planned is committed: no pending state left
            return None
        self.committer.hand_over(batch, self.live.take_leaving())
        return None

    def _receive_batch(self, limit_n: int, limit_bytes: int) -> list[Incoming]:
        """Everything that arrived, up to the limits, without waiting."""
        batch: list[Incoming] = []
        nbytes = 0
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
            nbytes += sum([len(item.payload) for item in items])
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
        error: HidraError | None
        if packed:  # one check per distinct stream, meta and payload description
            valid, error = proto.check_headers(
                packed.headers,
                packed.sizes,
                max_data_bytes=c.max_message_bytes,
                max_meta_bytes=c.max_meta_bytes,
            )
            headers = packed.headers[:valid]
            items = [
                Incoming(envelope, h, p) for h, p in zip(headers, payloads[:valid], strict=True)
            ]
        else:
            items, error = self._check_data(envelope, frames)
        if error is not None:
            # The sender's messages after this one would wait for it forever; it is
            # refused and the rest of this message too (the sender validates locally,
            # so only a broken or hostile peer gets here).
            self._reject(error, envelope.sender)
        return items

    def _check_data(
        self, envelope: proto.Envelope, frames: list[zmq.Frame]
    ) -> tuple[list[Incoming], HidraError | None]:
        """The messages of a DATA message up to the first invalid one, and its error."""
        c = self.config
        items: list[Incoming] = []
        for i in range(len(frames) // 2):
            try:
                payload = frames[2 * i + 2].buffer
                header = proto.decode_body(proto.Header, frames[2 * i + 1].bytes)
                proto.check_header(
                    header,
                    len(payload),
                    max_data_bytes=c.max_message_bytes,
                    max_meta_bytes=c.max_meta_bytes,
                )
            except (ProtocolError, InvalidInput) as err:
                return items, err
            items.append(Incoming(envelope, header, payload))
        return items, None

    def _reject(self, err: HidraError, sender: str = "?") -> None:
        self.metrics.rejected.labels(reason(err)).inc()
        log.warning("refused ingest message from sender %s: %s", sender, err)
