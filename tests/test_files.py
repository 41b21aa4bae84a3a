"""pipeline.core.files: atomic writes (whole file or the old one, usual permissions) and
file digests."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from pipeline.core.files import atomic_write_bytes, remove_stale_temp_files, replacing, sha256_of_file


def _temp_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_write_creates_folders_with_the_umask_permissions(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "x.json"
    atomic_write_bytes(path, b"{}")
    mask = os.umask(0)
    os.umask(mask)
    assert path.read_bytes() == b"{}"
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask
    assert _temp_files(path.parent) == []


@pytest.mark.parametrize("durable", [False, True])
def test_a_failed_write_keeps_the_old_file_and_no_temporary(tmp_path: Path, durable: bool) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    with pytest.raises(OSError, match="disk full"), replacing(path, durable=durable) as tmp:
        tmp.write_bytes(b"half")
        assert path.read_bytes() == b"old"  # not renamed yet
        raise OSError("disk full")
    assert path.read_bytes() == b"old"
    assert _temp_files(tmp_path) == []


def test_durable_write_replaces(tmp_path: Path) -> None:
    path = tmp_path / "x.bin"
    path.write_bytes(b"old")
    with replacing(path, durable=True) as tmp, open(tmp, "wb") as fh:
        fh.write(b"new")
    assert path.read_bytes() == b"new"


def test_stale_temporaries_of_one_file_are_removed(tmp_path: Path) -> None:
    (tmp_path / ".x.bin.abc123.tmp").write_bytes(b"killed")
    (tmp_path / ".y.bin.abc123.tmp").write_bytes(b"another file's")
    (tmp_path / "x.bin").write_bytes(b"kept")
    remove_stale_temp_files(tmp_path / "x.bin")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".y.bin.abc123.tmp", "x.bin"]


def test_sha256_of_file(tmp_path: Path) -> None:
    data = os.urandom(3 << 20)  # several read blocks
    path = tmp_path / "w.pth"
    path.write_bytes(data)
    assert sha256_of_file(path) == hashlib.sha256(data).hexdigest()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_of_file(empty) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
