"""``simulate:`` frames with realistic Poisson photon counts at a given rate.

``simulate:?shape=2048x1024&dtype=uint16&rate=100&count=1000&stream=sim&mean=2&seed=0``

A few frames are drawn once from a Poisson distribution (mean ``mean`` counts
per pixel) and then sent in turn, so the source can run at GB/s; each frame's
meta carries its ``frame`` number. ``rate=0`` sends as fast as the spool takes
them; ``count=0`` runs until stopped. The number of frames sent is the
checkpoint: a restarted source continues with the next frame number.
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass

import numpy as np

from hidra_ng.errors import ConfigError
from hidra_ng.sender.producer import Producer
from hidra_ng.wire.protocol import check_stream_name

_COUNT = struct.Struct(">Q")
POOL = 4


@dataclass
class SimulateSource:
    name: str
    stream: str = "sim"
    shape: tuple[int, ...] = (2048, 1024)
    dtype: str = "uint16"
    rate: float = 100.0
    count: int = 1000
    mean: float = 2.0
    seed: int = 0

    @classmethod
    def from_params(cls, uri: str, target: str, params: dict[str, str]) -> SimulateSource:
        known = {"shape", "dtype", "rate", "count", "stream", "mean", "seed"}
        unknown = set(params) - known
        if target or unknown:
            what = f"parameter {sorted(unknown)[0]!r}" if unknown else f"target {target!r}"
            raise ConfigError(
                f"source {uri!r}: unknown {what}; expected simulate:?shape=HxW&dtype=uint16"
                "&rate=HZ&count=N&stream=NAME&mean=COUNTS&seed=N"
            )
        src = cls(name=uri)
        try:
            if "shape" in params:
                src.shape = tuple(int(n) for n in params["shape"].lower().split("x"))
            src.dtype = params.get("dtype", src.dtype)
            np.dtype(src.dtype)
            src.rate = float(params.get("rate", src.rate))
            src.count = int(params.get("count", src.count))
            src.mean = float(params.get("mean", src.mean))
            src.seed = int(params.get("seed", src.seed))
        except (ValueError, TypeError) as err:
            raise ConfigError(f"source {uri!r}: {err}") from None
        src.stream = check_stream_name(params.get("stream", src.stream))
        if not src.shape or any(n <= 0 for n in src.shape) or src.rate < 0 or src.count < 0:
            raise ConfigError(
                f"source {uri!r}: shape {src.shape}, rate {src.rate} and count {src.count}"
                " must be positive (rate and count may be 0: unlimited)"
            )
        return src

    def frames(self) -> list[np.ndarray]:
        rng = np.random.default_rng(self.seed)
        info = np.iinfo(self.dtype) if np.dtype(self.dtype).kind in "iu" else None
        pool = []
        for _ in range(POOL):
            counts = rng.poisson(self.mean, self.shape)
            if info is not None:
                counts = np.minimum(counts, info.max)
            pool.append(counts.astype(self.dtype))
        return pool

    def run(self, producer: Producer, stop: threading.Event) -> None:
        saved = producer.checkpoint(self.name)
        sent = _COUNT.unpack(saved)[0] if saved else 0
        pool = self.frames()
        period = 1.0 / self.rate if self.rate else 0.0
        next_time = time.monotonic()
        while not stop.is_set() and (self.count == 0 or sent < self.count):
            if period:
                delay = next_time - time.monotonic()
                if delay > 0 and stop.wait(delay):
                    break
                next_time = max(next_time + period, time.monotonic() - period)
            frame = pool[sent % POOL]
            meta = {"frame": sent, "source": "simulate"}
            producer.send_many(
                self.stream, [(frame, meta)], checkpoint=(self.name, _COUNT.pack(sent + 1))
            )
            sent += 1
