"""Files that appear under their final name only when complete, and HDF5 chunk filters.

A file is written as ``NAME.part`` in its final directory, flushed, fsynced and
renamed to ``NAME``; the directory is fsynced after the rename. A killed writer
leaves at most ``.part`` files, which the next start removes. Names are
deterministic (the series and file number, or the first stream index), so
writing a file again after a restart replaces it with the same content.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
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


WRITEBACK_BYTES = 4 << 20  # a file being written is handed to the disk this often
_SYNC_FILE_RANGE_WRITE = 2  # linux/fs.h: start writeback of dirty pages, do not wait


def _load_sync_file_range() -> object | None:
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):  # not Linux: the fsync at the end does it all
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages to disk.

    While a file is filled, its written part goes to the disk in the background, so
    the fsync when it is complete waits for its last pages only, not for all of it.
    A hint: where the call is missing or fails, the fsync does all the work.
    """
    if _sync_file_range is not None:
        _sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)  # type: ignore[operator]


_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _writeback_pool() -> ThreadPoolExecutor:
    """One thread for the process: submitting writeback can wait for the disk's queue,
    which the thread writing the file should not."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(1, thread_name_prefix="writeback")
        return _pool


def _writeback_and_close(fd: int) -> None:
    try:
        start_writeback(fd)
    finally:
        os.close(fd)


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


def part_size(final: Path) -> int:
    """The size of ``final``'s ``.part`` file."""
    return part_name(final).stat().st_size


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
        self._unflushed = 0  # bytes written since the last writeback was asked for
        self._writeback: Future[None] | None = None

    def wrote(self, nbytes: int) -> None:
        """``nbytes`` more are written; every WRITEBACK_BYTES they start to go to disk
        (in the writeback thread, on a duplicate of the file's descriptor)."""
        self._unflushed += nbytes
        if self._unflushed < WRITEBACK_BYTES or _sync_file_range is None:
            return
        if self._writeback is not None and not self._writeback.done():
            return  # the last one still runs: it takes these pages too
        self._unflushed = 0
        fd = os.dup(self.h5.id.get_vfd_handle())
        self._writeback = _writeback_pool().submit(_writeback_and_close, fd)

    def complete(self) -> Path:
        self.h5.close()
        publish(self.part, self.final)
        return self.final

    def close(self) -> Path:
        """Close the ``.part`` (complete, not yet published); its final name."""
        self.h5.close()
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


def chunk_bytes(
    data: bytes | memoryview, codec: str, dtype: str, nbytes: int
) -> bytes | memoryview:
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
