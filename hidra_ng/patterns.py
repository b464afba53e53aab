"""Glob patterns on stream names, the one rule of SPEC §13 (used by §14 and §15 too).

A stream name is segments of ``[A-Za-z0-9._-]`` joined by ``/`` (SPEC §2). A
pattern is written the same way, with two wildcards:

* ``*`` matches any characters within one segment (never a ``/``):
  ``p11/*`` matches ``p11/scan_0001``, not ``p11/eiger/threshold_1``;
* ``**`` matches across segments: ``p11/**`` matches both of those (but not
  ``p11`` itself); as a whole segment in front, ``**/`` also matches no
  segment at all (``**/scan_*`` matches ``scan_1`` and ``p11/eiger/scan_1``).

``**`` (the default everywhere a pattern is taken) matches every stream.
Everything else matches itself; ``.`` is a literal dot. Pure functions, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

from hidra_ng.errors import InvalidInput

__all__ = ["ALL", "Patterns", "compile_pattern", "matches"]

ALL = "**"
_PATTERN = re.compile(r"[A-Za-z0-9._*-]+(/[A-Za-z0-9._*-]+)*")
_MAX_LENGTH = 200


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of ``pattern``; raises InvalidInput naming a bad one."""
    if not isinstance(pattern, str) or not pattern:
        raise InvalidInput(f"stream pattern {pattern!r} is empty; expected e.g. 'p11/*' or '**'")
    if len(pattern) > _MAX_LENGTH or not _PATTERN.fullmatch(pattern):
        raise InvalidInput(
            f"stream pattern {pattern!r} is not valid; expected segments of letters, digits,"
            " '.', '_', '-', '*' and '**' joined by '/', e.g. 'p11/*' or 'p11/**'"
        )
    if "***" in pattern:
        raise InvalidInput(f"stream pattern {pattern!r} has '***'; expected '*' or '**'")
    out = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i) and (i == 0 or pattern[i - 1] == "/"):
            out.append("(?:.*/)?")  # zero or more whole segments
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def matches(pattern: str, name: str) -> bool:
    """True if stream ``name`` matches ``pattern``."""
    return compile_pattern(pattern).fullmatch(name) is not None


class Patterns:
    """Several patterns; a name is chosen if any of them matches. Empty means all."""

    def __init__(self, patterns: Iterable[str] = ()) -> None:
        self.patterns = tuple(patterns) or (ALL,)
        self._compiled = [compile_pattern(p) for p in self.patterns]

    def __call__(self, name: str) -> bool:
        return any(c.fullmatch(name) for c in self._compiled)

    def unmatched(self, names: Iterable[str]) -> list[str]:
        """The patterns that match none of ``names`` (to tell the user what waits)."""
        names = list(names)
        return [
            p
            for p, c in zip(self.patterns, self._compiled, strict=True)
            if not any(c.fullmatch(n) for n in names)
        ]

    def __repr__(self) -> str:
        return f"Patterns({list(self.patterns)!r})"
