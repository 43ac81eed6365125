"""The model hash: one SRI sha256 over a canonical manifest of a tree.

Definition (also in README.md, so anyone can recompute it):

    entries  = every file, symlink and directory below the root (not the root itself)
    record   = TYPE " " X " " SIZE " " SHA256HEX " " PATH "\\0"
      TYPE   = "f" regular file | "l" symlink | "d" directory
      X      = "1" if a file has any executable bit, else "0" (always "0" for l and d)
      SIZE   = file size in bytes | length of the link target in bytes | 0
      SHA256 = of the file bytes | of the link target bytes | 64 zeros for directories
      PATH   = '/'-separated path relative to the root, UTF-8 bytes
    manifest = "reconcile-tree-v1\\0" + the records sorted by PATH bytes
    hash     = "sha256-" + base64(sha256(manifest))

Because a record needs only (path, type, size, sha256), the hash is computed from a
source's metadata alone (HF tree API, LFS pointers, OCI digests) without downloading
the bytes, and recomputed from disk by `reconcile hash PATH`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ZERO = "0" * 64
_HEADER = b"reconcile-tree-v1\0"


@dataclass(frozen=True)
class Entry:
    """One manifest record; ``sha256`` is lowercase hex."""

    path: str
    type: str = "f"  # f | l | d
    size: int = 0
    sha256: str = ZERO
    executable: bool = False

    def record(self) -> bytes:
        x = "1" if (self.executable and self.type == "f") else "0"
        return f"{self.type} {x} {self.size} {self.sha256} ".encode() + _path_bytes(self.path) + b"\0"


def _path_bytes(path: str) -> bytes:
    return os.fsencode(path)


def with_parent_dirs(entries: Iterable[Entry]) -> list[Entry]:
    """Add a 'd' entry for every directory implied by a file path (listings omit them)."""
    out = {e.path: e for e in entries}
    for e in list(out.values()):
        parts = e.path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            out.setdefault(d, Entry(d, "d"))
    return list(out.values())


def tree_hash(entries: Iterable[Entry]) -> str:
    """SRI hash of the manifest of ``entries`` (parent directories are implied)."""
    h = hashlib.sha256(_HEADER)
    for e in sorted(with_parent_dirs(entries), key=lambda e: _path_bytes(e.path)):
        h.update(e.record())
    return "sha256-" + base64.b64encode(h.digest()).decode()


def sha256_file(path: str | os.PathLike[str]) -> str:
    from .narhash import hash_file  # the one fast hashing loop (page-aligned buffer)

    return hash_file(path).hex()


def scan_tree(root: Path, hasher=sha256_file) -> list[Entry]:
    """Manifest entries of a directory on disk (symlinks recorded, never followed).

    Files are hashed on a thread pool: hashlib releases the GIL, so a tree hashes at
    the OpenSSL limit times the number of cores, not of one.
    """
    from concurrent.futures import ThreadPoolExecutor

    entries: list[Entry] = []
    pending: list[tuple[str, int, bool, str]] = []
    root_s = os.fspath(root)

    def walk(dirpath: str, rel: str) -> None:
        with os.scandir(dirpath) as it:
            for de in it:
                relp = f"{rel}/{de.name}" if rel else de.name
                st = de.stat(follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    target = os.fsencode(os.readlink(de.path))
                    entries.append(Entry(relp, "l", len(target), hashlib.sha256(target).hexdigest()))
                elif stat.S_ISDIR(st.st_mode):
                    entries.append(Entry(relp, "d"))
                    walk(de.path, relp)
                elif stat.S_ISREG(st.st_mode):
                    pending.append((relp, st.st_size, bool(st.st_mode & 0o111), de.path))
                else:
                    raise ValueError(f"{relp}: not a regular file, directory or symlink")

    walk(root_s, "")
    # biggest first, so the pool does not end waiting on one large file
    pending.sort(key=lambda p: -p[1])
    with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:
        digests = pool.map(hasher, [p[3] for p in pending])
        for (relp, size, x, _), digest in zip(pending, digests, strict=True):
            entries.append(Entry(relp, "f", size, digest, x))
    return entries


def hash_path(root: Path) -> str:
    """`reconcile hash PATH`: the model hash of a directory (or of a single file as one entry)."""
    if root.is_file() and not root.is_symlink():
        st = root.stat()
        return tree_hash([Entry(root.name, "f", st.st_size, sha256_file(root), bool(st.st_mode & 0o111))])
    return tree_hash(scan_tree(root))
