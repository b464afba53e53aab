"""``hidra-ng bridge``: every durable frame of chosen streams into RabbitMQ streams (SPEC §13).

Threads:

* ``bridge-broker``: an asyncio loop that owns the broker connection (publisher.py). Per
  hidra stream it declares one publisher (reference ``hidra-ng-bridge`` on the
  stream's own broker stream), asks the broker for the last publishing id it
  stored and publishes from there, strictly in index order, with publishing
  id = index + 1 (the broker drops any id it already has: exactly once). On a
  lost connection it waits with back-off, reconnects and asks again; messages
  not confirmed by then are published again (and deduplicated if they had
  arrived after all).
* ``bridge-discover``: reads the receiver's stream list every ``poll_seconds``
  for new streams matching the patterns, and the lag of every stream.
* one ``bridge-read-STREAM`` per stream being bridged (reader.py).

Memory is bounded by ``max_inflight_bytes`` (all streams) and
``max_inflight_frames`` (per stream): what was read and is not yet confirmed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence

from hidra_ng.bridge.lock import StateLock
from hidra_ng.bridge.publisher import STOP_CONFIRMS_SECONDS, STOP_RELEASE_SECONDS, Link, Publisher
from hidra_ng.bridge.reader import Budget, Chunk, Reader
from hidra_ng.bridge.uri import parse
from hidra_ng.client.consumer import Consumer
from hidra_ng.config import BridgeConfig
from hidra_ng.errors import HidraError
from hidra_ng.metrics import BridgeMetrics, serve
from hidra_ng.patterns import Patterns
from hidra_ng.service import Heartbeats

log = logging.getLogger(__name__)

ALIVE_SECONDS = 60.0
GATHER_SECONDS = 0.001


class Bridge:
    """The daemon (service.Daemon protocol): start, alive, status, stop.

    It reads (one Reader thread per stream), discovers streams, and hands both
    to its Publisher, the broker side (publisher.py).
    """

    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        self.address = parse(config.rabbitmq)
        self.patterns = Patterns(config.streams)
        self.metrics = BridgeMetrics()
        self.budget = Budget(config.max_inflight_bytes)
        self.beats = Heartbeats()
        self._stop = threading.Event()
        self._frame_slots: dict[str, Budget] = {}
        self._receiver_up = False
        self._unmatched_told: set[str] = set()
        self.publisher = Publisher(
            config,
            self.address,
            self.metrics,
            self.beats,
            self._stop,
            start_reader=self._start_reader,
            drop=self._drop,
            forget=self._forget,
        )
        self._lock = StateLock(
            config.state_dir, api=config.api, rabbitmq=str(self.address), prefix=config.prefix
        )
        self._lock.acquire()
        self._threads: list[threading.Thread] = []
        try:
            asyncio.run(self.publisher.first_lease())
            self._metrics_server = serve(self.metrics.registry, config.metrics_port)
        except BaseException:
            self._lock.release()
            raise
        self.metrics.broker_up.set(0)

    # what the tests and perf/bridge.py look at
    @property
    def _links(self) -> dict[str, Link]:
        return self.publisher.links

    @property
    def _finished(self) -> set[str]:
        return self.publisher.finished

    @property
    def _broker_up(self) -> bool:
        return self.publisher.broker_up

    # ------------------------------------------------------------- daemon api

    def start(self) -> None:
        ready = threading.Event()
        broker = threading.Thread(
            target=self.publisher.run, args=(ready,), name="bridge-broker", daemon=True
        )
        broker.start()
        ready.wait()
        discover = threading.Thread(target=self._discover, name="bridge-discover", daemon=True)
        discover.start()
        self._threads = [broker, discover]
        log.info(
            "bridging %s from %s to %s as %s.*",
            ", ".join(self.patterns.patterns),
            self.config.api,
            self.address,
            self.config.prefix,
        )

    def alive(self) -> bool:
        if self.publisher.failed is not None:
            return False
        return all(t.is_alive() for t in self._threads) and self.beats.fresh(ALIVE_SECONDS)

    def status(self) -> str:
        pending = sum(link.held() for link in self._links.values())
        return (
            f"broker {'up' if self.publisher.broker_up else 'DOWN'}, receiver"
            f" {'up' if self._receiver_up else 'DOWN'}; {len(self._links)} streams,"
            f" {len(self._finished)} finished, {pending} messages in flight"
        )

    def stop(self) -> None:
        """Stop reading, wait for outstanding confirms (bounded), close."""
        self._stop.set()
        # within service.STOP_TIMEOUT_SECONDS: the confirms, then closing the connection
        for thread in self._threads:
            thread.join(STOP_CONFIRMS_SECONDS + 2 * STOP_RELEASE_SECONDS + 2)
        if self._metrics_server is not None:
            self._metrics_server.shutdown()
            self._metrics_server.server_close()
        self._lock.release()

    # ---------------------------------------------------------------- readers

    def _consumer(self) -> Consumer:
        return Consumer(
            self.config.api,
            keys_dir=self.config.keys_dir or None,
            server_key_dir=self.config.server_key_dir or None,
        )

    def _start_reader(self, link: Link, start: int) -> None:
        """A new reader of ``link`` from index ``start``; an old one becomes stale."""
        if link.reader is not None:
            link.reader.stale.set()
        self._drop(link, list(link.unconfirmed) + list(link.inbox))
        link.unconfirmed.clear()
        link.inbox.clear()
        slots = self._frame_slots.setdefault(link.name, Budget(self.config.max_inflight_frames))
        loop = self.publisher.loop
        assert loop is not None
        # items reach the loop in batches: one wake-up per batch, not per frame
        pending: list[Chunk] = []
        guard = threading.Lock()

        def flush() -> None:
            with guard:
                items = pending[:]
                pending.clear()
            self._arrived(link, reader, items)

        def soon() -> None:
            # a wake-up of the loop costs a GIL hand-over: let frames gather 1 ms first
            loop.call_later(GATHER_SECONDS, flush)

        def deliver(items: list[Chunk]) -> None:
            with guard:
                first = not pending
                pending.extend(items)
            if first:
                with contextlib.suppress(RuntimeError):  # a closed loop: the bridge stops
                    loop.call_soon_threadsafe(soon)

        reader = Reader(
            link.name,
            start,
            consumer=self._consumer,
            deliver=deliver,
            budget=self.budget,
            frames=slots,
            full=self.config.payload == "full",
            stop=self._stop,
            on_gone=lambda n: self.metrics.gone.labels(link.name).inc(n),
            on_receiver=self._set_receiver,
        )
        link.reader = reader
        reader.start()

    def _forget(self, name: str) -> None:
        """A stream is retired: its frame slots go."""
        self._frame_slots.pop(name, None)

    def _set_receiver(self, up: bool) -> None:
        if up != self._receiver_up:
            self._receiver_up = up
            self.metrics.receiver_up.set(int(up))
            if up:
                log.info("bridge: receiver at %s answers", self.config.api)

    def _arrived(self, link: Link, reader: Reader, items: list[Chunk]) -> None:
        if reader is not link.reader or reader.stale.is_set():
            self._drop(link, items)
            return
        link.inbox.extend(items)
        link.wake.set()

    def _drop(self, link: Link, chunks: Sequence[Chunk]) -> None:
        if not chunks:
            return
        self.budget.give(sum(chunk.cost for chunk in chunks))
        slots = self._frame_slots.get(link.name)
        if slots is not None:
            slots.give(sum(chunk.count for chunk in chunks))

    # ------------------------------------------------------------- discovery

    def _discover(self) -> None:
        told_down = False
        with self._consumer() as consumer:
            while not self._stop.is_set():
                self.beats.beat("discover")
                try:
                    infos = consumer.streams()
                except HidraError as err:
                    self._set_receiver(False)
                    if not told_down:
                        log.warning("bridge: %s; waiting for the receiver", err)
                        told_down = True
                    self._stop.wait(self.config.poll_seconds)
                    continue
                told_down = False
                self._set_receiver(True)
                chosen = [i for i in infos if self.patterns(i.name)]
                self._tell_unmatched([i.name for i in infos])
                loop = self.publisher.loop
                if loop is not None and not loop.is_closed():
                    try:
                        loop.call_soon_threadsafe(self.publisher.update, chosen)
                    except RuntimeError:
                        return  # the loop closed: stopping
                self._stop.wait(self.config.poll_seconds)

    def _tell_unmatched(self, names: list[str]) -> None:
        for pattern in self.patterns.unmatched(names):
            if pattern not in self._unmatched_told:
                self._unmatched_told.add(pattern)
                log.warning(
                    "bridge: pattern %r matches no stream of the receiver at %s yet; waiting"
                    " for one (streams created later are bridged)",
                    pattern,
                    self.config.api,
                )
        for pattern in list(self._unmatched_told):
            if pattern not in self.patterns.unmatched(names):
                self._unmatched_told.discard(pattern)
                log.info("bridge: pattern %r now matches a stream", pattern)
