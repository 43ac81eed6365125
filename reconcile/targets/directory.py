"""integration.directory: a model's files in a folder of the project, as links into the store.

    <project>/<path>/<file>    hard link to the store object (one inode, no copy);
                               a symlink to it when the folder is on another filesystem
    <project>/<path>/<link>    the model's own symlinks, as locked (inside the model)

The linking and ownership are ``folder.FolderLinks``'s; this module says where.
``path`` is relative to models.toml and stays inside the project (config refuses an
absolute path or ``..``); reconcile writes only below real directories, never through a
symlink on the way (a symlink committed next to models.toml must not send the model's
files elsewhere). What reconcile made is recorded (``ownership``, kind ``directory``):
a file it did not make is never overwritten or deleted, only reported as a conflict by
name; prune and an earlier version's unlink remove only files that still hold what
reconcile wrote, then the folders that left empty.
"""

from __future__ import annotations

from pathlib import Path

from ..lockfile import LockedModel
from .folder import FolderLinks, not_a_real_dir

KIND = "directory"


class Directory(FolderLinks):
    """integration.directory: the folder `reconcile path` gives, loadable by any tool."""

    name = "directory"
    node = "directory:"  # link:directory:KEY
    gives_path = True
    kind = KIND
    tag = "dir"
    root_hint = "point integration.directory.path at a folder of the project, or remove" \
        " what stands there"

    def where(self, model: LockedModel) -> Path | None:
        decl = self.ctx.decls.get(model.key)
        d = getattr(decl, "directory", None)
        return Path(d.path) if d is not None else None

    def root_problem(self, model: LockedModel, where: Path) -> str | None:
        """The directory itself must be reached through real directories only."""
        d = getattr(self.ctx.decls.get(model.key), "directory", None)
        if d is None or Path(d.path) != where:  # only where models.toml says
            return f"{where} is not models.{model.key}'s integration.directory"
        base = str(where)[: -len(d.rel)].rstrip("/") or "/"
        if bad := not_a_real_dir(base, d.rel):
            return (f"{bad} is not a real directory (a symlink or a file): reconcile writes"
                    f" models.{model.key}'s files only into real directories of the project")
        return None

    def user_path(self, model: LockedModel, where: Path) -> Path | None:
        state = self.state(model, where)
        return where if state.linked and not state.conflicts else None

    # --- words -----------------------------------------------------------------------

    def unlink_note(self, note: str, where: Path) -> str:
        return f"{note} from {where}"

    def conflict_note(self, what: str) -> str:
        return f"{what}: left alone; move it away to let reconcile link the locked file"

    def status(self, model: LockedModel, where: Path) -> dict[str, object]:
        return {"directory": str(where)}


TARGET = Directory
