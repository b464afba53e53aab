"""A Consumer over every receiver of a shard map (SPEC §14).

``Consumer(shards=PATH)`` makes a :class:`ShardedConsumer`: one ordinary
:class:`Consumer` per receiver, and each request that names a stream goes to the
receiver the map places that stream on. ``streams()`` asks every receiver;
``streams_by_receiver()`` says which receiver holds which. What the receivers
do per stream (consumer groups, queries, retention) stays on the stream's
receiver: a group of a stream is the group on the one receiver that holds it.
"""

from __future__ import annotations

import os
from typing import Any

from hidra_ng.client.consumer import Consumer, _Replay
from hidra_ng.errors import ReceiverUnavailable
from hidra_ng.shards import Shard, ShardMap, load_shard_map
from hidra_ng.wire import protocol as proto


class ShardedConsumer(Consumer):
    """``Consumer(shards=...)``: the same API, each stream read from its own receiver."""

    def __init__(
        self,
        api: str = "",
        *,
        request_timeout: float = 10.0,
        keys_dir: str | None = None,
        server_key_dir: str | None = None,
        shards: str | os.PathLike[str] | ShardMap | None = None,
    ) -> None:
        self.map = load_shard_map(shards if shards is not None else "")
        self.api = ", ".join(s.api for s in self.map.shards)
        self.request_timeout = request_timeout
        #: one Consumer per receiver, by shard name
        self.receivers: dict[str, Consumer] = {}
        try:
            for shard in self.map.shards:
                self.receivers[shard.name] = Consumer(
                    shard.api,
                    request_timeout=request_timeout,
                    keys_dir=keys_dir,
                    server_key_dir=server_key_dir,
                )
        except BaseException:
            self.close()
            raise
        # the first receiver's socket: a Subscriber reports its skipped frames there
        self._sock = next(iter(self.receivers.values()))._sock

    def receiver(self, stream: str) -> Consumer:
        """The Consumer of the receiver that holds ``stream``."""
        return self.receivers[self.map.place(stream).name]

    def shard(self, stream: str) -> Shard:
        return self.map.place(stream)

    # ------------------------------------------------------------------- api

    def streams(self) -> list[proto.StreamInfo]:
        """The streams of every receiver, by name."""
        return sorted((info for _, info in self.streams_by_receiver()), key=lambda i: i.name)

    def streams_by_receiver(self) -> list[tuple[str, proto.StreamInfo]]:
        """(receiver name, stream) for every stream of every receiver.

        Raises ReceiverUnavailable naming each receiver that did not answer.
        """
        out, down = self.streams_answered()
        if down:
            raise ReceiverUnavailable("; ".join(f"{name}: {err}" for name, err in down.items()))
        return out

    def streams_answered(
        self,
    ) -> tuple[list[tuple[str, proto.StreamInfo]], dict[str, ReceiverUnavailable]]:
        """The streams of the receivers that answered, and the error of each that did not."""
        out: list[tuple[str, proto.StreamInfo]] = []
        down: dict[str, ReceiverUnavailable] = {}
        for name, consumer in self.receivers.items():
            try:
                out += [(name, info) for info in consumer.streams()]
            except ReceiverUnavailable as err:
                down[name] = err
        return out, down

    def replay(self, stream: str, *args: Any, **kwargs: Any) -> _Replay:
        return self.receiver(stream).replay(stream, *args, **kwargs)

    # -------------------------------------------------------------- plumbing

    def _call_all(
        self, op: str, *, answer_within: float | None = None, **fields: Any
    ) -> tuple[memoryview, list[memoryview]]:
        """A request with a stream goes to its receiver; one without (ping) to every one."""
        stream = fields.get("stream")
        if stream is not None:
            return self.receiver(stream)._call_all(op, answer_within=answer_within, **fields)
        answer: tuple[memoryview, list[memoryview]] | None = None
        for consumer in self.receivers.values():
            answer = consumer._call_all(op, answer_within=answer_within, **fields)
        assert answer is not None  # a map has at least one shard
        return answer

    def close(self) -> None:
        for consumer in self.receivers.values():
            consumer.close()

    def __enter__(self) -> ShardedConsumer:
        return self
