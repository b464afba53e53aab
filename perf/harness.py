"""Shared helpers of the perf harness: scales, timing, statistics, temp dirs, the machine.

Baselines and figures are :class:`Probe` s: a function that does one timed run and
the :class:`Metric` s it yields. The runner calls every probe once per round and
turns the runs into :class:`Measurement` s: the median over runs for throughputs,
a percentile over all samples for latencies, with the samples kept, so that
results.json says exactly what was measured.
"""

from __future__ import annotations

import contextlib
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

KiB = 1 << 10
MiB = 1 << 20
MB = 1e6  # throughputs are reported in MB/s (10**6 bytes), as SPEC §12 shows them

PERF_DIR = Path(__file__).resolve().parent
REPO_DIR = PERF_DIR.parent


@dataclass(frozen=True)
class Scale:
    """How much work one run does: ``quick`` fits in a minute, ``full`` in a few minutes."""

    name: str
    rounds: int  # every baseline and figure runs once per round; medians over rounds
    frames_4mib: int  # 4 MiB frames per throughput run
    messages_1kib: int  # 1 KiB messages per throughput run
    batch_1kib: int  # 1 KiB messages per LMDB transaction / Producer.send_many call
    latency_samples: int  # one-way latency samples per run (after the warm-up)
    latency_warmup: int  # samples dropped at the start of each latency run
    group_messages_1kib: int  # 1 KiB messages consumed per consumer-group run
    # perf/scaling.py
    scaling_bytes: int  # frame bytes per run of each frame size / number of producers
    scaling_messages_1kib: int  # 1 KiB messages of the once-per-invocation store run
    scaling_lookups: int  # Consumer.get() calls timed at each end of that stream

    def scaling_frames(self, nbytes: int) -> int:
        """Frames of ``nbytes`` per scaling run: ``scaling_bytes`` of them, at least 8."""
        return max(8, self.scaling_bytes // nbytes)


QUICK = Scale("quick", rounds=3, frames_4mib=64, messages_1kib=10_000, batch_1kib=1000,
              latency_samples=40, latency_warmup=5, group_messages_1kib=2000,
              scaling_bytes=32 * MiB, scaling_messages_1kib=50_000,
              scaling_lookups=200)  # fmt: skip
FULL = Scale("full", rounds=5, frames_4mib=512, messages_1kib=50_000, batch_1kib=1000,
             latency_samples=200, latency_warmup=20, group_messages_1kib=10_000,
             scaling_bytes=256 * MiB, scaling_messages_1kib=1_000_000,
             scaling_lookups=200)  # fmt: skip


# ------------------------------------------------------------ probes and results


@dataclass
class Run:
    """What one run of a probe gave: samples per metric name, and details worth keeping."""

    samples: dict[str, list[float]]  # metric -> one throughput, or many latencies
    detail: dict[str, float] = field(default_factory=dict)
    work: str = ""  # what the run moved, when the tables should say it ("4096 frames of 64 KiB")


@dataclass(frozen=True)
class Metric:
    """A number a probe reports.

    ``percentile=None``: the median over runs of each run's single sample (throughputs);
    otherwise that percentile of all runs' samples pooled (latencies).
    ``baseline`` (figures only): the baseline this figure is divided by.
    """

    name: str
    unit: str
    percentile: float | None = None
    baseline: str | None = None


class Round:
    """What the probes of one round may share (a receiver process), closed after the round.

    Starting a receiver takes about a second; the figures of a round share one
    (each with its own producer, spool, sender id and stream), so that quick runs
    spend their minute measuring.
    """

    def __init__(self) -> None:
        self._stack = contextlib.ExitStack()
        self._shared: dict[str, Any] = {}

    def shared(self, key: str, make: Callable[[], contextlib.AbstractContextManager[T]]) -> T:
        """The value of ``make()`` entered once per round under ``key``."""
        if key not in self._shared:
            self._shared[key] = self._stack.enter_context(make())
        return self._shared[key]

    def close(self) -> None:
        self._shared.clear()
        self._stack.close()


RunFunction = Callable[[Scale, Round], Run]


@dataclass(frozen=True)
class Probe:
    """A baseline or figure measurement: one call of ``run`` is one timed run."""

    metrics: tuple[Metric, ...]
    run: RunFunction
    doc: str
    once: bool = False  # run in the first round only (too long to repeat every round)


def probe(registry: list[Probe], *metrics: Metric, once: bool = False):
    """Decorator: register a run function that measures ``metrics``."""

    def register(fn: RunFunction) -> RunFunction:
        doc = " ".join((fn.__doc__ or "").split())
        registry.append(Probe(tuple(metrics), fn, doc, once))
        return fn

    return register


@dataclass
class Measurement:
    """One reported number with the samples behind it."""

    name: str
    value: float
    unit: str
    stat: str  # how ``value`` came from ``samples``, e.g. "median of 3 runs"
    samples: list[float]  # per-run values (throughputs) or none (latencies: too many)
    detail: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["name"]
        out["samples"] = [_round(s) for s in self.samples]
        return out


def summarize(metric: Metric, runs: list[Run]) -> Measurement:
    """The metric's value from all runs of its probe, with per-run details as lists."""
    detail: dict[str, Any] = {}
    for run in runs:
        for key, value in run.detail.items():
            detail.setdefault(key, []).append(_round(value))
    if metric.percentile is None:
        samples = [run.samples[metric.name][0] for run in runs]
        value = statistics.median(samples)
        stat = f"median of {len(samples)} runs"
    else:
        pooled = [s for run in runs for s in run.samples[metric.name]]
        value = percentile(pooled, metric.percentile)
        stat = f"p{metric.percentile:g} of {len(pooled)} samples from {len(runs)} runs"
        samples = []
        detail["per_run"] = [per_run(metric, run) for run in runs]
    return Measurement(metric.name, value, metric.unit, stat, samples, detail)


def per_run(metric: Metric, run: Run) -> float:
    """The metric's value in one run."""
    values = run.samples[metric.name]
    return values[0] if metric.percentile is None else percentile(values, metric.percentile)


def _round(x: float) -> float:
    return float(f"{x:.5g}") if isinstance(x, float) else x


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation, as numpy's default."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no values")
    pos = (len(ordered) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def text_table(header: list[str], rows: list[list[str]]) -> str:
    """Columns padded to their widest cell, a dashed line under the header."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in [header, *rows]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(line.rstrip() for line in lines)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Wait until ``condition()`` holds, checking often; raise TimeoutError naming ``what``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not happen within {timeout} s")
        time.sleep(0.005)


@contextlib.contextmanager
def scratch_dir(label: str) -> Iterator[Path]:
    """A fresh directory under the system temp dir (same filesystem as /tmp), removed after."""
    path = Path(tempfile.mkdtemp(prefix=f"hidra-perf-{label}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def peak_rss_bytes() -> dict[str, int]:
    """Peak resident memory of this process and of its largest finished child.

    Includes the touched pages of LMDB's memory maps (page cache, not heap).
    """
    # ru_maxrss is in KiB on Linux
    return {
        "perf_process": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * KiB,
        "largest_child": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * KiB,
    }


# ---------------------------------------------------------------------- machine


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _virtualized() -> bool:
    with contextlib.suppress(OSError):
        return " hypervisor" in Path("/proc/cpuinfo").read_text()
    return False


def _memory_bytes() -> int:
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * KiB
    return 0


def _filesystem_of(path: Path) -> str:
    """'ext4 on /dev/vda (mounted at /)' for the mount that holds ``path``."""
    best = ("", "?", "?")
    with contextlib.suppress(OSError):
        resolved = str(path.resolve())
        for line in Path("/proc/mounts").read_text().splitlines():
            device, mount, fstype = line.split()[:3]
            inside = resolved == mount or resolved.startswith(mount.rstrip("/") + "/")
            if inside and len(mount) >= len(best[0]):
                best = (mount, fstype, device)
    mount, fstype, device = best
    return f"{fstype} on {device} (mounted at {mount})"


def _git_revision(repo: Path) -> str:
    try:
        out = subprocess.run(
            ["git", "-C", str(repo), "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _versions() -> dict[str, str]:
    import blosc2
    import lmdb
    import msgspec
    import numpy
    import zmq

    import hidra_ng

    source = Path(hidra_ng.__file__).resolve().parents[1]  # the checkout measured
    return {
        "python": platform.python_version(),
        "pyzmq": zmq.__version__,
        "libzmq": zmq.zmq_version(),
        "py-lmdb": lmdb.__version__,
        "lmdb": ".".join(map(str, lmdb.version())),
        "numpy": numpy.__version__,
        "msgspec": msgspec.__version__,
        "blosc2": blosc2.__version__,
        "hidra_ng": f"{getattr(hidra_ng, '__version__', '0.1.0')} ({_git_revision(source)})",
        "hidra_ng_source": str(source),
    }


def machine() -> tuple[str, dict[str, Any]]:
    """One line that names the machine, and the same facts as a dict."""
    tmp = Path(tempfile.gettempdir())
    info: dict[str, Any] = {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "virtualized": _virtualized(),
        "memory_bytes": _memory_bytes(),
        "kernel": f"{platform.system()} {platform.release()}",
        "temp_dir": str(tmp),
        "temp_filesystem": _filesystem_of(tmp),
        "versions": _versions(),
    }
    v = info["versions"]
    line = (
        f"{info['cpu']}{' (VM)' if info['virtualized'] else ''}, {info['cores']} cores,"
        f" {info['memory_bytes'] / (1 << 30):.1f} GiB RAM, {info['kernel']},"
        f" {tmp} on {info['temp_filesystem'].split(' (')[0]};"
        f" Python {v['python']}, pyzmq {v['pyzmq']} (libzmq {v['libzmq']}),"
        f" py-lmdb {v['py-lmdb']} (LMDB {v['lmdb']}), numpy {v['numpy']},"
        f" msgspec {v['msgspec']}, blosc2 {v['blosc2']}; hidra_ng {v['hidra_ng']}"
    )
    return line, info


def rerun_at(rev: str, script: Path, argv: list[str]) -> int:
    """Run ``script argv`` (less ``--at REV``) with hidra_ng from a clean checkout of ``rev``.

    The checkout is a temporary git worktree; cwd and PYTHONPATH put it first for
    the script and for the receiver processes it starts (``python -m hidra_ng``).
    The harness itself is this one, so old revisions are measured the same way.
    """
    rest, skip = [], False
    for arg in argv:
        if skip or arg.startswith("--at="):
            skip = False
            continue
        if arg == "--at":
            skip = True
            continue
        rest.append(arg)
    with tempfile.TemporaryDirectory(prefix="hidra-perf-at-") as tmp:
        src = Path(tmp) / "src"
        git = ["git", "-C", str(REPO_DIR)]
        subprocess.run([*git, "worktree", "add", "--quiet", "--detach", str(src), rev], check=True)
        try:
            paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src), *paths]))
            return subprocess.call([sys.executable, str(script), *rest], cwd=src, env=env)
        finally:
            subprocess.run([*git, "worktree", "remove", "--force", str(src)], check=False)


def progress(message: str) -> None:
    """One status line on stderr, so stdout keeps only the report."""
    print(message, file=sys.stderr, flush=True)
