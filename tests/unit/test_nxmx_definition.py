"""The NXmx master against the NXmx application definition shipped in tests/data/nexus."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from nxdl_check import NXDL, check, depends_on_chains

from hidra_ng.writer import nxmx

START = {  # a start message as the dectris: source stores it (Stream V2 fields, JSON values)
    "type": "start",
    "arm_date": "2026-01-02T03:04:05+00:00",
    "beam_center_x": 24.5,
    "beam_center_y": 31.25,
    "channels": ["threshold_1"],
    "count_time": 0.0009,
    "countrate_correction_enabled": True,
    "detector_description": "Dectris EIGER2 Si 500K",
    "detector_serial_number": "E-32-0123",
    "detector_translation": [0.001, -0.002, 0.12],
    "flatfield_enabled": True,
    "frame_time": 0.001,
    "goniometer": {
        "omega": {"increment": 0.1, "start": 10.0},
        "phi": {"increment": 0.0, "start": 5.0},
    },
    "image_dtype": "uint16",
    "image_size_x": 48,
    "image_size_y": 64,
    "incident_energy": 12398.4,
    "incident_wavelength": 1.0,
    "number_of_images": 6,
    "pixel_mask_enabled": True,
    "pixel_size_x": 75e-6,
    "pixel_size_y": 75e-6,
    "saturation_value": 65534,
    "sensor_material": "Si",
    "sensor_thickness": 450e-6,
    "series_id": 7,
    "series_unique_id": "u-7",
    "threshold_energy": {"threshold_1": 6200.0},
    "user_data": {"sample_name": "lysozyme"},
    "virtual_pixel_interpolation_enabled": False,
}


def make_series(tmp_path, images=6, per_file=4, tables=None):
    files = []
    for n, first in enumerate(range(0, images, per_file), 1):
        name = f"s_data_{n:06d}.h5"
        df = nxmx.DataFile(
            tmp_path / name, "p11/e/threshold_1", "u-7", per_file, "<u2", (64, 48), "none"
        )
        for i in range(first, min(images, first + per_file)):
            df.add(np.full((64, 48), i, "<u2").tobytes(), i + 1, i)
        df.complete(first + 1, min(images, first + per_file))
        files.append(name)
    info = nxmx.SeriesInfo(
        stream="p11/e/threshold_1",
        prefix=str(tmp_path / "s"),
        start=START,
        start_index=0,
        end_index=images + 1,
        images=images,
        files=files,
        image_shape=(64, 48),
        dtype="<u2",
        channel="threshold_1",
        end_time="2026-01-02T03:04:05.006000Z",
        instrument_name="P11",
        source_name="PETRA III",
        tables=tables or {},
    )
    return nxmx.write_master(tmp_path / "s_master.h5", info)


def test_the_definition_file_is_the_nxmx_application_definition():
    text = NXDL.read_text()
    assert '<definition name="NXmx"' in text and "GNU Lesser General Public" in text
    assert (
        (NXDL.parent / "LGPL.txt")
        .read_text()
        .startswith("                   GNU LESSER GENERAL PUBLIC LICENSE")
    )


def test_master_has_every_required_element_of_nxmx(tmp_path):
    master = make_series(tmp_path)
    report = check(master)
    assert report.missing == [] and report.wrong == []
    assert report.checked > 60
    # what is only recommended and not in a DECTRIS start message (or not requested)
    assert set(report.recommended_missing) <= {
        "/entry/data/data",
        "/entry/instrument/NXdetector_group",
        "/entry/instrument/detector/data",
        "/entry/instrument/detector/pixel_mask",
        "/entry/instrument/detector/bit_depth_readout",
        "/entry/instrument/beam/incident_beam_size",
        "/entry/instrument/beam/profile",
        "/entry/instrument/beam/incident_polarization_stokes",
    }


def test_the_checker_finds_what_is_missing(tmp_path):
    master = make_series(tmp_path)
    with h5py.File(master, "r+") as h5:
        del h5["/entry/instrument/beam/incident_wavelength"]
        del h5["/entry/source"]
        h5["/entry/definition"][()] = "NXother"  # same length string dtype: replace
        h5["/entry/instrument/detector/module/fast_pixel_direction"].attrs.__delitem__("vector")
    report = check(master)
    assert "/entry/instrument/beam/incident_wavelength" in report.missing
    assert "/entry/NXsource" in report.missing
    assert "/entry/instrument/detector/module/fast_pixel_direction@vector" in report.missing
    assert any("definition" in w for w in report.wrong)


def test_values_from_the_start_message(tmp_path):
    mask = np.zeros((64, 48), "<u4")
    mask[0, 0] = 1
    master = make_series(tmp_path, tables={"pixel_mask": mask})
    with h5py.File(master, "r") as h5:
        det = h5["/entry/instrument/detector"]
        assert det["beam_center_x"][()] == 24.5 and det["beam_center_x"].attrs["units"] == "pixel"
        assert det["x_pixel_size"][()] == pytest.approx(75e-6)
        assert det["distance"][()] == pytest.approx(0.12)  # third element of detector_translation
        assert det["transformations/translation"][()] == pytest.approx(0.12)
        assert det["sensor_material"][()] == b"Si"
        assert det["sensor_thickness"][()] == pytest.approx(450e-6)
        assert det["saturation_value"][()] == 65534
        assert det["count_time"][()] == pytest.approx(0.0009)
        assert det["frame_time"][()] == pytest.approx(0.001)
        assert det["threshold_energy"][()] == 6200.0
        assert det["pixel_mask"][0, 0] == 1 and det["pixel_mask"].dtype == np.dtype("<u4")
        offset = det["module/module_offset"].attrs["offset"]
        np.testing.assert_allclose(offset, [24.5 * 75e-6, 31.25 * 75e-6, 0])
        assert h5["/entry/instrument/beam/incident_wavelength"][()] == 1.0
        assert h5["/entry/start_time"][()] == b"2026-01-02T03:04:05Z"
        assert h5["/entry/end_time"][()] == b"2026-01-02T03:04:05.006000Z"
        omega = h5["/entry/sample/transformations/omega"]
        np.testing.assert_allclose(omega[()], 10.0 + 0.1 * np.arange(6))
        np.testing.assert_allclose(h5["/entry/sample/transformations/omega_end"][()],
                                   10.1 + 0.1 * np.arange(6))  # fmt: skip
        assert h5["/entry/sample/transformations/omega_increment_set"][()] == pytest.approx(0.1)
        assert h5["/entry/sample/name"][()] == b"lysozyme"
        assert h5["/entry/data/data_000002"].shape == (2, 64, 48)
        assert h5["/entry/instrument/detector/detectorSpecific/nimages"][()] == 6
        # the NXdata signal: a virtual dataset over both data files, image i filled with i
        assert h5["/entry/data"].attrs["signal"] == "images"
        signal = h5["/entry/data/images"]
        assert signal.is_virtual and signal.shape == (6, 64, 48)
        assert [int(signal[i, 0, 0]) for i in range(6)] == list(range(6))
    chains = depends_on_chains(master)
    assert chains["/entry/sample/depends_on"] == [
        "/entry/sample/transformations/phi",
        "/entry/sample/transformations/omega",
    ]
    assert chains["/entry/instrument/detector/depends_on"] == [
        "/entry/instrument/detector/transformations/translation"
    ]


def test_a_series_without_goniometer_or_images(tmp_path):
    start = {k: v for k, v in START.items() if k != "goniometer"}
    info = nxmx.SeriesInfo("s", str(tmp_path / "e"), start, 0, 1, 0, [], (), "<u2",
                           instrument_name="I", source_name="S")  # fmt: skip
    master = nxmx.write_master(tmp_path / "e_master.h5", info)
    report = check(master)
    assert report.missing == [] and report.wrong == []
    with h5py.File(master, "r") as h5:
        assert h5["/entry/sample/depends_on"][()] == b"."
        assert list(h5["/entry/instrument/detector/module/data_size"][()]) == [64, 48]
