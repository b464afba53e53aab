"""``hdf5:`` replay a recorded series from an HDF5 file, frame by frame, then stop.

``hdf5:/data/scan_0001_master.h5?dataset=/entry/data/data&stream=p11/scan_0001``

Frames are the slices along the first axis of ``dataset`` (default
``/entry/data/data``, at least 2-D), sent in order with meta ``{"file",
"dataset", "frame"}``. Chunks already compressed with the bitshuffle/LZ4 or LZ4
HDF5 filter, one frame per chunk (DECTRIS files), are sent as they are stored
(codec ``bslz4`` or ``lz4-hdf5``); other frames are read decoded and compressed
by the Producer as configured. ``rate=HZ`` paces the replay (default: as fast as
the spool takes it); ``finish=1`` finishes the stream after the last frame.

When every frame is spooled the source is done: it returns, the sender daemon
logs that and keeps running its other sources (``hidra-ng sender
--exit-when-done`` exits once everything is acknowledged). The number of frames
spooled is the checkpoint, written in the same commit as the frames: a
restarted daemon continues with the next frame, and a source that already
replayed the whole file sends nothing again.
"""

from __future__ import annotations

import logging
import math
import os
import struct
import threading
import time
from dataclasses import dataclass

from hidra_ng.errors import ConfigError
from hidra_ng.sender.producer import Producer
from hidra_ng.sender.sources._common import Params, checkpoint_key, spool
from hidra_ng.wire.compression import Encoded

log = logging.getLogger(__name__)

_COUNT = struct.Struct(">Q")
BATCH_FRAMES = 64
BATCH_BYTES = 64 << 20
BSHUF_FILTER, LZ4_FILTER = 32008, 32004
USAGE = "hdf5:/path/file.h5?dataset=/entry/data/data&stream=NAME&rate=HZ&finish=0|1"


def stored_codec(dataset) -> str | None:
    """'bslz4' or 'lz4-hdf5' if each frame is one chunk in that filter's framing."""
    if dataset.chunks is None or tuple(dataset.chunks) != (1, *dataset.shape[1:]):
        return None
    plist = dataset.id.get_create_plist()
    if plist.get_nfilters() != 1:
        return None
    code, _flags, values, _name = plist.get_filter(0)
    if code == BSHUF_FILTER and len(values) >= 5 and values[4] == 2:
        if len(values) >= 3 and values[2] not in (0, dataset.dtype.itemsize):
            return None  # shuffled with another element size than the pixels'
        return "bslz4"
    if code == LZ4_FILTER:
        return "lz4-hdf5"
    return None


@dataclass
class Hdf5Source:
    name: str
    path: str
    dataset: str = "/entry/data/data"
    stream: str = "hdf5"
    rate: float = 0.0
    finish: bool = False

    def __post_init__(self) -> None:
        self.sent = 0

    @classmethod
    def from_params(cls, uri: str, target: str, params: dict[str, str]) -> Hdf5Source:
        p = Params(uri, params, {"dataset", "stream", "rate", "finish"}, USAGE)
        if not target:
            raise ConfigError(f"source {uri!r} names no file; expected {USAGE}")
        return cls(
            name=uri,
            path=os.path.abspath(target),
            dataset=p.text("dataset", "/entry/data/data"),
            stream=p.stream("hdf5"),
            rate=p.number("rate", 0.0),
            finish=p.flag("finish", False),
        )

    @property
    def checkpoint_name(self) -> str:
        return checkpoint_key("hdf5", self.path, self.dataset, self.stream)

    def run(self, producer: Producer, stop: threading.Event) -> None:
        import h5py
        import hdf5plugin  # noqa: F401  registers the compression filters with HDF5

        saved = producer.checkpoint(self.checkpoint_name)
        self.sent = _COUNT.unpack(saved)[0] if saved else 0
        try:
            f = h5py.File(self.path, "r")
        except OSError as err:
            raise ConfigError(f"source {self.name!r}: cannot open {self.path}: {err}") from err
        with f:
            dset = f.get(self.dataset)
            if not isinstance(dset, h5py.Dataset):
                raise ConfigError(
                    f"source {self.name!r}: {self.path} has no dataset {self.dataset!r}"
                )
            if dset.ndim < 2 or dset.dtype.kind not in "biufc" or dset.dtype.fields:
                raise ConfigError(
                    f"source {self.name!r}: dataset {self.dataset!r} has shape {dset.shape} and"
                    f" dtype {dset.dtype}; expected numeric frames along the first axis"
                )
            total = dset.shape[0]
            if self.sent:
                log.info("source %s: resuming at frame %d of %d", self.name, self.sent, total)
            self._replay(producer, stop, dset, total)
        if self.sent >= total and self.finish and not stop.is_set():
            producer.finish(self.stream)
        log.info("source %s: replayed %d frames of %s", self.name, self.sent, self.path)

    def _replay(self, producer: Producer, stop: threading.Event, dset, total: int) -> None:
        codec = stored_codec(dset)
        frame_bytes = max(1, dset.dtype.itemsize * math.prod(dset.shape[1:]))
        per_batch = 1 if self.rate else max(1, min(BATCH_FRAMES, BATCH_BYTES // frame_bytes))
        period = 1.0 / self.rate if self.rate else 0.0
        next_time = time.monotonic()
        while self.sent < total and not stop.is_set():
            if period:
                delay = next_time - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    return
                next_time = max(next_time + period, time.monotonic() - period)
            stop_at = min(total, self.sent + per_batch)
            items = [
                (self._frame(dset, i, codec), self._meta(i)) for i in range(self.sent, stop_at)
            ]
            point = (self.checkpoint_name, _COUNT.pack(stop_at))
            if spool(producer, self.stream, items, stop, point) is None:
                return
            self.sent = stop_at

    def _frame(self, dset, i: int, codec: str | None):
        if codec is not None:
            offset = (i,) + (0,) * (dset.ndim - 1)
            try:
                mask, chunk = dset.id.read_direct_chunk(offset)
            except (OSError, KeyError, ValueError):  # not allocated: the fill value
                mask, chunk = 1, b""
            if mask == 0:
                return Encoded(chunk, dset.dtype.str, tuple(dset.shape[1:]), codec)
        return dset[i]

    def _meta(self, i: int) -> dict:
        return {"file": self.path, "dataset": self.dataset, "frame": i}
