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


def send_parts(sock: zmq.Socket, parts: list) -> int:
    """``sock.send_multipart(parts, zmq.NOBLOCK)``; large parts go without a copy.

    Returns how many parts zmq took: all of them, or fewer when the message was
    cut. ``zmq.Again`` (nothing taken) when the socket cannot take a message now.

    A message is cut when its connection ends between two of its parts (a PUSH
    socket with ``IMMEDIATE`` drops the pipe of a broken connection): libzmq
    refuses the next part with EAGAIN, never sends nor frees the parts it took
    (they stay unflushed in the dropped pipe; lb.cpp says so), and drops whatever
    the socket is sent next up to a message's last part. So the caller gives up
    on the parts taken (nothing reads them again) and replaces the socket.
    """
    send = sock.send
    last = len(parts) - 1
    for i, part in enumerate(parts):
        try:
            send(part, _NOBLOCK if i == last else _MORE_NOBLOCK, copy=len(part) < ZERO_COPY_BYTES)
        except zmq.Again:
            if not i:
                raise
            return i
    return len(parts)


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
