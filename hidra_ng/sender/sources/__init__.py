"""Sources feed a sender daemon's Producer: each runs in its own thread.

A source is given by a URI, ``KIND:TARGET?key=value&...`` (SPEC §5), e.g.
``simulate:?shape=2048x1024&dtype=uint16&rate=100&count=1000&stream=sim``.
Kinds (docs/sources.md): ``simulate`` (Poisson frames), ``watch`` (files that
appear in a directory), ``hdf5`` (replay a recorded series), ``dectris``
(DECTRIS SIMPLON Stream V2), ``dectris1`` (Stream V1) and ``zmq`` (frames
pushed by local software).
Each source keeps its position in the Producer's spool (a checkpoint written
in the same commit as the messages), so a restarted daemon resumes where it
stopped: sources that can read again (simulate, watch, hdf5) send nothing twice
and skip nothing; the PULL sources (dectris, dectris1, zmq) lose nothing they spooled and
at most their small receive queue on a kill (see docs/sources.md).
"""

from __future__ import annotations

import threading
import urllib.parse
from collections.abc import Callable
from typing import Protocol

from hidra_ng.errors import ConfigError
from hidra_ng.sender.producer import Producer


class Source(Protocol):
    name: str  # unique per daemon: the checkpoint key

    def run(self, producer: Producer, stop: threading.Event) -> None:
        """Feed ``producer`` until done or ``stop`` is set."""


def parse(uri: str) -> Source:
    """Build a source from its URI; a bad URI is a ConfigError naming it."""
    kind, sep, rest = uri.partition(":")
    if not sep:
        raise ConfigError(f"source {uri!r} has no kind; expected e.g. 'simulate:?count=100'")
    factory = _KINDS.get(kind)
    if factory is None:
        raise ConfigError(
            f"source {uri!r} has unknown kind {kind!r}; expected one of {', '.join(sorted(_KINDS))}"
        )
    target, _, query = rest.partition("?")
    params: dict[str, str] = {}
    for key, values in urllib.parse.parse_qs(query, keep_blank_values=True).items():
        if len(values) != 1:
            raise ConfigError(f"source {uri!r} gives {key!r} {len(values)} times; give it once")
        params[key] = values[0]
    return factory(uri, target, params)


def _simulate(uri: str, target: str, params: dict[str, str]) -> Source:
    from hidra_ng.sender.sources.simulate import SimulateSource

    return SimulateSource.from_params(uri, target, params)


def _watch(uri: str, target: str, params: dict[str, str]) -> Source:
    from hidra_ng.sender.sources.watch import WatchSource

    return WatchSource.from_params(uri, target, params)


def _hdf5(uri: str, target: str, params: dict[str, str]) -> Source:
    from hidra_ng.sender.sources.hdf5 import Hdf5Source

    return Hdf5Source.from_params(uri, target, params)


def _dectris(uri: str, target: str, params: dict[str, str]) -> Source:
    from hidra_ng.sender.sources.dectris import DectrisSource

    return DectrisSource.from_params(uri, target, params)


def _dectris1(uri: str, target: str, params: dict[str, str]) -> Source:
    from hidra_ng.sender.sources.dectris1 import Dectris1Source

    return Dectris1Source.from_params(uri, target, params)


def _zmq(uri: str, target: str, params: dict[str, str]) -> Source:
    from hidra_ng.sender.sources.zmq_push import ZmqSource

    return ZmqSource.from_params(uri, target, params)


_KINDS: dict[str, Callable[[str, str, dict[str, str]], Source]] = {
    "simulate": _simulate,
    "watch": _watch,
    "hdf5": _hdf5,
    "dectris": _dectris,
    "dectris1": _dectris1,
    "zmq": _zmq,
}
