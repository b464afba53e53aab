"""Multipart send and receive for the ingest path, cheaper per part than pyzmq's helpers.

pyzmq's ``send_multipart``/``recv_multipart`` do flag-enum arithmetic and checks
for every part: ~7 us to send and ~5 us to receive a part on the 2-core VM,
with two parts per message on the ingest path. Plain int flags cost ~2-3 us
(measured in the same process, perf/NOTES.md "ingest_1kib").
"""

from __future__ import annotations

import zmq

#: below this size copying a part into zmq is cheaper than lending it our buffer
ZERO_COPY_BYTES = 64 << 10
_MORE_NOBLOCK = int(zmq.SNDMORE | zmq.NOBLOCK)
_NOBLOCK = int(zmq.NOBLOCK)


def send_parts(sock: zmq.Socket, parts: list) -> None:
    """``sock.send_multipart(parts, zmq.NOBLOCK)``; large parts go without a copy.

    ``zmq.Again`` can only come from the first part: zmq takes a multipart
    message whole or not at all.
    """
    send = sock.send
    last = len(parts) - 1
    for i, part in enumerate(parts):
        send(part, _NOBLOCK if i == last else _MORE_NOBLOCK, copy=len(part) < ZERO_COPY_BYTES)


def recv_parts(sock: zmq.Socket) -> list[zmq.Frame]:
    """``sock.recv_multipart(zmq.NOBLOCK, copy=False)``: raises ``zmq.Again`` if none waits.

    The other parts of a message are there once its first part is.
    """
    frame = sock.recv(_NOBLOCK, copy=False)
    parts = [frame]
    while frame.more:
        frame = sock.recv(0, copy=False)
        parts.append(frame)
    return parts
