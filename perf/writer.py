"""``hidra-ng write`` performance (SPEC §15): throughput against raw h5py direct-chunk writes
of the same bytes in the same run, and lag behind a 100 Hz ingest.

    .venv/bin/python perf/writer.py [--quick]

1. Throughput: a DECTRIS-style series (start, images, end) of 4 MiB images
   (2048x1024 uint16, Poisson mean 2) is stored in a receiver process, raw or as
   bslz4 (the detector's compression). The writer (in this process, as the daemon
   runs it: replay, nxmx data files of 100 images, .part + fsync + rename, the master)
   writes it; the baseline writes the same stored bytes with h5py ``write_direct_chunk``
   into files of 100 images, each fsynced, in this process. Both read from warm memory
   or the receiver; ratio = writer / baseline (goal >= 0.8).
2. Lag: a Producer sends 4 MiB images (bslz4, then raw) at 100 Hz for a few seconds
   while the writer runs, into a receiver with its store and the spool on tmpfs (this
   VM's disk ingests ~150 MB/s: perf/lag.py); the lag of what the writer read and of
   what is in complete data files behind what the receiver stored, in frames and
   seconds, sampled every 20 ms; after the last image, the time until its data file
   and the master are complete.

Prints a table and writes perf/writer.json. Not part of the tests (no timing thresholds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import threadprof
from lag import LagSamples, fast_dir
from stream_v2_emitter import bslz4

from hidra_ng import Consumer, Producer
from hidra_ng.config import WriterConfig
from hidra_ng.testing import ReceiverProcess
from hidra_ng.wire.compression import Encoded
from hidra_ng.writer.daemon import WriterDaemon

MiB = 1 << 20
SHAPE = (2048, 1024)
PER_FILE = 100


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def images(n: int, codec: str) -> list[object]:
    rng = np.random.default_rng(1)
    base = [rng.poisson(2, SHAPE).astype("<u2") for _ in range(8)]
    out = []
    for i in range(n):
        a = base[i % len(base)].copy()
        a.flat[0] = i
        out.append(Encoded(bslz4(a), "<u2", SHAPE, "bslz4") if codec == "bslz4" else a)
    return out


def start_meta(series_id: int, n: int) -> dict:
    return {
        "type": "start", "series_id": series_id, "series_unique_id": f"perf-{series_id}",
        "channels": ["threshold_1"], "arm_date": "2026-01-01T00:00:00+00:00",
        "beam_center_x": 1024.0, "beam_center_y": 512.0, "count_time": 0.009,
        "frame_time": 0.01, "detector_translation": [0, 0, 0.2], "incident_wavelength": 1.0,
        "pixel_size_x": 75e-6, "pixel_size_y": 75e-6, "sensor_material": "Si",
        "sensor_thickness": 450e-6, "saturation_value": 65534, "number_of_images": n,
        "goniometer": {"omega": {"start": 0.0, "increment": 0.1}},
    }  # fmt: skip


def image_meta(series_id: int, i: int) -> dict:
    return {"type": "image", "image_id": i, "series_id": series_id,
            "series_unique_id": f"perf-{series_id}", "channel": "threshold_1"}  # fmt: skip


def store_series(rx: ReceiverProcess, spool: Path, stream: str, sid: int, frames: list) -> None:
    with Producer(rx.ingest, rx.api, spool, f"perf-{stream.replace('/', '-')}") as p:
        p.send(stream, None, start_meta(sid, len(frames)))
        for i in range(0, len(frames), 16):
            p.send_many(
                stream, [(f, image_meta(sid, i + k)) for k, f in enumerate(frames[i : i + 16])]
            )
        p.send(stream, None, {"type": "end", "series_id": sid, "series_unique_id": f"perf-{sid}"})
        p.flush(600)


def run_writer(api: str, out: Path, stream: str, sid: int) -> float:
    config = WriterConfig(api=api, dir=str(out), streams=[stream], frames_per_file=PER_FILE,
                          metrics_port=0)  # fmt: skip
    master = out.joinpath(*stream.split("/")) / f"series_{sid}_master.h5"
    began = time.perf_counter()
    with WriterDaemon(config):
        while not master.exists():
            time.sleep(0.005)
        took = time.perf_counter() - began
    return took


def replay_only(api: str, stream: str) -> float:
    began = time.perf_counter()
    with Consumer(api) as c:
        for _ in c.replay(stream, decode=False):
            pass
    return time.perf_counter() - began


def baseline(api: str, stream: str, out: Path, n: int) -> float:
    """Raw h5py: the same stored bytes as direct chunks, files of PER_FILE, each fsynced
    when written, then their directory once; the bytes are read before the clock starts."""
    with Consumer(api) as c:
        stored = [f for f in c.replay(stream, decode=False) if f.data is not None]
    assert len(stored) == n
    codec = stored[0].compression
    opts = dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4")) if codec == "bslz4" else {}
    out.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    for first in range(0, n, PER_FILE):
        path = out / f"raw_{first:06d}.h5"
        with h5py.File(path, "w") as h5:
            count = min(PER_FILE, n - first)
            ds = h5.create_dataset("data", shape=(count, *SHAPE), dtype="<u2",
                                   chunks=(1, *SHAPE), **opts)  # fmt: skip
            for k in range(count):
                ds.id.write_direct_chunk((k, 0, 0), stored[first + k].data)
        fd = os.open(path, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    # the files' names durable too (the writer fsyncs its directory after renames)
    fd = os.open(out, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    return time.perf_counter() - began


def lag_run(out_root: Path, seconds: float, codec: str = "bslz4", rate: float = 100.0) -> dict:
    """4 MiB images (bslz4 or raw) at 100 Hz (batches of 10 every 100 ms, as a detector
    source spools them) into a receiver whose store and the producer's spool are on tmpfs
    (perf/lag.py); the output files on disk. A thread samples every 20 ms what the receiver
    stored, what the writer read (handed to the open data file) and what is in complete
    data files."""
    import threading

    stream, sid, batch = f"perf/lag-{codec}/threshold_1", 9, 10
    n = int(seconds * rate)
    frames = images(n, codec)
    out = out_root / f"lag-out-{codec}"
    read_lag, file_lag = LagSamples(), LagSamples()
    sampling = threading.Event()
    master = out.joinpath(*stream.split("/")) / f"series_{sid}_master.h5"

    def sample(w: WriterDaemon, api: str) -> None:
        with Consumer(api) as c:
            while not sampling.wait(0.02):
                writer = w.writers.get(stream)
                last = c.info(stream).last
                if writer is None or last is None:
                    continue
                now = time.perf_counter()
                read_lag.add(now, last + 1, writer.read_index + 1)
                file_lag.add(now, last + 1, writer.next_index)

    with fast_dir("hidra-perf-writer-lag-") as tmp, ReceiverProcess(Path(tmp) / "store") as rx:
        config = WriterConfig(api=rx.api, dir=str(out), streams=[stream],
                              frames_per_file=PER_FILE, metrics_port=0)  # fmt: skip
        spool = Path(tmp) / "lag-spool"
        with WriterDaemon(config) as w, Producer(rx.ingest, rx.api, spool, "lag") as p:
            p.send(stream, None, start_meta(sid, n))
            p.flush(60)
            sampler = threading.Thread(target=sample, args=(w, rx.api), daemon=True)
            sampler.start()
            began = time.perf_counter()
            for i in range(0, n, batch):
                due = began + i / rate
                time.sleep(max(0.0, due - time.perf_counter()))
                p.send_many(stream, [(f, image_meta(sid, i + k))
                                     for k, f in enumerate(frames[i : i + batch])])  # fmt: skip
            sent_at = time.perf_counter()
            end = {"type": "end", "series_id": sid, "series_unique_id": f"perf-{sid}"}
            p.send(stream, None, end)
            p.flush(120)
            stored_at = time.perf_counter()
            while not master.exists():
                time.sleep(0.005)
            done = time.perf_counter()
            sampling.set()
            sampler.join()
    return {
        "codec": codec, "images": n, "rate_hz": round(n / (sent_at - began), 1),
        "stored_hz": round(n / (stored_at - began), 1),
        "read": read_lag.summary(),
        # data files of PER_FILE images: a complete file trails by up to PER_FILE images
        "in_files": file_lag.summary(),
        "all_stored_to_master_seconds": round(done - stored_at, 3),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="a short run (under a minute or two)")
    ap.add_argument("--only", action="append", choices=["raw", "bslz4", "lag"],
                    help="run only these parts (repeatable; default all)")  # fmt: skip
    ap.add_argument("--profile", type=Path, metavar="DIR",
                    help="cProfile every thread of the writer runs into DIR")  # fmt: skip
    args = ap.parse_args()
    only = set(args.only or ["raw", "bslz4", "lag"])
    n = 60 if args.quick else 300
    rounds = 3 if args.quick else 5
    lag_seconds = 3.0 if args.quick else 10.0
    results: dict = {"machine": f"{platform.processor() or platform.machine()}, "
                     f"{os.cpu_count()} cores, Python {platform.python_version()}",
                     "quick": args.quick, "figures": {}}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="hidra-perf-writer-") as tmp:
        work = Path(tmp)
        with ReceiverProcess(work / "store") as rx:
            for sid, codec in ((1, "none"), (2, "bslz4")):
                if ("raw" if codec == "none" else codec) not in only:
                    continue
                stream = f"perf/{codec}/threshold_1"
                frames = images(n, codec)
                stored_bytes = sum(
                    len(f.payload) if isinstance(f, Encoded) else f.nbytes for f in frames
                )
                store_series(rx, work / f"spool-{codec}", stream, sid, frames)
                del frames
                bases, writers, cpu_b, cpu_w, replays = [], [], [], [], []
                for r in range(rounds):  # interleaved, medians: the disk's speed drifts
                    replays.append(replay_only(rx.api, stream))
                    c0 = cpu()
                    bases.append(baseline(rx.api, stream, work / f"base-{codec}-{r}", n))
                    c1 = cpu()
                    if args.profile:
                        threadprof.install()
                    writers.append(run_writer(rx.api, work / f"out-{codec}-{r}", stream, sid))
                    if args.profile:
                        threadprof.dump(args.profile, f"writer-{codec}-{r}")
                    c2 = cpu()
                    cpu_b.append(c1 - c0)
                    cpu_w.append(c2 - c1)
                t_base, t_writer = statistics.median(bases), statistics.median(writers)
                name = f"writer_4mib_{'raw' if codec == 'none' else codec}"
                results["figures"][name] = {
                    "value": round(n / t_writer, 1), "unit": "images/s",
                    "mb_s": round(stored_bytes / t_writer / 1e6, 1),
                    "baseline": f"raw h5py write_direct_chunk, files of {PER_FILE}, fsyncs",
                    "baseline_value": round(n / t_base, 1),
                    "ratio": round(t_base / t_writer, 2),
                    "images": n, "stored_bytes": stored_bytes, "rounds": rounds,
                    "writer_seconds": [round(t, 3) for t in writers],
                    # reading the series from the receiver alone, nothing written: the
                    # writer cannot be faster than this
                    "replay_only_seconds": [round(t, 3) for t in replays],
                    "ratio_to_replay": round(statistics.median(replays) / t_writer, 2),
                    # CPU seconds of this process (all threads; the baseline's includes its
                    # replay of the stored bytes before the timed part)
                    "writer_cpu_seconds": round(statistics.median(cpu_w), 3),
                    "baseline_cpu_seconds": round(statistics.median(cpu_b), 3),
                    "load_average": round(os.getloadavg()[0], 1),
                    "baseline_seconds": [round(t, 3) for t in bases],
                }  # fmt: skip
        for codec in ("bslz4", "none") if "lag" in only else ():
            name = f"writer_lag_100hz_{'raw' if codec == 'none' else codec}"
            results["figures"][name] = lag_run(work, lag_seconds, codec)
    for name, fig in results["figures"].items():
        print(f"{name:28s} " + ", ".join(f"{k}={v}" for k, v in fig.items()))
    if only != {"raw", "bslz4", "lag"} or args.profile:
        return 0  # a partial or profiled run: writer.json keeps the last full one
    (Path(__file__).parent / "writer.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
