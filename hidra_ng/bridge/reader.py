"""Reading one hidra_ng stream for the bridge: ``replay(follow=True)`` in a thread.

Each stream gets a thread with a Consumer of its own (Consumers are not
thread-safe). It hands encoded messages to the broker side through
``deliver``, a batch at a time (the frames one replay reply brought), after
taking room for them from the in-flight :class:`Budget` of bytes and of frames, so
that memory stays bounded however far the broker falls behind. Frames removed
by retention before they were read are counted and logged; a receiver that is
down or restarting is waited for.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from hidra_ng.bridge.messages import RecordEncoder, encode_end
from hidra_ng.client.consumer import Consumer
from hidra_ng.errors import Gone, HidraError, ReceiverUnavailable

log = logging.getLogger(__name__)

RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
#: frames handed over at once (one lock, one wake-up of the broker side per batch)
HAND_OVER_FRAMES = 256
_OVERHEAD = 512  # bytes counted per message besides its body (properties)


@dataclass(slots=True)
class Item:
    """One message for the broker: publishing id = index + 1."""

    index: int
    data: bytes
    end: bool = False

    @property
    def cost(self) -> int:
        return len(self.data) + _OVERHEAD


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
    """Replays ``stream`` from ``start`` and delivers each frame as an Item."""

    def __init__(
        self,
        stream: str,
        start: int,
        *,
        consumer: Callable[[], Consumer],
        deliver: Callable[[list[Item]], None],
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
                items = [
                    Item(index, encoder.encode(index, record, payload, self._full))
                    for index, record, payload in records
                ]
                if not self._hand_over(items):
                    return True
                self.next_index = records[-1][0] + 1
        finally:
            replay.close()
        self._on_receiver(True)
        # a finished stream read to its end: one end message
        end = Item(self.next_index, encode_end(self.stream, self.next_index), end=True)
        self._hand_over([end])
        return True

    def _hand_over(self, items: list[Item]) -> bool:
        cost = sum(item.cost for item in items)
        if not self._frames.take(len(items), self._halt, self.stale.is_set):
            return False
        if not self._budget.take(cost, self._halt, self.stale.is_set):
            self._frames.give(len(items))
            return False
        if self._done():
            self._budget.give(cost)
            self._frames.give(len(items))
            return False
        self._deliver(items)
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
