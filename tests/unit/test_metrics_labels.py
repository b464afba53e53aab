"""The ``stream`` label stays bounded: a cap on streams with series, and retention's removals."""

from __future__ import annotations

from hidra_ng.metrics import MAX_STREAM_LABELS, ReceiverMetrics


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


def test_process_collectors_are_served_by_both_registries() -> None:
    from hidra_ng.metrics import SenderMetrics

    for m in (ReceiverMetrics(), SenderMetrics()):
        assert m.registry.get_sample_value("process_resident_memory_bytes") > 0
        assert m.registry.get_sample_value("process_open_fds") > 0
