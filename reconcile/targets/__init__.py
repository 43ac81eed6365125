"""Targets: the places a model is shown once it is in the store, named after models.toml's
``integration.*`` tables (the HF cache, ollama's models directory, a project directory,
LM Studio's models folder).

Like sources, a target is one module beside this one and one line in ``TARGETS``; the
planner, the executor and status, path, prune and gc loop over the registered targets
and name none. A target answers, for a locked model: whether it wants it and where
(``where``), how far that place shows it (``state``: linked, and the conflicts it
leaves alone), and it links, unlinks one owner and lists the owners a project has
there. Every target keeps ownership records (``ownership``) so it never deletes or
overwrites a file another tool or project made.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..lockfile import LockedModel
from ..store import Store
from .base import LinkState, Target, TargetContext

# The one registry: models.toml's integration.<name> -> the module whose TARGET
# implements it. Plans list each model's targets in this order.
TARGETS: dict[str, str] = {
    "huggingface": "reconcile.targets.hf_cache",
    "ollama": "reconcile.targets.ollama",
    "directory": "reconcile.targets.directory",
    "lmstudio": "reconcile.targets.lmstudio",
}


def active(store: Store, hf_cache: Path, project: str,
           decls: Mapping[str, Any] | None = None) -> list[Target]:
    """Every registered target, in registry order, for one project."""
    ctx = TargetContext(store, hf_cache, project, decls or {})
    return [importlib.import_module(module).TARGET(ctx) for module in TARGETS.values()]


def placed(targets: list[Target], model: LockedModel) -> list[tuple[Target, Path]]:
    """The targets that want ``model``, each with its place."""
    return [(t, where) for t in targets if (where := t.where(model)) is not None]


def user_path(targets: list[Target], model: LockedModel, default: str) -> Path | None:
    """The path a user is given for ``model``: a place declared for it that gives paths
    (a project directory), else that of ``default`` (the source's ``path_target``), when
    it shows the model; None: the store tree."""
    chosen = [(t, w) for t, w in placed(targets, model) if t.gives_path]
    chosen += [(t, w) for t, w in placed(targets, model) if t.name == default]
    for t, where in chosen:
        if (path := t.user_path(model, where)) is not None:
            return path
    return None


__all__ = ["TARGETS", "LinkState", "Target", "TargetContext", "active", "placed", "user_path"]
