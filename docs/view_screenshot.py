"""Make docs/view.png: the live view in headless chromium against a real receiver.

Run from the repository: ``.venv/bin/python docs/view_screenshot.py``. It starts a
receiver on free loopback ports and temporary dirs, sends a few diffraction-like
frames, opens the page with the same selenium tooling as the browser tests
(tests/browser.py: Debian's chromium and chromedriver), and saves the screenshot.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium, wait_js  # noqa: E402

from hidra_ng import Producer  # noqa: E402
from hidra_ng.config import ViewConfig  # noqa: E402
from hidra_ng.testing import ReceiverProcess  # noqa: E402
from hidra_ng.view import ViewServer  # noqa: E402

STREAM = "p11/scan_0001"


def diffraction_frame(rng: np.random.Generator, n: int = 1024, spots: int = 150) -> np.ndarray:
    """Poisson background, powder rings, Bragg spots, a beam stop and module gaps."""
    y, x = np.mgrid[0:n, 0:n]
    cy, cx = n * 0.52, n * 0.48
    r = np.hypot(y - cy, x - cx)
    mean = 3 + 400 / (1 + (r / 40) ** 2)
    for radius, height in ((180, 40), (260, 25), (330, 60), (420, 15)):
        mean += height * np.exp(-(((r - radius) / 3.0) ** 2))
    img = rng.poisson(mean).astype(np.float64)
    for _ in range(spots):
        sy, sx = rng.uniform(0, n, 2)
        img += rng.uniform(200, 4000) * np.exp(-((y - sy) ** 2 + (x - sx) ** 2) / 2.0)
    img[r < 25] = 0  # beam stop
    img[:, n // 2 - 4 : n // 2 + 4] = 0  # gap between modules
    img[n // 2 - 4 : n // 2 + 4, :] = 0
    return np.clip(img, 0, 65534).astype(np.uint16)


def main(out: Path = ROOT / "docs" / "view.png") -> None:
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory(prefix="hidra-ng-shot-") as tmp:
        root = Path(tmp)
        with ReceiverProcess(root / "store") as rx:
            with Producer(rx.ingest, rx.api, root / "spool", "eiger-p11") as p:
                for i in range(12):
                    meta = {"exposure_s": 0.01, "omega_deg": round(0.1 * i, 2), "scan": 1}
                    p.send(STREAM, diffraction_frame(rng), meta=meta)
                p.send("p11/beam_monitor", rng.poisson(5, (64, 64)).astype(np.uint16))
                p.flush(timeout=60)
            settings = ViewConfig(api=rx.api, publish=rx.publish, port=0)
            with ViewServer(settings) as view, chromium(1400, 860) as driver:
                driver.get(view.url + "#stream=" + STREAM)
                wait_js(driver, "return window.hidraView.shown()", what="a frame")
                wait_js(driver, "return document.querySelectorAll('#streams tr[data-stream]')"
                        ".length == 2", what="the stream list")  # fmt: skip
                driver.execute_script(
                    "document.getElementById('cmap').value = 'viridis';"
                    "document.getElementById('log').checked = true;"
                    "document.getElementById('contrast').value = '0.1';"
                    "document.getElementById('cmap').onchange();"
                )
                point = driver.execute_script("return window.hidraView.clientPoint(700, 380)")
                from selenium.webdriver.common.action_chains import ActionChains

                ActionChains(driver).move_by_offset(int(point["x"]), int(point["y"])).perform()
                wait_js(driver, "return document.getElementById('pixel').textContent"
                        ".includes('value')", what="the pixel readout")  # fmt: skip
                driver.save_screenshot(str(out))
    print(f"written {out}")


if __name__ == "__main__":
    main()
