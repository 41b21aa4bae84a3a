"""Deterministic fault injection (`FaultPlan`) and its command-line syntax (`parse_faults`).

Which attempt of which tile fails, and how, depends only on the plan's seed and the tile, so a
test or benchmark sees the same misbehaviour on every run whatever the request order.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from typing import Any

from pipeline.server.errors import ServerError

FAULT_KINDS = ("error", "throttle", "unavailable", "truncate", "slow", "exception")


@dataclass(frozen=True)
class FaultPlan:
    """Deterministic fault injection: which attempts of which tiles fail, and how.

    Attempt n (0-based, counted per tile over all endpoints) of tile (layer, z, x, y) draws
    u = sha256(seed, layer, z, x, y, n) in [0, 1) and fails with the first kind whose cumulative
    rate exceeds u, for n < faults_per_tile; later attempts always succeed.
    """

    error_rate: float = 0.0  # HTTP 500
    throttle_rate: float = 0.0  # HTTP 429 with Retry-After
    unavailable_rate: float = 0.0  # HTTP 503 with Retry-After
    truncate_rate: float = 0.0  # Content-Length declared, body cut short, connection closed
    slow_rate: float = 0.0  # respond after slow_s (longer than the client's timeout)
    slow_s: float = 2.0
    exception_rate: float = 0.0  # HTTP 200 or 400 with an OGC exception XML body
    latency_s: float = 0.0  # added to every tile response
    faults_per_tile: int = 2  # a tile fails at most this many times, then succeeds
    seed: int = 0
    retry_after_s: int = 1  # Retry-After of 429 and 503 answers

    def __post_init__(self) -> None:
        rates = self.rates()
        if any(not 0.0 <= r <= 1.0 for r in rates.values()) or sum(rates.values()) > 1.0 + 1e-9:
            raise ServerError(f"fault rates must lie in [0, 1] and sum to at most 1 (got {rates})")
        if self.slow_s < 0 or self.latency_s < 0 or self.faults_per_tile < 0 or self.retry_after_s < 0:
            raise ServerError("slow_s, latency_s, faults_per_tile and retry_after_s must not be negative")

    def rates(self) -> dict[str, float]:
        return {kind: float(getattr(self, f"{kind}_rate")) for kind in FAULT_KINDS}

    def draw(self, layer: str, z: int, x: int, y: int, attempt: int) -> float:
        key = f"{self.seed}|{layer}|{z}|{x}|{y}|{attempt}".encode()
        return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2.0**64

    def fault_for(self, layer: str, z: int, x: int, y: int, attempt: int) -> str | None:
        """The fault kind of this attempt, or None when it succeeds."""
        if attempt >= self.faults_per_tile:
            return None
        u = self.draw(layer, z, x, y, attempt)
        edge = 0.0
        for kind, rate in self.rates().items():
            edge += rate
            if u < edge:
                return kind
        return None


_FIELDS = {f.name for f in dataclasses.fields(FaultPlan)}
_INT_FIELDS = ("faults_per_tile", "seed", "retry_after_s")


def parse_faults(text: str, option: str = "--faults") -> FaultPlan:
    """'error=0.1,throttle=0.05,latency_s=0.05,seed=3' -> FaultPlan (`_rate` may be left off).

    Errors name `option`, the place the text came from.
    """
    values: dict[str, Any] = {}  # checked by FaultPlan itself
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        key = key.strip()
        name = key if key in _FIELDS else f"{key}_rate"
        if not sep or name not in _FIELDS:
            known = ", ".join(sorted(_FIELDS))
            raise ServerError(f"{option}: '{item}' is not NAME=VALUE with NAME among {known}")
        try:
            values[name] = int(value) if name in _INT_FIELDS else float(value)
        except ValueError:
            raise ServerError(f"{option}: '{item}': {value!r} is not a number") from None
    return FaultPlan(**values)
