"""The align stage (`luminescence align DATASET`): builds data/datasets/<DATASET>/.

For the dataset's entry in params.yaml `datasets:` it reads the target (modern colour) tile
store and, for input `historic`, the historic store; pairs tiles on the target's grid
(pipeline.datasets.pairing), estimates and applies each pair's misregistration
(pipeline.geo.registration), splits by spatial blocks (pipeline.datasets.splits) and writes:

- train.npy / val.npy / test.npy (N, 256, 256, 4) uint8: channel 0 input grey, 1-3 target
  RGB (pipeline.datasets.storage), and dataset.json;
- manifest.csv: one row per stored pair (split, index, tile, bounds, offset, sources);
- aligned/{train,val,test}/<z>_<x>_<y>.png (pix2pix A|B, 256x512) and
  unpaired/{train,val,test}{A,B}/ (CycleGAN-style folders), unless align.export_layouts is false;
- figures/offsets.png, figures/split_map.png, figures/contact_sheet.png;
- summary.json: counts, drop reasons, luma formula, offset statistics, layers, synthetic flag.

Everything is written into a hidden temporary folder beside the dataset, dataset.json last,
and the folder is renamed into place at the end: a killed run never leaves a dataset that
looks complete, and the previous dataset stays until the new one is whole.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.core.config import DatasetConfig, Params, lookup
from pipeline.core.outputs import Output, check_outputs
from pipeline.core.paths import DATASETS_DIR, TILES_DIR, store_path
from pipeline.datasets.figures import OffsetPoint, contact_sheet_figure, offsets_figure, split_map_figure
from pipeline.datasets.pairing import InputReader, PairingError, TileGrid, Undecodable, grid_of
from pipeline.datasets.splits import GUARD, SplitPlan, WholeAreaPlan
from pipeline.datasets.storage import (
    DATASET_FOLDER,
    HELDOUT,
    SPLITS,
    DatasetInfo,
    atomic_write_bytes,
    write_info,
    write_split,
)
from pipeline.geo.pixels import LUMA_FORMULAS, decode_tile, luma, nodata_fraction
from pipeline.geo.registration import Offset, estimate_offset
from pipeline.geo.tiles import TILE_SIZE, TileId, tile_bounds_wgs84
from pipeline.geo.tilestore import TileStatus, TileStore, sqlite_files

log = logging.getLogger(__name__)


# How each drop reason is worded in the log line (several reasons share a word).
DROP_WORDS = {
    "target_empty": "empty", "input_empty": "empty",
    "target_failed": "failed", "input_failed": "failed",
    "target_undecodable": "undecodable", "input_undecodable": "undecodable",
    "input_missing": "outside the input layer",
    "guard_band": "guard band",
    "target_nodata": "nodata", "input_nodata": "nodata",
}
# Which params.yaml knob relaxes each filter (for the "no pairs left" error).
DROP_FIXES = {
    "nodata": "raise align.max_nodata_fraction (now {max_nodata_fraction:g})",
    "guard band": "lower align.splits.guard_band (now {guard_band}) or raise align.splits.block_size "
                  "(now {block_size})",
    "empty": "the AOI lies outside the layers' coverage; check the AOI and the layers in fetch:",
    "outside the input layer": "harvest the input layer over the target's AOI",
    "failed": "re-run the fetch stages to retry the failed tiles",
    "undecodable": "delete the tile stores and harvest them again",
}
MIN_APPLIED_SHIFT_PX = 0.05  # below the estimator's resolution: not worth a resampling


class AlignError(PairingError):
    """The dataset cannot be built from these stores and parameters."""


def open_store(tiles_dir: Path, fetch_key: str, role: str) -> TileStore:
    """Open a harvested store read-only, refusing missing, incomplete and all-empty ones."""
    path = store_path(fetch_key, tiles_dir)
    if not path.exists():
        raise AlignError(f"the {role} tile store {path} is missing; it is made by the fetch stage "
                         f"fetch@{fetch_key}: run `dvc repro fetch@{fetch_key}`")
    store = TileStore(path, readonly=True)
    if not store.complete:
        store.close()
        raise AlignError(f"the {role} tile store {path} is incomplete (its harvest did not finish); "
                         f"run `dvc repro fetch@{fetch_key}` to complete it")
    counts = store.counts()
    if counts[TileStatus.OK] == 0:
        layer = store.metadata.get("layer", "?")
        store.close()
        raise AlignError(
            f"the {role} tile store {path} has no tiles with data ({counts[TileStatus.EMPTY]} empty, "
            f"{counts[TileStatus.FAILED]} failed): the AOI lies outside layer '{layer}' or every "
            f"request failed; check fetch.{fetch_key}")
    return store


# --------------------------------------------------------------------------- the pass over pairs
@dataclass
class Pair:
    tile: TileId
    split: str
    input_tiles: list[TileId]
    offset: Offset | None = None  # None: not estimated
    reliable: bool = False
    applied: bool = False


@dataclass
class AlignResult:
    arrays: dict[str, np.ndarray]
    pairs: dict[str, list[Pair]]
    drops: Counter[str]
    categories: dict[TileId, str]  # for the split map: split, 'guard_band' or 'dropped'
    offsets: list[Pair] = field(default_factory=list)  # pairs with an estimated offset
    colour_input_tiles: int = 0

    @property
    def counts(self) -> dict[str, int]:
        return {s: len(self.pairs[s]) for s in SPLITS}


def pair_stores(label: str, ds: DatasetConfig, params: Params, tiles_dir: Path, target_key: str,
                historic_key: str | None, *, role: str = "", progress: bool = True,
                plan: SplitPlan | WholeAreaPlan | None = None,
                ) -> tuple[AlignResult, TileGrid, dict[str, str], dict[str, str]]:
    """Open the target (and historic) store, align them and close them again: the result, the
    target's grid and both stores' metadata (the target's stands for the input's with gray input)."""
    target = open_store(tiles_dir, target_key, f"{role}target")
    source = None
    try:
        if historic_key is not None:
            source = open_store(tiles_dir, historic_key, f"{role}historic")
        result = align_pairs(label, ds, params, target, source, progress=progress, plan=plan)
        grid = grid_of(target, f"{role}target")
        t_meta = target.metadata
        i_meta = source.metadata if source is not None else t_meta
    finally:
        target.close()
        if source is not None:
            source.close()
    return result, grid, t_meta, i_meta


def _status_drop(status: TileStatus) -> str | None:
    return {TileStatus.EMPTY: "target_empty", TileStatus.FAILED: "target_failed"}.get(status)


def align_pairs(name: str, ds: DatasetConfig, params: Params, target: TileStore,
                source: TileStore | None, *, progress: bool = True,
                plan: SplitPlan | WholeAreaPlan | None = None) -> AlignResult:
    """Pair, filter, register and split every target tile; arrays in memory.

    `plan` decides each tile's split (default: spatial blocks of align.splits)."""
    cfg = params.align
    target_grid = grid_of(target, "target")
    reader = None
    if source is not None:
        reader = InputReader(source, grid_of(source, "historic"), target_grid, formula=cfg.luma,
                             resampling=cfg.resampling, max_shift_px=cfg.offset.apply_below_px)

    drops: Counter[str] = Counter()
    categories: dict[TileId, str] = {}
    statuses = target.statuses()
    plan = plan if plan is not None else SplitPlan(cfg.splits)
    candidates: dict[str, list[tuple[TileId, list[TileId]]]] = {s: [] for s in SPLITS}
    overlap = 0
    for tile in sorted(statuses):
        reason = _status_drop(statuses[tile][0])
        used: list[TileId] = [tile]
        if reader is not None:
            input_reason = reader.drop_reason(tile)
            overlap += input_reason != "input_missing"
            used = reader.used_tiles(tile)
            reason = reason or input_reason
        if reason is None and plan.in_guard_band(tile):
            reason = "guard_band"
        if reason is not None:
            drops[reason] += 1
            categories[tile] = GUARD if reason == "guard_band" else "dropped"
            continue
        candidates[plan.split(tile)].append((tile, used))
    if reader is not None and overlap == 0:
        raise AlignError(_no_overlap_message(target, reader))

    total = sum(len(c) for c in candidates.values())
    arrays = {s: np.empty((len(candidates[s]), TILE_SIZE, TILE_SIZE, 4), np.uint8) for s in SPLITS}
    pairs: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    estimated: list[Pair] = []
    with tqdm(total=total, desc=f"align {name}", unit="pair", disable=not progress) as bar:
        for split in SPLITS:
            for tile, used in candidates[split]:
                bar.update()
                pair = Pair(tile, split, used)
                made = _make_pair(pair, target, reader, params, drops)
                if made is None:
                    categories[tile] = "dropped"
                    continue
                arrays[split][len(pairs[split])] = made
                pairs[split].append(pair)
                categories[tile] = split
                if pair.offset is not None:
                    estimated.append(pair)
    arrays = {s: arrays[s][:len(pairs[s])] for s in SPLITS}
    kept = sum(len(p) for p in pairs.values())
    if kept == 0:
        raise AlignError(_no_pairs_message(name, drops, params))
    return AlignResult(arrays, pairs, drops, categories, estimated,
                       len(reader.colour_tiles) if reader is not None else 0)


def _make_pair(pair: Pair, target: TileStore, reader: InputReader | None, params: Params,
               drops: Counter[str]) -> np.ndarray | None:
    """(256, 256, 4) input grey + target RGB of one pair, or None (the reason is counted)."""
    cfg = params.align
    data = target.get(pair.tile)
    try:
        rgba = decode_tile(data) if data is not None else None
    except ValueError:
        rgba = None
    if rgba is None:
        drops["target_undecodable"] += 1
        return None
    if nodata_fraction(rgba[..., 3]) > cfg.max_nodata_fraction:
        drops["target_nodata"] += 1
        return None
    target_gray = luma(rgba[..., :3], cfg.luma)
    if reader is None:  # gray input: the target's own luma, aligned by construction
        gray = target_gray
    else:
        try:
            gray, alpha = reader.read(pair.tile)
            if nodata_fraction(alpha) > cfg.max_nodata_fraction:
                drops["input_nodata"] += 1
                return None
            if cfg.offset.estimate:
                offset = estimate_offset(target_gray, gray, cfg.offset.max_shift_px)
                pair.offset = offset
                pair.reliable = offset.peak >= cfg.offset.min_peak
                if (pair.reliable and cfg.resampling != "none"
                        and MIN_APPLIED_SHIFT_PX <= offset.magnitude < cfg.offset.apply_below_px):
                    gray, alpha = reader.read(pair.tile, (offset.dx, offset.dy))
                    pair.applied = True
                    if nodata_fraction(alpha) > cfg.max_nodata_fraction:
                        drops["input_nodata"] += 1
                        return None
        except Undecodable:
            drops["input_undecodable"] += 1
            return None
    out = np.empty((TILE_SIZE, TILE_SIZE, 4), np.uint8)
    out[..., 0] = gray
    out[..., 1:] = rgba[..., :3]
    return out


def _no_overlap_message(target: TileStore, reader: InputReader) -> str:
    t_meta, i_meta = target.metadata, reader.store.metadata
    return (f"the target store {target.path} (AOI '{t_meta.get('aoi', '?')}', bounds "
            f"{t_meta.get('bounds', '?')}) and the historic store {reader.store.path} (AOI "
            f"'{i_meta.get('aoi', '?')}', bounds {i_meta.get('bounds', '?')}) do not overlap at all; "
            f"pair layers harvested over the same AOI (datasets: target / historic)")


def _no_pairs_message(name: str, drops: Counter[str], params: Params) -> str:
    words = _drop_words(drops)
    worst = max(words, key=lambda word: words[word]) if words else "nodata"
    fix = DROP_FIXES[worst].format(max_nodata_fraction=params.align.max_nodata_fraction,
                                   guard_band=params.align.splits.guard_band,
                                   block_size=params.align.splits.block_size)
    detail = ", ".join(f"{n} {w}" for w, n in words.items()) or "no tiles"
    return f"dataset '{name}': no pairs left after filtering ({detail}); most were removed by " \
           f"the {worst} filter: {fix}"


def _drop_words(drops: Counter[str]) -> dict[str, int]:
    words: Counter[str] = Counter()
    for reason, n in drops.items():
        words[DROP_WORDS[reason]] += n
    return {w: n for w, n in words.most_common() if n}


# --------------------------------------------------------------------------- outputs
def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def write_layouts(root: Path, result: AlignResult) -> None:
    """pix2pix aligned A|B PNGs and unpaired trainA/trainB-style folders (PNG encoding in threads)."""
    jobs = []
    for split in SPLITS:
        dirs = (root / "aligned" / split, root / "unpaired" / f"{split}A", root / "unpaired" / f"{split}B")
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        jobs += [(dirs, pair.tile, sample) for pair, sample in
                 zip(result.pairs[split], result.arrays[split], strict=True)]

    def write(job: tuple[tuple[Path, Path, Path], TileId, np.ndarray]) -> None:
        (aligned, a_dir, b_dir), tile, sample = job
        stem = f"{tile.z}_{tile.x}_{tile.y}.png"
        gray, rgb = sample[..., 0], sample[..., 1:]
        gray3 = np.repeat(gray[..., None], 3, axis=-1)
        (aligned / stem).write_bytes(_png(np.concatenate([gray3, rgb], axis=1)))
        (a_dir / stem).write_bytes(_png(gray))
        (b_dir / stem).write_bytes(_png(rgb))

    # zlib releases the GIL, so threads encode in parallel.
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for _ in pool.map(write, jobs):
            pass


MANIFEST_COLUMNS = [
    "split", "index", "z", "x", "y", "tile",
    "left_3857", "bottom_3857", "right_3857", "top_3857", "west", "south", "east", "north",
    "offset_estimated", "dx_px", "dy_px", "dx_m", "dy_m", "peak", "reliable", "applied",
    "input_kind", "input_layer", "input_store", "input_tiles", "target_layer", "target_store", "target_tile",
]


def manifest_rows(result: AlignResult, grid: TileGrid, meta: dict[str, str]) -> list[dict[str, object]]:
    rows = []
    for split in SPLITS:
        for index, pair in enumerate(result.pairs[split]):
            t = pair.tile
            left, bottom, right, top = grid.tile_bounds(t)
            west, south, east, north = tile_bounds_wgs84(t)
            metres = grid.pixel_size * grid.ground_metres_per_crs_unit(t)
            o = pair.offset
            rows.append({
                "split": split, "index": index, "z": t.z, "x": t.x, "y": t.y, "tile": str(t),
                "left_3857": f"{left:.3f}", "bottom_3857": f"{bottom:.3f}",
                "right_3857": f"{right:.3f}", "top_3857": f"{top:.3f}",
                "west": f"{west:.8f}", "south": f"{south:.8f}", "east": f"{east:.8f}",
                "north": f"{north:.8f}",
                "offset_estimated": o is not None,
                "dx_px": f"{o.dx:.3f}" if o else "0", "dy_px": f"{o.dy:.3f}" if o else "0",
                "dx_m": f"{o.dx * metres:.3f}" if o else "0", "dy_m": f"{o.dy * metres:.3f}" if o else "0",
                "peak": f"{o.peak:.4f}" if o else "", "reliable": pair.reliable if o else "",
                "applied": pair.applied,
                "input_kind": meta["input_kind"], "input_layer": meta["input_layer"],
                "input_store": meta["input_store"],
                "input_tiles": ";".join(str(u) for u in pair.input_tiles),
                "target_layer": meta["target_layer"], "target_store": meta["target_store"],
                "target_tile": str(t),
            })
    return rows


def _csv_bytes(rows: list[dict[str, object]]) -> bytes:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=MANIFEST_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue().encode()


def offset_stats(result: AlignResult, grid: TileGrid) -> dict[str, object]:
    est = result.offsets
    reliable = [p for p in est if p.reliable]
    stats: dict[str, object] = {"estimated": len(est), "reliable": len(reliable),
                                "applied": sum(p.applied for p in est)}
    if reliable:
        offsets = [p.offset for p in reliable if p.offset is not None]
        assert len(offsets) == len(reliable)  # a pair is marked reliable only with its offset
        mag = np.array([o.magnitude for o in offsets])
        metres = np.array([grid.pixel_size * grid.ground_metres_per_crs_unit(p.tile) for p in reliable])
        stats.update({
            "median_px": float(np.median(mag)), "p90_px": float(np.percentile(mag, 90)),
            "max_px": float(mag.max()), "median_m": float(np.median(mag * metres)),
            "p90_m": float(np.percentile(mag * metres, 90)),
            "median_dx_px": float(np.median([o.dx for o in offsets])),
            "median_dy_px": float(np.median([o.dy for o in offsets])),
        })
    return stats


def summary_line(name: str, kind: str, result: AlignResult, stats: dict[str, object] | None) -> str:
    c = result.counts
    words = _drop_words(result.drops)
    dropped = ", ".join(f"{n} {w}" for w, n in words.items()) or "none"
    line = (f"aligned {name} ({kind}): {sum(c.values())} pairs ({c['train']} train, {c['val']} val, "
            f"{c['test']} test); dropped {dropped}")
    if stats is None:
        line += "; offset zero by construction (gray input)"
    elif stats.get("estimated") == 0:
        line += "; offsets not estimated (align.offset.estimate: false)"
    elif "median_px" in stats:
        line += (f"; median offset {stats['median_px']:.1f} px ({stats['median_m']:.1f} m) over "
                 f"{stats['reliable']} reliable estimates, applied to {stats['applied']}")
    else:
        line += f"; no reliable offset among {stats['estimated']} estimates (none applied)"
    return line


def _sheet_rows(result: AlignResult, per_split: int) -> dict[str, list[tuple[np.ndarray, np.ndarray, str]]]:
    rows = {}
    for split in SPLITS:
        n = len(result.pairs[split])
        picks = sorted({int(i) for i in np.linspace(0, n - 1, min(per_split, n))}) if n and per_split else []
        rows[split] = [(result.arrays[split][i][..., 0], result.arrays[split][i][..., 1:],
                        str(result.pairs[split][i].tile)) for i in picks]
    return rows


def publish(tmp: Path, final: Path) -> None:
    """Move a finished dataset folder into place, replacing the previous one."""
    old = final.with_name(f".{final.name}.old")
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class HeldoutResult:
    pairs: np.ndarray  # (N, 256, 256, 4) like a split
    rows: list[dict[str, object]]  # manifest rows, split "heldout"
    info: dict[str, object]  # for dataset.json and summary.json


def align_heldout(name: str, ds: DatasetConfig, params: Params, tiles_dir: Path, training_tiles: set[TileId],
                  *, progress: bool = True) -> HeldoutResult:
    """Every tile of the held-out area, paired and registered exactly like the dataset's own."""
    assert ds.heldout is not None
    ho = ds.heldout
    historic = ho.historic if ds.input == "historic" else None  # DatasetConfig: set iff historic input
    result, grid, t_meta, i_meta = pair_stores(
        f"{name} (held-out)", ds, params, tiles_dir, ho.target, historic, role="held-out ",
        progress=progress, plan=WholeAreaPlan("test"))
    pairs = result.pairs["test"]
    overlap = {p.tile for p in pairs} & training_tiles
    if overlap:
        raise AlignError(f"dataset '{name}': the held-out area shares {len(overlap)} tiles with the training "
                         f"area (e.g. {min(overlap)}); datasets.{name}.heldout must be another area")
    target_layer = t_meta.get("layer", ho.target)
    if ds.input == "historic":
        assert ho.historic is not None  # DatasetConfig: heldout.historic is set iff the input is historic
        input_layer = i_meta.get("layer", ho.historic)
    else:
        input_layer = f"{target_layer} (luma)"
    meta = {"input_kind": ds.input, "input_layer": input_layer, "target_layer": target_layer,
            "target_store": str(store_path(ho.target, tiles_dir)),
            "input_store": str(store_path(ho.historic or ho.target, tiles_dir))}
    rows = [{**row, "split": HELDOUT} for row in manifest_rows(result, grid, meta)]
    info: dict[str, object] = {
        "count": len(pairs), "input_layer": input_layer, "target_layer": target_layer,
        "target_store": meta["target_store"], "input_store": meta["input_store"],
        "aoi": t_meta.get("aoi", "?"), "synthetic_input": i_meta.get("synthetic", "false").lower() == "true",
        "zoom": grid.zoom, "metres_per_px": grid.pixel_size * grid.ground_metres_per_crs_unit(pairs[0].tile),
        "dropped": dict(sorted(result.drops.items())), "note": ho.note,
    }
    return HeldoutResult(result.arrays["test"], rows, info)


def build_dataset(name: str, params: Params, *, tiles_dir: Path = TILES_DIR,
                  out_dir: Path = DATASETS_DIR, progress: bool = True) -> dict[str, object]:
    """Build data/datasets/<name>/ and return its summary (also written as summary.json)."""
    ds: DatasetConfig = lookup(params.datasets, name, "dataset", "datasets")
    cfg = params.align
    # the historic store's key: set exactly for historic input (DatasetConfig checks that)
    historic = ds.historic if ds.input == "historic" else None
    # The output rule: the folder replaced at the end is a dataset (or new), and holds no input.
    stores = [store_path(key, tiles_dir) for key in (ds.target, ds.historic) if key]
    check_outputs([Output("--out-dir", Path(out_dir) / name, DATASET_FOLDER)],
                  {"the tile store": [f for s in stores for f in sqlite_files(s)]})
    result, grid, t_meta, i_meta = pair_stores(name, ds, params, tiles_dir, ds.target, historic,
                                               progress=progress)

    synthetic = i_meta.get("synthetic", "false").lower() == "true"
    target_layer = t_meta.get("layer", ds.target)
    input_layer = i_meta.get("layer", historic) if historic is not None else f"{target_layer} (luma)"
    meta = {"input_kind": ds.input, "input_layer": input_layer, "target_layer": target_layer,
            "target_store": str(store_path(ds.target, tiles_dir)),
            "input_store": str(store_path(ds.historic or ds.target, tiles_dir))}
    if result.colour_input_tiles:
        log.warning("the historic layer '%s' is in colour in %d tiles; converted to grey with %s",
                    input_layer, result.colour_input_tiles, LUMA_FORMULAS[cfg.luma])
    for split in SPLITS:
        if not result.pairs[split]:
            log.warning("dataset '%s': the %s split is empty (too few blocks of %d tiles in the AOI); "
                        "a larger AOI or a smaller align.splits.block_size fills it", name, split,
                        cfg.splits.block_size)

    heldout = None
    if ds.heldout is not None:
        trained_on = {p.tile for split in SPLITS for p in result.pairs[split]}
        heldout = align_heldout(name, ds, params, Path(tiles_dir), trained_on, progress=progress)
    stats = offset_stats(result, grid) if ds.input == "historic" else None
    metres_per_px = grid.pixel_size * grid.ground_metres_per_crs_unit(
        next(p.tile for s in SPLITS for p in result.pairs[s]))
    line = summary_line(name, ds.input, result, stats)
    summary_pairs = sum(result.counts.values())
    summary: dict[str, object] = {
        "dataset": name, "input_kind": ds.input, "input_layer": input_layer, "target_layer": target_layer,
        "input_store": meta["input_store"], "target_store": meta["target_store"],
        "synthetic_input": synthetic, "zoom": grid.zoom, "tile_size": TILE_SIZE,
        "counts": result.counts, "pairs": sum(result.counts.values()),
        "dropped": dict(sorted(result.drops.items())),
        "drop_order": "target status, input status, guard band, target nodata, input nodata "
                      "(each tile counted once, under the first filter that removed it)",
        "luma": cfg.luma, "luma_formula": LUMA_FORMULAS[cfg.luma],
        "resampling": cfg.resampling,
        "metres_per_px": metres_per_px,
        "offsets": stats if stats is not None else
        {"estimated": 0, "note": "gray input is the target's own luma: offset zero by construction, "
                                 "not estimated"},
        "offset_sign": "a feature at target pixel (x, y) is at input pixel (x + dx, y + dy); x east, y south",
        "splits": {"block_size": cfg.splits.block_size, "guard_band": cfg.splits.guard_band,
                   "seed": cfg.splits.seed,
                   "fractions": {"train": cfg.splits.train, "val": cfg.splits.val, "test": cfg.splits.test},
                   "realised": {s: n / max(1, summary_pairs) for s, n in result.counts.items()}},
        "colour_input_tiles": result.colour_input_tiles,
        "heldout": heldout.info if heldout is not None else None,
        "summary": line,
    }

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out_dir / f".{name}.tmp-{os.getpid()}"
    tmp.mkdir()
    try:
        for split in SPLITS:
            write_split(tmp, split, result.arrays[split])
        rows = manifest_rows(result, grid, meta)
        if heldout is not None:
            write_split(tmp, HELDOUT, heldout.pairs)
            rows += heldout.rows
        atomic_write_bytes(tmp / "manifest.csv", _csv_bytes(rows))
        if cfg.export_layouts:
            write_layouts(tmp, result)
        title = f"{name}: {input_layer} -> {target_layer}"
        points = [OffsetPoint(p.offset.dx, p.offset.dy, p.reliable) for p in result.offsets if p.offset]
        note = None
        if ds.input == "gray":
            note = "gray input = luma of the target tile: offset zero by construction, not estimated"
        elif not cfg.offset.estimate:
            note = "offset estimation disabled (align.offset.estimate: false)"
        atomic_write_bytes(tmp / "figures" / "offsets.png", offsets_figure(
            points, title=f"offsets: {title}", metres_per_px=metres_per_px,
            apply_below_px=cfg.offset.apply_below_px, note=note))
        atomic_write_bytes(tmp / "figures" / "split_map.png", split_map_figure(
            result.categories, title=f"{name}: splits, blocks of {cfg.splits.block_size} tiles, "
                                     f"guard band {cfg.splits.guard_band} (z{grid.zoom})"))
        atomic_write_bytes(tmp / "figures" / "contact_sheet.png", contact_sheet_figure(
            _sheet_rows(result, cfg.contact_sheet_pairs), title=name, synthetic=synthetic))
        atomic_write_bytes(tmp / "summary.json", json.dumps(summary, indent=2).encode())
        write_info(tmp, DatasetInfo(name=name, input_kind=ds.input, input_layer=input_layer,
                                    target_layer=target_layer, synthetic_input=synthetic,
                                    tile_size=TILE_SIZE, zoom=grid.zoom, luma=cfg.luma,
                                    counts=result.counts,
                                    heldout=heldout.info if heldout is not None else None))  # last: complete
        publish(tmp, out_dir / name)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("%s", line)
    if heldout is not None:
        log.info("held-out area of %s: %d pairs of %s -> %s (z%s)", name, heldout.info["count"],
                 heldout.info["input_layer"], heldout.info["target_layer"], heldout.info["zoom"])
    return summary
