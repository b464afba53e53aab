"""Glob patterns on stream names (SPEC §13, §15).

``*`` matches any characters within one ``/``-segment, ``**`` any characters
across segments (also none), ``?`` one character other than ``/``; everything
else matches itself. ``p11/*`` matches ``p11/scan_0001`` but not
``p11/eiger/threshold_1``; ``p11/**`` matches both; ``**`` matches every stream.
A pattern is compiled once to a regular expression; matching is pure.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache

__all__ = ["compile_pattern", "matches", "matches_any"]


@lru_cache(maxsize=256)
def compile_pattern(pattern: str) -> re.Pattern[str]:
    """The regular expression of a stream pattern (anchored at both ends)."""
    if not pattern:
        raise ValueError("a stream pattern is empty; expected e.g. 'p11/*' or '**'")
    out: list[str] = []
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")  # zero or more whole segments
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)


def matches(pattern: str, stream: str) -> bool:
    """Whether ``stream`` matches ``pattern``."""
    return compile_pattern(pattern).match(stream) is not None


def matches_any(patterns: Iterable[str], stream: str) -> bool:
    """Whether ``stream`` matches one of ``patterns``."""
    return any(matches(p, stream) for p in patterns)
