"""``hidra-ng view``: the live view of a receiver's frames in a browser (SPEC §16).

server.py   the aiohttp app: the page, the HTTP API, the WebSocket, access checks
api.py      HTTP routes: streams (JSON), frames as PNG, TIFF, .npy or JSON
live.py     one browser's WebSocket session: live frames, latest-wins
link.py     the receiver side: Consumer calls in threads, one Subscriber per stream
images.py   frames to bytes (files and the browser's binary message), no I/O
static/     the page: HTML, JavaScript, CSS (shipped in the wheel, no CDN)
"""

from hidra_ng.view.server import ViewServer

__all__ = ["ViewServer"]
