"""Deterministic A/B assignment: which arm of an experiment one request key belongs to.

A key's point is sha256(salt + ":" + key) read as a number in [0, 1) (the first 52 bits, so it
is exact in a double and the same in SQL: see `POINT_SQL`); the key is in the candidate arm when
its point is below the share. The point does not depend on the share, so growing the share
only adds keys to the candidate (a key there stays there), and a new salt reshuffles everyone.
"""

from __future__ import annotations

import hashlib
from typing import Literal

Arm = Literal["control", "candidate"]
ARMS: tuple[Arm, Arm] = ("control", "candidate")
POINT_BITS = 52
_SCALE = float(1 << POINT_BITS)

POINT_SQL = ("(('x' || substr(encode(sha256(convert_to({salt} || ':' || {key}, 'UTF8')), "
             "'hex'), 1, 13))::bit(52)::bigint::float8 / 4503599627370496.0)")
"""The same point in SQL (PostgreSQL 11+), for the per-arm views' routing function."""


def point(salt: str, key: str) -> float:
    """Where `key` falls in [0, 1) under `salt`: uniform, and independent of the share."""
    digest = hashlib.sha256(f"{salt}:{key}".encode()).hexdigest()
    return int(digest[:13], 16) / _SCALE


def arm(salt: str, key: str, share: float) -> Arm:
    """`candidate` when the key's point is below `share`, else `control`."""
    return "candidate" if point(salt, key) < share else "control"
