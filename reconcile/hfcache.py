"""Link store models into the Hugging Face cache, exactly as huggingface_hub lays it out.

    <cache>/models--org--name/blobs/<etag>             hard link to the store object
                                                       (symlink when on another filesystem)
    <cache>/models--org--name/snapshots/<commit>/<p>   relative symlink ../../blobs/<etag>
    <cache>/models--org--name/refs/<ref>               the commit, no trailing newline
    <cache>/models--org--name/trees/<commit>.json      the listing, as snapshot_download writes it

Snapshots never point straight into the store: `hf cache delete` unlinks the first
symlink hop, which must be a repo-local blob, never a store object. Writes are
atomic (temp name + rename). What reconcile created is recorded in the store's
state/, and only that is ever removed; files of huggingface_hub's own are left be.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import threading
from pathlib import Path

from .errors import ReconcileError
from .fsutil import atomic_write_text
from .lockfile import LockedModel
from .store import Store

_PREFIX = ".reconcile-tmp-"


def repo_dir(cache: Path, model: LockedModel) -> Path:
    assert model.hf is not None
    return cache / model.hf.folder


def mk_cache_name(org: str | None, model: str, repo_type: str = "model") -> str:
    """The seed's mkCacheName: models--{org}--{model} (no org: models--{model})."""
    return "--".join([f"{repo_type}s", *([org] if org else []), model])


def snapshot_dir(cache: Path, model: LockedModel) -> Path:
    assert model.hf is not None
    return repo_dir(cache, model) / "snapshots" / model.hf.commit


def _blob_target(model_file_path: str, blob: str) -> str:
    depth = model_file_path.count("/")
    return "../" * (depth + 2) + f"blobs/{blob}"


def tree_json(model: LockedModel) -> str:
    """trees/<commit>.json, byte-identical to huggingface_hub's write_tree_cache."""
    files = {}
    for f in model.regular_files():
        info: dict[str, object] = {"size": f.size, "blob_id": f.git_oid or f.blob_name}
        if f.lfs or not f.git_oid:
            info["lfs_sha256"] = f.sha256
            info["lfs_size"] = f.size
        files[f.path] = info
    data = {"format_version": 1, "files": {p: files[p] for p in sorted(files)}}
    return json.dumps(data, indent=1)


def is_linked(cache: Path, model: LockedModel, store: Store) -> bool:
    """Cheap check (readlink/stat, never a hash) that the cache shows this model fully."""
    if model.hf is None:
        return True
    rdir = repo_dir(cache, model)
    snap = rdir / "snapshots" / model.hf.commit
    try:
        for ref in model.hf.refs:
            with open(rdir / "refs" / ref, encoding="utf-8") as fh:
                if fh.read() != model.hf.commit:
                    return False
        if not os.path.isfile(rdir / "trees" / f"{model.hf.commit}.json"):
            return False
        if not os.path.isdir(snap):
            return False
        for f in model.files:
            p = os.path.join(snap, f.path)
            if f.type == "f":
                if os.readlink(p) != _blob_target(f.path, f.blob_name):
                    return False
                if not os.path.exists(p):  # follows the link: the blob is there
                    return False
            elif f.type == "l":
                if os.readlink(p) != (f.target or ""):
                    return False
            elif not os.path.isdir(p):
                return False
    except OSError:
        return False
    return True


def _tmp_name(path: Path) -> Path:
    """A sibling name unique per process and thread, so concurrent writers never collide."""
    return path.with_name(f"{_PREFIX}{path.name}.{os.getpid()}.{threading.get_ident()}")


def _atomic_symlink(target: str, path: Path) -> None:
    tmp = _tmp_name(path)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, path)


def _ownership_dir(store: Store, cache: Path) -> Path:
    return store.state / "hfcache" / hashlib.sha256(os.fsencode(cache.resolve())).hexdigest()[:24]


class Ownership:
    """What reconcile created in one repo folder of an HF cache; prune removes only that.

    One record per repo folder, guarded by that folder's lock, so links of different
    repos never race on the same file.
    """

    def __init__(self, store: Store, cache: Path, folder: str) -> None:
        self.path = _ownership_dir(store, cache) / f"{folder}.json"
        self.cache = cache
        try:
            self.data: dict[str, list[str]] = json.loads(self.path.read_text())["owned"]
        except (FileNotFoundError, ValueError, KeyError):
            self.data = {}

    def add(self, relpath: str, owner: str) -> None:
        owners = self.data.setdefault(relpath, [])
        if owner not in owners:
            owners.append(owner)

    def release(self, owner: str) -> list[str]:
        """Drop ``owner``; return the paths nobody owns any more."""
        freed = []
        for rel, owners in list(self.data.items()):
            if owner in owners:
                owners.remove(owner)
                if not owners:
                    freed.append(rel)
                    del self.data[rel]
        return freed

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps({"cache": str(self.cache), "owned": self.data},
                                                indent=1))


def owner_id(model: LockedModel, project: str) -> str:
    """Who holds a path: one project's model (a path goes when no owner is left)."""
    assert model.hf is not None
    return f"{project}:{model.key}:{model.hf.folder}@{model.hf.commit}:{model.store_id}"


def owners_of_project(store: Store, cache: Path, project: str) -> set[str]:
    out: set[str] = set()
    d = _ownership_dir(store, cache)
    for record in d.glob("*.json") if d.is_dir() else ():
        own = Ownership(store, cache, record.stem)
        out |= {o for owners in own.data.values() for o in owners if o.startswith(project + ":")}
    return out


def link(cache: Path, model: LockedModel, store: Store, project: str) -> None:
    """Make the cache show ``model`` (idempotent; safe to run after a crash)."""
    if model.hf is None:
        return
    rdir = repo_dir(cache, model)
    snap = rdir / "snapshots" / model.hf.commit
    owner = owner_id(model, project)
    with store.lock("hfcache-" + model.hf.folder):
        own = Ownership(store, cache, model.hf.folder)
        try:
            (rdir / "blobs").mkdir(parents=True, exist_ok=True)
            snap.mkdir(parents=True, exist_ok=True)
            if not (cache / "CACHEDIR.TAG").exists():
                _write_cachedir_tag(cache)
            for f in model.files:
                rel = f"{model.hf.folder}/snapshots/{model.hf.commit}/{f.path}"
                p = snap / f.path
                p.parent.mkdir(parents=True, exist_ok=True)
                if f.type == "d":
                    p.mkdir(exist_ok=True)
                    continue
                if f.type == "l":
                    _ensure_link(p, f.target or "", own, rel, owner)
                    continue
                blob = rdir / "blobs" / f.blob_name
                _ensure_blob(blob, store.object_path(f.sha256, f.executable), f.size, own,
                             f"{model.hf.folder}/blobs/{f.blob_name}", owner)
                _ensure_link(p, _blob_target(f.path, f.blob_name), own, rel, owner)
            tree = rdir / "trees" / f"{model.hf.commit}.json"
            atomic_write_text(tree, tree_json(model))
            own.add(f"{model.hf.folder}/trees/{model.hf.commit}.json", owner)
            for ref in model.hf.refs:  # last: a ref points only at a complete snapshot
                atomic_write_text(rdir / "refs" / ref, model.hf.commit)
                own.add(f"{model.hf.folder}/refs/{ref}", owner)
        except OSError as e:
            raise ReconcileError(
                f"cannot link {model.key} into the HF cache at {cache}: {e.strerror or e}",
                hint="check HF_HUB_CACHE / HF_HOME point to a writable directory",
            ) from None
        finally:
            own.save()


def _write_cachedir_tag(cache: Path) -> None:
    atomic_write_text(
        cache / "CACHEDIR.TAG",
        "Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by huggingface_hub.\n"
        "# For information about cache directory tags, see:\n"
        "#\thttps://bford.info/cachedir/\n",
    )


def _ensure_link(path: Path, target: str, own: Ownership, rel: str, owner: str) -> None:
    try:
        current = os.readlink(path)
    except FileNotFoundError:
        current = None
    except OSError as e:
        if e.errno != errno.EINVAL:
            raise
        # a real file (HF_HUB_DISABLE_SYMLINKS) that huggingface_hub put there: leave it
        return
    if current != target:
        if current is not None and rel not in own.data:
            # huggingface_hub's own link to another blob name; both name the content
            return
        _atomic_symlink(target, path)
    own.add(rel, owner)


def _ensure_blob(blob: Path, obj: Path, size: int, own: Ownership, rel: str, owner: str) -> None:
    try:
        st = os.stat(blob)
    except FileNotFoundError:
        st = None
    if st is not None:
        if os.path.samefile(blob, obj):
            own.add(rel, owner)
            return
        if rel not in own.data:
            if st.st_size != size:
                raise ReconcileError(
                    f"{blob} exists with {st.st_size} bytes, expected {size}; reconcile did not"
                    " create it and will not overwrite it",
                    hint="remove that blob (e.g. `hf cache delete`) and run apply again",
                )
            return  # huggingface_hub downloaded the same content under the same name
    tmp = _tmp_name(blob)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    try:
        os.link(obj, tmp)
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
            raise
        os.symlink(obj, tmp)
    os.replace(tmp, blob)
    own.add(rel, owner)


def unlink(cache: Path, owner: str, store: Store) -> list[Path]:
    """Drop one owner; remove what no owner needs any more and reconcile created."""
    folder = owner.split(":")[2].split("@")[0]
    removed = []
    with store.lock("hfcache-" + folder):
        own = Ownership(store, cache, folder)
        for rel in sorted(own.release(owner), key=lambda r: (-r.count("/"), r)):
            p = cache / rel
            try:
                if p.is_symlink() or p.is_file():
                    p.unlink()
                    removed.append(p)
            except OSError:
                continue
        own.save()
        _prune_empty_dirs(cache / folder)
    return removed


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for dirpath, _dirs, _files in os.walk(root, topdown=False):
        try:
            os.rmdir(dirpath)
        except OSError:
            pass
