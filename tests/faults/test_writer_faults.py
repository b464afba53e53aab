"""``hidra-ng write`` under a full output disk and bad input (SPEC §15): it waits or stops
with a clear error naming what is wrong, never leaves a half-written file under a final
name, and the receiver keeps every frame."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import h5py
import hdf5plugin  # noqa: F401
import pytest
from conftest import wait_for
from writer_helpers import (
    detector,
    image,
    images_in_data_files,
    master_path,
    running_writer,
    send_series,
    tally,
)

from hidra_ng import Consumer
from tests.faults.test_disk_full import small_filesystem
from tests.ops_helpers import clean_env

MiB = 1 << 20


def complete_files_are_whole(directory) -> int:
    """Every file under a final name opens and holds what its attributes say; returns how many."""
    n = 0
    for path in sorted(directory.glob("*.h5")):
        with h5py.File(path, "r") as h5:
            if "_data_" in path.name:
                ds = h5["/entry/data/data"]
                ids = h5["/entry/hidra_ng/image_id"][()]
                assert ds.shape[0] == len(ids) > 0
                assert ds.attrs["image_nr_high"] - ds.attrs["image_nr_low"] + 1 == len(ids)
                ds[-1]  # the last chunk is there and decodes
        n += 1
    return n


@pytest.mark.slow
def test_output_disk_full_waits_reports_and_resumes(make_producer, receiver, tmp_path, caplog):
    api = receiver.endpoints["api"]
    fs = tmp_path / "small"
    stream = "p11/eiger/threshold_1"
    with small_filesystem(fs, 16) as mounted:
        if not mounted:
            if os.environ.get("CI") == "true":
                pytest.fail("mounting a tmpfs failed (the writer's disk-full test needs root)")
            pytest.skip("mounting a tmpfs needs root; run the tests as root")
        filler = fs / "filler"
        filler.write_bytes(bytes(14 * MiB))  # leaves ~2 MiB for ~5 MiB of images
        out = fs / "out"
        caplog.set_level(logging.ERROR, logger="hidra_ng.writer")
        with (
            detector(make_producer) as det,
            running_writer(api, out, streams=["p11/**"], frames_per_file=8) as writer,
        ):
            sent = send_series(det, 5, 40, codec="none", shape=(256, 256))["threshold_1"]
            wait_for(lambda: writer.metrics.disk_full._value.get() == 1, timeout=60,
                     what="the writer reporting a full disk")  # fmt: skip
            assert "output disk is full" in caplog.text and stream in caplog.text
            assert writer.metrics.errors.labels(stream, "disk_full")._value.get() >= 1
            directory = out.joinpath(*stream.split("/"))
            complete_files_are_whole(directory)
            assert not master_path(out, stream, 5).exists()
            filler.unlink()  # space again: the writer goes on by itself
            wait_for(lambda: master_path(out, stream, 5).exists(), timeout=60,
                     what="the master after space was freed")  # fmt: skip
            assert writer.metrics.disk_full._value.get() == 0
        assert complete_files_are_whole(directory) == 6  # 5 data files and the master
        found = images_in_data_files(directory)
        assert tally([nr - 1 for nr, _ in found], list(range(40))) == {
            "lost": 0, "duplicated": 0, "unexpected": 0
        }  # fmt: skip
        import hashlib

        assert [h for _, h in found] == [hashlib.sha256(a.tobytes()).digest() for a in sent]
        assert not list(directory.glob("*.part"))


def test_an_output_directory_that_is_not_writable_is_a_clear_error(tmp_path, receiver):
    target = tmp_path / "readonly"
    target.mkdir()
    mounted = False
    if os.geteuid() == 0:  # root writes anywhere: a read-only filesystem stops it
        mounted = (
            subprocess.run(
                ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(target)],
                capture_output=True,
            ).returncode
            == 0
        )
        if not mounted:
            pytest.skip("cannot mount a read-only tmpfs here")
    else:
        target.chmod(0o555)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "hidra_ng", "write", "--api", receiver.endpoints["api"],
             "--dir", str(target / "out"), "--metrics-port", "0"],
            capture_output=True, text=True, timeout=60, env=clean_env(),
        )  # fmt: skip
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(target)], capture_output=True)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert str(target / "out") in lines[0] and "output directory" in lines[0]


def test_a_stream_without_a_start_message_stops_with_its_name_and_loses_nothing(
    make_producer, receiver, tmp_path, caplog
):
    api = receiver.endpoints["api"]
    out = tmp_path / "out"
    bad = "p11/nostart/threshold_1"
    p = make_producer("headless")
    for i in range(5):  # images of a series whose start message never came
        meta = {"type": "image", "image_id": i, "series_id": 9, "series_unique_id": "u9"}
        p.send(bad, image(i), meta)
    p.flush(30)
    caplog.set_level(logging.ERROR, logger="hidra_ng.writer")
    with (
        detector(make_producer) as det,
        running_writer(api, out, streams=["p11/**"], frames_per_file=2) as writer,
    ):
        send_series(det, 3, 4)
        good = master_path(out, "p11/eiger/threshold_1", 3)
        wait_for(good.exists, timeout=60, what="the good stream's master")  # other streams go on
        wait_for(lambda: writer.metrics.failed.labels(bad)._value.get() == 1, timeout=30,
                 what="the bad stream reported")  # fmt: skip
        assert writer.metrics.errors.labels(bad, "no_start")._value.get() == 1
        assert "failed" not in writer.status() and "1 stopped by errors" in writer.status()
    message = next(r.getMessage() for r in caplog.records if bad in r.getMessage())
    assert "image 0 (index 0)" in message and "no start message" in message
    assert not list(out.joinpath(*bad.split("/")).glob("*.h5"))
    with Consumer(api) as c:
        assert c.info(bad).count == 5  # nothing lost in the receiver


def test_an_image_shape_change_inside_a_series_stops_with_a_clear_error(
    make_producer, receiver, tmp_path, caplog
):
    api = receiver.endpoints["api"]
    out = tmp_path / "out"
    stream = "p11/eiger/threshold_1"
    caplog.set_level(logging.ERROR, logger="hidra_ng.writer")
    with (
        detector(make_producer) as det,
        running_writer(api, out, streams=["p11/**"], frames_per_file=2) as writer,
    ):
        det.start(4, "series-4", ["threshold_1"], shape=(64, 48))
        for i in range(5):
            det.image(4, "series-4", i, {"threshold_1": image(i, (64, 48))}, "bslz4")
        for i in range(5, 8):
            det.image(4, "series-4", i, {"threshold_1": image(i, (32, 32))}, "bslz4")
        det.end(4, "series-4")
        wait_for(lambda: writer.metrics.failed.labels(stream)._value.get() == 1, timeout=60,
                 what="the shape change reported")  # fmt: skip
    message = next(r.getMessage() for r in caplog.records if "shape" in r.getMessage())
    assert stream in message and "(index 6)" in message
    assert "(32, 32)" in message and "(64, 48)" in message
    directory = out.joinpath(*stream.split("/"))
    assert complete_files_are_whole(directory) == 2  # images 0-3; image 4's file never completed
    assert not list(directory.glob("*.part"))
    with Consumer(api) as c:
        assert c.info(stream).count == 10  # start, 8 images, end: all still there
