"""The servers ``make perf-peers`` starts, and the CPU meter that reads them.

* :func:`require_debian`: Debian's ``rabbitmq-server`` and ``nats-server``, installed by
  scripts/debian-packages as root; without root it says how and exits 2.
* :class:`NatsServer`: a private ``nats-server`` with JetStream on loopback (a port
  the server picks and reports in its ports file), file storage in its own dir.
* RabbitMQ: scripts/rabbitmq_node.py's ``RabbitNode`` (private node, stream plugin,
  ``stream.frame_max`` 64 MiB), used as it is.
* :class:`CpuMeter`: CPU seconds of this process (the client libraries) and of
  server process trees over a timed part.

Everything started here is stopped by pid, also on Ctrl-C or an exception.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import psutil
from harness import REPO_DIR
from peer_stats import process_tree_cpu_seconds

DEBIAN_SCRIPT = REPO_DIR / "scripts" / "debian-packages"
NATS_PACKAGE = "nats-server"
START_TIMEOUT_SECONDS = 60.0
NATS_MAX_PAYLOAD = 8 << 20  # 4 MiB frames plus headers; the default is 1 MiB
NATS_MAX_PENDING = 512 << 20  # bytes queued for one client; the default is 64 MiB


class SetupError(RuntimeError):
    """A server could not be installed or started; the message says what to do."""


def require_debian(packages: Sequence[str], programs: Sequence[str]) -> None:
    """Install the ``packages`` providing ``programs`` when one is missing.

    As root through scripts/debian-packages; otherwise print the command to run and
    exit 2 (the user must act), as the tests' tests/debian.py skips.
    """
    present = [Path(p).exists() if "/" in p else shutil.which(p) is not None for p in programs]
    if all(present):
        return
    how = f"sudo apt-get install {' '.join(packages)}"
    if os.geteuid() != 0:
        print(
            f"perf-peers needs the Debian packages {', '.join(packages)}; install them with: {how}",
            file=sys.stderr,
        )
        raise SystemExit(2)
    done = subprocess.run([str(DEBIAN_SCRIPT), *packages], text=True, capture_output=True)
    if done.returncode != 0:
        raise SetupError(
            f"{DEBIAN_SCRIPT} {' '.join(packages)} failed with exit {done.returncode}:"
            f" {done.stderr.strip()[-1000:]}"
        )


EATMYDATA_PACKAGE = "eatmydata"  # and its dependency libeatmydata1, the library


def eatmydata_library() -> str:
    """The path of libeatmydata.so.1 (Debian's libeatmydata1), for LD_PRELOAD."""
    found = sorted(glob.glob("/usr/lib/*/libeatmydata.so.1"))
    if not found:
        raise SetupError(
            "libeatmydata.so.1 is not installed; install it with: sudo apt-get install eatmydata"
        )
    return found[0]


def debian_version(package: str) -> str:
    done = subprocess.run(
        ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True
    )
    return done.stdout.strip() if done.returncode == 0 else "not from a Debian package"


# ------------------------------------------------------------------------ NATS


def nats_version(binary: str) -> tuple[int, ...]:
    """(2, 9, 10) for ``nats-server: v2.9.10``."""
    out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=30)
    found = re.search(r"v(\d+)\.(\d+)\.(\d+)", out.stdout + out.stderr)
    if not found:
        raise SetupError(f"{binary} --version printed no version: {out.stdout!r}")
    return tuple(int(part) for part in found.groups())


def supports_sync_always(version: tuple[int, ...]) -> bool:
    """``jetstream { sync_interval: always }`` exists from nats-server 2.10.0 on.

    2.9.x hard-codes a 2 minute fsync interval for stream files and rejects the
    field ("unknown field"); 2.10.0 made the interval configurable and added
    "always" (fsync after every write, before the publish is acknowledged).
    """
    return version >= (2, 10, 0)


class NatsServer:
    """A private nats-server with JetStream (file storage under ``base_dir``) on loopback."""

    def __init__(self, base_dir: Path, binary: str = "nats-server", sync_always: bool = False):
        self.base_dir = Path(base_dir)
        self.binary = binary
        self.sync_always = sync_always
        self.proc: subprocess.Popen | None = None
        self.url = ""

    def config(self) -> str:
        store = self.base_dir / "jetstream"
        sync = "  sync_interval: always\n" if self.sync_always else ""
        return (
            "host: 127.0.0.1\n"
            "port: -1\n"  # the server picks a free port and writes it to the ports file
            f"ports_file_dir: {json.dumps(str(self.base_dir))}\n"
            f"max_payload: {NATS_MAX_PAYLOAD}\n"
            # a client that reads slowly on a loaded machine is otherwise cut off as a
            # "slow consumer" (64 MiB pending, 2-10 s write deadline) and its pull
            # consumer's messages are dropped: the read-back waits for them forever
            f"max_pending: {NATS_MAX_PENDING}\n"
            'write_deadline: "60s"\n'
            f"jetstream {{\n  store_dir: {json.dumps(str(store))}\n{sync}}}\n"
        )

    def start(self) -> NatsServer:
        self.base_dir.mkdir(parents=True, exist_ok=True)
        conf = self.base_dir / "nats.conf"
        conf.write_text(self.config())
        log = (self.base_dir / "server.log").open("ab")
        try:
            self.proc = subprocess.Popen(
                [self.binary, "--config", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, not it
            )
        finally:
            log.close()
        self.url = self._wait_for_port()
        return self

    def _wait_for_port(self) -> str:
        assert self.proc is not None
        ports_file = self.base_dir / f"{Path(self.binary).name}_{self.proc.pid}.ports"
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SetupError(
                    f"nats-server exited with {self.proc.returncode} before it was ready:"
                    f" {self.log()}"
                )
            with contextlib.suppress(OSError, ValueError, KeyError, IndexError):
                return json.loads(ports_file.read_text())["nats"][0]
            time.sleep(0.05)
        raise SetupError(f"nats-server wrote no ports file within {START_TIMEOUT_SECONDS:.0f} s")

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.base_dir / "server.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ------------------------------------------------------------------------- CPU


class CpuMeter:
    """CPU seconds of this process and of the server processes (with children) since start.

    ``server_pids`` are the roots of the servers' process trees (rabbitmq-server's
    shell wrapper has beam.smp below it); the tree is walked at each reading.
    """

    def __init__(self, server_pids: Sequence[int]) -> None:
        self._roots = [psutil.Process(pid) for pid in server_pids]
        self._client0 = time.process_time()
        self._server0 = self.server_seconds()

    def server_seconds(self) -> float:
        times = []
        for root in self._roots:
            for proc in [root, *root.children(recursive=True)]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    times.append(proc.cpu_times())
        return process_tree_cpu_seconds(times)

    def read(self) -> tuple[float, float]:
        """(client, server) CPU seconds since the meter was made."""
        return time.process_time() - self._client0, self.server_seconds() - self._server0


# ------------------------------------------------------------------ async clients
class AsyncClientLoop:
    """One asyncio loop that runs an async client's calls with a timeout, for the
    synchronous workload code; ``close`` closes the client (``_close_client``), then the loop."""

    TIMEOUT = 600.0

    def __init__(self) -> None:
        self._loop = asyncio.Runner()

    def _run(self, coro, timeout: float = TIMEOUT):
        return self._loop.run(asyncio.wait_for(coro, timeout))

    def _close_client(self):
        raise NotImplementedError

    def close(self) -> None:
        try:
            self._run(self._close_client(), 30)
        finally:
            self._loop.close()
