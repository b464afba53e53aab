"""Hostile input on every receiver socket: the daemon refuses it, counts it, and goes on.

Every message sent here is built to be invalid, so the receiver must refuse
each one exactly once (``hidra_ng_receiver_rejected_total``), store nothing
from it, stay alive with bounded memory, and keep serving valid traffic.
"""

from __future__ import annotations

import contextlib
import random
import urllib.request
from collections.abc import Iterator

import msgspec
import numpy as np
import psutil
import pytest
import zmq
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from hidra_ng import Consumer, Producer
from hidra_ng.errors import HidraError
from hidra_ng.testing import ReceiverProcess
from hidra_ng.wire import protocol as proto
from tests.helpers import digest, wait_for

pytestmark = pytest.mark.slow

RNG_SEED = 20261122


def valid_envelope(incarnation: int = 1) -> bytes:
    return proto.encode(proto.Kind.DATA, proto.Envelope("fuzzer", incarnation, 0, 0))


def header(**overrides) -> bytes:
    fields = dict(
        stream="f",
        seq=0,
        payload=proto.Payload.BYTES,
        dtype="",
        shape=(),
        compression="none",
        meta=b"{}",
        created=0.0,
    )
    fields.update(overrides)
    return msgspec.msgpack.encode(list(fields.values()))


def packed_envelope(incarnation: int = 1) -> bytes:
    return proto.encode(proto.Kind.DATA_PACKED, proto.Envelope("fuzzer", incarnation, 0, 0))


def packed(headers: list[bytes], sizes: list[int]) -> bytes:
    return proto.encode_packed(headers, sizes)


def invalid_ingest_messages(rng: random.Random) -> list[list[bytes]]:
    """Each entry is one multipart ingest message that must be refused once."""
    deep = b'{"a":' * 2000 + b"1" + b"}" * 2000
    bad_sender_packed = proto.encode(proto.Kind.DATA_PACKED, proto.Envelope("bad sender!", 1, 0, 0))
    cases: list[list[bytes]] = []
    for i in range(300):
        cases += [
            [b""],  # one empty frame
            [rng.randbytes(rng.randint(1, 64))],  # one random frame
            [rng.randbytes(rng.randint(1, 64)) for _ in range(3)],  # random frames
            [b"HN\x09\x01" + rng.randbytes(10), b"", b""],  # unknown version
            [b"HN\x01\x01" + rng.randbytes(rng.randint(0, 30)), b"h", b"p"],  # bad envelope
            [valid_envelope()[: rng.randint(0, 8)], b"", b""],  # truncated envelope
            [valid_envelope(), header()],  # wrong frame count (even)
            [valid_envelope(), header()[: rng.randint(1, 20)], b"x"],  # truncated header
            [valid_envelope(), header(stream="bad name"), b"x"],
            [valid_envelope(), header(stream="/etc/passwd"), b"x"],  # cannot become a path
            [valid_envelope(), header(stream="C:\\Windows"), b"x"],
            [valid_envelope(), header(payload=2, dtype="<u2", shape=(2**31, 2**31)), b"x"],
            [valid_envelope(), header(payload=2, dtype="<u2", shape=(4, 4)), b"short"],
            [valid_envelope(), header(payload=2, dtype="|O8", shape=(1,)), b"x" * 8],
            [valid_envelope(), header(meta=deep), b"x"],
            [valid_envelope(), header(meta=b"[1]"), b"x"],
            [valid_envelope(), header(seq=-5), b"x"],
            [valid_envelope(), header(compression="gzip"), b"x"],
            [valid_envelope(), header(created=float("inf")), b"x"],
            [proto.encode(proto.Kind.DATA, proto.Envelope("bad sender!", 1, 0, 0)), header(), b"x"],
            [proto.encode(proto.Kind.HELLO, proto.Hello("x", 1)), header(), b"x"],  # wrong kind
            # DATA_PACKED: [envelope, Packed(headers, sizes), joined payloads]
            [packed_envelope(), packed([header()], [1])],  # 2 frames
            [packed_envelope(), packed([header()], [1]), b"x", b"y"],  # 4 frames
            [packed_envelope(), rng.randbytes(rng.randint(0, 40)), b"x"],  # garbage Packed
            [packed_envelope(), packed([header()], [1])[: rng.randint(1, 20)], b"x"],
            [packed_envelope(), packed([header(), header(seq=1)], [1]), b"x"],  # sizes short
            [packed_envelope(), packed([header()], [5]), b"x"],  # sizes > payload
            [packed_envelope(), packed([header(), header(seq=1)], [3, -2]), b"x"],
            [packed_envelope(), packed([], []), b""],  # nothing in it
            [packed_envelope(), packed([header(stream="bad name")], [1]), b"x"],
            [packed_envelope(), packed([header(meta=deep), header(seq=1)], [1, 1]), b"xy"],
            [bad_sender_packed, packed([header()], [1]), b"x"],
        ]
        if i % 50 == 0:
            cases.append([valid_envelope(), header(meta=b'{"k": "' + b"x" * 70_000 + b'"}'), b""])
    return cases


def invalid_api_messages(rng: random.Random) -> list[list[bytes]]:
    cases: list[list[bytes]] = []
    for _ in range(400):
        cases += [
            [b""],
            [rng.randbytes(rng.randint(1, 100))],
            [b"HN\x07\x05" + rng.randbytes(8)],  # unknown version
            [b"HN\x01\x05" + rng.randbytes(rng.randint(0, 40))],  # malformed request
            [proto.encode(proto.Kind.REQUEST, proto.GetRequest(1)), b"extra frame"],
            [proto.encode(proto.Kind.DATA, proto.Envelope("x", 1, 0, 0))],  # not a request
            [b"HN\x01\x02" + msgspec.msgpack.encode(["bad sender!", 1])],  # invalid HELLO
            [_request("get", timeout=rng.choice([float("nan"), float("inf"), -1.0, 1e308]))],
            [_request("replay", credit_frames=-5, credit_bytes=1)],
            [_request("nack", group="g", delay=float("nan"))],
        ]
    return cases


def _request(op: str, **fields) -> bytes:
    return proto.encode(proto.Kind.REQUEST, proto.make_request(1, op, stream="f", **fields))


def scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "hidra_ng_receiver_rejected_total":
                values[sample.labels["reason"]] = sample.value
    return values


@contextlib.contextmanager
def sending(endpoint: str, kind: int, messages: list[list[bytes]]) -> Iterator[None]:
    """Send everything and keep the socket open until the block ends.

    A peer that never reads its replies and closes at once can lose part of its own
    unsent queue inside libzmq; the test waits for the receiver's counts first.
    """
    ctx = zmq.Context()
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.connect(endpoint)
    try:
        for parts in messages:
            sock.send_multipart(parts)
        yield
    finally:
        sock.close()
        ctx.term()


def send_until_dropped(endpoint: str, parts: list[bytes], timeout: float = 30.0) -> None:
    """Push one message and wait until the receiver drops the connection (a monitor event)."""
    from zmq.utils.monitor import recv_monitor_message

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 0)
    monitor = sock.get_monitor_socket(zmq.EVENT_DISCONNECTED)
    try:
        sock.connect(endpoint)
        sock.send_multipart(parts)
        assert monitor.poll(timeout * 1000), f"the receiver kept the connection for {timeout} s"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED
    finally:
        sock.disable_monitor()
        monitor.close(linger=0)
        sock.close()
        ctx.term()


@pytest.mark.parametrize("socket_name", ["ingest", "api"])
def test_garbage_on_a_socket_is_refused_counted_and_harmless(tmp_path, socket_name):
    rng = random.Random(RNG_SEED)
    rx = ReceiverProcess(tmp_path / "store", "--metrics-port", "-1")  # any port
    rx.start()
    port = rx.metrics_port
    try:
        proc = psutil.Process(rx.proc.pid)
        if socket_name == "ingest":
            messages, endpoint, kind = invalid_ingest_messages(rng), rx.ingest, zmq.PUSH
        else:
            messages, endpoint, kind = invalid_api_messages(rng), rx.api, zmq.DEALER
        rss_before = proc.memory_info().rss
        with sending(endpoint, kind, messages):
            total = wait_for(
                lambda: (n := sum(scrape(port).values())) >= len(messages) and n,
                timeout=60,
                what=f"{len(messages)} refusals",
            )
        assert total == len(messages), scrape(port)  # each refused exactly once
        assert rx.proc.poll() is None, "the receiver died"

        # valid traffic still flows, and nothing of the garbage was stored
        frames = [np.full((64, 64), i, np.uint16) for i in range(20)]
        with Producer(rx.ingest, rx.api, tmp_path / "spool", "honest") as p:
            for f in frames:
                p.send("good", f)
            p.flush(30)
        with Consumer(rx.api) as c:
            assert [s.name for s in c.streams()] == ["good"]
            assert [digest(f.data) for f in c.replay("good")] == [digest(f) for f in frames]
        growth = proc.memory_info().rss - rss_before
        assert growth < 100 << 20, f"receiver RSS grew by {growth >> 20} MiB"
        print(f"{socket_name}: {len(messages)} hostile messages refused: {scrape(port)}")
    finally:
        rx.kill()


def test_oversized_frames_never_reach_python(tmp_path):
    """ZMQ_MAXMSGSIZE drops the connection of a peer that sends more than the limit."""
    rx = ReceiverProcess(tmp_path / "store", "--config", str(_config(tmp_path, 1 << 20)))
    rx.start()
    try:
        send_until_dropped(rx.ingest, [valid_envelope(), header(), bytes(2 << 20)])
        with Producer(rx.ingest, rx.api, tmp_path / "spool", "after") as p:
            p.send("ok", b"small")
            p.flush(30)
        with Consumer(rx.api) as c:
            assert [s.name for s in c.streams()] == ["ok"]
        assert rx.proc.poll() is None
    finally:
        rx.kill()


def _config(tmp_path, max_message_bytes: int):
    path = tmp_path / "receiver.toml"
    path.write_text(f"[receiver]\nmax_message_bytes = {max_message_bytes}\n")
    return path


@given(st.lists(st.binary(max_size=200), min_size=1, max_size=6))
@settings(max_examples=5000, deadline=None)
def test_codec_under_many_random_multiparts(parts):
    """The decoders either return a valid message or raise a HidraError, nothing else."""
    for kind in (proto.Kind.DATA, proto.Kind.DATA_PACKED):
        try:
            env = proto.decode(kind, proto.Envelope, parts[0])
            proto.check_envelope(env)
        except HidraError:
            pass
    for part in parts[1:]:
        with contextlib.suppress(HidraError):
            proto.check_header(proto.decode_body(proto.Header, part), len(part))
        with contextlib.suppress(HidraError):
            proto.unpack_payloads(proto.decode_body(proto.Packed, part), memoryview(parts[-1]))
        for kind, body in ((proto.Kind.REQUEST, proto.Request), (proto.Kind.HELLO, proto.Hello)):
            with contextlib.suppress(HidraError):
                proto.decode(kind, body, proto.preamble(kind) + part)
