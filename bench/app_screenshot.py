"""The README's screenshot of the web app, taken in the headless Chromium the browser test uses.

    .venv/bin/python -m bench.app_screenshot [--view erie_film] [--model PATH] [--out docs/images/app.png]

Starts the app (params.yaml, a scratch data folder under bench/out/), opens the view at 1280 x
800, waits until every tile has loaded (the colourised ones are computed cold), and saves the
screenshot.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image

from bench.app_options import add_app_options, fresh_data_dir, view_name
from pipeline.core.config import load_params
from tests.browser import chrome, screenshot, wait_for_tiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_app_options(parser)
    parser.add_argument("--out", type=Path, default=Path("docs/images/app.png"))
    args = parser.parse_args()

    from pipeline.app.serve import WebApp

    params = load_params()
    name = view_name(params, args.view)
    data = fresh_data_dir("app-shot-")
    with WebApp(params, port=0, model=args.model, data_dir=data, sample_derived_dir=args.derived) as web:
        driver = chrome(1280, 800)
        try:
            driver.get(f"{web.url}?view={name}")
            wait_for_tiles(driver, timeout_s=600)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(screenshot(driver)).save(args.out, optimize=True)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
