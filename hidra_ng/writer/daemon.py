"""``hidra-ng write``: the daemon that turns matching streams into files (SPEC §15).

A discovery loop lists the receiver's streams every second (with a shard map,
SPEC §14: every receiver's, each stream then read from its own receiver), starts a
:class:`StreamWriter` thread for every stream that matches the patterns (also
streams created later) and updates the lag gauges. One writer per output
directory: a lock file (``DIR/.hidra-ng-writer.lock``) refuses a second one.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
from pathlib import Path

from hidra_ng.client.consumer import Consumer
from hidra_ng.client.sharded import ShardedConsumer
from hidra_ng.config import WriterConfig
from hidra_ng.errors import ConfigError, HidraError, ReceiverUnavailable
from hidra_ng.metrics import WriterMetrics, serve
from hidra_ng.patterns import Patterns
from hidra_ng.shards import load_shard_map
from hidra_ng.wire.protocol import StreamInfo
from hidra_ng.writer.announce import Announcer
from hidra_ng.writer.formats import Options, Published
from hidra_ng.writer.stream import Hooks, StreamWriter

log = logging.getLogger(__name__)

DISCOVER_SECONDS = 1.0
DISCOVER_TIMEOUT = 3.0  # with a shard map: how long discovery waits for each receiver, s
HANG_SECONDS = 120.0  # a loop silent this long counts as hung (watchdog)
LOCK_FILE = ".hidra-ng-writer.lock"


def check_output_dir(path: Path) -> Path:
    """Create ``path`` if needed and check that this user can write in it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(f"output directory {path} cannot be created: {err.strerror}") from None
    if not path.is_dir():
        raise ConfigError(f"output directory {path} is not a directory")
    probe = path / f".hidra-ng-writer-probe-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(
            f"output directory {path} is not writable by this user (uid {os.getuid()}):"
            f" {err.strerror}"
        ) from None
    return path


class WriterDaemon:
    """Runs under :func:`hidra_ng.service.run`: start, alive, status, stop."""

    def __init__(self, settings: WriterConfig) -> None:
        self.settings = settings
        # SPEC §14: the streams of every receiver of the map, each read from its own
        self.shard_map = load_shard_map(settings.shards) if settings.shards else None
        self.patterns = Patterns(settings.streams)
        self.root = check_output_dir(Path(settings.dir))
        self._lock_fd = self._lock()
        self.metrics = WriterMetrics()
        self._up: dict[str, bool] = {}  # receiver (shard name) -> answered the last listing
        if self.shard_map is not None:
            self._up = {shard.name: False for shard in self.shard_map.shards}
            self.metrics.track_receivers(lambda: dict(self._up))
        self.options = Options(
            frames_per_file=settings.frames_per_file,
            name_pattern=settings.name_pattern,
            instrument_name=settings.instrument_name,
            source_name=settings.source_name,
            file_idle_seconds=settings.file_idle_seconds,
        )
        self.announcer = (
            Announcer(settings.amqp, settings.queue, settings.recipes) if settings.amqp else None
        )
        self.stop_event = threading.Event()
        self.writers: dict[str, StreamWriter] = {}
        self._beats: dict[str, float] = {}
        self._disk_full: set[str] = set()
        self._totals = {"files": 0, "frames": 0}
        self._server = serve(self.metrics.registry, settings.metrics_port)
        self._thread = threading.Thread(target=self._discover, name="writer discovery", daemon=True)

    def _lock(self) -> int:
        path = self.root / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise ConfigError(
                f"another hidra-ng write (pid {owner}) writes to {self.root}; one writer per"
                " output directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    def consumer(self, request_timeout: float = 10.0) -> Consumer:
        s = self.settings
        return Consumer(
            s.api,
            request_timeout=request_timeout,
            keys_dir=s.keys_dir or None,
            server_key_dir=s.server_key_dir or None,
            shards=self.shard_map,
        )

    # ------------------------------------------------------------- hooks

    def _published(self, stream: str, done: Published) -> None:
        m = self.metrics
        m.files.labels(stream).inc(len(done.files))
        m.frames.labels(stream).inc(done.frames)
        m.bytes.labels(stream).inc(done.bytes)
        self._totals["files"] += len(done.files)
        self._totals["frames"] += done.frames
        if done.announce is not None:
            if done.announce.get("format") == "nxmx":
                m.series.labels(stream).inc()
            if self.announcer is not None:
                m.announced.inc()

    def _error(self, stream: str, reason: str, message: str) -> None:
        self.metrics.errors.labels(stream, reason).inc()
        if reason not in ("disk_full", "io", "announce"):
            self.metrics.failed.labels(stream).set(1)

    def _set_disk_full(self, stream: str, full: bool) -> None:
        (self._disk_full.add if full else self._disk_full.discard)(stream)
        self.metrics.disk_full.set(1 if self._disk_full else 0)

    def _beat(self, name: str) -> None:
        self._beats[name] = time.monotonic()

    def _gone(self, stream: str, count: int) -> None:
        self.metrics.gone.labels(stream).inc(count)

    # --------------------------------------------------------- discovery

    def _discover(self) -> None:
        hooks = Hooks(self._published, self._error, self._set_disk_full, self._beat, self._gone)
        consumer: Consumer | None = None
        try:
            while not self.stop_event.is_set():
                self._beat("discovery")
                try:
                    if consumer is None:
                        # with a shard map, a receiver that does not answer holds up the
                        # discovery of the others' new streams for at most this long
                        consumer = self.consumer(
                            DISCOVER_TIMEOUT if self.shard_map is not None else 10.0
                        )
                    infos = self._list(consumer)
                    self.metrics.receiver_up.set(1)
                except HidraError as err:
                    self.metrics.receiver_up.set(0)
                    log.warning("receiver at %s: %s", consumer.api if consumer else "?", err)
                    if consumer is not None:
                        consumer.close()
                        consumer = None
                    self.stop_event.wait(DISCOVER_SECONDS)
                    continue
                for info in infos:
                    if info.name not in self.writers and self.patterns(info.name):
                        self._start_writer(info.name, hooks)
                    w = self.writers.get(info.name)
                    if w is not None and info.last is not None:
                        self.metrics.lag_frames.labels(info.name).set(
                            max(0, info.last - max(w.read_index, w.next_index - 1))
                        )
                self.stop_event.wait(DISCOVER_SECONDS)
        finally:
            if consumer is not None:
                consumer.close()

    def _list(self, consumer: Consumer) -> list[StreamInfo]:
        """The streams of the receiver; with a shard map, of every receiver that answers
        (one that does not delays only its own streams; its receiver_up is 0)."""
        if not isinstance(consumer, ShardedConsumer):
            return consumer.streams()
        answered, down = consumer.streams_answered()
        for name in self._up:
            up = name not in down
            if not up and self._up[name]:
                log.warning("receiver %s: %s", name, down[name])
            self._up[name] = up
        if len(down) == len(consumer.receivers):
            raise ReceiverUnavailable("; ".join(f"{n}: {e}" for n, e in down.items()))
        return [info for _, info in answered]

    def _start_writer(self, stream: str, hooks: Hooks) -> None:
        try:
            writer = StreamWriter(
                stream,
                self.root,
                self.settings.format,
                self.options,
                self.consumer,
                hooks,
                self.stop_event,
                self.announcer,
            )
        except HidraError as err:
            log.error("stream %s cannot be written: %s", stream, err)
            self.metrics.errors.labels(stream, "stream_name").inc()
            self.metrics.failed.labels(stream).set(1)
            self.writers[stream] = None  # type: ignore[assignment]  # never again
            return
        log.info("writing stream %s as %s to %s", stream, self.settings.format, writer.directory)
        self.writers[stream] = writer
        self.metrics.failed.labels(stream).set(0)
        writer.thread.start()

    # ------------------------------------------------------ Daemon protocol

    def start(self) -> None:
        self._thread.start()

    def alive(self) -> bool:
        if not self._thread.is_alive():
            return False
        now = time.monotonic()
        running = {"discovery"} | {
            name for name, w in self.writers.items() if w is not None and w.thread.is_alive()
        }
        return all(now - self._beats.get(name, now) <= HANG_SECONDS for name in running)

    def status(self) -> str:
        active = [w for w in self.writers.values() if w is not None]
        failed = sum(1 for w in active if w.failed)
        full = " DISK FULL" if self._disk_full else ""
        return (
            f"{len(active)} streams ({failed} stopped by errors), {self._totals['files']} files,"
            f" {self._totals['frames']} frames written{full}"
        )

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=10)
        for w in list(self.writers.values()):
            if w is not None:
                w.thread.join(timeout=20)
        if self.announcer is not None:
            self.announcer.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._server.shutdown()
        os.close(self._lock_fd)

    def __enter__(self) -> WriterDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
