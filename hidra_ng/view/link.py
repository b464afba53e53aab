"""The view's side of the receiver: blocking hidra_ng clients behind an asyncio face.

* :class:`ReceiverLink` runs :class:`~hidra_ng.Consumer` calls (streams, info,
  last, get) in a small thread pool, one Consumer per thread (a Consumer is not
  thread-safe). A call the receiver does not answer raises ReceiverUnavailable
  and that thread's Consumer is replaced, so no stale request waits in its queue.
* :class:`StreamTable` is the stream list with rates, one receiver request per
  refresh however many browsers ask.
* :class:`LiveFeed` is one :class:`~hidra_ng.Subscriber` per watched stream,
  shared by every browser watching it. It keeps exactly one frame, the newest:
  a browser that is behind gets the newest when it is ready for the next, so
  nothing here grows with the frames a browser missed (SPEC §3 G6). Live
  indices are provisional (published before the receiver's fsync) and may be
  ahead of the store's; after a receiver crash the live feed may go back, and
  the feed follows it (see :meth:`LiveFeed.offer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from hidra_ng.client.consumer import Consumer
from hidra_ng.client.subscriber import Subscriber
from hidra_ng.errors import HidraError, ReceiverUnavailable
from hidra_ng.shards import ShardMap
from hidra_ng.wire.frames import Frame
from hidra_ng.wire.protocol import StreamInfo

log = logging.getLogger(__name__)

# a live feed that got nothing this long while the store has newer frames catches up
CATCH_UP_SECONDS = 1.0


class ReceiverLink:
    """Consumer calls from asyncio, and the live feeds, for one receiver."""

    def __init__(
        self,
        api: str,
        publish: str,
        *,
        keys_dir: str | None = None,
        server_key_dir: str | None = None,
        request_timeout: float = 2.0,
        threads: int = 4,
        shards: ShardMap | None = None,
    ) -> None:
        #: SPEC §14: a shard map, so every receiver's streams, each from its own receiver
        self.shards = shards
        self.api = api if shards is None else ", ".join(s.api for s in shards.shards)
        self.publish = publish if shards is None else ", ".join(s.publish for s in shards.shards)
        self.request_timeout = request_timeout
        self._keys = {"keys_dir": keys_dir or None, "server_key_dir": server_key_dir or None}
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="hidra-ng-view-api")
        # requests that wait for a future index have threads of their own, so a few of
        # them never hold up the stream list or the live view's other requests
        self._waits = ThreadPoolExecutor(threads, thread_name_prefix="hidra-ng-view-wait")
        self._local = threading.local()
        self._consumers: set[Consumer] = set()
        self._lock = threading.Lock()
        self._feeds: dict[str, LiveFeed] = {}
        self.in_flight = 0  # Consumer calls running now

    def check_keys(self) -> None:
        """Load the keys once, so a wrong key directory fails before the server starts."""
        self._consumer().close()

    def _consumer(self) -> Consumer:
        return Consumer(
            self.api, request_timeout=self.request_timeout, shards=self.shards, **self._keys
        )

    # ------------------------------------------------------------ requests

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """``Consumer.<method>(*args, **kwargs)`` in a pool thread."""
        loop = asyncio.get_running_loop()
        job = functools.partial(self._call, method, args, kwargs)
        pool = self._waits if kwargs.get("timeout", 0) > 0 else self._pool
        return await loop.run_in_executor(pool, job)

    def _call(self, method: str, args: tuple, kwargs: dict) -> Any:
        consumer = getattr(self._local, "consumer", None)
        if consumer is None:
            consumer = self._consumer()
            self._local.consumer = consumer
            with self._lock:
                self._consumers.add(consumer)
        with self._lock:
            self.in_flight += 1
        try:
            return getattr(consumer, method)(*args, **kwargs)
        except ReceiverUnavailable:
            # a fresh socket next time: nothing of this one's queue reaches the receiver later
            self._local.consumer = None
            with self._lock:
                self._consumers.discard(consumer)
            consumer.close()
            raise
        finally:
            with self._lock:
                self.in_flight -= 1

    # -------------------------------------------------------------- feeds

    def feed(self, stream: str) -> LiveFeed:
        """The live feed of ``stream``, started on first use; call :meth:`release` after."""
        with self._lock:
            feed = self._feeds.get(stream)
            if feed is None:
                feed = LiveFeed(stream, self.publish, self.api, self._keys, self.shards)
                self._feeds[stream] = feed
                feed.start()
            feed.users += 1
            return feed

    def release(self, feed: LiveFeed) -> None:
        """One watcher fewer; the last one stops the feed (its Subscriber leaves)."""
        with self._lock:
            feed.users -= 1
            if feed.users > 0:
                return
            del self._feeds[feed.stream]
        feed.stop()

    def feeds(self) -> dict[str, LiveFeed]:
        with self._lock:
            return dict(self._feeds)

    def close(self) -> None:
        with self._lock:
            feeds = list(self._feeds.values())
            self._feeds.clear()
        for feed in feeds:
            feed.stop()
        for pool in (self._pool, self._waits):
            pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            consumers = list(self._consumers)
            self._consumers.clear()
        for consumer in consumers:
            consumer.close()


class LiveFeed:
    """The newest live frame of one stream, from a Subscriber running in its own thread."""

    def __init__(
        self,
        stream: str,
        publish: str,
        api: str,
        keys: dict[str, str | None],
        shards: ShardMap | None = None,
    ) -> None:
        self.stream = stream
        self.users = 0
        self.received = 0  # live frames taken from the Subscriber
        self._latest: Frame | None = None
        self._live_index = -1  # index of the Subscriber's last frame
        self.updated = time.monotonic()  # when the newest frame last changed
        self._listeners: set[Callable[[], None]] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        # a small buffer: the Subscriber keeps the newest frames, this keeps only one
        # with a shard map the Subscriber takes the stream's own receiver's publish and api
        self._sub = Subscriber(
            publish,
            [stream],
            api=None if shards is not None else api,
            buffer_frames=2,
            shards=shards,
            **keys,
        )
        self._thread = threading.Thread(
            target=self._run, name=f"hidra-ng-view-feed-{stream}", daemon=True
        )

    @property
    def latest(self) -> Frame | None:
        return self._latest

    def offer(self, frame: Frame, *, replace: bool = False) -> None:
        """Take ``frame`` as the newest if it is newer (also a stored one, e.g. ``last``).

        ``replace``: take it even if not, because the one shown is gone: the live feed
        went back after a receiver crash, or the store never got a provisional frame.
        """
        with self._lock:
            if not replace and self._latest is not None and frame.index <= self._latest.index:
                return
            self._latest, self.updated = frame, time.monotonic()
            listeners = list(self._listeners)
        for wake in listeners:
            wake()

    def listen(self, wake: Callable[[], None]) -> None:
        """Call ``wake()`` (from the feed thread) whenever a newer frame is there."""
        with self._lock:
            self._listeners.add(wake)

    def unlisten(self, wake: Callable[[], None]) -> None:
        with self._lock:
            self._listeners.discard(wake)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                frame = self._sub.receive(timeout=0.2)
            except HidraError as err:  # a frame that cannot be decoded costs only itself
                log.warning("live frame of %s ignored: %s", self.stream, err)
                continue
            if frame is not None:
                self.received += 1
                # the Subscriber yields an index not above its last only after a restart
                went_back, self._live_index = frame.index <= self._live_index, frame.index
                self.offer(frame, replace=went_back)

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join()
        with contextlib.suppress(Exception):
            self._sub.close()


class StreamTable:
    """The receiver's streams with their rates; one request per ``max_age`` at most.

    The rate of a stream is the advance of its last index over the time between
    two refreshes at least a second apart (frames per second, 0 when idle).
    """

    def __init__(self, link: ReceiverLink, max_age: float = 0.5) -> None:
        self.link = link
        self.max_age = max_age
        self.up: bool | None = None  # None: not asked yet
        self.error = ""
        self.changed = time.time()  # when up last changed
        self._rows: list[dict[str, Any]] = []
        self._fetched = 0.0
        self._pending: asyncio.Future | None = None
        self._samples: dict[str, tuple[float, int, float]] = {}  # name -> (t, last, rate)

    async def rows(self) -> list[dict[str, Any]]:
        """The stream rows; raises ReceiverUnavailable (naming it) when it does not answer."""
        if time.monotonic() - self._fetched < self.max_age and self.up:
            return self._rows
        if self._pending is None:
            self._pending = asyncio.ensure_future(self._refresh())
        pending = self._pending
        try:
            return await asyncio.shield(pending)
        finally:
            if self._pending is pending and pending.done():
                self._pending = None

    async def _refresh(self) -> list[dict[str, Any]]:
        try:
            if self.link.shards is None:
                infos = await self.link.call("streams")
                where: list[str] | None = None
                down = ""
            else:
                infos, where, down = await self._every_receiver()
        except ReceiverUnavailable as err:
            self._set_up(False, str(err))
            raise
        now = time.monotonic()
        rows = []
        for i, info in enumerate(infos):
            last = -1 if info.last is None else info.last
            t0, last0, rate = self._samples.get(info.name, (now, last, 0.0))
            if now - t0 >= 1.0:
                rate = max(0, last - last0) / (now - t0)
                self._samples[info.name] = (now, last, rate)
            elif info.name not in self._samples:
                self._samples[info.name] = (now, last, 0.0)
            rows.append(
                {
                    "name": info.name,
                    "first": info.first,
                    "last": info.last,
                    "count": info.count,
                    "bytes": info.bytes,
                    "finished": info.finished,
                    "rate_hz": round(rate, 2),
                }
            )
            if where is not None:
                rows[-1]["receiver"] = where[i]
        names = {r["name"] for r in rows}
        for gone in set(self._samples) - names:  # bounded by the streams there are
            del self._samples[gone]
        self._rows, self._fetched = rows, now
        self._set_up(not down, down)
        await self._catch_up(infos, now)
        return rows

    async def _every_receiver(self) -> tuple[list[StreamInfo], list[str], str]:
        """With a shard map: the streams of the receivers that answer, the receiver of each,
        and what the others said ('' when all answered); raises when none answers."""
        answered, down = await self.link.call("streams_answered")
        said = "; ".join(f"receiver {name} did not answer: {err}" for name, err in down.items())
        assert self.link.shards is not None
        if len(down) == len(self.link.shards.shards):
            raise ReceiverUnavailable(said)
        return [info for _, info in answered], [name for name, _ in answered], said

    async def _catch_up(self, infos: list[StreamInfo], now: float) -> None:
        """A watched stream whose live feed fell behind what is stored, and got nothing for
        CATCH_UP_SECONDS, gets its newest stored frame: live frames published while the
        Subscriber was reconnecting (a receiver restart) are not resent, and a page must not
        stay on an old frame of a stream that moved on. A live frame still ahead of the
        store after that long was provisional and lost in a receiver crash (its commit
        takes milliseconds): the newest stored frame replaces it."""
        feeds = self.link.feeds()
        for info in infos:
            feed = feeds.get(info.name)
            if feed is None or info.last is None or now - feed.updated < CATCH_UP_SECONDS:
                continue
            latest = feed.latest
            if latest is None or latest.index != info.last:
                with contextlib.suppress(HidraError):
                    stored = await self.link.call("last", info.name)
                    feed.offer(stored, replace=latest is not None and latest.index > stored.index)

    def _set_up(self, up: bool, error: str) -> None:
        if up != self.up:
            self.changed = time.time()
            if up:
                log.info("receiver at %s answers", self.link.api)
            else:
                log.warning("%s; asking again while browsers look", error)
        self.up, self.error = up, error
