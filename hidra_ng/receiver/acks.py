"""Acks to senders: a HELLO says where a sender incarnation is connected; commits ack.

The ingest thread's commit notices name, per sender incarnation, the last seq
now durable (an ACK, SPEC G1) or the seq to resend from (a GAP); they go to the
DEALER of that incarnation's last HELLO. A sender that misses one gets it again
with the reply to its next heartbeat HELLO.
"""

from __future__ import annotations

import logging
from typing import Any

from hidra_ng.receiver.replies import Replies
from hidra_ng.receiver.store import Store
from hidra_ng.wire import protocol as proto

log = logging.getLogger(__name__)


class SenderAcks:
    def __init__(self, store: Store, replies: Replies) -> None:
        self.store = store
        self.replies = replies
        self._senders: dict[tuple[str, int], bytes] = {}  # (sender, incarnation) -> ident

    def on_hello(self, ident: bytes, hello: proto.Hello) -> None:
        proto.check_sender_id(hello.sender)
        key = (hello.sender, hello.incarnation)
        if self._senders.get(key) != ident:
            log.info("sender %s (incarnation %x) connected", hello.sender, hello.incarnation)
            self._senders[key] = ident
        last = self.store.last_seq(hello.sender, hello.incarnation)
        self._to_sender(*key, proto.Kind.ACK, proto.Ack(hello.incarnation, last))

    def on_commit(
        self, acks: list[tuple[str, int, int]], gaps: list[tuple[str, int, int, int]]
    ) -> None:
        """What a commit made durable (acks) or found missing (gaps), from its notice."""
        for sender, incarnation, last in acks:
            self._to_sender(sender, incarnation, proto.Kind.ACK, proto.Ack(incarnation, last))
        for sender, incarnation, expected, epoch in gaps:
            gap = proto.Gap(incarnation, expected, epoch)
            self._to_sender(sender, incarnation, proto.Kind.GAP, gap)

    def _to_sender(self, sender: str, incarnation: int, kind: proto.Kind, body: Any) -> None:
        ident = self._senders.get((sender, incarnation))
        if ident is not None:
            # if it cannot take it now, the sender's heartbeat HELLO fetches the ack again
            self.replies.send([ident, proto.encode(kind, body)])
