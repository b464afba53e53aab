"""A Producer over several receivers (SPEC §14): one spool and one link per receiver.

``Producer(shards=PATH, spool_dir=..., sender_id=...)`` makes a
:class:`ShardedProducer`. It holds one ordinary :class:`Producer` per receiver of
the shard map, each with its own spool in ``spool_dir/shard-NAME`` and its own
go-back-N link, and hands each stream's messages to the Producer of the receiver
the map places it on. So every guarantee of one receiver holds per receiver:
a message is durable in that receiver's spool before ``send()`` returns and stays
there until that receiver acknowledged it. A receiver that is down holds up only
its own streams: its spool fills while the others drain. The spool limit is
shared out: each receiver's spool holds at most ``max_spool_bytes / receivers``.
Sequence numbers count per receiver.

The spool directory of a receiver is named after the receiver (the shard's
``name``), not its position in the map, so reordering the map or adding a
receiver keeps what is spooled for each receiver with it.

Splitting a series (``split_parts=K``, ``split_block_images=B``, for the streams
matching ``split_streams``): message ``i`` of stream ``S`` goes to ``S/part-P`` by
blocks of ``B`` (hidra_ng/shards.py has the layout), with ``hidra_split = [i, K, B]``
added to its meta; ``finish(S)`` finishes every part. A call whose images span
several blocks is one commit per block; hidra_ng/sender/split.py keeps such a
call exactly once across a crash between its commits.
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from hidra_ng.errors import ConfigError, ReceiverUnavailable
from hidra_ng.metrics import SenderMetrics
from hidra_ng.patterns import Patterns
from hidra_ng.sender.producer import GiB, Producer
from hidra_ng.sender.split import SplitSender
from hidra_ng.sender.spool import Checkpoints
from hidra_ng.shards import ShardMap, SplitLayout, load_shard_map, part_name, split_name
from hidra_ng.wire import protocol as proto
from hidra_ng.wire.frames import Data

log = logging.getLogger(__name__)

_STAMP = struct.Struct(">Q")  # orders a source's checkpoints across the receivers' spools
SPOOL_PREFIX = "shard-"


class ShardedProducer(Producer):
    """``Producer(shards=...)``: the same API, each stream sent to its own receiver."""

    def __init__(
        self,
        ingest: str = "",
        api: str = "",
        spool_dir: str | os.PathLike[str] = "",
        sender_id: str = "",
        *,
        shards: str | os.PathLike[str] | ShardMap | None = None,
        split_parts: int = 1,
        split_block_images: int = 1,
        split_streams: Sequence[str] = ("**",),
        max_spool_bytes: int = 16 * GiB,
        metrics: SenderMetrics | None = None,
        **options: Any,
    ) -> None:
        # ingest and api (a sender config always has them) give way to the map's
        if shards is None:
            raise ConfigError("ShardedProducer needs shards=PATH, a shard map file")
        self.map = load_shard_map(shards)
        if not str(spool_dir):
            raise ConfigError("spool_dir='': expected the directory of the spools")
        proto.check_sender_id(sender_id)
        try:
            self.layout = SplitLayout(split_parts, split_block_images)
            self.split_streams = Patterns(split_streams)
        except Exception as err:
            raise ConfigError(str(err)) from None
        self.sender_id = sender_id
        self.ingest = ", ".join(s.ingest for s in self.map.shards)
        self.api = ", ".join(s.api for s in self.map.shards)
        self.metrics = metrics
        self.max_spool_bytes = max(1, max_spool_bytes // len(self.map.shards))
        self._closed = False
        self._locks_lock = threading.Lock()
        self._stamp = 0
        root = Path(spool_dir)
        #: one Producer per receiver, by shard name
        self.links = self._open_links(root, metrics, options)
        first = next(iter(self.links.values()))
        # the same settings in every link; sources read these
        self.send_timeout = first.send_timeout
        self.max_message_bytes = first.max_message_bytes
        self.max_meta_bytes = first.max_meta_bytes
        self.compression = first.compression
        self.keys = first.keys
        self.split = SplitSender(self.layout, self.link, self.links.values, self.max_meta_bytes)
        self._warn_orphans(root)

    def _open_links(
        self, root: Path, metrics: SenderMetrics | None, options: dict[str, Any]
    ) -> dict[str, Producer]:
        """A Producer per shard, each with its spool under ``root``; all or none."""
        links: dict[str, Producer] = {}
        try:
            for shard in self.map.shards:
                links[shard.name] = Producer(
                    shard.ingest,
                    shard.api,
                    root / f"{SPOOL_PREFIX}{shard.name}",
                    self.sender_id,
                    max_spool_bytes=self.max_spool_bytes,
                    metrics=metrics,
                    **options,
                )
        except BaseException:
            for link in links.values():
                link.close()
            raise
        return links

    def _warn_orphans(self, root: Path) -> None:
        for path in sorted(root.glob(SPOOL_PREFIX + "*")):
            if path.name[len(SPOOL_PREFIX) :] not in self.links:
                log.warning(
                    "spool %s belongs to a receiver that is not in %s; its unacknowledged"
                    " messages are not sent until that receiver is back in the map",
                    path,
                    self.map.origin,
                )

    def link(self, stream: str) -> Producer:
        """The Producer of the receiver that holds ``stream``."""
        return self.links[self.map.place(stream).name]

    # ----------------------------------------------------------------- sending

    def send_many(
        self,
        stream: str,
        items: Iterable[tuple[Data, dict[str, Any] | None]],
        *,
        checkpoint: Checkpoints = None,
    ) -> list[int]:
        """Spool messages for ``stream`` on its receiver's spool; seqs count per receiver.

        A split series: after a crash (or an error) inside a call that spanned
        several blocks, the messages that call had spooled are recognized when the
        caller sends them again, and not spooled twice; their seq is -1
        (hidra_ng/sender/split.py).
        """
        self._check_open()
        proto.check_stream_name(stream)
        points = self._stamped(checkpoint)
        if self.splits(stream):
            return self.split.send(stream, list(items), points)
        return self.link(stream).send_many(stream, items, checkpoint=points)

    def splits(self, stream: str) -> bool:
        """True if ``stream`` is split into parts (never a part itself)."""
        return (
            self.layout.parts > 1 and split_name(stream)[1] is None and self.split_streams(stream)
        )

    def finish(self, stream: str) -> int:
        """Mark ``stream`` finished (a split series: every part); returns the last seq."""
        self._check_open()
        proto.check_stream_name(stream)
        if self.splits(stream):
            self.split.finish(stream)
            seqs = [
                self.link(part_name(stream, p)).finish(part_name(stream, p))
                for p in range(self.layout.parts)
            ]
            return seqs[-1]
        return self.link(stream).finish(stream)

    def _stamped(self, checkpoint: Checkpoints) -> list[tuple[str, bytes]]:
        """A source's checkpoints with a stamp: the newest wins across the spools."""
        if checkpoint is None:
            return []
        points = [checkpoint] if isinstance(checkpoint, tuple) else checkpoint
        with self._locks_lock:
            self._stamp = max(time.time_ns(), self._stamp + 1)
            stamp = _STAMP.pack(self._stamp)
        return [(name, stamp + value) for name, value in points]

    def checkpoint(self, name: str) -> bytes | None:
        """A source's newest position, whichever receiver's spool holds it."""
        found = [link.checkpoint(name) for link in self.links.values()]
        stamped = [v for v in found if v is not None and len(v) >= _STAMP.size]
        if not stamped:
            return None
        return max(stamped, key=lambda v: _STAMP.unpack(v[: _STAMP.size])[0])[_STAMP.size :]

    def interrupt(self) -> None:
        for link in self.links.values():
            link.interrupt()

    # ------------------------------------------------------------------ status

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every receiver acknowledged everything spooled for it."""
        self._check_open()
        deadline = time.monotonic() + timeout
        late = []
        for name, link in self.links.items():
            try:
                link.flush(max(0.0, deadline - time.monotonic()))
            except ReceiverUnavailable as err:
                late.append(f"{name}: {err}")
        if late:
            raise ReceiverUnavailable(
                f"{len(late)} of {len(self.links)} receivers did not acknowledge everything"
                f" within {timeout} s; " + "; ".join(late)
            )

    @property
    def receiver_up(self) -> bool:
        return all(link.receiver_up for link in self.links.values())

    @property
    def receivers_up(self) -> dict[str, bool]:
        """Each receiver (by shard name): True while it answers."""
        return {name: link.receiver_up for name, link in self.links.items()}

    @property
    def link_alive(self) -> bool:
        return all(link.link_alive for link in self.links.values())

    @property
    def spool_messages(self) -> int:
        return sum(link.spool_messages for link in self.links.values())

    @property
    def spool_bytes(self) -> int:
        return sum(link.spool_bytes for link in self.links.values())

    @property
    def stats(self) -> dict[str, int]:
        total = {"sent": 0, "acked": 0, "probes": 0}
        for link in self.links.values():
            for key, value in link.stats.items():
                total[key] += value
        return total

    @property
    def acked_seq(self) -> int:
        raise ConfigError("acked_seq counts per receiver with shards; use acked_seqs")

    def acked_seq_of(self, stream: str) -> int:
        """Highest seq acknowledged by ``stream``'s receiver (seqs count per receiver)."""
        if self.splits(stream):
            raise ConfigError(
                f"stream {stream!r} is split over several receivers, each with its own seqs;"
                " ask acked_seqs per receiver"
            )
        return self.link(stream).acked_seq

    @property
    def acked_seqs(self) -> dict[str, int]:
        """Highest seq each receiver acknowledged (with every seq below it), by shard name."""
        return {name: link.acked_seq for name, link in self.links.items()}

    # ------------------------------------------------------------------- close

    def close(self) -> None:
        """Stop every link and close every spool; unacknowledged messages stay spooled."""
        if self._closed:
            return
        self._closed = True
        for link in self.links.values():
            link.close()

    def __enter__(self) -> ShardedProducer:
        return self
