"""Writing and hashing files: the one implementation of the pipeline's atomic writes and
content digests (checkpoints, datasets, the film layer, weight-hash caches, metrics).

Atomic: a file is written under a temporary name in its own folder and renamed onto its
final name only when complete, so a reader (or a killed run's successor) finds the old
file or the new one, never half of one. Temporary names are `.<name>.<random>.tmp`;
`remove_stale_temp_files` deletes those a killed writer left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def sha256_of_file(path: Path) -> str:
    """Hex sha256 of a file's contents (read in blocks, so any size)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def default_file_mode() -> int:
    """The permissions open() gives a new file under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def replacing(path: Path, *, durable: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` for the block to write (by name: numpy, torch and
    GDAL all can); when the block ends it is renamed onto `path`, when it raises it is
    deleted. `durable`: also flush the file and the rename to disk (fsync), so a power
    cut right after cannot lose it (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    tmp = Path(name)
    try:
        os.fchmod(fd, default_file_mode())  # mkstemp makes 0600; outputs are shared like others
        os.close(fd)
        yield tmp
        if durable:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        _fsync_folder(path.parent)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically (see `replacing`)."""
    with replacing(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temp_files(path: Path) -> None:
    """Delete the temporary files of writes to `path` that were killed before their rename."""
    path = Path(path)
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tmp.unlink(missing_ok=True)


def _fsync_folder(path: Path) -> None:
    """Make a rename in `path` durable; a file system that cannot (some network ones) is left be."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
