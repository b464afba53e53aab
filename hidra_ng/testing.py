"""Run a receiver or sender as a separate local process: for the demo, tests and perf."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from hidra_ng.client.consumer import Consumer
from hidra_ng.errors import ReceiverUnavailable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ReceiverProcess:
    """A ``hidra-ng receiver`` child process on loopback ports of its own."""

    def __init__(self, data_dir: Path, *extra: str, log_path: Path | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.ports = {name: free_port() for name in ("ingest", "api", "publish")}
        self.ingest = f"tcp://127.0.0.1:{self.ports['ingest']}"
        self.api = f"tcp://127.0.0.1:{self.ports['api']}"
        self.publish = f"tcp://127.0.0.1:{self.ports['publish']}"
        self.extra = list(extra)
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}-receiver.log"
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "hidra_ng", "receiver",
            "--data-dir", str(self.data_dir),
            "--ingest", self.ingest, "--api", self.api, "--publish", self.publish,
            "--metrics-port", "0", *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> ReceiverProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        # not the parent's systemd context: the child is no service of its own
        systemd_vars = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY")
        env = {k: v for k, v in os.environ.items() if k not in systemd_vars}
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env)
        log.close()
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with Consumer(self.api) as c:
            while True:
                if self.proc is not None and self.proc.poll() is not None:
                    raise RuntimeError(
                        f"receiver exited with {self.proc.returncode}; log:\n{self.read_log()}"
                    )
                try:
                    c.ping(timeout=0.5)
                    return
                except ReceiverUnavailable:
                    if time.monotonic() > deadline:
                        raise

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def kill(self) -> None:
        """kill -9, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def __enter__(self) -> ReceiverProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(10)
