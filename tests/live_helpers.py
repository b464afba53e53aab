"""Helpers for the live-feed tests: a store whose commit waits, a fake publisher.

``HeldCommits`` wraps a store's ``Env.write``: once armed, the next write
transaction runs everything it holds (the receiver's live publish included,
SPEC G6) and then waits, before LMDB's commit and fsync, until released. The
tests order events by it; nothing here measures time.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import msgspec
import zmq

from hidra_ng.lmdbenv import Env
from hidra_ng.wire import protocol as proto


class HeldCommits:
    """Holds the commit of the next write transaction of ``env`` while armed."""

    def __init__(self, env: Env) -> None:
        self._write = env.write
        self.armed = threading.Event()
        self.holding = threading.Event()  # a transaction is filled and waits for its commit
        self.release = threading.Event()
        env.write = self.write  # type: ignore[method-assign]

    def write(self, fill: Callable[[Any], Any], **options: Any) -> Any:
        def held(txn: Any) -> Any:
            result = fill(txn)
            if self.armed.is_set():
                self.armed.clear()
                self.holding.set()
                self.release.wait(120)
                self.holding.clear()
            return result

        return self._write(held, **options)


def publish_message(stream: str, index: int, sender: str, seq: int, payload: bytes) -> list[bytes]:
    """A PUBLISH message as the receiver sends it: [topic, ref with record, payload]."""
    record = proto.Record(
        sender=sender, seq=seq, payload=proto.Payload.BYTES, dtype="", shape=(),
        compression="none", meta=b"{}", created=1.0, stored=2.0, nbytes=len(payload),
    )  # fmt: skip
    ref = proto.FrameRef(stream, index, msgspec.Raw(proto.encode_body(record)))
    return [stream.encode() + b"\0", proto.encode(proto.Kind.PUBLISH, ref), payload]


def bound_pub(ctx: zmq.Context) -> tuple[zmq.Socket, str]:
    """A PUB socket on a loopback port of its own, and its endpoint."""
    pub = ctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind("tcp://127.0.0.1:*")
    return pub, pub.getsockopt_string(zmq.LAST_ENDPOINT)
