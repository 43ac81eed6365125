"""The interface every target implements (``Target``), what it is given
(``TargetContext``) and what it answers (``LinkState``). Targets import this module,
never the package, so the registry naming them by module makes no import cycle.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..lockfile import LockedModel
from ..store import Store


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
