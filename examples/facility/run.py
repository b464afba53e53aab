"""The facility bridge end to end: detector -> hidra_ng -> RabbitMQ streams -> a consumer.

    python examples/facility/run.py [--frames 200] [--keep]

Starts, on loopback ports and in a temporary directory:

1. a private RabbitMQ node (Debian's rabbitmq-server, stream plugin) with
   ``scripts/rabbitmq_node.py``;
2. a receiver (``hidra-ng receiver``);
3. a sender daemon with a simulated detector (``simulate:`` source, 256x256
   uint16 frames at 200 Hz) writing ``p11/scan_0001``;
4. the bridge (``hidra-ng bridge --streams 'p11/**'``);

then reads every frame back *through the broker* with rstream, as a facility
service would, checks each one against the receiver, prints a summary, and
stops everything (by pid). README.md next to this file describes the messages.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from rstream import AMQPMessage, Consumer, ConsumerOffsetSpecification, OffsetType, amqp_decoder
from rstream.exceptions import StreamDoesNotExist

import hidra_ng

ROOT = Path(__file__).resolve().parents[2]
NODE = ROOT / "scripts" / "rabbitmq_node.py"
STREAM = "p11/scan_0001"
BROKER_STREAM = "hidra.p11.scan_0001"  # hidra_ng.bridge.broker_name(STREAM)


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 30.0) -> dict:
    """The JSON a daemon's ``--ready-file`` PATH holds, once written (renamed into place)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{proc.args[3]} wrote no {path.name}; see daemons.log")
        time.sleep(0.05)
    return json.loads(path.read_text())


def hidra_ng_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "hidra_ng", *args]


def read_through_broker(uri: str, stream: str, timeout: float = 60.0) -> list[tuple[dict, bytes]]:
    """Every message of the broker stream from its first offset, until the end message."""
    rest = uri.split("://", 1)[1]
    credentials, address = rest.split("@", 1)
    user, password = credentials.split(":", 1)
    host, port = address.split("/", 1)[0].rsplit(":", 1)
    messages: list[tuple[dict, bytes]] = []

    async def main() -> None:
        finished = asyncio.Event()

        async def on_message(msg: AMQPMessage, _context) -> None:
            props = {
                k.decode(): v.decode() if isinstance(v, bytes) else v
                for k, v in msg.application_properties.items()
            }
            messages.append((props, bytes(msg.body or b"")))
            if props["hidra_finished"]:
                finished.set()

        async with Consumer(
            host, int(port), username=user, password=password, frame_max=64 << 20
        ) as consumer:
            deadline = time.monotonic() + timeout
            while True:  # the bridge creates the stream when it sees the first frame
                try:
                    await consumer.subscribe(
                        stream,
                        on_message,
                        decoder=amqp_decoder,
                        offset_specification=ConsumerOffsetSpecification(OffsetType.FIRST),
                    )
                    break
                except StreamDoesNotExist:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
            await asyncio.wait_for(finished.wait(), timeout)

    asyncio.run(main())
    return messages


def stop(proc: subprocess.Popen | None, name: str) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(60)
        print(f"  {name} stopped (exit {code})")
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        print(f"  {name} killed: it did not stop within 60 s")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=200, help="frames the detector sends")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()
    if not Path("/usr/lib/rabbitmq/bin/rabbitmq-server").exists():
        print(
            "rabbitmq-server is not installed; install it with:"
            f" sudo {ROOT / 'scripts' / 'debian-packages'} rabbitmq-server",
            file=sys.stderr,
        )
        return 2

    work = Path(tempfile.mkdtemp(prefix="hidra-facility-"))
    procs: dict[str, subprocess.Popen] = {}
    broker_started = False
    t0 = time.monotonic()
    try:
        print(f"working in {work}")
        out = subprocess.run(
            [sys.executable, str(NODE), "start", str(work / "rabbitmq")],
            capture_output=True,
            text=True,
            check=True,
        )
        broker_started = True
        node = json.loads(out.stdout)
        uri = node["stream_uri"]
        print(f"1. RabbitMQ node up: {uri} (AMQP {node['amqp_uri']})")

        log = (work / "daemons.log").open("ab")
        any_port = "tcp://127.0.0.1:*"  # the receiver tells the ports it got in its ready file
        procs["receiver"] = subprocess.Popen(
            hidra_ng_cmd(
                "receiver",
                "--data-dir",
                str(work / "store"),
                "--ingest",
                any_port,
                "--api",
                any_port,
                "--publish",
                any_port,
                "--metrics-port",
                "0",
                "--ready-file",
                str(work / "receiver-ready.json"),
            ),
            stdout=log,
            stderr=log,
        )
        ep = wait_for_file(work / "receiver-ready.json", procs["receiver"])
        with hidra_ng.Consumer(ep["api"]) as c:
            c.ping(timeout=30)
        print(f"2. receiver up: api {ep['api']}")

        source = (
            f"simulate:?shape=256x256&dtype=uint16&rate=200&count={args.frames}&stream={STREAM}"
        )
        procs["sender"] = subprocess.Popen(
            hidra_ng_cmd(
                "sender",
                "--ingest",
                ep["ingest"],
                "--api",
                ep["api"],
                "--spool-dir",
                str(work / "spool"),
                "--sender-id",
                "eiger-p11",
                "--source",
                source,
                "--metrics-port",
                "0",
                "--exit-when-done",
            ),
            stdout=log,
            stderr=log,
        )
        print(f"3. sender up: {source}")

        procs["bridge"] = subprocess.Popen(
            hidra_ng_cmd(
                "bridge",
                "--api",
                ep["api"],
                "--rabbitmq",
                uri,
                "--streams",
                "p11/**",
                "--state-dir",
                str(work / "bridge"),
                "--metrics-port",
                "0",
            ),
            stdout=log,
            stderr=log,
        )
        print(f"4. bridge up: p11/** -> {BROKER_STREAM}")

        if procs["sender"].wait(300) != 0:
            print("the sender failed; see daemons.log", file=sys.stderr)
            return 1
        with hidra_ng.Producer(ep["ingest"], ep["api"], work / "spool-end", "run-control") as p:
            p.finish(STREAM)  # the scan is over: the bridge ends the broker stream too
            p.flush(timeout=60)

        messages = read_through_broker(uri, BROKER_STREAM)
        frames = [(props, body) for props, body in messages if not props["hidra_finished"]]
        with hidra_ng.Consumer(ep["api"]) as c:
            for props, body in frames:
                stored = c.get(STREAM, props["hidra_index"])
                shape = tuple(json.loads(props["shape"]))
                image = np.frombuffer(body, dtype=props["dtype"]).reshape(shape)
                assert np.array_equal(image, stored.data), props["hidra_index"]
        indices = [props["hidra_index"] for props, _ in frames]
        assert indices == list(range(args.frames)), "not every frame exactly once"
        first = frames[0][0]
        print(
            f"\nread back through the broker with rstream: {len(frames)} frames"
            f" (indices {indices[0]}..{indices[-1]}, each equal to the receiver's),"
            f" then the end message (hidra_finished, hidra_index {messages[-1][0]['hidra_index']})"
        )
        print(
            f"{sum(len(b) for _, b in frames) / 1e6:.1f} MB of payload in {BROKER_STREAM};"
            f" {time.monotonic() - t0:.1f} s in all"
        )
        print("first message's properties:")
        for key, value in first.items():
            print(f"  {key:15} {value!r}")
        return 0
    finally:
        print("\nstopping")
        stop(procs.get("bridge"), "bridge")
        stop(procs.get("sender"), "sender")
        stop(procs.get("receiver"), "receiver")
        if broker_started:
            subprocess.run([sys.executable, str(NODE), "stop", str(work / "rabbitmq")], check=False)
            print("  RabbitMQ node stopped")
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
