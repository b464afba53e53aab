"""A private RabbitMQ node on loopback, for the tests, the examples and ``make perf-peers``.

Debian's ``rabbitmq-server`` (3.10 on Debian 12, with the stream plugin) is started
without systemd, as the calling user, with every directory of its own under
``base_dir`` (data, logs, config, Erlang cookie) and its own ports, so it never
touches a system broker and several can run side by side:

    node = RabbitNode(tmp_path / "rabbitmq")
    node.start()                       # waits until the stream and AMQP ports answer
    node.stream_uri                    # rabbitmq-stream://guest:guest@127.0.0.1:PORT/%2F
    node.amqp_uri                      # amqp://guest:guest@127.0.0.1:PORT/%2F
    node.kill()                        # kill -9 of the broker (for fault tests)
    node.start()                       # the same node again: same data, same ports
    node.stop()                        # the broker and its epmd, by pid

As a command (for scripts and examples):
``python scripts/rabbitmq_node.py start DIR`` prints one JSON line with the
URIs and pids and leaves the node running; ``python scripts/rabbitmq_node.py stop DIR``
stops it. ``scripts/debian-packages rabbitmq-server`` installs the package.

Ports are chosen free on 127.0.0.1 before the start (a broker cannot report the
ports it bound); a start that fails because one was taken in between is retried
with new ports.
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
from dataclasses import asdict, dataclass
from pathlib import Path

SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
PACKAGE = "rabbitmq-server"
# Largest frame of the stream protocol the node accepts; clients must use the same
# or a smaller frame_max. 8 MiB frames plus headers fit with room for batches.
STREAM_FRAME_MAX = 64 << 20
START_TIMEOUT_SECONDS = 120.0


@dataclass
class Ports:
    amqp: int
    stream: int
    dist: int
    epmd: int


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RabbitNodeError(RuntimeError):
    pass


class RabbitNode:
    def __init__(self, base_dir: Path | str, name: str = "hidra-test") -> None:
        self.base_dir = Path(base_dir).resolve()
        self.name = name
        self.ports: Ports | None = None
        self.server: subprocess.Popen | None = None
        self._state_file = self.base_dir / "node.json"

    # --- addresses -----------------------------------------------------------------
    @property
    def stream_port(self) -> int:
        return self._ports().stream

    @property
    def amqp_port(self) -> int:
        return self._ports().amqp

    @property
    def stream_uri(self) -> str:
        return f"rabbitmq-stream://guest:guest@127.0.0.1:{self.stream_port}/%2F"

    @property
    def amqp_uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.amqp_port}/%2F"

    def _ports(self) -> Ports:
        if self.ports is None:
            raise RabbitNodeError("the RabbitMQ node was never started")
        return self.ports

    # --- lifecycle -----------------------------------------------------------------
    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start the node (again, with the same data and ports, after ``kill``)."""
        if not SERVER.exists():
            raise RabbitNodeError(
                f"{SERVER} is missing; install it with: sudo apt-get install {PACKAGE}"
            )
        attempts = 1 if self.ports else 3
        for attempt in range(attempts):
            if self.ports is None or attempt:
                self.ports = Ports(*_free_ports(4))
            self._write_files()
            self._spawn()
            try:
                self._wait_ready(timeout)
                self._save_state()
                return
            except RabbitNodeError:
                self.stop()
                if attempt == attempts - 1:
                    raise

    def _write_files(self) -> None:
        ports = self._ports()
        for sub in ("mnesia", "log", "home"):
            (self.base_dir / sub).mkdir(parents=True, exist_ok=True)
        (self.base_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{ports.amqp}\n"
            f"stream.listeners.tcp.1 = 127.0.0.1:{ports.stream}\n"
            "stream.advertised_host = 127.0.0.1\n"
            f"stream.advertised_port = {ports.stream}\n"
            f"stream.frame_max = {STREAM_FRAME_MAX}\n"
            "loopback_users.guest = false\n"
            # a disk alarm would block publishers on a nearly full test disk
            "disk_free_limit.absolute = 50MB\n"
        )
        (self.base_dir / "enabled_plugins").write_text("[rabbitmq_stream].\n")
        (self.base_dir / "rabbitmq-env.conf").write_text("")

    def _environment(self) -> dict[str, str]:
        ports = self._ports()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        env.update(
            HOME=str(self.base_dir / "home"),  # the Erlang cookie lives here
            RABBITMQ_CONF_ENV_FILE=str(self.base_dir / "rabbitmq-env.conf"),
            RABBITMQ_CONFIG_FILE=str(self.base_dir / "rabbitmq.conf"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.base_dir / "advanced.config"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.base_dir / "enabled_plugins"),
            RABBITMQ_MNESIA_BASE=str(self.base_dir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.base_dir / "log"),
            RABBITMQ_PID_FILE=str(self.base_dir / "rabbitmq.pid"),
            RABBITMQ_NODENAME=f"{self.name}-{ports.amqp}@localhost",
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_DIST_PORT=str(ports.dist),
            ERL_EPMD_PORT=str(ports.epmd),
            ERL_EPMD_ADDRESS="127.0.0.1",
        )
        return env

    def _spawn(self) -> None:
        log = open(self.base_dir / "server.out", "ab")  # noqa: SIM115 (kept by the child)
        try:
            self.server = subprocess.Popen(
                [str(SERVER)],
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one
            )
        finally:
            log.close()

    def _wait_ready(self, timeout: float) -> None:
        ports = self._ports()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.server is not None and self.server.poll() is not None:
                raise RabbitNodeError(
                    f"rabbitmq-server exited with {self.server.returncode} before it was "
                    f"ready; see {self.base_dir / 'server.out'} and {self.base_dir / 'log'}"
                )
            if _answers(ports.stream) and _answers(ports.amqp):
                return
            time.sleep(0.2)
        raise RabbitNodeError(
            f"RabbitMQ's stream port {ports.stream} did not answer within {timeout:.0f} s; "
            f"see {self.base_dir / 'server.out'}"
        )

    def _save_state(self) -> None:
        state = {
            "ports": asdict(self._ports()),
            "server_pid": self.server.pid if self.server else None,
            "epmd_pids": self._epmd_pids(),
            "stream_uri": self.stream_uri,
            "amqp_uri": self.amqp_uri,
        }
        self._state_file.write_text(json.dumps(state))

    def _epmd_pids(self) -> list[int]:
        """The epmd daemons started for this node: they run detached, found by their port."""
        wanted = f"ERL_EPMD_PORT={self._ports().epmd}".encode()
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                if b"epmd" not in (entry / "cmdline").read_bytes():
                    continue
                if wanted in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
        return found

    def kill(self) -> None:
        """kill -9 of the broker (not of epmd): a crash, for fault tests."""
        if self.server is not None:
            _kill_group(self.server.pid, signal.SIGKILL)
            self.server.wait(timeout=30)
            self.server = None
            deadline = time.monotonic() + 30
            while _answers(self.stream_port) and time.monotonic() < deadline:
                time.sleep(0.1)

    def stop(self) -> None:
        """Stop the broker and its epmd, by pid; wait until they are gone."""
        epmd = self._epmd_pids() if self.ports else []
        if self.server is not None:
            _kill_group(self.server.pid, signal.SIGTERM)
            try:
                self.server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                _kill_group(self.server.pid, signal.SIGKILL)
                self.server.wait(timeout=30)
            self.server = None
        for pid in epmd:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def __enter__(self) -> RabbitNode:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _kill_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def _stop_from_state(base_dir: Path) -> None:
    state = json.loads((base_dir / "node.json").read_text())
    for pid in [state["server_pid"]]:
        if pid:
            _kill_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while state["server_pid"] and time.monotonic() < deadline:
        try:
            os.kill(state["server_pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        if state["server_pid"]:
            _kill_group(state["server_pid"], signal.SIGKILL)
    for pid in state["epmd_pids"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("start", "stop"):
        print("usage: rabbitmq_node.py start|stop DIR", file=sys.stderr)
        return 2
    base_dir = Path(argv[1]).resolve()
    if argv[0] == "stop":
        _stop_from_state(base_dir)
        return 0
    node = RabbitNode(base_dir)
    try:
        node.start()
    except RabbitNodeError as err:
        print(err, file=sys.stderr)
        return 1
    print((base_dir / "node.json").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
