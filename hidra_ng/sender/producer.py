"""Producer: spool every message durably, push it to the receiver, resend until acked.

``send()`` validates and spools in the caller's thread and returns once the
spool commit is durable (SPEC G2). A link thread owns the sockets: it pushes
spooled messages over PUSH within a window of unacknowledged bytes, takes the
receiver's cumulative acks on a DEALER, frees the spool, and goes back to the
first unacknowledged message when the receiver reports a gap or the PUSH
connection breaks (go-back-N; docs/adr/0001-ack-path.md). When acks stall with
neither, it resends only the first unacknowledged batch, as a probe, and
doubles the wait before the next probe (up to 16 x ``resend_after_seconds``),
so a receiver that cannot commit does not get the window queued again and again.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import zmq

from hidra_ng.config import SenderConfig
from hidra_ng.errors import (
    ConfigError,
    MessageTooLarge,
    ProtocolError,
    ReceiverUnavailable,
    SpoolFull,
    StorageError,
    StreamFinished,
)
from hidra_ng.metrics import SenderMetrics
from hidra_ng.security import ClientKeys
from hidra_ng.sender.gobackn import GoBackN
from hidra_ng.sender.lending import Loan
from hidra_ng.sender.push import IngestPush
from hidra_ng.sender.spool import Checkpoints, Outgoing, Spool, SpooledRun, entries_bytes
from hidra_ng.shards import ShardMap
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.compression import Encoded, check_compression, compress
from hidra_ng.wire.frames import Data, describe
from hidra_ng.zmqio import ZERO_COPY_BYTES, send_parts

log = logging.getLogger(__name__)

#: a batch whose payloads are all smaller goes as one DATA_PACKED message (3 zmq
#: frames, payloads joined: a copy, cheap for them); others as DATA (2 frames a
#: message, payloads without a copy)
PACK_BELOW_BYTES = ZERO_COPY_BYTES

#: a message's meta as given, a message ready to spool, its header checks (send_many)
Meta = dict[str, Any] | None
Prepared = tuple[proto.Header, memoryview | bytes]
_Check = Callable[[proto.Header, int], None]

GiB = 1 << 30
MiB = 1 << 20


def _check_targets(
    ingest: str, api: str, spool_dir: str | os.PathLike[str], split_parts: int
) -> None:
    """A single receiver's endpoints and a spool, as a Producer without a shard map needs."""
    if split_parts != 1:
        raise ConfigError(
            f"split_parts = {split_parts} needs a shard map (shards = PATH): the parts of a"
            " split series go to the receivers of its shard"
        )
    if not (ingest and api and str(spool_dir)):
        raise ConfigError(
            f"ingest={ingest!r}, api={api!r} and spool_dir={str(spool_dir)!r}: expected"
            " all three, or shards=PATH with spool_dir"
        )


def _send_timeout(seconds: float, former: float | None) -> float:
    """``send_timeout_seconds``, or ``send_timeout`` (the former name) if given instead."""
    if former is None:
        return seconds
    if seconds != 30.0 and seconds != former:
        raise ConfigError(
            f"send_timeout={former} and send_timeout_seconds={seconds} disagree; give"
            " send_timeout_seconds only"
        )
    return former


class Producer:
    """Send frames to a hidra_ng receiver without ever losing one (SPEC §4).

    ``spool_sync="always"`` (default): ``send()`` returns after the spool commit
    is fsynced; a crash of the process or the machine loses nothing that
    ``send()`` returned for. ``spool_sync="batch"``: ``send()`` returns after a
    commit without fsync and the spool is fsynced every ``spool_batch_seconds``;
    a crash of the process loses nothing, a crash of the machine may lose the
    messages of the last ``spool_batch_seconds``.

    ``max_spool_bytes`` bounds the spool (payloads plus headers with their
    metadata); at the limit ``send()`` waits up to ``send_timeout_seconds`` for
    acks to free space, then raises ``SpoolFull``. (``send_timeout`` is the former
    name of that argument and still accepted.)

    :meth:`from_config` makes one from a ``SenderConfig``: the settings are
    declared once, in hidra_ng/config.py.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Producer:
        # shards=PATH (SPEC §14): one link per receiver, each stream routed to its own
        if cls is Producer and kwargs.get("shards"):
            from hidra_ng.sender.sharded import ShardedProducer

            return super().__new__(ShardedProducer)
        return super().__new__(cls)

    def __init__(
        self,
        ingest: str = "",
        api: str = "",
        spool_dir: str | os.PathLike[str] = "",
        sender_id: str = "",
        *,
        spool_sync: str = "always",
        spool_batch_seconds: float = 0.5,
        max_spool_bytes: int = 16 * GiB,
        send_timeout_seconds: float = 30.0,
        compression: str = "none",
        max_message_bytes: int = proto.MAX_DATA_BYTES,
        max_meta_bytes: int = proto.MAX_META_BYTES,
        window_bytes: int = 64 * MiB,
        resend_after_seconds: float = 3.0,
        heartbeat_seconds: float = 1.0,
        metrics: SenderMetrics | None = None,
        keys_dir: str | os.PathLike[str] | None = None,
        server_key_dir: str | os.PathLike[str] | None = None,
        send_timeout: float | None = None,
        shards: str | os.PathLike[str] | ShardMap | None = None,
        split_parts: int = 1,
        split_block_images: int = 1,
        split_streams: Sequence[str] = ("**",),
    ) -> None:
        _check_targets(ingest, api, spool_dir, split_parts)
        send_timeout_seconds = _send_timeout(send_timeout_seconds, send_timeout)
        proto.check_sender_id(sender_id)
        # CurveZMQ (SPEC §9): this sender's key pair and the receiver's public key
        self.keys = ClientKeys.load(
            keys_dir and str(keys_dir),  # type: ignore[arg-type]
            server_key_dir and str(server_key_dir),  # type: ignore[arg-type]
        )
        self.compression = check_compression(compression)
        if max_spool_bytes <= 0 or window_bytes <= 0:
            raise ConfigError(
                f"max_spool_bytes={max_spool_bytes} and window_bytes={window_bytes}"
                " must be positive"
            )
        self.ingest, self.api = ingest, api
        self.sender_id = sender_id
        self.max_spool_bytes = max_spool_bytes
        self.send_timeout = send_timeout_seconds
        self.max_message_bytes = max_message_bytes
        self.max_meta_bytes = max_meta_bytes
        self._spool = Spool(
            Path(spool_dir), sender_id, sync=spool_sync, batch_seconds=spool_batch_seconds
        )
        self._space = threading.Condition()  # notified when acks free spool space
        self._space_waiters = 0  # senders blocked on a full spool: free space at once
        self._interrupted = False  # interrupt(): waiting senders give up (a stop)
        self.metrics = metrics
        try:
            self._link = _Link(self, window_bytes, resend_after_seconds, heartbeat_seconds)
        except BaseException:
            self._spool.close()  # else the spool stays open and cannot be opened again
            raise
        self._closed = False
        self._link.start()

    @classmethod
    def from_config(cls, config: SenderConfig, metrics: SenderMetrics | None = None) -> Producer:
        """A Producer with the settings of ``config`` that are Producer arguments.

        Which those are is derived, not listed: every ``SenderConfig`` field whose
        name is a parameter of ``Producer`` (an empty key directory means none).
        """
        options: dict[str, Any] = {name: getattr(config, name) for name in producer_settings()}
        for name in ("keys_dir", "server_key_dir"):
            options[name] = options.get(name) or None  # "" in a config: no keys
        return cls(**options, metrics=metrics)

    # ----------------------------------------------------------------- sending

    def send(self, stream: str, data: Data, meta: dict[str, Any] | None = None) -> int:
        """Spool one message for ``stream``; returns its sequence number."""
        return self.send_many(stream, [(data, meta)])[0]

    def send_many(
        self,
        stream: str,
        items: Iterable[tuple[Data, dict[str, Any] | None]],
        *,
        checkpoint: Checkpoints = None,
    ) -> list[int]:
        """Spool several messages for ``stream`` in one commit; returns their seqs.

        ``checkpoint=(name, value)`` saves a source's position in the same commit,
        so a restarted source resumes exactly after what was spooled
        (read it back with :meth:`checkpoint`).
        """
        prepared = self._prepare_many(stream, items)
        if not prepared:
            return []
        return self._spool_commit(prepared, checkpoint=checkpoint)

    def _prepare_many(
        self, stream: str, items: Iterable[tuple[Data, dict[str, Any] | None]]
    ) -> list[tuple[proto.Header, memoryview | bytes]]:
        """Validate (and compress) messages for ``stream``, not spooled yet (send_many)."""
        self._check_open()
        proto.check_stream_name(stream)
        if stream in self._spool.finished:
            raise StreamFinished(f"stream {stream!r} was finished by this sender; use a new stream")
        # checks once per distinct meta and payload description, each message's errors the same
        limits = {"max_data_bytes": self.max_message_bytes, "max_meta_bytes": self.max_meta_bytes}
        check = proto.HeaderChecker(**limits).check
        return _prepare_all(self, stream, items, check)

    def _commit_prepared(
        self, prepared: list[tuple[proto.Header, memoryview | bytes]], checkpoint: Checkpoints
    ) -> list[int]:
        """Spool what :meth:`_prepare_many` made in one commit; a checkpoint alone if none."""
        self._check_open()
        return self._spool_commit(prepared, checkpoint=checkpoint)

    def finish(self, stream: str) -> int:
        """Mark ``stream`` finished after everything this sender sent to it."""
        self._check_open()
        proto.check_stream_name(stream)
        header = proto.Header(stream, 0, proto.Payload.FINISH, "", (), "none", b"{}", time.time())
        return self._spool_commit([(header, b"")], finish=[stream])[0]

    def _prepare(self, stream: str, data: Data, meta: Meta, check: _Check) -> Prepared:
        if isinstance(data, Encoded):  # compressed by its source: spooled as it is
            kind, dtype, shape, payload = proto.Payload.ARRAY, data.dtype, data.shape, data.check()
            codec = data.compression
        else:
            kind, dtype, shape, payload = describe(data)
            codec = "none"
        if len(payload) > self.max_message_bytes:
            raise MessageTooLarge(
                f"data of {len(payload)} bytes for stream {stream!r} exceeds the maximum of"
                f" {self.max_message_bytes} bytes"
            )
        meta_bytes = proto.encode_meta(meta, self.max_meta_bytes)
        compressible = kind in (proto.Payload.ARRAY, proto.Payload.BYTES) and codec == "none"
        if compressible and self.compression != "none":
            payload = compress(payload, dtype, self.compression)
            codec = self.compression
        header = proto.Header(stream, 0, kind, dtype, shape, codec, meta_bytes, time.time())
        check(header, len(payload))
        return header, payload

    def _spool_commit(
        self,
        prepared: Sequence[tuple[proto.Header, memoryview | bytes]],
        finish: Iterable[str] = (),
        checkpoint: Checkpoints = None,
    ) -> list[int]:
        size = entries_bytes(prepared)
        if size > self.max_spool_bytes:
            raise MessageTooLarge(
                f"{len(prepared)} messages of {size} bytes exceed max_spool_bytes"
                f" {self.max_spool_bytes}; raise the limit or send fewer at once"
            )
        deadline = time.monotonic() + self.send_timeout
        with self._space:
            while self._spool.bytes + size > self.max_spool_bytes:
                self._space_waiters += 1
                left = deadline - time.monotonic()
                if self._interrupted:
                    self._space_waiters -= 1
                    raise SpoolFull(
                        f"producer is closing; {len(prepared)} messages for which the spool"
                        " had no room were not spooled"
                    )
                if left <= 0:
                    self._space_waiters -= 1
                    raise SpoolFull(
                        f"spool at {self._spool.env.path} holds {self._spool.bytes} bytes"
                        f" ({self._spool.count} messages) and {size} more would exceed"
                        f" max_spool_bytes {self.max_spool_bytes} after waiting"
                        f" {self.send_timeout} s; is the receiver at {self.ingest} up?"
                    )
                self._link.wake()
                self._space.wait(left)
                self._space_waiters -= 1
        while True:
            try:
                seqs = self._spool.append(prepared, finish=finish, checkpoint=checkpoint)
                break
            except StorageError as err:
                if time.monotonic() >= deadline or self._interrupted:
                    raise SpoolFull(
                        f"spool at {self._spool.env.path} cannot take {size} bytes: {err}"
                    ) from err
                log.warning("spool commit failed, retrying: %s", err)
                time.sleep(0.2)
        self._link.wake()
        return seqs

    def interrupt(self) -> None:
        """Make senders that wait for spool space give up now (``SpoolFull``): for a stop.

        Nothing spooled is affected; what a waiting ``send()`` held is reported
        as not spooled, so its caller (a source) resumes it after a restart.
        """
        self._interrupted = True
        with self._space:
            self._space.notify_all()

    # ------------------------------------------------------------------ status

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every spooled message is acknowledged by the receiver."""
        self._check_open()
        target = self._spool.next_seq - 1
        if not self._link.wait_acked(target, timeout):
            raise ReceiverUnavailable(
                f"{target - self._link.acked} messages still unacknowledged after {timeout} s;"
                f" receiver at {self.api} last answered"
                f" {self._link.seconds_since_heard():.1f} s ago"
            )

    @property
    def receiver_up(self) -> bool:
        return self._link.receiver_up

    @property
    def link_alive(self) -> bool:
        return self._link.is_alive()

    @property
    def spool_messages(self) -> int:
        return self._spool.count

    @property
    def spool_bytes(self) -> int:
        return self._spool.bytes

    @property
    def stats(self) -> dict[str, int]:
        window = self._link.window
        return {"sent": window.sent_total, "acked": window.acked_total, "probes": window.probes}

    @property
    def acked_seq(self) -> int:
        """Highest seq the receiver acknowledged (with every seq below it); -1 before any."""
        return self._link.acked

    def acked_seq_of(self, stream: str) -> int:
        """:attr:`acked_seq` of the receiver that holds ``stream`` (with shards: per receiver)."""
        return self.acked_seq

    def checkpoint(self, name: str) -> bytes | None:
        """A source's position saved with the messages it spooled (see ``send_many``)."""
        return self._spool.checkpoint(name)

    # ------------------------------------------------------------------- close

    def _check_open(self) -> None:
        if self._closed:
            raise ConfigError("producer is closed")

    def close(self) -> None:
        """Stop the link and close the spool; unacknowledged messages stay spooled."""
        if self._closed:
            return
        self._closed = True
        self._link.stop()
        self._spool.close()

    def __enter__(self) -> Producer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _prepare_all(
    producer: Producer, stream: str, items: Iterable[tuple[Data, Meta]], check: _Check
) -> list[Prepared]:
    """``producer._prepare`` of each item; bytes without meta nor compression at once.

    Such a message differs from the first of its kind in the batch only by its
    size (checked here against the maximum) and its ``created`` time (the clock,
    finite), so the checks of the first one stand for it (``check_header`` would
    find nothing new); anything else goes through ``_prepare`` with its checks.
    """
    prepared: list[Prepared] = []
    plain = producer.compression == "none"
    largest, checked = producer.max_message_bytes, False
    bytes_kind, header_of = proto.Payload.BYTES, proto.Header
    for data, meta in items:
        if plain and meta is None and type(data) is bytes and len(data) <= largest:
            header = header_of(stream, 0, bytes_kind, "", (), "none", b"{}", time.time())
            if not checked:
                check(header, len(data))
                checked = True
            prepared.append((header, data))
        else:
            prepared.append(producer._prepare(stream, data, meta, check))
    return prepared


def producer_settings() -> list[str]:
    """The SenderConfig fields that are Producer arguments (the rest: daemon only)."""
    parameters = inspect.signature(Producer.__init__).parameters
    return [name for name in SenderConfig.__struct_fields__ if name in parameters]


class _Link(threading.Thread):
    """The producer's socket thread: push spooled messages, take acks, resend.

    What to send, when to rewind and when to probe is decided by the window
    (:class:`~hidra_ng.sender.gobackn.GoBackN`, no I/O); this thread does the I/O.
    """

    MAX_BATCH_MESSAGES = 512
    MAX_BATCH_BYTES = 1 * MiB

    def __init__(
        self, producer: Producer, window_bytes: int, resend_after: float, heartbeat: float
    ) -> None:
        super().__init__(name=f"hidra-ng-link-{producer.sender_id}", daemon=True)
        self.p = producer
        self.spool = producer._spool
        self.heartbeat = heartbeat
        self.window = GoBackN(self.spool.lowest, window_bytes, resend_after, time.monotonic())
        #: the window's ``acked``, for other threads (they wait on ``_acked_cond``)
        self.acked = self.window.acked
        self._released = self.acked
        self._last_heard = 0.0
        self._acked_cond = threading.Condition()
        self._stopping = threading.Event()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        os.set_blocking(self._wake_r, False)
        self._ctx = zmq.Context()
        self._poller = zmq.Poller()  # the link thread's: the dealer, the wake pipe, the monitor
        self._dealer = self._ctx.socket(zmq.DEALER)
        self._dealer.setsockopt(zmq.LINGER, 0)
        if producer.keys is not None:
            producer.keys.apply(self._dealer)
        try:
            self._dealer.connect(producer.api)
            self._push = IngestPush(producer.ingest, producer.keys, self._poller, self.spool.env)
        except zmq.ZMQError as err:
            self._dealer.close(linger=0)
            self._close_context()
            raise ConfigError(f"cannot connect to receiver: {err}") from err

    # --------------------------------------------------------- other threads

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def wait_acked(self, seq: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._acked_cond:
            while self.acked < seq:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._acked_cond.wait(left)
        return True

    @property
    def receiver_up(self) -> bool:
        return self.seconds_since_heard() < 3 * self.heartbeat

    def seconds_since_heard(self) -> float:
        return time.monotonic() - self._last_heard if self._last_heard else float("inf")

    def stop(self) -> None:
        self._stopping.set()
        self.wake()
        self.join()

    # ------------------------------------------------------------ link thread

    def run(self) -> None:
        poller = self._poller
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        next_hello = 0.0
        blocked = False
        revoked = False  # lent views taken back for the map's growth now pending
        try:
            while not self._stopping.is_set():
                now = time.monotonic()
                if now >= next_hello:
                    self._send_hello()
                    next_hello = now + self.heartbeat
                timeout = max(0.0, next_hello - now)
                stall = self.window.timeout(now)
                if stall is not None:
                    timeout = min(timeout, stall)
                if blocked:
                    timeout = min(timeout, 0.02)
                for sock, _ in poller.poll(timeout * 1000):  # type: ignore[arg-type]  # ms, float ok
                    if sock is self._dealer:
                        self._take_replies()
                    elif sock is self._push.monitor:
                        self._take_disconnects()
                    else:
                        with contextlib.suppress(BlockingIOError):
                            os.read(self._wake_r, 4096)
                self._check_stall()
                if self.spool.env.resize_waiting:
                    if not revoked and self._push.lender.open_loans:
                        # the map waits for views zmq still holds: drop them with the connection
                        self._reconnect("spool map must grow")
                        revoked = True
                else:
                    revoked = False
                self._release()
                blocked = self._pump()
            self._take_replies()
            self._release(force=True)
        except Exception:
            log.exception("producer link failed; messages stay spooled")
        finally:
            self._close_sockets()

    def _close_sockets(self) -> None:
        if ended := self._push.close():
            log.debug("%d spool reads still lent to zmq ended with its connection", ended)
        self._dealer.close(linger=0)
        self._close_context()

    def _close_context(self) -> None:
        self._ctx.term()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _send_hello(self) -> None:
        hello = proto.Hello(self.spool.sender_id, self.spool.incarnation)
        with contextlib.suppress(zmq.Again):
            self._dealer.send(proto.encode(proto.Kind.HELLO, hello), zmq.NOBLOCK)

    def _take_replies(self) -> None:
        while True:
            try:
                frame = self._dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                kind = proto.peek_kind(frame)
                if kind == proto.Kind.ACK:
                    ack = proto.decode(kind, proto.Ack, frame)
                    if ack.incarnation == self.spool.incarnation:
                        self._on_ack(ack.last_seq)
                elif kind == proto.Kind.GAP:
                    gap = proto.decode(kind, proto.Gap, frame)
                    if gap.incarnation == self.spool.incarnation:
                        self._on_gap(gap)
                else:
                    log.warning("unexpected %s message from receiver ignored", kind.name)
            except ProtocolError as err:
                log.warning("malformed message from receiver ignored: %s", err)

    def _reconnect(self, why: str) -> None:
        """A new connection for the ingest's, and a resend from the oldest unacknowledged.

        What sat in the old one's queue is lost, and what libzmq kept of it (a
        message cut by a break), with the spool reads lent to it, ends with its
        context (push.py).
        """
        ended = self._push.replace()
        self.window.on_disconnect(time.monotonic())
        log.info(
            "%s; resending from seq %d on a new connection to %s (%d spool reads ended)",
            why,
            self.acked + 1,
            self.p.ingest,
            ended,
        )

    def _take_disconnects(self) -> None:
        if self._push.broke():
            self._reconnect("connection to the receiver broke")

    def _on_ack(self, last_seq: int) -> None:
        now = time.monotonic()
        self._last_heard = now
        self._acked_moved(self.window.on_ack(last_seq, self.spool.next_seq - 1, now))

    def _on_gap(self, gap: proto.Gap) -> None:
        now = time.monotonic()
        self._last_heard = now
        before = self.window.acked
        rewind = self.window.on_gap(gap.expected, gap.epoch, self.spool.next_seq - 1, now)
        self._acked_moved(self.window.acked - before)
        if rewind is not None:
            log.debug("receiver asks to resend from seq %d", gap.expected)

    def _acked_moved(self, newly: int) -> None:
        if newly <= 0:
            return
        if self.p.metrics is not None:
            self.p.metrics.acked.inc(newly)
        with self._acked_cond:
            self.acked = self.window.acked
            self._acked_cond.notify_all()

    def _check_stall(self) -> None:
        probe = self.window.tick(time.monotonic())
        if probe is not None:
            # A lost tail and a receiver that cannot commit (disk full) look the same from
            # here: the window resends one batch as a probe and waits twice as long next.
            log.info("no ack for %.2f s; resending seq %d as a probe", probe.waited, probe.seq)

    def _release(self, force: bool = False) -> None:
        """Free acknowledged messages from the spool (not necessarily at once)."""
        if self.acked <= self._released:
            return
        waiting = self.p._space_waiters > 0
        idle = not self.window.in_flight
        if not (force or waiting or self.acked - self._released >= 256 or idle):
            return
        if force:
            self.spool.release(self.acked)
        elif self.spool.try_release(self.acked) is None:
            return  # an append holds the spool, maybe growing its map: never wait for it here
        self._released = self.acked
        with self.p._space:
            self.p._space.notify_all()

    def _read(
        self, start: int, max_bytes: int
    ) -> tuple[list[Outgoing] | SpooledRun | None, Loan | None]:
        """Spooled messages to send; large payloads as views of the spool's map, lent to zmq.

        Messages of a spool batch come as a :class:`SpooledRun`: slices of its block,
        no step per message. The loan must be ended once the send call is done (see
        lending.py). None (try again shortly) while loans are out and none can be
        opened: too many, or the map waits to grow, which a blocking read would wait
        for too.
        """
        lender = self._push.lender
        loan = lender.open()
        if loan is None:
            if lender.open_loans:
                return None, None
            return self.spool.read(start, self.MAX_BATCH_MESSAGES, max_bytes), None
        try:
            run = self.spool.read_run(loan.txn, start, self.MAX_BATCH_MESSAGES, max_bytes)
            if run is not None:
                if len(run.payloads) >= ZERO_COPY_BYTES:
                    run.payloads = loan.lend(run.payloads)
                return run, loan
            batch = self.spool.read_views(loan.txn, start, self.MAX_BATCH_MESSAGES, max_bytes)
        except BaseException:
            loan.end()
            raise
        for out in batch:
            if len(out.payload) >= ZERO_COPY_BYTES:
                out.payload = loan.lend(out.payload)
        return batch, loan

    def _pump(self) -> bool:
        """Send spooled messages within the window; True if the socket pushed back."""
        window = self.window
        while (send := window.next_send(self.spool.next_seq - 1, self.MAX_BATCH_BYTES)) is not None:
            batch, loan = self._read(send.seq, send.max_bytes)
            if batch is None:
                return True
            if not batch:
                if loan is not None:
                    loan.end()
                return False
            envelope = proto.Envelope(
                self.spool.sender_id, self.spool.incarnation, send.floor, send.epoch
            )
            frames = _frames(envelope, batch)
            try:
                taken = send_parts(self._push.socket, frames)
            except zmq.Again:
                return True
            finally:
                if loan is not None:
                    loan.end()  # zmq holds what it still needs: lent views (lending.py)
            if taken < len(frames):
                self._reconnect(f"connection broke in the middle of a message ({taken} parts sent)")
                return True
            if isinstance(batch, SpooledRun):
                window.on_sent_run(batch.first, batch.sizes)
            else:
                window.on_sent([(out.seq, len(out.payload)) for out in batch])
            if self.p.metrics is not None:
                self.p.metrics.sent.inc(len(batch))
        return False


def _frames(envelope: proto.Envelope, batch: list[Outgoing] | SpooledRun) -> list:
    """The zmq frames of one ingest message of ``batch``.

    A batch whose payloads are all small goes as DATA_PACKED (ADR 0002); a spool
    batch's run as its block keeps it, the headers joined and the payloads joined.
    """
    if isinstance(batch, SpooledRun):
        headers = proto.encode_packed_joined(len(batch), batch.headers, batch.sizes)
        return [proto.encode(proto.Kind.DATA_PACKED, envelope), headers, batch.payloads]
    if all(len(out.payload) < PACK_BELOW_BYTES for out in batch):
        sizes = [len(out.payload) for out in batch]
        headers = proto.encode_packed([out.header for out in batch], sizes)
        joined = b"".join(out.payload for out in batch)
        return [proto.encode(proto.Kind.DATA_PACKED, envelope), headers, joined]
    frames: list[bytes | memoryview] = [proto.encode(proto.Kind.DATA, envelope)]
    for out in batch:
        frames.append(out.header)
        frames.append(out.payload)
    return frames
