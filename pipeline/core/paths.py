"""Where the pipeline's stages read and write, relative to the repository root.

dvc.yaml names the same paths; tests/test_stage_deps.py checks that they agree.
"""

from pathlib import Path

TILES_DIR = Path("data/tiles")  # fetch@<key>: <key>.mbtiles
DATASETS_DIR = Path("data/datasets")  # align@<dataset>: <dataset>/
RUNS_DIR = Path("runs")  # train@<ablation>: <ablation>/
METRICS_DIR = Path("metrics")  # evaluate@<ablation>, baseline@<name>: <name>.json
REPORTS_DIR = Path("reports")  # report: summary.md, figures/; evaluate: samples/
COLOURISED_DIR = Path("data/colourised")  # colourise: <store>.mbtiles and .tif
RELEASE_DIR = Path("release")  # release (frozen): model.pt, options.json, curves, metrics, MODEL_CARD.md


def store_path(fetch_key: str, tiles_dir: Path = TILES_DIR) -> Path:
    """The tile store written by the fetch stage `fetch@<fetch_key>`."""
    return Path(tiles_dir) / f"{fetch_key}.mbtiles"
