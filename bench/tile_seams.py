"""Tile seams: how much a colourised mosaic's colour jumps at tile edges, against inside tiles.

    .venv/bin/python -m bench.tile_seams [--model release/model.pt]
        [--store data/tiles/erie_village-erie_2011_film.mbtiles] [--margins 0,32] [--blocks 3]
        [--norm-stats file,window,area,train] [--layouts centre,blend] [--dataset gray]
        [--out FILE] [--picture PNG]

The colourise stage and the web app colourise each tile inside a context window (`margin`
pixels of its neighbours around it). Keeping each window's centre (`--layouts centre`, what
they did until 2026-12-02) lets a tile's edge pixels see the same surroundings from both
sides; cross-fading each tile near its edges with its neighbours' windows (`blend`,
pipeline/inference/blend.py, what they do now) also makes the colours themselves run on.
This measures whether that is enough for a model: it colourises blocks of 4 x 4 tiles of a
tile store that way and compares the a*b* change across
the 6 tile edges inside each block with the change between any other two adjacent pixel
columns (rows). A ratio of 1.0 means no seam; a model whose colours depend on the window it
sees shows its windows' edges. It also gives the mean a*b* distance to the same block
colourised in one big window (the block and a tile of context all round), and the model's
time per window.

`--norm-stats` compares ways for a generator's instance norms (the release model's decoder) to
normalise: `file` is what the stages do (the model file's fixed statistics where it has them,
models/networks/norm_stats.py, else each window's own); `window` forces each window's own
statistics; `area` and `train` are experiments that make every instance norm use per-channel
statistics averaged over many windows first (forward hooks, `SharedNormStats`): those of the
store's own tiles (`area`), or of the training split of `--dataset` (`train`). With
`--dataset`, each variant is also scored as the evaluate stage scores a model on that
dataset's held-out area (whole tiles, ΔE2000 mean against the real colours). The tile stores
and datasets come from `make repro`.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from bench.app_options import report_header
from bench.timing import write_report
from pipeline.geo.tiles import TILE_SIZE, TileId

BLOCK = 4  # tiles a side of a scored block
AREA_WINDOWS = 64  # `area`: windows the statistics come from (the stages' default)
NORM_STATS = ("file", "window", "area", "train")
LAYOUTS = {"centre": "window centres", "blend": "cross-faded",  # --layouts: how windows make tiles
           "pairs": "2 x 2 tiles a window, cross-faded"}  # an experiment: fewer window borders per tile


def edge_jump_ratio(ab: np.ndarray, tile: int = TILE_SIZE) -> tuple[float, float]:
    """(columns, rows) of an (H, W, 2) a*b* mosaic of whole tiles: the mean a*b* change across
    the tile edges inside it over the mean change between other adjacent columns (rows)."""
    h, w = ab.shape[:2]
    if h % tile or w % tile or h < 2 * tile or w < 2 * tile:
        raise ValueError(f"a mosaic of at least 2 x 2 whole {tile}-px tiles is needed, got {h} x {w}")
    across_cols = np.linalg.norm(ab[:, 1:] - ab[:, :-1], axis=-1)  # [:, i]: between columns i and i + 1
    across_rows = np.linalg.norm(ab[1:] - ab[:-1], axis=-1)
    col_edges = [k * tile - 1 for k in range(1, w // tile)]
    row_edges = [k * tile - 1 for k in range(1, h // tile)]
    cols = across_cols[:, col_edges].mean() / np.delete(across_cols, col_edges, axis=1).mean()
    rows = across_rows[row_edges].mean() / np.delete(across_rows, row_edges, axis=0).mean()
    return float(cols), float(rows)


class SharedNormStats:
    """Experiment: a network's instance norms normalise with per-channel statistics averaged over
    many inputs (gathered in `collecting()`) instead of each input's own, while `shared()` is
    active. Forward hooks only: the network's code and weights are not changed."""

    def __init__(self, net: Any) -> None:
        from torch import nn

        self.norms = [m for m in net.modules() if isinstance(m, nn.InstanceNorm2d)]
        self._mode = "window"
        self._sums: dict[int, list[Any]] = {}
        for i, norm in enumerate(self.norms):
            norm.register_forward_pre_hook(self._pre_hook(i))
            norm.register_forward_hook(self._hook(i))

    def _pre_hook(self, i: int) -> Any:
        def gather(module: Any, args: tuple[Any, ...]) -> None:
            if self._mode == "collect":
                x = args[0].double()
                mean, square = x.mean(dim=(2, 3)).sum(0), (x * x).mean(dim=(2, 3)).sum(0)
                s = self._sums.setdefault(i, [0.0, 0.0, 0])
                s[0], s[1], s[2] = s[0] + mean, s[1] + square, s[2] + x.shape[0]
        return gather

    def _hook(self, i: int) -> Any:
        def replace(module: Any, args: tuple[Any, ...], out: Any) -> Any:
            if self._mode != "shared":
                return None
            x = args[0]
            total, square, n = self._sums[i]
            mean = total / n
            var = (square / n - mean * mean).clamp(min=0.0)
            shape = (1, -1, 1, 1)
            y = (x - mean.to(x.dtype).view(shape)) / (var.to(x.dtype).view(shape) + module.eps).sqrt()
            if module.affine:
                y = y * module.weight.view(shape) + module.bias.view(shape)
            return y
        return replace

    @contextmanager
    def collecting(self) -> Iterator[None]:
        self._sums, self._mode = {}, "collect"
        try:
            yield
        finally:
            self._mode = "window"
        if self.norms and len(self._sums) != len(self.norms):
            raise RuntimeError("no statistics gathered: run the network while collecting")

    @contextmanager
    def shared(self) -> Iterator[None]:
        self._mode = "shared"
        try:
            yield
        finally:
            self._mode = "window"


def colourise(model: Any, gray: np.ndarray) -> np.ndarray:
    """(N, H, W) or (H, W) uint8 gray -> float RGB in [0, 1], (N, H, W, 3) or (H, W, 3)."""
    import torch

    single = gray.ndim == 2
    batch = gray[None] if single else gray
    with torch.inference_mode():
        x = torch.from_numpy(np.ascontiguousarray(batch))[:, None].float().div_(255.0)
        rgb = model.colourise(x).clamp_(0.0, 1.0).permute(0, 2, 3, 1).numpy()
    return rgb[0] if single else rgb


def ab_of(rgb: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB in [0, 1] -> (H, W, 2) a*b* (the project's colour space code)."""
    import torch

    from models.colour import rgb_to_lab

    lab = rgb_to_lab(torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float())
    return lab[0, 1:].permute(1, 2, 0).numpy()


def opaque_blocks(tiles: Any, ids: set[TileId], zoom: int, ring: int = 1) -> list[TileId]:
    """Top-left tiles of the BLOCK x BLOCK blocks whose whole surroundings (`ring` tiles all
    round) are in the store and fully opaque."""
    def opaque(t: TileId) -> bool:
        g = tiles.get(t)
        return g is not None and bool((g[..., 1] == 255).all())

    span = range(-ring, BLOCK + ring)
    return [t for t in sorted(ids, key=lambda t: (t.y, t.x))
            if all(TileId(zoom, t.x + dx, t.y + dy) in ids for dx in span for dy in span)
            and all(opaque(TileId(zoom, t.x + dx, t.y + dy)) for dx in span for dy in span)]


def block_mosaic(tiles: Any, corner: TileId, extra: int) -> np.ndarray:
    """The gray pixels of the block around `corner` with `extra` tiles of context all round."""
    n = BLOCK + 2 * extra
    out = np.zeros((n * TILE_SIZE, n * TILE_SIZE), np.uint8)
    for dy in range(n):
        for dx in range(n):
            g = tiles.get(TileId(corner.z, corner.x - extra + dx, corner.y - extra + dy))
            out[dy * TILE_SIZE:(dy + 1) * TILE_SIZE, dx * TILE_SIZE:(dx + 1) * TILE_SIZE] = g[..., 0]
    return out


def score_blocks(model: Any, tiles: Any, corners: list[TileId], margin: int, layout: str = "blend"
                 ) -> tuple[dict[str, float], np.ndarray]:
    """Seam ratios, distance to one big window, and ms per window, over the blocks; and the
    first block's mosaic (RGB in [0, 1]). `layout`: `centre` keeps each window's centre;
    `blend` cross-fades each tile with its neighbours' windows, as the stages do (their
    windows: the block's and one ring around it)."""
    cols, rows, dist, big_cols, big_rows = [], [], [], [], []
    ms: list[float] = []
    first: np.ndarray | None = None
    for corner in corners:
        if layout == "pairs":
            mosaic = _pairs_mosaic(model, tiles, corner, margin, ms)
        else:
            mosaic = _tiles_mosaic(model, tiles, corner, margin, layout == "blend", ms)
        first = mosaic if first is None else first
        ab = ab_of(mosaic)
        c, r = edge_jump_ratio(ab)
        cols.append(c)
        rows.append(r)
        inner = slice(TILE_SIZE, -TILE_SIZE)
        big = ab_of(colourise(model, block_mosaic(tiles, corner, 1)))[inner, inner]
        dist.append(float(np.linalg.norm(ab - big, axis=-1).mean()))
        c, r = edge_jump_ratio(big)  # the same places in one window: what the model gives without tiles
        big_cols.append(c)
        big_rows.append(r)
    scores = {"cols": statistics.mean(cols), "rows": statistics.mean(rows), "big": statistics.mean(dist),
              "ms": statistics.median(ms), "big_cols": statistics.mean(big_cols),
              "big_rows": statistics.mean(big_rows)}
    assert first is not None  # corners is not empty
    return scores, first


def _tiles_mosaic(model: Any, tiles: Any, corner: TileId, margin: int, blend: bool, ms: list[float]
                  ) -> np.ndarray:
    """The block colourised a tile a window: each window's centre, or (`blend`) each tile
    cross-faded with its neighbours' windows (then a ring of windows around the block too);
    `ms` gets each window's time."""
    from pipeline.inference.blend import NEIGHBOURS, blend_tile
    from pipeline.inference.colourise import context_window

    ring = 1 if blend else 0
    outputs: dict[tuple[int, int], np.ndarray] = {}
    for dy in range(-ring, BLOCK + ring):
        for dx in range(-ring, BLOCK + ring):
            window = context_window(tiles, TileId(corner.z, corner.x + dx, corner.y + dy), margin)
            t0 = time.perf_counter()
            rgb = colourise(model, window)
            ms.append((time.perf_counter() - t0) * 1000)
            outputs[(dx, dy)] = (rgb * 255).round().astype(np.uint8)
    mosaic = np.zeros((BLOCK * TILE_SIZE, BLOCK * TILE_SIZE, 3), np.float32)
    for dy in range(BLOCK):
        for dx in range(BLOCK):
            if blend:
                around = {(ox, oy): outputs[(dx + ox, dy + oy)] for ox, oy in NEIGHBOURS}
                pixels = blend_tile(around, margin)
            else:
                pixels = outputs[(dx, dy)][margin:margin + TILE_SIZE, margin:margin + TILE_SIZE]
            mosaic[dy * TILE_SIZE:(dy + 1) * TILE_SIZE, dx * TILE_SIZE:(dx + 1) * TILE_SIZE] = pixels / 255.0
    return mosaic


def _pairs_mosaic(model: Any, tiles: Any, corner: TileId, margin: int, ms: list[float]) -> np.ndarray:
    """The block colourised 2 x 2 tiles a window (and a ring of such windows around it),
    cross-faded at those windows' edges; `ms` gets each window's time per tile it covers."""
    from pipeline.inference.blend import NEIGHBOURS, blend_tile

    side = 2 * TILE_SIZE
    context = block_mosaic(tiles, corner, 3)  # the ring's windows reach 2 tiles + margin beyond
    origin = 3 * TILE_SIZE
    outputs: dict[tuple[int, int], np.ndarray] = {}
    for by in range(-1, BLOCK // 2 + 1):
        for bx in range(-1, BLOCK // 2 + 1):
            y0, x0 = origin + by * side - margin, origin + bx * side - margin
            window = np.ascontiguousarray(context[y0:y0 + side + 2 * margin, x0:x0 + side + 2 * margin])
            t0 = time.perf_counter()
            rgb = colourise(model, window)
            ms.append((time.perf_counter() - t0) * 1000 / 4)
            outputs[(bx, by)] = (rgb * 255).round().astype(np.uint8)
    mosaic = np.zeros((BLOCK * TILE_SIZE, BLOCK * TILE_SIZE, 3), np.float32)
    for by in range(BLOCK // 2):
        for bx in range(BLOCK // 2):
            around = {(ox, oy): outputs[(bx + ox, by + oy)] for ox, oy in NEIGHBOURS}
            pixels = blend_tile(around, margin, side)
            mosaic[by * side:(by + 1) * side, bx * side:(bx + 1) * side] = pixels / 255.0
    return mosaic


def picture(panels: list[tuple[str, np.ndarray]], path: str) -> None:
    """Mosaics side by side at half size, each under its label."""
    from PIL import Image, ImageDraw

    size, head, gap = BLOCK * TILE_SIZE // 2, 18, 8
    img = Image.new("RGB", (len(panels) * (size + gap) - gap, size + head), "white")
    draw = ImageDraw.Draw(img)
    for i, (label, rgb) in enumerate(panels):
        tile = Image.fromarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)).resize((size, size))
        img.paste(tile, (i * (size + gap), head))
        draw.text((i * (size + gap) + 2, 3), label, fill=(0, 0, 0))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    img.save(path)


def heldout_delta_e(model: Any, dataset_dir: Path) -> tuple[float, int]:
    """ΔE2000 mean of whole held-out tiles against their real colours, as the evaluate stage
    scores them (its own colourise and metric code)."""
    import torch

    from eval.colour_metrics import delta_e2000
    from pipeline.datasets.storage import INPUT_CHANNEL, TARGET_CHANNELS, open_split
    from pipeline.results.evaluation import colourise_tiles

    pairs = open_split(dataset_dir, "heldout")
    gray = np.ascontiguousarray(pairs[..., INPUT_CHANNEL])
    out = colourise_tiles(model, gray, batch_size=4, device=torch.device("cpu"), progress=False)
    return delta_e2000(out, np.ascontiguousarray(pairs[..., TARGET_CHANNELS]))[0], len(gray)


def parse_list(text: str, what: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    bad = [t for t in items if allowed is not None and t not in allowed]
    if not items or bad:
        raise SystemExit(f"error: --{what} {text!r}: give a comma-separated list"
                         + (f" of {', '.join(allowed)}" if allowed else ""))
    return items


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="release/model.pt", help="model.pt (default: the release model)")
    parser.add_argument("--store", default="data/tiles/erie_village-erie_2011_film.mbtiles",
                        help="a tile store at the model's zoom (default: the erie village's film layer, z19)")
    parser.add_argument("--margins", default="0,32", help="context margins in pixels, comma-separated")
    parser.add_argument("--blocks", type=int, default=3, help="4 x 4-tile blocks, picked at random (seed 0)")
    parser.add_argument("--norm-stats", default="file",
                        help="file (what the stages do), window (each window's own), area, train "
                             "(experiments)")
    parser.add_argument("--dataset", default=None,
                        help="a dataset of data/datasets: its train split gives `train` statistics, and "
                             "each variant is also scored on its held-out area")
    parser.add_argument("--layouts", default="centre,blend",
                        help="centre (keep each window's centre, as the stages did before 2026-12-02), "
                             "blend (cross-fade with the neighbours' windows, what the stages do)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the app runs one per pass)")
    parser.add_argument("--out", default=None, help="also write the Markdown here")
    parser.add_argument("--picture", default=None, metavar="PNG",
                        help="also save the first block at the stages' margin, one panel per --norm-stats")
    args = parser.parse_args()

    variants = parse_list(args.norm_stats, "norm-stats", NORM_STATS)
    layouts = parse_list(args.layouts, "layouts", tuple(LAYOUTS))
    try:
        margins = [int(m) for m in parse_list(args.margins, "margins")]
    except ValueError:
        raise SystemExit(f"error: --margins {args.margins!r}: give whole numbers of pixels") from None
    dataset_dir = Path("data/datasets") / args.dataset if args.dataset else None
    if "train" in variants and dataset_dir is None:
        raise SystemExit("error: --norm-stats train needs --dataset (its train split gives the statistics)")
    inputs = ((Path(args.model), "--model"), (Path(args.store), "--store"), (dataset_dir, "--dataset"))
    for path, what in inputs:
        if path is not None and not path.exists():
            raise SystemExit(f"error: {what} {path} does not exist "
                             "(tile stores and datasets come from `make repro`)")
    if args.blocks < 1:
        raise SystemExit("error: --blocks must be at least 1")

    import torch

    from models.networks.norm_stats import gray_batches, own_statistics
    from pipeline.datasets.storage import INPUT_CHANNEL, open_split
    from pipeline.geo.pixels import GrayTiles
    from pipeline.geo.tilestore import TileStore
    from pipeline.inference.colourise import context_margin, fit_area_norm_stats, size_multiple
    from pipeline.inference.layout import use_fast_layout
    from pipeline.training.checkpoint import load_model

    torch.set_num_threads(args.threads)
    model = load_model(Path(args.model), torch.device("cpu"))
    use_fast_layout(model)
    net_g = str(getattr(model.opts, "netG", "?"))
    multiple = size_multiple(net_g)
    wrong = [m for m in margins if m < 0 or (TILE_SIZE + 2 * m) % multiple]
    if wrong:
        raise SystemExit(f"error: --margins {wrong}: {net_g} needs windows (256 + 2 x margin) that are "
                         f"multiples of {multiple}")
    norms = SharedNormStats(model.nets["G"])
    if not set(variants) <= {"file", "window"} and not norms.norms:
        raise SystemExit(f"error: {net_g} has no instance norms: "
                         "--norm-stats other than window would change nothing")

    load0 = os.getloadavg()[0]
    with TileStore(args.store, readonly=True) as store:
        tiles = GrayTiles(store)
        zoom = store.zoom
        store_tiles = store.tiles()
        # `pairs` windows reach 3 tiles beyond a block: then every layout is scored on such blocks
        candidates = opaque_blocks(tiles, set(store_tiles), zoom, 3 if "pairs" in layouts else 1)
        if not candidates:
            raise SystemExit(f"error: {args.store} has no {BLOCK} x {BLOCK} block of opaque tiles with "
                             "neighbours all round")
        rng = np.random.default_rng(0)
        picked = rng.choice(len(candidates), min(args.blocks, len(candidates)), replace=False)
        corners = [candidates[i] for i in sorted(picked)]
        rows: list[tuple[str, int, str, dict[str, float], str]] = []
        panels: list[tuple[str, np.ndarray]] = []
        stage_margin = context_margin(multiple)
        shown_margin = stage_margin if stage_margin in margins else margins[-1]
        train = open_split(dataset_dir, "train")[::3, ..., INPUT_CHANNEL] if dataset_dir is not None else None

        def collect(images: np.ndarray) -> None:
            with norms.collecting(), own_statistics(model.nets["G"]):
                for start in range(0, len(images), 4):
                    colourise(model, images[start:start + 4])

        def normalising(variant: str) -> Any:
            if variant == "window":
                return own_statistics(model.nets["G"])
            return norms.shared() if variant == "train" else _nothing()


        for variant in variants:
            heldout = ""
            if dataset_dir is not None:
                if variant == "train" and train is not None:
                    collect(train)
                heldout_gray = open_split(dataset_dir, "heldout")[..., INPUT_CHANNEL]
                scored_model = model
                if variant == "area":  # a copy given the held-out tiles' statistics, as evaluate does
                    scored_model = copy.deepcopy(model)
                    scored_model.fit_norm_stats(gray_batches(heldout_gray, AREA_WINDOWS, 4))
                with normalising(variant):
                    de, n = heldout_delta_e(scored_model, dataset_dir)
                heldout = f"{de:.2f} (N {n})"
            if variant == "train" and train is not None:
                collect(train)
            for margin in margins:
                scored_model = model
                if variant == "area":  # a copy given the store's statistics, as colourise does
                    scored_model = copy.deepcopy(model)
                    fit_area_norm_stats(scored_model, tiles, store_tiles, margin=margin, windows=AREA_WINDOWS,
                                        batch_size=2)
                for layout in layouts:
                    with normalising(variant):
                        scored, mosaic = score_blocks(scored_model, tiles, corners, margin, layout)
                    rows.append((variant, margin, layout, scored, heldout))
                    name = f"{variant} statistics, margin {margin}, {LAYOUTS[layout]}"
                    if margin == shown_margin:
                        panels.append((f"{name}: seams {scored['cols']:.2f} / {scored['rows']:.2f}", mosaic))
                    print(f"{name}: seams {scored['cols']:.2f} / {scored['rows']:.2f}, distance to one "
                          f"window {scored['big']:.2f}, {scored['ms']:.0f} ms a window"
                          + (f", held-out ΔE2000 {heldout}" if heldout else ""), flush=True)
    load1 = os.getloadavg()[0]

    lines = [
        *report_header("Tile seams", "bench.tile_seams", load_before=load0, load_after=load1,
                       extra=f", {args.threads} torch thread{'s' if args.threads != 1 else ''}"),
        f"Model {args.model} ({net_g}); store {args.store} (z{zoom}); {len(corners)} blocks of "
        f"{BLOCK} x {BLOCK} tiles" + (f"; dataset {args.dataset}" if args.dataset else "") + ".",
        "",
        "| instance-norm statistics | margin | window | tiles | seams: across tile edges / elsewhere, "
        "columns | rows | the same in one big window, columns / rows | a*b* distance to one big window "
        "| ms a tile (a window's time over the tiles it colours) | held-out ΔE2000 (whole tiles) |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for variant, margin, layout, s, heldout in rows:
        window = (2 if layout == "pairs" else 1) * TILE_SIZE + 2 * margin
        lines.append(f"| {variant} | {margin} | {window} px | {LAYOUTS[layout]} | "
                     f"{s['cols']:.2f} | {s['rows']:.2f} | {s['big_cols']:.2f} / {s['big_rows']:.2f} | "
                     f"{s['big']:.2f} | {s['ms']:.0f} | "
                     f"{heldout or '–'} |")
    lines += ["", "Seams: 1.0 is none; the a*b* change across the tile edges inside the blocks over the "
              "change between other adjacent columns (rows). \"The same in one big window\": that ratio at "
              "the same places when the whole block is colourised in one window, where no tile edge "
              "exists (what the model itself gives there).", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_report(text, args.out)
    if args.picture:
        picture(panels, args.picture)
        print(f"wrote {args.picture}")


@contextmanager
def _nothing() -> Iterator[None]:
    yield


if __name__ == "__main__":
    main()
