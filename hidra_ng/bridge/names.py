"""hidra_ng stream name -> RabbitMQ stream name (SPEC §13), one to one.

``p11/scan_0001`` becomes ``hidra.p11.scan_0001``: the prefix (``hidra`` by
default, ``[bridge] prefix``), a dot, then the hidra name written with this code,
read left to right:

====================  =========
hidra name            broker
====================  =========
letter, digit, ``_``  itself
``/``                 ``.``
``.``                 ``-.``
``-``                 ``--``
====================  =========

So ``run-1.5/x`` becomes ``hidra.run--1-.5.x``. No code is the start of
another, hence different hidra names give different broker names (injective),
and :func:`hidra_name` reads one back. The result uses only letters, digits,
``_``, ``.`` and ``-`` (safe in every client, URL and shell) and never starts with
``amq.`` (reserved by RabbitMQ).

RabbitMQ refuses names longer than 255 bytes. A hidra name of up to 200
characters whose code would be longer (many ``.`` or ``-``) keeps a prefix of
its code (cut between codes) followed by ``-h`` and 32 hex digits of its
SHA-256: ``-h`` is no code, so such a name never equals that of a short
name, and two long names share one only if their 128-bit hashes collide.
"""

from __future__ import annotations

import hashlib
import re

from hidra_ng.errors import ConfigError

__all__ = ["DEFAULT_PREFIX", "MAX_BROKER_NAME", "broker_name", "check_prefix", "hidra_name"]

DEFAULT_PREFIX = "hidra"
MAX_BROKER_NAME = 255  # RabbitMQ's limit on queue (and so stream) names, in bytes
_HASH_HEX = 32
_CODES = {"/": ".", ".": "-.", "-": "--"}
_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_MAX_PREFIX = 40
BROKER_NAME = re.compile(r"[A-Za-z0-9_.-]{1,255}")


def check_prefix(prefix: str) -> str:
    """``prefix`` if it is a usable prefix of broker stream names, else ConfigError."""
    if (
        not isinstance(prefix, str)
        or not 1 <= len(prefix) <= _MAX_PREFIX
        or not _PREFIX.fullmatch(prefix)
        or prefix.startswith("amq")
    ):
        raise ConfigError(
            f"bridge prefix {prefix!r} is not valid; expected 1 to {_MAX_PREFIX} letters,"
            " digits, '_' and '-' in dot-separated parts, not starting with 'amq'"
            " (reserved by RabbitMQ), e.g. 'hidra' or 'p11.hidra'"
        )
    return prefix


def broker_name(stream: str, prefix: str = DEFAULT_PREFIX) -> str:
    """The RabbitMQ stream of hidra_ng stream ``stream`` (a valid name, SPEC §2)."""
    codes = [_CODES.get(ch, ch) for ch in stream]
    head = prefix + "."
    full = head + "".join(codes)
    if len(full) <= MAX_BROKER_NAME:
        return full
    room = MAX_BROKER_NAME - len(head) - 2 - _HASH_HEX
    kept: list[str] = []
    used = 0
    for code in codes:
        if used + len(code) > room:
            break
        kept.append(code)
        used += len(code)
    digest = hashlib.sha256(stream.encode()).hexdigest()[:_HASH_HEX]
    return head + "".join(kept) + "-h" + digest


def hidra_name(broker: str, prefix: str = DEFAULT_PREFIX) -> str | None:
    """The hidra_ng name ``broker`` stands for; None for a hashed (long) or foreign name."""
    head = prefix + "."
    if not broker.startswith(head):
        return None
    out = []
    text = broker[len(head) :]
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == ".":
            out.append("/")
        elif ch == "-":
            nxt = text[i + 1 : i + 2]
            if nxt not in (".", "-"):
                return None  # "-h": a hashed name
            out.append(nxt)
            i += 1
        else:
            out.append(ch)
        i += 1
    return "".join(out)
