"""The facility bridge (SPEC §13) against raw rstream publishing, on this machine.

    .venv/bin/python perf/bridge.py            # make perf-bridge
    .venv/bin/python perf/bridge.py --quick    # make perf-bridge-quick: about a minute

Starts a private RabbitMQ node (scripts/rabbitmq_node.py) and a receiver
process, then per frame size (4 MiB, 1 KiB):

* ``raw``: rstream's ``Producer.send_batch`` of the same payload bytes into a
  fresh stream, batches up to the frame size limit, at most 256 MiB unconfirmed
  (the bridge's default bound), timed until the last confirm: the best a Python
  client of the broker does here;
* ``bridge``: a stored, finished hidra_ng stream of the same frames, bridged
  (in this process, ``hidra_ng.bridge.Bridge``), timed from the start of its
  reading (connected, lease held, publisher declared) to the confirm of the end
  message;
* ratio = bridge / raw (goal >= 0.7).

Raw and bridge run ``--rounds`` times (default 3) back to back, the order
alternating (this machine is shared: single runs swing by 2-3x); the table gives
medians with their range, and the CPU time per message of the client, the
receiver and the broker while timed (psutil).

Then the lag: a producer (its own process, paced_send.py) sends 4 MiB frames at
100 Hz while the bridge runs,
into a receiver whose store (and the producer's spool) is on tmpfs, since this
VM's disk takes only ~150 MB/s; the lag (frames the receiver stored and the
broker has not confirmed, and how long the oldest of them has been stored) is
sampled every 20 ms (perf/lag.py). If ingest cannot sustain 100 Hz of 4 MiB
here, the run is repeated at 100 Hz with smaller frames (1 MiB, then 256 KiB).
Prints one table; nothing is asserted (no thresholds).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import threadprof  # noqa: E402
from lag import LagSamples, fast_dir  # noqa: E402
from rstream import Producer  # noqa: E402

from hidra_ng import Consumer  # noqa: E402
from hidra_ng import Producer as HidraProducer  # noqa: E402
from hidra_ng.bridge import Bridge, broker_name  # noqa: E402
from hidra_ng.config import BridgeConfig  # noqa: E402
from hidra_ng.testing import ReceiverProcess  # noqa: E402
from scripts.rabbitmq_node import RabbitNode  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
INFLIGHT = 256 * MiB


def no_cpu() -> tuple[float, ...]:
    return ()


def delta(before: tuple[float, ...], after: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(b - a for a, b in zip(before, after, strict=True))


def raw_rstream(
    node: RabbitNode, stream: str, size: int, count: int, cpu: Callable = no_cpu
) -> tuple[float, tuple[float, ...]]:
    """Seconds to publish ``count`` payloads of ``size`` bytes with confirms, and the
    CPU seconds ``cpu()`` counts meanwhile."""
    payload = np.random.default_rng(1).bytes(size)

    async def main() -> tuple[float, tuple[float, ...]]:
        async with Producer(
            "127.0.0.1", node.stream_port, username="guest", password="guest", frame_max=64 << 20
        ) as producer:
            await producer.create_stream(stream, exists_ok=True)
            room = asyncio.Semaphore(max(1, INFLIGHT // size))
            done = asyncio.Event()
            confirmed = 0

            def on_confirm(status) -> None:
                nonlocal confirmed
                confirmed += 1
                room.release()
                if confirmed == count:
                    done.set()

            per_batch = max(1, min(1000, (60 << 20) // (size + 64)))
            t0, cpu0 = time.perf_counter(), cpu()
            sent = 0
            while sent < count:
                n = min(per_batch, count - sent)
                for _ in range(n):
                    await room.acquire()
                await producer.send_batch(
                    stream, [payload] * n, publisher_name="raw", on_publish_confirm=on_confirm
                )
                sent += n
            await done.wait()
            return time.perf_counter() - t0, delta(cpu0, cpu())

    return asyncio.run(main())


def fill(rx: ReceiverProcess, spool: Path, stream: str, size: int, count: int) -> None:
    payload = np.random.default_rng(1).bytes(size)
    batch = max(1, min(500, (32 << 20) // size))
    with HidraProducer(rx.ingest, rx.api, spool, "perf-bridge") as p:
        for first in range(0, count, batch):
            p.send_many(
                stream, [(payload, {"i": i}) for i in range(first, min(count, first + batch))]
            )
        p.finish(stream)
        p.flush(timeout=600)


def bridge_seconds(
    node: RabbitNode,
    rx: ReceiverProcess,
    state: Path,
    stream: str,
    count: int,
    prefix: str = "hidra",
    cpu: Callable = no_cpu,
) -> tuple[float, tuple[float, ...]]:
    """Seconds from the start of reading (the bridge is connected, holds its lease
    and has declared its publisher: as the raw run's clock starts before its first
    send) to the end message's confirm, and the CPU seconds ``cpu()`` counts meanwhile.
    """
    config = BridgeConfig(
        api=rx.api,
        rabbitmq=node.stream_uri,
        streams=[stream],
        state_dir=str(state),
        metrics_port=0,
        poll_seconds=0.05,
        prefix=prefix,
    )
    bridge = Bridge(config)
    counter = bridge.metrics.published.labels(stream)
    # the marks are taken in the bridge's threads, where the events happen; this
    # thread waits on an event (polling every ms would take the GIL from the bridge a
    # thousand times a second)
    marks: list[tuple[float, tuple[float, ...]]] = []
    done = threading.Event()
    start_reader, on_confirm = bridge.publisher._start_reader, bridge.publisher._on_confirm

    def reading(link, start: int) -> None:
        if not marks:
            marks.append((time.perf_counter(), cpu()))
        start_reader(link, start)

    def confirmed(pid, ids) -> None:
        on_confirm(pid, ids)
        if counter._value.get() >= count + 1 and not done.is_set():
            marks.append((time.perf_counter(), cpu()))
            done.set()

    bridge.publisher._start_reader = reading
    bridge.publisher._on_confirm = confirmed
    bridge.start()
    try:
        # every frame and the end message confirmed (the stream is retired up to 0.5 s
        # later, at the broker loop's next tick: not part of the throughput)
        if not done.wait(600):
            raise TimeoutError(f"the bridge did not publish {count} frames in 600 s")
        return marks[1][0] - marks[0][0], delta(marks[0][1], marks[1][1])
    finally:
        bridge.stop()


def lag_run(node: RabbitNode, seconds: float, size: int, rate: float = 100.0) -> dict:
    """The bridge's lag behind a producer sending ``size`` frames at ``rate`` Hz.

    Receiver store and spool on tmpfs (perf/lag.py); a thread samples every 20 ms
    what the receiver stored and what the broker confirmed."""
    stream = f"perf/lag-{size}"
    count = int(seconds * rate)
    with fast_dir("hidra-perf-bridge-lag-") as tmp:
        work = Path(tmp)
        rx = ReceiverProcess(work / "store")
        rx.start()
        config = BridgeConfig(
            api=rx.api,
            rabbitmq=node.stream_uri,
            streams=[stream],
            state_dir=str(work / "lag-state"),
            metrics_port=0,
            poll_seconds=0.05,
        )
        bridge = Bridge(config)
        bridge.start()
        lag = LagSamples()
        stop = threading.Event()

        def sample() -> None:
            with Consumer(rx.api) as c:
                while not stop.is_set():
                    try:
                        last = c.info(stream).last
                    except Exception:
                        last = None
                    link = bridge._links.get(stream)
                    if last is not None:
                        stored = last + 1
                        done = stored if bridged(bridge, stream) else (
                            link.confirmed_next if link else 0)  # fmt: skip
                        lag.add(time.perf_counter(), stored, done)
                    stop.wait(0.02)

        sampler = threading.Thread(target=sample)
        sender = None
        try:
            sender = subprocess.Popen(
                [sys.executable, str(Path(__file__).with_name("paced_send.py")), rx.ingest,
                 rx.api, str(work / "lag-spool"), stream, str(size), str(rate), str(count)],
                stdout=subprocess.PIPE, text=True,
            )  # fmt: skip
            assert sender.stdout is not None
            sender.stdout.readline()  # the first frame is stored: the stream exists
            sampler.start()
            t0 = time.perf_counter()
            report = json.loads(sender.stdout.readline())
            sender.wait(60)
            while not bridged(bridge, stream):
                time.sleep(0.005)
            caught_up_s = time.perf_counter() - t0
        finally:
            if sender is not None and sender.poll() is None:
                sender.kill()
            stop.set()
            if sampler.is_alive():
                sampler.join()
            bridge.stop()
            rx.terminate()
    return {
        "size": size,
        "frames": count,
        "send_hz": report["send_hz"],
        "stored_hz": report["stored_hz"],
        "stored_s": report["stored_s"],
        "bridged_s": caught_up_s,
        **lag.summary(),
    }


def bridged(bridge: Bridge, stream: str) -> bool:
    """The end message of ``stream`` is confirmed (the stream is retired a tick later)."""
    link = bridge._links.get(stream)
    return stream in bridge._finished or (link is not None and link.done)


def lag_runs(node: RabbitNode, seconds: float) -> list[dict]:
    """4 MiB at 100 Hz; if ingest cannot sustain that here, also 100 Hz of the largest
    smaller size that it sustains (1 MiB, then 256 KiB)."""
    runs = [lag_run(node, seconds, 4 * MiB)]
    for size in (1 * MiB, 256 * KiB):
        if runs[-1]["stored_hz"] >= 95:
            break
        runs.append(lag_run(node, seconds, size))
    return runs


def lag_line(lag: dict) -> str:
    label = f"{lag['size'] // MiB} MiB" if lag["size"] >= MiB else f"{lag['size'] // KiB} KiB"
    return (
        f"lag at 100 Hz x {label} (store and spool on tmpfs): {lag['frames']} frames sent at"
        f" {lag['send_hz']:.0f} Hz, stored at {lag['stored_hz']:.0f} Hz (all after"
        f" {lag['stored_s']:.2f} s), all in the broker after {lag['bridged_s']:.2f} s;"
        f" broker copy behind the receiver: p50 {lag['lag_frames_p50']:.0f} frames /"
        f" {lag['lag_seconds_p50'] * 1000:.0f} ms, max {lag['lag_frames_max']:.0f} frames /"
        f" {lag['lag_seconds_max'] * 1000:.0f} ms ({lag['samples']} samples every 20 ms)"
    )


class CpuMeter:
    """CPU seconds of this process, the receiver and the broker (with its children)."""

    def __init__(self, rx: ReceiverProcess, node: RabbitNode) -> None:
        assert rx.proc is not None and node.server is not None
        self._rx = psutil.Process(rx.proc.pid)
        self._broker = psutil.Process(node.server.pid)

    def read(self) -> tuple[float, float, float]:
        def tree(proc: psutil.Process) -> float:
            total = 0.0
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                except psutil.NoSuchProcess:
                    continue
                total += t.user + t.system
            return total

        rx = self._rx.cpu_times()
        return time.process_time(), rx.user + rx.system, tree(self._broker)


def measure(args, node: RabbitNode, rx: ReceiverProcess, work: Path, size: int, count: int):
    """``args.rounds`` rounds of raw and bridge, back to back, the order alternating.

    Per round and part: (seconds, CPU seconds of (this process, receiver, broker)
    while timed)."""
    stream = f"perf/{size}"
    meter = CpuMeter(rx, node)
    out = []
    for r in range(args.rounds):
        got: dict[str, tuple[float, tuple[float, ...]]] = {}
        for part in ("raw", "bridge") if r % 2 == 0 else ("bridge", "raw"):
            if part == "raw":
                got[part] = raw_rstream(node, f"raw-{size}-{r}", size, count, meter.read)
                continue
            if args.profile:
                threadprof.install()
            prefix = "hidra" if r == 0 else f"hidra.r{r}"
            got[part] = bridge_seconds(
                node, rx, work / f"state-{size}-{r}", stream, count, prefix, meter.read
            )
            if args.profile:
                threadprof.dump(args.profile, f"bridge-{size}-{r}")
        out.append((got["raw"], got["bridge"]))
        raw_rate, bridge_rate = count / got["raw"][0], count / got["bridge"][0]
        print(
            f"  round {r + 1}: raw {raw_rate:.0f}/s, bridge {bridge_rate:.0f}/s, ratio"
            f" {bridge_rate / raw_rate:.2f}, load {os.getloadavg()[0]:.1f}",
            file=sys.stderr,
        )
    return out


def spread(values: list[float], fmt: str = ".2f") -> str:
    """Median, and the range when there is more than one value."""
    med = statistics.median(values)
    if len(values) == 1:
        return format(med, fmt)
    return f"{med:{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer frames, about a minute")
    ap.add_argument(
        "--only",
        action="append",
        choices=["4mib", "1kib", "lag"],
        help="run only these parts (repeatable; default all)",
    )
    ap.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="cProfile every thread of the bridge runs (threadprof.py) into DIR",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="raw and bridge this many times back to back (order alternating); medians",
    )
    ap.add_argument("--frames", type=int, help="1 KiB frames per run (default 20,000 / 50,000)")
    args = ap.parse_args()
    only = set(args.only or ["4mib", "1kib", "lag"])
    sizes = (
        [(4 * MiB, 48), (1 * KiB, 20_000)] if args.quick else [(4 * MiB, 256), (1 * KiB, 50_000)]
    )
    if args.frames:
        sizes = [(s, args.frames if s == KiB else n) for s, n in sizes]
    sizes = [(s, n) for s, n in sizes if ("4mib" if s == 4 * MiB else "1kib") in only]
    lag_seconds = 1.0 if args.quick else 5.0
    lags: list[dict] = []
    rows = []
    with tempfile.TemporaryDirectory(prefix="hidra-perf-bridge-") as tmp:
        work = Path(tmp)
        node = RabbitNode(work / "rabbitmq", name="hidra-perf")
        node.start()
        rx = ReceiverProcess(work / "store")
        rx.start()
        try:
            for size, count in sizes:
                label = f"{size // MiB} MiB" if size >= MiB else f"{size // KiB} KiB"
                stream = f"perf/{size}"
                print(f"{label}: filling the receiver with {count} frames", file=sys.stderr)
                fill(rx, work / f"spool-{size}", stream, size, count)
                print(f"{label}: raw rstream and bridge, {args.rounds} round(s)", file=sys.stderr)
                rows.append((label, count, size, measure(args, node, rx, work, size, count)))
                print(f"  -> {broker_name(stream)}", file=sys.stderr)
            if "lag" in only:
                print("lag behind a 100 Hz ingest", file=sys.stderr)
                lags = lag_runs(node, lag_seconds)
        finally:
            rx.terminate()
            node.stop()
    mode = "quick" if args.quick else "full"
    load = os.getloadavg()
    print(
        f"\nfacility bridge vs raw rstream ({mode} mode, {args.rounds} round(s): medians"
        f" (min..max); load average now {load[0]:.1f} {load[1]:.1f} {load[2]:.1f})"
    )
    print(
        f"{'frames':>8} {'count':>7} {'raw MB/s':>9} {'raw msg/s':>10} {'bridge MB/s':>12}"
        f" {'bridge msg/s':>13} {'ratio':>6}"
    )
    for label, count, size, runs in rows:
        raw_rate = [count / raw[0] for raw, _ in runs]
        bridge_rate = [count / bridge[0] for _, bridge in runs]
        ratios = [b / r for b, r in zip(bridge_rate, raw_rate, strict=True)]
        print(
            f"{label:>8} {count:>7} {statistics.median(raw_rate) * size / 1e6:>9.1f}"
            f" {statistics.median(raw_rate):>10.0f}"
            f" {statistics.median(bridge_rate) * size / 1e6:>12.1f}"
            f" {statistics.median(bridge_rate):>13.0f} {statistics.median(ratios):>6.2f}"
        )
        if len(runs) > 1:
            print(f"{'':>8} ratio {spread(ratios)}; msg/s raw {spread(raw_rate, '.0f')},"
                  f" bridge {spread(bridge_rate, '.0f')}")  # fmt: skip

        # CPU microseconds per message while timed: raw (its process, the broker);
        # bridge (its process, the receiver, the broker)
        us = [
            [spread([run[part][1][proc] * 1e6 / count for run in runs], ".1f") for proc in range(3)]
            for part in range(2)
        ]
        print(
            f"{'':>8} CPU us/msg while timed: raw client {us[0][0]}, broker {us[0][2]};"
            f" bridge {us[1][0]}, receiver {us[1][1]}, broker {us[1][2]}"
        )
    print()
    for lag in lags:
        print(lag_line(lag))
    return 0


if __name__ == "__main__":
    sys.exit(main())
