"""Helpers shared by the tests of every tier (fixtures are in tests/conftest.py).

Import them as ``from tests.helpers import wait_for``.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections.abc import Callable

import numpy as np

from hidra_ng.sender.producer import Producer


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


def finish_transfer(producer: Producer, stream: str, sender: threading.Thread, errors: list):
    """The sending thread ended without errors; ``stream`` finished, all acked and released."""
    sender.join(timeout=120)
    assert not sender.is_alive()
    assert not errors, errors
    producer.finish(stream)
    producer.flush(timeout=120)
    wait_for(lambda: producer.spool_messages == 0, what="acked messages released")
