"""A real browser for the live view's tests, docs screenshot and perf: Debian's chromium.

Selenium drives ``/usr/bin/chromium`` through ``/usr/bin/chromedriver`` (both from
Debian's ``chromium`` and ``chromium-driver`` packages, installed by
``scripts/debian-packages`` via :func:`tests.debian.require_debian`), so Selenium
Manager never downloads a browser or a driver.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
PACKAGES = ["chromium", "chromium-driver"]


def require_chromium() -> None:
    """Skip (or fail with CI=true) unless chromium and chromedriver are there."""
    from debian import require_debian

    require_debian(PACKAGES, [CHROMIUM, CHROMEDRIVER])


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 800) -> Iterator:
    """A headless chromium (selenium WebDriver) with a fresh profile; quit at the end."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    with tempfile.TemporaryDirectory(prefix="hidra-ng-chromium-") as profile:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--force-device-scale-factor=1",
            "--hide-scrollbars",
            f"--window-size={width},{height}",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_js(driver, script: str, timeout: float = 20.0, what: str = "the page"):
    """Run ``script`` (which returns a value) until it is truthy; return that value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(
        lambda d: d.execute_script(script),
        message=f"timed out after {timeout} s waiting for {what}",
    )


def shown_index(driver) -> int | None:
    """The index of the frame the page shows (None before the first)."""
    shown = driver.execute_script("return window.hidraView && window.hidraView.shown()")
    return None if shown is None else shown["index"]
