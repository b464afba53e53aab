"""Live frames on the receiver's XPUB socket: before the fsync, newest first, a last value.

Owned by the ingest thread (docs/adr/0003-threads.md), which calls
:meth:`LivePublisher.publish` once a batch is planned (its frames have their
indices and Records, receiver/planning.py), before the committer thread writes
and fsyncs it (SPEC G6, docs/adr/0010-committer-thread.md): a viewer never
waits for the disk, nor for the commit before. Such an index is
provisional: if the receiver dies before the fsync, the resent messages take
those indices again, and with several senders on a stream another frame may
get one. Acks, ``get``, ``replay``, ``next``, the bridge and the writer read
only the committed store, never this feed.

Every send is non-blocking: a subscriber whose queue (``publish_hwm``) is full
misses the frame; nothing waits for it.

**Last value.** The newest frame of each stream stays in memory
(:class:`LastValues`), so that a new subscription gets it at once from this
socket alone: the XPUB hands over every subscription (``XPUB_VERBOSE``), and
for each the frames it covers are sent again:

* ``stream + "\\0"`` (one stream; what :class:`~hidra_ng.Subscriber` sends):
  that stream's newest frame, from memory, or else its newest stored frame,
  read from the store (after a restart, or once memory let it go);
* any other prefix, ``""`` (everything) included: the newest frame of every
  stream in memory whose topic starts with it.

PUB cannot address one subscriber, so the others of that topic get the frame
again too; the Subscriber drops a frame it already has (same index, sender
and seq). Memory: at most ``publish_cache_bytes`` of payloads and records
(least recently updated streams go first; a frame larger than that is not
kept), so it is bounded whatever the number of streams.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import zmq

from hidra_ng.errors import HidraError
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.store import Committed, Store
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)

#: payloads at least this big are published without a copy; smaller ones are cheaper copied
ZERO_COPY_BYTES = 64 * 1024
#: bytes counted per kept frame besides its record and payload (the objects around them)
ENTRY_OVERHEAD_BYTES = 256


@dataclass(slots=True)
class _Last:
    """The newest frame of one stream, as published."""

    index: int
    record: bytes
    payload: memoryview | bytes

    @property
    def cost(self) -> int:
        return len(self.record) + len(self.payload) + ENTRY_OVERHEAD_BYTES


class LastValues:
    """The newest frame of each stream, within ``max_bytes`` (least recently updated go)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: collections.OrderedDict[str, _Last] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, stream: str, index: int, record: bytes, payload: memoryview | bytes) -> None:
        self.forget(stream)  # what was kept of it is older in any case
        if len(payload) < ZERO_COPY_BYTES and isinstance(payload, memoryview):
            # a small payload may be a slice of a packed message: keep its bytes, not the batch
            payload = bytes(payload)
        entry = _Last(index, record, payload)
        if entry.cost > self.max_bytes:
            return
        self._entries[stream] = entry
        self.bytes += entry.cost
        while self.bytes > self.max_bytes:
            _, oldest = self._entries.popitem(last=False)
            self.bytes -= oldest.cost

    def get(self, stream: str) -> _Last | None:
        return self._entries.get(stream)

    def forget(self, stream: str) -> None:
        entry = self._entries.pop(stream, None)
        if entry is not None:
            self.bytes -= entry.cost

    def matching(self, prefix: bytes) -> list[tuple[str, _Last]]:
        """Streams whose topic (name + NUL) starts with ``prefix``, with their newest frame."""
        return [
            (stream, entry)
            for stream, entry in self._entries.items()
            if (stream.encode() + b"\0").startswith(prefix)
        ]


class LivePublisher:
    """The XPUB socket's user in the ingest thread: live frames, subscriptions, last values."""

    def __init__(
        self, sock: zmq.Socket, store: Store, metrics: ReceiverMetrics, cache_bytes: int
    ) -> None:
        self.sock = sock
        self.store = store
        self.metrics = metrics
        self.last = LastValues(cache_bytes)
        self._exact: set[bytes] = set()  # topics "stream\0" someone subscribes to
        self._prefixes: set[bytes] = set()  # other topics ("" = everything)
        #: trackers of the large live frames published since the last take_leaving()
        self._leaving: list[zmq.MessageTracker] = []

    # ---------------------------------------------------------------- frames

    def publish(self, committed: Sequence[Committed], done: dict[str, int] | None = None) -> None:
        """Send each frame to its subscribers (never blocking) and keep each stream's newest.

        ``done`` (stream -> highest index published), when given, skips frames already
        published and is updated. Never raises: live frames must not fail a commit.
        """
        try:
            self._publish(committed, {} if done is None else done)
        except Exception:
            log.exception("live frames of a commit were not published")

    def _publish(self, committed: Sequence[Committed], done: dict[str, int]) -> None:
        if not (self._exact or self._prefixes or done):  # nobody listens: keep the newest
            for stream, item in {item.stream: item for item in committed}.items():
                done[stream] = item.index
                self.last.put(stream, item.index, item.record, item.payload)
            return
        newest: dict[str, Committed] = {}
        sent = 0
        for item in committed:
            if item.index <= done.get(item.stream, -1):
                continue  # published by an earlier try of this batch
            newest[item.stream] = item
            topic = item.stream.encode() + b"\0"
            if topic in self._exact or (self._prefixes and self._covered(topic)):
                sent += self._send(
                    topic, item.stream, item.index, item.record, item.payload, track=True
                )
        for stream, item in newest.items():
            done[stream] = item.index
            self.last.put(stream, item.index, item.record, item.payload)
        if sent:
            self.metrics.published.inc(sent)

    def take_leaving(self) -> list[zmq.MessageTracker]:
        """Trackers of the large live frames sent since the last call: each is done once
        libzmq has written that frame to every subscriber's connection."""
        leaving, self._leaving = self._leaving, []
        return leaving

    def _covered(self, topic: bytes) -> bool:
        return any(topic.startswith(prefix) for prefix in self._prefixes)

    def _send(
        self,
        topic: bytes,
        stream: str,
        index: int,
        record: bytes,
        payload: memoryview | bytes,
        *,
        track: bool = False,
    ) -> int:
        ref = proto.FrameRef(stream, index, msgspec.Raw(record))
        copy = len(payload) < ZERO_COPY_BYTES
        try:
            tracker = self.sock.send_multipart(
                [topic, proto.encode(proto.Kind.PUBLISH, ref), payload],
                zmq.NOBLOCK,
                copy=copy,
                track=track and not copy,
            )
        except zmq.Again:
            return 0  # no subscriber can take it now: live viewers skip frames
        if tracker is not None:
            self._leaving.append(tracker)
        return 1

    def forget(self, stream: str) -> None:
        """Retention emptied ``stream``: its newest frame is no longer kept."""
        self.last.forget(stream)

    # --------------------------------------------------------- subscriptions

    def take_subscriptions(self) -> None:
        """Read the XPUB's subscription messages; give each new subscriber its newest frames."""
        while True:
            try:
                event = self.sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            kind, topic = event[:1], event[1:]
            topics = self._exact if topic.endswith(b"\0") else self._prefixes
            if kind == b"\x01":
                topics.add(topic)
                self._send_newest(topic)
            elif kind == b"\x00":
                topics.discard(topic)

    def _send_newest(self, topic: bytes) -> None:
        if topic.endswith(b"\0"):
            found = self._newest_of(topic)
            frames = [] if found is None else [found]
        else:
            frames = self.last.matching(topic)
        sent = 0
        for stream, last in frames:
            topic_of = stream.encode() + b"\0"
            sent += self._send(topic_of, stream, last.index, last.record, last.payload)
        if sent:
            self.metrics.published.inc(sent)

    def _newest_of(self, topic: bytes) -> tuple[str, _Last] | None:
        """The newest frame of the stream ``topic`` names: kept, or else the newest stored."""
        try:
            stream = proto.check_stream_name(topic[:-1].decode())
        except (UnicodeDecodeError, HidraError):
            return None  # a topic no stream has: nothing to send
        last = self.last.get(stream)
        if last is not None:
            return stream, last
        try:
            info = self.store.info(stream)
            if info.last is None:
                return None
            record, payload = self.store.read(stream, info.last)
        except HidraError:  # no such stream yet, or retention removed it meanwhile
            return None
        self.last.put(stream, info.last, record, payload)
        return stream, _Last(info.last, record, payload)
