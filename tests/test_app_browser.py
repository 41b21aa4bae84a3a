"""The web app in a real headless browser: tiles load, the swipe moves, and the screenshot's
pixels show a gray historic side and a coloured colourised side; an upload comes back coloured.

Runs in `make test` (which installs Debian's chromium and chromium-driver when missing); skips
with the reason only where no browser can be had.
"""

from __future__ import annotations

import io
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from pipeline.app.serve import WebApp
from tests.app_model import ZOOM, app_params, chroma, derived_dir
from tests.browser import TILE_TIMINGS, chroma_map, chrome, find_browser, screenshot, wait_for, wait_for_tiles
from tests.imagery import ERIE_Z18, render_mosaic

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def web(app_model: Path, request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebApp]:
    data = tmp_path_factory.mktemp("appdata")
    derived = str(derived_dir(request, tmp_path_factory))
    with WebApp(app_params(app_model, data), sample_derived_dir=derived) as app:
        yield app


@pytest.fixture(scope="module")
def driver() -> Iterator[object]:
    found = find_browser()
    if isinstance(found, str):
        pytest.skip(found)
    browser = chrome(1280, 800)
    browser.set_page_load_timeout(60)
    try:
        yield browser
    finally:
        browser.quit()

# Screen rectangles of each side's tile images, the map's and the divider's x.
SIDE_TILES = """
const app = window.luminescence, map = app.map.getContainer().getBoundingClientRect();
const rects = role => Array.from(app.layers[role].getContainer().querySelectorAll('img.leaflet-tile'))
  .map(img => img.getBoundingClientRect().toJSON());
return {colourised: rects('colourised'), historic: rects('historic'), left: map.left, right: map.right,
        divider: map.left + app.sbs.getPosition()};
"""


def test_swipe_shows_gray_history_beside_estimated_colour(web: WebApp, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    driver.get(web.url + "?view=erie")
    tiles = wait_for_tiles(driver, timeout_s=180)
    assert tiles >= 12  # both sides of a 1280x800 map at the view's zoom
    # Photos first: the colourised layer is asked for once the historic side has loaded (or
    # 1.5 s have passed), so the photos do not queue behind tiles the model is computing.
    timings = driver.execute_script(TILE_TIMINGS)
    historic_end = max(e["end"] for e in timings if "/historic/" in e["url"])
    colour_start = min(e["start"] for e in timings if "/colourised/" in e["url"])
    assert colour_start >= min(historic_end, 1500.0) - 50.0, (colour_start, historic_end)
    # Each side asks only for the tiles on its side of the divider (and the column it crosses),
    # not for the whole map: the hidden half of the colourised layer would cost the model.
    sides = driver.execute_script(SIDE_TILES)
    divider = sides["divider"]
    assert divider - sides["left"] > 300  # the map's left edge is more than a tile away
    assert sides["colourised"] and all(r["right"] > divider and r["left"] > divider - 256
                                       for r in sides["colourised"]), sides
    assert sides["historic"] and all(r["left"] < divider and r["right"] < divider + 256
                                     for r in sides["historic"]), sides
    left = driver.find_element(By.ID, "label-left").text
    right = driver.find_element(By.ID, "label-right").text
    assert "Historic" in left and "SYNTHETIC" in left
    assert "Colourised" in right and "colours estimated by model pix2pix" in right
    assert "Leaflet" in driver.find_element(By.CLASS_NAME, "leaflet-control-attribution").text
    assert driver.find_elements(By.CLASS_NAME, "leaflet-control-scale-line")

    # Drag the swipe's thumb from the middle to 30 % of the map's width, like a user.
    slider = driver.find_element(By.CLASS_NAME, "leaflet-sbs-range")
    width = slider.size["width"]
    ActionChains(driver).move_to_element(slider).click_and_hold().move_by_offset(-int(0.2 * width), 0) \
        .release().perform()
    value = float(driver.execute_script("return document.querySelector('.leaflet-sbs-range').value"))
    assert 0.25 < value < 0.35, value
    wait_for_tiles(driver, timeout_s=120)
    moved = driver.execute_script(SIDE_TILES)  # the colourised side follows the swipe
    assert moved["divider"] < divider - 150
    assert min(r["left"] for r in moved["colourised"]) <= moved["divider"], moved
    time.sleep(0.3)
    shot = screenshot(driver)
    path = tmp_path / "app.png"
    Image.fromarray(shot).save(path)
    if os.environ.get("LUMINESCENCE_SCREENSHOT"):
        shutil.copy(path, os.environ["LUMINESCENCE_SCREENSHOT"])

    rect = driver.execute_script("return document.getElementById('map').getBoundingClientRect().toJSON()")
    divider = rect["left"] + driver.execute_script(
        "return window.luminescence.sbs.getPosition()")
    top, bottom = int(rect["top"] + 200), int(rect["bottom"] - 40)  # below the labels, above the attribution
    historic = chroma_map(shot[top:bottom, int(rect["left"]) + 60:int(divider) - 30])
    colour = chroma_map(shot[top:bottom, int(divider) + 30:int(rect["right"]) - 20])
    assert historic.size > 50_000 and colour.size > 50_000
    # The film layer is gray: nothing but the AOI's thin yellow outline may carry colour there.
    assert np.median(historic) == 0 and (historic > 10).mean() < 0.02
    assert colour.mean() > 2.0 and np.median(colour) >= 2  # the model's colours, everywhere


def test_upload_in_the_page_returns_a_coloured_image(web: WebApp, driver, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    from pipeline.geo.pixels import luma

    driver.get(web.url + "?view=erie")
    wait_for(lambda: driver.execute_script("return !!(window.luminescence && window.luminescence.view)"),
             60, "the page")
    gray = luma(render_mosaic("erie_2021", ZOOM, ERIE_Z18.x, ERIE_Z18.y, 1, 1)[..., :3])
    photo = tmp_path / "scan.png"
    Image.fromarray(gray).save(photo)
    driver.find_element(By.ID, "upload").send_keys(str(photo))
    wait_for(lambda: driver.execute_script(
        "const img = document.getElementById('result-preview');"
        "return !document.getElementById('result').hidden && img.complete && img.naturalWidth > 0"),
        120, "the colourised upload")
    link = driver.find_element(By.ID, "result-download").get_attribute("href")
    assert driver.find_element(By.ID, "result-download").get_attribute("download") == "scan_colourised.png"
    with Image.open(io.BytesIO(requests.get(link, timeout=60).content)) as img:
        out = np.asarray(img.convert("RGBA"))
    assert out.shape[:2] == gray.shape and chroma(out) > 1.0 and chroma(np.dstack([gray] * 3)) == 0
    assert "COLOURISED" in driver.find_element(By.ID, "result-text").text


def test_the_swipe_can_start_where_the_address_says(web: WebApp, driver) -> None:
    driver.get(web.url + "?view=erie&swipe=0.1")
    wait_for_tiles(driver, timeout_s=180)
    sides = driver.execute_script(SIDE_TILES)
    width = sides["right"] - sides["left"]
    assert abs(sides["divider"] - sides["left"] - 0.1 * width) < 40, sides
    # Nearly the whole map is the colourised side, so its tiles reach the left edge.
    assert min(r["left"] for r in sides["colourised"]) <= sides["divider"]
    assert min(r["left"] for r in sides["colourised"]) < sides["left"] + 256


def test_the_address_keeps_the_place_the_sides_and_the_swipe(web: WebApp, driver) -> None:
    """A link brings someone to the same spot: the page reads view, sides, swipe and place from
    the address and writes them back as the user moves; nonsense falls back to the defaults."""
    from urllib.parse import parse_qs, urlparse

    def query() -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(urlparse(driver.current_url).query).items()}

    driver.get(web.url + "?view=erie")
    wait_for_tiles(driver, timeout_s=180)
    start = query()
    assert start["view"] == "erie" and start["left"] == "historic" and start["right"] == "colourised"
    zoom = int(start["z"])
    lat, lng = float(start["lat"]) + 0.0004, float(start["lng"]) - 0.0006  # a few tiles away

    driver.get(web.url + f"?view=erie&left=modern&right=colourised&swipe=0.4&lat={lat}&lng={lng}&z={zoom}")
    wait_for_tiles(driver, timeout_s=180)
    state = driver.execute_script("""
        const app = window.luminescence, c = app.map.getCenter();
        return {left: document.getElementById('left').value, right: document.getElementById('right').value,
                lat: c.lat, lng: c.lng, z: app.map.getZoom(),
                swipe: parseFloat(document.querySelector('.leaflet-sbs-range').value)};""")
    assert state["left"] == "modern" and state["right"] == "colourised"
    assert state["z"] == zoom and abs(state["swipe"] - 0.4) < 1e-6
    assert abs(state["lat"] - lat) < 1e-5 and abs(state["lng"] - lng) < 1e-5
    assert "Modern" in driver.find_element("id", "label-left").text

    # Moving the map and switching a side rewrite the address.
    driver.execute_script("window.luminescence.map.panBy([300, 0], {animate: false});")
    wait_for(lambda: abs(float(query()["lng"]) - lng) > 1e-4, 10, "the address to follow the map")
    driver.execute_script("const s = document.getElementById('left'); s.value = 'historic';"
                          "s.dispatchEvent(new Event('change'));")
    wait_for(lambda: query()["left"] == "historic", 10, "the address to follow the sides")

    # An address that names nothing known: the view's own defaults, no error.
    driver.get(web.url + "?view=constructor&left=toString&right=__proto__&lat=999&lng=0&z=3")
    wait_for_tiles(driver, timeout_s=180)
    fallback = query()
    assert fallback["left"] == "historic" and fallback["right"] == "colourised"
    assert int(fallback["z"]) == zoom and abs(float(fallback["lat"]) - lat) < 0.01
    assert not driver.find_element("id", "message").is_displayed()
