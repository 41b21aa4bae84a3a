"""The server's two kinds of error: a bad configuration, and a bad request."""

from __future__ import annotations

from pipeline.core.errors import LuminescenceError


class ServerError(LuminescenceError):
    """The server cannot be set up as asked (a layer, a fault plan, a port)."""


class OwsException(Exception):
    """A request error answered with an OWS ExceptionReport (HTTP `status`, 400 by default)."""

    def __init__(self, code: str, text: str, locator: str | None = None, status: int = 400) -> None:
        super().__init__(text)
        self.code, self.text, self.locator, self.status = code, text, locator, status
