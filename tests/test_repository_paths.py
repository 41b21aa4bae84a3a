"""The repository stands alone: no file cites notes or paths that exist only on a dev machine."""

from __future__ import annotations

import subprocess

from tests.conftest import ROOT

# Assembled so that this file does not contain them itself.
FORBIDDEN = ("/" + "work/", "../" + "shared", "shared" + "/notes", "/" + "home/")


def test_no_tracked_file_names_a_path_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    offenders = []
    for name in filter(None, files.decode().split("\0")):
        path = ROOT / name
        if not path.is_file() or path.stat().st_size > 2_000_000:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # binary (imagery, weights)
        offenders += [f"{name}: {word}" for word in FORBIDDEN if word in text]
    assert not offenders, "copy the facts into docs/ and cite that instead: " + "; ".join(offenders)
