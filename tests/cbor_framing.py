"""The framing of a CBOR message, its values left out: to compare our emitter with recorded data.

``framing(raw)`` walks the encoded bytes item by item (RFC 8949 3) and lists
each as one line: its path, its kind (``map 10``, ``array 2``, ``tag 40``,
``uint``, ``text``, ``bytes``, ``float64``, ...). Map keys, the ``type`` value
and the algorithm of tag 56500 are shown since they are framing; other values
(numbers, ids, dates, pixel bytes) are not. Two messages with equal framing
have the same tags, key order and types.

``python tests/cbor_framing.py RECORDED.cbor`` prints the framing of a file.
"""

from __future__ import annotations

import sys

_KINDS = {0: "uint", 1: "nint", 2: "bytes", 3: "text", 4: "array", 5: "map", 6: "tag"}
_SIMPLE = {20: "false", 21: "true", 22: "null", 23: "undefined"}
_FLOATS = {25: "float16", 26: "float32", 27: "float64"}


def _head(raw: bytes, pos: int) -> tuple[int, int, int, int]:
    """(major type, additional info, argument, position after the head)."""
    first = raw[pos]
    major, info = first >> 5, first & 31
    pos += 1
    if info < 24:
        return major, info, info, pos
    if info > 27:
        raise ValueError(f"indefinite or reserved length (info {info}) at byte {pos - 1}")
    size = 1 << (info - 24)
    arg = int.from_bytes(raw[pos : pos + size], "big")
    return major, info, arg, pos + size


def framing(raw: bytes) -> list[str]:
    lines: list[str] = []
    end = _item(raw, 0, "", lines, show_text=False)
    if end != len(raw):
        raise ValueError(f"{len(raw) - end} bytes after the message")
    return lines


def _item(raw: bytes, pos: int, path: str, lines: list[str], show_text: bool) -> int:
    major, info, arg, pos = _head(raw, pos)
    if major == 7:
        kind = _FLOATS.get(info) or _SIMPLE.get(info, f"simple {arg}")
        lines.append(f"{path}: {kind}")
        return pos
    if major in (0, 1):
        lines.append(f"{path}: {_KINDS[major]}")
        return pos
    if major in (2, 3):
        value = raw[pos : pos + arg]
        shown = f" {value.decode()!r}" if major == 3 and show_text else ""
        lines.append(f"{path}: {_KINDS[major]}{shown}")
        return pos + arg
    if major == 6:
        lines.append(f"{path}: tag {arg}")
        if arg == 56500:  # [algorithm, modifier, bytes]: the algorithm is framing
            inner, _, count, pos = _head(raw, pos)
            if inner != 4:
                raise ValueError(f"tag 56500 at byte {pos} does not hold an array")
            lines.append(f"{path}/56500: array {count}")
            pos = _item(raw, pos, f"{path}/56500[0]", lines, show_text=True)
            for i in range(1, count):
                pos = _item(raw, pos, f"{path}/56500[{i}]", lines, show_text=False)
            return pos
        return _item(raw, pos, f"{path}/{arg}", lines, show_text=False)
    if major == 4:
        lines.append(f"{path}: array {arg}")
        for i in range(arg):
            pos = _item(raw, pos, f"{path}[{i}]", lines, show_text=False)
        return pos
    lines.append(f"{path}: map {arg}")
    for _ in range(arg):
        key_start = pos
        key_major, _, key_len, after = _head(raw, pos)
        if key_major != 3:
            raise ValueError(f"map key at byte {key_start} is not a text")
        key = raw[after : after + key_len].decode()
        pos = _item(raw, after + key_len, f"{path}.{key}", lines, show_text=key == "type")
    return pos


if __name__ == "__main__":
    for name in sys.argv[1:]:
        with open(name, "rb") as f:
            print(name)
            print("\n".join("  " + line for line in framing(f.read())))
