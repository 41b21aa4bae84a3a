"""Test support: a real headless Chromium (Debian's `chromium` + `chromium-driver`) via Selenium.

Not a test module. `make test` installs the two packages with apt-get when it runs as root and
they are missing; elsewhere `find_browser()` says what to install. Nothing is downloaded by
Selenium itself: the driver and the browser are given by path.
"""

from __future__ import annotations

import io
import shutil
import time
from collections.abc import Callable
from typing import Any

import numpy as np

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
INSTALL = "install Debian's chromium and chromium-driver (`apt-get install chromium chromium-driver`)"


def find_browser() -> tuple[str, str] | str:
    """(browser, driver) paths, or why there is none."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver")
    if browser is None or driver is None:
        pairs = (("a Chromium browser", browser), ("chromedriver", driver))
        missing = " and ".join(name for name, path in pairs if not path)
        return f"no {missing} on PATH; {INSTALL}"
    return browser, driver


def chrome(width: int = 1280, height: int = 800) -> Any:
    """A headless Chromium WebDriver with a fixed window size (raises RuntimeError without one)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_browser()
    if isinstance(found, str):
        raise RuntimeError(found)
    browser, driver = found
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--hide-scrollbars", "--force-device-scale-factor=1",
                "--disable-extensions", "--no-first-run", "--disable-background-networking"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def wait_for(condition: Callable[[], Any], timeout_s: float, what: str, step_s: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(step_s)


# Resource Timing entries of the map's tile requests, in milliseconds from navigation start.
TILE_TIMINGS = """
return performance.getEntriesByType('resource')
  .filter(e => e.name.includes('/tiles/'))
  .map(e => ({url: e.name, start: e.startTime, end: e.responseEnd}));
"""

# Every tile image of the layers on the map has finished loading (and none is pending).
TILES_DONE = """
const app = window.luminescence;
if (!app || !app.view) { return false; }
const pending = Object.values(app.loading).reduce((a, b) => a + b, 0);
const imgs = Array.from(document.querySelectorAll('#map img.leaflet-tile'));
const done = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
return pending === 0 && imgs.length > 0 && done === imgs.length ? imgs.length : false;
"""


def wait_for_tiles(driver: Any, timeout_s: float = 120.0) -> int:
    """Wait until every tile on the map has loaded twice in a row (Leaflet may add more); return
    how many tile images the map holds."""
    def settled() -> int | bool:
        first = driver.execute_script(TILES_DONE)
        if not first:
            return False
        time.sleep(0.5)
        return driver.execute_script(TILES_DONE)

    return wait_for(settled, timeout_s, "the map's tiles")


def screenshot(driver: Any) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(driver.get_screenshot_as_png())) as img:
        return np.asarray(img.convert("RGB"))


def chroma_map(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.int16)
    return rgb.max(axis=-1) - rgb.min(axis=-1)
