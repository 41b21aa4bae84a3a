"""SYNTHETIC film emulation: deterministic, gray, labelled, and each effect is really there."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from affine import Affine
from rasterio.windows import Window

from pipeline.core.config import FilmConfig, SampleConfig
from pipeline.sample.film import (
    FilmError,
    build_film_layer,
    characteristic_curve,
    emulate_film,
    film_grain,
    panchromatic,
    vignette,
)
from pipeline.stages.film import main

PLAIN = FilmConfig(contrast=0.0, gamma=1.0, grain_sigma=0.0, blur_sigma_px=0.0, vignette_strength=0.0)


def flat(value: int, shape: tuple[int, int] = (200, 300)) -> np.ndarray:
    return np.full((4, *shape), value, np.uint8)


# --------------------------------------------------------------------------- pure functions
def test_panchromatic_weights_are_normalised() -> None:
    bands = np.zeros((4, 2, 2), np.uint8)
    bands[3] = 255  # only NIR
    assert panchromatic(bands, (1, 1, 1, 1)) == pytest.approx(0.25)
    assert panchromatic(bands, (3, 0, 0, 1)) == pytest.approx(0.25)
    assert panchromatic(bands[:3], (0.3, 0.45, 0.2, 0.05)).max() == 0  # RGB only: NIR weight unused


def test_characteristic_curve_is_an_s_curve() -> None:
    x = np.linspace(0, 1, 101, dtype=np.float32)
    y = characteristic_curve(x, contrast=1.35, gamma=1.0)
    assert y[0] == pytest.approx(0) and y[50] == pytest.approx(0.5) and y[-1] == pytest.approx(1)
    assert (np.diff(y) > 0).all()
    assert y[25] < x[25] and y[75] > x[75]  # darker shadows, brighter highlights: more contrast
    assert characteristic_curve(x, contrast=0.0, gamma=1.0) == pytest.approx(x)
    assert characteristic_curve(x, 0.0, gamma=2.0)[50] == pytest.approx(0.25)


def test_grain_has_the_requested_strength_and_is_seeded() -> None:
    g = film_grain((256, 256), seed=3, size_px=1.0, sigma=0.03)
    assert g.std() == pytest.approx(0.03, rel=1e-3)
    assert np.array_equal(g, film_grain((256, 256), seed=3, size_px=1.0, sigma=0.03))
    assert not np.array_equal(g, film_grain((256, 256), seed=4, size_px=1.0, sigma=0.03))
    # Clumped: neighbouring grain values correlate once blurred, not in white noise.
    white = film_grain((256, 256), seed=3, size_px=0.0, sigma=0.03)
    corr = lambda a: np.corrcoef(a[:, :-1].ravel(), a[:, 1:].ravel())[0, 1]  # noqa: E731
    assert corr(g) > 0.5 and abs(corr(white)) < 0.05


def test_vignette_is_laid_out_in_map_frames() -> None:
    # 1 m pixels, two 100 m frames side by side starting at the CRS origin.
    v = vignette((100, 200), Affine(1, 0, 0, 0, -1, 100), 1.0, frame_size_m=100, strength=0.25)
    assert v[50, 50] == pytest.approx(1.0, abs=1e-3)  # frame centre
    assert v[0, 0] == pytest.approx(0.75, abs=0.02)  # frame corner loses `strength` of the light
    assert np.allclose(v[:, :100], v[:, 100:])  # the next frame repeats the pattern
    # Frames follow map coordinates, not the array: a raster shifted by half a frame sees it shifted.
    shifted = vignette((100, 200), Affine(1, 0, 50, 0, -1, 100), 1.0, frame_size_m=100, strength=0.25)
    assert np.allclose(shifted[:, :150], v[:, 50:])
    # Map units in feet: a 100 m frame is 328 ft.
    feet = vignette((10, 600), Affine(1, 0, 0, 0, -1, 10), 0.3048, frame_size_m=100, strength=0.25)
    assert int(np.argmax(feet[5, 200:])) + 200 == pytest.approx(100 / 0.3048 * 1.5, abs=1)


def test_emulation_is_deterministic_gray_and_seeded() -> None:
    rng = np.random.default_rng(0)
    bands = rng.integers(0, 256, (4, 120, 160), dtype=np.uint8)
    cfg = FilmConfig()
    a = emulate_film(bands, cfg)
    assert a.dtype == np.uint8 and a.shape == (120, 160)
    assert np.array_equal(a, emulate_film(bands, cfg))
    assert not np.array_equal(a, emulate_film(bands, cfg.model_copy(update={"seed": cfg.seed + 1})))


def test_contrast_grain_and_vignette_are_visible() -> None:
    ramp = np.broadcast_to(np.linspace(40, 215, 300).astype(np.uint8), (4, 200, 300)).copy()
    plain = emulate_film(ramp, PLAIN).astype(float)
    contrasty = emulate_film(ramp, PLAIN.model_copy(update={"contrast": 2.0})).astype(float)
    assert contrasty.std() > 1.1 * plain.std()

    grainy = emulate_film(flat(128), PLAIN.model_copy(update={"grain_sigma": 0.03})).astype(float)
    assert emulate_film(flat(128), PLAIN).std() == 0
    assert grainy.std() == pytest.approx(0.03 * 255, rel=0.1)

    # One 200 m frame over the whole raster (1 m pixels): corners darker than the centre.
    frame = Affine(1, 0, 0, 0, -1, 200)
    dim = emulate_film(flat(160, (200, 200)), PLAIN.model_copy(update={"vignette_strength": 0.25,
                                                                        "frame_size_m": 200.0}),
                       transform=frame).astype(float)
    centre, corners = dim[95:105, 95:105].mean(), np.mean([dim[:5, :5], dim[-5:, -5:]])
    assert corners < 0.8 * centre


def test_nodata_pixels_stay_zero() -> None:
    valid = np.ones((50, 60), bool)
    valid[:, :10] = False
    out = emulate_film(flat(200, (50, 60)), FilmConfig(), valid=valid)
    assert (out[:, :10] == 0).all() and (out[:, 10:] > 0).all()


# --------------------------------------------------------------------------- GeoTIFF layer
@pytest.fixture(scope="module")
def small_sample(tmp_path_factory: pytest.TempPathFactory) -> SampleConfig:
    """A 300 x 200 px crop of erie_2011 (4 bands) with a no-data corner, as a sample folder."""
    root = tmp_path_factory.mktemp("sample")
    src = sorted(Path("data/sample/erie_2011").glob("*.jp2"))[0]
    with rasterio.open(src) as ds:
        window = Window(1200, 800, 300, 200)
        data = ds.read(window=window)
        profile = {"driver": "GTiff", "width": 300, "height": 200, "count": 4, "dtype": "uint8",
                   "crs": ds.crs, "transform": ds.window_transform(window)}
    mask = np.full((200, 300), 255, np.uint8)
    mask[:40, :50] = 0
    (root / "erie_2011").mkdir()
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), \
            rasterio.open(root / "erie_2011" / "crop.tif", "w", **profile) as dst:
        dst.write(data)
        dst.write_mask(mask)
    return SampleConfig(data_dir=str(root), derived_dir=str(root / "derived"))


def test_film_geotiff_is_single_band_tagged_and_georeferenced(small_sample: SampleConfig) -> None:
    path = build_film_layer(small_sample)
    assert path == Path(small_sample.derived_dir) / "erie_2011_film.tif"
    src = Path(small_sample.data_dir) / "erie_2011" / "crop.tif"
    with rasterio.open(path) as ds, rasterio.open(src) as ref:
        assert (ds.count, ds.dtypes[0]) == (1, "uint8")
        assert ds.crs == ref.crs and ds.transform == ref.transform and ds.shape == ref.shape
        assert ds.profile["tiled"] and ds.compression is not None
        tags = ds.tags()
        assert tags["SYNTHETIC"] == "YES"
        assert "SYNTHETIC" in tags["TIFFTAG_IMAGEDESCRIPTION"]
        assert "not a real historic photograph" in tags["LUMINESCENCE_PRODUCT"]
        assert json.loads(tags["LUMINESCENCE_FILM_PARAMS"])["seed"] == small_sample.film.seed
        assert len(tags["LUMINESCENCE_FILM_HASH"]) == 16
        mask = ds.dataset_mask()
        assert (mask[:40, :50] == 0).all() and (mask[40:, :] == 255).all()
        assert ds.overviews(1) == [2]  # halved until about one 256-px tile
    assert not list(path.parent.glob(".*.tmp"))  # the atomic write left no temp file


def test_film_layer_rebuilds_only_when_parameters_change(small_sample: SampleConfig, tmp_path: Path) -> None:
    first = build_film_layer(small_sample, tmp_path / "a.tif")
    stamp = first.stat().st_mtime_ns
    assert build_film_layer(small_sample, first).stat().st_mtime_ns == stamp  # up to date: untouched
    with rasterio.open(first) as ds:
        pixels, digest = ds.read(1), ds.tags()["LUMINESCENCE_FILM_HASH"]
    same = build_film_layer(small_sample, tmp_path / "b.tif")
    with rasterio.open(same) as ds:
        assert np.array_equal(ds.read(1), pixels)  # same parameters, same bytes of image

    reseeded = small_sample.model_copy(update={"film": small_sample.film.model_copy(update={"seed": 7})})
    build_film_layer(reseeded, first)
    with rasterio.open(first) as ds:
        assert ds.tags()["LUMINESCENCE_FILM_HASH"] != digest
        assert not np.array_equal(ds.read(1), pixels)


def test_missing_source_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FilmError, match="does not exist"):
        build_film_layer(SampleConfig(data_dir=str(tmp_path), derived_dir=str(tmp_path)))


def test_cli_builds_from_params(small_sample: SampleConfig, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    with open("params.yaml", encoding="utf-8") as fh:
        params = yaml.safe_load(fh)
    params["sample"]["data_dir"] = small_sample.data_dir
    params["sample"]["derived_dir"] = str(tmp_path)
    params["sample"]["film"]["source_layers"] = ["erie_2011"]  # the small sample has only this one
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params), encoding="utf-8")
    assert main(["--params", str(params_file)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert main(["--params", str(params_file)]) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
