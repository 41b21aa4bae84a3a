"""User-facing errors: one line that says what is wrong and how to fix it."""

from __future__ import annotations

import errno
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


def warn(message: str) -> None:
    """Tell the user about something suspicious that does not stop the command (one line)."""
    print(f"warning: {one_line(message)}", file=sys.stderr, flush=True)


# The system refused a write: no space, a read-only file system, no permission. These are the
# user's environment, not bugs, wherever the write happens (a checked output path can still
# fill a disk, and root passes every permission check made in advance).
_ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM})


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
        except OSError as exc:
            if exc.errno not in _ENVIRONMENT_ERRNOS:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            print(f"error: {where}{exc.strerror or exc}; free some space or choose a place you may "
                  f"write to, then re-run (everything written so far is kept)", file=sys.stderr)
            raise SystemExit(2) from None
        except KeyboardInterrupt:
            print("error: interrupted; everything written so far is kept, re-run to resume",
                  file=sys.stderr)
            raise SystemExit(130) from None

    return wrapper
