"""The link's PUSH socket to the receiver's ingest, and the monitor that says it broke.

libzmq drops what sat in the queue of a broken connection (the socket has
``IMMEDIATE``), so each break makes the link resend from its oldest
unacknowledged message (the window rewinds). Two things make the link replace
the socket whole: a spool map that waits to grow for views zmq still holds
(closing the socket makes libzmq drop its queue, and with it the views), and a
message cut by a broken connection between two of its parts (zmqio.send_parts),
after which the socket would drop the next message too.
"""

from __future__ import annotations

import contextlib

import zmq
from zmq.utils.monitor import recv_monitor_message

from hidra_ng.security import ClientKeys

#: messages zmq may queue for the receiver before ``send`` says ``zmq.Again``
SEND_HWM = 1000


class IngestPush:
    """A PUSH socket connected to ``endpoint``, its monitor registered with ``poller``."""

    def __init__(
        self, ctx: zmq.Context, endpoint: str, keys: ClientKeys | None, poller: zmq.Poller
    ) -> None:
        self._ctx, self.endpoint, self._keys, self._poller = ctx, endpoint, keys, poller
        self.socket, self.monitor = self._connect()

    def _connect(self) -> tuple[zmq.Socket, zmq.Socket]:
        push = self._ctx.socket(zmq.PUSH)
        push.setsockopt(zmq.LINGER, 0)
        push.setsockopt(zmq.IMMEDIATE, 1)
        push.setsockopt(zmq.SNDHWM, SEND_HWM)
        # a broken connection drops what sat in its queue: resend at once, not after a stall
        monitor = push.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        if self._keys is not None:
            self._keys.apply(push)
        try:
            push.connect(self.endpoint)
        except zmq.ZMQError:
            monitor.close(linger=0)
            push.close(linger=0)
            raise
        self._poller.register(monitor, zmq.POLLIN)
        return push, monitor

    def broke(self) -> bool:
        """Whether the connection broke since the last call (the monitor's events, taken)."""
        broke = False
        while True:
            try:
                recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return broke
            broke = True

    def replace(self) -> None:
        """A new socket for this one, whose queue libzmq drops (and the views in it)."""
        self.close()
        self.socket, self.monitor = self._connect()

    def close(self) -> None:
        self._poller.unregister(self.monitor)
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
