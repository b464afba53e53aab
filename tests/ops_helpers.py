"""Helpers of the operations tests: a NOTIFY_SOCKET listener, a sender daemon process,
and a /metrics scraper. Imported as ``from tests.ops_helpers import ...``."""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families


class NotifySocket:
    """The systemd end of NOTIFY_SOCKET: a bound unix datagram socket, read by a thread.

    ``address`` is a path or ``@name`` (abstract namespace). The kernel queues only
    a few datagrams (net.unix.max_dgram_qlen), so the socket is read all the time,
    as systemd does; each message is kept with its arrival time.
    """

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.settimeout(0.05)
        self.received: list[tuple[float, dict[str, str]]] = []
        self._lock = threading.Lock()  # held from recv() to append: no message in between
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-listener", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closing.is_set():
            with self._lock:
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    continue
                except OSError:
                    return
                fields = dict(line.split("=", 1) for line in data.decode().splitlines())
                self.received.append((time.monotonic(), fields))

    def messages(self) -> list[dict[str, str]]:
        """Everything received so far, after reading what is already queued."""
        deadline = time.monotonic() + 5.0
        while True:
            with self._lock:
                queued, _, _ = select.select([self.sock], [], [], 0)
                if not queued or time.monotonic() > deadline:
                    return [fields for _, fields in self.received]
            time.sleep(0.01)

    def times_of(self, key: str) -> list[float]:
        """Arrival times of the messages that carry ``key``."""
        self.messages()
        return [t for t, fields in list(self.received) if key in fields]

    def close(self) -> None:
        self._closing.set()
        self._reader.join()
        self.sock.close()

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without anything of systemd or hidra-ng, plus ``extra``."""
    drop = ("HIDRA_NG_", "NOTIFY_SOCKET", "WATCHDOG_", "STATE_DIRECTORY")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra)
    return env


class DaemonProcess:
    """``python -m hidra_ng ARGS`` as a child process, its output in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self.env = clean_env() if env is None else env
        self.proc: subprocess.Popen | None = None

    def start(self) -> DaemonProcess:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "hidra_ng", *self.args],
                stdout=log,
                stderr=log,
                env=self.env,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-5000:]
        except OSError:
            return ""

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait for the exit code."""
        if self.running():
            self.signal(signal.SIGTERM)
        return self.wait(timeout)

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait()

    def ready(self, path: Path, timeout: float = 30.0) -> dict:
        """The JSON of the daemon's ``--ready-file`` PATH, once written (renamed into place)."""
        from tests.helpers import wait_for

        def written() -> bool:
            assert self.running(), f"the daemon exited: {self.read_log()}"
            return path.exists()

        wait_for(written, timeout=timeout, what=f"{path.name} of {self.args[0]}")
        return json.loads(path.read_text())

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def sender_args(
    ingest: str,
    api: str,
    spool_dir: Path,
    sources: list[str],
    *,
    sender_id: str = "ops-test",
    metrics_port: int = 0,
    extra: tuple[str, ...] = (),
) -> list[str]:
    args = [
        "sender",
        "--ingest",
        ingest,
        "--api",
        api,
        "--spool-dir",
        str(spool_dir),
        "--sender-id",
        sender_id,
        "--metrics-port",
        str(metrics_port),
    ]
    for uri in sources:
        args += ["--source", uri]
    return args + list(extra)


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``/metrics`` of a daemon: (sample name, sorted labels) -> value."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        text = reply.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def try_scrape(port: int) -> dict | None:
    """Like :func:`scrape`, None while the server does not answer."""
    try:
        return scrape(port)
    except OSError:
        return None
