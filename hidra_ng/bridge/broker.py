"""One stream-protocol connection to RabbitMQ, with rstream's low-level ``Client``.

The bridge uses rstream's ``Client`` rather than its ``Producer``: the Producer
buffers ``send()`` for up to half a second, reconnects and redeclares publishers
on its own and picks publishing ids itself, while exactly-once needs the bridge
to decide all three (publishing id = index + 1, strictly in index order, one
connection, and after a loss: ask the broker where to go on). Plain ``Publish``
frames only: no sub-entry batching (a re-sent sub-entry batch can be stored twice).

Two shortcuts past rstream's pure-Python frame codec, which cost more than
everything else the bridge does for a small frame: Publish frames are written
from publish entries the reader encoded (:meth:`BrokerLink.publish_entries`), and
PublishConfirm frames are decoded with one ``struct`` call (:class:`_Connection`;
rstream decodes each publishing id with a generic field decoder, ~2 us an id).
Both use rstream 1.1's ``Connection`` (pinned to 1.1.x in pyproject.toml).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import struct
from collections.abc import Callable, Sequence

from rstream import exceptions, schema
from rstream.client import Client
from rstream.connection import Connection
from rstream.encoding import decode_frame

from hidra_ng.bridge.uri import BrokerAddress
from hidra_ng.errors import BrokerError

log = logging.getLogger(__name__)

PUBLISHER_REFERENCE = "hidra-ng-bridge"  # with the stream name: one publisher per hidra stream
FRAME_MAX = 64 << 20  # must not exceed the broker's stream.frame_max (documented)
HEARTBEAT_SECONDS = 20
MAX_PUBLISHERS = 256  # publisher ids are one byte in the stream protocol
REQUEST_TIMEOUT_SECONDS = 10.0
# a Publish frame's head: size (of what follows), key, version, publisher id, count
_PUBLISH_HEAD = struct.Struct(">IHHBI")
_PUBLISH_KEY = schema.Publish.key.value
# a PublishConfirm frame after its size: key 3, version 1, then publisher id and count
_CONFIRM_HEAD = struct.pack(">HH", schema.PublishConfirm.key.value, 1)


class _Connection(Connection):
    """rstream's Connection, with PublishConfirm frames decoded in one ``struct`` call."""

    async def read_frame(self) -> schema.Frame:
        data = await self._read_frame_raw()
        if data[:4] == _CONFIRM_HEAD and len(data) >= 9:
            count = int.from_bytes(data[5:9], "big")
            if len(data) == 9 + 8 * count:
                ids = list(struct.unpack_from(f">{count}Q", data, 9))
                return schema.PublishConfirm(publisher_id=data[4], publishing_ids=ids)
        return decode_frame(bytes(data))


def publish_head(pid: int, count: int, entries: Sequence[bytes]) -> bytes:
    """The head of a Publish frame (version 1) of ``count`` messages in ``entries``."""
    size = _PUBLISH_HEAD.size - 4 + sum(map(len, entries))
    return _PUBLISH_HEAD.pack(size, _PUBLISH_KEY, 1, pid, count)


class BrokerLink:
    """A connection: streams, publishers, Publish frames and their confirms."""

    def __init__(
        self,
        address: BrokerAddress,
        on_confirm: Callable[[int, Sequence[int]], None],
        on_error: Callable[[int, int, int], None],
        frame_max: int = FRAME_MAX,
    ) -> None:
        self.address = address
        self.on_confirm = on_confirm
        self.on_error = on_error
        self.requested_frame_max = frame_max
        self.client: Client | None = None
        self.closed = asyncio.Event()
        self._free_ids = list(range(MAX_PUBLISHERS - 1, -1, -1))

    @property
    def frame_max(self) -> int:
        return self.client.frame_max if self.client else self.requested_frame_max

    @property
    def alive(self) -> bool:
        return (
            self.client is not None
            and self.client.is_connection_alive()
            and not self.closed.is_set()
        )

    async def open(self) -> None:
        a = self.address
        context = ssl.create_default_context() if a.tls else None
        client = Client(
            a.host,
            a.port,
            ssl_context=context,
            frame_max=self.requested_frame_max,
            heartbeat=HEARTBEAT_SECONDS,
            connection_name="hidra-ng-bridge",
            connection_closed_handler=self._on_closed,
        )
        self.client = client
        try:
            await asyncio.wait_for(client.start(), REQUEST_TIMEOUT_SECONDS)
            await asyncio.wait_for(
                client.authenticate(a.vhost, a.username, a.password), REQUEST_TIMEOUT_SECONDS
            )
        except exceptions.ServerError as err:
            await self.close()
            raise BrokerError(f"broker {a} refused the connection: {err}") from err
        except (OSError, TimeoutError, ConnectionError) as err:
            await self.close()
            raise BrokerError(f"broker {a} cannot be reached: {err or type(err).__name__}") from err
        if type(client._conn) is Connection:
            # rstream's listener calls read_frame on each turn: from the next frame on,
            # confirms are decoded by _Connection (same state, one method more)
            client._conn.__class__ = _Connection
        # rstream reports a lost connection only for clients that carry streams
        client.add_stream("hidra-ng-bridge")
        client.add_handler(schema.PublishConfirm, self._confirmed, name="bridge")
        client.add_handler(schema.PublishError, self._failed, name="bridge")

    def _on_closed(self, info: object) -> None:
        log.debug("broker connection closed: %s", info)
        self.closed.set()

    def _confirmed(self, frame: schema.PublishConfirm) -> None:
        self.on_confirm(frame.publisher_id, frame.publishing_ids)

    def _failed(self, frame: schema.PublishError) -> None:
        for error in frame.errors:
            self.on_error(frame.publisher_id, error.publishing_id, error.response_code)

    async def _request(self, what: str, coro) -> object:
        try:
            return await asyncio.wait_for(coro, REQUEST_TIMEOUT_SECONDS)
        except exceptions.ServerError as err:
            raise BrokerError(f"broker {self.address} refused to {what}: {err}") from err
        except (OSError, TimeoutError, ConnectionError) as err:
            self.closed.set()
            raise BrokerError(f"broker {self.address} did not {what}: {err!r}") from err

    async def ensure_stream(self, name: str, arguments: dict | None = None) -> None:
        assert self.client is not None
        try:
            await asyncio.wait_for(
                self.client.create_stream(name, arguments), REQUEST_TIMEOUT_SECONDS
            )
        except exceptions.StreamAlreadyExists:
            return
        except exceptions.ServerError as err:
            raise BrokerError(
                f"broker {self.address} refused to create stream {name}: {err}"
            ) from err
        except (OSError, TimeoutError, ConnectionError) as err:
            self.closed.set()
            raise BrokerError(f"broker {self.address} did not create {name}: {err!r}") from err

    async def last_publishing_id(self, name: str, reference: str = PUBLISHER_REFERENCE) -> int:
        """The highest publishing id the broker stored for our publisher on ``name`` (0: none)."""
        assert self.client is not None
        sequence = await self._request(
            f"tell the sequence of {name}",
            self.client.query_publisher_sequence(name, reference),
        )
        assert isinstance(sequence, int), sequence
        return sequence

    def has_free_publisher(self) -> bool:
        return bool(self._free_ids)

    async def declare_publisher(self, name: str, reference: str = PUBLISHER_REFERENCE) -> int:
        assert self.client is not None
        pid = self._free_ids.pop()
        try:
            await self._request(
                f"declare a publisher on {name}",
                self.client.declare_publisher(name, reference, pid),
            )
        except BrokerError:
            self._free_ids.append(pid)
            raise
        return pid

    async def delete_publisher(self, pid: int) -> None:
        assert self.client is not None
        await self._request("delete a publisher", self.client.delete_publisher(pid))
        self._free_ids.append(pid)

    async def publish(self, pid: int, messages: Sequence[tuple[int, bytes]]) -> None:
        """One Publish frame of (publishing id, encoded message); confirms come back later."""
        assert self.client is not None
        frame = schema.Publish(
            publisher_id=pid,
            messages=[
                schema.Message(publishing_id=p, filter_value=None, data=d) for p, d in messages
            ],
        )
        await self.client.send_publish_frame(frame)
        if not self.client.is_connection_alive():
            self.closed.set()
            raise BrokerError(f"lost the connection to broker {self.address}")

    async def publish_entries(self, pid: int, count: int, entries: Sequence[bytes]) -> None:
        """One Publish frame of ``count`` messages already encoded as publish entries
        (publishing id, length, message: messages.RecordEncoder.entries), written as
        they are; confirms come back later.

        The frame is what rstream's ``send_publish_frame`` writes (stream protocol:
        size, key 2, version 1, publisher id, message count, the entries), without
        making a ``schema.Message`` per message and copying each into a buffer: for
        small frames that per-message work bounded the bridge.
        """
        assert self.client is not None
        # rstream 1.1's Connection keeps the asyncio StreamWriter in _writer; no public
        # way to write a frame that is already encoded (rstream is pinned to 1.1.x)
        writer = self.client._conn._writer if self.client._conn else None
        if writer is None or not self.client.is_connection_alive() or writer.is_closing():
            self.closed.set()
            raise BrokerError(f"lost the connection to broker {self.address}")
        try:
            writer.write(publish_head(pid, count, entries))
            for entry in entries:
                writer.write(entry)
            await writer.drain()
        except (OSError, ConnectionError) as err:
            self.closed.set()
            raise BrokerError(f"lost the connection to broker {self.address}: {err!r}") from err

    async def close(self) -> None:
        client, self.client = self.client, None
        self.closed.set()
        if client is None:
            return
        try:
            await asyncio.wait_for(client.close(), 5)
        except Exception as err:  # closing a broken connection may fail in many ways
            log.debug("closing the broker connection: %r", err)
