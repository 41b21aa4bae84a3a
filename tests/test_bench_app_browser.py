"""bench.app_browser's arithmetic: the first view from the browser's Resource Timing entries, and
the machine's busy time between two moments."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.app_browser import BusySampler, first_view, swipe_address


def test_first_view_is_the_last_colourised_arrival_from_navigation_start() -> None:
    entries = [
        {"url": "http://h/tiles/v/historic/19/1/1", "start": 600.0, "end": 9000.0},  # not colourised
        {"url": "http://h/tiles/v/colourised/19/1/1", "start": 600.0, "end": 2000.0},
        {"url": "http://h/tiles/v/colourised/19/2/1", "start": 650.0, "end": 4650.0},
        {"url": "http://h/tiles/v/colourised/19/3/1", "start": 700.0, "end": 3700.0},
    ]
    got = first_view(entries)
    assert got["count"] == 3
    assert got["first_request"] == pytest.approx(0.6)
    assert got["done"] == pytest.approx(4.65)
    assert got["latency_p50"] == pytest.approx(3.0)
    assert got["latency_max"] == pytest.approx(4.0)
    assert first_view(entries, "historic")["done"] == pytest.approx(9.0)


def test_a_page_without_colourised_tiles_is_an_error() -> None:
    with pytest.raises(ValueError, match="no colourised tiles"):
        first_view([{"url": "http://h/tiles/v/historic/19/1/1", "start": 1.0, "end": 2.0}])


def test_busy_time_between_two_moments_uses_the_nearest_samples() -> None:
    sampler = BusySampler()
    sampler.samples = [(10.0, 100.0), (10.5, 100.8), (11.0, 101.9), (11.5, 102.0)]
    assert sampler.busy_between(10.0, 11.0) == pytest.approx(1.9)
    assert sampler.busy_between(10.1, 11.4) == pytest.approx(2.0)  # nearest: 10.0 and 11.5
    assert BusySampler().busy_between(0.0, 1.0) != BusySampler().busy_between(0.0, 1.0)  # NaN


def test_the_app_benchmarks_name_an_unknown_view_and_the_known_ones() -> None:
    from bench.app_options import view_name
    from pipeline.core.config import load_params

    params = load_params()
    assert params.app is not None
    first = next(iter(params.app.views))
    assert view_name(params, None) == first
    assert view_name(params, first) == first
    with pytest.raises(SystemExit, match=f"no view 'nope'.*{first}"):
        view_name(params, "nope")


def test_a_benchmarks_scratch_data_folder_is_removed_when_it_exits(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (f"import bench.app_options as o, pathlib; o.OUT = pathlib.Path({str(tmp_path)!r}); "
            "p = pathlib.Path(o.fresh_data_dir('x-')); (p / 'tile').write_bytes(b'1'); print(p)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    made = Path(out.stdout.strip())
    assert made.parent == tmp_path and not made.exists()


def test_the_swipe_goes_into_the_address_and_a_share_outside_the_map_is_an_error() -> None:
    assert swipe_address(None) == ""
    assert swipe_address(0.0) == "&swipe=0"
    assert swipe_address(0.25) == "&swipe=0.25"
    for bad in (1.5, -0.1, float("nan")):
        with pytest.raises(SystemExit, match=r"outside 0\.\.1"):
            swipe_address(bad)
