"""Link store models into the Hugging Face cache, exactly as huggingface_hub lays it out.

    <cache>/models--org--name/blobs/<etag>             hard link to the store object
                                                       (symlink when on another filesystem)
    <cache>/models--org--name/snapshots/<commit>/<p>   relative symlink ../../blobs/<etag>
    <cache>/models--org--name/refs/<ref>               the commit, no trailing newline
    <cache>/models--org--name/trees/<commit>.json      the listing, as snapshot_download writes it

Snapshots never point straight into the store: `hf cache delete` unlinks the first
symlink hop, which must be a repo-local blob, never a store object. Writes are
atomic (temp name + rename).

The cache is shared with huggingface_hub, transformers and other projects, so
reconcile owns only what it created (recorded in the store's state/, see
``ownership.Ownership``): a path that already held the right value stays its maker's, a path
another tool rewrote becomes theirs, and prune removes a path only when no project
needs it any more. Refs follow one rule (``may_write_ref``): reconcile never
overwrites a ref it did not write unless models.toml names that ref.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from ..errors import ReconcileError
from ..fsutil import atomic_write_text
from ..lockfile import LockedModel
from ..store import Store
from .base import LinkState, Target
from .ownership import Ownership, project_owners, prune_empty_parents, read_ref, records
from .ownership import tmp_name as _tmp_name
from .ownership import value as _value

KIND = "hfcache"  # the records' folder under the store's state/

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


def is_linked(cache: Path, model: LockedModel, store: Store, project: str = "") -> bool:
    return link_state(cache, model, store, project).linked


def link_state(cache: Path, model: LockedModel, store: Store, project: str = "") -> LinkState:
    """Cheap check (readlink/stat, never a hash) of what the cache shows of this model."""
    if model.hf is None:
        return LinkState(True)
    rdir = repo_dir(cache, model)
    snap = rdir / "snapshots" / model.hf.commit
    try:
        if not model.hf.partial and not os.path.isfile(rdir / "trees" / f"{model.hf.commit}.json"):
            return LinkState(False)
        if not os.path.isdir(snap):
            return LinkState(False)
        for f in model.files:
            p = os.path.join(snap, f.path)
            if f.type == "f":
                if not os.path.exists(p):  # follows the link: the blob is there
                    return LinkState(False)
                try:
                    right = os.readlink(p) == _blob_target(f.path, f.blob_name)
                except OSError:  # a real file: huggingface_hub without symlinks
                    right = False
                if not right and not _is_foreign_copy(p, f.size):
                    return LinkState(False)
            elif f.type == "l":
                if os.readlink(p) != (f.target or ""):
                    return LinkState(False)
            elif not os.path.isdir(p):
                return LinkState(False)
    except OSError:
        return LinkState(False)
    conflicts = []
    own = None
    for ref in model.hf.refs:
        current = read_ref(rdir / "refs" / ref)
        if current == model.hf.commit:
            continue
        if current is None:
            return LinkState(False)
        own = own or Ownership(store, cache, model.hf.folder, KIND)
        if may_write_ref(own, f"{model.hf.folder}/refs/{ref}", current, model, project):
            return LinkState(False)
        conflicts.append(f"refs/{ref} of {model.hf.repo_id} is {current[:12]}, written by"
                         f" {own.holder(f'{model.hf.folder}/refs/{ref}', current)}; the lock"
                         f" pins {model.hf.commit[:12]}")
    return LinkState(True, conflicts)


def _is_foreign_copy(path: str, size: int) -> bool:
    """A real file or another blob name that huggingface_hub put at a snapshot path
    (HF_HUB_DISABLE_SYMLINKS, an older etag): it holds the content, so it counts."""
    try:
        return os.path.getsize(path) == size
    except OSError:
        return False


def may_write_ref(own: Ownership, rel: str, current: str | None, model: LockedModel,
                  project: str) -> bool:
    """The refs rule: a ref is written when it is absent, when reconcile wrote its current
    value for this project only, or when models.toml names it (``claim``). A ref that
    huggingface_hub or another project wrote is never overwritten otherwise."""
    if current is None or (model.hf is not None and model.hf.claim):
        return True
    if not own.holds(rel, current):
        return False
    return all(o.startswith(project + ":") for o in own.data.get(rel, ()))


def _atomic_symlink(target: str, path: str | Path, fresh: bool = False) -> bool:
    """``path`` → ``target``, replaced in one step. ``fresh`` (nothing was there): symlink()
    creating a name is atomic already, and saves the temp name's create and rename (a
    third of a snapshot's directory operations for a model of small files); False when
    something was made there meanwhile (huggingface_hub, another store's apply): the
    caller judges it as it is now instead of replacing it."""
    if fresh:
        try:
            os.symlink(target, path)
            return True
        except FileExistsError:
            return False
    tmp = _tmp_name(path)
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    os.symlink(target, tmp)
    os.replace(tmp, path)
    return True


def owner_id(model: LockedModel, project: str) -> str:
    """Who holds a path: one project's model (a path goes when no owner is left)."""
    assert model.hf is not None
    return f"{project}:{model.key}:{model.hf.folder}@{model.hf.commit}:{model.store_id}"


def owners_of_project(store: Store, cache: Path, project: str) -> set[str]:
    return set(project_owners(store, KIND, project, root=cache))


def _value_at(cache: Path, rel: str) -> str | None:
    return _value(cache / rel, ref=rel.split("/", 2)[1:2] == ["refs"])


def model_paths(model: LockedModel) -> list[str]:
    """Every cache path (relative to the cache) that shows this model."""
    assert model.hf is not None
    folder, commit = model.hf.folder, model.hf.commit
    out = [f"{folder}/refs/{r}" for r in model.hf.refs]
    if not model.hf.partial:
        out.append(f"{folder}/trees/{commit}.json")
    for f in model.files:
        if f.type == "f":
            out.append(f"{folder}/blobs/{f.blob_name}")
        if f.type != "d":
            out.append(f"{folder}/snapshots/{commit}/{f.path}")
    if "main" not in model.hf.refs:
        out.append(f"{folder}/refs/main")
    return out


def adopt(cache: Path, model: LockedModel, store: Store, project: str) -> None:
    """Register this project as an owner of what reconcile created that shows ``model``,
    although nothing needed writing (another project linked it first). Without this a
    prune in that other project would take the model away from this one."""
    if model.hf is None:
        return
    owner = owner_id(model, project)

    def missing(own: Ownership) -> list[str]:
        return [rel for rel in model_paths(model)
                if rel in own.data and owner not in own.data[rel]
                and (v := _value_at(cache, rel)) is not None and own.holds(rel, v)]

    if not missing(Ownership(store, cache, model.hf.folder, KIND)):
        return
    with store.lock("hfcache-" + model.hf.folder):
        own = Ownership(store, cache, model.hf.folder, KIND)
        for rel in missing(own):
            own.add(rel, owner)
        own.save()


def link(cache: Path, model: LockedModel, store: Store, project: str) -> None:
    """Make the cache show ``model`` (idempotent; safe to run after a crash)."""
    if model.hf is None:
        return
    rdir = repo_dir(cache, model)
    folder, commit = model.hf.folder, model.hf.commit
    snap = rdir / "snapshots" / commit
    owner = owner_id(model, project)
    with store.lock("hfcache-" + folder):
        own = Ownership(store, cache, folder, KIND)
        try:
            new = _make_repo_dirs(rdir, commit, trees=not model.hf.partial)
            if not (cache / "CACHEDIR.TAG").exists():
                _write_cachedir_tag(cache)
            # in a directory made just now nothing is there yet: no lookup per file
            fresh_snap, fresh_blobs = f"snapshots/{commit}" in new, "blobs" in new
            made = {str(snap)}  # a mkdir per file costs a failing syscall per file
            for f in model.files:  # str paths: pathlib costs more than the syscalls here
                rel = f"{folder}/snapshots/{commit}/{f.path}"
                p = f"{snap}/{f.path}"
                parent = os.path.dirname(p)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.add(parent)
                if f.type == "d":
                    os.makedirs(p, exist_ok=True)
                    made.add(p)
                    continue
                if f.type == "l":
                    _ensure_link(p, f.target or "", own, rel, owner, 0, fresh=fresh_snap)
                    continue
                _ensure_blob(f"{rdir}/blobs/{f.blob_name}",
                             store.object_file(f.sha256, f.executable), f.size, own,
                             f"{folder}/blobs/{f.blob_name}", owner, fresh=fresh_blobs)
                _ensure_link(p, _blob_target(f.path, f.blob_name), own, rel, owner, f.size,
                             fresh=fresh_snap)
            if not model.hf.partial:  # huggingface_hub takes it for the whole repo's listing
                _ensure_tree(rdir / "trees" / f"{commit}.json", tree_json(model), own,
                             f"{folder}/trees/{commit}.json", owner)
            for ref in model.hf.refs:  # last: a ref points only at a complete snapshot
                _ensure_ref(rdir / "refs" / ref, model, own, f"{folder}/refs/{ref}", owner,
                            project)
            if "main" not in model.hf.refs:  # so from_pretrained(repo_id) finds it offline
                _ensure_ref(rdir / "refs" / "main", model, own, f"{folder}/refs/main", owner,
                            project, fallback=True)
        except OSError as e:
            raise ReconcileError(
                f"cannot link {model.key} into the HF cache at {cache}: {e.strerror or e}",
                hint="check HF_HUB_CACHE / HF_HOME point to a writable directory",
            ) from None
        finally:
            own.save()


def _make_repo_dirs(rdir: Path, commit: str, trees: bool) -> set[str]:
    """blobs/, refs/, trees/ and snapshots/<commit>/, each with one mkdir (a new repo
    folder never pays a failing call first); returns those this call made."""
    try:
        os.mkdir(rdir)
    except FileNotFoundError:
        rdir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        pass
    made = set()
    for d in ("blobs", "refs", *(["trees"] if trees else []), "snapshots",
              f"snapshots/{commit}"):
        try:
            os.mkdir(f"{rdir}/{d}")
            made.add(d)
        except FileExistsError:
            pass
    return made


def _write_cachedir_tag(cache: Path) -> None:
    atomic_write_text(
        cache / "CACHEDIR.TAG",
        "Signature: 8a477f597d28d172789f06886806bc55\n"
        "# This file is a cache directory tag created by huggingface_hub.\n"
        "# For information about cache directory tags, see:\n"
        "#\thttps://bford.info/cachedir/\n",
    )


def _ensure_link(path: str, target: str, own: Ownership, rel: str, owner: str,
                 size: int, *, fresh: bool = False) -> None:
    """``fresh``: the snapshot directory was made by this apply, nothing is in it."""
    value = "link:" + target
    current = None if fresh else _value(path)
    if current == value:
        if own.holds(rel, value):
            own.add(rel, owner)  # reconcile made it (maybe for another project): share it
        return  # else huggingface_hub made the same link first: it stays theirs
    if current is not None and not own.holds(rel, current):
        own.forget(rel)  # someone else's (a real file, another blob name): leave it
        if size and not _is_foreign_copy(str(path), size):
            raise ReconcileError(
                f"{path} exists and is not what models.lock pins; reconcile did not create it"
                " and will not overwrite it",
                hint="remove that snapshot (e.g. `hf cache delete`) and run apply again")
        return
    if not _atomic_symlink(target, path, fresh=current is None):
        return _ensure_link(path, target, own, rel, owner, size)  # made meanwhile
    own.create(rel, owner, value)


def _ensure_blob(blob: str, obj: str, size: int, own: Ownership, rel: str, owner: str, *,
                 fresh: bool = False) -> None:
    """``fresh``: blobs/ was made by this apply (a blob there is this model's, if any)."""
    current = None if fresh else _value(blob)
    if current is not None and not own.holds(rel, current):
        own.forget(rel)
        have = os.path.getsize(blob) if os.path.exists(blob) else None
        if have != size:
            raise ReconcileError(
                f"{blob} exists with {have if have is not None else 'no readable'} bytes,"
                f" expected {size}; reconcile did not create it and will not overwrite it",
                hint="remove that blob (e.g. `hf cache delete`) and run apply again",
            )
        return  # huggingface_hub downloaded the same content under the same name
    if current is not None and os.path.exists(blob) and os.path.samefile(blob, obj):
        own.add(rel, owner)
        return
    if current is None:  # nothing there: one link() names it atomically
        try:
            os.link(obj, blob)
            own.create(rel, owner, _value(blob) or "")
            return
        except FileExistsError:  # another file of this model with the same content, or
            return _ensure_blob(blob, obj, size, own, rel, owner)  # another tool: as found
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
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
        os.symlink(obj, tmp)  # the store is on another filesystem: gc keeps obj for it
    os.replace(tmp, blob)
    own.create(rel, owner, _value(blob) or "")


def _ensure_tree(path: Path, text: str, own: Ownership, rel: str, owner: str) -> None:
    current = _value(path)
    if current is not None and not own.holds(rel, current):
        own.forget(rel)  # huggingface_hub's listing of the same commit: it stays theirs
        return
    atomic_write_text(path, text, fresh=current is None)
    own.create(rel, owner, _value(path) or "")


def _ensure_ref(path: Path, model: LockedModel, own: Ownership, rel: str, owner: str,
                project: str, *, fallback: bool = False) -> None:
    assert model.hf is not None
    commit = model.hf.commit
    current = _value(path, ref=True)
    if current == commit:
        if own.holds(rel, commit):
            own.add(rel, owner)
        return
    if fallback:  # refs/main for a model pinned elsewhere: only where nobody else has one
        ok = current is None or (own.holds(rel, current) and all(
            o.startswith(f"{project}:{model.key}:") for o in own.data.get(rel, ())))
    else:
        ok = may_write_ref(own, rel, current, model, project)
    if not ok:
        if not own.holds(rel, current or ""):
            own.forget(rel)
        return  # a conflict: plan and status show it
    atomic_write_text(path, commit, fresh=current is None)
    own.create(rel, owner, commit, replace=True)


def unlink(cache: Path, owner: str, store: Store) -> list[Path]:
    """Drop one owner; remove what no owner needs any more and still holds what
    reconcile wrote (a path another tool rewrote since is theirs). A blob that a
    snapshot link reconcile does not remove still points to (huggingface_hub reused
    it for another revision) stays."""
    folder = owner.split(":")[2].split("@")[0]
    removed = []
    with store.lock("hfcache-" + folder):
        own = Ownership(store, cache, folder, KIND)
        written = dict(own.written)
        freed = own.release(owner)
        blobs = [r for r in freed if r.split("/")[1:2] == ["blobs"]]
        in_use: set[str] | None = None
        for rel in sorted(freed, key=lambda r: (r in blobs, -r.count("/"), r)):
            own.forget(rel)
            p = cache / rel
            current = _value_at(cache, rel)
            if current is None or written.get(rel, current) != current:
                continue
            if rel in blobs:
                if in_use is None:  # once, after the links this prune removes are gone
                    in_use = _referenced_blobs(cache / folder)
                if p.name in in_use:
                    continue
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                continue
        own.save()
        for p in removed:
            prune_empty_parents(p.parent, cache / folder)
    return removed


def _referenced_blobs(repo: Path) -> set[str]:
    """Blob names that any snapshot link of this repo folder points to."""
    out = set()
    for dirpath, _dirs, names in os.walk(repo / "snapshots"):
        for name in names:
            try:
                target = os.readlink(os.path.join(dirpath, name))
            except OSError:
                continue
            head, _, blob = target.rpartition("/")
            if head.endswith("blobs"):
                out.add(blob)
    return out


def linked_objects(store: Store) -> set[str]:
    """Objects that HF cache blobs point to by symlink, in every cache this store
    linked into: deleting one would break a cache that huggingface_hub reads."""
    keep: set[str] = set()
    objects = str(store.objects.resolve())
    for cache, folder in records(store, KIND):
        try:
            entries = list(os.scandir(cache / folder / "blobs"))
        except OSError:
            continue
        for de in entries:
            if de.is_symlink():  # resolved: the store's path may be spelled otherwise
                target = os.path.realpath(de.path)
                if target.startswith(objects + os.sep):
                    keep.add(os.path.basename(target))
    return keep


class HFCache(Target):
    """integration.huggingface: the snapshot huggingface_hub and transformers load."""

    name = "huggingface"
    node = ""  # link:KEY, as plans always named it

    def where(self, model: LockedModel) -> Path | None:
        return self.ctx.hf_cache if model.hf is not None else None

    def state(self, model: LockedModel, where: Path) -> LinkState:
        return link_state(where, model, self.ctx.store, self.ctx.project)

    def link(self, model: LockedModel, where: Path) -> list[str]:
        link(where, model, self.ctx.store, self.ctx.project)
        return []  # a ref another tool holds is linked around, and plan says so

    def adopt(self, model: LockedModel, where: Path) -> None:
        adopt(where, model, self.ctx.store, self.ctx.project)

    def owner(self, model: LockedModel) -> str:
        return owner_id(model, self.ctx.project)

    def owners(self) -> dict[str, Path]:
        cache = self.ctx.hf_cache
        return dict.fromkeys(owners_of_project(self.ctx.store, cache, self.ctx.project), cache)

    def unlink(self, owner: str, where: Path) -> list[Path]:
        return unlink(where, owner, self.ctx.store)

    def user_path(self, model: LockedModel, where: Path) -> Path | None:
        return snapshot_dir(where, model) if self.state(model, where).linked else None

    def held_objects(self) -> set[str]:
        return linked_objects(self.ctx.store)

    def describe(self, model: LockedModel, where: Path) -> str:
        return model.hf.repo_id if model.hf else ""

    def conflict_note(self, what: str) -> str:
        return f"{what} (left alone; name the ref in integration.huggingface.refs to take it over)"

    def status(self, model: LockedModel, where: Path) -> dict[str, object]:
        assert model.hf is not None
        return {"hf_revision": model.hf.commit, "hf_refs": list(model.hf.refs),
                "snapshot_path": str(snapshot_dir(where, model))}


TARGET = HFCache
