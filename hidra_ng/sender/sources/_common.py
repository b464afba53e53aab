"""What the sources share: URI parameters, checkpoint keys, JSON-able meta, refusals, spooling."""

from __future__ import annotations

import base64
import collections
import datetime
import hashlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import zmq

from hidra_ng.errors import ConfigError, HidraError, InvalidInput, SpoolFull
from hidra_ng.sender.producer import Producer
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)

Item = tuple[str, Any, dict[str, Any] | None]  # (stream, data, meta)

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


class Params:
    """A source URI's query parameters, read with types; errors name the URI and key."""

    def __init__(self, uri: str, params: dict[str, str], known: Iterable[str], usage: str) -> None:
        self.uri = uri
        self.params = params
        self.usage = usage
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ConfigError(f"source {uri!r}: unknown parameter {unknown[0]!r}; expected {usage}")

    def _fail(self, key: str, expected: str) -> ConfigError:
        return ConfigError(
            f"source {self.uri!r}: {key}={self.params[key]!r} is not valid; expected {expected}"
        )

    def text(self, key: str, default: str) -> str:
        return self.params.get(key, default)

    def stream(self, default: str) -> str:
        try:
            return proto.check_stream_name(self.params.get("stream", default))
        except InvalidInput as err:
            raise ConfigError(f"source {self.uri!r}: {err}") from None

    def number(self, key: str, default: float, *, minimum: float = 0.0) -> float:
        if key not in self.params:
            return default
        try:
            value = float(self.params[key])
        except ValueError:
            raise self._fail(key, f"a number >= {minimum:g}") from None
        if not math.isfinite(value) or value < minimum:
            raise self._fail(key, f"a number >= {minimum:g}")
        return value

    def flag(self, key: str, default: bool) -> bool:
        if key not in self.params:
            return default
        value = self.params[key].lower()
        if value not in _TRUE | _FALSE:
            raise self._fail(key, "1 or 0 (true or false)")
        return value in _TRUE

    def choice(self, key: str, default: str, choices: Sequence[str]) -> str:
        value = self.params.get(key, default)
        if value not in choices:
            raise self._fail(key, "one of " + ", ".join(choices))
        return value


def checkpoint_key(kind: str, *identity: str) -> str:
    """A short, fixed-length checkpoint name for what identifies a source's position."""
    digest = hashlib.sha256("\0".join(identity).encode()).hexdigest()[:32]
    return f"{kind}:{digest}"


def safe_segment(name: str) -> str:
    """``name`` as one stream-name segment: other characters become '_'."""
    out = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "._-") else "_" for ch in name)
    return out or "_"


# ------------------------------------------------------------------ meta


def jsonable(value: Any) -> Any:
    """A value decoded from CBOR or JSON turned into something JSON encodes faithfully."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return {"base64": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, np.generic):
        return jsonable(value.item())
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    tag = getattr(value, "tag", None)
    if isinstance(tag, int):  # an unknown CBOR tag
        return {"cbor_tag": tag, "value": jsonable(getattr(value, "value", None))}
    return repr(value)


def fit_meta(meta: dict[str, Any], limit: int, big: Sequence[str] = ("user_data",)) -> dict:
    """``meta`` reduced until its JSON fits ``limit`` bytes; dropped keys are named in it."""
    if len(_encode(meta)) <= limit:
        return meta
    out = dict(meta)
    dropped: list[str] = []
    candidates = [k for k in big if k in out]
    candidates += sorted(
        (k for k in out if k not in big), key=lambda k: len(_encode({k: out[k]})), reverse=True
    )
    for key in candidates:
        dropped.append(key)
        del out[key]
        out["dropped_meta"] = dropped
        if len(_encode(out)) <= limit:
            break
    log.warning("meta of %d bytes exceeds %d; dropped %s", len(_encode(meta)), limit, dropped)
    return out


def _encode(meta: dict[str, Any]) -> bytes:
    return proto.encode_meta(meta, max_meta_bytes=1 << 62)


# ------------------------------------------------------------- refusals


class Refusals:
    """Counts input a source refused, by reason, and logs the first few of each reason.

    When a source has refused every message for ``all_refused_after`` seconds (a
    detector firmware the source does not understand), it logs one warning
    ``every message refused: ...`` naming the reasons; an accepted message
    (:meth:`accept`) ends that run and arms the warning again.
    """

    LOGGED_PER_REASON = 20
    ALL_REFUSED_AFTER = 60.0

    def __init__(
        self,
        source: str,
        *,
        all_refused_after: float = ALL_REFUSED_AFTER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.source = source
        self.counts: collections.Counter[str] = collections.Counter()
        self.all_refused_after = all_refused_after
        self._clock = clock
        self._lock = threading.Lock()
        self._run: collections.Counter[str] = collections.Counter()  # since the last accepted
        self._run_since: float | None = None
        self._warned = False
        self.all_refused_warnings = 0

    def accept(self) -> None:
        """A message was used: the run of refusals (if any) is over."""
        with self._lock:
            if self._run_since is not None:
                self._run.clear()
                self._run_since = None
                self._warned = False

    def refuse(self, reason: str, detail: str) -> None:
        now = self._clock()
        with self._lock:
            self.counts[reason] += 1
            n = self.counts[reason]
            self._run[reason] += 1
            if self._run_since is None:
                self._run_since = now
            warn = not self._warned and now - self._run_since >= self.all_refused_after
            if warn:
                self._warned = True
                self.all_refused_warnings += 1
                reasons = ", ".join(f"{r} x{c}" for r, c in self._run.most_common())
                seconds = now - self._run_since
        if warn:
            log.warning(
                "source %s: every message refused: %d messages in %.0f s, none used (%s); last: %s",
                self.source,
                sum(self._run.values()),
                seconds,
                reasons,
                detail,
            )
        if n <= self.LOGGED_PER_REASON or n % 1000 == 0:
            log.warning(
                "source %s refused a message (%s, %d so far): %s", self.source, reason, n, detail
            )

    @property
    def total(self) -> int:
        return sum(self.counts.values())


# -------------------------------------------------------------- spooling


def spool(
    producer: Producer,
    stream: str,
    items: Sequence[tuple[Any, dict[str, Any] | None]],
    stop: threading.Event,
    checkpoint: tuple[str, bytes] | None = None,
) -> list[int] | None:
    """``send_many`` that waits out a full spool; None if ``stop`` came first.

    Input taken from a socket cannot be asked for again, so a full spool must
    not make the source drop what it already holds.
    """
    while True:
        try:
            return producer.send_many(stream, items, checkpoint=checkpoint)
        except SpoolFull as err:
            if stop.is_set():
                what = f"{len(items)} messages for {stream!r}"
                log.error("stopping with %s not spooled: %s", what, err)
                return None
            log.warning("spool full, still holding %d messages for %r: %s", len(items), stream, err)


def spool_items(
    producer: Producer,
    items: Sequence[Item],
    stop: threading.Event,
    refusals: Refusals,
    checkpoint: tuple[str, bytes] | None = None,
) -> bool:
    """Spool items of several streams in order, one commit per run of one stream.

    The checkpoint goes with the last commit. A commit the Producer refuses
    (bad data) is retried message by message so one bad message costs only
    itself. Returns False if ``stop`` came before everything was spooled.
    """
    runs: list[tuple[str, list[tuple[Any, dict[str, Any] | None]]]] = []
    for stream, data, meta in items:
        if runs and runs[-1][0] == stream:
            runs[-1][1].append((data, meta))
        else:
            runs.append((stream, [(data, meta)]))
    for i, (stream, batch) in enumerate(runs):
        last = checkpoint if i == len(runs) - 1 else None
        try:
            if spool(producer, stream, batch, stop, last) is None:
                return False
        except HidraError:
            for j, one in enumerate(batch):
                point = last if j == len(batch) - 1 else None
                try:
                    if spool(producer, stream, [one], stop, point) is None:
                        return False
                except HidraError as err:
                    refusals.refuse(type(err).__name__, f"stream {stream!r}: {err}")
    return True


def receive_batch(
    sock: zmq.Socket, timeout: float, max_messages: int, max_bytes: int
) -> list[list[zmq.Frame]]:
    """Messages ready on ``sock``: waits up to ``timeout`` s for the first, not for more."""
    out: list[list[zmq.Frame]] = []
    if not sock.poll(timeout * 1000):  # type: ignore[arg-type]  # ms, a float is fine
        return out
    size = 0
    while len(out) < max_messages and size < max_bytes:
        try:
            frames = sock.recv_multipart(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            break
        out.append(frames)
        size += sum(len(f.buffer) for f in frames)
    return out
