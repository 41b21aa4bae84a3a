"""Figures of the align stage: offset histogram, split map, contact sheet (matplotlib, Agg)."""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap
from matplotlib.patches import Circle, Patch

from pipeline.geo.tiles import TileId

SPLIT_COLOURS = {"train": "#1f77b4", "val": "#ff7f0e", "test": "#2ca02c",
                 "guard_band": "#cfcfcf", "dropped": "#4d4d4d"}
SPLIT_LABELS = {"train": "train", "val": "val", "test": "test",
                "guard_band": "guard band (discarded)", "dropped": "dropped (no data / empty / failed)"}
SYNTHETIC_LABEL = "SYNTHETIC historic input (film emulation)"


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


@dataclass(frozen=True)
class OffsetPoint:
    dx: float
    dy: float
    reliable: bool


def offsets_figure(points: Sequence[OffsetPoint], *, title: str, metres_per_px: float,
                   apply_below_px: float, note: str | None = None) -> bytes:
    """Histogram of |offset| and a dx/dy scatter; `note` replaces them when nothing was estimated."""
    if note is not None or not points:
        fig, ax = plt.subplots(figsize=(7, 2.5))
        ax.axis("off")
        ax.text(0.5, 0.5, note or "no offsets estimated", ha="center", va="center", wrap=True)
        ax.set_title(title)
        return _png(fig)
    dx = np.array([p.dx for p in points])
    dy = np.array([p.dy for p in points])
    ok = np.array([p.reliable for p in points])
    mag = np.hypot(dx, dy)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    bins = np.linspace(0, max(float(mag.max()), 1.0), 25)
    left.hist([mag[ok], mag[~ok]], bins=bins, stacked=True, color=["#1f77b4", "#bbbbbb"],
              label=[f"reliable ({ok.sum()})", f"unreliable, not applied ({(~ok).sum()})"])
    if ok.any():
        med = float(np.median(mag[ok]))
        left.axvline(med, color="k", ls="--", lw=1,
                     label=f"median {med:.2f} px ({med * metres_per_px:.2f} m)")
    left.set_xlabel("|offset| (target pixels)")
    left.set_ylabel("pairs")
    left.legend(fontsize=8)
    secondary = left.secondary_xaxis("top", functions=(lambda v: v * metres_per_px,
                                                       lambda v: v / metres_per_px))
    secondary.set_xlabel("metres on the ground")
    right.scatter(dx[~ok], dy[~ok], s=8, c="#bbbbbb", label="unreliable")
    right.scatter(dx[ok], dy[ok], s=10, c="#1f77b4", label="reliable")
    right.add_patch(Circle((0, 0), apply_below_px, fill=False, ls=":", color="k",
                           label=f"applied below {apply_below_px:g} px"))
    lim = max(float(mag.max()), apply_below_px) * 1.1
    right.set_xlim(-lim, lim)
    right.set_ylim(lim, -lim)  # y grows down (south), like the pixel axes
    right.set_aspect("equal")
    right.axhline(0, color="k", lw=0.5)
    right.axvline(0, color="k", lw=0.5)
    right.set_xlabel("dx (px, east +)")
    right.set_ylabel("dy (px, south +)")
    right.legend(fontsize=8, loc="upper right")
    fig.suptitle(title, y=1.06)
    return _png(fig)


def split_map_figure(categories: dict[TileId, str], *, title: str) -> bytes:
    """Tiles coloured by split over the AOI; categories: a split, 'guard_band' or 'dropped'."""
    order = list(SPLIT_COLOURS)
    counts = Counter(categories.values())
    xs = [t.x for t in categories]
    ys = [t.y for t in categories]
    x0, y0 = min(xs), min(ys)
    grid = np.full((max(ys) - y0 + 1, max(xs) - x0 + 1), np.nan)
    for tile, cat in categories.items():
        grid[tile.y - y0, tile.x - x0] = order.index(cat)
    h, w = grid.shape
    scale = 8.0 / max(h, w, 1)
    fig, ax = plt.subplots(figsize=(max(4.0, w * scale) + 3.2, max(3.0, h * scale) + 0.8))
    ax.imshow(np.ma.masked_invalid(grid), cmap=ListedColormap([SPLIT_COLOURS[c] for c in order]),
              vmin=-0.5, vmax=len(order) - 0.5, interpolation="nearest",
              extent=(x0 - 0.5, x0 + w - 0.5, y0 + h - 0.5, y0 - 0.5))
    ax.set_xlabel("tile x (column)")
    ax.set_ylabel("tile y (row, from the north)")
    ax.ticklabel_format(useOffset=False, style="plain")
    handles = [Patch(color=SPLIT_COLOURS[c], label=f"{SPLIT_LABELS[c]}: {counts.get(c, 0)}")
               for c in order]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
    ax.set_title(title)
    return _png(fig)


def contact_sheet_figure(rows: dict[str, list[tuple[np.ndarray, np.ndarray, str]]], *, title: str,
                         synthetic: bool) -> bytes:
    """Per split, a row of (input | target) pairs; rows[split] = [(gray, rgb, label), ...]."""
    splits = [s for s, pairs in rows.items() if pairs]
    per_row = max((len(p) for p in rows.values()), default=0)
    if not splits:
        fig, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, "no pairs", ha="center", va="center")
        ax.set_title(title)
        return _png(fig)
    fig, axes = plt.subplots(len(splits), per_row * 2, figsize=(per_row * 2 * 1.9, len(splits) * 2.2),
                             squeeze=False)
    for r, split in enumerate(splits):
        for c in range(per_row):
            a_ax, b_ax = axes[r, 2 * c], axes[r, 2 * c + 1]
            a_ax.axis("off")
            b_ax.axis("off")
            if c >= len(rows[split]):
                continue
            gray, rgb, label = rows[split][c]
            a_ax.imshow(gray, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
            b_ax.imshow(rgb, interpolation="nearest")
            a_ax.set_title(f"{split} {label}\ninput", fontsize=7)
            b_ax.set_title("target", fontsize=7)
    full = f"{title}\n{SYNTHETIC_LABEL}" if synthetic else title
    fig.suptitle(full, color="#b00000" if synthetic else "black")
    return _png(fig)
