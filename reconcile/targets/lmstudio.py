"""integration.lmstudio: a model's GGUF files where LM Studio lists them, as links into the
store (the same inode as the HF cache's blob and ollama's).

    <models>/<publisher>/<model>/<file>.gguf

LM Studio lists a GGUF only exactly two folders below its models folder (one directly in
it, or one level down, is silently ignored: lmstudio-ai/lmstudio-js#387,
lmstudio-ai/lmstudio-bug-tracker#406, 0.3.9-0.3.20), "preserving the directory structure
of models downloaded from Hugging Face" (https://lmstudio.ai/docs/advanced/sideload). So
each GGUF of the lock goes there under its own file name (a repo's subfolders are
flattened; two GGUFs of one name are refused), ``<publisher>/<model>`` being models.toml's
``integration.lmstudio`` names, else the HF repo's ``org/name`` from the lock, else
``reconcile/<key>``. Names follow `lms import`'s folder rule (``paths.check_folder_name``).
LM Studio reads hard links and symlinks (`lms import --hard-link/--symbolic-link`); a
running app shows new models after "Refresh" in My Models.

Where the models folder is, as LM Studio's own CLI and SDK find it (nothing was run
against a live LM Studio, a GUI app the project's machines cannot run; read in
lmstudio-ai/lmstudio-js ``findLMStudioHome.ts`` at 7c40eb8 and lmstudio-ai/lms
``modelsFolder.ts`` at 3cc0201, ``importCmd.ts`` at 05bced0):

1. integration.lmstudio.modelsDir, when models.toml gives one;
2. LM Studio's home: ``$LMSTUDIO_HOME``; else the first line of ``~/.lmstudio-home-pointer``
   (the app writes it; since 0.3.6 the home may be on another drive); else
   ``~/.cache/lm-studio`` if it exists (before 0.3.8); else ``~/.lmstudio``. Reading never
   writes the pointer (that is `lms`'s side effect, not ours);
3. the models folder: ``downloadsFolder`` in ``<home>/settings.json`` (the "Models
   Directory" setting), else in the app's older settings file (``$XDG_CONFIG_HOME`` or
   ``~/.config``/LM Studio/settings.json; ``~/Library/Application Support/LM Studio`` on
   macOS), else ``<home>/models``.

Everything else (ownership, conflicts, prune, one inode, symlinks across filesystems) is
``folder.FolderLinks``'s, as for integration.directory: the folder is the user's (models
moved in by hand or `lms import`), and what reconcile did not make is never touched.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from .. import settings
from ..errors import LockError
from ..lockfile import LockedFile, LockedModel
from ..paths import check_folder_name
from .folder import FolderLinks, not_a_real_dir

KIND = "lmstudio"


def lmstudio_home() -> Path:
    """LM Studio's home, found as ``findLMStudioHome`` finds it (never written to)."""
    if explicit := settings.env_value("LMSTUDIO_HOME"):
        return Path(explicit).expanduser().resolve()
    home = Path(os.path.realpath(Path.home()))
    try:
        first = (home / ".lmstudio-home-pointer").read_text(encoding="utf-8").splitlines()
        if first and first[0].strip():
            return Path(first[0].strip())
    except (OSError, UnicodeDecodeError):
        pass
    legacy = home / ".cache" / "lm-studio"
    return legacy if legacy.is_dir() else home / ".lmstudio"


def _downloads_folder(settings_file: Path) -> Path | None:
    """``downloadsFolder`` of an LM Studio settings file, when it is an absolute path."""
    try:
        value = json.loads(settings_file.read_bytes()).get("downloadsFolder")
    except (OSError, ValueError, AttributeError):
        return None
    return Path(value) if isinstance(value, str) and os.path.isabs(value) else None


def _app_settings() -> Path:
    """The LM Studio app's own settings file (older `lms` read the folder there)."""
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Application Support" / "LM Studio" / "settings.json"
    if sys.platform == "win32":
        return Path(settings.env_value("APPDATA") or Path.home()) / "LM Studio" / "settings.json"
    config = settings.env_value("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(config) / "LM Studio" / "settings.json"


def models_dir(configured: str | None) -> Path:
    """integration.lmstudio.modelsDir, else LM Studio's Models Directory setting, else
    ``<home>/models``."""
    if configured:
        return Path(configured)
    home = lmstudio_home()
    return (_downloads_folder(home / "settings.json") or _downloads_folder(_app_settings())
            or home / "models")


class LMStudio(FolderLinks):
    """integration.lmstudio: the GGUFs in LM Studio's My Models."""

    name = "lmstudio"
    node = "lmstudio:"  # link:lmstudio:KEY
    kind = KIND
    tag = "lms"
    root_hint = "move what stands there, or set integration.lmstudio.modelsDir"

    def _decl(self, model: LockedModel) -> object | None:
        return getattr(self.ctx.decls.get(model.key), "lmstudio", None)

    def folder_names(self, model: LockedModel) -> tuple[str, str]:
        """(publisher, model): models.toml's, else the HF repo's, else reconcile/<key>;
        the lock's are untrusted, so checked like models.toml's."""
        d = self._decl(model)
        org, _, repo = model.hf.repo_id.rpartition("/") if model.hf else ("", "", "")
        names = (getattr(d, "publisher", None) or org or "reconcile",
                 getattr(d, "model", None) or repo or model.key)
        for name in names:
            if why := check_folder_name(name):
                raise LockError(f"models.{model.key}: integration.lmstudio: {why}",
                                hint="set integration.lmstudio = { publisher = \"…\","
                                " model = \"…\" }")
        return names

    def where(self, model: LockedModel) -> Path | None:
        d = self._decl(model)
        if d is None:
            return None
        publisher, name = self.folder_names(model)
        return models_dir(getattr(d, "models_dir", None)) / publisher / name

    def files(self, model: LockedModel) -> list[LockedFile]:
        """Every GGUF, under its file name: LM Studio looks two folders deep, no deeper."""
        ggufs = [f for f in model.regular_files() if f.path.lower().endswith(".gguf")]
        names = [f.path.rsplit("/", 1)[-1] for f in ggufs]
        if not ggufs or len(set(names)) < len(names):
            found = ", ".join(f.path for f in ggufs) or "none"
            raise LockError(f"models.{model.key}: integration.lmstudio needs GGUF files with"
                            f" distinct names; the locked files have {found}",
                            hint='narrow the source\'s files, e.g. files = ["*Q4_K_M.gguf"],'
                            " then `reconcile lock`")
        return [replace(f, path=n) for f, n in zip(ggufs, names, strict=True)]

    def root_problem(self, model: LockedModel, where: Path) -> str | None:
        """Only the place models.toml and the lock say, reached through real folders
        below the models folder (that one may be a symlink the user made)."""
        if self.where(model) != where:
            return f"{where} is not models.{model.key}'s LM Studio folder"
        base, rel = where.parent.parent, f"{where.parent.name}/{where.name}"
        if bad := not_a_real_dir(str(base), rel):
            return f"{bad} is not a real directory (a symlink or a file): left alone"
        return None

    def unlink_note(self, note: str, where: Path) -> str:
        return f"{note} from LM Studio ({where})"

    def conflict_note(self, what: str) -> str:
        return f"{what}: left alone; move it away to let reconcile link the locked file"

    def status(self, model: LockedModel, where: Path) -> dict[str, object]:
        return {"lmstudio": str(where)}


TARGET = LMStudio
