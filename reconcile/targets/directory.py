"""integration.directory: a model's files in a folder of the project, as links into the store.

    <project>/<path>/<file>    hard link to the store object (one inode, no copy);
                               a symlink to it when the folder is on another filesystem
    <project>/<path>/<link>    the model's own symlinks, as locked (inside the model)

``path`` is relative to models.toml and stays inside the project (config refuses an
absolute path or ``..``); reconcile writes only below real directories, never through a
symlink on the way (a symlink committed next to models.toml must not send the model's
files elsewhere). What reconcile made is recorded (``ownership``, kind ``directory``):
a file it did not make is never overwritten or deleted, only reported as a conflict by
name; prune and an earlier version's unlink remove only files that still hold what
reconcile wrote, then the folders that left empty.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ..errors import ReconcileError
from ..lockfile import LockedFile, LockedModel
from .base import LinkState, Target
from .ownership import (
    Ownership,
    hard_or_symlink,
    place_key,
    project_owners,
    prune_empty_parents,
    symlinked_objects,
    tmp_name,
    value,
)

KIND = "directory"
FOLDER = "files"  # one record per directory
DIR = "dir"  # what a record keeps for an empty directory of the model


def _not_a_real_dir(base: str, rel: str) -> str | None:
    """The first component of ``rel`` below ``base`` that exists and is not a real
    directory (a symlink, a file), else None."""
    path = base
    for part in rel.split("/"):
        path = f"{path}/{part}"
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st.st_mode):
            return path
    return None


class Directory(Target):
    """integration.directory: the folder `reconcile path` gives, loadable by any tool."""

    name = "directory"
    node = "directory:"  # link:directory:KEY
    gives_path = True

    def where(self, model: LockedModel) -> Path | None:
        decl = self.ctx.decls.get(model.key)
        d = getattr(decl, "directory", None)
        return Path(d.path) if d is not None else None

    def owner(self, model: LockedModel) -> str:
        return self._owner(model, self.where(model))

    def _owner(self, model: LockedModel, where: Path | None) -> str:
        """Per folder and version: a moved folder or a new lock leaves the old one
        unwanted, so its files go."""
        return f"{self.ctx.project}:{model.key}:dir-{place_key(str(where))}@{model.store_id}"

    def owners(self) -> dict[str, Path]:
        return project_owners(self.ctx.store, KIND, self.ctx.project, FOLDER)

    def _object(self, f: LockedFile) -> str:
        return self.ctx.store.object_file(f.sha256, f.executable)

    def _root_problem(self, model: LockedModel, where: Path) -> str | None:
        """The directory itself must be reached through real directories only."""
        d = getattr(self.ctx.decls.get(model.key), "directory", None)
        if d is None or Path(d.path) != where:  # only where models.toml says
            return f"{where} is not models.{model.key}'s integration.directory"
        base = str(where)[: -len(d.rel)].rstrip("/") or "/"
        if bad := _not_a_real_dir(base, d.rel):
            return (f"{bad} is not a real directory (a symlink or a file): reconcile writes"
                    f" models.{model.key}'s files only into real directories of the project")
        return None

    # --- what is there ---------------------------------------------------------------

    def _file_state(self, f: LockedFile, where: Path, own: Ownership, owner: str
                    ) -> tuple[bool, str | None]:
        """(right, conflict) for one path: right when it shows the locked file and this
        owner is recorded where reconcile made it; a conflict names a path reconcile
        did not make and leaves alone."""
        p = f"{where}/{f.path}"
        parent = f.path.rpartition("/")[0]
        if parent and (bad := _not_a_real_dir(str(where), parent)):
            return False, f"{bad} is in the way of {f.path} and reconcile did not create it"
        current = value(p)
        if current is None:
            return False, None
        seen = DIR if f.type == "d" and os.path.isdir(p) else current
        if self._shows(f, p, current):
            return not own.holds(f.path, seen) or owner in own.data[f.path], None
        if own.holds(f.path, seen):
            return False, None  # an earlier version's file: apply replaces it
        return False, f"{p} exists and reconcile did not create it"

    def _shows(self, f: LockedFile, p: str, current: str) -> bool:
        if f.type == "d":
            return os.path.isdir(p) and not os.path.islink(p)
        if f.type == "l":
            return current == "link:" + (f.target or "")
        try:
            return os.path.samefile(p, self._object(f))
        except OSError:
            return False

    def state(self, model: LockedModel, where: Path) -> LinkState:
        if problem := self._root_problem(model, where):
            return LinkState(False, [problem])
        if not os.path.isdir(where):
            return LinkState(False)
        own = Ownership(self.ctx.store, where, FOLDER, KIND)
        owner = self._owner(model, where)
        linked, conflicts = True, []
        for f in model.files:
            right, conflict = self._file_state(f, where, own, owner)
            if conflict:
                conflicts.append(conflict)
            elif not right:
                linked = False
        return LinkState(linked, conflicts)

    def user_path(self, model: LockedModel, where: Path) -> Path | None:
        state = self.state(model, where)
        return where if state.linked and not state.conflicts else None

    # --- writing ---------------------------------------------------------------------

    def link(self, model: LockedModel, where: Path) -> list[str]:
        if problem := self._root_problem(model, where):
            raise ReconcileError(problem, hint="point integration.directory.path at a folder"
                                 " of the project, or remove what stands there")
        owner = self._owner(model, where)
        store = self.ctx.store
        conflicts = []
        with store.lock("directory-" + place_key(str(where))):
            own = Ownership(store, where, FOLDER, KIND)
            try:
                os.makedirs(where, exist_ok=True)
                for f in model.files:
                    if conflict := self._ensure(f, where, own, owner):
                        conflicts.append(conflict)
            except OSError as e:
                raise ReconcileError(f"cannot link {model.key} into {where}: {e.strerror or e}",
                                     hint="check that the folder is writable") from None
            finally:
                own.save()
        return conflicts

    def _ensure(self, f: LockedFile, where: Path, own: Ownership, owner: str) -> str | None:
        """Make one path show the locked file; a conflict (left alone) is returned."""
        right, conflict = self._file_state(f, where, own, owner)
        if conflict or right:
            if conflict:
                own.forget(f.path)  # another tool's now: not reconcile's to remove
            return conflict
        p = f"{where}/{f.path}"
        current = value(p)
        if current is not None and self._shows(f, p, current):
            own.add(f.path, owner)  # reconcile made it, for another owner: share it
            return None
        os.makedirs(os.path.dirname(p), exist_ok=True)
        if f.type == "d":
            if current is not None:
                os.unlink(p)  # an earlier version's file of reconcile's (_file_state)
            os.mkdir(p)
            own.create(f.path, owner, DIR, replace=True)
            return None
        tmp = tmp_name(p)
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if f.type == "l":
            os.symlink(f.target or "", tmp)
        else:
            hard_or_symlink(self._object(f), tmp)
        os.replace(tmp, p)  # over an earlier version's file reconcile made, or nothing
        own.create(f.path, owner, value(p) or "", replace=True)
        return None

    def unlink(self, owner: str, where: Path) -> list[Path]:
        removed: list[Path] = []
        with self.ctx.store.lock("directory-" + place_key(str(where))):
            own = Ownership(self.ctx.store, where, FOLDER, KIND)
            written = dict(own.written)
            for rel in sorted(own.release(owner), key=lambda r: (-r.count("/"), r)):
                own.forget(rel)
                p = where / rel
                try:
                    if written.get(rel) == DIR:
                        os.rmdir(p)  # only while empty
                    elif value(p) == written.get(rel):  # still what reconcile wrote
                        p.unlink()
                    else:
                        continue
                except OSError:
                    continue
                removed.append(p)
            own.save()
        for p in removed:
            prune_empty_parents(p.parent, where)
        return removed

    def held_objects(self) -> set[str]:
        """Objects that a directory on another filesystem links to by symlink."""
        return symlinked_objects(self.ctx.store, KIND, FOLDER)

    # --- words -----------------------------------------------------------------------

    def unlink_note(self, note: str, where: Path) -> str:
        return f"{note} from {where}"

    def conflict_note(self, what: str) -> str:
        return f"{what}: left alone; move it away to let reconcile link the locked file"

    def status(self, model: LockedModel, where: Path) -> dict[str, object]:
        return {"directory": str(where)}


TARGET = Directory
