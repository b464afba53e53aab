"""Fixtures shared by all test levels: receivers on loopback with free ports and temp dirs."""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from hidra_ng.config import ReceiverConfig
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.sender.producer import Producer
from hidra_ng.testing import ReceiverProcess


def wait_for(condition: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll ``condition`` until it is truthy or ``timeout`` passes; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def digest(data) -> str:
    if data is None:
        return "none"
    if isinstance(data, np.ndarray):  # also empty, 0-d and non-contiguous arrays
        data = np.ascontiguousarray(data).reshape(-1).view(np.uint8)
    return hashlib.sha256(memoryview(data).cast("B")).hexdigest()


@pytest.fixture
def receiver_config(tmp_path: Path) -> ReceiverConfig:
    return ReceiverConfig(
        data_dir=str(tmp_path / "store"),
        ingest="tcp://127.0.0.1:*",
        api="tcp://127.0.0.1:*",
        publish="tcp://127.0.0.1:*",
        metrics_port=0,
        initial_map_bytes=64 << 20,
    )


@pytest.fixture
def receiver(receiver_config: ReceiverConfig) -> Iterator[Receiver]:
    """An in-process receiver (threads) on random loopback ports."""
    rx = Receiver(receiver_config)
    rx.start()
    try:
        yield rx
    finally:
        rx.stop()


@pytest.fixture
def make_producer(tmp_path, receiver):
    """Producers for the in-process receiver, each with its own spool; closed at the end."""
    made: list[Producer] = []

    def make(sender_id: str = "det-1", rx: Receiver | None = None, **options) -> Producer:
        rx = rx or receiver
        p = Producer(
            rx.endpoints["ingest"],
            rx.endpoints["api"],
            tmp_path / f"spool-{sender_id}",
            sender_id,
            **options,
        )
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


@pytest.fixture
def receiver_process(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """A real ``hidra-ng receiver`` process on free loopback ports."""
    rx = ReceiverProcess(tmp_path / "store")
    rx.start()
    try:
        yield rx
    finally:
        rx.kill()


def finish_transfer(producer: Producer, stream: str, sender: threading.Thread, errors: list):
    """The sending thread ended without errors; ``stream`` finished, all acked and released."""
    sender.join(timeout=120)
    assert not sender.is_alive()
    assert not errors, errors
    producer.finish(stream)
    producer.flush(timeout=120)
    wait_for(lambda: producer.spool_messages == 0, what="acked messages released")
