"""User-facing errors: one line that says what is wrong and how to fix it."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class LuminescenceError(Exception):
    """An error caused by the user's input or environment, not by a bug.

    The message is shown as-is on one line, so it must say what is wrong and
    what to do about it.
    """


class ConfigError(LuminescenceError):
    """params.yaml (or another config mapping) is invalid."""


def one_line(message: str) -> str:
    """Collapse whitespace so a message always prints on a single line."""
    return " ".join(str(message).split())


def cli_entry(main: Callable[..., T]) -> Callable[..., T]:
    """Wrap a command's main(): user errors print one line and exit with status 2.

    Bugs still raise with a traceback, so they are not mistaken for bad input.
    """

    @functools.wraps(main)
    def wrapper(*args: object, **kwargs: object) -> T:
        try:
            return main(*args, **kwargs)
        except LuminescenceError as exc:
            print(f"error: {one_line(str(exc))}", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("error: interrupted; everything written so far is kept, re-run to resume",
                  file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
