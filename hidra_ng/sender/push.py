"""The link's connection to the receiver's ingest: a PUSH socket in a zmq context of its own.

libzmq drops what sat in the queue of a broken connection (the socket has
``IMMEDIATE``), so each break makes the link resend from its oldest
unacknowledged message (the window rewinds). It does not always free what it
dropped: the parts it took of a message cut by the break stay in libzmq for
good (lending.py). So a connection that ends is not reconnected but replaced:
its socket closed, its context terminated (its I/O thread joined: nothing reads
a lent view any more) and the spool reads lent to it ended, then a new one
opened. The link replaces it when it breaks, when a message was cut, and when
the spool's map waits to grow for views zmq still holds.
"""

from __future__ import annotations

import contextlib

import zmq
from zmq.utils.monitor import recv_monitor_message

from hidra_ng.lmdbenv import Env
from hidra_ng.security import ClientKeys
from hidra_ng.sender.lending import Lender

#: messages zmq may queue for the receiver before ``send`` says ``zmq.Again``
SEND_HWM = 1000


class IngestPush:
    """A PUSH socket connected to ``endpoint``, the monitor that says it broke (registered
    with ``poller``) and the :class:`Lender` of the spool views (``env``) it sends."""

    def __init__(
        self, endpoint: str, keys: ClientKeys | None, poller: zmq.Poller, env: Env
    ) -> None:
        self.endpoint, self._keys, self._poller, self._env = endpoint, keys, poller, env
        self._open()

    def _open(self) -> None:
        ctx = zmq.Context()
        push = ctx.socket(zmq.PUSH)
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
            ctx.term()
            raise
        self._poller.register(monitor, zmq.POLLIN)
        self._ctx, self.socket, self.monitor = ctx, push, monitor
        self.lender = Lender(self._env)
        self._closed = False

    def broke(self) -> bool:
        """Whether the connection broke since the last call (the monitor's events, taken)."""
        broke = False
        while True:
            try:
                recv_monitor_message(self.monitor, zmq.NOBLOCK)
            except zmq.Again:
                return broke
            broke = True

    def replace(self) -> int:
        """:meth:`close` this connection and open a new one; returns the loans ended."""
        ended = self.close()
        self._open()
        return ended

    def close(self) -> int:
        """Close the socket and terminate its context, then end the loans still out (whatever
        libzmq still holds, it holds for good); returns how many. Once: a replacement
        whose new connection failed to open leaves nothing to close again."""
        if self._closed:
            return 0
        self._closed = True
        self._poller.unregister(self.monitor)
        with contextlib.suppress(zmq.ZMQError):
            self.socket.disable_monitor()
        self.monitor.close(linger=0)
        self.socket.close(linger=0)
        self._ctx.term()
        return self.lender.end_all()
