"""Training, validation and held-out data of the release model, read from the bundled
sample's rasters at their native resolution (no web-mercator resampling).

- Training: random `crop_size` crops of `release.data.layers` (default: erie_2021, erie_2011),
  never within `guard_m` metres of the validation area or of any held-out layer's whole
  footprint (columbia_2010: another county, another year), with the augmentation of
  pipeline/datasets/augment.py. A batch is a pure function of (seed, step), like the
  align-based training batches.
- Validation: a fixed set of whole `val_crop_size` windows inside the `val_aoi` polygon
  (default: erie_village), scored with clean luma input and with the `sample.film`
  emulation; settings and the kept weights are chosen on it, never on the held-out area.
- Held-out: whole windows of the held-out layers, scored once at the end of a run.

Every crop keeps all bands of its raster (R, G, B and, where present, NIR, which the
panchromatic film response uses); the target is its RGB.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import shapely
import torch
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform_geom
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from pipeline.core.config import FilmConfig, Params, ReleaseConfig, ReleaseDataConfig
from pipeline.core.errors import LuminescenceError
from pipeline.datasets.augment import clean_input, film_input, make_input, random_geometry
from pipeline.geo.aoi import load_aoi
from pipeline.sample.film import Mosaic, metres_per_unit, raster_files, read_mosaic

LATTICE = 4  # training crops start on a 4-pixel lattice (keeps the position table small)


class ReleaseDataError(LuminescenceError):
    """The release model's data cannot be made as configured."""


@dataclass
class Layer:
    name: str
    mosaic: Mosaic
    metres_per_px: float

    @property
    def bands(self) -> np.ndarray:
        return self.mosaic.data


@dataclass
class Crops:
    """Whole windows, all bands: (N, C, S, S) uint8, and where they came from."""

    bands: np.ndarray
    layer: list[str]
    origin: list[tuple[int, int]]  # (row, col) in the layer's mosaic
    metres_per_px: list[float]

    def __len__(self) -> int:
        return len(self.bands)

    @property
    def rgb(self) -> np.ndarray:
        return self.bands[:, :3]


# --------------------------------------------------------------------------- rasters and masks
def read_layer(data_dir: Path, name: str) -> Layer:
    """A sample layer's mosaic with all its bands (up to R, G, B, NIR)."""
    files = raster_files(Path(data_dir) / name)
    with rasterio.open(files[0]) as ds:
        count = min(ds.count, 4)
    if count < 3:
        raise ReleaseDataError(f"sample layer {name} has {count} band(s); the release model needs colour")
    mosaic = read_mosaic(files, tuple(range(1, count + 1)))
    return Layer(name, mosaic, abs(mosaic.transform.a) * metres_per_unit(mosaic.crs))


def footprint(data_dir: Path, name: str) -> tuple[BaseGeometry, CRS]:
    """The union of a layer's raster extents, in its CRS (a layer held out as a whole)."""
    boxes, crs = [], None
    for path in raster_files(Path(data_dir) / name):
        with rasterio.open(path) as ds:
            boxes.append(box(*ds.bounds))
            crs = crs or ds.crs
    return shapely.union_all(boxes), crs


def _mask(layer: Layer, geometry: BaseGeometry, crs: CRS | str, guard_m: float) -> np.ndarray:
    """Pixels of `layer` inside `geometry` (given in `crs`) grown by guard_m metres."""
    local = shape(transform_geom(crs, layer.mosaic.crs, mapping(geometry)))
    if guard_m > 0:
        local = local.buffer(guard_m / metres_per_unit(layer.mosaic.crs))
    height, width = layer.mosaic.valid.shape
    if local.is_empty:
        return np.zeros((height, width), bool)
    return rasterize([(local, 1)], out_shape=(height, width), transform=layer.mosaic.transform,
                     all_touched=True, dtype="uint8").astype(bool)


def window_ok(good: np.ndarray, size: int, stride: int) -> np.ndarray:
    """ok[i, j]: the size x size window at (i * stride, j * stride) is all `good`."""
    bad = np.zeros((good.shape[0] + 1, good.shape[1] + 1), np.int32)
    np.cumsum(np.cumsum(~good, axis=0, dtype=np.int32), axis=1, out=bad[1:, 1:])
    rows = np.arange(0, good.shape[0] - size + 1, stride)
    cols = np.arange(0, good.shape[1] - size + 1, stride)
    if not len(rows) or not len(cols):
        return np.zeros((0, 0), bool)
    r0, c0 = rows[:, None], cols[None, :]
    inside = bad[r0 + size, c0 + size] - bad[r0, c0 + size] - bad[r0 + size, c0] + bad[r0, c0]
    return inside == 0


def _crop(layer: Layer, row: int, col: int, size: int) -> np.ndarray:
    return np.ascontiguousarray(layer.bands[:, row:row + size, col:col + size])


def _windows(layers: list[Layer], masks: list[np.ndarray], size: int, limit: int) -> Crops:
    """Non-overlapping whole windows inside the masks, at most `limit`, spread evenly."""
    found = []
    for layer, good in zip(layers, masks, strict=True):
        ok = window_ok(good & layer.mosaic.valid, size, size)
        found += [(layer, int(r) * size, int(c) * size) for r, c in zip(*np.nonzero(ok), strict=True)]
    if len(found) > limit:
        found = [found[int(i)] for i in np.linspace(0, len(found) - 1, limit).round()]
    if not found:
        return Crops(np.zeros((0, 3, size, size), np.uint8), [], [], [])
    channels = min(f[0].bands.shape[0] for f in found)
    return Crops(np.stack([_crop(lay, r, c, size)[:channels] for lay, r, c in found]),
                 [lay.name for lay, _, _ in found], [(r, c) for _, r, c in found],
                 [lay.metres_per_px for lay, _, _ in found])


# --------------------------------------------------------------------------- the data
@dataclass
class ReleaseData:
    layers: list[Layer]
    allowed: list[np.ndarray]  # per layer: training crop corners on the LATTICE
    val: Crops
    crop_size: int

    @property
    def train_positions(self) -> int:
        return int(sum(a.sum() for a in self.allowed))

    def positions_by_layer(self) -> dict[str, int]:
        """Training crop positions per layer (0 for a layer wholly inside the excluded areas)."""
        return {layer.name: int(ok.sum()) for layer, ok in zip(self.layers, self.allowed, strict=True)}

    def training_area_km2(self) -> float:
        """Ground area covered by at least one allowed training crop."""
        total = 0.0
        for layer, ok in zip(self.layers, self.allowed, strict=True):
            h, w = layer.mosaic.valid.shape
            corners = np.zeros((h + self.crop_size, w + self.crop_size), bool)
            rows, cols = np.nonzero(ok)
            corners[rows * LATTICE + self.crop_size, cols * LATTICE + self.crop_size] = True
            # a pixel is covered when a corner lies in the crop-sized window above-left of it
            free = window_ok(~corners, self.crop_size, 1)[1:h + 1, 1:w + 1]
            total += float((~free).sum()) * layer.metres_per_px**2 / 1e6
        return total


def build_release_data(data: ReleaseDataConfig, params: Params) -> ReleaseData:
    """Read the training layers and lay out training positions and validation windows."""
    data_dir = Path(params.sample.data_dir)
    if data.val_aoi not in params.aois:
        raise ReleaseDataError(f"params.yaml `release.data.val_aoi`: no AOI '{data.val_aoi}' in `aois`")
    val_aoi = load_aoi(params.aois[data.val_aoi], data.val_aoi)
    held = [footprint(data_dir, name) for name in data.held_out]
    layers, allowed, val_masks = [], [], []
    for name in data.layers:
        if not (data_dir / name).is_dir():
            raise ReleaseDataError(f"params.yaml `release.data.layers`: no sample layer '{name}' "
                                   f"in {data_dir}")
        layer = read_layer(data_dir, name)
        excluded = _mask(layer, val_aoi.geometry_3857, "EPSG:3857", data.guard_m)
        for geometry, crs in held:
            excluded |= _mask(layer, geometry, crs, data.guard_m)
        ok = window_ok(layer.mosaic.valid & ~excluded, data.crop_size, LATTICE)
        layers.append(layer)
        allowed.append(ok)
        val_masks.append(_mask(layer, val_aoi.geometry_3857, "EPSG:3857", 0.0))
    result = ReleaseData(layers, allowed, _windows(layers, val_masks, data.val_crop_size, data.max_val_crops),
                         data.crop_size)
    if result.train_positions == 0:
        raise ReleaseDataError(
            f"params.yaml `release.data`: no {data.crop_size}-px training crop fits in "
            f"{', '.join(data.layers)} outside the held-out layers ({', '.join(data.held_out)}) and the "
            f"validation area '{data.val_aoi}' (with a {data.guard_m:g} m guard); add layers or lower "
            f"crop_size/guard_m")
    if len(result.val) == 0:
        raise ReleaseDataError(
            f"params.yaml `release.data.val_aoi`: '{data.val_aoi}' holds no whole {data.val_crop_size}-px "
            f"window of {', '.join(data.layers)}; choose an AOI inside a training layer or a smaller "
            f"val_crop_size")
    return result


def held_out_crops(data_dir: Path, name: str, size: int, limit: int) -> Crops:
    """Whole windows of a held-out layer (all of its valid area), for the final scores."""
    layer = read_layer(Path(data_dir), name)
    crops = _windows([layer], [np.ones(layer.mosaic.valid.shape, bool)], size, limit)
    if len(crops) == 0:
        raise ReleaseDataError(f"held-out layer {name} has no whole {size}-px window")
    return crops


# --------------------------------------------------------------------------- inputs and batches
def crop_inputs(crops: Crops, film: FilmConfig | None, seed: int = 0) -> np.ndarray:
    """(N, H, W) uint8 model inputs: clean luma, or `film`'s emulation (each crop at a
    seeded random position of its frame, grain seeded per crop)."""
    out = []
    for i, bands in enumerate(crops.bands):
        if film is None:
            out.append(clean_input(bands))
        else:
            rng = np.random.default_rng([seed, 7, i])
            cfg = film.model_copy(update={"seed": int(rng.integers(2**31))})
            out.append(film_input(bands, cfg, metres_per_px=crops.metres_per_px[i], rng=rng))
    return np.stack(out)


class ReleaseBatches:
    """`batch(step)` -> {"A": (B, 1, S, S) gray, "B": (B, 3, S, S) RGB}, floats in [0, 1].

    Sample i of a step draws its layer (weighted by how many training crops it offers),
    position and geometry from one random stream and its input (film or clean, film
    parameters) from another, both seeded by (seed, step, i): a batch never depends on
    what came before, and switching film augmentation off changes the inputs only.
    """

    def __init__(self, data: ReleaseData, cfg: ReleaseDataConfig, base_film: FilmConfig, *, batch_size: int,
                 seed: int) -> None:
        self.data = data
        self.cfg = cfg
        self.base_film = base_film
        self.batch_size = batch_size
        self.seed = seed
        self._positions = [np.flatnonzero(a) for a in data.allowed]
        counts = np.array([len(p) for p in self._positions], np.float64)
        self._weights = counts / counts.sum()

    def sample(self, step: int, i: int) -> tuple[np.ndarray, np.ndarray, bool]:
        """(input (S, S) uint8, target RGB (3, S, S) uint8, input is film-emulated)."""
        geo = np.random.default_rng([self.seed, step, i, 0])
        k = int(geo.choice(len(self._positions), p=self._weights))
        flat = int(self._positions[k][geo.integers(len(self._positions[k]))])
        row, col = np.unravel_index(flat, self.data.allowed[k].shape)
        layer = self.data.layers[k]
        size = self.data.crop_size
        bands = random_geometry(_crop(layer, int(row) * LATTICE, int(col) * LATTICE, size), geo,
                                rotate90=self.cfg.rotate90, flip=self.cfg.flip)
        gray, is_film = make_input(bands, base=self.base_film, ranges=self.cfg.film,
                                   metres_per_px=layer.metres_per_px,
                                   rng=np.random.default_rng([self.seed, step, i, 1]))
        return gray, bands[:3], is_film

    def batch(self, step: int) -> dict[str, torch.Tensor]:
        samples = [self.sample(step, i) for i in range(self.batch_size)]
        a = torch.from_numpy(np.stack([s[0] for s in samples])).unsqueeze(1).float().div_(255.0)
        b = torch.from_numpy(np.stack([s[1] for s in samples])).float().div_(255.0)
        return {"A": a, "B": b}


def release_batches(data: ReleaseData, release: ReleaseConfig, params: Params) -> ReleaseBatches:
    return ReleaseBatches(data, release.data, params.sample.film, batch_size=release.batch_size,
                          seed=release.seed)
