"""A WMTS's layers as a text table (what `fetch list-layers` prints)."""

from __future__ import annotations

from pipeline.geo.wmts_client import Capabilities, format_extension


def format_layer_table(caps: Capabilities) -> str:
    """One row per layer: id, title (SYNTHETIC marked), formats, matrix sets with zooms, bounds."""
    rows = [("id", "title", "formats", "matrix sets (zooms)", "WGS84 bounds (W S E N)")]
    for layer in sorted(caps.layers.values(), key=lambda ly: ly.id.lower()):
        title = layer.title if len(layer.title) <= 50 else layer.title[:49] + "…"
        if layer.synthetic and "synthetic" not in title.lower():
            title += " [SYNTHETIC]"
        sets = ", ".join(f"{ms.id} ({ms.describe_range()})" if ms.web_mercator else f"{ms.id} (not 3857)"
                         for ms in layer.matrix_sets.values())
        bounds = " ".join(f"{v:.4f}" for v in layer.bounds_wgs84) if layer.bounds_wgs84 else "(not declared)"
        rows.append((layer.id, title, ", ".join(format_extension(f) for f in layer.formats), sets, bounds))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    head = f"{caps.title or 'WMTS'}: {len(caps.layers)} layers ({caps.url})"
    return "\n".join([head, *lines])
