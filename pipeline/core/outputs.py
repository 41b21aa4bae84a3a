"""The rule for every command that writes: its output paths are checked before anything is opened.

`check_outputs` refuses, in one `error:` line naming the option:
- an output that is one of the command's inputs (or a file the command keeps, like the tile
  cache): the same path once links are resolved, or the same file through a hard link; an
  output folder, which the command replaces or fills, may not hold an input either;
- two outputs that are one file;
- an output that is a folder, whose folder is a file, or whose folder cannot be written;
- an existing output that is not the kind of file the command writes (judged by its first
  bytes, or for a folder by the file every such folder holds): the command would replace or
  modify something that is not its own.
All of it is checked together before the command writes anything, so a refused command has
changed nothing. Files that are written whole go through `pipeline.core.files.replacing`, so an
interrupted write leaves the previous file, never half of a new one.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.errors import LuminescenceError


class OutputPathError(LuminescenceError):
    """An output path that would overwrite an input, a foreign file, or cannot be written."""


@dataclass(frozen=True)
class FileKind:
    """A kind of file a command writes, recognised by its first bytes."""

    name: str  # for messages: "a PNG image"
    signatures: tuple[bytes, ...]

    def matches(self, head: bytes) -> bool:
        return any(head.startswith(s) for s in self.signatures)


@dataclass(frozen=True)
class FolderKind:
    """A kind of folder a command writes (and may replace whole), recognised by a file in it."""

    name: str  # for messages: "a dataset folder"
    marker: str | None  # a file every such folder holds ("dataset.json"); None: any folder will do


PNG = FileKind("a PNG image", (b"\x89PNG\r\n\x1a\n",))
TIFF = FileKind("a TIFF (GeoTIFF) image", (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))
FOLDER = FolderKind("a folder", None)  # a folder the command fills without replacing it
SQLITE = FileKind("an SQLite database (MBTiles tile store)", (b"SQLite format 3\x00",))


@dataclass(frozen=True)
class Output:
    """One path a command is about to write, and how the user gave it."""

    flag: str  # the option or setting that named it: "--out", "fetch.<key> output"
    path: Path
    kind: FileKind | FolderKind | None = None  # None: any existing file may be replaced

    @property
    def folder(self) -> bool:
        return isinstance(self.kind, FolderKind)


Inputs = Mapping[str, Path | Iterable[Path] | None]


def check_outputs(outputs: Sequence[Output], inputs: Inputs) -> None:
    """Refuse (OutputPathError) any output that breaks the rule in the module docstring.

    `inputs` maps how each input was given ("--store", "the tile cache") to its path or paths.
    """
    named: list[tuple[str, Path]] = []
    for name, paths in inputs.items():
        if paths is None:
            continue
        for p in [paths] if isinstance(paths, str | os.PathLike) else paths:
            named.append((name, Path(p)))
    for i, out in enumerate(outputs):
        for name, path in named:
            if same_file(out.path, path):
                raise OutputPathError(
                    f"{out.flag} {out.path} is the same file as {name} {path}: writing it would "
                    f"destroy that input; choose another {out.flag}")
            if out.folder and _inside(path, out.path):
                raise OutputPathError(
                    f"{out.flag} {out.path} holds {name} {path}: writing the folder would destroy "
                    f"that input; choose another {out.flag}")
        for other in outputs[:i]:
            if same_file(out.path, other.path):
                raise OutputPathError(f"{other.flag} and {out.flag} both name {out.path}; give each "
                                      f"output its own file")
        _check_place(out)
        _check_kind(out)


def same_file(a: Path, b: Path) -> bool:
    """True when `a` and `b` are one file: the same path once links are resolved, or (existing
    files) the same inode, i.e. hard links."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _inside(path: Path, folder: Path) -> bool:
    """`path` is `folder` or somewhere below it (links resolved)."""
    return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))


def _check_place(out: Output) -> None:
    path = out.path
    if path.is_dir() and not out.folder:
        raise OutputPathError(f"{out.flag} {path} is a folder; give a file name inside it")
    if out.folder and path.exists() and not path.is_dir():
        raise OutputPathError(f"{out.flag} {path} is a file, not a folder; choose another {out.flag}")
    folder = path.absolute().parent
    while not os.path.lexists(folder) and folder != folder.parent:
        folder = folder.parent  # the folders that do not exist yet will be created
    if not folder.is_dir():
        raise OutputPathError(f"{out.flag} {path} cannot be created: {folder} is a file, not a folder; "
                              f"choose another {out.flag}")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(f"{out.flag} {path} cannot be written: the folder {folder} is not writable "
                              f"by you; choose another {out.flag}")
    if path.exists() and not os.access(path, os.W_OK):
        raise OutputPathError(f"{out.flag} {path} exists and is read-only; choose another {out.flag}")


def _check_kind(out: Output) -> None:
    if isinstance(out.kind, FolderKind):
        if out.kind.marker is None or not out.path.is_dir():
            return
        # hidden entries (.gitignore written by DVC, our own temporary folders) don't make it foreign
        visible = [p.name for p in out.path.iterdir() if not p.name.startswith(".")]
        if visible and out.kind.marker not in visible:
            shown = ", ".join(sorted(visible)[:4]) + (", …" if len(visible) > 4 else "")
            raise OutputPathError(
                f"{out.flag} {out.path} exists and is not {out.kind.name} (it holds {shown} but no "
                f"{out.kind.marker}); it is left untouched: choose another {out.flag} or move it away")
        return
    if out.kind is None or not out.path.is_file():
        return
    with open(out.path, "rb") as fh:
        head = fh.read(32)
    if head and not out.kind.matches(head):  # an empty file holds nothing to lose
        raise OutputPathError(
            f"{out.flag} {out.path} exists and is not {out.kind.name}, the kind of file written there; "
            f"it is left untouched: choose another {out.flag} or move that file away")
