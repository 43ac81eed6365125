"""Small filesystem primitives shared by every writer: atomic, collision-free."""

from __future__ import annotations

import itertools
import os
from pathlib import Path


def atomic_write_text(path: Path, text: str, *, skip_if_same: bool = True,
                      fresh: bool = False) -> bool:
    """Write via a unique temp file + rename: readers see the old or the new text, never half.

    Returns False (and leaves the file alone, mtime included) when it already holds ``text``.
    ``fresh``: the caller just saw nothing there (and expects the directory to exist),
    so there is nothing to compare and no mode to keep (a cold apply of 1,000 models
    writes 3,000 such small files).
    """
    if skip_if_same and not fresh:
        try:
            if path.read_text("utf-8") == text:
                return False
        except (FileNotFoundError, UnicodeDecodeError, IsADirectoryError, NotADirectoryError):
            pass
    mode = None
    if not fresh:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:  # the replaced file's mode (a user's models.toml keeps its own); else what
            mode = os.stat(path).st_mode & 0o7777  # open() gives (umask applied): refs,
        except OSError:  # ownership records and locks stay readable by other users
            pass
    try:
        tmp, fd = create_temp(path.parent, f".{path.name}.")
    except FileNotFoundError:
        if not fresh:
            raise
        path.parent.mkdir(parents=True, exist_ok=True)  # fresh was wrong about it
        tmp, fd = create_temp(path.parent, f".{path.name}.")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        write_all(fd, text.encode("utf-8"))
        os.close(fd)
        fd = -1
        os.replace(tmp, path)
    except BaseException:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return True


def write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (one call may take only part of them)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


_names = itertools.count()


def create_temp(directory: Path, prefix: str, mode: int = 0o666) -> tuple[str, int]:
    """A new file in ``directory`` under a name unique to this process and call, opened
    for writing (``mode`` less the umask, as open() gives). mkstemp draws random names in
    Python, which cost more than writing a small file here."""
    while True:
        tmp = f"{directory}/{prefix}{os.getpid()}.{next(_names)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
        except FileExistsError:  # left by a killed process that had the same pid
            continue


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


# What a download or an unpack of unknown size may never take: the disk is shared (other
# projects, the HF cache, the system), and a full one breaks every writer on it at once.
KEEP_FREE = 1 << 30


def room(path: Path) -> int:
    """Bytes that may still be written under ``path`` while KEEP_FREE stay free (what an
    unprivileged user may use, statvfs's f_bavail); unlimited where it cannot be told."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 1 << 62
    return max(0, st.f_bavail * st.f_frsize - KEEP_FREE)
