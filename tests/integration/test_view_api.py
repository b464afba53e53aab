"""The live view's HTTP API and WebSocket against a real receiver on loopback (SPEC §16)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import io
import json
import re
import struct
import urllib.request

import msgspec
import numpy as np
import pytest
import tifffile
from conftest import wait_for
from PIL import Image
from view_helpers import block_frame, error_of, http, view_server

from hidra_ng import ConfigError, Producer
from hidra_ng.cli import main
from hidra_ng.config import ViewConfig
from hidra_ng.receiver.daemon import Receiver

STREAM = "p11/scan_0001"


@pytest.fixture
def view(receiver):
    ep = receiver.endpoints
    with view_server(ep["api"], ep["publish"], wait_seconds=0.5) as server:
        yield server


def _send(producer, stream, frames, metas=None):
    for i, frame in enumerate(frames):
        producer.send(stream, frame, meta=(metas or {}).get(i, {"i": i}))
    producer.flush(10)


def test_frames_as_npy_tiff_and_png_equal_the_frame(make_producer, view):
    frames = [block_frame(i) for i in range(3)]
    floats = np.linspace(-1.5, 2.5, 48 * 64, dtype=np.float32).reshape(48, 64)
    wide = (np.arange(12, dtype=np.uint32).reshape(3, 4) * 1_000_000).astype(np.uint32)
    p = make_producer()
    _send(p, STREAM, frames)
    _send(p, "p11/floats", [floats])
    _send(p, "p11/wide", [wide])

    for index, frame in enumerate(frames):
        status, headers, body = http(view, f"/api/streams/{STREAM}/{index}.npy")
        assert status == 200 and headers["Content-Type"] == "application/x-npy"
        np.testing.assert_array_equal(np.load(io.BytesIO(body)), frame)
        assert headers["X-Hidra-Ng-Index"] == str(index)
        status, headers, body = http(view, f"/api/streams/{STREAM}/{index}.tiff")
        assert status == 200 and headers["Content-Type"] == "image/tiff"
        tiff = tifffile.imread(io.BytesIO(body))
        assert tiff.dtype == frame.dtype
        np.testing.assert_array_equal(tiff, frame)
        status, headers, body = http(view, f"/api/streams/{STREAM}/{index}.png")
        assert status == 200 and headers["X-Hidra-Ng-Png"] == "exact"
        np.testing.assert_array_equal(np.array(Image.open(io.BytesIO(body))), frame)

    # latest, and the format chosen by Accept when there is no suffix
    status, headers, body = http(view, f"/api/streams/{STREAM}/latest", {"Accept": "image/tiff"})
    assert status == 200 and headers["X-Hidra-Ng-Index"] == "2"
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(body)), frames[2])
    status, _, body = http(view, f"/api/streams/{STREAM}/1", {"Accept": "application/x-npy"})
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), frames[1])
    preference = {"Accept": "image/png;q=0.5, application/x-npy;q=0.9, image/tiff;q=0"}
    _, headers, _ = http(view, f"/api/streams/{STREAM}/1", preference)
    assert headers["Content-Type"] == "application/x-npy"
    status, headers, body = http(view, f"/api/streams/{STREAM}/0")
    assert status == 200 and headers["Content-Type"] == "image/png"  # the default
    status, _, body = http(view, f"/api/streams/{STREAM}/1.json")
    info = json.loads(body)
    assert (info["index"], info["dtype"], info["shape"], info["meta"]) == (
        1, "uint16", [48, 64], {"i": 1})  # fmt: skip

    # float32: exact as .npy and .tiff; the PNG is scaled from min (0) to max (255)
    _, _, body = http(view, "/api/streams/p11/floats/0.tif")
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(body)), floats)
    _, _, body = http(view, "/api/streams/p11/floats/latest.npy")
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), floats)
    _, headers, body = http(view, "/api/streams/p11/floats/0.png")
    png = np.array(Image.open(io.BytesIO(body)))
    assert headers["X-Hidra-Ng-Png"] == "scaled min=-1.5 max=2.5"
    expected = np.rint((floats.astype(np.float64) + 1.5) / 4.0 * 255).astype(np.uint8)
    assert np.abs(png.astype(int) - expected).max() <= 1
    _, _, body = http(view, "/api/streams/p11/wide/0.tiff")
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(body)), wide)


def test_stream_list_and_info(make_producer, view):
    p = make_producer()
    _send(p, STREAM, [block_frame(0), block_frame(1)])
    p.send("p11/42", b"opaque")
    p.finish("p11/42")
    p.flush(10)
    status, _, body = http(view, "/api/streams")
    rows = {r["name"]: r for r in json.loads(body)}
    assert status == 200 and set(rows) == {STREAM, "p11/42"}
    assert (rows[STREAM]["count"], rows[STREAM]["last"], rows[STREAM]["finished"]) == (2, 1, False)
    assert rows["p11/42"]["finished"] is True and "rate_hz" in rows[STREAM]
    # a stream whose last segment looks like an index: the selector is always the last segment
    _, _, body = http(view, "/api/streams/p11/42/info")
    assert json.loads(body)["name"] == "p11/42"
    status, _, body = http(view, "/api/streams/p11/42/latest.json")
    assert status == 200 and json.loads(body)["kind"] == "bytes"
    status, _, body = http(view, "/api/streams/p11/42/0.png")
    assert status == 406 and "holds 6 bytes of opaque data, not an array" in error_of(body)


def test_bad_requests_get_clear_errors_and_the_server_goes_on(make_producer, view):
    p = make_producer()
    _send(p, STREAM, [block_frame(0)])
    cases = [
        ("/api/streams/p11/nothing/latest", 404, "stream 'p11/nothing' does not exist"),
        ("/api/streams/p11/nothing/info", 404, "stream 'p11/nothing' does not exist"),
        (f"/api/streams/{STREAM}/7", 404, "index 7 of stream 'p11/scan_0001' is not written yet"),
        (f"/api/streams/{STREAM}/7?wait=0", 404, "waited 0 s"),
        (f"/api/streams/{STREAM}/abc", 400, "is not /api/streams/STREAM/latest"),
        (f"/api/streams/{STREAM}/-1", 400, "is not /api/streams/STREAM/latest"),
        (f"/api/streams/{STREAM}/0.jpg", 400, "suffix .jpg is unknown"),
        (f"/api/streams/{STREAM}/0?wait=1e9", 400, "wait='1e9' is not valid; expected 0 to 10 s"),
        (f"/api/streams/{STREAM}/99999999999999999999", 400, "is not /api/streams"),
        ("/api/streams/bad%20name/0", 400, "stream name 'bad name' has a space"),
        ("/api/streams/a//b/0", 400, "stream name 'a//b' has an empty segment"),
        ("/api/streams/latest", 400, "is not /api/streams/STREAM/latest"),
        (f"/api/streams/{STREAM}/info.png", 400, "info takes no suffix"),
    ]
    for path, code, words in cases:
        status, headers, body = http(view, path)
        assert status == code, (path, status, body)
        assert headers["Content-Type"].startswith("application/json")
        assert words in error_of(body), (path, body)
    status, _, body = http(view, f"/api/streams/{STREAM}/0", {"Accept": "image/jpeg"})
    assert status == 406 and "Accept 'image/jpeg' names no format" in error_of(body)
    status, _, _ = http(view, "/no/such/page")
    assert status == 404
    # a frame written while a request waits for it is answered, not refused
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(http, view, f"/api/streams/{STREAM}/1.npy?wait=10")
        wait_for(lambda: view.link.in_flight == 1, what="the request to wait at the receiver")
        _send(p, STREAM, [block_frame(1)])
        status, _, body = waiting.result(timeout=30)
    assert status == 200
    np.testing.assert_array_equal(np.load(io.BytesIO(body)), block_frame(1))
    status, _, body = http(view, "/api/streams")
    assert status == 200 and [r["name"] for r in json.loads(body)] == [STREAM]


def test_removed_index_is_410(receiver_config, tmp_path):
    config = msgspec.structs.replace(receiver_config, max_store_bytes=100_000)
    with Receiver(config) as rx:
        ep = rx.endpoints
        with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "ret") as p:
            for i in range(30):
                p.send("old", np.full((100, 50), i, np.uint16))
            p.flush(10)
        with view_server(ep["api"], ep["publish"]) as view:

            def first():
                _, _, body = http(view, "/api/streams/old/info")
                return json.loads(body)["first"]

            wait_for(first, what="retention to remove the oldest frames")
            status, _, body = http(view, "/api/streams/old/0.npy")
            assert status == 410 and "index 0 of stream 'old' was removed" in error_of(body)
            status, _, body = http(view, f"/api/streams/old/{first()}.npy")
            assert status == 200 and np.load(io.BytesIO(body))[0, 0] == first()


def test_receiver_down_is_503_and_recovers(receiver_process, tmp_path):
    rx = receiver_process
    with Producer(rx.ingest, rx.api, tmp_path / "spool", "det") as p:
        _send(p, STREAM, [block_frame(0)])
    with view_server(rx.api, rx.publish, request_timeout_seconds=0.5) as view:
        assert http(view, "/api/streams")[0] == 200
        rx.kill()
        # the stream list is cached for half a second, then asked again
        status, _, body = wait_for(
            lambda: (r := http(view, "/api/streams"))[0] != 200 and r, what="a 503"
        )
        assert status == 503 and f"receiver at {rx.api} did not answer" in error_of(body)
        status, _, body = http(view, f"/api/streams/{STREAM}/0.npy")
        assert status == 503 and rx.api in error_of(body)
        _, _, body = http(view, "/api/status")
        assert json.loads(body)["up"] is False
        rx.start()
        wait_for(lambda: http(view, "/api/streams")[0] == 200, what="the view to see it back")
        status, _, body = http(view, f"/api/streams/{STREAM}/0.npy")
        assert status == 200
        np.testing.assert_array_equal(np.load(io.BytesIO(body)), block_frame(0))


# ---------------------------------------------------------------- access


def test_token_is_required_on_every_route_when_set(receiver):
    token = "s3cret-token-0123456789"
    ep = receiver.endpoints
    with view_server(ep["api"], ep["publish"], token=token) as view:
        for path in ("/", "/static/view.js", "/api/streams", "/ws"):
            status, _, body = http(view, path)
            assert status == 401 and "access token missing or wrong" in error_of(body)
        assert http(view, "/api/streams?token=wrong-token-0123456789")[0] == 401
        status, headers, _ = http(view, f"/?token={token}")
        assert status == 200 and "hidra_ng_view_token=" in headers["Set-Cookie"]
        assert "HttpOnly" in headers["Set-Cookie"]
        assert http(view, "/api/streams", {"Authorization": f"Bearer {token}"})[0] == 200
        cookie = {"Cookie": f"hidra_ng_view_token={token}"}
        assert http(view, "/api/streams", cookie)[0] == 200


def test_without_token_only_loopback_host_names_are_answered(view):
    assert http(view, "/api/streams", {"Host": f"localhost:{view.port}"})[0] == 200
    status, _, body = http(view, "/api/streams", {"Host": f"attacker.example:{view.port}"})
    assert status == 403 and "host 'attacker.example" in error_of(body)


def test_wide_bind_without_token_is_refused(capsys):
    with pytest.raises(ConfigError, match=re.escape('view.bind = "0.0.0.0": expected a loopback')):
        ViewConfig(bind="0.0.0.0")
    with pytest.raises(ConfigError, match="at least 16 characters"):
        ViewConfig(token="short")
    ViewConfig(bind="0.0.0.0", token="a-long-enough-token")
    assert main(["view", "--bind", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('hidra-ng: --bind "0.0.0.0": expected a loopback address')
    assert len(err.splitlines()) == 1


# ------------------------------------------------------------- websocket


def _frame_message(data: bytes) -> tuple[dict, bytes]:
    assert data[:4] == b"HNV1"
    (n,) = struct.unpack("<I", data[4:8])
    return json.loads(data[8 : 8 + n]), data[8 + n :]


async def _next_message(ws):
    import aiohttp

    msg = await ws.receive(timeout=20)
    if msg.type == aiohttp.WSMsgType.BINARY:
        return _frame_message(msg.data)
    assert msg.type == aiohttp.WSMsgType.TEXT, msg
    return json.loads(msg.data), None


def test_websocket_from_another_origin_is_refused(view):
    status, _, body = http(view, "/ws", {"Origin": "http://attacker.example"})
    assert status == 403 and "origin 'http://attacker.example' refused" in error_of(body)


def test_slow_websocket_client_holds_one_frame_and_skips(make_producer, view):
    """A browser that does not ack gets nothing more; nothing queues for it; then the newest."""
    import aiohttp

    p = make_producer()
    _send(p, STREAM, [block_frame(0)])

    async def scenario():
        async with aiohttp.ClientSession() as session, session.ws_connect(view.url + "ws") as ws:
            await ws.send_str(json.dumps({"op": "watch", "stream": STREAM}))
            header, values = await _next_message(ws)
            assert header["index"] == 0 and header["view"]["dtype"] == "uint16"
            shown = np.frombuffer(values, "<u2").reshape(header["view"]["shape"])
            np.testing.assert_array_equal(shown, block_frame(0))
            # the browser is stuck: 40 more frames, no ack
            await asyncio.to_thread(_send, p, STREAM, [block_frame(i) for i in range(1, 41)])
            await asyncio.to_thread(
                wait_for,
                lambda: view.stats()["feeds"][STREAM]["latest"] == 40,
                what="the feed to see the last frame",
            )
            stats = view.stats()
            (s,) = stats["sessions"]
            # one frame sent and not acked, nothing more sent or waiting in the socket's buffer
            assert (s["in_flight"], s["sent"]) == (1, 1), s
            assert s["write_buffer_bytes"] <= len(values) + 4096, s
            assert stats["feeds"][STREAM]["users"] == 1
            # a second browser on the same stream shares the feed and gets its newest at once
            async with session.ws_connect(view.url + "ws") as other:
                await other.send_str(json.dumps({"op": "watch", "stream": STREAM}))
                header, _ = await _next_message(other)
                assert header["index"] == 40
                assert view.stats()["feeds"][STREAM]["users"] == 2
            # the browser acks: it gets the newest frame at once, and the skip is counted
            await ws.send_str(json.dumps({"op": "ack", "index": 0}))
            header, values = await _next_message(ws)
            assert header["index"] == 40 and header["live"] is True
            (s,) = wait_for(lambda: len(ss := view.stats()["sessions"]) == 1 and ss)
            assert (s["sent"], s["skipped"]) == (2, 39)
            # a stored frame on request, its true pixel value, then bad requests
            await ws.send_str(json.dumps({"op": "show", "index": 7}))
            header, values = await _next_message(ws)
            assert (header["index"], header["live"]) == (7, False)
            await ws.send_str(json.dumps({"op": "pixel", "x": 37, "y": 21}))
            reply, _ = await _next_message(ws)
            assert reply == {"op": "pixel", "x": 37, "y": 21, "index": 7, "value": 1007}
            for bad, words in (
                ("not json", "is not a JSON object with an 'op'"),
                ('{"op": "dance"}', "op 'dance' is unknown"),
                ('{"op": "show", "index": -3}', "index -3 is not an integer >= 0"),
                ('{"op": "show", "index": 999}', "index 999 of stream 'p11/scan_0001' is not"),
                ('{"op": "watch", "stream": "bad name"}', "stream name 'bad name' has a space"),
            ):
                await ws.send_str(bad)
                reply, _ = await _next_message(ws)
                assert reply["op"] == "error" and words in reply["message"], (bad, reply)
        wait_for(lambda: not view.stats()["sessions"], what="the session to end")
        wait_for(lambda: not view.stats()["feeds"], what="the feed to stop with its last user")

    asyncio.run(scenario())


def test_view_reads_a_receiver_with_keys(receiver_config, tmp_path):
    """With CurveZMQ keys (SPEC §9) the view lists, reads and follows like every client."""
    import aiohttp

    from hidra_ng.security import keygen

    for name in ("server", "view", "det"):
        keygen(tmp_path / "keys" / name)
    allowed = tmp_path / "keys" / "allowed"
    allowed.mkdir()
    for name in ("view", "det"):
        (allowed / f"{name}.key").write_bytes(
            (tmp_path / "keys" / name / "hidra-ng.key").read_bytes()
        )
    config = msgspec.structs.replace(
        receiver_config,
        keys_dir=str(tmp_path / "keys" / "server"),
        authorized_keys_dir=str(allowed),
    )
    server_key = str(tmp_path / "keys" / "server")
    with Receiver(config) as rx:
        ep = rx.endpoints
        keys = {"keys_dir": str(tmp_path / "keys" / "det"), "server_key_dir": server_key}
        with Producer(ep["ingest"], ep["api"], tmp_path / "spool", "det", **keys) as p:
            _send(p, STREAM, [block_frame(0)])
            with view_server(
                ep["api"],
                ep["publish"],
                keys_dir=str(tmp_path / "keys" / "view"),
                server_key_dir=server_key,
            ) as view:
                status, _, body = http(view, f"/api/streams/{STREAM}/0.npy")
                assert status == 200
                np.testing.assert_array_equal(np.load(io.BytesIO(body)), block_frame(0))

                async def follow():
                    async with aiohttp.ClientSession() as s, s.ws_connect(view.url + "ws") as ws:
                        await ws.send_str(json.dumps({"op": "watch", "stream": STREAM}))
                        header, _ = await _next_message(ws)
                        assert header["index"] == 0
                        await ws.send_str(json.dumps({"op": "ack", "index": 0}))
                        await asyncio.to_thread(_send, p, STREAM, [block_frame(1)])
                        header, values = await _next_message(ws)
                        assert (header["index"], header["live"]) == (1, True)
                        shown = np.frombuffer(values, "<u2").reshape(48, 64)
                        np.testing.assert_array_equal(shown, block_frame(1))

                asyncio.run(follow())
            # without keys the same view sees nothing: the receiver refuses it, 503
            with view_server(ep["api"], ep["publish"], request_timeout_seconds=0.5) as view:
                status, _, body = http(view, "/api/streams")
                assert status == 503 and "did not answer" in error_of(body)


def test_view_command_serves_until_sigterm_and_says_why_it_cannot_start(receiver, tmp_path):
    import signal
    import socket
    import subprocess
    import sys

    ep = receiver.endpoints
    cmd = [sys.executable, "-m", "hidra_ng", "view", "--api", ep["api"], "--publish", ep["publish"]]
    proc = subprocess.Popen([*cmd, "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()
        assert line.startswith("hidra-ng view: open http://127.0.0.1:"), line
        url = line.split("open ", 1)[1].split(";", 1)[0]
        with urllib.request.urlopen(url + "api/streams", timeout=30) as r:
            assert r.status == 200
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*cmd, "--port", str(port)], capture_output=True, text=True,
                              timeout=60)  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == (
        f"hidra-ng: cannot listen on 127.0.0.1:{port}: address already in use"
    ), done.stderr


def test_garbage_on_the_http_port_costs_only_itself(make_producer, view):
    import socket

    p = make_producer()
    _send(p, STREAM, [block_frame(0)])
    garbage = [
        b"\x00\xff\xfe garbage\r\n\r\n",
        b"GET /api/streams HTTP/9.9\r\n\r\n",
        b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: not-base64\r\nSec-WebSocket-Version: 13\r\n\r\n",
        b"POST /api/streams HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello",
    ]
    for raw in garbage:
        with socket.create_connection(("127.0.0.1", view.port), timeout=30) as s:
            s.sendall(raw)
            answer = s.recv(200)
        assert answer.startswith(b"HTTP/1.") and int(answer.split()[1]) >= 400, (raw[:40], answer)
    status, _, body = http(view, "/api/streams")
    assert status == 200 and json.loads(body)[0]["name"] == STREAM
