"""NXmx master files and DECTRIS-style data files of one series (SPEC §15).

Layout, as the DECTRIS file writer (legacy NXmx format) writes it::

    <prefix>_master.h5
        /entry                      NXentry, definition = "NXmx", start/end times
        /entry/data                 NXdata; data_000001, data_000002, ... external links
                                    to <prefix>_data_00000N.h5:/entry/data/data, and
                                    images, a virtual dataset of all of them (the signal;
                                    not "data": fabio reads every data* member)
        /entry/instrument           NXinstrument: name, time_zone
            beam                    NXbeam: incident_wavelength, incident_energy
            detector                NXdetector: geometry, sensor, times, corrections,
                                    depends_on -> transformations/translation
                transformations     NXtransformations: translation (the distance)
                module              NXdetector_module: data_origin/size, module_offset,
                                    fast/slow_pixel_direction (the pixel size)
                detectorSpecific    NXcollection: the start message fields as sent
        /entry/sample               NXsample: name, depends_on -> the goniometer chain
            transformations         one rotation per goniometer axis, start + i * increment
        /entry/source               NXsource: name
    <prefix>_data_00000N.h5
        /entry/data/data            (n, height, width), one image per chunk, attributes
                                    image_nr_low, image_nr_high (image_id + 1)
        /entry/hidra_ng             index and image_id of each image, the stream

Every value comes from the series' start message as the ``dectris:`` source
stores it (meta ``type: "start"`` with the Stream V2 start fields); what the
start message does not carry (instrument and source name) comes from the
writer's settings. Units are those of Stream V2: metres, seconds, eV, angstrom.
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hidra_ng.client.export import nxdata_entry
from hidra_ng.writer.files import PartFile, chunk_bytes, filter_options, publish

log = logging.getLogger(__name__)

NXMX_VERSION = "1.0"

# Rotation axes in the NeXus (McStas) frame, as DECTRIS detectors describe a
# standard goniometer; unknown axis names get omega's axis.
AXIS_VECTORS = {
    "omega": (-1.0, 0.0, 0.0),
    "phi": (-1.0, 0.0, 0.0),
    "chi": (0.0, 0.0, 1.0),
    "kappa": (-0.6427876, -0.7660444, 0.0),
    "two_theta": (-1.0, 0.0, 0.0),
}
# The sample's chain, innermost first: the sample sits on phi, phi on chi or kappa, those on omega.
CHAIN_ORDER = ("phi", "chi", "kappa", "omega")


@dataclass
class SeriesInfo:
    """What the master needs beyond the start message."""

    stream: str
    prefix: str
    start: dict[str, Any]
    start_index: int
    end_index: int | None
    images: int
    files: list[str]  # data file names, in order
    image_shape: tuple[int, ...]
    dtype: str
    first_image_nr: int = 1
    channel: str | None = None
    end_time: str | None = None  # observed: series_date + last stop_time
    instrument_name: str = ""
    source_name: str = ""
    tables: dict[str, np.ndarray] = field(default_factory=dict)  # pixel_mask, flatfield
    counts: list[int] | None = None  # images in each data file; None: read from the files


def number(meta: dict[str, Any], key: str) -> float | None:
    value = meta.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def iso_utc(text: Any) -> str | None:
    """An ISO 8601 date as UTC with the Z suffix, or None."""
    if not isinstance(text, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


def rational_seconds(value: Any) -> float | None:
    if (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        and value[1] > 0
    ):
        return value[0] / value[1]
    return None


def observed_end_time(image_meta: dict[str, Any]) -> str | None:
    """series_date + stop_time of an image, as ISO UTC: when that image ended."""
    start = iso_utc(image_meta.get("series_date"))
    stop = rational_seconds(image_meta.get("stop_time"))
    if start is None or stop is None:
        return None
    when = datetime.datetime.fromisoformat(start.replace("Z", "+00:00"))
    return iso_utc((when + datetime.timedelta(seconds=stop)).isoformat())


# --------------------------------------------------------------- data files


class DataFile:
    """``<prefix>_data_00000N.h5`` being filled with images as stored (direct chunks)."""

    def __init__(
        self,
        path: Path,
        stream: str,
        series_unique_id: Any,
        capacity: int,
        dtype: str,
        shape: tuple[int, ...],
        codec: str,
    ) -> None:
        self.file = PartFile(path, libver=("v110", "latest"))
        self.dtype, self.shape, self.codec = dtype, shape, codec
        self.nbytes = np.dtype(dtype).itemsize * int(np.prod(shape, dtype=np.int64))
        group = nxdata_entry(self.file.h5)
        self.data = group.create_dataset(
            "data",
            shape=(capacity, *shape),
            maxshape=(None, *shape),
            dtype=np.dtype(dtype),
            chunks=(1, *shape),
            **filter_options(codec),
        )
        self.data.attrs["interpretation"] = "image"
        self.hidra = group.parent.create_group("hidra_ng")
        self.hidra.attrs["NX_class"] = "NXcollection"
        self.hidra.attrs["stream"] = stream
        self.hidra.attrs["series_unique_id"] = str(series_unique_id)
        self.indices: list[int] = []
        self.image_ids: list[int] = []
        self.count = 0

    def add(self, data: bytes | memoryview, index: int, image_id: int) -> None:
        offset = (self.count,) + (0,) * len(self.shape)
        chunk = chunk_bytes(data, self.codec, self.dtype, self.nbytes)
        self.data.id.write_direct_chunk(offset, chunk)
        self.file.wrote(len(chunk))
        self.count += 1
        self.indices.append(index)
        self.image_ids.append(image_id)

    def complete(self, image_nr_low: int, image_nr_high: int) -> Path:
        """Finish the file and publish it (fsync, rename, directory fsync)."""
        self._finish(image_nr_low, image_nr_high)
        return self.file.complete()

    def close(self, image_nr_low: int, image_nr_high: int) -> Path:
        """Finish the file and close its ``.part`` for a Publisher; its final name."""
        self._finish(image_nr_low, image_nr_high)
        return self.file.close()

    def _finish(self, image_nr_low: int, image_nr_high: int) -> None:
        self.data.resize((self.count, *self.shape))
        self.data.attrs["image_nr_low"] = np.int32(image_nr_low)
        self.data.attrs["image_nr_high"] = np.int32(image_nr_high)
        self.hidra.create_dataset("index", data=np.asarray(self.indices, "<i8"))
        self.hidra.create_dataset("image_id", data=np.asarray(self.image_ids, "<i8"))
        self.hidra.attrs["first_index"] = self.indices[0]
        self.hidra.attrs["last_index"] = self.indices[-1]

    def abort(self) -> None:
        self.file.abort()


# ------------------------------------------------------------------ master


def _text(group: h5py.Group, name: str, value: str, **attrs: Any) -> h5py.Dataset:
    ds = group.create_dataset(name, data=value, dtype=h5py.string_dtype("utf-8"))
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def _value(group: h5py.Group, name: str, value: Any, units: str | None = None, **attrs: Any):
    ds = group.create_dataset(name, data=value)
    if units is not None:
        ds.attrs["units"] = units
    for k, v in attrs.items():
        ds.attrs[k] = v
    return ds


def _nxgroup(parent: h5py.Group, name: str, nx_class: str) -> h5py.Group:
    g = parent.create_group(name)
    g.attrs["NX_class"] = nx_class
    return g


def _vec(values: Sequence[float]) -> np.ndarray:
    return np.asarray(values, dtype="<f8")


def write_master(path: Path, info: SeriesInfo) -> Path:
    """Write ``<prefix>_master.h5`` (as ``.part``, then renamed) for a complete series."""
    return MasterFile(path, info).complete(info)


def close_master(path: Path, info: SeriesInfo) -> Path:
    """Write ``<prefix>_master.h5.part`` for a Publisher to rename; the final name."""
    return MasterFile(path, info).close(info)


class MasterFile:
    """``<prefix>_master.h5`` written as ``.part`` in two steps: what the start message
    and the series' first image give (instrument, detector, geometry, beam, source) when
    it is opened, the rest (data links, image count, times, goniometer positions, mask
    and flatfield) when the series ends, so a series' end costs only the second part."""

    def __init__(self, path: Path, info: SeriesInfo) -> None:
        self.file = PartFile(path, libver=("v110", "latest"))
        try:
            _begin_master(self.file.h5, info)
        except BaseException:
            self.file.abort()
            raise

    def close(self, info: SeriesInfo) -> Path:
        """Fill in the end of the series and close the ``.part``; the final name."""
        try:
            _end_master(self.file.h5, info)
            return self.file.close()
        except BaseException:
            self.file.abort()
            raise

    def complete(self, info: SeriesInfo) -> Path:
        """:meth:`close`, then publish it (fsync, rename, directory fsync)."""
        self.close(info)
        try:
            publish(self.file.part, self.file.final)
        except BaseException:
            self.file.abort()
            raise
        return self.file.final

    def abort(self) -> None:
        self.file.abort()


def _frame_time(s: dict[str, Any]) -> float:
    return number(s, "frame_time") or number(s, "count_time") or 0.0


def _start_time(s: dict[str, Any]) -> str:
    now = datetime.datetime.now(datetime.UTC).isoformat()
    return iso_utc(s.get("arm_date")) or str(iso_utc(now))


def _begin_master(h5: h5py.File, info: SeriesInfo) -> None:
    s = info.start
    h5.attrs["default"] = "entry"
    h5.attrs["creator"] = "hidra_ng"
    h5.attrs["file_name"] = Path(info.prefix + "_master.h5").name
    h5.attrs["HDF5_Version"] = h5py.version.hdf5_version

    entry = _nxgroup(h5, "entry", "NXentry")
    entry.attrs["default"] = "data"
    entry.attrs["version"] = NXMX_VERSION
    _text(entry, "definition", "NXmx")
    _text(entry, "start_time", _start_time(s))
    _text(entry, "title", f"{info.stream} series {s.get('series_id')}")
    _instrument(entry, info, _frame_time(s))
    source = _nxgroup(entry, "source", "NXsource")
    _text(source, "name", info.source_name)


def _end_master(h5: h5py.File, info: SeriesInfo) -> None:
    s = info.start
    h5.attrs["file_time"] = iso_utc(datetime.datetime.now(datetime.UTC).isoformat()) or ""
    entry = h5["entry"]
    start_time = _start_time(s)
    images = s.get("number_of_images")
    expected: int = images if isinstance(images, int) else 0
    estimated = datetime.datetime.fromisoformat(start_time.replace("Z", "+00:00"))
    estimated += datetime.timedelta(seconds=_frame_time(s) * max(expected, info.images))
    _text(entry, "end_time_estimated", iso_utc(estimated.isoformat()) or start_time)
    if info.end_time:
        _text(entry, "end_time", info.end_time)
    _data_group(entry, info, Path(h5.filename).parent)
    det = entry["instrument/detector"]
    for name in ("pixel_mask", "flatfield"):
        table = info.tables.get(name)
        if table is not None:
            det.create_dataset(name, data=table, chunks=True, compression="gzip")
    _value(det["detectorSpecific"], "nimages", np.int64(info.images))
    _sample(entry, info)


def _data_group(entry: h5py.Group, info: SeriesInfo, directory: Path) -> None:
    """The DECTRIS links (fabio, DECTRIS's own readers) and ``images``, a virtual dataset
    over all the data files: the NXdata signal, so NeXus readers (silx) see every image.

    Not named ``data`` as NXmx recommends: fabio's Eiger reader takes every member of
    ``/entry/data`` whose name starts with "data" as a block of images, and would read
    each image twice.
    """
    data = _nxgroup(entry, "data", "NXdata")
    for n, name in enumerate(info.files, 1):
        data[f"data_{n:06d}"] = h5py.ExternalLink(name, "/entry/data/data")
    counts = list(info.counts or [])
    try:
        if len(counts) != len(info.files):
            counts = [_image_count(directory / name) for name in info.files]
    except (OSError, KeyError) as err:
        log.warning("master of %s without its virtual dataset /entry/data/images (the links"
                    " to the data files are there): %s", info.prefix, err)  # fmt: skip
        counts = []
    if not counts:
        if info.files:
            data.attrs["signal"] = "data_000001"
        return
    shape = tuple(info.image_shape)
    layout = h5py.VirtualLayout(shape=(sum(counts), *shape), dtype=np.dtype(info.dtype))
    offset = 0
    for name, count in zip(info.files, counts, strict=True):
        # a name relative to the master's directory: the series can be moved as a whole
        source = h5py.VirtualSource(name, "/entry/data/data", shape=(count, *shape))
        layout[offset : offset + count] = source
        offset += count
    ds = data.create_virtual_dataset("images", layout)
    ds.attrs["interpretation"] = "image"
    data.attrs["signal"] = "images"


def _image_count(path: Path) -> int:
    """Images in a data file, or in its ``.part`` not yet published."""
    if not path.exists():
        path = path.with_name(path.name + ".part")
    with h5py.File(path, "r") as h5:
        return int(h5["/entry/data/data"].shape[0])


def _instrument(entry: h5py.Group, info: SeriesInfo, frame_time: float) -> None:
    s = info.start
    instrument = _nxgroup(entry, "instrument", "NXinstrument")
    _text(instrument, "name", info.instrument_name, short_name=info.instrument_name)
    offset = time.strftime("%z")
    _text(instrument, "time_zone", f"{offset[:3]}:{offset[3:]}" if offset else "+00:00")

    beam = _nxgroup(instrument, "beam", "NXbeam")
    wavelength = number(s, "incident_wavelength")
    energy = number(s, "incident_energy")
    if wavelength is None and energy:
        wavelength = 12398.419843320026 / energy  # h c in eV * angstrom
    _value(beam, "incident_wavelength", wavelength or 0.0, "angstrom")
    if energy is not None:
        _value(beam, "incident_energy", energy, "eV")

    det = _nxgroup(instrument, "detector", "NXdetector")
    _detector(det, info, frame_time)


@dataclass(frozen=True)
class _Geometry:
    """The detector's size (pixels) and placement (metres, pixels) from the start message."""

    height: int
    width: int
    px: float  # pixel size, x and y
    py: float
    bcx: float  # beam centre, pixels
    bcy: float
    translation: list[float]  # detector_translation; [2] is the distance

    @classmethod
    def of(cls, info: SeriesInfo) -> _Geometry:
        s = info.start
        if len(info.image_shape) >= 2:
            height, width = info.image_shape[-2:]
        else:  # a series without images: the size the start message announced
            height, width = int(s.get("image_size_y") or 0), int(s.get("image_size_x") or 0)
        px = number(s, "pixel_size_x") or 0.0
        translation = s.get("detector_translation")
        if isinstance(translation, list) and len(translation) == 3:
            vector = [float(v) for v in translation]
        else:
            vector = [0.0, 0.0, 0.0]
        return cls(
            height=height,
            width=width,
            px=px,
            py=number(s, "pixel_size_y") or px,
            bcx=number(s, "beam_center_x") or 0.0,
            bcy=number(s, "beam_center_y") or 0.0,
            translation=vector,
        )


def _detector(det: h5py.Group, info: SeriesInfo, frame_time: float) -> None:
    g = _Geometry.of(info)
    _detector_description(det, info.start, g)
    _detector_readout(det, info, frame_time)
    _detector_transformations(det, g)
    _detector_specific(det, info, g)


def _detector_description(det: h5py.Group, s: dict[str, Any], g: _Geometry) -> None:
    _text(det, "depends_on", "/entry/instrument/detector/transformations/translation")
    _text(det, "description", str(s.get("detector_description") or "DECTRIS detector"))
    _text(det, "serial_number", str(s.get("detector_serial_number") or ""))
    _text(det, "type", "HPC")
    _text(det, "sensor_material", str(s.get("sensor_material") or "unknown"))
    _value(det, "sensor_thickness", number(s, "sensor_thickness") or 0.0, "m")
    _value(det, "x_pixel_size", g.px, "m")
    _value(det, "y_pixel_size", g.py, "m")
    _value(det, "beam_center_x", g.bcx, "pixel")
    _value(det, "beam_center_y", g.bcy, "pixel")
    _value(det, "distance", g.translation[2], "m")
    _value(det, "distance_derived", False)
    _value(det, "beam_center_derived", False)


def _detector_readout(det: h5py.Group, info: SeriesInfo, frame_time: float) -> None:
    """Times, bit depths, corrections applied, threshold energy, the mask and flatfield."""
    s = info.start
    if number(s, "count_time") is not None:
        _value(det, "count_time", number(s, "count_time"), "s")
    _value(det, "frame_time", frame_time, "s")
    count_time = number(s, "count_time")
    if count_time is not None and frame_time:
        _value(det, "detector_readout_time", max(0.0, frame_time - count_time), "s")
    if isinstance(s.get("saturation_value"), int):
        _value(det, "saturation_value", np.int64(s["saturation_value"]))
    _value(det, "bit_depth_image", np.int32(np.dtype(info.dtype).itemsize * 8))
    if isinstance(s.get("bit_depth_readout"), int):
        _value(det, "bit_depth_readout", np.int32(s["bit_depth_readout"]))
    for flag, name in (
        ("countrate_correction_enabled", "countrate_correction_applied"),
        ("flatfield_enabled", "flatfield_applied"),
        ("pixel_mask_enabled", "pixel_mask_applied"),
        ("virtual_pixel_interpolation_enabled", "virtual_pixel_interpolation_applied"),
    ):
        if isinstance(s.get(flag), bool):
            _value(det, name, s[flag])
    channel = info.channel
    energies = s.get("threshold_energy")
    if isinstance(energies, dict) and channel in energies:
        _value(det, "threshold_energy", energies[channel], "eV")
    elif isinstance(energies, (int, float)) and not isinstance(energies, bool):
        _value(det, "threshold_energy", float(energies), "eV")


def _detector_transformations(det: h5py.Group, g: _Geometry) -> None:
    """The distance as a translation, the module with its offset and pixel directions."""
    vector = g.translation
    transformations = _nxgroup(det, "transformations", "NXtransformations")
    _value(
        transformations,
        "translation",
        vector[2],
        "m",
        transformation_type="translation",
        vector=_vec([0, 0, 1]),
        offset=_vec([vector[0], vector[1], 0.0]),
        depends_on=".",
    )
    module = _nxgroup(det, "module", "NXdetector_module")
    _value(module, "data_origin", np.asarray([0, 0], "<i4"))
    _value(module, "data_size", np.asarray([g.height, g.width], "<i4"))
    _value(module, "data_stride", np.asarray([1, 1], "<i4"))
    module_path = "/entry/instrument/detector/module"
    _value(
        module,
        "module_offset",
        0.0,
        "m",
        transformation_type="translation",
        vector=_vec([1, 0, 0]),
        offset=_vec([g.bcx * g.px, g.bcy * g.py, 0.0]),
        depends_on="/entry/instrument/detector/transformations/translation",
    )
    for name, size, axis in (
        ("fast_pixel_direction", g.px, [-1, 0, 0]),
        ("slow_pixel_direction", g.py, [0, -1, 0]),
    ):
        _value(
            module,
            name,
            size,
            "m",
            transformation_type="translation",
            vector=_vec(axis),
            offset=_vec([0, 0, 0]),
            depends_on=f"{module_path}/module_offset",
        )


def _detector_specific(det: h5py.Group, info: SeriesInfo, g: _Geometry) -> None:
    """``detectorSpecific``: the start message as sent and its main numbers."""
    s = info.start
    specific = _nxgroup(det, "detectorSpecific", "NXcollection")  # nimages: at the end
    _value(specific, "ntrigger", np.int64(1))
    _value(specific, "x_pixels_in_detector", np.int32(g.width))
    _value(specific, "y_pixels_in_detector", np.int32(g.height))
    _text(specific, "start_message", json.dumps(s, sort_keys=True))
    for key in ("series_id", "number_of_images", "image_size_x", "image_size_y"):
        if isinstance(s.get(key), int):
            _value(specific, key, np.int64(s[key]))
    for key in ("series_unique_id", "arm_date"):
        if isinstance(s.get(key), str):
            _text(specific, key, s[key])
    if isinstance(info.channel, str):
        _text(specific, "channel", info.channel)


def goniometer_axes(start: dict[str, Any]) -> dict[str, tuple[float, float]]:
    """Axis name -> (start, increment) from the start message's ``goniometer`` map."""
    axes: dict[str, tuple[float, float]] = {}
    gonio = start.get("goniometer")
    if not isinstance(gonio, dict):
        return axes
    for name, spec in gonio.items():
        if not isinstance(spec, dict):
            continue
        begin, step = number(spec, "start"), number(spec, "increment")
        if begin is not None:
            axes[str(name)] = (begin, step or 0.0)
    return axes


def _sample(entry: h5py.Group, info: SeriesInfo) -> None:
    sample = _nxgroup(entry, "sample", "NXsample")
    user = info.start.get("user_data")
    name = user.get("sample_name") if isinstance(user, dict) else None
    _text(sample, "name", str(name or Path(info.prefix).name))
    axes = {k: v for k, v in goniometer_axes(info.start).items() if k != "two_theta"}
    if not axes:
        _text(sample, "depends_on", ".")
        return
    ordered = [a for a in CHAIN_ORDER if a in axes] + sorted(
        a for a in axes if a not in CHAIN_ORDER
    )
    base = "/entry/sample/transformations"
    _text(sample, "depends_on", f"{base}/{ordered[0]}")
    transformations = _nxgroup(sample, "transformations", "NXtransformations")
    n = max(info.images, 1)
    for i, axis in enumerate(ordered):
        begin, step = axes[axis]
        values = begin + step * np.arange(n, dtype="<f8")
        after = f"{base}/{ordered[i + 1]}" if i + 1 < len(ordered) else "."
        _value(
            transformations,
            axis,
            values,
            "degree",
            transformation_type="rotation",
            vector=_vec(AXIS_VECTORS.get(axis, AXIS_VECTORS["omega"])),
            offset=_vec([0, 0, 0]),
            depends_on=after,
        )
        _value(transformations, f"{axis}_end", values + step, "degree")
        _value(transformations, f"{axis}_increment_set", step, "degree")
