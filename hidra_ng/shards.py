"""The shard map: which receiver holds which stream (SPEC §14). Pure, no I/O but reading the file.

A deployment of several receivers is one TOML file that every producer, sender
daemon and reader reads::

    [[shard]]                      # p11's streams on their own receiver
    name = "dc1"                   # optional; default: the api endpoint's host:port
    streams = ["p11/**"]
    ingest = "tcp://dc1:50100"
    api = "tcp://dc1:50101"
    publish = "tcp://dc1:50102"

    [[shard]]                      # everything else on two receivers
    streams = ["**"]
    ingest = "tcp://dc2:50100"
    ...
    [[shard]]
    streams = ["**"]               # the same list: shares the streams with the one above
    ingest = "tcp://dc3:50100"
    ...

Placement of a stream: the first shard whose ``streams`` patterns match it
(the pattern rule of hidra_ng/patterns.py). Shards with the same ``streams``
list form a group of receivers; within a group a stable hash picks one:
rendezvous hashing (highest blake2b of receiver name + stream name), the same
in every process, machine and Python version, and adding a receiver to a group
moves only the streams the new receiver wins.

A split series (SPEC §14): image ``i`` of series ``S`` split into ``K`` parts by
blocks of ``B`` images goes to stream ``S/part-P`` with ``P = (i // B) % K``, at
index ``(i // (B*K)) * B + i % B``; its meta has ``hidra_split = [i, K, B]``. The
parts are placed by the name ``S``: the group ``S`` falls in, part ``P`` on the
``P``-th receiver of that group in ``S``'s hash order, so ``K`` parts in a group of
``K`` receivers lie on ``K`` different receivers.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hidra_ng.config import _endpoint_problem
from hidra_ng.errors import ConfigError, InvalidInput, NoShardForStream, _show
from hidra_ng.patterns import compile_pattern

__all__ = [
    "PART_SEPARATOR",
    "SPLIT_META_KEY",
    "Shard",
    "ShardMap",
    "SplitLayout",
    "load_shard_map",
    "part_name",
    "split_name",
    "to_toml",
]

KEYS = ("name", "streams", "ingest", "api", "publish")
ENDPOINT_KEYS = ("ingest", "api", "publish")
PART_SEPARATOR = "/part-"
SPLIT_META_KEY = "hidra_split"
_PART = re.compile(r"(.+)/part-(0|[1-9][0-9]{0,5})")
_NAME = re.compile(r"[A-Za-z0-9._:@-]{1,100}")
_PROBES = ("x", "x/y", "x/y/z", "a.b_c-d")  # a catch-all pattern matches all of these


@dataclass(frozen=True, slots=True)
class Shard:
    """One receiver of the map."""

    name: str
    streams: tuple[str, ...]
    ingest: str
    api: str
    publish: str


def part_name(stream: str, part: int) -> str:
    """The sub-stream of ``stream`` that holds part ``part`` of a split series."""
    return f"{stream}{PART_SEPARATOR}{part}"


def split_name(stream: str) -> tuple[str, int | None]:
    """(series, part) of a part's name; (``stream``, None) for any other name."""
    m = _PART.fullmatch(stream)
    return (m.group(1), int(m.group(2))) if m else (stream, None)


@dataclass(frozen=True, slots=True)
class SplitLayout:
    """Where the images of a series split into ``parts`` by blocks of ``block`` images lie."""

    parts: int
    block: int

    def __post_init__(self) -> None:
        if self.parts < 1 or self.block < 1:
            raise InvalidInput(
                f"split into {self.parts} parts by blocks of {self.block} images is not valid;"
                " expected 1 or more of each"
            )

    def part(self, image: int) -> int:
        return (image // self.block) % self.parts

    def index(self, image: int) -> int:
        """The index of ``image`` in its part."""
        return (image // (self.block * self.parts)) * self.block + image % self.block

    def image(self, part: int, index: int) -> int:
        """The image at ``index`` of part ``part``."""
        rnd, offset = divmod(index, self.block)
        return (rnd * self.parts + part) * self.block + offset

    def first_index(self, part: int, image: int) -> int:
        """The index in ``part`` of the first of its images at or after ``image``."""
        block, offset = divmod(image, self.block)
        rnd, at = divmod(block, self.parts)
        if part == at:
            return rnd * self.block + offset
        return (rnd + (1 if part < at else 0)) * self.block


class ShardMap:
    """The receivers of a deployment and the placement rule (module docstring)."""

    def __init__(self, shards: Sequence[Shard], origin: str = "shard map") -> None:
        self.shards = tuple(shards)
        self.origin = origin
        self.by_name = {s.name: s for s in self.shards}
        #: groups of shards with the same ``streams``, in the order of their first shard
        self.groups: list[tuple[tuple[str, ...], list[Shard]]] = []
        for shard in self.shards:
            for streams, members in self.groups:
                if streams == shard.streams:
                    members.append(shard)
                    break
            else:
                self.groups.append((shard.streams, [shard]))
        self._compiled = [[compile_pattern(p) for p in streams] for streams, _ in self.groups]

    def receivers(self, stream: str) -> list[Shard]:
        """The receivers of ``stream``'s group, in ``stream``'s hash order (first: its home)."""
        for (_, members), compiled in zip(self.groups, self._compiled, strict=True):
            if any(c.fullmatch(stream) for c in compiled):
                if len(members) == 1:
                    return list(members)
                return sorted(members, key=lambda s: _weight(s.name, stream), reverse=True)
        raise NoShardForStream(
            f"stream {stream!r} matches no shard of {self.origin}; add a [[shard]] whose"
            ' streams match it (e.g. streams = ["**"] as the last shard)'
        )

    def place(self, stream: str) -> Shard:
        """The receiver that holds ``stream`` (a part: by its series, see the module doc)."""
        series, part = split_name(stream)
        receivers = self.receivers(series)
        return receivers[(part or 0) % len(receivers)]

    def __repr__(self) -> str:
        return f"ShardMap({[s.name for s in self.shards]!r} from {self.origin})"


def _weight(receiver: str, stream: str) -> bytes:
    return hashlib.blake2b(f"{receiver}\0{stream}".encode(), digest_size=8).digest()


# ------------------------------------------------------------------- loading


def load_shard_map(source: str | os.PathLike[str] | ShardMap) -> ShardMap:
    """The validated shard map of a TOML file; raises ConfigError naming the problem."""
    if isinstance(source, ShardMap):
        return source
    path = Path(source)
    try:
        with path.open("rb") as f:
            raw = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"shard map {path} does not exist; expected a TOML file") from None
    except IsADirectoryError:
        raise ConfigError(f"shard map {path} is a directory; expected a TOML file") from None
    except OSError as err:
        raise ConfigError(f"shard map {path} cannot be read: {err.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"shard map {path} is not valid TOML: {err}") from None
    return shard_map_from_dict(raw, str(path))


def is_shard_map(raw: dict[str, Any]) -> bool:
    """True for the parsed TOML of a shard map (its tables are ``[[shard]]``)."""
    return "shard" in raw


def shard_map_from_dict(raw: dict[str, Any], origin: str = "shard map") -> ShardMap:
    """The validated shard map of parsed TOML (errors name ``origin``, the key and value)."""
    for key in raw:
        if key != "shard":
            raise ConfigError(
                f"{origin} has {key!r} at its top level; expected only [[shard]] tables"
            )
    tables = raw.get("shard")
    if not isinstance(tables, list) or not tables:
        raise ConfigError(
            f"{origin} has no [[shard]] table; expected one per receiver, each with streams,"
            " ingest, api and publish"
        )
    shards = []
    for i, table in enumerate(tables):
        try:
            shards.append(_shard(i, table))
        except _Bad as bad:  # "shard[0].api = 1 in shards.toml: expected ..."
            raise ConfigError(f"{bad.what} in {origin}: expected {bad.expected}") from None
    _check_unique(shards, origin)
    _check_reachable(shards, origin)
    return ShardMap(shards, origin)


class _Bad(Exception):
    """A problem of one [[shard]]: what is wrong and what was expected."""

    def __init__(self, what: str, expected: str) -> None:
        super().__init__(what)
        self.what, self.expected = what, expected

    @classmethod
    def of(cls, section: str, key: str, value: object, expected: str) -> _Bad:
        return cls(f"{section}.{key} = {_show(value)}", expected)


def _shard(i: int, table: Any) -> Shard:
    section = f"shard[{i}]"
    if not isinstance(table, dict):
        raise _Bad(f"{section} = {_show(table)}", "a [[shard]] table")
    for key in table:
        if key not in KEYS:
            close = difflib.get_close_matches(key, KEYS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise _Bad(f"{section} has an unknown key {key!r}", f"one of {', '.join(KEYS)}{hint}")
    for key in ("streams", *ENDPOINT_KEYS):
        if key not in table:
            raise _Bad(f"{section} has no {key}", _expected(key))
    streams = table["streams"]
    if not isinstance(streams, list) or not streams:
        raise _Bad.of(section, "streams", streams, _expected("streams"))
    for pattern in streams:
        try:
            compile_pattern(pattern)
        except InvalidInput:
            raise _Bad.of(section, "streams", pattern, _expected("streams")) from None
    for key in ENDPOINT_KEYS:
        value = table[key]
        problem = "a string" if not isinstance(value, str) else _endpoint_problem(value, False)
        if problem:
            raise _Bad.of(section, key, value, f"{_expected(key)} ({problem})")
    name = table.get("name") or _default_name(table["api"])
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise _Bad.of(section, "name", name, _expected("name"))
    return Shard(name, tuple(streams), table["ingest"], table["api"], table["publish"])


def _expected(key: str) -> str:
    return {
        "streams": "a list of one or more glob patterns of stream names, e.g. ['p11/**'] or"
        " ['**'] (segments of letters, digits, '.', '_', '-', '*' and '**' joined by '/')",
        "ingest": "the receiver's ingest endpoint, e.g. 'tcp://dc1:50100'",
        "api": "the receiver's api endpoint, e.g. 'tcp://dc1:50101'",
        "publish": "the receiver's publish endpoint, e.g. 'tcp://dc1:50102'",
        "name": "1 to 100 letters, digits, '.', '_', ':', '@' and '-', e.g. 'dc1'",
    }[key]


def _default_name(api: str) -> str:
    return api.partition("://")[2].replace("[", "").replace("]", "").replace("/", "_")[:100]


def _check_unique(shards: list[Shard], origin: str) -> None:
    names: dict[str, int] = {}
    endpoints: dict[str, tuple[int, str]] = {}
    for i, shard in enumerate(shards):
        if shard.name in names:
            raise ConfigError(
                f"shard[{i}].name = {shard.name!r} in {origin} is also the name of"
                f" shard[{names[shard.name]}]; expected a name of its own (default: the api"
                " endpoint's host:port)"
            )
        names[shard.name] = i
        for key in ENDPOINT_KEYS:
            value = getattr(shard, key)
            if value in endpoints:
                j, other = endpoints[value]
                raise ConfigError(
                    f"shard[{i}].{key} = {value!r} in {origin} is also shard[{j}].{other};"
                    " expected every receiver endpoint once"
                )
            endpoints[value] = (i, key)


def _catch_all(pattern: str) -> bool:
    return set(pattern) <= {"*", "/"} and all(
        compile_pattern(pattern).fullmatch(p) for p in _PROBES
    )


def _check_reachable(shards: list[Shard], origin: str) -> None:
    """Refuse a catch-all under two different stream lists, and shards that can get nothing."""
    taker: tuple[int, str] | None = None  # the first shard with a catch-all, and its pattern
    seen: dict[tuple[str, ...], int] = {}
    for i, shard in enumerate(shards):
        first = seen.setdefault(shard.streams, i)
        caught = [p for p in shard.streams if _catch_all(p)]
        if taker is not None and first > taker[0]:  # a new streams list after a catch-all
            j, pattern = taker
            if caught:
                raise ConfigError(
                    f"shard[{i}].streams in {origin} has the catch-all {caught[0]!r} and"
                    f" shard[{j}] the catch-all {pattern!r} under another streams list:"
                    " overlapping catch-alls, while a stream lives on one receiver only; give"
                    " the receivers that share the remaining streams the same streams list,"
                    " or keep one catch-all"
                )
            raise ConfigError(
                f"shard[{i}] in {origin} can never hold a stream: shard[{j}] before it takes"
                f" every stream with {pattern!r}; move it before shard[{j}] or give it the same"
                " streams list to share them"
            )
        if caught and taker is None:
            taker = (first, caught[0])


def to_toml(shard_map: ShardMap) -> str:
    """The map as TOML that ``check-config`` accepts again, each shard's group noted."""
    lines: list[str] = []
    for i, shard in enumerate(shard_map.shards):
        group = next(n for n, (s, _) in enumerate(shard_map.groups) if s == shard.streams)
        size = len(shard_map.groups[group][1])
        note = f"  # group {group}" + (f" of {size} receivers (hash)" if size > 1 else "")
        lines += ["", f"[[shard]]{note}"] if i else [f"[[shard]]{note}"]
        streams = ", ".join(json.dumps(p) for p in shard.streams)
        lines += [f"name = {json.dumps(shard.name)}", f"streams = [{streams}]"]
        lines += [f"{key} = {json.dumps(getattr(shard, key))}" for key in ENDPOINT_KEYS]
    return "\n".join(lines) + "\n"
