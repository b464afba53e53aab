"""The view's web server: the page, the HTTP API and the WebSocket, on aiohttp.

:class:`ViewServer` runs in the calling thread (``run()``, for ``hidra-ng view``)
or in a thread of its own (``start()``/``stop()``, for tests and perf).

Access: without a token the server answers only requests addressed to a
loopback host name (so a web page elsewhere cannot reach it through DNS
rebinding), and binding beyond loopback is refused by the config. With a token,
every request, the page and the WebSocket included, must carry it: as
``?token=`` (the page then keeps it in an HttpOnly cookie), as the cookie, or as
``Authorization: Bearer``. A WebSocket from a page of another origin is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import threading
import weakref
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from hidra_ng.config import ViewConfig, is_loopback
from hidra_ng.errors import HidraError
from hidra_ng.shards import load_shard_map
from hidra_ng.view.api import Api, error
from hidra_ng.view.link import ReceiverLink, StreamTable
from hidra_ng.view.live import Session

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
COOKIE = "hidra_ng_view_token"
_MAX_FRAME_MESSAGE = 1 << 31


class ViewServer:
    """``hidra-ng view``: serves the page and the API for one receiver (or a shard map's)."""

    def __init__(self, settings: ViewConfig) -> None:
        self.settings = settings
        self.port = settings.port
        self.link = ReceiverLink(
            settings.api,
            settings.publish,
            keys_dir=settings.keys_dir,
            server_key_dir=settings.server_key_dir,
            request_timeout=settings.request_timeout_seconds,
            shards=load_shard_map(settings.shards) if settings.shards else None,
        )
        self.table = StreamTable(self.link)
        self.sessions: weakref.WeakSet[Session] = weakref.WeakSet()
        self._runner: web.AppRunner | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stopped: asyncio.Event | None = None

    @property
    def url(self) -> str:
        host = self.settings.bind
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}/"

    # ------------------------------------------------------------- the app

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=64 << 10)
        api = Api(self.link, self.table, self.settings.wait_seconds)
        app.add_routes(
            [
                web.get("/", self._page),
                web.get("/ws", self._websocket),
                web.static("/static", STATIC, append_version=False),
                *api.routes(),
            ]
        )
        app.on_shutdown.append(self._close_sockets)
        return app

    async def _page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    async def _websocket(self, request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc.lower() != request.host.lower():
            return error(403, f"WebSocket from origin {origin!r} refused; open the page itself")
        ws = web.WebSocketResponse(heartbeat=20.0, max_msg_size=64 << 10, compress=False)
        await ws.prepare(request)
        session = Session(ws, request, self.link, self.settings.max_pixels)
        self.sessions.add(session)
        try:
            await session.run()
        finally:
            self.sessions.discard(session)
        return ws

    async def _close_sockets(self, app: web.Application) -> None:
        for session in list(self.sessions):
            with contextlib.suppress(Exception):
                await session.ws.close(code=1001, message=b"server shutting down")

    @web.middleware
    async def _guard(self, request: web.Request, handler) -> web.StreamResponse:
        """Token and host checks, and a JSON 500 for anything unforeseen."""
        token = self.settings.token
        if token:
            given = (
                request.query.get("token")
                or request.cookies.get(COOKIE)
                or request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
            )
            if not given or not hmac.compare_digest(given.encode(), token.encode()):
                return error(
                    401,
                    "access token missing or wrong; open the page as"
                    f" http://{request.host}/?token=YOUR_TOKEN",
                )
        elif not is_loopback(request.url.host or ""):
            return error(
                403,
                f"host {request.host!r} refused: without a token this view answers only"
                " requests to localhost or 127.0.0.1",
            )
        try:
            response = await handler(request)
        except web.HTTPException:
            raise
        except Exception as err:
            log.exception("request %s failed", request.path)
            return error(500, f"internal error: {type(err).__name__}: {err}")
        if token and request.query.get("token") and not isinstance(response, web.WebSocketResponse):
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
        return response

    # ------------------------------------------------------------ running

    async def _serve(self, started: threading.Event | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopped = asyncio.Event()
        runner = web.AppRunner(self.app(), handle_signals=False, shutdown_timeout=2.0)
        await runner.setup()
        site = web.TCPSite(runner, self.settings.bind, self.settings.port)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            reason = os.strerror(err.errno).lower() if err.errno else str(err)
            raise HidraError(
                f"cannot listen on {self.settings.bind}:{self.settings.port}: {reason}"
            ) from None
        self._runner = runner
        server: Any = site._server  # an asyncio Server: its sockets tell a port 0's number
        if server is not None and server.sockets:  # port 0: the port picked
            self.port = server.sockets[0].getsockname()[1]
        if started is not None:
            started.set()
        try:
            await self._stopped.wait()
        finally:
            await runner.cleanup()
            await asyncio.get_running_loop().run_in_executor(None, self.link.close)

    def run(self, ready=None) -> None:
        """Serve until SIGINT or SIGTERM; ``ready(server)`` once listening."""

        async def main() -> None:
            loop = asyncio.get_running_loop()
            started = threading.Event()
            task = asyncio.create_task(self._serve(started))
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, self._request_stop)
            while not started.is_set() and not task.done():
                await asyncio.sleep(0.05)
            if started.is_set() and ready is not None:
                ready(self)
            await task

        asyncio.run(main())

    def start(self, timeout: float = 30.0) -> ViewServer:
        """Serve in a thread of its own; returns once listening (``port`` is then known)."""
        started = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            try:
                asyncio.run(self._serve(started))
            except BaseException as err:
                failure.append(err)
                started.set()

        self._thread = threading.Thread(target=main, name="hidra-ng-view", daemon=True)
        self._thread.start()
        started.wait(timeout)
        if failure:
            raise failure[0]
        return self

    def _request_stop(self) -> None:
        if self._stopped is not None:
            self._stopped.set()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._request_stop)
            self._thread.join(30)

    def __enter__(self) -> ViewServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- stats

    def stats(self) -> dict[str, Any]:
        """Sessions and feeds and what they hold (counted by the latest-wins tests)."""
        return {
            "sessions": [s.stats() for s in list(self.sessions)],
            "feeds": {
                name: {
                    "users": f.users,
                    "received": f.received,
                    "latest": None if f.latest is None else f.latest.index,
                }
                for name, f in self.link.feeds().items()
            },
        }
