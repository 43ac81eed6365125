"""Lock + disk → a Plan: the actions that would converge disk to the lock. Touches nothing.

Like Terraform, a plan is a value: computed with cheap stats and readlinks (never a
hash), printed by the CLI, and executed as-is by apply. Its graph is a networkx DAG

    fetch(object) → assemble(model) → validate(model) → link(model)

with one fetch node per distinct object, so a blob used by three models is fetched
once. The planner knows no concrete source: fetch nodes carry the lock's data only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import targets as _targets
from .lockfile import Lock, LockedFile, LockedModel
from .store import Store


@dataclass(frozen=True)
class Action:
    kind: str  # fetch | assemble | validate | link | unlink
    target: str  # object sha256, model key or owner id
    model: LockedModel | None = None
    file: LockedFile | None = None
    size: int = 0
    note: str = ""
    where: str = ""  # link/unlink: the target's place (the HF cache, a directory …)
    origin: str = ""  # fetch: "team cache" or "source" when a team cache is configured
    via: str = ""  # link/unlink: the target's name (integration.<name>)
    dest: str = ""  # link: where the plan says the model goes (a repo id, a path)

    @property
    def node(self) -> str:
        return f"{self.kind}:{self.target}"

    @property
    def symbol(self) -> str:
        return {"unlink": "-", "link": "~" if self.note == "relink" else "+"}.get(self.kind, "+")


@dataclass
class Plan:
    lock: Lock
    nodes: dict[str, Action] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    converged_models: list[str] = field(default_factory=list)
    # what apply leaves alone because another tool or project holds it: (key, target, note)
    conflicts: list[tuple[str, str, str]] = field(default_factory=list)

    @cached_property
    def graph(self) -> Any:
        """The networkx DAG; built on first use, so a converged apply never imports networkx."""
        import networkx as nx

        g = nx.DiGraph()
        for node, action in self.nodes.items():
            g.add_node(node, action=action)
        g.add_edges_from(self.edges)
        return g

    def actions(self) -> list[Action]:
        if not self.nodes:
            return []
        import networkx as nx

        return [self.nodes[n] for n in nx.lexicographical_topological_sort(self.graph)]

    @property
    def empty(self) -> bool:
        return not self.nodes

    def conflict_notes(self) -> list[tuple[str, str]]:
        """(key, what and what to do) for each conflict: the words plan, apply and status
        all use (the target's ``conflict_note``), so a conflict reads the same wherever
        it is met."""
        return [(key, note) for key, _target, note in self.conflicts]

    def fetch_bytes(self) -> int:
        return sum(a.size for a in self.nodes.values() if a.kind == "fetch")

    def counts(self) -> dict[str, int]:
        """Actions of each kind (no order needed: sorting 6,000 nodes through networkx,
        import included, cost a cold apply 0.12 s twice, for its first progress line)."""
        out: dict[str, int] = {}
        for a in self.nodes.values():
            out[a.kind] = out.get(a.kind, 0) + 1
        return out


def _add(plan: Plan, action: Action, after: list[str] | None = None) -> str:
    plan.nodes.setdefault(action.node, action)
    plan.edges.extend((dep, action.node) for dep in after or ())
    return action.node


def make_plan(
    lock: Lock,
    store: Store,
    cache: Path,
    *,
    project: str,
    needs_validation: Callable[[LockedModel], bool] = lambda m: False,
    prune: bool = False,
    decls: Mapping[str, Any] | None = None,
    origin: Callable[[LockedModel], str] | None = None,
) -> Plan:
    """``origin`` tells where a model's fetches will come from (asked only for models
    with something to fetch); ``decls`` (models.toml's declarations by key) say where
    targets put a model. The planner itself knows no source, no target and no cache."""
    plan = Plan(lock=lock)
    targets = _targets.active(store, cache, project, decls)
    for key, m in lock.models.items():
        last = _store_actions(plan, m, store, needs_validation, origin)
        linking = [_link_action(plan, t, where, m, last) for t, where in _targets.placed(targets, m)]
        if not last and not any(linking):
            plan.converged_models.append(key)
    for t in targets:
        _unlink_actions(plan, t, prune)
    return plan


def _store_actions(plan: Plan, m: LockedModel, store: Store,
                   needs_validation: Callable[[LockedModel], bool],
                   origin: Callable[[LockedModel], str] | None) -> list[str]:
    """Fetch what the store lacks, assemble, validate: the nodes a link waits for."""
    last: list[str] = []
    if not store.has_model(m):
        missing = [f for f in m.regular_files() if not store.has_object(f.sha256)]
        where = origin(m) if origin and missing else ""
        fetches = [_add(plan, Action("fetch", f.sha256, m, f, f.size, f.path, origin=where))
                   for f in missing]
        size = sum(f.size for f in m.regular_files())
        last = [_add(plan, Action("assemble", m.key, m, size=size), fetches)]
    if needs_validation(m):
        last = [_add(plan, Action("validate", m.key, m), last)]
    return last


def _link_action(plan: Plan, t: _targets.Target, where: Path, m: LockedModel,
                 last: list[str]) -> bool:
    """A link node when the model is new in the store or the target does not show it
    (none while a conflict holds a target that waits on conflicts); True if added."""
    state = t.state(m, where)
    plan.conflicts.extend((m.key, t.name, t.conflict_note(c)) for c in state.conflicts)
    if not (last or not state.linked) or (state.conflicts and t.hold_on_conflict):
        return False
    _add(plan, Action("link", f"{t.node}{m.key}", m, note="link" if last else "relink",
                      where=str(where), via=t.name, dest=t.describe(m, where)), last)
    return True


def _unlink_actions(plan: Plan, t: _targets.Target, prune: bool) -> None:
    """What this project linked before and the lock no longer wants: an earlier version
    of a model still locked (a narrowed `files` glob, a new pin) always goes; models
    that left models.toml go with --prune. Only paths no other owner needs are removed."""
    lock = plan.lock
    wanted = {t.owner(m) for m in lock.models.values() if t.where(m) is not None}
    for owner, where in sorted(t.owners().items()):
        key = owner.split(":")[1]
        if owner not in wanted and (prune or key in lock.models):
            note = key if key not in lock.models else f"{key} (earlier version)"
            _add(plan, Action("unlink", owner, note=t.unlink_note(note, where),
                              where=str(where), via=t.name))


def render(plan: Plan) -> str:
    """Terraform-style text: one line per action, then a summary."""
    lines = []
    for a in plan.actions():
        if a.kind == "fetch":
            lines.append(f"  + fetch    {a.file.path if a.file else ''}  ({human(a.size)},"
                         f" sha256:{a.target[:12]}) for {a.model.key if a.model else '?'}"
                         + (f" from {a.origin}" if a.origin else ""))
        elif a.kind == "assemble":
            lines.append(f"  + assemble {a.target}  ({human(a.size)})")
        elif a.kind == "validate":
            lines.append(f"  + validate {a.target}")
        elif a.kind == "link":
            lines.append(f"  {a.symbol} {a.note:<8} {a.target} → {a.dest}")
        elif a.kind == "unlink":
            lines.append(f"  - unlink   {a.note}")
    c = plan.counts()
    notes = [f"  ! {key}: {note}" for key, note in plan.conflict_notes()]
    if not lines:
        return "\n".join([*notes, "No changes. The store and HF cache match models.lock."])
    summary = (f"Plan: {c.get('fetch', 0)} to fetch ({human(plan.fetch_bytes())}),"
               f" {c.get('assemble', 0)} to assemble, {c.get('validate', 0)} to validate,"
               f" {c.get('link', 0)} to link, {c.get('unlink', 0)} to unlink.")
    return "\n".join([*lines, *notes, "", summary])


def human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"
