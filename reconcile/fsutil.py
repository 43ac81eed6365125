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
    try:  # the replaced file's mode (a user's models.toml keeps its own) …
        mode = os.stat(path).st_mode & 0o7777
    except OSError:  # … else what open() would give: mkstemp's 0600 would hide refs,
        mode = 0o666 & ~umask()  # ownership records and locks from other users
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
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


_UMASK: int | None = None


def umask() -> int:
    """The process umask, read once without changing it (os.umask sets while it reads,
    which races with other threads creating files); 0o022 where /proc does not say.
    ``set_umask`` changes it and keeps this in step."""
    global _UMASK
    if _UMASK is None:
        _UMASK = 0o022
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith("Umask:"):
                        _UMASK = int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
    return _UMASK


def set_umask(mask: int) -> None:
    global _UMASK
    os.umask(mask)
    _UMASK = mask
