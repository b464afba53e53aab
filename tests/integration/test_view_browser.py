"""The live view in a real browser: Debian's chromium driven by selenium (SPEC §16).

Without chromium and chromedriver these tests install them as root
(scripts/debian-packages), skip with the install command otherwise, and fail with
CI=true.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from browser import chromium, require_chromium, shown_index, wait_js
from conftest import wait_for
from PIL import Image
from view_helpers import block_frame, view_server

from hidra_ng import Producer

STREAM = "p11/scan_0001"


@pytest.fixture(scope="module")
def driver():
    require_chromium()
    with chromium(1200, 800) as d:
        yield d


def _open(driver, view, stream: str | None = None) -> None:
    driver.get(view.url)
    wait_js(driver, "return window.hidraView !== undefined", what="the page script")
    if stream is not None:
        row = f'#streams tr[data-stream="{stream}"]'
        wait_js(driver, f"return document.querySelector('{row}')", what=f"row {stream}")
        driver.find_element("css selector", row).click()


def _text(driver, element_id: str) -> str:
    return driver.find_element("id", element_id).get_attribute("textContent")


def _rows(driver) -> list[list[str]]:
    """(name, count) of each row of the stream list (rebuilt every second: read it at once)."""
    return driver.execute_script(
        "return [...document.querySelectorAll('#streams tr[data-stream]')]"
        ".map(tr => [tr.dataset.stream, tr.cells[1].textContent])"
    )


def _wait_index(driver, index: int, what: str) -> None:
    wait_for(lambda: shown_index(driver) == index, timeout=30, what=what)


def _canvas_pixels(driver) -> np.ndarray:
    """The image canvas as the browser drew it: (height, width, 3) RGB from a screenshot."""
    png = driver.find_element("id", "image").screenshot_as_png
    return np.array(Image.open(io.BytesIO(png)).convert("RGB"))


def _hover(driver, x: int, y: int) -> str:
    """Move the mouse over true pixel (x, y); the readout text that follows."""
    from selenium.webdriver.common.action_chains import ActionChains

    canvas = driver.find_element("id", "image")
    point = driver.execute_script(f"return window.hidraView.clientPoint({x}, {y})")
    rect = driver.execute_script("return arguments[0].getBoundingClientRect()", canvas)
    dx = point["x"] - (rect["left"] + rect["width"] / 2)
    dy = point["y"] - (rect["top"] + rect["height"] / 2)
    ActionChains(driver).move_to_element_with_offset(canvas, int(dx), int(dy)).perform()
    wait_js(
        driver,
        f"return document.getElementById('pixel').textContent.startsWith('x {x}  y {y} ')",
        what=f"the readout of pixel {x}, {y}",
    )
    return _text(driver, "pixel")


def _set_contrast(driver, lo: float, hi: float) -> None:
    for element_id, value in (("min", lo), ("max", hi)):
        field = driver.find_element("id", element_id)
        field.clear()
        field.send_keys(str(value))


def test_live_frames_contrast_log_geometry_and_stepping_back(driver, make_producer, receiver):
    p = make_producer()
    ep = receiver.endpoints
    with view_server(ep["api"], ep["publish"]) as view:
        for i in range(5):
            p.send(STREAM, block_frame(i), meta={"i": i, "exposure_s": 0.01})
        p.flush(10)
        _open(driver, view, STREAM)
        _wait_index(driver, 4, "the newest frame, 4")
        assert "live" in _text(driver, "mode")

        # frames arrive: the shown index advances with them
        for i in range(5, 10):
            p.send(STREAM, block_frame(i), meta={"i": i, "exposure_s": 0.01})
        p.flush(10)
        _wait_index(driver, 9, "live frame 9")
        assert '"i": 9' in _text(driver, "meta")
        assert "48\u00d764 uint16" in _text(driver, "frame-desc")
        wait_for(lambda: _rows(driver) == [[STREAM, "10"]], what="the stream list with 10")

        # step back to a stored frame; live frames no longer replace it
        field = driver.find_element("id", "goto")
        field.clear()
        field.send_keys("3")
        driver.find_element("id", "go").click()
        _wait_index(driver, 3, "stored frame 3")
        assert "stored" in _text(driver, "mode")
        p.send(STREAM, block_frame(10))
        p.flush(10)
        wait_for(lambda: _rows(driver) == [[STREAM, "11"]], what="the count to reach 11")
        assert shown_index(driver) == 3

        # geometry: zoom 4 from the top-left corner, gray, contrast 0 .. 1300
        driver.execute_script("document.getElementById('cmap').value = 'gray';")
        _set_contrast(driver, 0, 1300)
        assert driver.find_element("id", "contrast").get_attribute("value") == "manual"
        driver.execute_script("window.hidraView.setView(4, 0, 0)")
        frame = block_frame(3).astype(np.float64)
        expected = np.rint(np.clip(frame / 1300, 0, 1) * 255)
        expected = np.kron(expected, np.ones((4, 4)))  # each pixel a 4 x 4 square
        drawn = _canvas_pixels(driver)[: 48 * 4, : 64 * 4].astype(np.float64)
        assert drawn.shape == (192, 256, 3)
        assert np.abs(drawn - expected[:, :, None]).max() <= 2  # colour rounding only
        assert (_canvas_pixels(driver)[192:, :, :] < 20).all()  # nothing drawn below it

        # pixel readout under the cursor: the marker holds 1000 + index
        assert _hover(driver, 37, 21).startswith("x 37  y 21  value 1003")
        assert _hover(driver, 5, 40).startswith("x 5  y 40  value 900")

        # log scale lifts a dim block: 100 of 1300 is 20 gray linear, ~163 in log
        linear = _canvas_pixels(driver)[8, 8, 0]
        driver.find_element("id", "log").click()
        wait_for(lambda: _canvas_pixels(driver)[8, 8, 0] > linear + 100, what="log scale")
        driver.find_element("id", "log").click()

        # contrast: a narrower range saturates the 200 block
        _set_contrast(driver, 0, 200)
        wait_for(lambda: _canvas_pixels(driver)[8, 4 * 16 + 8, 0] >= 254, what="new contrast")

        # a colour map other than gray
        driver.execute_script(
            "const s = document.getElementById('cmap'); s.value = 'viridis'; s.onchange();"
        )
        r, g, b = _canvas_pixels(driver)[8, 8]
        assert not (r == g == b)

        # prev / next buttons, then back to live
        driver.find_element("id", "prev").click()
        _wait_index(driver, 2, "frame 2 after prev")
        driver.find_element("id", "next").click()
        _wait_index(driver, 3, "frame 3 after next")
        driver.find_element("id", "live").click()
        _wait_index(driver, 10, "the newest frame after live")
        assert "live" in _text(driver, "mode")

        # a removed or future index is said, the frame shown stays
        field = driver.find_element("id", "goto")
        field.clear()
        field.send_keys("500")
        driver.find_element("id", "go").click()
        wait_js(driver, "return document.getElementById('notice').textContent.includes('500')")
        assert "index 500 of stream 'p11/scan_0001' is not written yet" in _text(driver, "notice")


def test_page_says_when_the_receiver_is_down_and_recovers(driver, receiver_process, tmp_path):
    rx = receiver_process
    with Producer(rx.ingest, rx.api, tmp_path / "spool", "det") as p:
        p.send(STREAM, block_frame(0))
        p.flush(10)
        with view_server(rx.api, rx.publish, request_timeout_seconds=0.5) as view:
            _open(driver, view, STREAM)
            _wait_index(driver, 0, "frame 0")
            wait_js(driver, "return document.getElementById('status').textContent"
                    ".includes('connected')", what="connected")  # fmt: skip
            rx.kill()
            wait_js(driver, "return document.getElementById('status').textContent"
                    ".includes('unreachable')", what="the page to say it")  # fmt: skip
            assert rx.api in _text(driver, "status")
            rx.start()
            wait_js(driver, "return document.getElementById('status').textContent"
                    ".includes('connected')", timeout=30, what="recovery")  # fmt: skip
            # live frames flow again
            p.send(STREAM, block_frame(1))
            p.flush(30)
            _wait_index(driver, 1, "a live frame after the restart")


def test_binned_large_frame_reads_the_true_value_under_the_cursor(driver, make_producer, receiver):
    """A frame over max_pixels reaches the page binned (maximum); the readout asks the server."""
    frame = (np.arange(512 * 512, dtype=np.uint32).reshape(512, 512) % 60000).astype(np.uint16)
    p = make_producer()
    p.send("p11/big", frame)
    p.flush(10)
    ep = receiver.endpoints
    with view_server(ep["api"], ep["publish"], max_pixels=65536) as view:
        _open(driver, view, "p11/big")
        _wait_index(driver, 0, "the binned frame")
        assert "binned 2x2 (maximum) for display" in _text(driver, "frame-desc")
        driver.execute_script("window.hidraView.setView(4, 0, 0)")
        _hover(driver, 101, 50)
        wait_js(driver, "return document.getElementById('pixel').textContent"
                ".includes('true value')", what="the true value")  # fmt: skip
        assert _text(driver, "pixel") == f"x 101  y 50  value {frame[50, 101]}  (true value)"


def test_wheel_zooms_around_the_cursor_and_drag_pans(driver, make_producer, receiver):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin

    p = make_producer()
    p.send(STREAM, block_frame(0))
    p.flush(10)
    ep = receiver.endpoints
    with view_server(ep["api"], ep["publish"]) as view:
        _open(driver, view, STREAM)
        _wait_index(driver, 0, "frame 0")
        driver.execute_script("window.hidraView.setView(4, 10, 10)")
        assert _hover(driver, 37, 21).startswith("x 37  y 21  value 1000")
        canvas = driver.find_element("id", "image")
        zoom = driver.execute_script("return window.hidraView.state.zoom")
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_viewport(
            *_viewport_point(driver, 37, 21)), 0, -300).perform()  # fmt: skip
        wait_for(lambda: driver.execute_script("return window.hidraView.state.zoom") > zoom,
                 what="the wheel to zoom in")  # fmt: skip
        # the pixel under the cursor stays under it
        x, y = _viewport_point(driver, 37, 21)
        assert driver.execute_script(
            "const p = window.hidraView.clientPoint(37, 21); return [p.x, p.y]"
        ) == pytest.approx([x, y], abs=driver.execute_script("return window.hidraView.state.zoom"))
        before = driver.execute_script(
            "return [window.hidraView.state.ox, window.hidraView.state.oy]"
        )
        ActionChains(driver).click_and_hold(canvas).move_by_offset(50, 30).release().perform()
        after = driver.execute_script(
            "return [window.hidraView.state.ox, window.hidraView.state.oy]"
        )
        assert after == pytest.approx([before[0] + 50, before[1] + 30], abs=1)
        driver.find_element("id", "fit").click()
        zoom = driver.execute_script("return window.hidraView.state.zoom")
        width = driver.execute_script("return document.getElementById('image').clientWidth")
        height = driver.execute_script("return document.getElementById('image').clientHeight")
        assert zoom == pytest.approx(min(width / 64, height / 48))


def _viewport_point(driver, x: int, y: int) -> tuple[int, int]:
    point = driver.execute_script(f"return window.hidraView.clientPoint({x}, {y})")
    return int(point["x"]), int(point["y"])


def test_frames_without_an_image_and_finished_streams(driver, make_producer, receiver):
    p = make_producer()
    p.send("p11/log", b"opaque bytes", meta={"note": "not an image"})
    p.finish("p11/log")
    p.flush(10)
    ep = receiver.endpoints
    with view_server(ep["api"], ep["publish"]) as view:
        _open(driver, view, "p11/log")
        _wait_index(driver, 0, "the bytes frame")
        wait_js(driver, "return document.getElementById('overlay').textContent.includes('bytes')")
        assert _text(driver, "overlay") == "frame #0: 12 bytes of opaque data, no image"
        assert '"note": "not an image"' in _text(driver, "meta")
        done = driver.execute_script(
            "return document.querySelector('#streams tr[data-stream=\"p11/log\"]').cells[3]"
            ".textContent"
        )
        assert done == "yes"
