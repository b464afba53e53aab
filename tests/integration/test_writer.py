"""``hidra-ng write`` end to end in-process: a DECTRIS series through a ``dectris:`` source,
the receiver and the writer, read back by software nobody here wrote (fabio, h5py with
hdf5plugin, silx, tifffile)."""

from __future__ import annotations

import json

import fabio
import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
from conftest import wait_for
from nxdl_check import check, depends_on_chains
from writer_helpers import (
    detector,
    image,
    running_writer,
    send_series,
    stored_count,
    wait_master,
)

from hidra_ng import Consumer


@pytest.fixture
def api(receiver) -> str:
    return receiver.endpoints["api"]


@pytest.mark.parametrize("codec", ["bslz4", "none", "lz4"])
def test_a_dectris_series_opens_in_fabio_and_h5py(make_producer, api, tmp_path, codec):
    out = tmp_path / "out"
    stream = "p11/eiger/threshold_1"
    with (
        detector(make_producer) as det,
        running_writer(api, out, streams=["p11/**"], frames_per_file=4) as writer,
    ):
        sent = send_series(det, 12, 10, codec=codec)["threshold_1"]
        master = wait_master(out, stream, 12)
    directory = master.parent
    assert sorted(p.name for p in directory.glob("*.h5")) == [
        "series_12_data_000001.h5",
        "series_12_data_000002.h5",
        "series_12_data_000003.h5",
        "series_12_master.h5",
    ]
    assert not list(directory.glob("*.part"))
    # fabio opens the master through its Eiger support and reads every image
    img = fabio.open(str(master))
    assert type(img).__name__ == "EigerImage"
    assert img.nframes == 10
    for i in range(10):
        np.testing.assert_array_equal(img.getframe(i).data, sent[i])
    # h5py with hdf5plugin reads the data files; images as stored, one per chunk
    with h5py.File(directory / "series_12_data_000002.h5", "r") as h5:
        ds = h5["/entry/data/data"]
        assert ds.shape == (4, 64, 48) and ds.chunks == (1, 64, 48)
        assert (ds.attrs["image_nr_low"], ds.attrs["image_nr_high"]) == (5, 8)
        np.testing.assert_array_equal(ds[1], sent[5])
        if codec == "bslz4":
            filter_id, _flags, options, _name = ds.id.get_create_plist().get_filter(0)
            # bitshuffle 32008; after its version and element size, block size 0 and LZ4 (2),
            # the options DECTRIS's file writer uses
            assert filter_id == 32008 and tuple(options)[2:] == (2, 0, 2)
            with Consumer(api) as c:
                stored = c.get(stream, 6, decode=False)  # index 6 = image 5
            assert stored.compression == "bslz4"
            _mask, raw = ds.id.read_direct_chunk((1, 0, 0))
            assert raw == stored.data  # written as stored, never recompressed
    with h5py.File(master, "r") as h5:
        assert h5["/entry/definition"][()] == b"NXmx"
        assert h5["/entry/data/data_000003"].shape == (2, 64, 48)
        assert h5["/entry/instrument/detector/distance"][()] == pytest.approx(0.12)
        omega = h5["/entry/sample/transformations/omega"][()]
        np.testing.assert_allclose(omega, 0.1 * np.arange(10))
    report = check(master)  # every element NXmx requires, from the real start message
    assert report.missing == [] and report.wrong == []
    assert depends_on_chains(master)["/entry/sample/depends_on"] == [
        "/entry/sample/transformations/omega"
    ]
    assert writer.metrics.series.labels(stream)._value.get() == 1


def test_silx_finds_the_nxdata_of_a_master_and_of_an_hdf5_file(
    make_producer, api, tmp_path, monkeypatch
):
    import silx.io
    from silx.io.nxdata import get_default, is_valid_nxdata

    out = tmp_path / "out"
    with (
        detector(make_producer) as det,
        running_writer(api, out, streams=["**"], frames_per_file=2),
    ):
        sent = send_series(det, 3, 5)["threshold_1"]
        master = wait_master(out, "p11/eiger/threshold_1", 3)
    assert len(list(master.parent.glob("series_3_data_*.h5"))) == 3
    monkeypatch.chdir(tmp_path)  # the virtual dataset finds its files beside the master
    with silx.io.open(str(master)) as h5:
        nxdata = get_default(h5)
        assert nxdata is not None and is_valid_nxdata(h5["/entry/data"])
        # the signal spans the three data files: every image of the series
        assert nxdata.signal.shape == (5, 64, 48)
        assert nxdata.interpretation == "image"
        for i in range(5):
            np.testing.assert_array_equal(nxdata.signal[i], sent[i])
    # the DECTRIS links are still there, and fabio reads every image through them
    img = fabio.open(str(master))
    assert img.nframes == 5
    for i in range(5):
        np.testing.assert_array_equal(img.getframe(i).data, sent[i])


def test_hdf5_format_writes_the_export_layout_a_file_per_n_frames(
    make_producer, api, tmp_path, receiver
):
    out = tmp_path / "out"
    frames = [image(i, (32, 16), "<u2") for i in range(7)]
    p = make_producer("plain", compression="lz4")
    for i, f in enumerate(frames):
        p.send("sim/run1", f, {"i": i})
    p.finish("sim/run1")
    p.flush(30)
    with running_writer(api, out, streams=["sim/*"], format="hdf5", frames_per_file=3) as w:
        wait_for(lambda: w.writers.get("sim/run1") and w.writers["sim/run1"].finished,
                 timeout=30, what="the stream written")  # fmt: skip
    files = sorted((out / "sim" / "run1").glob("*.h5"))
    assert [f.name for f in files] == [
        "run1_000000000.h5",
        "run1_000000003.h5",
        "run1_000000006.h5",
    ]
    got = []
    for path in files:
        with h5py.File(path, "r") as h5:
            assert h5["/entry/data"].attrs["signal"] == "data"
            got += list(h5["/entry/data/data"][()])
            idx = h5["/entry/data/index"][()]
            meta = [json.loads(m) for m in h5["/entry/data/meta"][()]]
            assert [m["i"] for m in meta] == list(idx)
    assert len(got) == 7
    for a, b in zip(got, frames, strict=True):
        np.testing.assert_array_equal(a, b)


def test_tiff_format_one_file_per_frame(make_producer, api, tmp_path):
    import tifffile

    out = tmp_path / "out"
    frames = [image(i, (20, 30), "<u4") for i in range(4)]
    p = make_producer("tiffy")
    p.send("cam/a", None, {"type": "note"})
    for i, f in enumerate(frames):
        p.send("cam/a", f, {"i": i})
    p.flush(30)
    with running_writer(api, out, streams=["cam/a"], format="tiff"):
        wait_for(lambda: len(list((out / "cam" / "a").glob("*.tif"))) == 4, timeout=30,
                 what="four TIFFs")  # fmt: skip
    for i, f in enumerate(frames):
        path = out / "cam" / "a" / f"a_{i + 1:09d}.tif"
        np.testing.assert_array_equal(tifffile.imread(path), f)
        with tifffile.TiffFile(path) as t:
            desc = json.loads(t.pages[0].description)
        assert desc["meta"] == {"i": i} and desc["hidra_ng_index"] == i + 1


def test_streams_created_later_are_picked_up(make_producer, api, tmp_path):
    out = tmp_path / "out"
    with running_writer(api, out, streams=["late/*"], format="hdf5", frames_per_file=1):
        p = make_producer("late")
        p.send("late/one", image(1), {})
        p.send("other/x", image(2), {})
        p.flush(30)
        wait_for(lambda: (out / "late" / "one" / "one_000000000.h5").exists(), timeout=30,
                 what="the file of a stream created after the writer started")  # fmt: skip
    assert not (out / "other").exists()
    with Consumer(api) as c:
        assert stored_count(c, "other/x") == 1


def test_h5ls_lists_the_master_with_its_external_links(make_producer, api, tmp_path):
    """HDF5's own h5ls (Debian hdf5-tools) lists the master and follows nothing it should not."""
    import subprocess

    from tests.debian import require_debian

    require_debian(["hdf5-tools"], ["h5ls"])
    out = tmp_path / "out"
    with detector(make_producer) as det, running_writer(api, out, frames_per_file=2):
        send_series(det, 8, 3)
        master = wait_master(out, "p11/eiger/threshold_1", 8)
    listing = subprocess.run(["h5ls", "-r", str(master)], capture_output=True, text=True,
                             timeout=60, check=True).stdout  # fmt: skip
    assert "/entry/data/data_000001  External Link {series_8_data_000001.h5//entry/data/data}" in (
        listing
    )
    assert "/entry/data/data_000002  External Link {series_8_data_000002.h5//entry/data/data}" in (
        listing
    )
    for path in ("/entry/definition", "/entry/instrument/detector/module/fast_pixel_direction",
                 "/entry/sample/transformations/omega", "/entry/source/name"):  # fmt: skip
        assert path in listing


def test_pixel_mask_and_flatfield_of_the_series_go_into_the_master(make_producer, api, tmp_path):
    """With ``tables=1`` the source stores the start message's tables in STREAM/tables; the
    master of each channel gets that channel's pixel mask and flatfield (and works without)."""
    out = tmp_path / "out"
    channels = ("threshold_1", "threshold_2")
    with (
        detector(make_producer, tables=True) as det,
        running_writer(api, out, streams=["p11/eiger/threshold_*"]),
    ):
        send_series(det, 6, 2, channels=channels, tables=True)
        masters = [wait_master(out, f"p11/eiger/{c}", 6) for c in channels]
    for k, master in enumerate(masters):
        with h5py.File(master, "r") as h5:
            det_group = h5["/entry/instrument/detector"]
            assert det_group["pixel_mask"].dtype == np.dtype("<u4")
            assert det_group["pixel_mask"].shape == (64, 48)
            np.testing.assert_array_equal(det_group["flatfield"][()], np.full((64, 48), 1.0 + k))
    assert not (out / "p11" / "eiger" / "tables").exists()  # not matched: not written


def test_hdf5_completes_a_file_when_the_stream_pauses(make_producer, api, tmp_path):
    out = tmp_path / "out"
    p = make_producer("pausing")
    for i in range(3):
        p.send("cont/a", image(i), {"i": i})
    p.flush(30)
    options = dict(streams=["cont/a"], format="hdf5", frames_per_file=100, file_idle_seconds=0.5)
    with running_writer(api, out, **options):
        first = out / "cont" / "a" / "a_000000000.h5"
        wait_for(first.exists, timeout=30, what="the file completed after the pause")
        p.send("cont/a", image(3), {"i": 3})
        p.flush(30)
        second = out / "cont" / "a" / "a_000000003.h5"
        wait_for(second.exists, timeout=30, what="a new file for the frames after the pause")
    with h5py.File(first, "r") as h5:
        assert list(h5["/entry/data/index"][()]) == [0, 1, 2]
    with h5py.File(second, "r") as h5:
        assert list(h5["/entry/data/index"][()]) == [3]
