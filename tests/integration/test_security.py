"""CurveZMQ end to end (SPEC §9): allowed keys work everywhere, nothing else gets anything."""

from __future__ import annotations

import contextlib
import shutil
import stat
import subprocess
import sys

import msgspec
import numpy as np
import pytest
import zmq

from hidra_ng import (
    AuthenticationError,
    ConfigError,
    Consumer,
    NotYetAvailable,
    Producer,
    ReceiverUnavailable,
    Subscriber,
)
from hidra_ng.receiver.daemon import Receiver
from hidra_ng.security import ClientKeys, keygen
from hidra_ng.wire import protocol as proto
from tests.helpers import digest, wait_for


@pytest.fixture
def keys(tmp_path):
    """Key pairs for the receiver, an allowed client and an intruder; the allow list."""
    dirs = {name: tmp_path / "keys" / name for name in ("server", "client", "intruder")}
    for d in dirs.values():
        keygen(d)
    allowed = tmp_path / "keys" / "allowed"
    allowed.mkdir()
    shutil.copy(dirs["client"] / "hidra-ng.key", allowed / "client.key")
    dirs["allowed"] = allowed
    return dirs


@pytest.fixture
def secure_receiver(receiver_config, keys):
    config = msgspec.structs.replace(
        receiver_config, keys_dir=str(keys["server"]), authorized_keys_dir=str(keys["allowed"])
    )
    with Receiver(config) as rx:
        yield rx


def rejected(rx: Receiver, reason: str) -> float:
    return rx.metrics.rejected.labels(reason)._value.get()


def client_keys(keys, who: str = "client") -> dict:
    return {"keys_dir": str(keys[who]), "server_key_dir": str(keys["server"])}


def test_keygen_writes_a_private_secret_and_refuses_to_overwrite(tmp_path):
    public, secret = keygen(tmp_path / "k")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert "public-key" in public.read_text() and "secret-key" not in public.read_text()
    with pytest.raises(AuthenticationError, match="exists already"):
        keygen(tmp_path / "k")
    result = subprocess.run(
        [sys.executable, "-m", "hidra_ng", "keygen", str(tmp_path / "cli")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0 and "hidra-ng.key_secret" in result.stdout


def test_an_allowed_key_reads_replays_and_subscribes(secure_receiver, keys):
    ep = secure_receiver.endpoints
    ck = client_keys(keys)
    frames = [np.full((8, 8), i, np.uint16) for i in range(5)]
    with (
        Consumer(ep["api"], **ck) as c,
        Subscriber(ep["publish"], ["sec"], api=ep["api"], **ck) as sub,
    ):
        c.ping()
        _store_directly(secure_receiver, keys, "sec", frames)
        assert digest(c.get("sec", 2).data) == digest(frames[2])
        assert [digest(f.data) for f in c.replay("sec")] == [digest(f) for f in frames]
        assert sub.latest(timeout=2).index == 4


def test_an_unknown_key_and_a_plain_client_get_nothing(secure_receiver, keys, tmp_path):
    ep = secure_receiver.endpoints
    _store_directly(secure_receiver, keys, "secret/data", [np.ones(4, np.uint8)])
    intruder = client_keys(keys, "intruder")
    with (
        Consumer(ep["api"], request_timeout=1.0, **intruder) as c,
        pytest.raises(ReceiverUnavailable),
    ):
        c.streams()
    with Consumer(ep["api"], request_timeout=1.0) as plain, pytest.raises(ReceiverUnavailable):
        plain.streams()
    with Subscriber(
        ep["publish"], ["secret/data"], api=ep["api"], **client_keys(keys, "intruder")
    ) as sub:
        _store_directly(secure_receiver, keys, "secret/data", [np.ones(4, np.uint8)])
        assert sub.receive(timeout=1.0) is None
        with pytest.raises(NotYetAvailable):
            sub.latest(timeout=0.5)
    # an intruder pushing frames stores nothing
    _raw_push(ep["ingest"], keys, "intruder")
    wait_for(lambda: rejected(secure_receiver, "auth") >= 3, what="refusals counted")
    assert [s.name for s in secure_receiver.store.streams()] == ["secret/data"]


def test_a_key_added_to_the_allow_list_works_without_a_restart(secure_receiver, keys):
    ep = secure_receiver.endpoints
    intruder = client_keys(keys, "intruder")
    with (
        Consumer(ep["api"], request_timeout=0.5, **intruder) as c,
        pytest.raises(ReceiverUnavailable),
    ):
        c.ping()
    shutil.copy(keys["intruder"] / "hidra-ng.key", keys["allowed"] / "now-allowed.key")
    with Consumer(ep["api"], request_timeout=3.0, **client_keys(keys, "intruder")) as c:
        c.ping()
    (keys["allowed"] / "now-allowed.key").unlink()

    def refused_again() -> bool:
        with Consumer(ep["api"], request_timeout=0.5, **client_keys(keys, "intruder")) as c:
            try:
                c.ping()
                return False
            except ReceiverUnavailable:
                return True

    wait_for(refused_again, timeout=10, what="a removed key to be refused")


def test_keys_must_come_in_pairs(receiver_config, keys):
    config = msgspec.structs.replace(receiver_config, keys_dir=str(keys["server"]))
    with pytest.raises(ConfigError, match="go together"):
        Receiver(config)
    with pytest.raises(AuthenticationError, match="give both keys_dir"):
        Consumer("tcp://127.0.0.1:1", keys_dir=str(keys["client"]))
    with pytest.raises(AuthenticationError, match="holds 0 secret key files"):
        Consumer("tcp://127.0.0.1:1", keys_dir=str(keys["allowed"]),
                 server_key_dir=str(keys["server"]))  # fmt: skip


def test_the_ip_allow_list_refuses_other_addresses(receiver_config, tmp_path):
    config = msgspec.structs.replace(receiver_config, allow_ips="10.0.0.0/8")
    with Receiver(config) as rx, Consumer(rx.endpoints["api"], request_timeout=0.5) as c:
        with pytest.raises(ReceiverUnavailable):
            c.ping()
        wait_for(lambda: rejected(rx, "ip") >= 1, what="an ip refusal counted")
    config = msgspec.structs.replace(receiver_config, allow_ips="10.0.0.0/8, 127.0.0.1")
    with Receiver(config) as rx, Consumer(rx.endpoints["api"], request_timeout=3) as c:
        c.ping()
        with Producer(rx.endpoints["ingest"], rx.endpoints["api"], tmp_path / "sp", "ip") as p:
            p.send("ip/ok", b"x")
            p.flush(10)
        assert c.info("ip/ok").count == 1


def _store_directly(rx: Receiver, keys, stream: str, frames) -> None:
    """Store frames over the wire with the allowed client's key, as a sender would."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.LINGER, 2000)
    ClientKeys.load(str(keys["client"]), str(keys["server"])).apply(sock)
    sock.connect(rx.endpoints["ingest"])
    start = rx.store.next_index(stream)
    incarnation = hash(stream) & 0x7FFFFFFF
    seq0 = rx.store.last_seq("allowed-test", incarnation) + 1
    for i, frame in enumerate(frames):
        header = proto.Header(
            stream, seq0 + i, proto.Payload.ARRAY, frame.dtype.str, frame.shape, "none",
            b"{}", 0.0,
        )  # fmt: skip
        envelope = proto.Envelope("allowed-test", incarnation, seq0, 0)
        sock.send_multipart(
            [proto.encode(proto.Kind.DATA, envelope), proto.encode_body(header), frame]
        )
    sock.close()
    ctx.term()
    wait_for(lambda: rx.store.next_index(stream) == start + len(frames), what="frames stored")


def _raw_push(endpoint: str, keys, who: str) -> None:
    ctx = zmq.Context()
    for _ in range(3):
        sock = ctx.socket(zmq.PUSH)
        sock.setsockopt(zmq.LINGER, 0)
        ClientKeys.load(str(keys[who]), str(keys["server"])).apply(sock)
        sock.connect(endpoint)
        with contextlib.suppress(zmq.Again):
            sock.send_multipart([b"HN\x01\x01", b"", b""], zmq.NOBLOCK)
        sock.close()
    ctx.term()


def test_producers_with_keys_deliver_and_intruders_store_nothing(secure_receiver, keys, tmp_path):
    ep = secure_receiver.endpoints
    frames = [np.full((32, 32), i, np.uint16) for i in range(10)]
    with Producer(ep["ingest"], ep["api"], tmp_path / "good", "good", **client_keys(keys)) as p:
        for f in frames:
            p.send("signed", f)
        p.flush(20)
        assert p.receiver_up
    with Producer(
        ep["ingest"], ep["api"], tmp_path / "bad", "bad", **client_keys(keys, "intruder")
    ) as p:
        p.send("forged", b"x")
        with pytest.raises(ReceiverUnavailable):
            p.flush(2)
        assert not p.receiver_up
        assert p.spool_messages == 1  # nothing lost either: it waits in the spool
    with Consumer(ep["api"], **client_keys(keys)) as c:
        assert [s.name for s in c.streams()] == ["signed"]
        assert [digest(f.data) for f in c.replay("signed")] == [digest(f) for f in frames]
    assert rejected(secure_receiver, "auth") >= 1


def test_a_sender_daemon_with_keys(secure_receiver, keys, tmp_path):
    ep = secure_receiver.endpoints
    result = subprocess.run(
        [
            sys.executable, "-m", "hidra_ng", "sender",
            "--ingest", ep["ingest"], "--api", ep["api"],
            "--spool-dir", str(tmp_path / "spool"), "--sender-id", "daemon",
            "--keys-dir", str(keys["client"]), "--server-key-dir", str(keys["server"]),
            "--source", "simulate:?shape=16x16&count=7&rate=0&stream=daemon/sim",
            "--metrics-port", "0", "--exit-when-done",
        ],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    with Consumer(ep["api"], **client_keys(keys)) as c:
        assert [f.meta["frame"] for f in c.replay("daemon/sim")] == list(range(7))
