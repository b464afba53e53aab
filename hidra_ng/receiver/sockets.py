"""The receiver's sockets: bound with their options and security, closed in one place.

``PULL`` (ingest), ``ROUTER`` (api), ``XPUB`` (publish) and the inproc ``PAIR``
that carries each commit's notice from the committer thread to the api thread, all in
one zmq context; with keys or an allow list, a ZAP authenticator answers the
handshakes (SPEC §9). Which thread uses which socket: docs/adr/0003-threads.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import zmq

from hidra_ng.config import ReceiverConfig
from hidra_ng.errors import ConfigError
from hidra_ng.security import Authenticator, load_keypair, server_socket

NOTICE_ENDPOINT = "inproc://hidra-ng-commits-{}"
_ids = itertools.count()


class ReceiverSockets:
    """Every socket of one receiver, bound; ``endpoints`` tells where (ports of ``:*``)."""

    def __init__(self, config: ReceiverConfig, on_refused: Callable[[str], None]) -> None:
        self.ctx = zmq.Context()
        self.authenticator: Authenticator | None = None
        self._sockets: dict[str, zmq.Socket] = {}
        try:
            self._bind(config, on_refused)
        except BaseException:
            self.close()
            raise

    def _bind(self, c: ReceiverConfig, on_refused: Callable[[str], None]) -> None:
        keys = None
        if c.keys_dir or c.authorized_keys_dir:
            if not (c.keys_dir and c.authorized_keys_dir):
                raise ConfigError(
                    "receiver.keys_dir and receiver.authorized_keys_dir go together: give both"
                    " (CurveZMQ on every socket) or neither (no security)"
                )
            keys = load_keypair(c.keys_dir)
        if keys is not None or c.allow_ips:
            # the ZAP handler must listen before any socket can take a handshake
            self.authenticator = Authenticator(
                self.ctx, c.authorized_keys_dir or None, allow_ips=c.allow_ips,
                on_refused=on_refused,
            )  # fmt: skip
            self.authenticator.start()
        # RCVHWM counts messages, not bytes: 64 multiparts (up to 64 frames of 4 MiB, or
        # 64 x 512 small messages) bound what waits while a commit runs or fails (G9)
        self.pull = self._socket("pull", zmq.PULL, rcvhwm=64, maxmsgsize=c.max_message_bytes)
        # ROUTER_MANDATORY: a send to a vanished consumer fails instead of vanishing
        self.router = self._socket("router", zmq.ROUTER, maxmsgsize=1 << 20, router_mandatory=1)
        # XPUB: a PUB that also tells which topics have subscribers, so frames of streams
        # nobody watches are neither encoded nor sent; VERBOSE: every subscription, also
        # a second one to the same topic, so each late joiner gets the newest frame
        # (receiver/live.py). Unsubscriptions still come only when the last one leaves.
        self.pub = self._socket("pub", zmq.XPUB, sndhwm=c.publish_hwm, xpub_verbose=1)
        endpoint = NOTICE_ENDPOINT.format(next(_ids))
        self.notice_rx = self._socket("notice_rx", zmq.PAIR)
        self.notice_tx = self._socket("notice_tx", zmq.PAIR)
        self.notice_rx.bind(endpoint)
        self.notice_tx.connect(endpoint)
        for sock, ep, name in (
            (self.pull, c.ingest, "ingest"),
            (self.router, c.api, "api"),
            (self.pub, c.publish, "publish"),
        ):
            if self.authenticator is not None:
                server_socket(sock, keys)
            try:
                sock.bind(ep)
            except zmq.ZMQError as err:
                raise ConfigError(f"cannot bind {name} endpoint {ep}: {err}") from err
        self.endpoints = {
            "ingest": self.pull.getsockopt_string(zmq.LAST_ENDPOINT),
            "api": self.router.getsockopt_string(zmq.LAST_ENDPOINT),
            "publish": self.pub.getsockopt_string(zmq.LAST_ENDPOINT),
        }

    def _socket(self, name: str, kind: int, **options: int) -> zmq.Socket:
        sock = self.ctx.socket(kind)
        self._sockets[name] = sock
        sock.setsockopt(zmq.LINGER, 0)
        for option, value in options.items():
            sock.setsockopt(getattr(zmq, option.upper()), value)
        return sock

    def close(self, graceful: bool = False) -> None:
        """Close every socket and the context; on a graceful stop the last acks get a second."""
        if self.authenticator is not None:
            self.authenticator.stop()
        for name, sock in self._sockets.items():
            sock.close(linger=1000 if graceful and name == "router" else 0)
        self._sockets.clear()
        self.ctx.term()
