"""One browser's WebSocket: live frames of the stream it watches, latest-wins.

The browser sends JSON requests; the server answers with JSON messages and
with binary frame messages (:func:`hidra_ng.view.images.browser_message`)::

    {"op": "watch", "stream": S}     follow S live (its newest stored frame first)
    {"op": "ack", "index": i}        frame i is drawn: the next one may come
    {"op": "show", "index": i}       a stored frame of S; live updates pause
    {"op": "live"}                   back to the newest frame, live
    {"op": "pixel", "x": x, "y": y}  the true value at (x, y) of the frame shown

    server -> {"op": "error" | "waiting", "message": ...}, {"op": "pixel", ...}

Flow control: at most one live frame is on its way to a browser until it acks;
in between, the stream's :class:`~hidra_ng.view.link.LiveFeed` only replaces its
one newest frame. A slow browser skips frames, and nothing queues for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any

from aiohttp import WSMsgType, web

from hidra_ng.errors import (
    HidraError,
    InvalidArgument,
    InvalidArgumentType,
    NotYetAvailable,
    ReceiverUnavailable,
)
from hidra_ng.view import images
from hidra_ng.view.link import LiveFeed, ReceiverLink
from hidra_ng.wire.frames import Frame

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 4096


class Session:
    """The state of one WebSocket: the stream watched, the frame shown, what is in flight."""

    def __init__(
        self, ws: web.WebSocketResponse, request: web.Request, link: ReceiverLink, max_pixels: int
    ) -> None:
        self.ws = ws
        self.request = request
        self.link = link
        self.max_pixels = max_pixels
        self.stream = ""
        self.feed: LiveFeed | None = None
        self.live = True
        self.awaiting_ack = False  # a live frame is on its way or not drawn yet
        self.sent_index = -1  # index of the last live frame sent
        self.sent_frame: Frame | None = None  # that frame (an index may come again: G6)
        self.sent = 0  # frames sent
        self.skipped = 0  # live frames not sent because a newer one was there
        self.shown: Frame | None = None  # the frame the browser shows (for true pixel values)
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._loop = asyncio.get_running_loop()
        self._fetch: asyncio.Task | None = None

    def stats(self) -> dict[str, Any]:
        """What this session holds: the test of latest-wins counts these, not time."""
        transport = self.request.transport
        return {
            "stream": self.stream,
            "live": self.live,
            "in_flight": int(self.awaiting_ack),
            "sent": self.sent,
            "skipped": self.skipped,
            "write_buffer_bytes": transport.get_write_buffer_size() if transport else 0,
        }

    # ----------------------------------------------------------------- run

    async def run(self) -> None:
        pump = asyncio.create_task(self._pump())
        try:
            async for msg in self.ws:
                if msg.type == WSMsgType.TEXT:
                    await self._handle(msg.data)
                elif msg.type == WSMsgType.BINARY:
                    await self._error("binary messages are not understood; send JSON requests")
        finally:
            pump.cancel()
            if self._fetch is not None:
                self._fetch.cancel()
            await self._unwatch()

    async def _handle(self, text: str) -> None:
        if len(text) > MAX_REQUEST_BYTES:
            await self._error(f"request of {len(text)} bytes is too long; at most 4096")
            return
        try:
            req = json.loads(text)
            op = req["op"]
        except (ValueError, TypeError, KeyError):
            await self._error(f"request {text[:80]!r} is not a JSON object with an 'op'")
            return
        handler = {
            "watch": self._op_watch,
            "ack": self._op_ack,
            "show": self._op_show,
            "live": self._op_live,
            "pixel": self._op_pixel,
        }.get(op if isinstance(op, str) else "")
        if handler is None:
            await self._error(f"op {op!r} is unknown; expected watch, ack, show, live or pixel")
            return
        try:
            await handler(req)
        except (KeyError, TypeError, ValueError) as err:
            await self._error(f"request {text[:80]!r} is malformed: {err}")

    # ------------------------------------------------------------------ ops

    async def _op_watch(self, req: dict) -> None:
        stream = req["stream"]
        if not isinstance(stream, str):
            raise InvalidArgumentType(f"stream {stream!r} is not a string")
        await self._unwatch()
        try:
            self.feed = self.link.feed(stream)
        except HidraError as err:  # an invalid stream name
            await self._error(str(err))
            return
        self.stream, self.live, self.sent_index, self.awaiting_ack = stream, True, -1, False
        self.sent_frame = None
        self.feed.listen(self._wake_soon)
        self._wake.set()  # another browser may have made the feed already: its newest now
        self._start_fetch(self._newest_stored(stream, self.feed))

    async def _op_ack(self, req: dict) -> None:
        self.awaiting_ack = False
        self._wake.set()

    async def _op_show(self, req: dict) -> None:
        index = req["index"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise InvalidArgument(f"index {index!r} is not an integer >= 0")
        if not self.stream:
            await self._error("no stream chosen; send watch first")
            return
        self.live = False
        self._start_fetch(self._stored(self.stream, index))

    async def _op_live(self, req: dict) -> None:
        self.live, self.sent_index, self.sent_frame = True, -1, None
        if self._fetch is not None:
            self._fetch.cancel()
        self._wake.set()

    async def _op_pixel(self, req: dict) -> None:
        x, y = req["x"], req["y"]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (x, y)):
            raise InvalidArgumentType(f"x {x!r} and y {y!r} must be integers")
        frame = self.shown
        value = None if frame is None else images.value_at(frame, x, y)
        index = None if frame is None else frame.index
        await self._send_json({"op": "pixel", "x": x, "y": y, "index": index, "value": value})

    # ------------------------------------------------------------- frames

    def _wake_soon(self) -> None:
        """From a feed thread: a newer frame is there."""
        with contextlib.suppress(RuntimeError):  # the loop is closing
            self._loop.call_soon_threadsafe(self._wake.set)

    async def _pump(self) -> None:
        """Send the feed's newest frame whenever the browser is ready for one."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            feed = self.feed
            if feed is None or not self.live or self.awaiting_ack:
                continue
            frame = feed.latest
            if frame is None or frame is self.sent_frame:
                continue
            if self.sent_index >= 0 and frame.index > self.sent_index + 1:
                self.skipped += frame.index - self.sent_index - 1
            self.sent_index, self.sent_frame = frame.index, frame
            self.awaiting_ack = True
            try:
                await self._send_frame(frame, live=True)
            except ConnectionError:
                return
            except Exception:  # one frame that cannot be shown must not end the session
                log.exception("frame %s #%d not sent", frame.stream, frame.index)
                self.awaiting_ack = False

    async def _newest_stored(self, stream: str, feed: LiveFeed) -> None:
        """Offer the newest stored frame, so an idle stream shows something at once."""
        try:
            frame = await self.link.call("last", stream)
        except NotYetAvailable:
            await self._send_json({"op": "waiting", "message": f"no frame of {stream!r} yet"})
            return
        feed.offer(frame)
        self._wake.set()

    async def _stored(self, stream: str, index: int) -> None:
        frame = await self.link.call("get", stream, index, timeout=0.0)
        if not self.live and stream == self.stream:
            await self._send_frame(frame, live=False)

    def _start_fetch(self, job) -> None:
        if self._fetch is not None:
            self._fetch.cancel()
        self._fetch = asyncio.create_task(self._report_errors(job))

    async def _report_errors(self, job) -> None:
        try:
            await job
        except ReceiverUnavailable as err:
            await self._error(str(err), kind="unavailable")
        except HidraError as err:  # Gone, NotYetAvailable, StreamFinished, InvalidStreamName
            await self._error(str(err), kind=type(err).__name__)
        except ConnectionError:
            pass

    async def _send_frame(self, frame: Frame, *, live: bool) -> None:
        message = await self._loop.run_in_executor(
            None,
            lambda: images.browser_message(frame, live=live, max_pixels=self.max_pixels),
        )
        self.shown = frame
        self.sent += 1
        async with self._send_lock:
            await self.ws.send_bytes(message)  # waits while the socket's buffer is full

    async def _send_json(self, message: dict) -> None:
        if self.ws.closed:
            return
        async with self._send_lock:
            with contextlib.suppress(ConnectionError):
                await self.ws.send_str(json.dumps(message, default=str))

    async def _error(self, message: str, kind: str = "error") -> None:
        await self._send_json({"op": "error", "kind": kind, "message": message})

    async def _unwatch(self) -> None:
        feed, self.feed = self.feed, None
        if feed is not None:
            feed.unlisten(self._wake_soon)
            await self._loop.run_in_executor(None, self.link.release, feed)
