"""The arithmetic of ``make perf-peers``: CPU accounting, medians, percentiles, ratios.

Pure functions on numbers (no processes, no clients), so that tests/unit can check
them; perf/peers.py and its system modules feed them what they measured.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

GB = 1e9  # CPU seconds are reported per GB (10**9 bytes) moved
MB = 1e6

#: hidra_ng measured with its fsyncs off (perf/peer_hidra.py)
WITHOUT_FSYNC = "hidra_ng_without_fsync"


class CpuTimes(Protocol):
    """What psutil.Process.cpu_times() returns (only these fields are read)."""

    user: float
    system: float


def process_tree_cpu_seconds(times: Iterable[CpuTimes]) -> float:
    """CPU seconds of a process tree: ``cpu_times()`` of each live process in it, summed.

    Each process counts its own user + system time and, where the platform reports
    them (Linux), ``children_user`` + ``children_system``: the time of children it has
    already waited for, which are no longer in the tree. A live child's time is only
    in its own entry, so nothing is counted twice.
    """
    total = 0.0
    for t in times:
        total += t.user + t.system
        total += getattr(t, "children_user", 0.0) + getattr(t, "children_system", 0.0)
    return total


def per_gb(seconds: float, nbytes: int) -> float:
    """``seconds`` (of CPU) per GB for a run that moved ``nbytes``."""
    if nbytes <= 0:
        raise ValueError(f"a run that moved {nbytes} bytes has no CPU per GB")
    return seconds / (nbytes / GB)


def median(values: Sequence[float]) -> float:
    if not values:
        raise ValueError("the median of no values")
    return statistics.median(values)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100), linear between closest ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("a percentile of no values")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """hidra_ng / peer, or None when either is missing or the peer's value is 0."""
    if ours is None or not theirs:
        return None
    return ours / theirs


@dataclass
class Sample:
    """One timed run of one workload on one system."""

    seconds: float  # wall clock of the timed part
    nbytes: int  # payload bytes moved
    messages: int
    client_cpu_seconds: float  # the measuring process: the system's client library
    server_cpu_seconds: float  # the server process(es) and their children
    latencies_ms: list[float] = field(default_factory=list)  # latency runs only
    detail: dict[str, float] = field(default_factory=dict)  # kept per run in peers.json

    @property
    def mb_per_s(self) -> float:
        return self.nbytes / self.seconds / MB

    @property
    def msg_per_s(self) -> float:
        return self.messages / self.seconds


class System(Protocol):
    """One system measured (perf/peer_hidra.py, peer_rabbitmq.py, peer_nats.py)."""

    name: str
    durability: str  # what an acknowledgement means at the settings measured

    def ingest_4mib(self, stream: str, count: int) -> Sample: ...
    def ingest_small(self, stream: str, batch: list[bytes], calls: int) -> Sample: ...
    def readback_4mib(self, stream: str, count: int) -> Sample: ...
    def latency_4mib(self, stream: str, warmup: int, samples: int) -> Sample: ...
    def drop(self, stream: str) -> None: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class Workload:
    name: str
    unit: str  # "MB/s", "msg/s" or "ms"
    doc: str
    higher_is_better: bool = True
    cpu_per_gb: bool = True  # CPU per GB is reported (not for latency runs)


def summarize(workload: Workload, samples: Sequence[Sample]) -> dict[str, Any]:
    """One system's figures for one workload over all rounds (shape of peers.json)."""
    out: dict[str, Any] = {"runs": len(samples)}
    for s in samples:
        for key, value in s.detail.items():
            out.setdefault("detail", {}).setdefault(key, []).append(value)
    if workload.unit == "ms":
        pooled = [ms for s in samples for ms in s.latencies_ms]
        out.update(
            p50_ms=_num(percentile(pooled, 50)),
            p99_ms=_num(percentile(pooled, 99)),
            per_round_p50_ms=[_num(percentile(s.latencies_ms, 50)) for s in samples],
            samples=len(pooled),
            stat=f"percentiles of {len(pooled)} samples from {len(samples)} runs",
        )
        return out
    rates = [s.msg_per_s if workload.unit == "msg/s" else s.mb_per_s for s in samples]
    out.update(
        value=_num(median(rates)),
        per_round=[_num(r) for r in rates],
        stat=f"median of {len(samples)} runs",
        seconds=[_num(s.seconds) for s in samples],
    )
    if workload.cpu_per_gb:
        client = median([per_gb(s.client_cpu_seconds, s.nbytes) for s in samples])
        server = median([per_gb(s.server_cpu_seconds, s.nbytes) for s in samples])
        total = median(
            [per_gb(s.client_cpu_seconds + s.server_cpu_seconds, s.nbytes) for s in samples]
        )
        out["cpu_s_per_gb"] = {"client": _num(client), "server": _num(server), "total": _num(total)}
    return out


def headline(workload: Workload, summary: dict[str, Any]) -> float:
    """The number a workload is compared by: its median rate, or the p50 latency."""
    return summary["p50_ms"] if workload.unit == "ms" else summary["value"]


def _num(x: float) -> float:
    return round(x, 3) if abs(x) < 100 else round(x, 1)
