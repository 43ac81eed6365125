"""Ownership records: what reconcile created in a place other tools share, and for whom.

Every target keeps one record per folder it writes into (an HF cache repo folder,
ollama's models directory, a project's model directory) under the store's
``state/<kind>/<key of the place>/<folder>.json``. ``owned[rel]`` lists the owners (one
project's model at one version) of a path reconcile created; ``written[rel]`` is what
reconcile wrote there (a link target, a ref's commit, a file's inode). reconcile owns a
path only while it still holds that value: another tool rewriting it makes it theirs.
A path that already held the right value when reconcile came is never taken, and a
path is removed only when its last owner goes and it still holds reconcile's value.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import os
import stat
import threading
from pathlib import Path

from ..fsutil import atomic_write_text
from ..store import Store

TMP_PREFIX = ".reconcile-tmp-"


def ownership_dir(store: Store, root: Path, kind: str) -> Path:
    """Where the records of one place (``root``: a cache, a models directory) live."""
    return store.state / kind / place_key(str(root))


@functools.lru_cache(maxsize=64)
def place_key(root: str) -> str:
    """Records are per place as it resolves (one resolve() per process, not per model)."""
    return hashlib.sha256(os.fsencode(Path(root).resolve())).hexdigest()[:24]


class Ownership:
    """The record of one folder of one place. One record per folder, guarded by the
    store lock the target takes for that folder."""

    def __init__(self, store: Store, root: Path, folder: str, kind: str) -> None:
        self.path = ownership_dir(store, root, kind) / f"{folder}.json"
        self.cache = root
        self.existed = True
        try:
            doc = json.loads(self.path.read_text())
            self.data: dict[str, list[str]] = doc["owned"]
            self.written: dict[str, str] = doc.get("written", {})
        except FileNotFoundError:
            self.data, self.written, self.existed = {}, {}, False
        except (ValueError, KeyError, TypeError):
            self.data, self.written = {}, {}
        self.changed = False

    def holds(self, rel: str, value: str) -> bool:
        """reconcile created ``rel`` and it still holds what reconcile wrote."""
        return rel in self.data and self.written.get(rel, value) == value

    def holder(self, rel: str, value: str, tool: str = "huggingface_hub") -> str:
        if not self.holds(rel, value):
            return f"another tool ({tool}?)"
        return "another project using reconcile"

    def add(self, relpath: str, owner: str) -> None:
        owners = self.data.setdefault(relpath, [])
        if owner not in owners:
            owners.append(owner)
            self.changed = True

    def create(self, rel: str, owner: str, value: str, *, replace: bool = False) -> None:
        """Record that reconcile wrote ``value`` at ``rel`` for ``owner`` (``replace``: the
        previous owners no longer have what they wanted there: a ref moved)."""
        if replace:
            self.data[rel] = []
        self.written[rel] = value
        self.add(rel, owner)
        self.changed = True

    def forget(self, rel: str) -> None:
        if rel in self.data or rel in self.written:
            self.data.pop(rel, None)
            self.written.pop(rel, None)
            self.changed = True

    def release(self, owner: str) -> list[str]:
        """Drop ``owner``; return the paths nobody owns any more."""
        freed = []
        for rel, owners in list(self.data.items()):
            if owner in owners:
                owners.remove(owner)
                self.changed = True
                if not owners:
                    freed.append(rel)
                    del self.data[rel]
        return freed

    def owners(self) -> set[str]:
        return {o for owners in self.data.values() for o in owners}

    def save(self) -> None:
        if not self.changed:
            return
        text = json.dumps({"cache": str(self.cache), "owned": self.data,
                           "written": self.written}, separators=(",", ":"))
        # compact: indent= takes json's pure-Python encoder, 10x slower
        atomic_write_text(self.path, text, fresh=not self.existed)
        self.changed = False
        self.existed = True


def records(store: Store, kind: str, folder: str = "*",
            root: Path | None = None) -> list[tuple[Path, str]]:
    """(place, folder) of every ownership record of ``kind`` in this store (of the one
    place ``root`` only, when given)."""
    out = []
    key = place_key(str(root)) if root is not None else "*"
    for record in sorted(store.state.glob(f"{kind}/{key}/{folder}.json")):
        try:
            root = Path(json.loads(record.read_text())["cache"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append((root, record.stem))
    return out


def project_owners(store: Store, kind: str, project: str, folder: str = "*",
                   root: Path | None = None) -> dict[str, Path]:
    """owner id -> place, for every owner of ``project`` in the records of ``kind``."""
    out: dict[str, Path] = {}
    for place, name in records(store, kind, folder, root):
        own = Ownership(store, place, name, kind)
        out.update({o: place for o in own.owners() if o.startswith(project + ":")})
    return out


def read_ref(path: str | Path) -> str | None:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, UnicodeDecodeError):
        return None


def value(path: str | Path, *, ref: bool = False) -> str | None:
    """What is at a path now, in the form Ownership.written keeps it: a ref's commit, a
    symlink's target, else the file's identity (dev:inode)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    if stat.S_ISLNK(st.st_mode):
        return "link:" + os.readlink(path)
    if ref:
        return read_ref(path)
    return f"inode:{st.st_dev}:{st.st_ino}"


def tmp_name(path: str | Path) -> str:
    """A sibling name unique per process and thread, so concurrent writers never collide."""
    head, name = os.path.split(path)
    return f"{head}/{TMP_PREFIX}{name}.{os.getpid()}.{threading.get_ident()}"


def prune_empty_parents(d: Path, root: Path) -> None:
    """Remove the directories that removing reconcile's files left empty, up to ``root``."""
    while d == root or root in d.parents:
        try:
            os.rmdir(d)
        except OSError:
            return
        d = d.parent


def hard_or_symlink(obj: str | Path, path: str | Path) -> None:
    """One inode with the store where the filesystem allows, else a symlink to it (gc
    keeps an object that such a link needs: ``symlinked_objects``)."""
    try:
        os.link(obj, path)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        os.symlink(obj, path)


def symlinked_objects(store: Store, kind: str, folder: str = "*") -> set[str]:
    """Store objects that a place of ``kind`` links to by symlink (the place is on
    another filesystem than the store) and that still hold reconcile's link."""
    keep: set[str] = set()
    objects = str(store.objects.resolve()) + os.sep
    for where, name in records(store, kind, folder):
        own = Ownership(store, where, name, kind)
        for rel, written in own.written.items():
            if written.startswith("link:") and value(where / rel) == written:
                target = os.path.realpath(where / rel)
                if target.startswith(objects):
                    keep.add(os.path.basename(target))
    return keep
