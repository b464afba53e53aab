"""``hidra-ng write`` killed -9 three times during 2,000-image series (SPEC §15): every image
ends up in the files once, in order; nothing incomplete keeps a final name.

Two detectors stream at once, one sending raw images, one bslz4 images, each a
series of 2,000 small images (64x64 uint16) through a ``dectris:`` source into the
receiver; the writer process is killed when the data files reach about a quarter,
half and three quarters of the series, and restarted each time.
"""

from __future__ import annotations

import hashlib
import signal
import threading

import fabio
import h5py
import numpy as np
import pytest
from conftest import wait_for
from nxdl_check import check
from writer_helpers import detector, image, images_in_data_files, master_path, send_series, tally

from hidra_ng import Consumer
from tests.ops_helpers import DaemonProcess

pytestmark = pytest.mark.slow

IMAGES = 2000
PER_FILE = 100
SHAPE = (64, 64)
STREAMS = {"raw": "p11/raw/threshold_1", "bslz4": "p11/bs/threshold_1"}


def writer_args(api: str, out) -> list[str]:
    return [
        "write", "--api", api, "--dir", str(out), "--streams", "p11/**",
        "--frames-per-file", str(PER_FILE), "--metrics-port", "0",
    ]  # fmt: skip


def complete_files(out) -> int:
    return sum(len(list(out.joinpath(*s.split("/")).glob("*_data_*.h5"))) for s in STREAMS.values())


def test_writer_killed_three_times_loses_and_doubles_nothing(make_producer, receiver, tmp_path):
    api = receiver.endpoints["api"]
    out = tmp_path / "out"
    sent: dict[str, list[np.ndarray]] = {}
    errors: list[BaseException] = []
    with detector(make_producer, "p11/raw") as raw_det, detector(make_producer, "p11/bs") as bs_det:

        def feed(name, det, codec, series_id):
            try:
                sent[name] = send_series(det, series_id, IMAGES, codec=codec, shape=SHAPE)[
                    "threshold_1"
                ]
            except BaseException as err:  # reported below
                errors.append(err)

        feeders = [
            threading.Thread(target=feed, args=("raw", raw_det, "none", 1)),
            threading.Thread(target=feed, args=("bslz4", bs_det, "bslz4", 2)),
        ]
        writer = DaemonProcess(writer_args(api, out), tmp_path / "writer.log").start()
        try:
            for t in feeders:
                t.start()
            total_files = 2 * IMAGES // PER_FILE
            for kill_at in (total_files // 4, total_files // 2, 3 * total_files // 4):
                wait_for(lambda k=kill_at: complete_files(out) >= k, timeout=120,
                         what=f"{kill_at} data files")  # fmt: skip
                writer.signal(signal.SIGKILL)
                writer.wait(10)
                writer = DaemonProcess(writer_args(api, out), tmp_path / "writer.log").start()
            for t in feeders:
                t.join(120)
            assert not errors, errors
            for name, series_id in (("raw", 1), ("bslz4", 2)):
                stream = STREAMS[name]
                wait_for(lambda s=stream, i=series_id: master_path(out, s, i).exists(),
                         timeout=120, what=f"the master of {stream}")  # fmt: skip
            assert writer.running(), writer.read_log()
            assert writer.terminate(30) == 0
        finally:
            writer.kill()

    with Consumer(api) as c:  # the receiver keeps everything: start, 2,000 images, end
        for stream in STREAMS.values():
            assert c.info(stream).count == IMAGES + 2

    for name, series_id in (("raw", 1), ("bslz4", 2)):
        stream = STREAMS[name]
        directory = out.joinpath(*stream.split("/"))
        assert not list(directory.glob("*.part"))
        found = images_in_data_files(directory)
        counts = tally([nr - 1 for nr, _ in found], list(range(IMAGES)))
        assert counts == {"lost": 0, "duplicated": 0, "unexpected": 0}, (name, counts)
        assert [nr for nr, _ in found] == list(range(1, IMAGES + 1))  # in order
        expected = [hashlib.sha256(a.tobytes()).digest() for a in sent[name]]
        assert [h for _, h in found] == expected  # pixel for pixel
        master = master_path(out, stream, series_id)
        img = fabio.open(str(master))
        assert img.nframes == IMAGES
        np.testing.assert_array_equal(img.getframe(IMAGES - 1).data, image(IMAGES - 1, SHAPE))
        with h5py.File(master, "r") as h5:
            links = [k for k in h5["/entry/data"] if k.startswith("data_")]
            assert len(links) == IMAGES // PER_FILE
            assert h5["/entry/data/images"].shape[0] == IMAGES  # the virtual dataset
            assert h5["/entry/instrument/detector/detectorSpecific/nimages"][()] == IMAGES
            codec = {"raw": None, "bslz4": 32008}[name]
            plist = h5["/entry/data/data_000001"].id.get_create_plist()
            assert (plist.get_filter(0)[0] if plist.get_nfilters() else None) == codec
        report = check(master)
        assert report.missing == [] and report.wrong == []
