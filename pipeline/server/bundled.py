"""The bundled sample as WMTS layers: the NYSDOP colour orthophotos and the SYNTHETIC film layers.

`serve_sample` serves them on 127.0.0.1 for the duration of a block (what the fetch stage
harvests, and `python -m pipeline.stages.serve` shows); `sample_service_key` is the cache
identity of what it serves, since its URL (an ephemeral port) changes on every run.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import rasterio

from pipeline.core.config import SampleConfig
from pipeline.sample import film as film_module
from pipeline.sample.film import SYNTHETIC_NOTE, build_film_layer, film_layer_id, raster_files
from pipeline.server import layers as layers_module
from pipeline.server import rendering as rendering_module
from pipeline.server.errors import ServerError
from pipeline.server.faults import FaultPlan
from pipeline.server.httpd import WmtsServer
from pipeline.server.layers import LayerSource

NYSDOP_ATTRIBUTION = (
    "Orthoimagery: New York State ITS GIS Program Office, NYS Digital Orthoimagery Program (NYSDOP).")


def _year(name: str) -> str:
    match = re.search(r"(19|20)\d\d", name)
    return match.group(0) if match else "unknown year"


def sample_layers(sample: SampleConfig) -> list[LayerSource]:
    """The bundled NYSDOP layers (colour, NIR dropped) and the SYNTHETIC film layers (built if needed)."""
    data_dir = Path(sample.data_dir)
    if not data_dir.is_dir():
        raise ServerError(f"sample folder {data_dir} does not exist; set sample.data_dir in params.yaml")
    layers = []
    for folder in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        paths = tuple(raster_files(folder))
        with rasterio.open(paths[0]) as ds:
            res_m = abs(ds.res[0]) * float(ds.crs.linear_units_factor[1]) if ds.crs else 0.0
        year = _year(folder.name)
        layers.append(LayerSource(
            id=folder.name,
            title=f"{folder.name} — NYSDOP colour orthoimagery, {year}",
            abstract=f"Real colour aerial orthophoto ({year}, {res_m:.2f} m pixels) from the New York "
            f"State Digital Orthoimagery Program: bands 1-3 (R, G, B) of {len(paths)} JPEG 2000 "
            "file(s); the near-infrared band is dropped.",
            paths=paths, bands=(1, 2, 3), formats=("png", "jpeg"),
            keywords=("orthoimagery", "colour", "NYSDOP", year), attribution=NYSDOP_ATTRIBUTION))
    known = {layer.id for layer in layers}
    for source_layer in sample.film.source_layers:
        if source_layer not in known:
            raise ServerError(f"sample.film.source_layers: '{source_layer}' is not a folder of {data_dir}")
        film_tif = build_film_layer(sample, source_layer=source_layer)
        note = SYNTHETIC_NOTE.format(src=source_layer)
        layers.append(LayerSource(
            id=film_layer_id(source_layer),
            title=f"{film_layer_id(source_layer)} — {note}",
            abstract=f"{note}. Made by pipeline/sample/film.py from the {source_layer} colour orthophoto: "
            "panchromatic weighting of R, G, B and NIR, lens/scan blur, per-frame vignetting, an S-shaped "
            "characteristic curve with gamma, and seeded film grain (parameters: params.yaml sample.film). "
            "Use it as a stand-in for a historic grayscale aerial photograph only.",
            paths=(film_tif,), bands=(1,), formats=("png",),
            keywords=("synthetic", "film emulation", "panchromatic", "grayscale"), synthetic=True,
            attribution=f"SYNTHETIC; derived from {source_layer}. {NYSDOP_ATTRIBUTION}"))
    return layers


@contextmanager
def serve_sample(sample: SampleConfig, faults: FaultPlan | None = None, *, port: int = 0,
                 verbose: bool = False, prepare: bool | Sequence[str] = True,
                 render_cache_tiles: int = 4096) -> Iterator[WmtsServer]:
    """Serve the bundled sample on 127.0.0.1 for the duration of the block.

    `prepare` builds the cached GeoTIFFs before serving (all layers, or the named ones), so no
    client waits for a one-off JPEG 2000 conversion inside its read timeout.
    """
    server = WmtsServer(sample_layers(sample), port=port, faults=faults, verbose=verbose,
                        cache_dir=Path(sample.derived_dir) / "cache", render_cache_tiles=render_cache_tiles)
    if prepare:
        server.prepare(None if prepare is True else list(prepare))
    with server:
        yield server


def sample_service_key(sample: SampleConfig) -> str:
    """A stable cache identity for the bundled sample (the server's port changes every run).

    It hashes what the served tiles depend on: the sample config (film emulation included), the
    sample files (names and sizes) and the code that makes the tiles (this module's layer
    definitions, layer inspection, rendering and the film emulation), so changing any of them
    never reuses stale cached tiles, while an unchanged sample keeps its key and its cache.
    """
    h = hashlib.sha256(json.dumps(sample.model_dump(mode="json"), sort_keys=True).encode())
    data_dir = Path(sample.data_dir)
    if data_dir.is_dir():
        for f in sorted(p for p in data_dir.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(data_dir).as_posix()}:{f.stat().st_size};".encode())
    for module in (__file__, layers_module.__file__, rendering_module.__file__, film_module.__file__):
        h.update(Path(module).read_bytes())
    return f"sample:{h.hexdigest()[:16]}"
