"""The test session's RabbitMQ node (SPEC §13, §15): Debian's rabbitmq-server on loopback.

One node per test session, started on first use by the ``rabbitmq`` fixture
(tests/conftest.py) in a directory of its own and stopped by pid at the end.
Tests that kill or restart the broker take ``private_rabbitmq`` instead: a node of
their own, so the shared one never goes down under other tests.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from scripts.rabbitmq_node import PACKAGE, SERVER, RabbitNode
from tests.debian import require_debian


def started_node(base_dir: Path) -> Iterator[RabbitNode]:
    require_debian([PACKAGE], [str(SERVER)])
    node = RabbitNode(base_dir)
    node.start()
    try:
        yield node
    finally:
        node.stop()
