"""Fixtures shared by all test levels: receivers on loopback and temp dirs.

Helper functions live in tests/helpers.py; ``wait_for``, ``digest`` and
``finish_transfer`` are imported here too so that ``from tests.conftest import
wait_for`` keeps working, but tests import them from ``tests.helpers``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hidra_ng.config import ReceiverConfig
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.sender.producer import Producer
from hidra_ng.testing import ReceiverProcess, reserve_port
from scripts.rabbitmq_node import RabbitNode
from tests import helpers
from tests.helpers import digest, finish_transfer, wait_for  # noqa: F401  (see above)
from tests.rabbitmq import started_node

helpers.install_socket_tracking()


@pytest.fixture(autouse=True)
def leak_check() -> Iterator[None]:
    """Fail a test that leaves a zmq socket open or a thread running (tests/helpers.py)."""
    check = helpers.LeakCheck()
    yield
    problems = check.problems()
    if problems:
        pytest.fail("test leaked: " + "; ".join(problems), pytrace=False)


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


@pytest.fixture
def absent_endpoints() -> Iterator[tuple[str, str]]:
    """Receiver ingest and api endpoints where nothing listens (yet), reserved for the test:
    a receiver started on them later gets them, nothing else takes them meanwhile."""
    with reserve_port() as ingest, reserve_port() as api:
        yield ingest.endpoint, api.endpoint


@pytest.fixture(scope="session")
def rabbitmq(tmp_path_factory) -> Iterator[RabbitNode]:
    """The session's RabbitMQ node (stream plugin), shared by every test that takes it."""
    yield from started_node(tmp_path_factory.mktemp("rabbitmq"))


@pytest.fixture
def private_rabbitmq(tmp_path) -> Iterator[RabbitNode]:
    """A RabbitMQ node of this test alone: for tests that kill or restart the broker."""
    yield from started_node(tmp_path / "rabbitmq")
