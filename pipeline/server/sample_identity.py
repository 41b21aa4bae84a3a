"""A stable identity of the bundled sample as served, for tile caches (the port changes every run)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.core.config import SampleConfig

_CODE = Path(__file__).resolve().parents[1]


def sample_service_key(sample: SampleConfig) -> str:
    """'sample:<hash>' of what the served tiles depend on: the sample config (film emulation
    included), the sample files (names and sizes) and the code of the server and of the film
    emulation, so changing any of them never reuses stale cached tiles."""
    h = hashlib.sha256(json.dumps(sample.model_dump(mode="json"), sort_keys=True).encode())
    data_dir = Path(sample.data_dir)
    if data_dir.is_dir():
        for f in sorted(p for p in data_dir.rglob("*") if p.is_file()):
            h.update(f"{f.relative_to(data_dir)}:{f.stat().st_size};".encode())
    for path in sorted([*(_CODE / "server").glob("*.py"), _CODE / "sample" / "film.py"]):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return f"sample:{h.hexdigest()[:16]}"
