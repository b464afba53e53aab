"""Helpers of the source tests: a source running in its own thread, stream counts."""

from __future__ import annotations

import threading

from hidra_ng import Consumer, NotYetAvailable


class Running:
    """A source in its own thread, as the sender daemon runs it."""

    def __init__(self, source, producer) -> None:
        self.source, self.stop = source, threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(producer,), daemon=True)
        self.thread.start()

    def _run(self, producer) -> None:
        try:
            self.source.run(producer, self.stop)
        except BaseException as err:
            self.error = err

    def done(self) -> bool:
        return not self.thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), "source did not stop"
        if self.error is not None:
            raise self.error


def count(consumer: Consumer, stream: str) -> int:
    """Messages in ``stream`` (0 before its first)."""
    try:
        return consumer.info(stream).count
    except NotYetAvailable:
        return 0
