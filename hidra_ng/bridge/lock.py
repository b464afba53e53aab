"""One bridge per state directory: an exclusive ``flock`` on ``STATE_DIR/bridge.lock``.

The lock file names its holder (pid, host, receiver, broker, start time), so a
second bridge can say who is in the way. The kernel drops the lock when the
holder dies, even by ``kill -9``: a stale file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

from hidra_ng.errors import ConfigError

LOCK_NAME = "bridge.lock"


def holder_text(info: dict) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return (
        f"pid {info.get('pid', '?')} on host {info.get('host', '?')} (started {started},"
        f" receiver {info.get('api', '?')}, broker {info.get('rabbitmq', '?')})"
    )


class StateLock:
    def __init__(self, state_dir: str | os.PathLike[str], **about: str) -> None:
        self.path = Path(state_dir) / LOCK_NAME
        self.about = about
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ConfigError naming the bridge that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as err:
            raise ConfigError(
                f"bridge state directory {self.path.parent} cannot be used: {err.strerror};"
                " expected a writable directory (--state-dir)"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise ConfigError(
                f"another bridge, {holder_text(holder)}, holds {self.path}; one bridge per"
                " receiver: stop that one first"
            ) from None
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        info.update(self.about)
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode() + b"\n", 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # drops the flock; the file stays, naming the last holder
            self._fd = None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
