"""Small filesystem primitives shared by every writer: atomic, collision-free."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: Path, text: str, *, skip_if_same: bool = True) -> bool:
    """Write via a unique temp file + rename: readers see the old or the new text, never half.

    Returns False (and leaves the file alone, mtime included) when it already holds ``text``.
    """
    if skip_if_same:
        try:
            if path.read_text("utf-8") == text:
                return False
        except (FileNotFoundError, UnicodeDecodeError, IsADirectoryError, NotADirectoryError):
            pass
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True
