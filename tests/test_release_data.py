"""The release model's data: held-out and validation areas kept out, reproducible batches,
geometric augmentation that keeps input and target aligned, film augmentation of the input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import geopandas
import numpy as np
import pytest
import rasterio
from affine import Affine
from shapely.geometry import box

from pipeline.core.config import ConfigError, FilmAugmentConfig, FilmConfig, parse_params
from pipeline.datasets.augment import clean_input, random_film_config, random_geometry
from pipeline.datasets.release import (
    LATTICE,
    ReleaseBatches,
    ReleaseDataError,
    build_release_data,
    crop_inputs,
)
from pipeline.geo.pixels import luma

CRS = "EPSG:32617"  # UTM 17N, metres
PIXEL = 0.6
ORIGIN = (500_000.0, 4_700_000.0)  # top-left of the training layer


def _write_layer(folder: Path, left: float, top: float, size: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    bands = np.stack([(128 + 100 * np.sin(xx / (7 + 3 * b) + yy / (11 + b)) + rng.normal(0, 8, (size, size)))
                      for b in range(4)]).clip(0, 255).astype(np.uint8)
    profile = {"driver": "GTiff", "width": size, "height": size, "count": 4, "dtype": "uint8", "crs": CRS,
               "transform": Affine(PIXEL, 0, left, 0, -PIXEL, top)}
    with rasterio.open(folder / "a.tif", "w", **profile) as ds:
        ds.write(bands)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 240-px training layer, a held-out layer overlapping its east edge, a validation AOI
    in its south-west corner."""
    root = tmp_path_factory.mktemp("release")
    left, top = ORIGIN
    _write_layer(root / "sample" / "train_layer", left, top, 240, 1)
    _write_layer(root / "sample" / "held_layer", left + 180 * PIXEL, top, 120, 2)  # x 108..180 m
    val = box(left, top - 240 * PIXEL, left + 60 * PIXEL, top - 170 * PIXEL)  # x 0..36 m, y 102..144 m down
    geopandas.GeoDataFrame({"name": ["val"]}, geometry=[val], crs=CRS).to_file(root / "val.shp")
    return {"root": root, "val": val}


def _params(tiny: dict[str, Any], **data: Any) -> Any:
    release_data = {"layers": ["train_layer"], "held_out": ["held_layer"], "val_aoi": "val", "guard_m": 3,
                    "crop_size": 32, "val_crop_size": 32, "max_val_crops": 8, **data}
    return parse_params({
        "sources": {}, "aois": {"val": {"path": str(tiny["root"] / "val.shp")}}, "fetch": {},
        "sample": {"data_dir": str(tiny["root"] / "sample")},
        "release": {"options": {"netG": "unet_effnet_lite1", "color_space": "lab"}, "data": release_data,
                    "batch_size": 3, "seed": 5},
    })


def _batches(tiny: dict[str, Any], **data: Any) -> ReleaseBatches:
    params = _params(tiny, **data)
    built = build_release_data(params.release.data, params)
    return ReleaseBatches(built, params.release.data, params.sample.film, batch_size=3, seed=5)


def test_training_crops_keep_out_of_held_out_and_validation_areas(tiny: dict[str, Any]) -> None:
    params = _params(tiny)
    data = build_release_data(params.release.data, params)
    (ok,) = data.allowed
    rows, cols = np.nonzero(ok)
    assert len(rows) > 20
    guard = 3 / PIXEL
    x0, x1 = cols * LATTICE, cols * LATTICE + 32  # pixel columns [x0, x1) of every training crop
    y0, y1 = rows * LATTICE, rows * LATTICE + 32

    def gap(left: int, right: int, top: int, bottom: int) -> np.ndarray:
        """Distance in pixels from each crop to the rectangle [left, right) x [top, bottom)."""
        dx = np.maximum(0, np.maximum(left - x1, x0 - right))
        dy = np.maximum(0, np.maximum(top - y1, y0 - bottom))
        return np.hypot(dx, dy)

    # (one pixel of slack: the masks are rasterised with all_touched)
    assert gap(180, 240, 0, 120).min() >= guard - 1  # the held-out layer
    assert gap(0, 60, 170, 240).min() >= guard - 1  # the validation AOI
    # ... while the crops reach every other part of the layer
    assert x0.min() == 0 and y1.max() == 240 and x1.max() == 240 and gap(180, 240, 0, 120).min() < guard + 4
    # validation windows lie inside the AOI
    assert len(data.val) >= 1
    for r, c in data.val.origin:
        assert c + 32 <= 60 and r >= 170 and r + 32 <= 240
    assert data.val.bands.shape[1:] == (4, 32, 32)


def test_a_layer_entirely_held_out_is_an_error(tiny: dict[str, Any]) -> None:
    # held_layer's strip outside train_layer is 60 px wide (55 with the guard): no 64-px crop fits
    params = _params(tiny, layers=["held_layer"], held_out=["train_layer"], crop_size=64)
    with pytest.raises(ReleaseDataError, match=r"release\.data.*no 64-px training crop"):
        build_release_data(params.release.data, params)


def test_a_fixed_seed_reproduces_the_batches(tiny: dict[str, Any]) -> None:
    a, b = _batches(tiny), _batches(tiny)
    for step in (0, 7):
        first, again = a.batch(step), b.batch(step)
        assert all(np.array_equal(first[k], again[k]) for k in ("A", "B"))
    assert not np.array_equal(a.batch(0)["B"], a.batch(1)["B"])
    assert a.batch(0)["A"].shape == (3, 1, 32, 32) and a.batch(0)["B"].shape == (3, 3, 32, 32)


def test_rotations_and_flips_keep_input_and_target_aligned(tiny: dict[str, Any]) -> None:
    batches = _batches(tiny, film={"probability": 0.0})
    for step in range(12):
        for i in range(3):
            gray, rgb, is_film = batches.sample(step, i)
            assert not is_film
            assert np.array_equal(gray, luma(np.moveaxis(rgb, 0, -1)))  # pixel-exact pairing
    x = np.arange(2 * 5 * 7).reshape(2, 5, 7)
    variants = set()
    for seed in range(64):
        out = random_geometry(x, np.random.default_rng(seed), rotate90=True, flip=True)
        # every band moved the same way: the output is one of the 8 symmetries of the square
        matches = [k for k in range(4) for f in (False, True)
                   if np.array_equal(out, (lambda r: r[:, :, ::-1] if f else r)(np.rot90(x, k, axes=(1, 2))))]
        assert matches
        variants.add(out.tobytes())
    assert len(variants) == 8
    assert np.array_equal(random_geometry(x, np.random.default_rng(0), rotate90=False, flip=False), x)


def test_film_augmentation_changes_only_the_input(tiny: dict[str, Any]) -> None:
    clean = _batches(tiny, film={"probability": 0.0})
    film = _batches(tiny, film={"probability": 1.0})
    for step in range(3):
        for i in range(3):
            g0, rgb0, f0 = clean.sample(step, i)
            g1, rgb1, f1 = film.sample(step, i)
            assert np.array_equal(rgb0, rgb1) and not f0 and f1
            assert np.abs(g1.astype(int) - g0).mean() > 2  # a different picture of the same place
            assert g1.dtype == np.uint8 and g1.shape == g0.shape


def test_film_parameters_are_drawn_from_their_ranges() -> None:
    base, ranges = FilmConfig(), FilmAugmentConfig()
    draws = [random_film_config(base, ranges, np.random.default_rng(s)) for s in range(200)]
    for key in ("contrast", "gamma", "grain_sigma", "blur_sigma_px", "vignette_strength", "frame_size_m"):
        values = np.array([getattr(d, key) for d in draws])
        low, high = getattr(ranges, key)
        assert values.min() >= low and values.max() <= high and values.std() > 0
    weights = np.array([d.band_weights for d in draws]) / np.array(base.band_weights)
    assert weights.min() >= 0.7 and weights.max() <= 1.3
    assert len({d.seed for d in draws}) == 200


def test_validation_inputs_are_clean_luma_or_the_sample_film(tiny: dict[str, Any]) -> None:
    params = _params(tiny)
    data = build_release_data(params.release.data, params)
    clean = crop_inputs(data.val, None)
    assert np.array_equal(clean[0], clean_input(data.val.bands[0]))
    film = crop_inputs(data.val, params.sample.film, seed=3)
    assert np.array_equal(film, crop_inputs(data.val, params.sample.film, seed=3))
    assert not np.array_equal(film, clean)


def test_release_config_errors_name_the_key(tiny: dict[str, Any]) -> None:
    with pytest.raises(ConfigError, match=r"release\.data\.film\.contrast.*sample\.film\.contrast"):
        _params(tiny, film={"contrast": [1.5, 2.0]})
    with pytest.raises(ConfigError, match="held out; remove them"):
        _params(tiny, layers=["held_layer"])
    with pytest.raises(ConfigError, match=r"release\.data\.crop_sise.*crop_size"):
        _params(tiny, crop_sise=64)
    with pytest.raises(ConfigError, match=r"release\.data\.val_aoi"):
        _params(tiny, val_aoi="nowhere")
