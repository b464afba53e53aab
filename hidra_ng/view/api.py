"""The view's HTTP API: streams as JSON, frames as PNG, TIFF, .npy or JSON.

Routes (stream names contain ``/``, so the frame selector is always the *last*
path segment and everything before it is the stream name)::

    GET /api/status                          the receiver's state (JSON)
    GET /api/streams                         the stream list (JSON)
    GET /api/streams/{stream}/info           one stream (JSON)
    GET /api/streams/{stream}/latest[.ext]   the newest frame
    GET /api/streams/{stream}/{index}[.ext]  a stored frame

``.ext`` is ``.png``, ``.tiff`` (``.tif``), ``.npy`` or ``.json``; without one the
``Accept`` header decides (``image/png``, ``image/tiff``, ``application/x-npy``,
``application/json``), and PNG is the default. ``/api/streams/p11/scan_0001/42.tiff``
is frame 42 of stream ``p11/scan_0001``; a stream named ``p11/42`` is reached as
``/api/streams/p11/42/latest``.

Errors are JSON ``{"error": "one sentence"}``: 400 for a malformed request, 404
for an unknown stream or an index not written within ``?wait=`` seconds (default
``wait_seconds``), 406 for a format the frame cannot have, 410 for an index
removed by retention, 503 when the receiver does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from typing import Any

from aiohttp import web

from hidra_ng.errors import (
    Gone,
    HidraError,
    InvalidInput,
    NotYetAvailable,
    ReceiverUnavailable,
    StreamFinished,
)
from hidra_ng.view import images
from hidra_ng.view.link import ReceiverLink, StreamTable

log = logging.getLogger(__name__)

_SELECTOR = re.compile(r"(?P<what>latest|info|\d{1,19})(?:\.(?P<ext>[A-Za-z]{1,8}))?")
_ACCEPT = {
    "image/png": "png",
    "image/tiff": "tiff",
    "application/x-npy": "npy",
    "application/octet-stream": "npy",
    "application/json": "json",
    "image/*": "png",
    "*/*": "png",
}
MAX_WAIT_SECONDS = 10.0  # also bounds how long a stop waits for requests in flight


def error(status: int, message: str) -> web.Response:
    """A JSON error response: ``{"error": message}``."""
    return web.json_response({"error": message}, status=status)


class Api:
    """The handlers of the HTTP API, sharing one receiver link."""

    def __init__(self, link: ReceiverLink, table: StreamTable, wait_seconds: float) -> None:
        self.link = link
        self.table = table
        self.wait_seconds = wait_seconds

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/api/status", self.status),
            web.get("/api/streams", self.streams),
            web.get("/api/streams/{path:.+}", self.frame),
        ]

    async def status(self, request: web.Request) -> web.Response:
        with contextlib.suppress(ReceiverUnavailable):
            await self.table.rows()
        return web.json_response(self._state())

    def _state(self) -> dict[str, Any]:
        t = self.table
        return {"api": self.link.api, "publish": self.link.publish, "up": bool(t.up),
                "error": t.error, "since": t.changed}  # fmt: skip

    async def streams(self, request: web.Request) -> web.Response:
        try:
            rows = await self.table.rows()
        except ReceiverUnavailable as err:
            return error(503, str(err))
        return web.json_response(rows, headers={"Cache-Control": "no-store"})

    async def frame(self, request: web.Request) -> web.Response:
        stream, sep, selector = request.match_info["path"].rstrip("/").rpartition("/")
        match = _SELECTOR.fullmatch(selector)
        if not sep or not stream or match is None:
            return error(
                400,
                f"path {request.path!r} is not /api/streams/STREAM/latest, /api/streams/STREAM/"
                "INDEX or /api/streams/STREAM/info (with .png, .tiff, .npy or .json after"
                " latest or INDEX)",
            )
        what, ext = match["what"], (match["ext"] or "").lower()
        try:
            wait = self._wait(request)
            if what == "info":
                if ext:
                    raise InvalidInput(f"info takes no suffix; got .{ext}")
                return web.json_response(_info_row(await self._known(stream)))
            fmt = self._format(request, ext)
            await self._known(stream)
            if what == "latest":
                frame = await self.link.call("last", stream)
            else:
                frame = await self._get(stream, int(what), wait)
            body, headers = await asyncio.get_running_loop().run_in_executor(
                None, images.encode, frame, fmt
            )
        except HidraError as err:
            return self._error(err, stream)
        headers["Cache-Control"] = "no-store"
        headers["X-Hidra-Ng-Index"] = str(frame.index)
        return web.Response(body=body, content_type=images.FORMATS[fmt], headers=headers)

    def _wait(self, request: web.Request) -> float:
        text = request.query.get("wait")
        if text is None:
            return self.wait_seconds
        try:
            wait = float(text)
        except ValueError:
            wait = -1.0
        if not 0 <= wait <= MAX_WAIT_SECONDS:
            raise InvalidInput(f"wait={text!r} is not valid; expected 0 to {MAX_WAIT_SECONDS:g} s")
        return wait

    def _format(self, request: web.Request, ext: str) -> str:
        if ext:
            if ext not in images.SUFFIXES:
                raise InvalidInput(
                    f"suffix .{ext} is unknown; expected .png, .tiff, .tif, .npy or .json"
                )
            return images.SUFFIXES[ext]
        accept = request.headers.get("Accept", "")
        if not accept.strip():
            return "png"
        for media in _by_preference(accept):
            if media in _ACCEPT:
                return _ACCEPT[media]
        raise _NotAcceptable(
            f"Accept {accept!r} names no format this API serves; expected image/png,"
            " image/tiff, application/x-npy or application/json"
        )

    async def _known(self, stream: str) -> Any:
        """The stream's StreamInfo; _UnknownStream when the receiver has no messages of it."""
        try:
            return await self.link.call("info", stream)
        except NotYetAvailable:
            where = self.link.api
            if self.link.shards is not None:  # SPEC §14: the receiver the map places it on
                shard = self.link.shards.place(stream)
                where = f"{shard.api} (shard {shard.name})"
            raise _UnknownStream(
                f"stream {stream!r} does not exist on the receiver at {where}"
            ) from None

    async def _get(self, stream: str, index: int, wait: float):
        try:
            return await self.link.call("get", stream, index, timeout=wait)
        except NotYetAvailable as err:
            raise _NotWritten(f"{err}; waited {wait:g} s") from None

    def _error(self, err: HidraError, stream: str) -> web.Response:
        if isinstance(err, ReceiverUnavailable):
            return error(503, str(err))
        if isinstance(err, images.NotAnImage | _NotAcceptable):
            return error(406, str(err))
        if isinstance(err, InvalidInput):
            return error(400, str(err))
        if isinstance(err, Gone):
            return error(410, str(err))
        if isinstance(err, _UnknownStream | _NotWritten | StreamFinished | NotYetAvailable):
            return error(404, str(err))
        log.warning("request for stream %r failed: %s", stream, err)
        return error(500, f"{type(err).__name__}: {err}")


def _by_preference(accept: str) -> list[str]:
    """The media types of an Accept header, highest q first (ties in the order given)."""
    ranked = []
    for position, item in enumerate(accept.split(",")):
        media, *params = (part.strip() for part in item.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0:
            ranked.append((-q, position, media.lower()))
    return [media for _, _, media in sorted(ranked)]


class _UnknownStream(HidraError):
    pass


class _NotWritten(HidraError):
    pass


class _NotAcceptable(HidraError):
    pass


def _info_row(info) -> dict[str, Any]:
    return {
        "name": info.name,
        "first": info.first,
        "last": info.last,
        "count": info.count,
        "bytes": info.bytes,
        "finished": info.finished,
    }
