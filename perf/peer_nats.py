"""NATS JetStream in ``make perf-peers``: nats-py -> a private nats-server (file storage).

Publishing: ``js.publish_async`` with a ``Nats-Msg-Id`` header (JetStream's
deduplication), at most :data:`WINDOW_BYTES` unacknowledged; a run ends when
every PubAck is in and the stream holds every message. Reading: a durable pull
consumer without acks, ``fetch`` in batches of 16. Latency: ``publish_async`` of one
message returning -> an ordered push consumer's ``next_msg`` (delivery from the
stream, as the other systems' consumers read from theirs).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import nats
import nats.errors
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, StorageType
from payloads import FRAME_BYTES, frame_buffers
from peer_services import AsyncClientLoop, CpuMeter, NatsServer, nats_version, supports_sync_always
from peer_stats import Sample

WINDOW_BYTES = 64 << 20  # unacknowledged bytes in flight, as for RabbitMQ
WINDOW_MESSAGES = 4000  # and messages (nats-py's default for publish_async)
FETCH_BATCH = 16

WRITTEN = "PubAck after the message is written to the stream's block file (page cache)"


def durability(version: tuple[int, ...], sync_always: bool) -> str:
    """What a PubAck means with this nats-server version and setting."""
    shown = ".".join(map(str, version))
    if sync_always:
        return f"nats-server {shown}, sync_interval: always: fsync of every write before the PubAck"
    if supports_sync_always(version):
        return f"{WRITTEN}; nats-server {shown} fsyncs every 2 minutes (default sync_interval)"
    return (
        f"{WRITTEN}; nats-server {shown} fsyncs stream files every 2 minutes (hard-coded"
        " in 2.9; the 'sync_interval' setting exists from 2.10.0 on)"
    )


class NatsSystem(AsyncClientLoop):
    def __init__(self, server: NatsServer, name: str = "nats_jetstream") -> None:
        self.name = name
        self.server = server
        self.version = nats_version(server.binary)
        self.durability = durability(self.version, server.sync_always)
        super().__init__()
        self._nc = self._run(nats.connect(server.url, pending_size=WINDOW_BYTES))
        self._payloads = [bytes(b) for b in frame_buffers()]

    def _close_client(self):
        return self._nc.close()

    def server_pids(self) -> list[int]:
        assert self.server.proc is not None
        return [self.server.proc.pid]

    @staticmethod
    def _names(stream: str) -> tuple[str, str]:
        """(JetStream stream name, its subject) for one of perf-peers' stream names."""
        name = "".join(c if c.isalnum() else "_" for c in stream)
        return name, f"perf.{name}"

    async def _create(self, stream: str) -> None:
        name, subject = self._names(stream)
        await self._nc.jetstream().add_stream(
            name=name, subjects=[subject], storage=StorageType.FILE
        )

    # ------------------------------------------------------------------ workloads

    def ingest_4mib(self, stream: str, count: int) -> Sample:
        payloads = self._payloads
        return self._ingest(stream, count, lambda i: payloads[i % len(payloads)])

    def ingest_small(self, stream: str, batch: list[bytes], calls: int) -> Sample:
        return self._ingest(stream, calls * len(batch), lambda i: batch[i % len(batch)])

    def _ingest(self, stream: str, count: int, payload: Callable[[int], bytes]) -> Sample:
        self._run(self._create(stream))
        meter = CpuMeter(self.server_pids())
        t0 = time.perf_counter()
        nbytes = self._run(self._publish(stream, count, payload))
        seconds = time.perf_counter() - t0
        client, server = meter.read()
        stored = self._run(self._nc.jetstream().stream_info(self._names(stream)[0]))
        if stored.state.messages != count or stored.state.last_seq != count:
            raise RuntimeError(f"JetStream stream {stream} holds {stored.state}; expected {count}")
        return Sample(seconds, nbytes, count, client, server)

    async def _publish(self, stream: str, count: int, payload: Callable[[int], bytes]) -> int:
        _, subject = self._names(stream)
        window = max(1, min(WINDOW_MESSAGES, WINDOW_BYTES // len(payload(0))))
        js = self._nc.jetstream(publish_async_max_pending=window)
        acks = []
        nbytes = 0
        for i in range(count):
            data = payload(i)
            nbytes += len(data)
            headers = {"Nats-Msg-Id": str(i + 1)}  # deduplication within the stream's window
            acks.append(await js.publish_async(subject, data, headers=headers))
        for ack in await asyncio.gather(*acks):
            if ack.duplicate:
                raise RuntimeError(f"JetStream took message {ack.seq} of {stream} as a duplicate")
        return nbytes

    def readback_4mib(self, stream: str, count: int) -> Sample:
        meter = CpuMeter(self.server_pids())
        t0 = time.perf_counter()
        try:
            nbytes = self._run(self._read(stream, count))
        except nats.errors.TimeoutError as err:
            raise RuntimeError(
                f"{stream}: read-back stalled; server log: {self.server.log()}"
            ) from err
        seconds = time.perf_counter() - t0
        client, server = meter.read()
        if nbytes != count * FRAME_BYTES:
            raise RuntimeError(f"read {nbytes} bytes from {stream}; expected {count} frames")
        return Sample(seconds, nbytes, count, client, server)

    async def _read(self, stream: str, count: int) -> int:
        name, subject = self._names(stream)
        js = self._nc.jetstream()
        config = ConsumerConfig(ack_policy=AckPolicy.NONE)
        # durable (removed with its stream): with an ephemeral one, nats-server 2.15.1
        # answered every fetch of one run with 503 "no responders" for 30 s
        sub = await js.pull_subscribe(subject, durable="readback", stream=name, config=config)
        received, nbytes = 0, 0
        deadline = time.monotonic() + 30
        try:
            while received < count:
                try:
                    msgs = await sub.fetch(min(FETCH_BATCH, count - received), timeout=30)
                except nats.js.errors.ServiceUnavailableError:
                    # nats-server 2.10+ may answer 503 while a new consumer is not ready yet
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.05)
                    continue
                for msg in msgs:
                    received += 1
                    nbytes += len(msg.data)
        finally:
            await sub.unsubscribe()
        return nbytes

    def latency_4mib(self, stream: str, warmup: int, samples: int) -> Sample:
        self._run(self._create(stream))
        meter = CpuMeter(self.server_pids())
        t0 = time.perf_counter()
        latencies = self._run(self._latency(stream, warmup, samples))
        seconds = time.perf_counter() - t0
        client, server = meter.read()
        n = warmup + samples
        return Sample(seconds, n * FRAME_BYTES, n, client, server, latencies[warmup:])

    async def _latency(self, stream: str, warmup: int, samples: int) -> list[float]:
        name, subject = self._names(stream)
        js = self._nc.jetstream()
        sub = await js.subscribe(subject, stream=name, ordered_consumer=True)
        latencies = []
        try:
            for i in range(warmup + samples):
                data = self._payloads[i % len(self._payloads)]
                ack = await js.publish_async(subject, data, headers={"Nats-Msg-Id": str(i + 1)})
                sent = time.perf_counter()
                await sub.next_msg(timeout=30)
                latencies.append(1000 * (time.perf_counter() - sent))
                await ack
        finally:
            await sub.unsubscribe()
        return latencies

    def drop(self, stream: str) -> None:
        self._run(self._nc.jetstream().delete_stream(self._names(stream)[0]), 60)
