"""Helpers of the bridge tests (SPEC §13): a bridge in-process or as a process, and
reading a RabbitMQ stream back with rstream and with pika."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hidra_ng.bridge import Bridge
from hidra_ng.config import BridgeConfig
from tests.helpers import wait_for


@dataclass
class Message:
    """One broker message as a reader sees it: properties with str keys, body bytes."""

    props: dict
    body: bytes

    @property
    def index(self) -> int:
        return int(self.props["hidra_index"])

    @property
    def finished(self) -> bool:
        return bool(self.props.get("hidra_finished"))

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.body).hexdigest()


def _text(value):
    return value.decode() if isinstance(value, bytes) else value


def read_rstream(
    uri: str,
    stream: str,
    *,
    until_finished: bool = True,
    timeout: float = 60,
    count: int | None = None,
) -> list[Message]:
    """Every message of broker ``stream`` from the first offset, with rstream's Consumer.

    Stops at the end message (``until_finished``), after ``count`` messages, or when
    nothing arrives for ``timeout`` seconds."""
    from rstream import AMQPMessage, Consumer, ConsumerOffsetSpecification, OffsetType, amqp_decoder

    from hidra_ng.bridge.uri import parse

    address = parse(uri)
    out: list[Message] = []

    async def main() -> None:
        done = asyncio.Event()
        progress = asyncio.Event()

        async def on_message(msg: AMQPMessage, _context) -> None:
            props = {_text(k): _text(v) for k, v in (msg.application_properties or {}).items()}
            body = msg.body if isinstance(msg.body, bytes) else b"".join(msg.body or [])
            out.append(Message(props, body))
            progress.set()
            if (until_finished and props.get("hidra_finished")) or (count and len(out) >= count):
                done.set()

        async with Consumer(
            address.host,
            address.port,
            vhost=address.vhost,
            username=address.username,
            password=address.password,
            frame_max=64 << 20,
        ) as consumer:
            await consumer.start()
            await consumer.subscribe(
                stream,
                on_message,
                decoder=amqp_decoder,
                offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST),
            )
            while not done.is_set():
                progress.clear()
                try:
                    await asyncio.wait_for(progress.wait(), timeout)
                except TimeoutError:
                    break

    asyncio.run(main())
    return out


def read_pika(
    amqp_uri: str, stream: str, *, timeout: float = 60, count: int | None = None
) -> list[Message]:
    """The same with pika: a stream queue consumed from offset 'first' with a prefetch."""
    import pika

    out: list[Message] = []
    connection = pika.BlockingConnection(pika.URLParameters(amqp_uri))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=100)
        for method, properties, body in channel.consume(
            stream, arguments={"x-stream-offset": "first"}, inactivity_timeout=timeout
        ):
            if method is None:
                break
            headers = {k: _text(v) for k, v in (properties.headers or {}).items()}
            out.append(Message(headers, body))
            channel.basic_ack(method.delivery_tag)
            if headers.get("hidra_finished") or (count and len(out) >= count):
                break
        channel.cancel()
    finally:
        connection.close()
    return out


@dataclass
class InProcessBridge:
    """A Bridge in this process, started and stopped like the daemon (no signals)."""

    config: BridgeConfig
    bridge: Bridge = field(init=False)

    def __post_init__(self) -> None:
        self.bridge = Bridge(self.config)

    def __enter__(self) -> Bridge:
        self.bridge.start()
        return self.bridge

    def __exit__(self, *exc) -> None:
        self.bridge.stop()


def bridge_config(api: str, uri: str, state_dir: Path, **options) -> BridgeConfig:
    options.setdefault("metrics_port", 0)
    options.setdefault("poll_seconds", 0.2)
    return BridgeConfig(api=api, rabbitmq=uri, state_dir=str(state_dir), **options)


class BridgeProcess:
    """``hidra-ng bridge`` as a child process (for kill -9 and exit codes)."""

    def __init__(
        self,
        api: str,
        uri: str,
        state_dir: Path,
        *extra: str,
        metrics: bool = True,
        name: str = "bridge",
    ) -> None:
        self._metrics_port: int | None = None if metrics else 0  # read from the ready file
        self.state_dir = Path(state_dir)
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}-{name}.log"
        self.ready_path = self.state_dir.parent / f"{self.state_dir.name}-{name}-ready.json"
        self.argv = [
            sys.executable,
            "-m",
            "hidra_ng",
            "bridge",
            "--api",
            api,
            "--rabbitmq",
            uri,
            "--state-dir",
            str(state_dir),
            "--metrics-port",
            "-1" if metrics else "0",  # -1: any free port, read back from the ready file
            "--ready-file",
            str(self.ready_path),
            *extra,
        ]
        self.proc: subprocess.Popen | None = None

    @property
    def metrics_port(self) -> int:
        """The port of the bridge's /metrics (0: off), from its ready file once written."""
        if self._metrics_port is None:

            def written() -> bool:
                assert self.proc is not None, "the bridge was not started"
                assert self.proc.poll() is None, f"the bridge exited: {self.read_log()[-3000:]}"
                return self.ready_path.exists()

            wait_for(written, timeout=60, what=f"the bridge's {self.ready_path.name}")
            self._metrics_port = json.loads(self.ready_path.read_text())["metrics_port"]
        return self._metrics_port

    def start(self) -> BridgeProcess:
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        self.ready_path.unlink(missing_ok=True)
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("HIDRA_NG_", "NOTIFY_SOCKET", "WATCHDOG_"))
        }
        env["HIDRA_NG_BRIDGE_POLL_SECONDS"] = "0.2"
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.argv, stdout=log, stderr=log, env=env)
        return self

    def read_log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def terminate(self, timeout: float = 60) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(timeout)


def lock_holder(state_dir: Path) -> dict:
    return json.loads((Path(state_dir) / "bridge.lock").read_text())
