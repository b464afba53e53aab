"""The bridge's broker side: one connection, a publisher per hidra stream, confirms.

Runs in the ``bridge-broker`` thread, an asyncio loop (see daemon.py). Per hidra
stream it declares one publisher (reference ``hidra-ng-bridge`` on the stream's
own broker stream), asks the broker for the last publishing id it stored and
publishes from there, strictly in index order, with publishing id = index + 1
(the broker drops any id it already has: exactly once), many messages per
Publish frame, no sub-entry batching. On a lost connection it waits with
back-off, reconnects and asks again; messages not confirmed by then are
published again (and deduplicated if they had arrived after all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence

from hidra_ng.bridge.broker import BrokerError, BrokerLink
from hidra_ng.bridge.lease import Lease, LeaseHeld
from hidra_ng.bridge.names import broker_name
from hidra_ng.bridge.reader import Chunk, Reader
from hidra_ng.bridge.uri import BrokerAddress
from hidra_ng.config import BridgeConfig
from hidra_ng.errors import ConfigError
from hidra_ng.metrics import BridgeMetrics
from hidra_ng.service import Heartbeats
from hidra_ng.wire.protocol import StreamInfo

log = logging.getLogger(__name__)

BACKOFF_SECONDS = (0.5, 1.0, 2.0, 4.0, 8.0, 15.0)
TICK_SECONDS = 0.5
# SIGTERM: confirms, lease release and close, all within service.STOP_TIMEOUT_SECONDS (30)
STOP_CONFIRMS_SECONDS = 15.0
STOP_RELEASE_SECONDS = 5.0
BATCH_FRAMES = 64
BATCH_WAIT_SECONDS = 0.002


class Link:
    """One hidra stream on its way to its broker stream."""

    def __init__(self, info: StreamInfo, prefix: str) -> None:
        self.name = info.name
        self.broker = broker_name(info.name, prefix)
        self.info = info
        self.pid: int | None = None
        self.inbox: deque[Chunk] = deque()  # read, not yet published
        self.unconfirmed: deque[Chunk] = deque()  # published, in index order
        self.confirmed_next = 0  # every index below is in the broker
        self.reader: Reader | None = None
        self.wake = asyncio.Event()
        self.done = False

    def held(self) -> int:
        """Messages read and not yet confirmed."""
        return sum(c.count for c in self.unconfirmed) + sum(c.count for c in self.inbox)

    def settle(self, ids: Sequence[int]) -> tuple[int, list[Chunk]]:
        """Confirmed publishing ``ids``: how many of them were pending, and the chunks
        now wholly confirmed, in order (a chunk confirmed before an earlier one waits)."""
        low, high = min(ids), max(ids)
        confirmed = 0
        for chunk in self.unconfirmed:  # in order: publishing ids first + 1 .. stop
            if chunk.first >= high:
                break
            if chunk.stop >= low:
                before = len(chunk.pending)
                chunk.pending.difference_update(ids)
                confirmed += before - len(chunk.pending)
        done: list[Chunk] = []
        while self.unconfirmed and not self.unconfirmed[0].pending:
            done.append(self.unconfirmed.popleft())
        return confirmed, done

    def first_pending(self) -> int | None:
        """Index of the first message held here (unconfirmed first), else the reader's next."""
        if self.unconfirmed:
            return self.unconfirmed[0].first
        if self.inbox:
            return self.inbox[0].first
        return self.reader.next_index if self.reader else None


class Publisher:
    """The broker loop and the links of every hidra stream being bridged."""

    def __init__(
        self,
        config: BridgeConfig,
        address: BrokerAddress,
        metrics: BridgeMetrics,
        beats: Heartbeats,
        stop: threading.Event,
        *,
        start_reader: Callable[[Link, int], None],
        drop: Callable[[Link, Sequence[Chunk]], None],
        forget: Callable[[str], None],
    ) -> None:
        self.config = config
        self.address = address
        self.metrics = metrics
        self.beats = beats
        self.stop = stop
        self._start_reader = start_reader
        self._drop = drop
        self._forget = forget  # a stream is retired: its frame slots go
        self.links: dict[str, Link] = {}
        self.by_pid: dict[int, Link] = {}
        self.finished: set[str] = set()  # streams whose end message the broker has
        self.loop: asyncio.AbstractEventLoop | None = None
        self._link: BrokerLink | None = None
        self.broker_up = False
        self.failed: BaseException | None = None
        self._lease = Lease(address, config.prefix, config.state_dir, config.api)

    def update(self, infos: list[StreamInfo]) -> None:
        """(loop) New streams get a link; lag of every link."""
        for info in infos:
            if info.name in self.finished:
                self.metrics.lag_frames.labels(info.name).set(0)
                continue
            link = self.links.get(info.name)
            if link is None:
                link = self.links[info.name] = Link(info, self.config.prefix)
                log.info("bridge: %r -> broker stream %s", info.name, link.broker)
                for counter in (self.metrics.published, self.metrics.gone):
                    counter.labels(info.name)  # exposed at 0 from the start
            link.info = info
            stored = 0 if info.last is None else info.last + 1
            self.metrics.lag_frames.labels(info.name).set(max(0, stored - link.confirmed_next))
        self.metrics.streams.set(len(self.links))

    async def first_lease(self) -> None:
        """Before READY: refuse to start (exit 2) if another bridge holds the broker lease.

        A broker that cannot be reached now is no reason not to start: the lease
        is then taken when it can be, before anything is published."""
        link = BrokerLink(self.address, lambda _pid, ids: self._lease.on_confirm(ids), _ignore)
        try:
            await link.open()
        except BrokerError as err:
            log.info("bridge: %s; the broker lease is taken once it answers", err)
            return
        try:
            await self._lease.acquire(link)
        except LeaseHeld as held:
            raise ConfigError(
                f"another bridge, {held}, holds the broker lease {self._lease.stream} at"
                f" {self.address}; one bridge per receiver and prefix: stop that one first"
            ) from None
        except BrokerError as err:
            log.info("bridge: %s; the broker lease is taken once it answers", err)
        finally:
            self._lease.detach()
            await link.close()

    def run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        ready.set()
        try:
            loop.run_until_complete(self._broker_main())
        except BaseException as err:
            self.failed = err
            log.exception("bridge: the broker loop failed")
        finally:
            loop.close()

    async def _broker_main(self) -> None:
        failures = 0
        while not self.stop.is_set():
            link = BrokerLink(self.address, self._on_confirm, self._on_error)
            try:
                await link.open()
            except BrokerError as err:
                self._set_broker(False)
                delay = BACKOFF_SECONDS[min(failures, len(BACKOFF_SECONDS) - 1)]
                if failures == 0:
                    log.warning("bridge: %s; retrying with back-off", err)
                else:
                    log.info("bridge: %s; retrying in %.1f s", err, delay)
                failures += 1
                await self._pause(delay)
                continue
            failures = 0
            self._set_broker(True)
            self._link = link
            try:
                await self._lease.acquire(link)
                await self._session(link)
            except LeaseHeld as held:
                log.error(
                    "bridge: another bridge, %s, holds the broker lease %s; stopping",
                    held,
                    self._lease.stream,
                )
                self.failed = held
                return
            except BrokerError as err:
                log.warning("bridge: %s; reconnecting", err)
            finally:
                self._set_broker(False)
                self._detach_all()
                self._lease.detach()
                await link.close()
                self._link = None
            if not self.stop.is_set():
                await self._pause(BACKOFF_SECONDS[0])

    async def _pause(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self.stop.is_set() and time.monotonic() < deadline:
            self.beats.beat("broker")
            await asyncio.sleep(min(TICK_SECONDS, deadline - time.monotonic()))

    def _set_broker(self, up: bool) -> None:
        if up != self.broker_up:
            self.broker_up = up
            self.metrics.broker_up.set(int(up))
            if up:
                log.info("bridge: connected to broker %s", self.address)

    async def _session(self, broker: BrokerLink) -> None:
        pumps: dict[str, asyncio.Task] = {}
        try:
            while True:
                self.beats.beat("broker")
                if broker.closed.is_set() or not broker.alive:
                    raise BrokerError(f"lost the connection to broker {self.address}")
                if self.stop.is_set():
                    await self._drain(broker)
                    try:
                        await asyncio.wait_for(self._lease.release(broker), STOP_RELEASE_SECONDS)
                    except (TimeoutError, BrokerError) as err:
                        log.info("bridge: the broker lease was not released (%r)", err)
                    return
                await self._lease.renew(broker)
                for name, link in list(self.links.items()):
                    if link.done:
                        await self._retire(broker, link, pumps.pop(name, None))
                    elif link.pid is None and broker.has_free_publisher():
                        await self._attach(broker, link)
                        if not link.done:
                            pumps[name] = asyncio.create_task(self._pump(broker, link))
                for name, task in list(pumps.items()):
                    if task.done():
                        pumps.pop(name)
                        task.result()  # raises the pump's BrokerError
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(broker.closed.wait(), TICK_SECONDS)
        finally:
            for task in pumps.values():
                task.cancel()
            for task in pumps.values():
                with contextlib.suppress(asyncio.CancelledError, BrokerError):
                    await task

    async def _attach(self, broker: BrokerLink, link: Link) -> None:
        """Declare the publisher of ``link`` and go on from what the broker has."""
        await broker.ensure_stream(link.broker)
        last_id = await broker.last_publishing_id(link.broker)
        info = link.info
        if info.finished:
            end_id = (0 if info.last is None else info.last + 1) + 1
            if last_id >= end_id:
                link.done = True  # bridged completely before (by an earlier run)
                link.confirmed_next = end_id - 1
                log.info(
                    "bridge: %r finished; all %d frames in the broker already",
                    link.name,
                    end_id - 1,
                )
                return
        link.pid = await broker.declare_publisher(link.broker)
        self.by_pid[link.pid] = link
        link.confirmed_next = max(link.confirmed_next, last_id)
        # chunks the broker has (some of) are dropped; the rest is published again, in
        # order (dropping part of a chunk leaves a gap: the reader reads from last_id)
        held = list(link.unconfirmed) + list(link.inbox)
        self._drop(link, [c for c in held if c.first < last_id])
        link.unconfirmed.clear()
        link.inbox = deque(c for c in held if c.first >= last_id)
        keep = bool(link.inbox)
        first = link.first_pending()
        gap = first is None or first > last_id  # the broker lacks what comes before
        ended = link.reader is not None and not link.reader.is_alive() and not keep
        if link.reader is None or gap or ended:
            log.debug("bridge: %r: reading from index %d", link.name, last_id)
            self._start_reader(link, last_id)
        link.wake.set()

    async def _pump(self, broker: BrokerLink, link: Link) -> None:
        """Publish ``link``'s inbox in index order, many chunks per Publish frame."""
        limit = broker.frame_max - 4096
        assert link.pid is not None
        while not self.stop.is_set():
            if not link.inbox:
                link.wake.clear()
                await link.wake.wait()
                continue
            if link.unconfirmed and sum(c.count for c in link.inbox) < BATCH_FRAMES:
                # publishes are out already: let a few more frames arrive and send them
                # in one Publish frame (fewer frames and confirms; at most 2 ms later)
                await asyncio.sleep(BATCH_WAIT_SECONDS)
            batch: list[Chunk] = []
            size = count = 0
            while link.inbox and (not batch or size + link.inbox[0].cost < limit):
                chunk = link.inbox.popleft()
                batch.append(chunk)
                size += chunk.cost
                count += chunk.count
                chunk.pending = set(range(chunk.first + 1, chunk.stop + 1))
                link.unconfirmed.append(chunk)
            await broker.publish_entries(link.pid, count, [c.data for c in batch])

    def _on_confirm(self, pid: int, ids: Sequence[int]) -> None:
        if pid == self._lease.pid:
            self._lease.on_confirm(ids)
            return
        link = self.by_pid.get(pid)
        if link is None or not ids:
            return
        confirmed, done = link.settle(ids)
        self.metrics.published.labels(link.name).inc(confirmed)  # as they come, not per chunk
        if not done:
            return
        self._drop(link, done)  # gives back their room
        link.confirmed_next = max(link.confirmed_next, done[-1].stop)
        self.metrics.published_bytes.labels(link.name).inc(sum(c.body_bytes for c in done))
        if done[-1].end:
            link.done = True
            log.info("bridge: %r finished; all %d frames in the broker", link.name, done[-1].first)

    def _on_error(self, pid: int, publishing_id: int, code: int) -> None:
        link = self.by_pid.get(pid)
        name = link.name if link else f"publisher {pid}"
        log.error(
            "bridge: the broker refused message %d of %r (response code %d); reconnecting",
            publishing_id,
            name,
            code,
        )
        if self._link is not None:
            self._link.closed.set()

    async def _retire(self, broker: BrokerLink, link: Link, pump: asyncio.Task | None) -> None:
        if pump is not None:
            pump.cancel()
        if link.pid is not None:
            self.by_pid.pop(link.pid, None)
            await broker.delete_publisher(link.pid)
            link.pid = None
        self.links.pop(link.name, None)
        self._forget(link.name)
        self.finished.add(link.name)
        self.metrics.lag_frames.labels(link.name).set(0)

    async def _drain(self, broker: BrokerLink) -> None:
        """SIGTERM: publish nothing new; wait for what is out to be confirmed."""
        deadline = time.monotonic() + STOP_CONFIRMS_SECONDS
        while any(link.unconfirmed for link in self.links.values()):
            if time.monotonic() > deadline or not broker.alive:
                waiting = sum(c.count for link in self.links.values() for c in link.unconfirmed)
                log.warning(
                    "bridge: stopping with %d messages unconfirmed; the next start publishes"
                    " them again (the broker drops those it has)",
                    waiting,
                )
                return
            self.beats.beat("broker")
            await asyncio.sleep(0.05)

    def _detach_all(self) -> None:
        for link in self.links.values():
            link.pid = None
        self.by_pid.clear()


def _ignore(*_args: object) -> None:
    pass
