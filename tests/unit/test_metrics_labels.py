"""The ``stream`` label stays bounded: a cap on streams with series, and retention's removals."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry, Counter

from hidra_ng.metrics import (
    MAX_STREAM_LABELS,
    BridgeMetrics,
    ReceiverMetrics,
    StreamSeries,
    WriterMetrics,
)


def series(m: ReceiverMetrics, stream: str) -> float | None:
    return m.registry.get_sample_value("hidra_ng_receiver_messages_total", {"stream": stream})


def stream_series_count(m: ReceiverMetrics) -> int:
    return sum(
        1
        for family in m.registry.collect()
        if family.name == "hidra_ng_receiver_messages"
        for sample in family.samples
        if sample.name == "hidra_ng_receiver_messages_total"
    )


def test_at_most_max_stream_labels_streams_have_series() -> None:
    m = ReceiverMetrics()
    for k in range(MAX_STREAM_LABELS + 5):
        m.stream_committed(f"scan/{k}", 2, 100, 1)
    m.stream_committed("scan/5", 1, 50, 2)  # recently used again: kept
    m.stream_committed("scan/new", 1, 50, 0)  # one more: scan/6 goes, not scan/5
    assert stream_series_count(m) == MAX_STREAM_LABELS
    assert series(m, "scan/0") is None and series(m, "scan/6") is None
    assert series(m, "scan/5") == 3
    assert series(m, f"scan/{MAX_STREAM_LABELS + 4}") == 2
    assert m.registry.get_sample_value("hidra_ng_receiver_last_index", {"stream": "scan/5"}) == 2


def test_a_stream_emptied_by_retention_loses_its_series() -> None:
    m = ReceiverMetrics()
    m.stream_committed("a", 3, 30, 2)
    m.stream_committed("b", 1, 10, 0)
    m.forget_stream("a")
    m.forget_stream("never-seen")  # nothing to remove: no error
    assert series(m, "a") is None and series(m, "b") == 1
    assert m.registry.get_sample_value("hidra_ng_receiver_bytes_total", {"stream": "a"}) is None
    assert m.stream_labels() == ["b"]
    m.stream_committed("a", 1, 10, 3)  # written again later: back, counting anew
    assert series(m, "a") == 1


def test_process_collectors_are_served_by_every_daemons_registry() -> None:
    from hidra_ng.metrics import BridgeMetrics, SenderMetrics, WriterMetrics

    for m in (ReceiverMetrics(), SenderMetrics(), BridgeMetrics(), WriterMetrics()):
        assert m.registry.get_sample_value("process_resident_memory_bytes") > 0
        assert m.registry.get_sample_value("process_open_fds") > 0


def stream_labelled_series(registry: CollectorRegistry) -> dict[str, set[str]]:
    """Metric family -> the streams it has series of."""
    found: dict[str, set[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if "stream" in sample.labels:
                found.setdefault(family.name, set()).add(sample.labels["stream"])
    return found


@pytest.mark.parametrize("kind", [BridgeMetrics, WriterMetrics])
def test_the_bridge_and_writer_keep_series_of_at_most_max_stream_labels_streams(kind) -> None:
    m = kind()
    for k in range(MAX_STREAM_LABELS + 3):
        for metric in (m.lag_frames, m.gone):  # one gauge and one counter of each daemon
            metric.labels(f"scan/{k}")
        if kind is WriterMetrics:
            m.errors.labels(f"scan/{k}", "io").inc()
            m.errors.labels(f"scan/{k}", "disk_full").inc()
    m.gone.labels("scan/3").inc()  # used again: kept, scan/4 goes with the next new one
    m.lag_frames.labels("scan/new").set(1)
    series = stream_labelled_series(m.registry)
    assert series, "no stream-labelled series at all"
    for name, streams in series.items():
        assert len(streams) <= MAX_STREAM_LABELS, name
        assert "scan/4" not in streams and "scan/0" not in streams, name
    assert "scan/3" in series[m.gone.metric._name]
    if kind is WriterMetrics:  # a series per (stream, reason): every reason of a stream went
        errors = [
            s.labels for f in m.registry.collect() if f.name == "hidra_ng_writer_errors"
            for s in f.samples if s.name.endswith("_total")
        ]  # fmt: skip
        assert len(errors) == 2 * (MAX_STREAM_LABELS - 1)  # of them scan/new has none


def test_stream_series_bounds_and_forgets_every_label_set_of_a_stream() -> None:
    registry = CollectorRegistry()
    series = StreamSeries(limit=2)
    errors = series.track(Counter("e", "e", ["stream", "reason"], registry=registry))
    for stream in ("a", "b"):
        errors.labels(stream, "io").inc()
        errors.labels(stream, "full").inc()
    assert series.streams() == ["a", "b"]
    errors.labels("c", "io").inc()  # a goes, with both of its reasons
    assert series.streams() == ["b", "c"]
    assert registry.get_sample_value("e_total", {"stream": "a", "reason": "io"}) is None
    assert registry.get_sample_value("e_total", {"stream": "a", "reason": "full"}) is None
    assert registry.get_sample_value("e_total", {"stream": "b", "reason": "full"}) == 1
    series.forget("b")
    series.forget("never-seen")
    assert series.streams() == ["c"]
    assert registry.get_sample_value("e_total", {"stream": "b", "reason": "io"}) is None
    assert registry.get_sample_value("e_total", {"stream": "c", "reason": "io"}) == 1
