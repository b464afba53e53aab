"""The ``stream`` label stays bounded on a real receiver: retention's removals take series along."""

from __future__ import annotations

import msgspec
import numpy as np

from hidra_ng import Producer
from hidra_ng.metrics import ReceiverMetrics
from hidra_ng.receiver.daemon import Receiver
from tests.helpers import wait_for


def series(m: ReceiverMetrics, stream: str) -> float | None:
    return m.registry.get_sample_value("hidra_ng_receiver_messages_total", {"stream": stream})


def test_retention_that_empties_a_stream_removes_its_series(receiver_config, tmp_path) -> None:
    """A real receiver: per-scan streams come and go; their series go with them."""
    config = msgspec.structs.replace(receiver_config, max_store_bytes=10_000)
    with Receiver(config) as rx:
        ep = rx.endpoints
        with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "det") as p:
            p.send_many("scan/1", [(np.zeros(1000, np.uint8), None) for _ in range(10)])
            p.flush(10)
            assert series(rx.metrics, "scan/1") == 10
            p.send_many("scan/2", [(np.zeros(1000, np.uint8), None) for _ in range(10)])
            p.flush(10)
        wait_for(lambda: series(rx.metrics, "scan/1") is None, what="scan/1's series removed")
        assert rx.store.info("scan/1").count == 0
        assert series(rx.metrics, "scan/2") == 10
        assert rx.metrics.stream_labels() == ["scan/2"]
