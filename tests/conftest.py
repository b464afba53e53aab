"""Fixtures shared by all test levels: receivers on loopback with free ports and temp dirs."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hidra_ng.config import ReceiverConfig
from hidra_ng.localrun import ReceiverProcess
from hidra_ng.receiver import Receiver


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
    return hashlib.sha256(
        memoryview(data).cast("B") if not isinstance(data, bytes) else data
    ).hexdigest()


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
def receiver_process(tmp_path: Path) -> Iterator[ReceiverProcess]:
    """A real ``hidra-ng receiver`` process on free loopback ports."""
    rx = ReceiverProcess(tmp_path / "store")
    rx.start()
    try:
        yield rx
    finally:
        rx.kill()
