"""Every Prometheus metric of hidra_ng, declared once (SPEC §8).

Each daemon gets its own registry so that several can live in one process
(tests, the demo) without clashing; ``serve()`` exposes one on ``/metrics``.

Names follow the Prometheus guide: ``hidra_ng_`` prefix, base units (bytes,
seconds), bounded labels (stream and group names, reasons, ops; never
indices). Counters are declared without ``_total``: prometheus_client appends
it, so ``Counter("hidra_ng_receiver_messages", ...)`` is exposed as
``hidra_ng_receiver_messages_total``. docs/operations.md lists every metric.
Every daemon (receiver, sender, bridge, writer) also serves prometheus_client's
process, platform and GC collectors (``process_resident_memory_bytes``,
``process_open_fds``, ...); the view has no metrics.

The ``stream`` label stays bounded when streams are per scan, in every daemon: each
metric with a ``stream`` label is declared through its registry's
:class:`StreamSeries`, which keeps series for at most ``MAX_STREAM_LABELS`` streams
at a time: using one more (any ``labels(stream, ...)`` call) removes every series
of the stream used least recently (its counters start from 0 if it comes back,
which ``rate()`` reads as a reset). The receiver also removes a stream's series
when retention empties the stream (:meth:`ReceiverMetrics.forget_stream`). The
consumer-group series (``stream``, ``group``) exist only for groups with state in
the receiver.

``serve(registry, port)`` with ``port = ANY_PORT`` (-1, the ``metrics_port``
setting's "any free port") binds a port the OS chooses; :func:`served_port` tells
which, the daemon logs it and ``--ready-file`` reports it.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import threading
import weakref
from collections.abc import Callable, Sequence
from importlib.metadata import PackageNotFoundError, version
from typing import Generic, TypeVar

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import start_http_server
from prometheus_client.registry import Collector

from hidra_ng.errors import ConfigError

log = logging.getLogger(__name__)

#: streams with per-stream series at a time (see the module docstring)
MAX_STREAM_LABELS = 1000
#: ``metrics_port`` value (config.py): serve on any free port, chosen by the OS
ANY_PORT = -1

_COMMIT_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


def _build_info(registry: CollectorRegistry) -> None:
    try:
        ver = version("hidra-ng")
    except PackageNotFoundError:
        ver = "unknown"
    Info("hidra_ng_build", "hidra_ng version", registry=registry).info({"version": ver})
    # process_*, python_info and python_gc_* of this process, as the default registry has
    for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
        registry.register(collector)


M = TypeVar("M", Counter, Gauge)


class StreamSeries:
    """The ``stream``-labelled series of one registry, for at most ``limit`` streams.

    :meth:`track` wraps a metric whose first label is ``stream``: each
    ``labels(stream, ...)`` of the wrapper marks the stream used; one stream more
    than ``limit`` removes every tracked series of the stream used least recently.
    Thread-safe: daemons label from several threads.
    """

    def __init__(self, limit: int = MAX_STREAM_LABELS) -> None:
        self.limit = limit
        self._metrics: list[Counter | Gauge] = []
        self._streams: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._lock = threading.Lock()

    def track(self, metric: M) -> StreamLabelled[M]:
        self._metrics.append(metric)
        return StreamLabelled(metric, self)

    def used(self, stream: str) -> None:
        with self._lock:
            if stream in self._streams:
                self._streams.move_to_end(stream)
                return
            self._streams[stream] = None
            oldest = None
            if len(self._streams) > self.limit:
                oldest, _ = self._streams.popitem(last=False)
        if oldest is not None:
            self._remove(oldest)

    def forget(self, stream: str) -> None:
        """``stream``'s series go (retention emptied it); unknown streams are no error."""
        with self._lock:
            known = stream in self._streams
            self._streams.pop(stream, None)
        if known:
            self._remove(stream)

    def streams(self) -> list[str]:
        """The streams with series, least recently used first."""
        with self._lock:
            return list(self._streams)

    def _remove(self, stream: str) -> None:
        for metric in self._metrics:
            if len(metric._labelnames) == 1:
                keys: list[tuple[str, ...]] = [(stream,)]
            else:  # e.g. (stream, reason): every reason of the stream
                keys = [k for k in _label_values(metric) if k[0] == stream]
            for key in keys:
                with contextlib.suppress(KeyError):
                    metric.remove(*key)


def _label_values(metric: Counter | Gauge) -> set[tuple[str, ...]]:
    """The label values of every series ``metric`` has now."""
    return {
        tuple(sample.labels[name] for name in metric._labelnames)
        for family in metric.collect()
        for sample in family.samples
    }


class StreamLabelled(Generic[M]):
    """A metric labelled by stream (first) whose streams a :class:`StreamSeries` bounds."""

    def __init__(self, metric: M, series: StreamSeries) -> None:
        self.metric: M = metric
        self._series = series

    def labels(self, stream: str, *more: str) -> M:
        self._series.used(stream)
        return self.metric.labels(stream, *more)


class ReceiverMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        _build_info(r)
        s = self.stream_series = StreamSeries()
        self.messages = s.track(
            Counter("hidra_ng_receiver_messages", "Messages stored", ["stream"], registry=r)
        )
        self.bytes = s.track(
            Counter("hidra_ng_receiver_bytes", "Payload bytes stored", ["stream"], registry=r)
        )
        self.rejected = Counter(
            "hidra_ng_receiver_rejected", "Messages refused, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "hidra_ng_receiver_duplicates", "Resent messages already stored", registry=r
        )
        self.gaps = Counter(
            "hidra_ng_receiver_gaps",
            "Out-of-order arrivals answered with a resend request",
            registry=r,
        )
        self.commit_seconds = Histogram(
            "hidra_ng_receiver_commit_seconds",
            "Time of one group commit including fsync",
            buckets=_COMMIT_BUCKETS,
            registry=r,
        )
        self.commit_failures = Counter(
            "hidra_ng_receiver_commit_failures",
            "Group commits that failed (disk full, ...)",
            registry=r,
        )
        self.last_index = s.track(
            Gauge("hidra_ng_receiver_last_index", "Highest index stored", ["stream"], registry=r)
        )
        self.store_bytes = Gauge(
            "hidra_ng_receiver_store_bytes", "Size of the LMDB data file", registry=r
        )
        self._declare_groups(r)
        self._declare_api(r)

    def _declare_groups(self, r: CollectorRegistry) -> None:
        self.group_pending = Gauge(
            "hidra_ng_group_pending",
            "Messages not yet acked in a consumer group",
            ["stream", "group"],
            registry=r,
        )
        self.group_redelivered = Counter(
            "hidra_ng_group_redelivered",
            "Messages handed out again after an ack timeout or a nack",
            ["stream", "group"],
            registry=r,
        )
        self.group_parked = Counter(
            "hidra_ng_group_parked",
            "Messages set aside after too many redeliveries",
            ["stream", "group"],
            registry=r,
        )

    def _declare_api(self, r: CollectorRegistry) -> None:
        self.subscriber_skipped = Counter(
            "hidra_ng_subscriber_skipped", "Frames a slow subscriber skipped", registry=r
        )
        self.published = Counter(
            "hidra_ng_receiver_published", "Frames published to live subscribers", registry=r
        )
        self.requests = Counter(
            "hidra_ng_receiver_requests", "API requests served", ["op"], registry=r
        )

    def stream_committed(self, stream: str, messages: int, nbytes: int, last: int) -> None:
        """One commit's messages of ``stream`` (from the ingest thread)."""
        self.messages.labels(stream).inc(messages)
        self.bytes.labels(stream).inc(nbytes)
        self.last_index.labels(stream).set(last)

    def forget_stream(self, stream: str) -> None:
        """Retention emptied ``stream``: its series go."""
        self.stream_series.forget(stream)

    def stream_labels(self) -> list[str]:
        return self.stream_series.streams()


class SenderMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        _build_info(r)
        self.sent = Counter("hidra_ng_sender_sent", "Messages pushed (with resends)", registry=r)
        self.acked = Counter("hidra_ng_sender_acked", "Messages acknowledged", registry=r)
        self.spool_messages = Gauge(
            "hidra_ng_sender_spool_messages", "Messages in the spool", registry=r
        )
        self.spool_bytes = Gauge("hidra_ng_sender_spool_bytes", "Bytes in the spool", registry=r)
        self.receiver_up = Gauge(
            "hidra_ng_sender_receiver_up", "1 while the receiver answers", registry=r
        )

    def track_sources(self, sources: Sequence[object]) -> None:
        """``hidra_ng_sender_source_refused_total{source,reason}``, read at scrape time
        from each source's own ``refusals.counts`` (sources without one have none)."""
        self.registry.register(_SourceRefusals(sources))

    def track_receivers(self, up: Callable[[], dict[str, bool]]) -> None:
        """With a shard map (SPEC §14): ``hidra_ng_sender_receiver_up{receiver}``, one per
        receiver (``up()``: shard name -> answers), instead of the one unlabelled gauge."""
        self.registry.unregister(self.receiver_up)
        self.registry.register(_ReceiversUp(up))


class BridgeMetrics:
    """``hidra-ng bridge`` (SPEC §13)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        _build_info(r)
        s = self.stream_series = StreamSeries()
        self.published = s.track(
            Counter(
                "hidra_ng_bridge_published",
                "Frames the broker confirmed (a finished stream's end message included)",
                ["stream"],
                registry=r,
            )
        )
        self.published_bytes = s.track(
            Counter(
                "hidra_ng_bridge_published_bytes",
                "Message body bytes the broker confirmed",
                ["stream"],
                registry=r,
            )
        )
        self.lag_frames = s.track(
            Gauge(
                "hidra_ng_bridge_lag_frames",
                "Frames stored by the receiver and not yet confirmed by the broker",
                ["stream"],
                registry=r,
            )
        )
        self.gone = s.track(
            Counter(
                "hidra_ng_bridge_gone",
                "Frames removed by the receiver's retention before they were bridged",
                ["stream"],
                registry=r,
            )
        )
        self.broker_up = Gauge(
            "hidra_ng_bridge_broker_up", "1 while the bridge is connected to the broker", registry=r
        )
        self.receiver_up = Gauge(
            "hidra_ng_bridge_receiver_up", "1 while the receiver answers the bridge", registry=r
        )
        self.streams = Gauge(
            "hidra_ng_bridge_streams",
            "hidra_ng streams being bridged (not yet finished)",
            registry=r,
        )


class _ReceiversUp(Collector):
    def __init__(
        self, up: Callable[[], dict[str, bool]], name: str = "hidra_ng_sender_receiver_up"
    ) -> None:
        self.up = up
        self.name = name

    def collect(self):
        family = GaugeMetricFamily(self.name, "1 while the receiver answers", labels=["receiver"])
        for name, up in sorted(self.up().items()):
            family.add_metric([name], 1 if up else 0)
        yield family


class _SourceRefusals(Collector):
    def __init__(self, sources: Sequence[object]) -> None:
        self.sources = sources

    def collect(self):
        family = CounterMetricFamily(
            "hidra_ng_sender_source_refused",
            "Input a source refused (malformed, invalid, ...), by source and reason",
            labels=["source", "reason"],
        )
        for source in self.sources:
            refusals = getattr(source, "refusals", None)
            if refusals is None:
                continue
            for reason, count in sorted(refusals.counts.items()):
                family.add_metric([source.name, reason], count)
        yield family


class WriterMetrics:
    """``hidra-ng write`` (SPEC §15); docs/operations.md lists them."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        _build_info(r)
        self.stream_series = StreamSeries()
        self._declare_output(r)
        self._declare_trouble(r)
        self.announced = Counter(
            "hidra_ng_writer_announced", "Announcements the broker confirmed", registry=r
        )
        self.receiver_up = Gauge(
            "hidra_ng_writer_receiver_up", "1 while the receiver answers", registry=r
        )

    def _declare_output(self, r: CollectorRegistry) -> None:
        s = self.stream_series
        self.files = s.track(
            Counter(
                "hidra_ng_writer_files",
                "Files published complete under their final name",
                ["stream"],
                registry=r,
            )
        )
        self.frames = s.track(
            Counter(
                "hidra_ng_writer_frames",
                "Frames in files published complete",
                ["stream"],
                registry=r,
            )
        )
        self.bytes = s.track(
            Counter(
                "hidra_ng_writer_bytes", "Bytes of files published complete", ["stream"], registry=r
            )
        )
        self.series = s.track(
            Counter(
                "hidra_ng_writer_series",
                "NXmx series completed (master written)",
                ["stream"],
                registry=r,
            )
        )
        self.lag_frames = s.track(
            Gauge(
                "hidra_ng_writer_lag_frames",
                "Frames stored in the receiver but not yet read by the writer",
                ["stream"],
                registry=r,
            )
        )

    def _declare_trouble(self, r: CollectorRegistry) -> None:
        s = self.stream_series
        self.errors = s.track(
            Counter(
                "hidra_ng_writer_errors",
                "Write errors, by stream and reason",
                ["stream", "reason"],
                registry=r,
            )
        )
        self.failed = s.track(
            Gauge(
                "hidra_ng_writer_stream_failed",
                "1 while a stream's writing is stopped by input it cannot write",
                ["stream"],
                registry=r,
            )
        )
        self.disk_full = Gauge(
            "hidra_ng_writer_disk_full", "1 while the output disk is full", registry=r
        )
        self.gone = s.track(
            Counter(
                "hidra_ng_writer_gone",
                "Frames removed by retention before they were written",
                ["stream"],
                registry=r,
            )
        )

    def track_receivers(self, up: Callable[[], dict[str, bool]]) -> None:
        """With a shard map (SPEC §14): ``hidra_ng_writer_receiver_up{receiver}``, one per
        receiver (``up()``: shard name -> answers), instead of the one unlabelled gauge."""
        self.registry.unregister(self.receiver_up)
        self.registry.register(_ReceiversUp(up, "hidra_ng_writer_receiver_up"))


def serve(registry: CollectorRegistry, port: int, addr: str = "0.0.0.0"):
    """Serve ``/metrics`` on ``port``; 0 disables, ``ANY_PORT`` (-1) takes a free port the
    OS chooses (:func:`served_port` tells which). Returns the server (or None)."""
    if not port:
        return None
    # The *_created series of every counter double the series count and no
    # dashboard of ours uses them (process-wide switch, so only when serving).
    disable_created_metrics()
    wanted = 0 if port == ANY_PORT else port
    try:
        server, _thread = start_http_server(wanted, addr=addr, registry=registry)
    except OSError as err:
        what = "any free metrics port" if port == ANY_PORT else f"metrics port {port}"
        raise ConfigError(f"{what} cannot be opened: {err}") from err
    bound = server.server_address[1]
    _served[registry] = bound
    log.info("metrics on http://%s:%d/metrics", addr, bound)
    return server


#: the port each served registry got (weak: a registry that is gone needs none)
_served: weakref.WeakKeyDictionary[CollectorRegistry, int] = weakref.WeakKeyDictionary()


def served_port(registry: CollectorRegistry) -> int:
    """The port ``registry`` is served on by :func:`serve`; 0 when it is not served."""
    return _served.get(registry, 0)
