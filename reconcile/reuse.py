"""Bytes this machine already holds: a locked file's object taken from another tool's
copy instead of downloaded again.

    <HF cache>/models--org--name/blobs/<etag>             huggingface_hub, transformers,
    <HF cache>/models--org--name/snapshots/<commit>/<p>   an older reconcile
    <ollama models>/blobs/sha256-<hex>                    `ollama pull`
    <peer store>/objects/sha256/<hex>                     RECONCILE_PEER_STORES

None of these is trusted: a place only says where to look. The bytes are copied into
the store's tmp/ and hashed on the way (``Store.take_copy``), and a copy whose sha256
is not the lock's is dropped, so apply fetches that file from its source. The lock
entry itself must still be vouched for by its source (provenance) before anything is
taken: another tool's cache gives bytes, never the right to install them.

The files stay their makers': opened read-only, never hard-linked into the store (an
object is chmod-ed read-only and outlives the cache's file: sharing the inode would
change huggingface_hub's file, and let its next in-place write change a store object),
never renamed, touched or deleted. A reflink (copy-on-write clone) is used where the
filesystem has one: a separate inode, as safe as a copy, with no bytes duplicated.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .lockfile import LockedFile, LockedModel
from .store import Store

HF_CACHE = "the HF cache"
OLLAMA = "ollama's models directory"


@dataclass(frozen=True)
class Elsewhere:
    """The places on this machine apply may copy a locked file from, in the order it
    tries them: peer stores (objects, by sha256), the HF cache (by the lock's blob name,
    then the snapshot at the locked commit), ollama's models directories (by sha256)."""

    hf_cache: Path | None = None
    ollama_dirs: tuple[Path, ...] = ()
    peers: tuple[Path, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.hf_cache or self.ollama_dirs or self.peers)

    def candidates(self, m: LockedModel, f: LockedFile) -> Iterator[tuple[str, str]]:
        """(place, path) that may hold ``f``'s bytes. Every part of a path comes from
        checked lock fields (repo folder, hex blob names, a relative path)."""
        from .modes import store_name

        for peer in self.peers:
            yield store_name(peer), Store(peer).object_file(f.sha256)
        if self.hf_cache is not None and m.hf is not None:
            repo = f"{self.hf_cache}/{m.hf.folder}"
            for name in dict.fromkeys((f.blob_name, f.sha256)):
                yield HF_CACHE, f"{repo}/blobs/{name}"
            # real files where symlinks are off (HF_HUB_DISABLE_SYMLINKS), or a link to a
            # blob named otherwise (an older etag of the same content)
            yield HF_CACHE, f"{repo}/snapshots/{m.hf.commit}/{f.path}"
        for d in self.ollama_dirs:
            yield OLLAMA, f"{d}/blobs/sha256-{f.sha256}"

    def where(self, m: LockedModel, f: LockedFile) -> str:
        """The place a fetch of ``f`` will likely be served from, for `plan`: the first
        holding a regular file of the locked size (a stat, never a hash; apply hashes)."""
        for place, path in self.candidates(m, f):
            if _holds(path, f.size):
                return place
        return ""

    def take(self, store: Store, m: LockedModel, f: LockedFile) -> str:
        """Put ``f``'s object into the store from the first place whose bytes hash to
        the lock's sha256; returns that place, "" when none has it whole."""
        for place, path in self.candidates(m, f):
            if store.take_copy(path, f.sha256, f.executable, size=f.size):
                return place
        return ""


def _holds(path: str, size: int) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size == size


def existing_dirs(dirs: list[Path]) -> tuple[Path, ...]:
    """The ollama models directories that have a blobs/ (one stat each, once per apply,
    rather than a failing stat per file for a directory that is not there)."""
    return tuple(dict.fromkeys(d for d in dirs if (d / "blobs").is_dir()))
