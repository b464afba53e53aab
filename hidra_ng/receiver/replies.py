"""Replies to the api's peers, and the group commit that some of them wait for.

A reply goes out at once without blocking (a peer that cannot take it now
asks again), or, when it confirms a change of consumer-group state (``next``,
``ack``, ``nack``), it is held until that change is durable: at the end of the
api loop's turn every change of the turn goes to the group writer
(:mod:`~hidra_ng.receiver.groupsync`) as one, and the turn's held replies are
sent when the writer reports it committed and fsynced.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
import zmq

from hidra_ng.errors import REMOTE_ERRORS, HidraError, StorageError
from hidra_ng.receiver.groups import Groups
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)


class Replies:
    """The api's outgoing side: send now, or hold until the group commit."""

    def __init__(self, router: zmq.Socket, groups: Groups) -> None:
        self.router = router
        self.groups = groups
        #: told when a peer is gone (ROUTER_MANDATORY): its replays end
        self.peer_gone: Callable[[bytes], None] = lambda ident: None
        self._held: list[list[Any]] = []  # replies confirming group changes of this turn
        #: (turn, its held replies): sent once the group writer made the turn durable
        self._waiting: list[tuple[int, list[list[Any]]]] = []
        self._next_group_error_log = 0.0

    def send(self, frames: list[Any], copy: bool = True) -> bool:
        """Send to one peer without blocking; False if it cannot take it now or is gone."""
        try:
            self.router.send_multipart(frames, zmq.NOBLOCK, copy=copy)
            return True
        except zmq.Again:
            return False
        except zmq.ZMQError as err:
            if err.errno != errno.EHOSTUNREACH:
                raise
            self.peer_gone(frames[0])
            return False

    def reply(
        self,
        ident: bytes,
        req_id: int,
        body: Any = None,
        payloads: Sequence[Any] = (),
        *,
        after_commit: bool = False,
    ) -> bool:
        """Send a reply (body, then one frame per payload) now, or held until committed.

        ``after_commit``: the reply confirms a change of consumer-group state; it is
        sent by :meth:`release_held` once that change is committed.
        """
        reply = proto.Reply(req_id, body=msgspec.Raw(proto.encode_body(body)))
        return self._answer([ident, proto.encode(proto.Kind.REPLY, reply), *payloads], after_commit)

    def reply_tracked(
        self, ident: bytes, req_id: int, body: Any, payload: Any
    ) -> zmq.MessageTracker | None:
        """Send a reply whose payload is a view zmq sends without a copy; its tracker
        says when zmq is done with the view (None: not sent, the peer is full or gone)."""
        reply = proto.Reply(req_id, body=msgspec.Raw(proto.encode_body(body)))
        frames = [ident, proto.encode(proto.Kind.REPLY, reply), payload]
        try:
            return self.router.send_multipart(frames, zmq.NOBLOCK, copy=False, track=True)
        except zmq.Again:
            return None
        except zmq.ZMQError as err:
            if err.errno != errno.EHOSTUNREACH:
                raise
            self.peer_gone(ident)
            return None

    def reply_error(
        self, ident: bytes, req_id: int, err: HidraError, *, after_commit: bool = False
    ) -> None:
        """An error reply; ``after_commit`` as for :meth:`reply` (the request may have
        changed group state before it failed, e.g. acks before a StreamFinished)."""
        # the nearest class a client knows by name (QueryError travels as InvalidInput)
        name = next(c.__name__ for c in type(err).__mro__ if c.__name__ in REMOTE_ERRORS)
        reply = proto.Reply(req_id, error=name, message=str(err))
        self._answer([ident, proto.encode(proto.Kind.REPLY, reply)], after_commit)

    def _answer(self, frames: list[Any], after_commit: bool) -> bool:
        """Send now (False if the peer cannot take it), or hold until the group commit."""
        if after_commit:
            self._held.append(frames)
            return True
        return self.send(frames, copy=False)

    def release_held(self) -> None:
        """End of the api's turn: its group changes go to the writer, as one; the replies
        that confirm them wait for it (:meth:`on_written`). Once a turn."""
        changes = self.groups.take_changes()
        writer = self.groups.writer
        if changes is None and not self._held:
            return
        if changes is None and writer.idle and not self._waiting:
            held, self._held = self._held, []  # they confirm nothing that is not durable
            for frames in held:
                self.send(frames, copy=False)
            return
        turn = writer.submit(changes)
        if self._held:
            self._waiting.append((turn, self._held))
            self._held = []

    @property
    def waiting(self) -> int:
        """Replies waiting for the group writer."""
        return sum(len(held) for _, held in self._waiting)

    def on_written(self) -> None:
        """The group writer reported: send the replies of the turns now durable."""
        for turn, error in self.groups.writer.results():
            ready = [held for t, held in self._waiting if t <= turn]
            self._waiting = [(t, held) for t, held in self._waiting if t > turn]
            if error is not None:
                # confirm nothing: the members ask again (ReceiverUnavailable after their
                # timeout); what was handed out unconfirmed comes back after the ack timeout
                withheld = sum(map(len, ready))
                self.group_storage_error(error, f"; {withheld} replies withheld")
                continue
            for held in ready:
                for frames in held:
                    self.send(frames, copy=False)

    def settle(self, timeout: float) -> None:
        """Wait up to ``timeout`` for the group writer, then send what it made durable."""
        self.groups.writer.wait(timeout)
        self.on_written()

    def group_storage_error(self, err: StorageError, what: str) -> None:
        """Log a failed commit of group state, at most once a minute (retried with the next)."""
        now = time.monotonic()
        if now >= self._next_group_error_log:
            self._next_group_error_log = now + 60.0
            log.error("consumer-group state not committed%s (retried each turn): %s", what, err)
