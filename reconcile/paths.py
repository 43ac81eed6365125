"""Relative paths from manifests and remote listings, checked before they touch disk.

A path that a server or a models.toml hands us is data, not trust: it must stay
inside the directory it is joined to, whatever it contains.
"""

from __future__ import annotations

import re

_DRIVE = re.compile(r"^[A-Za-z]:")


def check_relpath(path: str) -> str:
    """Return ``path`` normalised ('a//b' → 'a/b'), or raise ValueError saying why it is unsafe."""
    if not isinstance(path, str) or path == "":
        raise ValueError("empty path")
    if "\0" in path:
        raise ValueError(f"{path!r}: contains a NUL byte")
    if any(ord(c) < 0x20 for c in path):
        raise ValueError(f"{path!r}: contains a control character")
    if path.startswith("/") or "\\" in path or _DRIVE.match(path):
        raise ValueError(f"{path!r}: must be a relative path with '/' separators")
    parts = [p for p in path.split("/") if p != ""]
    if not parts:
        raise ValueError(f"{path!r}: empty path")
    for p in parts:
        if p in (".", ".."):
            raise ValueError(f"{path!r}: '.' and '..' components are not allowed")
    return "/".join(parts)
