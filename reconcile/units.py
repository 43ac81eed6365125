"""Sizes as people write them ('10M', '1.5GiB'), for models.toml and validators alike."""

from __future__ import annotations

import re

SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?B?|B)?\s*$", re.IGNORECASE)


def parse_size(value: str | int, where: str = "size") -> int:
    """'10M', '1.5GiB', '500k', 1024 → bytes (K/M/G/T are powers of 1024, like nix and curl)."""
    if isinstance(value, bool):
        raise ValueError(f"{where}: expected a size such as '10M', got a boolean")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{where}: a size cannot be negative")
        return value
    m = SIZE_RE.match(str(value))
    if not m:
        raise ValueError(f"{where}: expected a size such as '500K', '10M' or '2G', got {value!r}")
    unit = (m.group(2) or "B").upper()[0]
    mult = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}[unit]
    return int(float(m.group(1)) * mult)
