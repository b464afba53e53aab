"""HDF5 export of a stream (SPEC §10): a NeXus file that h5py, silx and hdf5plugin open.

Layout::

    /                  @default = "entry", @creator, @hidra_ng_stream
    /entry             NXentry, @default = "data"
    /entry/data        NXdata, @signal = "data"
        data           (N, *frame_shape) frames, one per chunk
        index          (N,) int64 stream index of each frame
        meta           (N,) JSON string: each frame's meta
        created        (N,) float64 producer clock, seconds since the epoch
        stored         (N,) float64 receiver clock at commit
    /entry/metadata    NXcollection: the metadata-only messages in the range
        index, meta    as above (e.g. a DECTRIS series' start and end)

Frames are read as stored (``decode=False``) and written with
``write_direct_chunk``: compressed frames keep their bytes, with the HDF5
filter that reads them, never decompressed and compressed again:

    ===========  ==============================  ===================================
    codec        dataset filter                  chunk written
    ===========  ==============================  ===================================
    lz4, zstd    Blosc2 (32026)                  the blosc2 chunk in a one-chunk
                                                 super-chunk frame, as that filter
                                                 reads it
    bslz4        bitshuffle (32008), LZ4         the payload as stored
    lz4-hdf5     LZ4 (32004)                     the payload as stored
    bszstd       bitshuffle (32008), Zstandard   the payload as stored
    none         none                            the raw bytes
    ===========  ==============================  ===================================

The dataset takes the filter of the first frame's codec; a later frame with
another codec is decoded and written through that filter. Every frame must have
the first one's dtype and shape. Memory stays bounded by a few frames whatever
the stream's size. The file is written under a temporary name in the target's
directory, fsynced and renamed at the end: a failed or interrupted export
never leaves a partial file under the final name.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import blosc2
import h5py
import hdf5plugin
import msgspec
import numpy as np

from hidra_ng.client.consumer import Consumer
from hidra_ng.errors import Gone, InvalidFrame, InvalidInput
from hidra_ng.wire.compression import decompress
from hidra_ng.wire.frames import Frame
from hidra_ng.wire.protocol import Payload, Record, check_stream_name

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (messages done, messages in the range)

_ROWS_PER_FLUSH = 1024  # index/meta rows buffered before they are written


@dataclass(frozen=True)
class ExportResult:
    path: Path
    stream: str
    start: int  # first index exported
    stop: int  # one past the last index exported
    frames: int  # array frames written to /entry/data/data
    metadata_messages: int  # metadata-only messages written to /entry/metadata
    frame_shape: tuple[int, ...]
    dtype: str
    compression: str  # codec of the dataset's chunks
    bytes: int  # size of the file
    seconds: float


def stored_frames(consumer: Consumer, stream: str, start: int, stop: int) -> Iterator[Frame]:
    """Frames ``start`` to ``stop`` (exclusive) as stored: compressed bytes, not decoded.

    A flow-controlled replay: the receiver sends ahead within the replay window,
    and memory stays bounded whatever the stream's size.
    """
    yield from consumer.replay(stream, start, stop, decode=False)


def _filter_options(codec: str) -> dict[str, Any]:
    """h5py create_dataset arguments for the HDF5 filter that reads ``codec`` chunks."""
    if codec == "none":
        return {}
    if codec in ("lz4", "zstd"):
        return dict(
            hdf5plugin.Blosc2(
                cname=codec,  # type: ignore[arg-type]  # lz4 or zstd here
                clevel=5,
                filters=hdf5plugin.Blosc2.BITSHUFFLE,
            )
        )
    if codec == "bslz4":
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    if codec == "lz4-hdf5":
        return dict(hdf5plugin.LZ4(nbytes=0))
    if codec == "bszstd":
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="zstd"))
    raise InvalidFrame(f"compression {codec!r} has no HDF5 filter here")


def _family(codec: str) -> str:
    """Codecs one HDF5 filter reads: lz4 and zstd blosc2 chunks share the Blosc2 filter."""
    return "blosc2" if codec in ("lz4", "zstd") else codec


def _chunk(frame: Frame, nbytes: int) -> bytes | memoryview:
    """A stored frame's payload in the form its codec's HDF5 filter reads."""
    if frame.compression in ("lz4", "zstd"):
        # hdf5plugin's Blosc2 filter reads a super-chunk frame (cframe), not a bare
        # chunk: wrap the stored chunk as the one chunk of a super-chunk, unchanged.
        schunk = blosc2.SChunk(
            chunksize=nbytes, cparams={"typesize": np.dtype(frame.dtype).itemsize}
        )
        schunk.insert_chunk(0, frame.data)
        return schunk.to_cframe()
    return frame.data  # type: ignore[return-value]  # read with decode=False: bytes


def _decode(frame: Frame) -> np.ndarray:
    record = Record(
        sender=frame.sender,
        seq=frame.seq,
        payload=Payload.ARRAY,
        dtype=frame.dtype,
        shape=frame.shape,
        compression=frame.compression,
        meta=b"{}",
        created=frame.created,
        stored=frame.stored,
        nbytes=frame.nbytes,
    )
    raw = decompress(frame.data, record)  # type: ignore[arg-type]  # decode=False: bytes
    return np.frombuffer(raw, np.dtype(frame.dtype)).reshape(frame.shape)


def nxdata_entry(h5: h5py.File) -> h5py.Group:
    """``/entry`` (NXentry, the file's default) holding ``/entry/data`` (NXdata, signal
    ``data``), empty; the §10 layout and the writer's NXmx data files start with it."""
    h5.attrs["default"] = "entry"
    h5.attrs["creator"] = "hidra_ng"
    entry = h5.create_group("entry")
    entry.attrs["NX_class"] = "NXentry"
    entry.attrs["default"] = "data"
    data = entry.create_group("data")
    data.attrs["NX_class"] = "NXdata"
    data.attrs["signal"] = "data"
    return data


def nexus_groups(h5: h5py.File, stream: str) -> tuple[h5py.Group, h5py.Group]:
    """The groups of the §10 layout in a new file: ``/entry/data`` (NXdata, signal
    ``data``) and ``/entry/metadata`` (NXcollection); also used by ``hidra-ng write``."""
    h5.attrs["hidra_ng_stream"] = stream
    data = nxdata_entry(h5)
    metadata = h5["entry"].create_group("metadata")
    metadata.attrs["NX_class"] = "NXcollection"
    return data, metadata


class _Writer:
    """Appends frames to an open HDF5 file in the NeXus layout."""

    def __init__(self, h5: h5py.File, stream: str) -> None:
        self.h5 = h5
        self.group, self.metadata = nexus_groups(h5, stream)
        self.data: h5py.Dataset | None = None
        self.codec = "none"
        self.count = 0
        self.shape: tuple[int, ...] = ()
        self.dtype = ""
        self.nbytes = 0
        self.rows: dict[str, list] = {"index": [], "meta": [], "created": [], "stored": []}
        self.meta_rows: dict[str, list] = {"index": [], "meta": []}
        self.meta_count = 0
        string = h5py.string_dtype("utf-8")
        columns = {"index": "<i8", "meta": string, "created": "<f8", "stored": "<f8"}
        self.columns = {n: self._column(self.group, n, t) for n, t in columns.items()}
        self.meta_columns = {n: self._column(self.metadata, n, columns[n]) for n in self.meta_rows}

    @staticmethod
    def _column(group: h5py.Group, name: str, dtype: Any) -> h5py.Dataset:
        return group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(4096,))

    def add(self, frame: Frame, total: int) -> None:
        if frame.data is None:  # metadata-only
            self.meta_rows["index"].append(frame.index)
            self.meta_rows["meta"].append(msgspec.json.encode(frame.meta).decode())
            if len(self.meta_rows["index"]) >= _ROWS_PER_FLUSH:
                self.meta_count = self._flush(self.meta_columns, self.meta_rows, self.meta_count)
            return
        if not frame.dtype:
            raise InvalidInput(
                f"message {frame.index} of stream {frame.stream!r} holds bytes, not an array;"
                " export writes array frames (and metadata-only messages) only"
            )
        if self.data is None:
            self._create(frame, total)
        elif frame.dtype != self.dtype or tuple(frame.shape) != self.shape:
            raise InvalidFrame(
                f"frame {frame.index} of stream {frame.stream!r} has dtype {frame.dtype} and shape"
                f" {tuple(frame.shape)}; the export started with {self.dtype} {self.shape}, and"
                " one dataset holds one kind of frame (export the ranges separately)"
            )
        assert self.data is not None
        offset = (self.count,) + (0,) * len(self.shape)
        if _family(frame.compression) == _family(self.codec):
            self.data.id.write_direct_chunk(offset, _chunk(frame, self.nbytes))
        elif self.codec == "none":
            self.data.id.write_direct_chunk(offset, _decode(frame).tobytes())
        else:  # another codec than the dataset's: decoded, then through the dataset's filter
            self.data[self.count] = _decode(frame)
        self.count += 1
        self.rows["index"].append(frame.index)
        self.rows["meta"].append(msgspec.json.encode(frame.meta).decode())
        self.rows["created"].append(frame.created)
        self.rows["stored"].append(frame.stored)
        if len(self.rows["index"]) >= _ROWS_PER_FLUSH:
            self._flush(self.columns, self.rows, self.count - len(self.rows["index"]))

    def _create(self, frame: Frame, total: int) -> None:
        self.dtype, self.shape, self.codec = frame.dtype, tuple(frame.shape), frame.compression
        dtype = np.dtype(self.dtype)
        self.nbytes = dtype.itemsize * int(np.prod(self.shape, dtype=np.int64))
        self.data = self.group.create_dataset(
            "data",
            shape=(total, *self.shape),
            maxshape=(None, *self.shape),
            dtype=dtype,
            chunks=(1, *self.shape),
            **_filter_options(self.codec),
        )
        if len(self.shape) == 2:
            self.data.attrs["interpretation"] = "image"

    @staticmethod
    def _flush(columns: dict[str, h5py.Dataset], rows: dict[str, list], at: int) -> int:
        n = len(next(iter(rows.values())))
        for name, values in rows.items():
            column = columns[name]
            column.resize((at + n,))
            column[at : at + n] = values
            values.clear()
        return at + n

    def close(self) -> None:
        self._flush(self.columns, self.rows, self.count - len(self.rows["index"]))
        self.meta_count = self._flush(self.meta_columns, self.meta_rows, self.meta_count)
        if self.data is not None:
            self.data.resize((self.count, *self.shape))


def export_hdf5(
    api: str | Consumer,
    stream: str,
    out_path: str | os.PathLike[str],
    start: int = 0,
    stop: int | None = None,
    progress: Progress | None = None,
    *,
    overwrite: bool = False,
) -> ExportResult:
    """Write messages ``start`` to ``stop`` (exclusive) of ``stream`` to an HDF5 file.

    ``api`` is the receiver's api endpoint or an open Consumer. ``start=0`` means
    the first index still stored; ``stop=None`` the last index stored when the
    export begins, plus one. ``progress(done, total)`` is called after each
    message. An existing ``out_path`` is replaced only with ``overwrite=True``.
    """
    began = time.monotonic()
    check_stream_name(stream)
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise InvalidInput(f"{out} exists; remove it or export with overwrite")
    if not out.parent.is_dir():
        raise InvalidInput(f"directory {out.parent} of {out} does not exist")
    with contextlib.ExitStack() as stack:
        consumer = api if isinstance(api, Consumer) else stack.enter_context(Consumer(api))
        first, last = _index_range(consumer, stream, start, stop)
        result = _write_file(consumer, stream, first, last, out, progress)
    _fsync_dir(out.parent)
    return ExportResult(
        path=out,
        stream=stream,
        start=first,
        stop=last,
        bytes=out.stat().st_size,
        seconds=time.monotonic() - began,
        **result,
    )


def _index_range(consumer: Consumer, stream: str, start: int, stop: int | None) -> tuple[int, int]:
    """The indices to export, ``start=0`` and ``stop=None`` resolved, checked against the
    stream's stored range."""
    info = consumer.info(stream)
    end = info.last + 1 if info.last is not None else info.first
    first = info.first if start == 0 else start
    last = end if stop is None else stop
    if not start >= 0 or not first <= last <= end:
        raise InvalidInput(
            f"range start={start} stop={stop} is not in stream {stream!r}, which holds"
            f" indices {info.first} to {end - 1}"
        )
    if first < info.first:
        raise Gone(
            f"indices {first} to {info.first - 1} of stream {stream!r} were removed by"
            f" retention; it starts at {info.first}"
        )
    return first, last


def _write_file(
    consumer: Consumer,
    stream: str,
    first: int,
    last: int,
    out: Path,
    progress: Progress | None,
) -> dict[str, Any]:
    """Write the range under a temporary name, fsync, rename to ``out``; what was written."""
    total = last - first
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        with h5py.File(tmp, "w") as h5:
            writer = _Writer(h5, stream)
            for done, frame in enumerate(stored_frames(consumer, stream, first, last), 1):
                writer.add(frame, total)
                if progress is not None:
                    progress(done, total)
            writer.close()
            if writer.count == 0 and writer.meta_count == 0:
                raise InvalidInput(f"stream {stream!r} has no messages from {first} to {last}")
            result: dict[str, Any] = dict(
                frames=writer.count,
                metadata_messages=writer.meta_count,
                frame_shape=writer.shape,
                dtype=writer.dtype,
                compression=writer.codec,
            )
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return result


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
