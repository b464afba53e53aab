"""hidra_ng beside RabbitMQ streams and NATS JetStream on this machine (SPEC §17).

    .venv/bin/python perf/peers.py            # make perf-peers: 3 rounds, 6-8 minutes
    .venv/bin/python perf/peers.py --quick    # make perf-peers-quick: 1 short round

Installs Debian's rabbitmq-server and nats-server when missing (as root; otherwise
it prints how and exits 2), starts a private RabbitMQ node (stream plugin) and a
private nats-server (JetStream, file storage) on loopback with dirs of their own,
and a hidra_ng receiver process (and a second one under eatmydata, with its fsyncs
off: ``hidra_ng_without_fsync``, what the peers' page-cache confirms would give
hidra_ng; Debian's eatmydata is installed like the servers); then runs four
workloads on every system,
interleaved over rounds (each round runs every workload on every system, the
systems' order rotated from round to round):

ingest_4mib
    MB/s of 4 MiB frames (the Poisson(2) uint16 images of perf/payloads.py) from a
    client in this process to the server, until every frame is acknowledged.
ingest_1kib
    msg/s of 1 KiB messages, 1000 per call (hidra_ng's send_many, rstream's
    send_batch; nats-py publishes one at a time, 4000 unacknowledged at most).
readback_4mib
    MB/s reading the stream ingest_4mib stored in the same round, from its start.
live_latency_4mib
    ms from the producer's send call returning to the consumer receiving the frame,
    one frame at a time, one host, one clock: p50 and p99 over all rounds' samples.

For each it reports the median over rounds, the CPU seconds per GB of the client
(this process) and of the server process tree (psutil), and hidra_ng / peer. Each
system's durability at the settings used is stated with the results. Prints a
table, writes perf/peers.json; everything it started is stopped by pid, also on
Ctrl-C. Exit 1 if a run failed (the others are still reported).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from harness import PERF_DIR, REPO_DIR, machine, progress

sys.path.insert(0, str(REPO_DIR))  # scripts.rabbitmq_node

from payloads import messages_1kib
from peer_report import render_markdown, render_text
from peer_services import (
    EATMYDATA_PACKAGE,
    NATS_PACKAGE,
    NatsServer,
    SetupError,
    debian_version,
    eatmydata_library,
    nats_version,
    require_debian,
    supports_sync_always,
)
from peer_stats import WITHOUT_FSYNC, Sample, System, Workload, headline, ratio, summarize

from scripts.rabbitmq_node import PACKAGE as RABBITMQ_PACKAGE
from scripts.rabbitmq_node import SERVER as RABBITMQ_SERVER
from scripts.rabbitmq_node import RabbitNode, RabbitNodeError

PEERS_JSON = PERF_DIR / "peers.json"

WORKLOADS = (
    Workload("ingest_4mib", "MB/s", "4 MiB frames ingested, every one acknowledged as stored"),
    Workload("ingest_1kib", "msg/s", "1 KiB messages ingested, 1000 per call, acknowledged"),
    Workload("readback_4mib", "MB/s", "the stored 4 MiB stream read back from its start"),
    Workload(
        "live_latency_4mib",
        "ms",
        "send call returning -> consumer receiving, one 4 MiB frame at a time",
        higher_is_better=False,
        cpu_per_gb=False,
    ),
)


@dataclass(frozen=True)
class PeerScale:
    name: str
    rounds: int
    frames_4mib: int
    batches_1kib: int  # calls of 1000 messages
    latency_warmup: int
    latency_samples: int


QUICK = PeerScale("quick", rounds=1, frames_4mib=32, batches_1kib=10,
                  latency_warmup=3, latency_samples=20)  # fmt: skip
FULL = PeerScale("full", rounds=3, frames_4mib=256, batches_1kib=50,
                 latency_warmup=10, latency_samples=100)  # fmt: skip
BATCH_1KIB = 1000


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # the clients' own warnings (a reconnect, a re-subscription) belong in the report
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(levelname)s: %(message)s")
    scale = QUICK if args.quick else FULL
    if args.rounds:
        scale = replace(scale, rounds=args.rounds)
    if shutil.which(args.nats_server) is None and args.nats_server != NATS_PACKAGE:
        print(f"perf-peers: --nats-server {args.nats_server} is no program", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)  # stop the servers as on Ctrl-C
    try:
        require_debian(
            [RABBITMQ_PACKAGE, NATS_PACKAGE, EATMYDATA_PACKAGE],
            [str(RABBITMQ_SERVER), NATS_PACKAGE, EATMYDATA_PACKAGE],
        )
        with contextlib.ExitStack() as stack:
            systems, not_run, versions = _start(stack, args.nats_server)
            results = _measure(scale, systems, not_run, versions, args.rstream_read_chunk)
    except (SetupError, RabbitNodeError) as err:
        print(f"perf-peers: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("perf-peers: interrupted; every server it started is stopped", file=sys.stderr)
        return 130
    _write_json(args.output, results)
    print(render_text(results))
    if args.markdown:
        print(render_markdown(results))
    progress(f"wrote {args.output} in {results['seconds']} s")
    return 1 if results["errors"] else 0


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="one short round (a minute or two)")
    ap.add_argument("--rounds", type=int, default=0, help="override the number of rounds")
    ap.add_argument("--markdown", action="store_true", help="also print the README's table")
    ap.add_argument("--output", type=Path, default=PEERS_JSON, help="results file")
    ap.add_argument(
        "--nats-server", default="nats-server", metavar="PATH",
        help="the nats-server binary (default: Debian's on PATH); from 2.10 on, JetStream"
        " is also measured with sync_interval: always",
    )  # fmt: skip
    ap.add_argument(
        "--rstream-read-chunk", type=int, default=0, metavar="BYTES",
        help="bytes rstream reads from its socket per call (default: rstream's own, 256"
        " in rstream 1.1.1); for a look at what a faster client would get",
    )  # fmt: skip
    return ap.parse_args(argv)


# ------------------------------------------------------------------- servers


def _start(
    stack: contextlib.ExitStack, nats_binary: str
) -> tuple[list[System], dict[str, str], dict[str, str]]:
    """Start every server and client, each stopped by ``stack``; (systems, not run, versions)."""
    # the clients are imported once the packages are checked, so --help and a missing
    # package answer at once
    from peer_hidra import HidraSystem
    from peer_nats import NatsSystem
    from peer_rabbitmq import MOST_DURABLE, RabbitStreamsSystem

    base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hidra-peers-")))
    progress(f"starting hidra_ng's receiver, RabbitMQ and nats-server under {base}")
    systems: list[System] = []

    def add(system: System) -> None:
        stack.callback(system.close)
        systems.append(system)

    add(HidraSystem(base / "hidra"))
    # what the two fsyncs per frame cost: the peers confirm from the page cache
    add(HidraSystem(base / "hidra-without-fsync", without_fsync=eatmydata_library()))
    node = RabbitNode(base / "rabbitmq", name="hidra-peers")
    stack.callback(node.stop)
    node.start()
    add(RabbitStreamsSystem(node))
    nats_default = stack.enter_context(NatsServer(base / "nats", nats_binary))
    add(NatsSystem(nats_default))
    not_run = {"rabbitmq_streams_most_durable": MOST_DURABLE}
    found = nats_version(nats_binary)
    if supports_sync_always(found):
        synced = stack.enter_context(NatsServer(base / "nats-sync", nats_binary, sync_always=True))
        add(NatsSystem(synced, name="nats_jetstream_sync_always"))
    else:
        not_run["nats_jetstream_sync_always"] = (
            f"nats-server {'.'.join(map(str, found))} has no such setting: it rejects"
            " 'sync_interval' (unknown field); 'sync_interval: always' exists from 2.10.0"
            " on (pass one with --nats-server PATH)"
        )
    versions = {
        "rabbitmq-server": debian_version(RABBITMQ_PACKAGE),
        "nats-server": f"{'.'.join(map(str, found))} ({shutil.which(nats_binary)})",
        "rstream": version("rstream"),
        "nats-py": version("nats-py"),
    }
    return systems, not_run, versions


# ---------------------------------------------------------------- measuring


def _measure(
    scale: PeerScale,
    systems: list[System],
    not_run: dict[str, str],
    versions: dict[str, str],
    rstream_read_chunk: int,
) -> dict[str, Any]:
    import rstream.connection

    if rstream_read_chunk:
        # rstream 1.1.1 reads 256 bytes per call, which bounds its consumers (README)
        rstream.connection.CHUNK_SIZE = rstream_read_chunk
    started = time.perf_counter()
    load_before = os.getloadavg()
    machine_line, machine_info = machine()
    progress(f"perf-peers {scale.name}: {scale.rounds} rounds on {machine_line}")
    samples: dict[tuple[str, str], list[Sample]] = {}
    errors: dict[str, str] = {}
    for r in range(1, scale.rounds + 1):
        shift = (r - 1) % len(systems)
        _round(r, scale, systems[shift:] + systems[:shift], samples, errors)
    return {
        "machine": machine_line,
        "mode": scale.name,
        "scale": scale.__dict__,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 1),
        # other work on the machine during the run (2 cores, shared)
        "load_average_1min": {"start": load_before[0], "end": os.getloadavg()[0]},
        "systems": {s.name: {"durability": s.durability} for s in systems},
        "not_run": not_run,
        "versions": {**versions, "rstream read chunk": f"{rstream.connection.CHUNK_SIZE} bytes"},
        "workloads": _results(systems, samples),
        "errors": errors,
        "machine_detail": machine_info,
    }


def _round(
    r: int,
    scale: PeerScale,
    systems: list[System],
    samples: dict[tuple[str, str], list[Sample]],
    errors: dict[str, str],
) -> None:
    """Every workload on every system once; the 4 MiB stream is read back, then dropped."""
    batch = [messages_1kib()[i % len(messages_1kib())] for i in range(BATCH_1KIB)]
    big, small, live = f"peers.r{r}.ingest_4mib", f"peers.r{r}.ingest_1kib", f"peers.r{r}.live"
    steps = [
        ("ingest_4mib", lambda s: s.ingest_4mib(big, scale.frames_4mib), None),
        ("readback_4mib", lambda s: s.readback_4mib(big, scale.frames_4mib), big),
        ("ingest_1kib", lambda s: s.ingest_small(small, batch, scale.batches_1kib), small),
        (
            "live_latency_4mib",
            lambda s: s.latency_4mib(live, scale.latency_warmup, scale.latency_samples),
            live,
        ),
    ]
    for workload, run, drop_after in steps:
        for system in systems:
            key = f"{system.name}/{workload}"
            needs = f"{system.name}/ingest_4mib" if workload == "readback_4mib" else key
            if key in errors or needs in errors:
                continue
            t0 = time.perf_counter()
            try:
                sample = run(system)
            except Exception as err:
                errors[key] = f"{type(err).__name__}: {err}"
                progress(f"[round {r}] {key} FAILED:\n{traceback.format_exc()}")
            else:
                samples.setdefault((system.name, workload), []).append(sample)
                progress(f"[round {r}] {key}: {_shown(workload, sample)}"
                         f" ({time.perf_counter() - t0:.1f} s)")  # fmt: skip
            if drop_after:
                _drop(system, drop_after, errors)


def _drop(system: System, stream: str, errors: dict[str, str]) -> None:
    try:
        system.drop(stream)
    except Exception as err:
        errors[f"{system.name}/drop {stream}"] = f"{type(err).__name__}: {err}"


def _shown(workload: str, s: Sample) -> str:
    if s.latencies_ms:
        ordered = sorted(s.latencies_ms)
        return f"p50 {ordered[len(ordered) // 2]:.1f} ms"
    rate = f"{s.msg_per_s:,.0f} msg/s" if workload == "ingest_1kib" else f"{s.mb_per_s:,.0f} MB/s"
    cpu = (s.client_cpu_seconds + s.server_cpu_seconds) / (s.nbytes / 1e9)
    return f"{rate}, {cpu:.2f} CPU s/GB"


def _results(
    systems: list[System], samples: dict[tuple[str, str], list[Sample]]
) -> dict[str, dict[str, Any]]:
    """Per workload: each system's summary, and hidra_ng / peer for the headline and CPU."""
    out: dict[str, dict[str, Any]] = {}
    for w in WORKLOADS:
        entry: dict[str, Any] = {
            "unit": w.unit,
            "doc": w.doc,
            "higher_is_better": w.higher_is_better,
            "systems": {},
            "hidra_ng_over_peer": {},
        }
        for s in systems:
            if (s.name, w.name) in samples:
                entry["systems"][s.name] = summarize(w, samples[(s.name, w.name)])
        entry["hidra_ng_over_peer"] = _over_peers(w, entry["systems"], "hidra_ng")
        if WITHOUT_FSYNC in entry["systems"]:  # the peers confirm from the page cache too
            entry["without_fsync_over_peer"] = _over_peers(
                w, {n: v for n, v in entry["systems"].items() if n != "hidra_ng"}, WITHOUT_FSYNC
            )
        out[w.name] = entry
    return out


def _over_peers(
    w: Workload, systems: dict[str, dict[str, Any]], ours_name: str
) -> dict[str, dict[str, float | None]]:
    """``ours_name`` / each other system, for the headline (and p99, CPU per GB)."""
    ours = systems.get(ours_name)
    out: dict[str, dict[str, float | None]] = {}
    for name, theirs in systems.items():
        if name == ours_name or ours is None:
            continue
        ratios = {w.name: _rounded(ratio(headline(w, ours), headline(w, theirs)))}
        if w.unit == "ms":
            ratios["p99"] = _rounded(ratio(ours["p99_ms"], theirs["p99_ms"]))
        if w.cpu_per_gb:
            ratios["cpu_s_per_gb"] = _rounded(
                ratio(ours["cpu_s_per_gb"]["total"], theirs["cpu_s_per_gb"]["total"])
            )
        out[name] = ratios
    return out


def _rounded(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


def _write_json(path: Path, results: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    sys.exit(main())
