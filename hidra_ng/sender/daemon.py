"""The sender daemon: a Producer fed by sources, one thread each (SPEC §5)."""

from __future__ import annotations

import logging
import threading
import time

from hidra_ng.config import SenderConfig
from hidra_ng.errors import HidraError
from hidra_ng.metrics import SenderMetrics, serve
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.sharded import ShardedProducer
from hidra_ng.sender.sources import Source

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0
STOP_SOURCES_SECONDS = 10.0
BIND_WAIT_SECONDS = 10.0


class SenderDaemon:
    def __init__(self, config: SenderConfig, sources: list[Source]) -> None:
        self.config = config
        self.sources = sources
        self.metrics = SenderMetrics()
        self.producer = Producer.from_config(config, metrics=self.metrics)
        m, p = self.metrics, self.producer
        m.spool_messages.set_function(lambda: p.spool_messages)
        m.spool_bytes.set_function(lambda: p.spool_bytes)
        m.receiver_up.set_function(lambda: 1 if p.receiver_up else 0)
        if isinstance(p, ShardedProducer):  # one receiver_up per receiver (SPEC §14)
            m.track_receivers(lambda: p.receivers_up)
        m.track_sources(sources)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.metrics_server = None
        try:
            self.metrics_server = serve(m.registry, config.metrics_port)
        except BaseException:
            self.producer.close()
            raise

    def start(self) -> None:
        for source in self.sources:
            thread = threading.Thread(
                target=self._run_source, args=(source,), name=f"source {source.name}", daemon=True
            )
            thread.start()
            self._threads.append(thread)

    def bound(self, timeout: float = BIND_WAIT_SECONDS) -> dict[str, object]:
        """What the daemon listens on, once the sources that bind have bound (or ``timeout``).

        ``{"metrics_port": N, "sources": {uri: endpoint}}``: the metrics port actually
        served (0: off) and the endpoint each binding source resolved (``tcp://...:*``
        gets its port here); what ``hidra-ng sender --ready-file`` writes.
        """
        binding = [s for s in self.sources if hasattr(s, "bound_endpoint")]
        deadline = time.monotonic() + timeout
        for source, thread in zip(self.sources, self._threads, strict=True):
            while (
                source in binding
                and not getattr(source, "bound_endpoint", "")
                and thread.is_alive()
                and time.monotonic() < deadline
            ):
                self._stop.wait(0.01)  # polls the source's bind, with the deadline above
        port = self.metrics_server.server_address[1] if self.metrics_server else 0
        return {
            "metrics_port": port,
            "sources": {s.name: getattr(s, "bound_endpoint", "") for s in binding},
        }

    def _run_source(self, source: Source) -> None:
        """Run a source to its end; after an error wait and resume from its checkpoint."""
        while not self._stop.is_set():
            try:
                source.run(self.producer, self._stop)
                log.info("source %s is done", source.name)
                return
            except HidraError as err:
                log.warning("source %s: %s; resuming in %.0f s", source.name, err, RETRY_SECONDS)
            except Exception:
                log.exception("source %s failed; resuming in %.0f s", source.name, RETRY_SECONDS)
            self._stop.wait(RETRY_SECONDS)

    def sources_done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def alive(self) -> bool:
        return self.producer.link_alive

    def status(self) -> str:
        p = self.producer
        if isinstance(p, ShardedProducer):
            up = ", ".join(f"{n} {'up' if u else 'down'}" for n, u in p.receivers_up.items())
            return (
                f"receivers {up}; spool {p.spool_messages} messages ({p.spool_bytes} bytes),"
                f" sent {p.stats['sent']}, acked {p.stats['acked']}"
            )
        return (
            f"receiver {'up' if p.receiver_up else 'down'}, spool {p.spool_messages} messages"
            f" ({p.spool_bytes} bytes), sent {p.stats['sent']}, acked {p.stats['acked']}"
        )

    def stop(self) -> None:
        """Stop the sources, then the producer; unsent messages stay spooled."""
        self._stop.set()
        self.producer.interrupt()  # a source waiting for spool space must not hold the stop
        for thread in self._threads:
            thread.join(STOP_SOURCES_SECONDS)
            if thread.is_alive():
                log.error("source thread %s did not stop in time", thread.name)
        self.producer.close()
        if self.metrics_server is not None:
            self.metrics_server.shutdown()
            self.metrics_server.server_close()
