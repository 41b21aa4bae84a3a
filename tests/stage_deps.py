"""Which project modules each `dvc.yaml` stage runs, read from the code's imports.

A stage's command names its entry module (`python -m pipeline.stages.X`); its import closure
is every module of the project reachable from there through `import` statements, those
inside functions included (a lazy import still runs), and every module of a package that a
registry walks with `pkgutil.iter_modules` (the model variants). A stage is correct when each module of
that closure lies under one of the stage's `deps` (a file, or a folder above it): then no
code the stage runs can change without DVC re-running it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT_PACKAGES = ("pipeline", "models", "eval")
ENTRY = re.compile(r"\bpython\s+-m\s+([\w.]+)")


def module_file(root: Path, name: str) -> Path | None:
    """The file of module `name` under `root`, or None when it is not a project module."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = root.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = module.split(".")
                keep = len(parts) - node.level + (1 if is_package else 0)
                base = ".".join(parts[:keep] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            yield base
            # `from pkg import mod` imports the submodule pkg.mod when one exists
            yield from (f"{base}.{alias.name}" for alias in node.names)


def _with_parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]


def _plugin_modules(root: Path, names: Iterable[str]) -> list[str]:
    out = []
    for name in names:
        path = module_file(root, name)
        if path is not None and path.name == "__init__.py":
            out.extend(f"{name}.{child.stem}" for child in sorted(path.parent.glob("*.py")))
    return out


def import_closure(root: Path, entry: str) -> set[Path]:
    """Files of every project module that importing `entry` can run (packages' __init__ too)."""
    seen: set[str] = set()
    files: set[Path] = set()
    todo = [entry]
    while todo:
        name = todo.pop()
        for candidate in _with_parents(name):
            if candidate in seen:
                continue
            path = module_file(root, candidate)
            if path is None:
                continue
            seen.add(candidate)
            files.add(path.relative_to(root))
            source = path.read_text(encoding="utf-8")
            names = list(_imported_names(ast.parse(source, filename=str(path)), candidate,
                                         path.name == "__init__.py"))
            todo.extend(names)
            if "iter_modules(" in source:  # a plugin registry: it imports every module of its packages
                todo.extend(_plugin_modules(root, names))
    return files


def has_code(path: Path) -> bool:
    """False for a module of only a docstring (an empty package marker changes nothing)."""
    body = ast.parse(path.read_text(encoding="utf-8")).body
    if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
        body = body[1:]
    return bool(body)


@dataclass(frozen=True)
class Stage:
    name: str
    entry: str
    deps: tuple[str, ...]


def _dep_paths(deps: Iterable[Any]) -> tuple[str, ...]:
    out = []
    for dep in deps:
        path = next(iter(dep)) if isinstance(dep, Mapping) else str(dep)
        out.append(path.rstrip("/"))
    return tuple(out)


def stages(dvc: Mapping[str, Any]) -> list[Stage]:
    """Every stage of a parsed dvc.yaml with a `python -m` command (foreach templates as one)."""
    out = []
    for name, stage in dvc["stages"].items():
        body = stage.get("do", stage)
        match = ENTRY.search(str(body.get("cmd", "")))
        if match:
            out.append(Stage(name, match.group(1), _dep_paths(body.get("deps", []))))
    return out


def covered(path: Path, deps: Iterable[str]) -> bool:
    text = path.as_posix()
    return any(text == dep or text.startswith(dep + "/") for dep in deps if "${" not in dep)


def uncovered_modules(root: Path, stage: Stage) -> list[str]:
    """The project files `stage` runs that none of its deps covers, sorted."""
    closure = import_closure(root, stage.entry)
    return sorted(p.as_posix() for p in closure
                  if has_code(root / p) and not covered(p, stage.deps))
