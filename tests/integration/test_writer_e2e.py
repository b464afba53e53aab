"""A DECTRIS series streamed through real processes, as at a beamline: a Stream V2 detector
(the emitter, or messages recorded from a real EIGER2), ``hidra-ng sender`` with a
``dectris:`` source, ``hidra-ng receiver`` and ``hidra-ng write``; the files open in fabio
and h5py as the detector's own file writer's would.

The recorded messages are DECTRIS's public Stream V2 test data
(``stream_v2/test_data`` of their documentation repository), read from the directory that
``$DECTRIS_TEST_DATA`` names (skipped without it); they are not shipped with this project
(no licence). They are sent byte for byte as recorded (self-described CBOR). The recorded
sets lack their start message, so a start message of ours with the same series ids and the
detector's image size goes first.
"""

from __future__ import annotations

import os
from pathlib import Path

import cbor2
import fabio
import h5py
import hdf5plugin  # noqa: F401
import numpy as np
import pytest
from conftest import wait_for
from dectris.compression import decompress
from nxdl_check import check
from stream_v2_emitter import Emitter
from writer_helpers import image, send_series

from hidra_ng.testing import ReceiverProcess
from tests.ops_helpers import DaemonProcess, sender_args

ENV = "DECTRIS_TEST_DATA"
RECORDED = Path(os.environ[ENV]) if os.environ.get(ENV) else None


def recorded_messages(name: str) -> list[bytes]:
    """The recorded image and end messages of a set, as the detector sent them."""
    if RECORDED is None:
        pytest.skip(f"recorded DECTRIS Stream V2 data not given: set {ENV} to a local copy"
                    " of stream_v2/test_data of github.com/dectris/documentation")  # fmt: skip
    files = sorted((RECORDED / name).glob("0000*.cbor"))
    if len(files) < 3:
        pytest.skip(f"{RECORDED / name} holds no recorded series")
    return [f.read_bytes() for f in files if f.name != "000000.cbor"]


def decode_reference(tagged: cbor2.CBORTag) -> tuple[str, bytes, np.ndarray]:
    """(algorithm, the detector's compressed bytes, pixels decoded by DECTRIS's decoder)."""
    shape = tuple(tagged.value[0])
    typed = tagged.value[1]
    bits = typed.tag - 64
    dtype = np.dtype(("<" if bits >> 2 & 1 or bits & 3 == 0 else ">") + f"u{1 << (bits & 3)}")
    algorithm, elem_size, data = typed.value.value
    if algorithm == "lz4":
        raw = decompress(data, algorithm)
    else:
        raw = decompress(data, algorithm, elem_size=elem_size)
    return algorithm, data, np.frombuffer(raw, dtype).reshape(shape)


def run_pipeline(tmp_path: Path, feed, stream_root: str = "p11/eiger") -> Path:
    """receiver + sender (dectris:) + writer processes; ``feed(emitter)`` plays the detector."""
    out = tmp_path / "out"
    with (
        ReceiverProcess(tmp_path / "store") as rx,
        Emitter() as det,
        DaemonProcess(
            sender_args(rx.ingest, rx.api, tmp_path / "spool",
                        [f"dectris:{det.endpoint}?stream={stream_root}"]),
            tmp_path / "sender.log",
        ) as sender,
        DaemonProcess(
            ["write", "--api", rx.api, "--dir", str(out), "--streams", f"{stream_root}/**",
             "--frames-per-file", "4", "--metrics-port", "0"],
            tmp_path / "writer.log",
        ) as writer,
    ):  # fmt: skip
        masters = feed(det)
        for master in masters:
            path = out / master
            wait_for(lambda p=path: p.exists() or not writer.running(), timeout=120,
                     what=f"{path}")  # fmt: skip
            assert writer.running(), writer.read_log()
        assert sender.running(), sender.read_log()
        assert writer.terminate(30) == 0, writer.read_log()
        assert sender.terminate(30) == 0, sender.read_log()
    return out


def test_synthetic_series_through_sender_receiver_and_writer_processes(tmp_path):
    def feed(det):
        send_series(det, 31, 9, channels=("threshold_1", "threshold_2"), codec="bslz4")
        return [f"p11/eiger/{c}/series_31_master.h5" for c in ("threshold_1", "threshold_2")]

    out = run_pipeline(tmp_path, feed)
    for k, channel in enumerate(("threshold_1", "threshold_2")):
        master = out / f"p11/eiger/{channel}/series_31_master.h5"
        img = fabio.open(str(master))
        assert img.nframes == 9
        for i in range(9):
            np.testing.assert_array_equal(img.getframe(i).data, image(i, (64, 48), salt=k))
        with h5py.File(master, "r") as h5:
            energy = h5["/entry/instrument/detector/threshold_energy"][()]
            assert energy == 6000.0 + 1000 * k  # the channel's own threshold
            assert h5["/entry/data/data_000003"].shape == (1, 64, 48)
        report = check(master)
        assert report.missing == [] and report.wrong == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["r500k_bm_bslz4_16bit", "r500k_bm_bslz4_32bit", "r500k_bm_lz4_8bit"]
)
def test_recorded_eiger2_series_is_written_as_the_detector_compressed_it(tmp_path, name):
    raws = recorded_messages(name)
    messages = [cbor2.loads(raw) for raw in raws]
    images = [m for m in messages if m["type"] == "image"]
    end = next(m for m in messages if m["type"] == "end")
    channels = list(images[0]["data"])
    shape = tuple(images[0]["data"][channels[0]].value[0])

    def feed(det):
        det.start(end["series_id"], end["series_unique_id"], channels, shape=shape)
        for raw in raws:  # images and end, byte for byte as recorded
            det.send(raw)
        return [f"p11/eiger/{c}/series_{end['series_id']}_master.h5" for c in channels]

    out = run_pipeline(tmp_path, feed)
    for channel in channels:
        directory = out / "p11" / "eiger" / channel
        master = directory / f"series_{end['series_id']}_master.h5"
        img = fabio.open(str(master))
        assert img.nframes == len(images)
        for i, m in enumerate(images):
            algorithm, raw, pixels = decode_reference(m["data"][channel])
            np.testing.assert_array_equal(img.getframe(i).data, pixels)
            number, k = divmod(i, 4)
            with h5py.File(directory / f"series_{end['series_id']}_data_{number + 1:06d}.h5") as h5:
                ds = h5["/entry/data/data"]
                _mask, chunk = ds.id.read_direct_chunk((k, 0, 0))
                assert chunk == raw  # the detector's bytes, unchanged
                expected = {"bslz4": 32008, "lz4": 32004}[algorithm]
                assert ds.id.get_create_plist().get_filter(0)[0] == expected
                np.testing.assert_array_equal(ds[k], pixels)  # hdf5plugin decodes them
        report = check(master)
        assert report.missing == [] and report.wrong == []
