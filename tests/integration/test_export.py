"""HDF5 export: streams of each codec written out and read back with h5py + hdf5plugin."""

from __future__ import annotations

import itertools
import json

import h5py
import hdf5plugin  # noqa: F401  registers the filters h5py reads the export with
import numpy as np
import psutil
import pytest
from stream_v2_emitter import bslz4, lz4_hdf5

from hidra_ng import Consumer, Producer
from hidra_ng.cli import main
from hidra_ng.client.export import export_hdf5
from hidra_ng.errors import InvalidFrame, InvalidInput
from hidra_ng.wire.compression import Encoded

SHAPE = (40, 56)
FILTERS = {"none": None, "lz4": 32026, "zstd": 32026, "bslz4": 32008, "lz4-hdf5": 32004}


def frames(n: int, dtype: str = "<u2", seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).poisson(3, (n, *SHAPE)).astype(dtype)


def as_sent(array: np.ndarray, codec: str):
    if codec == "bslz4":
        return Encoded(bslz4(array), array.dtype.str, array.shape, "bslz4")
    if codec == "lz4-hdf5":
        return Encoded(lz4_hdf5(array.tobytes(), 1024), array.dtype.str, array.shape, "lz4-hdf5")
    return array


@pytest.fixture
def producer(make_producer):
    """A new producer (own sender id and spool) per call, with the given compression."""
    count = itertools.count()

    def make(compression: str = "none") -> Producer:
        return make_producer(f"export-{next(count)}", compression=compression)

    return make


@pytest.fixture
def api(receiver) -> str:
    return receiver.endpoints["api"]


@pytest.mark.parametrize("codec", ["none", "lz4", "zstd", "bslz4", "lz4-hdf5"])
def test_export_reads_back_equal_to_the_stream(producer, api, tmp_path, codec):
    data = frames(6, "<u4" if codec == "zstd" else "<u2")
    p = producer(codec if codec in ("lz4", "zstd") else "none")
    stream = f"exp/{codec}"
    p.send_many(stream, [(as_sent(a, codec), {"i": i}) for i, a in enumerate(data[:3])])
    p.send(stream, None, {"type": "start", "note": "metadata only"})
    p.send_many(stream, [(as_sent(a, codec), {"i": i + 3}) for i, a in enumerate(data[3:])])
    p.flush(10)
    calls: list[tuple[int, int]] = []
    out = tmp_path / "out.h5"
    result = export_hdf5(api, stream, out, progress=lambda d, t: calls.append((d, t)))

    assert calls == [(i, 7) for i in range(1, 8)]
    assert (result.frames, result.metadata_messages, result.compression) == (6, 1, codec)
    with h5py.File(out) as f, Consumer(api) as c:
        assert f.attrs["default"] == "entry"
        assert f["entry"].attrs["NX_class"] == "NXentry"
        group = f["entry/data"]
        assert group.attrs["NX_class"] == "NXdata" and group.attrs["signal"] == "data"
        dset = group["data"]
        assert dset.shape == (6, *SHAPE) and dset.chunks == (1, *SHAPE)
        assert dset.dtype == data.dtype
        np.testing.assert_array_equal(dset[...], data)
        assert list(group["index"][...]) == [0, 1, 2, 4, 5, 6]
        assert [json.loads(m) for m in group["meta"].asstr()[...]] == [{"i": i} for i in range(6)]
        assert list(f["entry/metadata/index"][...]) == [3]
        assert json.loads(f["entry/metadata/meta"].asstr()[0])["note"] == "metadata only"
        plist = dset.id.get_create_plist()
        if FILTERS[codec] is None:
            assert plist.get_nfilters() == 0
        else:
            assert plist.get_filter(0)[0] == FILTERS[codec]
        if codec in ("bslz4", "lz4-hdf5"):  # the stored bytes are the chunks, not recompressed
            for row, index in enumerate(group["index"][...]):
                _, chunk = dset.id.read_direct_chunk((row, 0, 0))
                assert chunk == c.get(stream, int(index), decode=False).data


def test_export_of_mixed_codecs_and_a_range(producer, api, tmp_path):
    data = frames(8)
    p = producer("lz4")
    p.send_many("exp/mixed", [(as_sent(a, "lz4"), {"i": i}) for i, a in enumerate(data[:4])])
    p.send_many("exp/mixed", [(as_sent(a, "bslz4"), {"i": i + 4}) for i, a in enumerate(data[4:])])
    p.flush(10)
    out = tmp_path / "mixed.h5"
    result = export_hdf5(api, "exp/mixed", out, start=2, stop=7)
    assert (result.start, result.stop, result.frames) == (2, 7, 5)
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["entry/data/data"][...], data[2:7])
        assert list(f["entry/data/index"][...]) == [2, 3, 4, 5, 6]


def test_failed_export_leaves_no_file(producer, api, tmp_path):
    p = producer()
    p.send("exp/shapes", np.zeros((4, 4), "u1"))
    p.send("exp/shapes", np.zeros((4, 5), "u1"))
    p.send("exp/bytes", b"a file, not a frame")
    p.flush(10)
    out = tmp_path / "out" / "bad.h5"
    out.parent.mkdir()
    with pytest.raises(InvalidFrame, match=r"frame 1 of stream 'exp/shapes' has dtype \|u1"):
        export_hdf5(api, "exp/shapes", out)
    with pytest.raises(InvalidInput, match="holds bytes, not an array"):
        export_hdf5(api, "exp/bytes", out)
    assert list(out.parent.iterdir()) == []
    out.write_bytes(b"precious")
    with pytest.raises(InvalidInput, match="exists"):
        export_hdf5(api, "exp/shapes", out, stop=1)
    assert out.read_bytes() == b"precious"
    with pytest.raises(InvalidInput, match="range start=0 stop=9"):
        export_hdf5(api, "exp/shapes", tmp_path / "x.h5", stop=9)


def test_export_command_prints_a_summary(producer, api, tmp_path, capsys):
    p = producer("zstd")
    p.send_many("exp/cli", [(a, None) for a in frames(3)])
    p.flush(10)
    assert main(["export", "exp/cli", str(tmp_path / "cli.h5"), "--api", api]) == 0
    with h5py.File(tmp_path / "cli.h5") as f:
        assert f["entry/data/data"].shape == (3, 40, 56)
    line = capsys.readouterr().out
    assert "3 frames (40x56 <u2, zstd)" in line and "exp/cli indices 0..2" in line


@pytest.mark.slow
def test_export_memory_stays_bounded(receiver_process, tmp_path):
    """A 256 MiB stream exports with far less memory than its size."""
    frame = np.random.default_rng(0).integers(0, 2**16, (512, 1024), np.uint16)  # 1 MiB
    with Producer(
        receiver_process.ingest, receiver_process.api, tmp_path / "spool", sender_id="big"
    ) as p:
        for i in range(256):
            p.send("exp/big", frame, {"i": i})
        p.flush(60)
    me = psutil.Process()
    before = me.memory_info().rss
    peak = before
    out = tmp_path / "big.h5"

    def watch(done: int, total: int) -> None:
        nonlocal peak
        if done % 16 == 0:
            peak = max(peak, me.memory_info().rss)

    result = export_hdf5(receiver_process.api, "exp/big", out, progress=watch)
    assert result.frames == 256
    assert peak - before < 64 << 20, f"RSS grew by {(peak - before) >> 20} MiB"
    with h5py.File(out) as f:
        np.testing.assert_array_equal(f["entry/data/data"][255], frame)
