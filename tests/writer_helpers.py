"""Helpers of the writer tests (SPEC §15): a DECTRIS detector feeding a receiver in-process,
an in-process writer, and counting images across the files written.

Imported as ``from writer_helpers import ...`` (tests/ is on the path).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401  (registers the bitshuffle and LZ4 filters for h5py)
import msgspec
import numpy as np
from conftest import wait_for
from source_helpers import Running
from stream_v2_emitter import Emitter

from hidra_ng import Consumer
from hidra_ng.config import WriterConfig
from hidra_ng.sender.sources import parse
from hidra_ng.writer.daemon import WriterDaemon


def image(image_id: int, shape=(64, 48), dtype="<u2", salt: int = 0) -> np.ndarray:
    """A reproducible Poisson image whose first pixel is its image id (to count it)."""
    rng = np.random.default_rng(image_id * 7919 + salt)
    a = rng.poisson(2, shape).astype(dtype)
    a.flat[0] = image_id % np.iinfo(np.dtype(dtype)).max
    return a


@contextlib.contextmanager
def detector(make_producer, stream: str = "p11/eiger", tables: bool = False) -> Iterator[Emitter]:
    """A Stream V2 emitter whose messages a ``dectris:`` source stores in the receiver."""
    with Emitter() as det:
        uri = f"dectris:{det.endpoint}?stream={stream}" + ("&tables=1" if tables else "")
        running = Running(parse(uri), make_producer(f"det-{abs(hash(stream)) % 10_000}"))
        try:
            yield det
        finally:
            running.close()


def send_series(
    det: Emitter,
    series_id: int,
    n: int,
    *,
    channels=("threshold_1",),
    codec="bslz4",
    shape=(64, 48),
    dtype="<u2",
    tables=False,
    end=True,
    start_at: int = 0,
) -> dict[str, list[np.ndarray]]:
    unique = f"series-{series_id}"
    if start_at == 0:
        det.start(series_id, unique, list(channels), shape=shape, tables=tables)
    sent: dict[str, list[np.ndarray]] = {c: [] for c in channels}
    for i in range(start_at, n):
        frames = {c: image(i, shape, dtype, salt=k) for k, c in enumerate(channels)}
        det.image(series_id, unique, i, frames, codec)
        for c in channels:
            sent[c].append(frames[c])
    if end:
        det.end(series_id, unique)
    return sent


def writer_config(api: str, out: Path, **kw) -> WriterConfig:
    return WriterConfig(api=api, dir=str(out), metrics_port=0, **kw)


@contextlib.contextmanager
def running_writer(api: str, out: Path, **kw) -> Iterator[WriterDaemon]:
    daemon = WriterDaemon(writer_config(api, out, **kw))
    daemon.start()
    try:
        yield daemon
    finally:
        daemon.stop()


def stored_count(consumer: Consumer, stream: str) -> int:
    try:
        return consumer.info(stream).count
    except Exception:
        return 0


def master_path(out: Path, stream: str, series_id: int) -> Path:
    return out.joinpath(*stream.split("/")) / f"series_{series_id}_master.h5"


def wait_master(out: Path, stream: str, series_id: int, timeout: float = 60) -> Path:
    path = master_path(out, stream, series_id)
    wait_for(path.exists, timeout=timeout, what=f"{path}")
    return path


def images_in_data_files(directory: Path) -> list[tuple[int, bytes]]:
    """(image_nr, sha of pixels) of every image in every complete data file, read with h5py."""
    import hashlib

    found = []
    for path in sorted(directory.glob("*_data_*.h5")):
        with h5py.File(path, "r") as h5:
            ds = h5["/entry/data/data"]
            low = int(ds.attrs["image_nr_low"])
            ids = h5["/entry/hidra_ng/image_id"][()]
            for k in range(ds.shape[0]):
                found.append((int(ids[k]) + 1, hashlib.sha256(ds[k].tobytes()).digest()))
            assert low == int(ids[0]) + 1
            assert int(ds.attrs["image_nr_high"]) == int(ids[-1]) + 1
    return found


def tally(found_ids: list[int], expected_ids: list[int]) -> dict[str, int]:
    """Jepsen-style counts: lost, duplicated and unexpected images."""
    seen: dict[int, int] = {}
    for i in found_ids:
        seen[i] = seen.get(i, 0) + 1
    expected = set(expected_ids)
    return {
        "lost": len(expected - set(seen)),
        "duplicated": sum(c - 1 for c in seen.values() if c > 1),
        "unexpected": len(set(seen) - expected),
    }


def replace_config(config: WriterConfig, **changes) -> WriterConfig:
    return msgspec.structs.replace(config, **changes)
