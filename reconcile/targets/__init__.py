"""Targets: the places a model is shown once it is in the store, named after models.toml's
``integration.*`` tables (the HF cache, ollama's models directory, a project directory).

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
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..lockfile import LockedModel
from ..store import Store

# The one registry: models.toml's integration.<name> -> the module whose TARGET
# implements it. Plans list each model's targets in this order.
TARGETS: dict[str, str] = {
    "huggingface": "reconcile.targets.hf_cache",
    "ollama": "reconcile.targets.ollama",
    "directory": "reconcile.targets.directory",
}


@dataclass(frozen=True)
class TargetContext:
    """What a target needs besides the lock: the store (objects, records, locks), the HF
    cache, this project's id (owners are per project) and models.toml's declarations
    (``config.ModelDecl`` by key: where a model goes; empty when no manifest is read)."""

    store: Store
    hf_cache: Path
    project: str
    decls: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class LinkState:
    """How far a target shows a model: ``linked`` when nothing is left for apply to write;
    ``conflicts`` are what another tool or project holds there, left alone (said by
    plan, apply and status)."""

    linked: bool
    conflicts: list[str] = field(default_factory=list)


class Target(ABC):
    """One place models are shown; ``name`` is its integration.<name> in models.toml."""

    name: ClassVar[str]
    node: ClassVar[str]  # plan nodes are link:<node><key> ("" for the HF cache)
    # a conflict there leaves the whole model alone (no link action) and apply says so
    hold_on_conflict: ClassVar[bool] = False
    # declared for a model, its place is what `reconcile path` gives before the source's
    # own default (a project directory the user asked for)
    gives_path: ClassVar[bool] = False

    def __init__(self, ctx: TargetContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def where(self, model: LockedModel) -> Path | None:
        """The place this target shows ``model`` in, None when it does not want it."""

    @abstractmethod
    def state(self, model: LockedModel, where: Path) -> LinkState:
        """Cheap (stat, readlink, small reads; never a hash of a model file)."""

    @abstractmethod
    def link(self, model: LockedModel, where: Path) -> list[str]:
        """Show ``model`` at ``where`` (idempotent); returns conflicts left alone."""

    @abstractmethod
    def owner(self, model: LockedModel) -> str:
        """This project's owner id for ``model`` as locked: ``<project>:<key>:…``."""

    @abstractmethod
    def owners(self) -> dict[str, Path]:
        """This project's owner ids here, and where each is (what prune may release)."""

    @abstractmethod
    def unlink(self, owner: str, where: Path) -> list[Path]:
        """Drop ``owner``; remove what no owner needs and still holds reconcile's value."""

    def adopt(self, model: LockedModel, where: Path) -> None:  # noqa: B027 - optional
        """Register this project as an owner of what another project linked already."""

    def user_path(self, model: LockedModel, where: Path) -> Path | None:
        """The path handed to a user for ``model`` here (None: this target gives none)."""
        return None

    def held_objects(self) -> set[str]:
        """Store objects that links here point to by symlink (gc must keep them)."""
        return set()

    def describe(self, model: LockedModel, where: Path) -> str:
        """Where a link line of the plan says the model goes."""
        return str(where)

    def unlink_note(self, note: str, where: Path) -> str:
        return note

    def conflict_note(self, what: str) -> str:
        """A conflict, said to be left alone, with how to let reconcile take it over."""
        return f"{what}: left alone"

    def status(self, model: LockedModel, where: Path) -> dict[str, Any]:
        """Fields `status --json` shows for a model linked here."""
        return {}


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
