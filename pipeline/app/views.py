"""The app's views as configured in params.yaml `app.views`, ready to serve.

A view is an area (an AOI), its historic and modern layers and the model that colourises the
historic one. Requests name a view and a role (historic, modern, colourised), never a layer or
a URL, and only tiles that meet the view's area at its zooms are served.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import shapely
from shapely.geometry import box, mapping

from pipeline.app import AREA_WINDOWS
from pipeline.app.colour_tiles import ColourLayer
from pipeline.app.runner import ModelRunner, load_runner
from pipeline.app.sources import LayerTiles, SourceGate
from pipeline.core.config import AppConfig, AppViewConfig, Params
from pipeline.core.errors import LuminescenceError
from pipeline.geo.aoi import Aoi, load_aoi
from pipeline.geo.tilecache import TileCache
from pipeline.geo.tiles import TileId, TileRect, tile_bounds_3857, tile_rect

log = logging.getLogger("luminescence.app")
ROLES = ("historic", "modern", "colourised")


class RequestError(LuminescenceError):
    """A bad request: the message is shown to the user as is."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def spread_tiles(rect: TileRect, k: int) -> list[TileId]:
    """Up to k tiles evenly spread over the rectangle in row order (all when there are fewer)."""
    from models.networks.norm_stats import spread

    return [rect.tile_at(int(i)) for i in spread(len(rect), k)] if k > 0 else []


@dataclass
class View:
    name: str
    cfg: AppViewConfig
    aoi: Aoi
    historic: LayerTiles
    modern: LayerTiles
    model_path: Path
    colour: ColourLayer | None  # None when the model cannot be loaded
    model_error: str = ""
    min_zoom: int = 0
    _bbox: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self._bbox = box(*self.aoi.geometry_3857.bounds)
        shapely.prepare(self._bbox)

    @property
    def zoom(self) -> int:
        return self.cfg.zoom

    def check_tile(self, z: int, x: int, y: int) -> TileId:
        """The tile if this view serves it (its zooms, its area), else a RequestError."""
        if not self.min_zoom <= z <= self.zoom:
            raise RequestError(f"view '{self.name}' serves zooms {self.min_zoom}..{self.zoom}, not {z}", 404)
        if not (0 <= x < 1 << z and 0 <= y < 1 << z):
            raise RequestError(f"tile {z}/{x}/{y} does not exist", 404)
        tile = TileId(z, x, y)
        if not self._bbox.intersects(box(*tile_bounds_3857(tile))):
            raise RequestError(f"tile {tile} is outside the area of view '{self.name}'", 404)
        return tile

    def tile_grid(self, bbox_wgs84: tuple[float, float, float, float] | None) -> TileRect:
        """The view-zoom tiles of the view's area inside bbox (the whole area when None), as
        columns and rows: a large area is counted and sampled without listing its tiles."""
        w, s, e, n = self.aoi.bounds_wgs84
        if bbox_wgs84 is not None:
            bw, bs, be, bn = bbox_wgs84
            w, s, e, n = max(w, bw), max(s, bs), min(e, be), min(n, bn)
            if w >= e or s >= n:
                raise RequestError(f"the requested area does not overlap view '{self.name}'")
        return tile_rect(self._bbox.bounds, (w, s, e, n), self.zoom)

    def tiles_in(self, bbox_wgs84: tuple[float, float, float, float] | None) -> list[TileId]:
        """The view-zoom tiles of the view's area inside bbox (the whole area when None)."""
        return self.tile_grid(bbox_wgs84).tiles()

    def describe(self) -> dict[str, Any]:
        """What the page needs to show the view (JSON)."""
        w, s, e, n = self.aoi.bounds_wgs84
        gray = " in gray" if self.historic.cfg.gray else ""
        colour: dict[str, Any] = {"title": f"{self.historic.cfg.layer}{gray}, colourised",
                                  "available": self.colour is not None, "error": self.model_error,
                                  "model": str(self.model_path)}
        if self.colour is not None:
            runner = self.colour.runner
            colour["label"] = f"colours estimated by model {runner.model.name} ({self.model_path.name}, " \
                              f"{runner.model_id[:8]}) — not observations"
            colour["attribution"] = ("Colours estimated by a Luminescence model; input: "
                                     f"{self.historic.attribution}")
        layers = {"colourised": colour}
        for role, layer in (("historic", self.historic), ("modern", self.modern)):
            layers[role] = {"title": layer.title, "synthetic": layer.synthetic, "gray": layer.cfg.gray,
                            "attribution": layer.attribution, "available": True}
        return {"name": self.name, "title": self.cfg.title, "zoom": self.zoom, "min_zoom": self.min_zoom,
                "bounds": [[s, w], [n, e]], "center": [(s + n) / 2, (w + e) / 2],
                "aoi": json.loads(json.dumps(mapping(self._outline()))), "layers": layers}

    def _outline(self) -> Any:
        """The AOI outline for the map, simplified to about a metre (the files are densified)."""
        return self.aoi.geometry_wgs84.simplify(1e-5, preserve_topology=True)


class AppState:
    """Everything the running app holds: views, sources, model runners, tile stores."""

    def __init__(self, params: Params, *, model: str | None = None, data_dir: str | None = None,
                 sample_caps_url: Any = None, model_workers: int | None = None,
                 area_windows: int = AREA_WINDOWS) -> None:
        """`model_workers`: forward passes run side by side per model (None: chosen for the
        machine, pipeline/app/runner.py). `area_windows`: a model with instance norms colours a
        view with statistics of up to this many of its area's windows (0: each window's own)."""
        from pipeline.server.bundled import sample_service_key

        if params.app is None:
            raise LuminescenceError("params.yaml has no `app` section (views, model); see README.md "
                                    "'Web app'")
        self.params = params
        self.cfg: AppConfig = params.app
        self.data_dir = Path(data_dir or self.cfg.data_dir)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.cache = TileCache(self.data_dir / "tilecache")
        self._caps_url = sample_caps_url or (lambda: "")
        sample_key = sample_service_key(params.sample)
        self._closed = False
        self.runners: dict[Path, ModelRunner | str] = {}
        self.views: dict[str, View] = {}
        self.gates: dict[str, SourceGate] = {}
        for name, vcfg in self.cfg.views.items():
            aoi = load_aoi(params.aois[vcfg.aoi], vcfg.aoi)
            layers = {}
            for role in ("historic", "modern"):
                lcfg = getattr(vcfg, role)
                scfg = params.sources[lcfg.source]
                if lcfg.source not in self.gates:
                    self.gates[lcfg.source] = SourceGate(lcfg.source, scfg.kind, params.harvest)
                layers[role] = LayerTiles(f"{name}-{role}", lcfg, scfg, params.harvest, self.cache,
                                          self.gates[lcfg.source], zoom=vcfg.zoom,
                                          sample_caps_url=lambda: self._caps_url(), sample_key=sample_key)
            path = Path(model or vcfg.model or self.cfg.model)
            if path not in self.runners:
                self.runners[path] = load_runner(path, batch_size=self.cfg.batch_size,
                                                 wait_s=self.cfg.batch_wait_ms / 1000, workers=model_workers,
                                                 precision=self.cfg.precision)
                runner = self.runners[path]
                if isinstance(runner, str):
                    log.warning("view %s: no colourised layer: %s", name, runner)
            runner = self.runners[path]
            view = View(name, vcfg, aoi, layers["historic"], layers["modern"], path, None,
                        model_error=runner if isinstance(runner, str) else "",
                        min_zoom=max(0, vcfg.zoom - self.cfg.zoom_out))
            if not isinstance(runner, str):
                view.colour = ColourLayer(
                    layers["historic"], runner, zoom=vcfg.zoom, zoom_out=self.cfg.zoom_out,
                    store_dir=self.data_dir / "colourised", area_key=f"view:{name}",
                    area_sample=spread_tiles(view.tile_grid(None), area_windows))
            self.views[name] = view

    def set_sample_caps_url(self, url_fn: Any) -> None:
        self._caps_url = url_fn

    def view(self, name: str) -> View:
        view = self.views.get(name)
        if view is None:
            raise RequestError(f"unknown view '{name}' (views: {', '.join(self.views)})", 404)
        return view

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for view in self.views.values():
            view.historic.close()
            view.modern.close()
            if view.colour is not None:
                view.colour.close()
        for runner in self.runners.values():
            if isinstance(runner, ModelRunner):
                runner.close()
        for gate in self.gates.values():
            gate.close()
        self.cache.close()
