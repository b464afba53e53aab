"""The arithmetic behind make perf-peers' figures (perf/peer_stats.py): no processes, no timing."""

from __future__ import annotations

from collections import namedtuple

import pytest

from perf.peer_stats import (
    Sample,
    Workload,
    headline,
    per_gb,
    percentile,
    process_tree_cpu_seconds,
    ratio,
    summarize,
)

LinuxTimes = namedtuple("LinuxTimes", "user system children_user children_system iowait")
OtherTimes = namedtuple("OtherTimes", "user system")

INGEST = Workload("ingest_4mib", "MB/s", "frames")
SMALL = Workload("ingest_1kib", "msg/s", "messages")
LATENCY = Workload("live_latency_4mib", "ms", "latency", higher_is_better=False, cpu_per_gb=False)


def test_tree_cpu_counts_own_and_reaped_children_time_but_not_iowait():
    times = [LinuxTimes(1.0, 0.5, 2.0, 0.25, 9.0), LinuxTimes(0.125, 0.125, 0.0, 0.0, 9.0)]
    assert process_tree_cpu_seconds(times) == pytest.approx(4.0)


def test_tree_cpu_without_children_fields():
    assert process_tree_cpu_seconds([OtherTimes(1.5, 0.5)]) == 2.0
    assert process_tree_cpu_seconds([]) == 0.0


def test_per_gb_is_seconds_per_10_to_the_9_bytes():
    assert per_gb(3.0, 500_000_000) == pytest.approx(6.0)
    with pytest.raises(ValueError, match="0 bytes"):
        per_gb(1.0, 0)


def test_percentile_interpolates_like_numpy():
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 50) == 2.5
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 99) == pytest.approx(3.97)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_ratio_is_none_without_both_values():
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(None, 4.0) is None
    assert ratio(2.0, None) is None
    assert ratio(2.0, 0.0) is None


def _sample(seconds: float, client: float, server: float, nbytes: int = 2_000_000_000) -> Sample:
    return Sample(seconds, nbytes, nbytes // 1000, client, server)


def test_throughput_summary_takes_medians_over_rounds():
    runs = [_sample(10.0, 2.0, 4.0), _sample(4.0, 1.0, 1.0), _sample(5.0, 3.0, 2.0)]
    s = summarize(INGEST, runs)
    assert s["per_round"] == [200.0, 500.0, 400.0]
    assert s["value"] == headline(INGEST, s) == 400.0
    # per GB over 2 GB: client 1, 0.5, 1.5; server 2, 0.5, 1; total 3, 1, 2.5
    assert s["cpu_s_per_gb"] == {"client": 1.0, "server": 1.0, "total": 2.5}
    assert s["stat"] == "median of 3 runs"


def test_details_are_kept_per_run():
    runs = [_sample(1.0, 0.0, 0.0), _sample(1.0, 0.0, 0.0)]
    runs[0].detail["offsets_skipped"] = 0
    runs[1].detail["offsets_skipped"] = 3
    assert summarize(INGEST, runs)["detail"] == {"offsets_skipped": [0, 3]}


def test_message_rate_summary():
    s = summarize(SMALL, [Sample(2.0, 1_024_000, 1000, 0.5, 0.5)])
    assert s["value"] == 500.0  # 1,000 messages in 2 s
    assert s["cpu_s_per_gb"]["total"] == 976.6  # 1 CPU second for 1.024 MB


def test_latency_summary_pools_samples_of_all_rounds():
    runs = [
        Sample(1.0, 1, 3, 0.0, 0.0, latencies_ms=[1.0, 2.0, 3.0]),
        Sample(1.0, 1, 2, 0.0, 0.0, latencies_ms=[10.0, 20.0]),
    ]
    s = summarize(LATENCY, runs)
    assert s["p50_ms"] == headline(LATENCY, s) == 3.0
    assert s["per_round_p50_ms"] == [2.0, 15.0]
    assert s["samples"] == 5
    assert "cpu_s_per_gb" not in s
