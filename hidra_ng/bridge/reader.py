"""Reading one hidra_ng stream for the bridge: ``replay(follow=True)`` in a thread.

Each stream gets a thread with a Consumer of its own (Consumers are not
thread-safe). It hands encoded messages to the broker side through
``deliver``, a :class:`Chunk` at a time (the frames one replay reply brought, as
the publish entries of a Publish frame: the broker side only writes them), after
taking room for them from the in-flight :class:`Budget` of bytes and of frames, so
that memory stays bounded however far the broker falls behind. Frames removed
by retention before they were read are counted and logged; a receiver that is
down or restarting is waited for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from hidra_ng.bridge.messages import ENTRY_HEADER, RecordEncoder, encode_end
from hidra_ng.client.consumer import Consumer
from hidra_ng.errors import Gone, HidraError, ReceiverUnavailable

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
#: frames read and encoded at once, handed over as one Chunk (one lock, one wake-up of
#: the broker side); a batched replay reply brings up to 2,048 small frames
HAND_OVER_FRAMES = 2048
#: payload bytes of one Chunk at most (a larger frame is a Chunk of its own); chunks go
#: whole into Publish frames, which must stay below the broker's frame_max
CHUNK_BYTES = 8 << 20


@dataclass(slots=True)
class Chunk:
    """Messages of consecutive indices for the broker, as publish entries (publishing
    id = index + 1), ready to go into a Publish frame as they are."""

    first: int  # index of the first message
    count: int
    data: bytes  # the publish entries, joined (messages.RecordEncoder.entries)
    body_bytes: int  # payload bytes among them (metrics)
    end: bool = False  # the end message of a finished stream (a chunk of its own)
    #: publishing ids not yet confirmed; set when the chunk is published
    pending: set[int] = field(default_factory=set)

    @property
    def stop(self) -> int:
        """The index after the last."""
        return self.first + self.count

    @property
    def cost(self) -> int:
        return len(self.data)


class Budget:
    """Room for what was read from the receiver and not yet confirmed by the broker:
    bytes (all streams), or frames (one stream)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.used = 0
        self._cond = threading.Condition()

    def take(self, nbytes: int, stop: threading.Event, stale: Callable[[], bool]) -> bool:
        """Wait for room; False if the bridge stops or the reader became stale first."""
        with self._cond:
            # one message larger than the whole budget still passes, alone
            while self.used and self.used + nbytes > self.max_bytes:
                if stop.is_set() or stale():
                    return False
                self._cond.wait(0.2)
            self.used += nbytes
            return True

    def give(self, nbytes: int) -> None:
        with self._cond:
            self.used -= nbytes
            self._cond.notify_all()


class Reader(threading.Thread):
    """Replays ``stream`` from ``start`` and delivers its frames as Chunks."""

    def __init__(
        self,
        stream: str,
        start: int,
        *,
        consumer: Callable[[], Consumer],
        deliver: Callable[[list[Chunk]], None],
        budget: Budget,
        frames: Budget,
        full: bool,
        stop: threading.Event,
        on_gone: Callable[[int], None],
        on_receiver: Callable[[bool], None],
    ) -> None:
        super().__init__(name=f"bridge-read-{stream}", daemon=True)
        self.stream = stream
        self.next_index = start
        self._consumer = consumer
        self._deliver = deliver
        self._budget = budget
        self._frames = frames
        self._full = full
        self._halt = stop
        self._on_gone = on_gone
        self._on_receiver = on_receiver
        self.stale = threading.Event()  # set when the broker side restarts this stream

    def run(self) -> None:
        failures = 0
        try:
            with self._consumer() as consumer:
                while not self._done():
                    try:
                        if self._replay(consumer):
                            return
                        failures = 0
                    except Gone:
                        self._skip_removed(consumer)
                    except ReceiverUnavailable as err:
                        self._on_receiver(False)
                        if failures == 0:
                            log.warning("bridge: %s; retrying", err)
                        self._halt.wait(RETRY_SECONDS[min(failures, len(RETRY_SECONDS) - 1)])
                        failures += 1
                    except HidraError as err:
                        log.warning(
                            "bridge: reading %r at %d: %s", self.stream, self.next_index, err
                        )
                        self._halt.wait(RETRY_SECONDS[-1])
        except Exception:
            log.exception("bridge: the reader of %r failed", self.stream)
            raise

    def _done(self) -> bool:
        return self._halt.is_set() or self.stale.is_set()

    def _replay(self, consumer: Consumer) -> bool:
        """Deliver frames until the stream ends (True) or the bridge stops (True)."""
        replay = consumer.replay(
            self.stream, start=self.next_index, follow=True, decode=False, window_frames=4096
        )
        try:
            encoder = RecordEncoder(self.stream)
            while True:
                try:
                    records = replay.next_records(HAND_OVER_FRAMES)
                except StopIteration:
                    break
                self._on_receiver(True)
                if not self._hand_over(self._chunks(encoder, records)):
                    return True
                self.next_index = records[-1][0] + 1
        finally:
            replay.close()
        self._on_receiver(True)
        # a finished stream read to its end: one end message
        message = encode_end(self.stream, self.next_index)
        entry = ENTRY_HEADER.pack(self.next_index + 1, len(message)) + message
        self._hand_over([Chunk(self.next_index, 1, entry, 0, end=True)])
        return True

    def _chunks(self, encoder: RecordEncoder, records: list) -> list[Chunk]:
        """``records`` encoded, in chunks of consecutive indices and at most CHUNK_BYTES."""
        runs = [records]
        consecutive = records[-1][0] - records[0][0] == len(records) - 1
        if not consecutive or sum(len(payload) for _, _, payload in records) > CHUNK_BYTES:
            runs, size = [[]], 0
            for record in records:
                run = runs[-1]
                if run and (size + len(record[2]) > CHUNK_BYTES or record[0] != run[-1][0] + 1):
                    runs.append(run := [])
                    size = 0
                run.append(record)
                size += len(record[2])
        chunks = []
        for run in runs:
            data, body_bytes = encoder.entries(run, self._full)
            chunks.append(Chunk(run[0][0], len(run), data, body_bytes))
        return chunks

    def _hand_over(self, chunks: list[Chunk]) -> bool:
        cost = sum(chunk.cost for chunk in chunks)
        frames = sum(chunk.count for chunk in chunks)
        if not self._frames.take(frames, self._halt, self.stale.is_set):
            return False
        if not self._budget.take(cost, self._halt, self.stale.is_set):
            self._frames.give(frames)
            return False
        if self._done():
            self._budget.give(cost)
            self._frames.give(frames)
            return False
        self._deliver(chunks)
        return True

    def _skip_removed(self, consumer: Consumer) -> None:
        info = consumer.info(self.stream)
        if info.first > self.next_index:
            lost = info.first - self.next_index
            log.warning(
                "bridge: %d frames of %r (%d to %d) were removed by the receiver's retention"
                " before they were bridged; going on at %d",
                lost,
                self.stream,
                self.next_index,
                info.first - 1,
                info.first,
            )
            self._on_gone(lost)
            self.next_index = info.first
        else:
            self._halt.wait(RETRY_SECONDS[0])
