"""Announcing complete files on an AMQP queue (pika), in the shape Zocalo's dispatcher takes.

One JSON message per complete series (nxmx) or file (hdf5)::

    {"recipes": ["..."],
     "parameters": {"file": ".../series_12_master.h5", "stream": "p11/eiger/threshold_1",
                    "first_index": 0, "last_index": 101, "series_id": 12, ...,
                    "hidra_ng_id": "<uuid5>"}}

Persistent (delivery mode 2) to a durable queue, with publisher confirms: a
publish returns only once the broker has the message. The AMQP ``message_id``
(also ``parameters.hidra_ng_id``) is a UUID derived from the stream and the
index range, so a writer that redoes a series after a restart sends a message
with the same id, which a consumer can recognise as a repeat.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from typing import Any

from hidra_ng.errors import AnnounceError

log = logging.getLogger(__name__)

NAMESPACE = uuid.UUID("6f1c1b7e-8d3c-5c8e-9a51-3e0f0b6d2a15")


def message_id(parameters: dict[str, Any]) -> str:
    key = f"{parameters['stream']}:{parameters['first_index']}:{parameters['last_index']}"
    return str(uuid.uuid5(NAMESPACE, f"hidra-ng-write:{parameters.get('format')}:{key}"))


def message(parameters: dict[str, Any], recipes: list[str]) -> tuple[str, bytes]:
    """(message id, JSON body) of an announcement."""
    ident = message_id(parameters)
    body = {"recipes": list(recipes), "parameters": {**parameters, "hidra_ng_id": ident}}
    return ident, json.dumps(body, sort_keys=True).encode()


class Announcer:
    """A pika connection with confirms, shared by the stream threads (one at a time)."""

    def __init__(self, uri: str, queue: str, recipes: list[str]) -> None:
        self.uri, self.queue, self.recipes = uri, queue, recipes
        self._lock = threading.Lock()
        self._connection: Any = None
        self._channel: Any = None

    def _connect(self) -> None:
        import pika

        params = pika.URLParameters(self.uri)
        params.socket_timeout = 10
        params.blocked_connection_timeout = 30
        self._connection = pika.BlockingConnection(params)
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._channel.queue_declare(queue=self.queue, durable=True)

    def publish(self, parameters: dict[str, Any]) -> str:
        """Publish one announcement; returns its id once the broker confirmed it."""
        import pika
        import pika.exceptions

        ident, body = message(parameters, self.recipes)
        props = pika.BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id=ident,
            app_id="hidra-ng-write",
        )
        with self._lock:
            try:
                if self._channel is None or not self._channel.is_open:
                    self._connect()
                self._channel.basic_publish(
                    exchange="", routing_key=self.queue, body=body, properties=props,
                    mandatory=True,
                )  # fmt: skip
            except (pika.exceptions.AMQPError, OSError) as err:
                self._close()
                raise AnnounceError(
                    f"announcement of {parameters.get('file')} to queue {self.queue!r} at"
                    f" {_safe(self.uri)} failed: {err!r}"
                ) from err
        return ident

    def _close(self) -> None:
        conn, self._connection, self._channel = self._connection, None, None
        if conn is not None:
            try:
                conn.close()
            except Exception as err:  # already broken: nothing more to do
                log.debug("closing the AMQP connection: %s", err)

    def close(self) -> None:
        with self._lock:
            self._close()


def _safe(uri: str) -> str:
    """The URI without its password, for messages."""
    head, sep, tail = uri.partition("@")
    if not sep or "://" not in head:
        return uri
    scheme, _, user = head.partition("://")
    return f"{scheme}://{user.split(':')[0]}:***@{tail}"
