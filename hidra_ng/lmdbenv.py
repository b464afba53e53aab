"""An LMDB environment that grows its map when full, shared by the store and the spool.

LMDB may only change the map size while no transaction of this process is
open, so read transactions pass a gate that a growing writer closes for the
moment of the resize.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import lmdb

from hidra_ng.errors import DiskFull, StorageError

log = logging.getLogger(__name__)

T = TypeVar("T")

MIN_MAP_BYTES = 64 * 1024 * 1024


class _Gate:
    """Shared/exclusive gate: many readers, or one resizer.

    Shared is reentrant per thread: a thread that holds it (the receiver's api
    keeps read transactions open while zmq sends views of the map) enters again
    without waiting for a resize that waits for it, which would never come.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False
        self._mine = threading.local()

    @property
    def resize_waiting(self) -> bool:
        """A resize waits for the readers to leave: hold nothing longer than needed."""
        return self._resizing

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._mine, "depth", 0)
        with self._cond:
            while self._resizing and not depth:
                self._cond.wait()
            self._readers += 1
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth -= 1
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    def try_enter(self) -> bool:
        """A reader's share without waiting: False while a resize is pending."""
        with self._cond:
            if self._resizing:
                return False
            self._readers += 1
            return True

    def leave(self) -> None:
        with self._cond:
            self._readers -= 1
            if not self._readers:
                self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Held:
    """A read transaction left open by :meth:`Env.hold`; ``close()`` ends it once."""

    def __init__(self, txn: lmdb.Transaction, stack: contextlib.ExitStack) -> None:
        self.txn = txn
        self._stack = stack

    def close(self) -> None:
        self._stack.close()  # an ExitStack runs its callbacks once


class Env:
    """One LMDB environment with named databases and map growth."""

    def __init__(
        self,
        path: Path,
        dbs: tuple[str, ...],
        *,
        sync: bool = True,
        metasync: bool | None = None,
        map_bytes: int = 256 * 1024 * 1024,
        max_map_bytes: int = 1 << 44,
    ) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_map_bytes = max_map_bytes
        try:
            self._env = lmdb.open(
                str(path),
                map_size=max(map_bytes, MIN_MAP_BYTES),
                max_dbs=len(dbs) + 1,
                sync=sync,
                # False: a commit flushes its pages, not the meta page that makes it
                # current; integrity holds on a crash, and a sync() makes it durable
                metasync=sync if metasync is None else metasync,
                readahead=False,
                max_readers=256,
                max_spare_txns=4,
            )
            self.dbs = {name: self._env.open_db(name.encode()) for name in dbs}
        except lmdb.Error as err:
            raise StorageError(f"cannot open LMDB environment at {path}: {err}") from err
        self._gate = _Gate()

    @property
    def resize_waiting(self) -> bool:
        """A resize waits for the read transactions open now (``hold()`` gives none)."""
        return self._gate.resize_waiting

    @property
    def map_bytes(self) -> int:
        return self._env.info()["map_size"]

    @contextlib.contextmanager
    def read(self) -> Iterator[lmdb.Transaction]:
        """A read transaction whose buffers stay valid only inside the block."""
        with self._gate.shared():
            txn = self._env.begin(buffers=True)
            try:
                yield txn
            finally:
                txn.abort()

    def hold(self) -> Held | None:
        """A read transaction (``buffers=True``) that stays open until ``Held.close()``.

        For buffers of the map lent to another thread (zmq's I/O thread): the map
        cannot grow or close while it is open, and ``close()`` may come from any
        thread (LMDB runs without thread-local reader slots here). None, without
        waiting, while the map waits to grow.
        """
        if not self._gate.try_enter():
            return None
        stack = contextlib.ExitStack()
        stack.callback(self._gate.leave)
        try:
            txn = self._env.begin(buffers=True)
        except BaseException:
            stack.close()
            raise
        stack.callback(txn.abort)
        return Held(txn, stack)

    def write(self, fill: Callable[[lmdb.Transaction], T], *, buffers: bool = False) -> T:
        """Run ``fill`` in a write transaction and commit it; grow the map and retry if full.

        ``fill`` may run more than once, so it must only write to the transaction.
        ``buffers=True``: reads in ``fill`` return memoryviews valid only inside it
        (no copy of the value).
        """
        while True:
            try:
                with self._gate.shared():
                    txn = self._env.begin(write=True, buffers=buffers)  # type: ignore[call-overload]
                    try:
                        result = fill(txn)
                        txn.commit()
                        return result
                    except BaseException:
                        txn.abort()
                        raise
            except lmdb.MapFullError:
                self._grow()
            except lmdb.Error as err:
                if _is_disk_full(err, self.path):
                    raise DiskFull(f"no space left for LMDB at {self.path}: {err}") from err
                raise StorageError(f"LMDB write at {self.path} failed: {err}") from err

    def _grow(self) -> None:
        current = self.map_bytes
        new = min(current * 2, self.max_map_bytes)
        if new <= current:
            raise DiskFull(
                f"LMDB map at {self.path} is full at {current} bytes, the configured maximum"
            )
        with self._gate.exclusive():
            self._env.set_mapsize(new)
        log.info("LMDB map at %s grown from %d to %d bytes", self.path, current, new)

    def sync(self) -> None:
        try:
            self._env.sync(True)
        except lmdb.Error as err:
            if _is_disk_full(err, self.path):
                raise DiskFull(f"no space left for LMDB at {self.path}: {err}") from err
            raise StorageError(f"LMDB sync at {self.path} failed: {err}") from err

    def disk_bytes(self) -> int:
        """Bytes the environment's data file takes on disk."""
        return (self.path / "data.mdb").stat().st_size

    def close(self) -> None:
        with self._gate.exclusive():
            self._env.close()


def _is_disk_full(err: lmdb.Error, path: Path) -> bool:
    """ENOSPC, or an I/O error on a filesystem with (almost) no space left.

    LMDB reports a failed write of its pages as EIO on some filesystems (tmpfs).
    """
    if isinstance(err, lmdb.DiskError) or "No space left" in str(err):
        return True
    if "Input/output error" in str(err) or errno.EIO in getattr(err, "args", ()):
        try:
            st = os.statvfs(path)
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < 64 * 1024 * 1024
    return False
