"""The three output formats of ``hidra-ng write``: how one stream's frames become files.

Each format gets the frames of one stream in index order (``add``) and
publishes complete files through its :class:`Context`. After every file it
reports a *checkpoint*: the first index not yet in a complete file and the
format's state at that point. A restarted writer resumes from the last saved
checkpoint; because file names are deterministic (series and file number, or
the first index in the file), redoing the frames after a checkpoint writes the
same files again under the same names, never a second copy.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import h5py
import numpy as np

from hidra_ng.client.export import nexus_groups
from hidra_ng.errors import Gone, HidraError, WriteRefused
from hidra_ng.wire.frames import Frame
from hidra_ng.writer import nxmx
from hidra_ng.writer.files import PartFile, chunk_bytes, family, filter_options, part_size

log = logging.getLogger(__name__)

FORMATS = ("nxmx", "hdf5", "tiff")


@dataclass
class Options:
    frames_per_file: int = 1000
    name_pattern: str = "series_$id"
    instrument_name: str = ""
    source_name: str = ""
    file_idle_seconds: float = 10.0  # hdf5: complete a file no frame came for this long


@dataclass
class Published:
    """Files a format completed, for metrics, the checkpoint and announcements.

    ``files`` are final names; each is still ``NAME.part``, closed and complete: the
    context publishes them (fsync, rename) before it commits the checkpoint.
    """

    files: list[Path]
    frames: int
    bytes: int
    announce: dict[str, Any] | None = None  # a complete series or file to announce


class Context(Protocol):
    stream: str
    directory: Path
    options: Options

    def fetch(self, index: int, *, decode: bool = True) -> Frame: ...
    def fetch_table(self, series_unique_id: Any, table: str, channel: Any) -> np.ndarray | None: ...
    def checkpoint(self, next_index: int, state: dict[str, Any], done: Published | None) -> None:
        """After ``done``'s files (if any) are published, the first index not in a
        complete file is ``next_index`` and the format's state is ``state`` (not
        changed afterwards: the context may commit it later, in another thread)."""


def segment(stream: str) -> str:
    return stream.rsplit("/", 1)[-1]


def _describe(frame: Frame) -> str:
    return f"frame {frame.index} of stream {frame.stream!r}"


class Format:
    """Base: frames in, files out, checkpoints reported through the context."""

    name = ""
    decode = False  # whether frames are read decoded (tiff) or as stored

    def __init__(self, ctx: Context, state: dict[str, Any]) -> None:
        self.ctx = ctx

    def add(self, frame: Frame) -> None:
        raise NotImplementedError

    def finish(self, next_index: int) -> None:
        """The stream is finished: complete what is open."""

    def idle(self, next_index: int, seconds: float) -> None:
        """No new frame for ``seconds``; ``next_index`` is the index awaited."""

    def abort(self) -> None:
        """Drop the file in progress (its ``.part``); the checkpoint stays."""


# ------------------------------------------------------------------- nxmx


@dataclass
class OpenSeries:
    start_index: int
    prefix: str
    meta: dict[str, Any]
    images: int = 0
    files: list[str] = field(default_factory=list)
    dtype: str = ""
    shape: tuple[int, ...] = ()
    codec: str = ""
    first_image_nr: int | None = None
    last_image_nr: int = 0
    channel: str | None = None
    end_time: str | None = None
    tables: dict[str, int] = field(default_factory=dict)  # table name -> index in this stream
    counts: list[int] = field(default_factory=list)  # images in each of files

    def state(self) -> dict[str, Any]:
        return {
            "start_index": self.start_index,
            "prefix": self.prefix,
            "images": self.images,
            "files": list(self.files),  # a copy: committed later, in another thread
            "dtype": self.dtype,
            "shape": list(self.shape),
            "codec": self.codec,
            "first_image_nr": self.first_image_nr,
            "last_image_nr": self.last_image_nr,
            "channel": self.channel,
            "end_time": self.end_time,
            "tables": dict(self.tables),
            "counts": list(self.counts),
        }


class NxmxFormat(Format):
    """DECTRIS series (start, images, end) as an NXmx master and data files."""

    name = "nxmx"

    def __init__(self, ctx: Context, state: dict[str, Any]) -> None:
        super().__init__(ctx, state)
        self.series: OpenSeries | None = None
        self.data: nxmx.DataFile | None = None
        self.data_low = 0
        # the series' master, begun with its first image here (see nxmx.MasterFile)
        self.master: nxmx.MasterFile | None = None
        saved = state.get("series")
        if saved:
            start = ctx.fetch(saved["start_index"])
            self.series = OpenSeries(
                start_index=saved["start_index"],
                prefix=saved["prefix"],
                meta=dict(start.meta),
                images=saved["images"],
                files=list(saved["files"]),
                dtype=saved["dtype"],
                shape=tuple(saved["shape"]),
                codec=saved["codec"],
                first_image_nr=saved["first_image_nr"],
                last_image_nr=saved["last_image_nr"],
                channel=saved["channel"],
                end_time=saved["end_time"],
                tables=dict(saved.get("tables") or {}),
                counts=list(saved.get("counts") or []),  # a checkpoint of before: none
            )

    def _state(self) -> dict[str, Any]:
        return {"series": self.series.state() if self.series else None}

    # ------------------------------------------------------------- frames

    def add(self, frame: Frame) -> None:
        meta = frame.meta if isinstance(frame.meta, dict) else {}
        kind = meta.get("type")
        if frame.data is None:
            if kind == "start":
                if self.series is not None:
                    log.warning(
                        "stream %s: series %s has no end message before the next start at"
                        " index %d; closing it with %d images",
                        frame.stream,
                        self.series.meta.get("series_unique_id"),
                        frame.index,
                        self.series.images,
                    )
                    self._close_series(frame.index, None)
                self._open_series(frame)
            elif kind == "end" and self.series is not None:
                self._close_series(frame.index + 1, frame)
                return
            elif kind == "restart":
                log.warning("stream %s: the sender restarted inside the series (%s)",
                            frame.stream, meta)  # fmt: skip
            if self.data is None:
                self.ctx.checkpoint(frame.index + 1, self._state(), None)
            return
        if kind == "table" or (isinstance(meta.get("table"), str) and kind != "image"):
            if self.series is not None:
                self.series.tables[str(meta.get("table"))] = frame.index
            return
        self._image(frame, meta)

    def _open_series(self, frame: Frame) -> None:
        meta = dict(frame.meta)
        series_id = meta.get("series_id")
        prefix = self.ctx.options.name_pattern.replace("$id", str(series_id))
        prefix = re.sub(r"[^A-Za-z0-9._-]", "_", prefix) or "series"
        prefix = self._free_prefix(prefix, meta.get("series_unique_id"))
        self.series = OpenSeries(start_index=frame.index, prefix=prefix, meta=meta)

    def _free_prefix(self, prefix: str, unique: Any) -> str:
        """``prefix``, or a longer one if its master belongs to another series."""
        master = self.ctx.directory / f"{prefix}_master.h5"
        if not master.exists():
            return prefix
        try:
            with h5py.File(master, "r") as h5:
                path = "/entry/instrument/detector/detectorSpecific/series_unique_id"
                existing = h5[path][()].decode() if path in h5 else None
        except (OSError, KeyError):
            existing = None
        if existing == str(unique):
            return prefix  # our own, from before a restart: written again, the same
        suffix = re.sub(r"[^A-Za-z0-9]", "", str(unique))[:12] or "x"
        log.warning("%s belongs to another series; this one is written as %s_%s",
                    master, prefix, suffix)  # fmt: skip
        return f"{prefix}_{suffix}"

    def _image(self, frame: Frame, meta: dict[str, Any]) -> None:
        s = self._series_of(frame, meta)
        image_id = meta.get("image_id")
        nr = image_id + 1 if isinstance(image_id, int) and image_id >= 0 else s.last_image_nr + 1
        if self.master is None:
            path = self.ctx.directory / f"{s.prefix}_master.h5"
            self.master = nxmx.MasterFile(path, self._info(s, None, {}))
        data_file = self.data
        if data_file is None:
            data_file = self._open_data_file(frame.stream, s, nr)
        if family(frame.compression) != family(s.codec):
            # another codec than the series' first image: the decoded image, re-encoded
            # by the dataset's filter (only then; images as stored go in unchanged)
            decoded = self.ctx.fetch(frame.index, decode=True).data
            assert isinstance(decoded, np.ndarray)
            data_file.data[data_file.count] = decoded
            data_file.count += 1
            data_file.indices.append(frame.index)
            data_file.image_ids.append(nr - 1)
        else:
            assert isinstance(frame.data, (bytes, memoryview))
            data_file.add(frame.data, frame.index, nr - 1)
        s.images += 1
        s.last_image_nr = nr
        if s.first_image_nr is None:
            s.first_image_nr = nr
        s.end_time = nxmx.observed_end_time(meta) or s.end_time
        if data_file.count >= self.ctx.options.frames_per_file:
            self._complete_data(frame.index + 1)

    def _series_of(self, frame: Frame, meta: dict[str, Any]) -> OpenSeries:
        """The open series ``frame`` belongs to (its image kind set by its first image),
        or WriteRefused."""
        s = self.series
        what = f"image {meta.get('image_id')} (index {frame.index}) of stream {frame.stream!r}"
        if s is None:
            raise WriteRefused(
                f"{what} has no start message before it; nxmx needs the series' start message"
                " (write this stream with --format hdf5, or send the series again)",
                "no_start",
            )
        unique = meta.get("series_unique_id")
        if unique is not None and unique != s.meta.get("series_unique_id"):
            raise WriteRefused(
                f"{what} belongs to series {unique!r} but the open series is"
                f" {s.meta.get('series_unique_id')!r}: the start message of {unique!r} is missing",
                "no_start",
            )
        if not frame.dtype:
            raise WriteRefused(f"{what} holds bytes, not an image array", "not_an_image")
        if not s.dtype:
            s.dtype, s.shape, s.codec = frame.dtype, tuple(frame.shape), frame.compression
            s.channel = meta.get("channel") if isinstance(meta.get("channel"), str) else None
        elif frame.dtype != s.dtype or tuple(frame.shape) != s.shape:
            raise WriteRefused(
                f"{what} has dtype {frame.dtype} and shape {tuple(frame.shape)}, but the series"
                f" started with {s.dtype} {s.shape}; one series holds one kind of image",
                "shape_changed",
            )
        return s

    def _open_data_file(self, stream: str, s: OpenSeries, nr: int) -> nxmx.DataFile:
        """The series' next data file, its first image numbered ``nr``."""
        name = f"{s.prefix}_data_{len(s.files) + 1:06d}.h5"
        self.data = nxmx.DataFile(
            self.ctx.directory / name,
            stream,
            s.meta.get("series_unique_id"),
            self.ctx.options.frames_per_file,
            s.dtype,
            s.shape,
            s.codec,
        )
        self.data_low = nr
        return self.data

    def _complete_data(self, next_index: int) -> None:
        s, df = self.series, self.data
        assert s is not None and df is not None
        path = df.close(self.data_low, s.last_image_nr)  # published by the context
        self.data = None
        s.files.append(path.name)
        s.counts.append(df.count)
        done = Published([path], df.count, part_size(path))
        self.ctx.checkpoint(next_index, self._state(), done)

    def _close_series(self, next_index: int, end: Frame | None) -> None:
        s = self.series
        assert s is not None
        if self.data is not None:
            self._complete_data(next_index)
        info = self._info(s, end, self._tables(s))
        path = self.ctx.directory / f"{s.prefix}_master.h5"
        if self.master is not None:  # begun with the series' first image
            master, self.master = self.master.close(info), None
        else:  # a series without images, or restarted inside
            master = nxmx.close_master(path, info)
        last = end.index if end is not None else next_index - 1
        announce = {
            "format": "nxmx",
            "file": str(master),
            "master": str(master),
            "data_files": [str(self.ctx.directory / n) for n in s.files],
            "stream": self.ctx.stream,
            "first_index": s.start_index,
            "last_index": last,
            "image_count": s.images,
            "image_nr_low": s.first_image_nr or 0,
            "image_nr_high": s.last_image_nr,
            "series_id": s.meta.get("series_id"),
            "series_unique_id": s.meta.get("series_unique_id"),
            "complete": end is not None,
        }
        self.series = None
        done = Published([master], 0, part_size(master), announce)
        self.ctx.checkpoint(next_index, self._state(), done)

    def _info(
        self, s: OpenSeries, end: Frame | None, tables: dict[str, np.ndarray]
    ) -> nxmx.SeriesInfo:
        return nxmx.SeriesInfo(
            stream=self.ctx.stream,
            prefix=s.prefix,
            start=s.meta,
            start_index=s.start_index,
            end_index=end.index if end is not None else None,
            images=s.images,
            files=s.files,
            image_shape=s.shape,
            dtype=s.dtype or "<u2",
            first_image_nr=s.first_image_nr or 1,
            channel=s.channel,
            end_time=s.end_time if end is not None else None,
            instrument_name=self.ctx.options.instrument_name or self.ctx.stream.split("/")[0],
            source_name=self.ctx.options.source_name or "unknown",
            tables=tables,
            counts=s.counts if len(s.counts) == len(s.files) else None,
        )

    def _tables(self, s: OpenSeries) -> dict[str, np.ndarray]:
        tables: dict[str, np.ndarray] = {}
        for name in ("pixel_mask", "flatfield"):
            try:
                if name in s.tables:
                    data = self.ctx.fetch(s.tables[name]).data
                else:
                    data = self.ctx.fetch_table(s.meta.get("series_unique_id"), name, s.channel)
            except (HidraError, OSError) as err:
                log.warning("stream %s: %s of series %s not read: %s", self.ctx.stream, name,
                            s.meta.get("series_unique_id"), err)  # fmt: skip
                continue
            if isinstance(data, np.ndarray) and data.shape == s.shape:
                tables[name] = data
        return tables

    def finish(self, next_index: int) -> None:
        if self.series is not None:
            log.warning("stream %s finished inside series %s; closing it", self.ctx.stream,
                        self.series.meta.get("series_unique_id"))  # fmt: skip
            self._close_series(next_index, None)

    def abort(self) -> None:
        if self.data is not None:
            self.data.abort()
            self.data = None
        if self.master is not None:
            self.master.abort()
            self.master = None


# ------------------------------------------------------------------- hdf5


class _Hdf5File:
    """One file of the §10 layout, filled frame by frame."""

    def __init__(self, path: Path, stream: str, capacity: int) -> None:
        self.file = PartFile(path)
        self.group, self.metadata = nexus_groups(self.file.h5, stream)
        self.capacity = capacity
        self.data: h5py.Dataset | None = None
        self.dtype, self.codec, self.nbytes = "", "none", 0
        self.shape: tuple[int, ...] = ()
        self.rows: dict[str, list] = {"index": [], "meta": [], "created": [], "stored": []}
        self.meta_rows: dict[str, list] = {"index": [], "meta": []}
        self.first: int | None = None
        self.last = -1

    @property
    def count(self) -> int:
        return len(self.rows["index"])

    def fits(self, frame: Frame) -> bool:
        return self.data is None or (frame.dtype == self.dtype and tuple(frame.shape) == self.shape)

    def add(self, frame: Frame, decoded: Any) -> None:
        if self.first is None:
            self.first = frame.index
        self.last = frame.index
        meta = json.dumps(frame.meta, sort_keys=True)
        if frame.data is None:
            self.meta_rows["index"].append(frame.index)
            self.meta_rows["meta"].append(meta)
            return
        if self.data is None:
            self.dtype, self.shape, self.codec = frame.dtype, tuple(frame.shape), frame.compression
            self.nbytes = np.dtype(self.dtype).itemsize * int(np.prod(self.shape, dtype=np.int64))
            self.data = self.group.create_dataset(
                "data",
                shape=(self.capacity, *self.shape),
                maxshape=(None, *self.shape),
                dtype=np.dtype(self.dtype),
                chunks=(1, *self.shape),
                **filter_options(self.codec),
            )
            if len(self.shape) == 2:
                self.data.attrs["interpretation"] = "image"
        offset = (self.count,) + (0,) * len(self.shape)
        if family(frame.compression) == family(self.codec):
            assert isinstance(frame.data, (bytes, memoryview))
            chunk = chunk_bytes(frame.data, frame.compression, self.dtype, self.nbytes)
            self.data.id.write_direct_chunk(offset, chunk)
            self.file.wrote(len(chunk))
        else:
            self.data[self.count] = decoded()
        self.rows["index"].append(frame.index)
        self.rows["meta"].append(meta)
        self.rows["created"].append(frame.created)
        self.rows["stored"].append(frame.stored)

    def complete(self) -> Path:
        string = h5py.string_dtype("utf-8")
        types = {"index": "<i8", "meta": string, "created": "<f8", "stored": "<f8"}
        for name, values in self.rows.items():
            self.group.create_dataset(name, data=np.asarray(values, dtype=types[name]))
        for name, values in self.meta_rows.items():
            self.metadata.create_dataset(name, data=np.asarray(values, dtype=types[name]))
        if self.data is not None:
            self.data.resize((self.count, *self.shape))
        h5 = self.file.h5
        h5.attrs["hidra_ng_first_index"] = self.first if self.first is not None else -1
        h5.attrs["hidra_ng_last_index"] = self.last
        return self.file.close()  # published by the context

    def abort(self) -> None:
        self.file.abort()


class Hdf5Format(Format):
    """The §10 layout, one file per ``frames_per_file`` array frames, named by first index."""

    name = "hdf5"

    def __init__(self, ctx: Context, state: dict[str, Any]) -> None:
        super().__init__(ctx, state)
        self.file: _Hdf5File | None = None

    def add(self, frame: Frame) -> None:
        if frame.data is not None and not frame.dtype:
            raise WriteRefused(
                f"{_describe(frame)} holds bytes, not an array; the hdf5 format writes arrays"
                " and metadata-only messages",
                "not_an_array",
            )
        if self.file is not None and not self.file.fits(frame):
            log.info("stream %s: frame %d has dtype %s and shape %s; starting a new file",
                     frame.stream, frame.index, frame.dtype, tuple(frame.shape))  # fmt: skip
            self._complete(frame.index)
        if self.file is None:
            name = f"{segment(self.ctx.stream)}_{frame.index:09d}.h5"
            self.file = _Hdf5File(
                self.ctx.directory / name, self.ctx.stream, self.ctx.options.frames_per_file
            )
        self.file.add(frame, lambda: self.ctx.fetch(frame.index, decode=True).data)
        if self.file.count >= self.ctx.options.frames_per_file:
            self._complete(frame.index + 1)

    def _complete(self, next_index: int) -> None:
        f = self.file
        assert f is not None
        path = f.complete()
        self.file = None
        announce = {
            "format": "hdf5",
            "file": str(path),
            "stream": self.ctx.stream,
            "first_index": f.first,
            "last_index": f.last,
            "image_count": f.count,
            "complete": True,
        }
        self.ctx.checkpoint(next_index, {}, Published([path], f.count, part_size(path),
                                                      announce))  # fmt: skip

    def finish(self, next_index: int) -> None:
        if self.file is not None:
            self._complete(next_index)

    def idle(self, next_index: int, seconds: float) -> None:
        # a stream that pauses (or is never finished) still gets its last frames into a
        # complete file; the next frames start a file named by their own first index
        limit = self.ctx.options.file_idle_seconds
        if self.file is not None and limit > 0 and seconds >= limit:
            self._complete(next_index)

    def abort(self) -> None:
        if self.file is not None:
            self.file.abort()
            self.file = None


# ------------------------------------------------------------------- tiff


class TiffFormat(Format):
    """One TIFF per array frame, ``<name>_<index>.tif``, the meta as JSON in its description."""

    name = "tiff"
    decode = True

    def add(self, frame: Frame) -> None:
        import tifffile

        if frame.data is None:
            self.ctx.checkpoint(frame.index + 1, {}, None)
            return
        if not isinstance(frame.data, np.ndarray):
            raise WriteRefused(
                f"{_describe(frame)} holds bytes, not an image array; TIFF needs an array",
                "not_an_array",
            )
        if frame.data.ndim < 2:
            raise WriteRefused(
                f"{_describe(frame)} has shape {frame.data.shape}; a TIFF image needs 2 or more"
                " dimensions",
                "shape",
            )
        final = self.ctx.directory / f"{segment(self.ctx.stream)}_{frame.index:09d}.tif"
        part = final.with_name(final.name + ".part")
        description = json.dumps(
            {"hidra_ng_stream": frame.stream, "hidra_ng_index": frame.index, "meta": frame.meta},
            sort_keys=True,
        )
        try:
            tifffile.imwrite(part, frame.data, description=description, metadata=None)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        size = part.stat().st_size  # published (fsync, rename) by the context
        self.ctx.checkpoint(frame.index + 1, {}, Published([final], 1, size))


def make_format(name: str, ctx: Context, state: dict[str, Any]) -> Format:
    cls = {"nxmx": NxmxFormat, "hdf5": Hdf5Format, "tiff": TiffFormat}[name]
    try:
        return cls(ctx, state)
    except Gone as err:
        raise WriteRefused(
            f"stream {ctx.stream!r}: the start message of the open series is gone ({err});"
            " the series cannot be completed",
            "gone",
        ) from err
