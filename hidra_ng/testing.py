"""Helpers a user's own tests can use: a receiver as a separate local process on loopback.

For the demo, the tests and perf: the receiver binds ``tcp://127.0.0.1:*`` and
reports the ports it got through ``--ready-file`` (no guessed "free" port). A test
whose clients need an address before the receiver runs holds one with
:func:`reserve_port` (``ReceiverProcess(..., choose_ports=True)`` does).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from hidra_ng.client.consumer import Consumer
from hidra_ng.errors import ReceiverUnavailable


class ReservedPort:
    """A loopback TCP port held for a daemon that binds it later; nothing listens on it.

    The socket is bound with SO_REUSEADDR and never listens, so on Linux:

    * a daemon binding the same address later gets it (ZeroMQ and Python's HTTP
      servers set SO_REUSEADDR too), while the reservation is still held;
    * meanwhile the kernel gives the port to no ``bind(..., 0)`` and to no outgoing
      connection (a client connecting early is refused, never connected to itself);
    * a client connecting before the daemon listens is refused, as with no daemon.

    Release it once the daemon listens (a listening socket keeps the port its own) or
    at the end; it is a context manager.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port: int = self._sock.getsockname()[1]

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.host}:{self.port}"

    def release(self) -> None:
        self._sock.close()

    def __enter__(self) -> ReservedPort:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def reserve_port(host: str = "127.0.0.1") -> ReservedPort:
    """A port of ``host`` held for a daemon that binds it later (see :class:`ReservedPort`)."""
    return ReservedPort(host)


class ReceiverProcess:
    """A ``hidra-ng receiver`` child process on loopback ports of its own."""

    def __init__(
        self,
        data_dir: Path,
        *extra: str,
        log_path: Path | None = None,
        choose_ports: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Binds ``tcp://127.0.0.1:*`` and reads the ports back from ``--ready-file``.

        ``choose_ports=True``: reserve ports now (:func:`reserve_port`, held until the
        receiver listens on them), for a test whose clients need the endpoints before
        the receiver runs. Once started, a restart binds the same ports again.
        ``--metrics-port -1`` among ``extra``: :attr:`metrics_port` is the port it got.
        ``env``: variables added to the child's environment.
        """
        self.data_dir = Path(data_dir)
        names = ("ingest", "api", "publish")
        self._reserved = [reserve_port() for _ in names] if choose_ports else []
        if self._reserved:
            self._endpoints = {n: r.endpoint for n, r in zip(names, self._reserved, strict=True)}
        else:
            self._endpoints = dict.fromkeys(names, "tcp://127.0.0.1:*")
        self.metrics_port = 0  # from the ready file: 0 while off (the default here)
        self.extra = list(extra)
        self.log_path = log_path or self.data_dir.parent / f"{self.data_dir.name}-receiver.log"
        self.ready_path = self.data_dir.parent / f"{self.data_dir.name}-ready.json"
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [
            sys.executable, "-m", "hidra_ng", "receiver",
            "--data-dir", str(self.data_dir),
            "--ingest", self._endpoints["ingest"], "--api", self._endpoints["api"],
            "--publish", self._endpoints["publish"],
            "--metrics-port", "0", "--ready-file", str(self.ready_path), *self.extra,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> ReceiverProcess:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self.ready_path.unlink(missing_ok=True)
        log = self.log_path.open("ab")
        # not the parent's systemd context: the child is no service of its own
        systemd_vars = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "STATE_DIRECTORY")
        env = {k: v for k, v in os.environ.items() if k not in systemd_vars} | self.env
        self.proc = subprocess.Popen(self.command(), stdout=log, stderr=log, env=env)
        log.close()
        deadline = time.monotonic() + timeout
        self._read_endpoints(deadline)
        self.release_reservations()  # the receiver listens on them now
        self.wait_ready(max(0.0, deadline - time.monotonic()))
        return self

    def release_reservations(self) -> None:
        """Close the reserved ports of ``choose_ports=True`` (once the receiver listens)."""
        for reserved in self._reserved:
            reserved.release()
        self._reserved = []

    def _read_endpoints(self, deadline: float) -> None:
        """The endpoints the child bound, from its ready file (written once bound)."""
        while not self.ready_path.exists():
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(
                    f"receiver exited with {self.proc.returncode}; log:\n{self.read_log()}"
                )
            if time.monotonic() > deadline:
                raise ReceiverUnavailable(
                    f"receiver wrote no {self.ready_path} in time; log:\n{self.read_log()}"
                )
            time.sleep(0.02)
        bound = json.loads(self.ready_path.read_text())
        self._endpoints = {name: bound[name] for name in ("ingest", "api", "publish")}
        self.metrics_port = bound["metrics_port"]

    @property
    def ingest(self) -> str:
        return self._endpoint("ingest")

    @property
    def api(self) -> str:
        return self._endpoint("api")

    @property
    def publish(self) -> str:
        return self._endpoint("publish")

    def _endpoint(self, name: str) -> str:
        endpoint = self._endpoints[name]
        if endpoint.endswith(":*"):
            raise RuntimeError(
                f"the receiver's {name} port is known once it started; use"
                " ReceiverProcess(..., choose_ports=True) to know it before"
            )
        return endpoint

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
        self.release_reservations()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        self.release_reservations()
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
        self.release_reservations()
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.terminate(10)
