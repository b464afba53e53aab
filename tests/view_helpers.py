"""Helpers of the live view's tests: a view server on a free port, HTTP requests, frames."""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator

import numpy as np

from hidra_ng.config import ViewConfig
from hidra_ng.view import ViewServer


@contextlib.contextmanager
def view_server(api: str, publish: str, **settings) -> Iterator[ViewServer]:
    """A ViewServer on a free loopback port, in its own thread; stopped at the end."""
    server = ViewServer(ViewConfig(api=api, publish=publish, port=0, **settings)).start()
    try:
        yield server
    finally:
        server.stop()


def http(server: ViewServer, path: str, headers: dict | None = None, timeout: float = 30.0):
    """(status, headers, body) of GET ``path``; never raises for an HTTP error status."""
    req = urllib.request.Request(server.url.rstrip("/") + path, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def block_frame(index: int = 0) -> np.ndarray:
    """48 x 64 uint16: 3 x 4 blocks of 16 x 16 with distinct values, and one marker pixel.

    Block (row r, column c) holds 100 * (4 r + c + 1); pixel x=37, y=21 holds 1000 + index.
    """
    frame = np.zeros((48, 64), np.uint16)
    for r in range(3):
        for c in range(4):
            frame[16 * r : 16 * (r + 1), 16 * c : 16 * (c + 1)] = 100 * (4 * r + c + 1)
    frame[21, 37] = 1000 + index
    return frame
