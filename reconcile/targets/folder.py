"""A model's files in one folder as links into the store, owned: the shared half of the
targets that show files in a folder (integration.directory, integration.lmstudio).

    <folder>/<file>    hard link to the store object (one inode, no copy);
                       a symlink to it when the folder is on another filesystem
    <folder>/<link>    the model's own symlinks, as locked (inside the model)

What reconcile made is recorded (``ownership``, one record per folder, of the target's
kind): a file it did not make is never overwritten or deleted, only reported as a
conflict by name; prune and an earlier version's unlink remove only files that still
hold what reconcile wrote, then the folders that left empty. Nothing is written through
a path component that is not a real directory (``root_problem``, ``not_a_real_dir``).
"""

from __future__ import annotations

import os
import stat
from abc import abstractmethod
from pathlib import Path
from typing import ClassVar

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

FOLDER = "files"  # one record per folder
DIR = "dir"  # what a record keeps for an empty directory of the model


def not_a_real_dir(base: str, rel: str) -> str | None:
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


class FolderLinks(Target):
    """A model's files as links in one folder, owned: the shared half of every target
    that shows files in a folder (a project directory, LM Studio's models folder). A
    subclass says where (``where``), which files under which names (``files``), and what
    must hold before anything is written there (``root_problem``)."""

    kind: ClassVar[str]  # the ownership records' kind
    tag: ClassVar[str]  # in owner ids: <project>:<key>:<tag>-<place>@<store id>

    @abstractmethod
    def root_problem(self, model: LockedModel, where: Path) -> str | None:
        """Why ``where`` must not be written (a symlink on the way), else None."""

    def files(self, model: LockedModel) -> list[LockedFile]:
        """The locked files as they appear in the folder (path = name there)."""
        return list(model.files)

    def owner(self, model: LockedModel) -> str:
        return self._owner(model, self.where(model))

    def _owner(self, model: LockedModel, where: Path | None) -> str:
        """Per folder and version: a moved folder or a new lock leaves the old one
        unwanted, so its files go."""
        return (f"{self.ctx.project}:{model.key}:{self.tag}-{place_key(str(where))}"
                f"@{model.store_id}")

    def owners(self) -> dict[str, Path]:
        return project_owners(self.ctx.store, self.kind, self.ctx.project, FOLDER)

    def _object(self, f: LockedFile) -> str:
        return self.ctx.store.object_file(f.sha256, f.executable)

    # --- what is there ---------------------------------------------------------------

    def _file_state(self, f: LockedFile, where: Path, own: Ownership, owner: str
                    ) -> tuple[bool, str | None]:
        """(right, conflict) for one path: right when it shows the locked file and this
        owner is recorded where reconcile made it; a conflict names a path reconcile
        did not make and leaves alone."""
        p = f"{where}/{f.path}"
        parent = f.path.rpartition("/")[0]
        if parent and (bad := not_a_real_dir(str(where), parent)):
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
        if problem := self.root_problem(model, where):
            return LinkState(False, [problem])
        if not os.path.isdir(where):
            return LinkState(False)
        own = Ownership(self.ctx.store, where, FOLDER, self.kind)
        owner = self._owner(model, where)
        linked, conflicts = True, []
        for f in self.files(model):
            right, conflict = self._file_state(f, where, own, owner)
            if conflict:
                conflicts.append(conflict)
            elif not right:
                linked = False
        return LinkState(linked, conflicts)

    # --- writing ---------------------------------------------------------------------

    def link(self, model: LockedModel, where: Path) -> list[str]:
        if problem := self.root_problem(model, where):
            raise ReconcileError(problem, hint=self.root_hint)
        owner = self._owner(model, where)
        store = self.ctx.store
        conflicts = []
        with store.lock(f"{self.kind}-{place_key(str(where))}"):
            own = Ownership(store, where, FOLDER, self.kind)
            try:
                os.makedirs(where, exist_ok=True)
                for f in self.files(model):
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
        with self.ctx.store.lock(f"{self.kind}-{place_key(str(where))}"):
            own = Ownership(self.ctx.store, where, FOLDER, self.kind)
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
        """Objects that a folder on another filesystem links to by symlink."""
        return symlinked_objects(self.ctx.store, self.kind, FOLDER)

    root_hint: ClassVar[str] = "remove what stands there"
