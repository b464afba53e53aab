"""Files that appear under their final name only when complete, and HDF5 chunk filters.

A file is written as ``NAME.part`` in its final directory, flushed, fsynced and
renamed to ``NAME``; the directory is fsynced after the rename. A killed writer
leaves at most ``.part`` files, which the next start removes. Names are
deterministic (the series and file number, or the first stream index), so
writing a file again after a restart replaces it with the same content.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import blosc2
import h5py
import hdf5plugin
import numpy as np

from hidra_ng.errors import DiskFull, InvalidFrame

log = logging.getLogger(__name__)

PART = ".part"


def is_disk_full(err: BaseException) -> bool:
    """Whether ``err`` (an OSError from the OS or from HDF5) means 'no space left'."""
    if isinstance(err, DiskFull):
        return True
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(err)
    return "No space left" in text or "Disk quota exceeded" in text


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def publish(part: Path, final: Path) -> None:
    """fsync ``part``, rename it to ``final``, fsync the directory."""
    fsync_file(part)
    os.replace(part, final)
    fsync_dir(final.parent)


def part_name(final: Path) -> Path:
    return final.with_name(final.name + PART)


def write_atomic_bytes(final: Path, data: bytes) -> None:
    """``data`` under ``final``, complete or not at all."""
    part = part_name(final)
    try:
        with open(part, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, final)
        fsync_dir(final.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            part.unlink()
        raise


def remove_parts(directory: Path) -> list[Path]:
    """Delete the ``.part`` files a killed writer left in ``directory``."""
    removed = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            if entry.is_file() and entry.name.endswith(PART):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed.append(Path(entry.path))
    return removed


class PartFile:
    """An HDF5 file being written as ``NAME.part``; :meth:`complete` publishes it."""

    def __init__(self, final: Path, **kwargs: Any) -> None:
        self.final = final
        self.part = part_name(final)
        self.h5 = h5py.File(self.part, "w", **kwargs)

    def complete(self) -> Path:
        self.h5.close()
        publish(self.part, self.final)
        return self.final

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            self.h5.close()
        with contextlib.suppress(OSError):
            self.part.unlink()


@contextlib.contextmanager
def part_file(final: Path, **kwargs: Any) -> Iterator[h5py.File]:
    """An HDF5 file written as ``NAME.part`` and published when the block ends cleanly."""
    f = PartFile(final, **kwargs)
    try:
        yield f.h5
    except BaseException:
        f.abort()
        raise
    try:
        f.complete()
    except BaseException:
        f.abort()
        raise


# ----------------------------------------------------------------- chunks


def filter_options(codec: str) -> dict[str, Any]:
    """h5py ``create_dataset`` arguments for the HDF5 filter that reads ``codec`` chunks.

    ``bslz4`` is the bitshuffle filter (32008) with options (0, 2): block size
    chosen by the filter, LZ4; its chunks carry their own block size, as the
    DECTRIS file writer writes them. ``lz4-hdf5`` is the LZ4 filter (32004).
    """
    if codec == "none":
        return {}
    if codec == "bslz4":
        return dict(hdf5plugin.Bitshuffle(nelems=0, cname="lz4"))
    if codec == "lz4-hdf5":
        return dict(hdf5plugin.LZ4(nbytes=0))
    if codec in ("lz4", "zstd"):
        blosc = hdf5plugin.Blosc2(cname=codec, clevel=5, filters=hdf5plugin.Blosc2.BITSHUFFLE)  # type: ignore[arg-type]
        return dict(blosc)
    raise InvalidFrame(f"compression {codec!r} has no HDF5 filter here")


def family(codec: str) -> str:
    """Codecs that one HDF5 filter reads: blosc2 lz4 and zstd chunks share one."""
    return "blosc2" if codec in ("lz4", "zstd") else codec


def chunk_bytes(data: bytes, codec: str, dtype: str, nbytes: int) -> bytes:
    """A stored payload in the form its codec's HDF5 filter reads, unchanged inside.

    bslz4 and lz4-hdf5 payloads are the HDF5 filters' own framings and go as
    they are; a blosc2 chunk becomes the one chunk of a super-chunk frame,
    which is what hdf5plugin's Blosc2 filter reads.
    """
    if codec in ("lz4", "zstd"):
        schunk = blosc2.SChunk(chunksize=nbytes, cparams={"typesize": np.dtype(dtype).itemsize})
        schunk.insert_chunk(0, data)
        return schunk.to_cframe()
    return data
