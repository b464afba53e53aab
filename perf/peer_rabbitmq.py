"""RabbitMQ streams in ``make perf-peers``: rstream (RabbitMQ's Python client) -> a private node.

The node is scripts/rabbitmq_node.py's ``RabbitNode``: Debian's rabbitmq-server with
the stream plugin on loopback, ``stream.frame_max`` 64 MiB (the clients here use
the same, so a 4 MiB message fits a frame).

Publishing: ``Producer.send_batch`` with a publisher name (deduplication on) and
``publishing_id`` = message number + 1, at most :data:`WINDOW_BYTES` unconfirmed;
a run ends when every message is confirmed. Reading: a ``Consumer`` from the first
offset, with rstream's default credit. Latency: ``send_batch`` of one message
returning -> the consumer's callback (offset ``NEXT``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from payloads import FRAME_BYTES, frame_buffers
from peer_services import AsyncClientLoop, CpuMeter
from peer_stats import Sample
from rstream import (
    ConfirmationStatus,
    Consumer,
    ConsumerOffsetSpecification,
    MessageContext,
    OffsetType,
    Producer,
    RawMessage,
)

from scripts.rabbitmq_node import STREAM_FRAME_MAX, RabbitNode

WINDOW_BYTES = 64 << 20  # unconfirmed bytes in flight, as for NATS
WINDOW_MESSAGES = 4000  # and messages (nats-py's default for publish_async)

DURABILITY = (
    "confirm after the chunk is written to the stream's segment file on the one node"
    " (page cache, no fsync): osiris 1.3.1 in RabbitMQ 3.10.8 never fsyncs segments and"
    " has no setting to; in a cluster a confirm waits for a quorum of replicas instead"
)
MOST_DURABLE = (
    "none: RabbitMQ streams have no fsync-before-confirm setting (3.10 and later);"
    " durability comes from replication across nodes, which one machine cannot show"
)


class RabbitStreamsSystem(AsyncClientLoop):
    name = "rabbitmq_streams"
    durability = DURABILITY

    def __init__(self, node: RabbitNode) -> None:
        self.node = node
        super().__init__()
        self._producer = Producer(
            "127.0.0.1",
            node.stream_port,
            username="guest",
            password="guest",
            frame_max=STREAM_FRAME_MAX,
        )
        self._run(self._producer.start())
        self._payloads = [bytes(b) for b in frame_buffers()]  # rstream sends bytes

    def _close_client(self):
        return self._producer.close()

    def server_pids(self) -> list[int]:
        assert self.node.server is not None
        return [self.node.server.pid]

    def _consumer(self) -> Consumer:
        return Consumer(
            "127.0.0.1",
            self.node.stream_port,
            username="guest",
            password="guest",
            frame_max=STREAM_FRAME_MAX,
        )

    # ------------------------------------------------------------------ workloads

    def ingest_4mib(self, stream: str, count: int) -> Sample:
        payloads = self._payloads
        return self._ingest(stream, count, 1, lambda i: payloads[i % len(payloads)])

    def ingest_small(self, stream: str, batch: list[bytes], calls: int) -> Sample:
        return self._ingest(stream, calls * len(batch), len(batch), lambda i: batch[i % len(batch)])

    def _ingest(
        self, stream: str, count: int, per_publish: int, payload: Callable[[int], bytes]
    ) -> Sample:
        self._run(self._producer.create_stream(stream, exists_ok=True))
        meter = CpuMeter(self.server_pids())
        t0 = time.perf_counter()
        nbytes = self._run(self._publish(stream, count, per_publish, payload))
        seconds = time.perf_counter() - t0
        client, server = meter.read()
        return Sample(seconds, nbytes, count, client, server)

    async def _publish(
        self, stream: str, count: int, per_publish: int, payload: Callable[[int], bytes]
    ) -> int:
        """Publish ``count`` messages, ``per_publish`` per frame; return when all are confirmed."""
        in_flight = min(WINDOW_MESSAGES, WINDOW_BYTES // len(payload(0)))
        window = asyncio.Semaphore(max(1, in_flight // per_publish))
        confirmed = 0
        failed: list[ConfirmationStatus] = []
        done = asyncio.Event()

        def on_confirm(status: ConfirmationStatus) -> None:
            nonlocal confirmed
            if not status.is_confirmed:
                failed.append(status)
            confirmed += 1
            if confirmed % per_publish == 0 or confirmed == count:
                window.release()
            if confirmed == count:
                done.set()

        nbytes = 0
        for start in range(0, count, per_publish):
            batch = []
            for i in range(start, min(start + per_publish, count)):
                message = RawMessage(payload(i))
                message.publishing_id = i + 1  # deduplication: ids grow with the publisher name
                batch.append(message)
                nbytes += len(message.data)
            await window.acquire()
            await self._producer.send_batch(
                stream, batch, publisher_name=f"perf-{stream}", on_publish_confirm=on_confirm
            )
        await done.wait()
        if failed:
            raise RuntimeError(f"RabbitMQ refused {len(failed)} publishes, first {failed[0]}")
        return nbytes

    def readback_4mib(self, stream: str, count: int) -> Sample:
        meter = CpuMeter(self.server_pids())
        t0 = time.perf_counter()
        nbytes, skipped = self._run(self._read(stream, count))
        seconds = time.perf_counter() - t0
        client, server = meter.read()
        if nbytes != count * FRAME_BYTES:
            raise RuntimeError(f"read {nbytes} bytes from {stream}; expected {count} frames")
        return Sample(seconds, nbytes, count, client, server, detail={"offsets_skipped": skipped})

    async def _read(self, stream: str, count: int) -> tuple[int, int]:
        """(bytes, offsets skipped) of the stream's first ``count`` messages, in order.

        Offsets of user messages have a gap wherever the broker wrote a chunk of its
        own: with deduplication, a tracking snapshot at every new segment file
        (osiris_log:evaluate_tracking_snapshot), which consumers are not sent.
        """
        received, nbytes, next_offset = 0, 0, 0
        backwards: list[tuple[int, int]] = []
        done = asyncio.Event()

        def on_message(message: bytes, context: MessageContext) -> None:
            nonlocal received, nbytes, next_offset
            if context.offset < next_offset:  # raised in rstream's task it would be lost
                backwards.append((next_offset, context.offset))
                done.set()
                return
            next_offset = context.offset + 1
            received += 1
            nbytes += len(message)
            if received == count:
                done.set()

        consumer = self._consumer()
        await consumer.start()
        try:
            first = ConsumerOffsetSpecification(OffsetType.FIRST, None)
            await consumer.subscribe(stream, on_message, offset_specification=first)
            await done.wait()
        finally:
            await consumer.close()
        if backwards:
            expected, got = backwards[0]
            raise RuntimeError(f"{stream}: offset {got} arrived after {expected - 1}")
        return nbytes, next_offset - received

    def latency_4mib(self, stream: str, warmup: int, samples: int) -> Sample:
        self._run(self._producer.create_stream(stream, exists_ok=True))
        meter = CpuMeter(self.server_pids())
        t0 = time.perf_counter()
        latencies = self._run(self._latency(stream, warmup, samples))
        seconds = time.perf_counter() - t0
        client, server = meter.read()
        n = warmup + samples
        return Sample(seconds, n * FRAME_BYTES, n, client, server, latencies[warmup:])

    async def _latency(self, stream: str, warmup: int, samples: int) -> list[float]:
        arrivals: asyncio.Queue[float] = asyncio.Queue()

        def on_message(_message: bytes, _context: MessageContext) -> None:
            arrivals.put_nowait(time.perf_counter())

        consumer = self._consumer()
        await consumer.start()
        latencies = []
        try:
            after = ConsumerOffsetSpecification(OffsetType.NEXT, None)
            await consumer.subscribe(stream, on_message, offset_specification=after)
            payloads = self._payloads
            for i in range(warmup + samples):
                message = RawMessage(payloads[i % len(payloads)])
                message.publishing_id = i + 1
                await self._producer.send_batch(stream, [message], publisher_name=f"perf-{stream}")
                sent = time.perf_counter()
                arrived = await asyncio.wait_for(arrivals.get(), 30)
                latencies.append(1000 * (arrived - sent))
        finally:
            await consumer.close()
        return latencies

    def drop(self, stream: str) -> None:
        self._run(self._producer.delete_stream(stream, missing_ok=True), 60)
