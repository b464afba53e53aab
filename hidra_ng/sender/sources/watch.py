"""``watch:`` send the files that appear in a directory, once each, as bytes.

``watch:/data/incoming?pattern=*.cbf&stream=p11/pilatus&remove=after_ack``

A file whose name matches ``pattern`` (shell-style, default ``*``; names
starting with '.' are skipped unless ``hidden=1``), anywhere below the
directory (``recursive=0``: only in it), is sent as one bytes message with meta
``{"filename", "path" (relative, '/'-separated), "size", "mtime"}``, once it is
complete:

- with inotify (Linux; ``mode=auto`` or ``inotify``), when its writer closes it
  or it is renamed into the directory, i.e. write-then-rename is picked up
  atomically;
- without (``mode=poll``, or where inotify is missing), and for files found by
  the scan at start and the periodic rescans (every ``rescan`` s, default 30,
  with inotify; every ``poll`` s, default 1, without), when it has not been
  modified for ``settle`` seconds (default 1). A writer that pauses longer than
  that mid-file gets the partial file sent and then, when it changes again, the
  new version.

Files already there at start that were never sent (they arrived while the
daemon was down) are sent. A file is sent once: what was sent is remembered in
the spool (a checkpoint per file, written in the same commit as its message,
holding its size and mtime), so a restart sends nothing twice. A file whose
size or mtime changed since it was sent is a new version and is sent again
(this is also how a new file under a removed file's name is noticed).

``remove=after_ack`` deletes a file once the receiver has acknowledged its
message (durably stored), never before, and only if it is unchanged since it
was sent; files sent before a restart are deleted once everything spooled
before the restart is acknowledged. Removal leaves directories in place.

Memory: the source keeps the size and mtime of every file it has seen sent, so
it grows with the number of files left in the directory (not with those it
removed). Throughput: one spool commit per file.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fnmatch
import logging
import os
import select
import struct
import threading
import time
from dataclasses import dataclass, field

import msgspec

from hidra_ng.errors import ConfigError, HidraError, ReceiverUnavailable
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.sources._common import Params, Refusals, checkpoint_key, spool

log = logging.getLogger(__name__)

USAGE = (
    "watch:/dir?pattern=*.cbf&stream=NAME&remove=never|after_ack&recursive=1&settle=S"
    "&mode=auto|inotify|poll&poll=S&rescan=S&hidden=0"
)

Ident = tuple[int, int]  # (size, mtime_ns): what a sent version of a file is


class SentFile(msgspec.Struct, array_like=True):
    size: int
    mtime_ns: int


# --------------------------------------------------------------------------
# inotify through ctypes: no dependency, and only the few calls needed here

IN_MODIFY = 0x2
IN_CLOSE_WRITE = 0x8
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_ISDIR = 0x40000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len


class Inotify:
    """Close-write and moved-to events of a set of directories."""

    MASK = IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_ONLYDIR

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._add_watch = libc.inotify_add_watch
        self._add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._add_watch.restype = ctypes.c_int
        fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1 failed: {os.strerror(err)}")
        self.fd = fd
        self.dirs: dict[int, str] = {}  # watch descriptor -> relative directory
        self._poller = select.poll()
        self._poller.register(fd, select.POLLIN)

    def add(self, path: str, rel: str) -> None:
        wd = self._add_watch(self.fd, os.fsencode(path), self.MASK)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot watch {path}: {os.strerror(err)}")
        self.dirs[wd] = rel

    def read(self, timeout: float) -> list[tuple[str | None, int, str]]:
        """Events as (relative dir or None on overflow, mask, name); waits up to ``timeout``."""
        if not self._poller.poll(max(0.0, timeout) * 1000):
            return []
        out: list[tuple[str | None, int, str]] = []
        while True:
            try:
                buf = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                return out
            pos = 0
            while pos + _EVENT.size <= len(buf):
                wd, mask, _cookie, size = _EVENT.unpack_from(buf, pos)
                name = buf[pos + _EVENT.size : pos + _EVENT.size + size].rstrip(b"\0")
                pos += _EVENT.size + size
                if mask & IN_Q_OVERFLOW:
                    out.append((None, mask, ""))
                elif mask & IN_IGNORED:
                    self.dirs.pop(wd, None)
                elif wd in self.dirs:
                    out.append((self.dirs[wd], mask, os.fsdecode(name)))

    def close(self) -> None:
        os.close(self.fd)


# --------------------------------------------------------------------------
# The source


@dataclass
class WatchSource:
    name: str
    directory: str
    pattern: str = "*"
    stream: str = "watch"
    remove: str = "never"
    recursive: bool = True
    settle: float = 1.0
    mode: str = "auto"
    poll: float = 1.0
    rescan: float = 30.0
    hidden: bool = False
    refusals: Refusals = field(init=False)

    def __post_init__(self) -> None:
        self.refusals = Refusals(self.name)
        self.sent_files = 0
        self.removed_files = 0
        self.using_inotify = False
        self.rounds = 0  # turns of the main loop, each ending with the removal check
        self._sent: dict[str, Ident] = {}
        self._waiting: dict[str, float] = {}  # not settled yet: rel -> when to look again
        self._pending: collections.deque[tuple[int, str, Ident]] = collections.deque()
        self._old: list[tuple[str, Ident]] = []  # sent before this run, still to remove
        self._old_boundary: int | None = None  # last seq spooled before this run
        self._too_large: set[tuple[str, Ident]] = set()

    @classmethod
    def from_params(cls, uri: str, target: str, params: dict[str, str]) -> WatchSource:
        known = {"pattern", "stream", "remove", "recursive", "settle", "mode", "poll", "rescan"}
        p = Params(uri, params, known | {"hidden"}, USAGE)
        if not target:
            raise ConfigError(f"source {uri!r} names no directory; expected {USAGE}")
        return cls(
            name=uri,
            directory=os.path.abspath(target),
            pattern=p.text("pattern", "*") or "*",
            stream=p.stream("watch"),
            remove=p.choice("remove", "never", ("never", "after_ack")),
            recursive=p.flag("recursive", True),
            settle=p.number("settle", 1.0),
            mode=p.choice("mode", "auto", ("auto", "inotify", "poll")),
            poll=p.number("poll", 1.0, minimum=0.01),
            rescan=p.number("rescan", 30.0, minimum=0.01),
            hidden=p.flag("hidden", False),
        )

    def checkpoint_name(self, rel: str) -> str:
        return checkpoint_key("watch", self.directory, self.stream, rel)

    # ------------------------------------------------------------------ run

    def run(self, producer: Producer, stop: threading.Event) -> None:
        if not os.path.isdir(self.directory):
            raise ConfigError(f"source {self.name!r}: {self.directory} is not a directory")
        ino = self._open_inotify()
        self.using_inotify = ino is not None
        try:
            self._scan(producer, stop, ino)
            every = self.rescan if ino is not None else self.poll
            next_scan = time.monotonic() + every
            while not stop.is_set():
                now = time.monotonic()
                wait = next_scan - now
                if self._waiting:
                    wait = min(wait, min(self._waiting.values()) - now)
                if self._pending or self._old:
                    wait = min(wait, 0.1)
                wait = max(0.0, min(wait, 0.5))
                if ino is not None:
                    self._events(ino.read(wait), producer, stop, ino)
                elif stop.wait(wait):
                    break
                if time.monotonic() >= next_scan:
                    self._scan(producer, stop, ino)
                    next_scan = time.monotonic() + every
                self._recheck_waiting(producer, stop)
                self._remove_acked(producer)
                self.rounds += 1
        finally:
            if ino is not None:
                ino.close()

    def _open_inotify(self) -> Inotify | None:
        if self.mode == "poll":
            return None
        try:
            return Inotify()
        except (OSError, AttributeError) as err:
            if self.mode == "inotify":
                raise ConfigError(f"source {self.name!r}: inotify is not available: {err}") from err
            log.info("source %s: no inotify (%s); polling every %.1f s", self.name, err, self.poll)
            return None

    def _watch_dir(self, ino: Inotify | None, path: str, rel: str) -> None:
        if ino is None or rel in ino.dirs.values():
            return
        try:
            ino.add(path, rel)
        except OSError as err:
            if err.errno == errno.ENOENT:
                return
            # e.g. ENOSPC: out of watches; the rescans still find every file
            log.warning("source %s: %s; relying on rescans for %s", self.name, err, path)

    def _scan(
        self, producer: Producer, stop: threading.Event, ino: Inotify | None, top: str = ""
    ) -> None:
        """Walk the tree from ``top``: watch each directory, then consider its files.

        Watching a directory before listing it means no file falls in between.
        """
        todo = [(os.path.join(self.directory, top) if top else self.directory, top)]
        while todo and not stop.is_set():
            path, rel = todo.pop()
            self._watch_dir(ino, path, rel)
            try:
                entries = list(os.scandir(path))
            except OSError as err:
                if err.errno != errno.ENOENT:
                    log.warning("source %s: cannot list %s: %s", self.name, path, err)
                continue
            for entry in sorted(entries, key=lambda e: e.name):
                if entry.name.startswith(".") and not self.hidden:
                    continue
                child = f"{rel}/{entry.name}" if rel else entry.name
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    if self.recursive:
                        todo.append((entry.path, child))
                elif fnmatch.fnmatchcase(entry.name, self.pattern):
                    self._consider(producer, stop, child, closed=False)

    def _events(
        self,
        events: list[tuple[str | None, int, str]],
        producer: Producer,
        stop: threading.Event,
        ino: Inotify,
    ) -> None:
        for rel_dir, mask, name in events:
            if rel_dir is None:  # the kernel's queue overflowed: events were lost
                log.warning("source %s: inotify queue overflowed; rescanning", self.name)
                self._scan(producer, stop, ino)
                continue
            if name.startswith(".") and not self.hidden:
                continue
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if mask & IN_ISDIR:
                if self.recursive and mask & (IN_CREATE | IN_MOVED_TO):
                    self._scan(producer, stop, ino, rel)
            elif mask & (IN_CLOSE_WRITE | IN_MOVED_TO) and fnmatch.fnmatchcase(name, self.pattern):
                self._consider(producer, stop, rel, closed=True)

    # ---------------------------------------------------------------- files

    def _was_sent(self, producer: Producer, rel: str, ident: Ident) -> bool:
        known = self._sent.get(rel)
        if known is None:
            raw = producer.checkpoint(self.checkpoint_name(rel))
            if raw is None:
                return False
            saved = msgspec.msgpack.decode(raw, type=SentFile)
            known = self._sent[rel] = (saved.size, saved.mtime_ns)
            if self.remove == "after_ack" and known == ident:
                self._old.append((rel, ident))
        return known == ident

    def _consider(self, producer: Producer, stop: threading.Event, rel: str, closed: bool) -> None:
        """Send ``rel`` if it is a complete file version not sent before."""
        path = os.path.join(self.directory, rel)
        try:
            st = os.stat(path)
        except OSError:
            self._waiting.pop(rel, None)
            return
        if not os.path.isfile(path):
            return
        ident = (st.st_size, st.st_mtime_ns)
        if self._was_sent(producer, rel, ident):
            self._waiting.pop(rel, None)
            return
        if not closed:
            age = time.time() - st.st_mtime
            if age < self.settle:
                self._waiting[rel] = time.monotonic() + self.settle - age
                return
        if st.st_size > producer.max_message_bytes:
            self._refuse_too_large(producer, path, rel, ident)
            return
        data = self._read_whole(path, rel, st.st_size, ident)
        if data is None:
            return
        meta = {
            "filename": os.path.basename(rel),
            "path": rel,
            "size": st.st_size,
            "mtime": st.st_mtime,
        }
        point = (self.checkpoint_name(rel), msgspec.msgpack.encode(SentFile(*ident)))
        try:
            seqs = spool(producer, self.stream, [(data, meta)], stop, point)
        except HidraError as err:
            self.refusals.refuse(type(err).__name__, f"{path}: {err}")
            self._waiting.pop(rel, None)
            return
        if seqs is not None:
            self._sent_as(rel, ident, seqs[0])

    def _refuse_too_large(self, producer: Producer, path: str, rel: str, ident: Ident) -> None:
        if (rel, ident) not in self._too_large:
            self._too_large.add((rel, ident))
            self.refusals.refuse(
                "too_large",
                f"{path} is {ident[0]} bytes; the maximum message is"
                f" {producer.max_message_bytes} bytes",
            )
        self._waiting.pop(rel, None)

    def _read_whole(self, path: str, rel: str, size: int, ident: Ident) -> bytes | None:
        """The file's bytes if it stayed the same while read, else None (checked again later)."""
        try:
            with open(path, "rb") as f:
                data = f.read()
            after = os.stat(path)
        except OSError as err:
            log.warning("source %s: cannot read %s: %s", self.name, path, err)
            self._waiting[rel] = time.monotonic() + max(self.settle, self.poll)
            return None
        if (after.st_size, after.st_mtime_ns) != ident or len(data) != size:
            self._waiting[rel] = time.monotonic() + max(self.settle, 0.05)  # still being written
            return None
        return data

    def _sent_as(self, rel: str, ident: Ident, seq: int) -> None:
        """``rel`` in version ``ident`` is spooled as ``seq``: remembered, removed once acked."""
        self._waiting.pop(rel, None)
        self._sent[rel] = ident
        self.sent_files += 1
        self.refusals.accept()
        log.debug("source %s: sent %s as seq %d", self.name, rel, seq)
        if self._old_boundary is None:
            self._old_boundary = seq - 1
        if self.remove == "after_ack":
            self._pending.append((seq, rel, ident))

    def _recheck_waiting(self, producer: Producer, stop: threading.Event) -> None:
        now = time.monotonic()
        for rel in [r for r, when in self._waiting.items() if when <= now]:
            if stop.is_set():
                return
            self._consider(producer, stop, rel, closed=False)

    # -------------------------------------------------------------- removal

    def _remove_acked(self, producer: Producer) -> None:
        if self.remove != "after_ack":
            return
        acked = producer.acked_seq_of(self.stream)  # seqs count per receiver with shards
        while self._pending and self._pending[0][0] <= acked:
            _, rel, ident = self._pending.popleft()
            self._remove(rel, ident)
        if self._old and self._old_sent_acked(producer, acked):
            old, self._old = self._old, []
            for rel, ident in old:
                self._remove(rel, ident)

    def _old_sent_acked(self, producer: Producer, acked: int) -> bool:
        """Is everything spooled before this run acknowledged?"""
        if self._old_boundary is not None:
            return acked >= self._old_boundary
        try:
            producer.flush(timeout=0)  # nothing sent in this run yet: is all acked now?
        except ReceiverUnavailable:
            return False
        return True

    def _remove(self, rel: str, ident: Ident) -> None:
        path = os.path.join(self.directory, rel)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._sent.pop(rel, None)
            return
        if (st.st_size, st.st_mtime_ns) != ident:
            log.info("source %s: %s changed since it was sent; not removed", self.name, path)
            return
        try:
            os.unlink(path)
        except OSError as err:
            log.warning("source %s: cannot remove %s: %s", self.name, path, err)
            return
        self.removed_files += 1
        self._sent.pop(rel, None)
        log.debug("source %s: removed %s", self.name, rel)
