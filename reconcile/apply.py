"""Execute a Plan: run its DAG with bounded parallelism. Only executes; decides nothing.

A node runs when everything before it succeeded; a failed node skips what depends
on it, and the others go on (one bad model does not stop the rest). Every step is
idempotent, so a second apply after a crash just finishes the work.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import targets as _targets
from .errors import AuthRequired, ReconcileError
from .plan import Action, Plan
from .store import Store

GROUP_MIN = 16  # a model with more small files than this shows them as one task …
GROUP_ALL = 200  # … and every model does, in a plan fetching more small files than this
LOCAL_KINDS = frozenset({"assemble", "link", "unlink"})  # filesystem work: run in order


@dataclass
class _Group:
    """One progress task for a model's many small files."""

    label: str
    left: int  # files not fetched yet: the task finishes at 0
    total: int  # bytes
    advance: Callable[[int], None] | None = None


@dataclass
class ApplyReport:
    done: dict[str, int] = field(default_factory=dict)
    bytes_fetched: int = 0
    failures: list[tuple[Action, BaseException]] = field(default_factory=list)
    skipped: list[Action] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    cache_hits: int = 0  # objects the team cache gave
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def ok(self) -> bool:
        return not self.failures

    def count(self, kind: str, nbytes: int = 0) -> None:
        with self._lock:  # nodes finish on worker threads
            self.done[kind] = self.done.get(kind, 0) + 1
            self.bytes_fetched += nbytes


class ProgressSink:
    """No-op progress; the CLI passes one of ``ui``'s (bars, lines or NDJSON)."""

    def begin(self, plan: Plan) -> None:
        """The plan about to run."""

    def task(self, description: str, total: int, *, model: str | None = None,
             file: str | None = None) -> Callable[[int], None]:
        """A transfer starts. ``description`` is the display label (and names the task
        to ``finish``); ``model`` and ``file`` say what it is, for programs (the NDJSON
        events). ``file`` is None for a model's small files shown as one task."""
        return lambda n: None

    def finish(self, description: str, *, origin: str = "source") -> None:
        """The task ended. ``origin``: where the bytes came from ("source", "team
        cache", "peer store", "store": another process put it there meanwhile)."""


@dataclass
class Executor:
    store: Store
    cache: Path
    project: str
    fetch_object: Callable[[Action, Callable[[int], None]], Any]  # -> transfer.FetchResult
    validate_model: Callable[[Action], list[str]]  # returns warnings; raises ValidationFailed
    jobs: int = 4
    progress: ProgressSink = field(default_factory=ProgressSink)
    # a fetch that waits on nothing (a source on this machine): run it on this thread
    inline: Callable[[Action], bool] = lambda action: False

    # the targets links and unlinks go to, by name (default: every registered one)
    targets: dict[str, _targets.Target] | None = None

    def __post_init__(self) -> None:
        if self.targets is None:
            self.targets = {t.name: t for t in _targets.active(self.store, self.cache,
                                                                self.project)}
        self._groups: dict[str, _Group] = {}  # model key -> its small files' progress
        self._groups_lock = threading.Lock()
        self._shared_paths: set[str] = set()  # fetched for two models: labelled with the key
        self._validated: set[str] = set()  # models whose tree is named only once they pass

    def _progress_labels(self, plan: Plan) -> None:
        """One progress task per model for its small files: thousands of files give a
        bar (or a line) per model, not one per file, whether in one model or in 1,000
        models of 3 files; a small plan still names each file. A path fetched for two
        models is labelled with each model's key (tasks are found by their label)."""
        from .transfer import SMALL_MAX

        counts: dict[str, list[int]] = {}
        seen: set[str] = set()
        for a in plan.nodes.values():
            if a.kind == "fetch" and a.file is not None:
                if a.file.path in seen:  # two progress tasks must not share a label
                    self._shared_paths.add(a.file.path)
                seen.add(a.file.path)
            if a.kind == "fetch" and a.size <= SMALL_MAX and a.model is not None:
                c = counts.setdefault(a.model.key, [0, 0])
                c[0] += 1
                c[1] += a.size
        everyone = sum(n for n, _ in counts.values()) > GROUP_ALL
        for key, (n, total) in counts.items():
            if n > GROUP_MIN or everyone:
                label = f"{key}: {n} small file{'s' if n > 1 else ''}"
                self._groups[key] = _Group(label, n, total)

    def _advance_for(self, action: Action) -> tuple[Callable[[int], None], str | None]:
        """The progress callback for a fetch, and the label to finish after it (None:
        a model's small-files task finishes when its last file is in)."""
        from .transfer import SMALL_MAX

        group = self._groups.get(action.model.key) if action.model else None
        if group is not None and action.size <= SMALL_MAX:
            with self._groups_lock:
                if group.advance is None:
                    group.advance = self.progress.task(group.label, group.total,
                                                       model=action.model.key)
            return group.advance, None
        label = action.file.path if action.file else action.target[:12]
        if label in self._shared_paths and action.model:
            label = f"{action.model.key}: {label}"
        return self.progress.task(label, action.size,
                                  model=action.model.key if action.model else None,
                                  file=action.file.path if action.file else None), label

    def _small_done(self, action: Action) -> None:
        group = self._groups.get(action.model.key) if action.model else None
        if group is None:
            return
        with self._groups_lock:
            group.left -= 1
            last = group.left == 0
        if last:
            self.progress.finish(group.label)

    def run_action(self, action: Action, report: ApplyReport) -> None:
        if action.kind == "fetch":
            advance, label = self._advance_for(action)
            result = self.fetch_object(action, advance)
            origin = result.origin if result.fetched else "store"
            if label is None:
                self._small_done(action)
            else:
                self.progress.finish(label, origin=origin)
            # an object another process fetched while we waited for its lock is not ours;
            # one copied from a store on this machine was not fetched either
            kind = {"source": "fetch", "team cache": "fetch", "store": "shared"}.get(origin, "copied")
            report.count(kind, result.downloaded)
            return
        elif action.kind == "assemble":
            assert action.model
            # its small objects, and whatever else is staged by then: one sync for many
            self.store.commit_staged(f.sha256 for f in action.model.regular_files())
            with self.store.lock(f"model-{action.model.store_id}"):
                self.store.assemble(action.model,
                                    publish=action.model.key not in self._validated)
        elif action.kind == "validate":
            assert action.model
            # held while validating: another apply publishing (moving) the pending tree
            # under this one's scan would fail it; it waits, then finds the tree named
            with self.store.lock(f"model-{action.model.store_id}"):
                warnings = self.validate_model(action)
                self.store.publish(action.model)
            with report._lock:
                report.warnings.extend(warnings)
        elif action.kind in ("link", "unlink"):
            self._place(action, report)
        report.count(action.kind)

    def _place(self, action: Action, report: ApplyReport) -> None:
        """A link or unlink, by the target the plan named."""
        assert self.targets is not None
        target = self.targets[action.via]
        if action.kind == "unlink":
            target.unlink(action.target, Path(action.where))
            return
        assert action.model
        conflicts = target.link(action.model, Path(action.where))
        with report._lock:
            report.warnings.extend(f"{action.model.key}: {target.conflict_note(c)}"
                                   for c in conflicts)

    def execute(self, plan: Plan) -> ApplyReport:
        """Run every node once its predecessors succeeded (Kahn's order).

        Threads are for waiting: fetches (and validation, which hashes in C) run on a
        pool of ``jobs`` threads, while the filesystem work of assembling, linking and
        unlinking runs here, on the calling thread, one action at a time. Those actions
        create and rename thousands of names in the same few directories; spread over
        threads on 2 cores they queued on the directories' locks and on each other's
        wake-ups, and took 15-30% longer than on one thread. ``inline`` says which
        fetches cost no waiting at all (a source on this machine) and run here too.

        Finished pool nodes report to one queue and their successors are started as
        they become ready, so the cost per action is constant. It walks the plan's edge
        list directly; the networkx view of the same DAG is for printing and analysis,
        and importing networkx would add 0.15 s to every run. Ctrl-C stops transfers
        within a chunk and starts nothing new.
        """
        self._validated = {a.target for a in plan.nodes.values() if a.kind == "validate"}
        report = ApplyReport()
        if plan.empty:
            return report
        self.store.ensure()
        self._progress_labels(plan)
        self.progress.begin(plan)
        schedule = _Schedule(self, plan, report)
        try:
            schedule.drive()
        except KeyboardInterrupt:
            schedule.abandon()
            self.store.commit_staged()  # verified already: worth keeping
            raise
        schedule.pool.shutdown(wait=True)
        self.store.commit_staged()  # fetched for a model that failed later: keep them
        if any(isinstance(e, KeyboardInterrupt) for _, e in report.failures):
            raise KeyboardInterrupt  # a transfer saw Ctrl-C first
        return report


class _Schedule:
    """One run of a plan's DAG (see Executor.execute): which nodes wait on how many
    others, the ready nodes this thread runs (``here``), and the pool's, which report
    to one queue (``finished``) as they end."""

    def __init__(self, executor: Executor, plan: Plan, report: ApplyReport) -> None:
        import queue
        from collections import deque

        self.executor, self.plan, self.report = executor, plan, report
        self.succ: dict[str, list[str]] = {n: [] for n in plan.nodes}
        self.waiting = dict.fromkeys(plan.nodes, 0)
        for a, b in set(plan.edges):
            self.succ[a].append(b)
            self.waiting[b] += 1
        self.finished: queue.SimpleQueue[tuple[str, BaseException | None]] = queue.SimpleQueue()
        self.here: deque[str] = deque()
        self.failed: set[str] = set()
        self.pool = ThreadPoolExecutor(max_workers=max(1, executor.jobs))
        self.submitted: list[Any] = []
        self.pending = 0  # nodes submitted to the pool and not settled yet

    def drive(self) -> None:
        """Start the nodes that wait on nothing, then run and settle until none is left."""
        # biggest first: a big file's stream sets the pace, so it must not wait in
        # the pool's queue behind dozens of small files (2 x 256 MiB + 30 small
        # files: the second stream started 0.3-0.8 s late in name order)
        for node in sorted((n for n, d in self.waiting.items() if d == 0),
                           key=lambda n: (-(self.plan.nodes[n].size or 0), n)):
            self.start(node)
        while self.pending or self.here:
            ran = bool(self.here)
            if ran:
                self.run_here(self.here.popleft())
            self.collect(block=not ran)

    def start(self, node: str) -> None:
        action = self.plan.nodes[node]
        if action.kind in LOCAL_KINDS or self.executor.inline(action):
            self.here.append(node)
        else:
            self.submitted.append(self.pool.submit(self.run_pooled, node))
            self.pending += 1

    def run_here(self, node: str) -> None:
        try:
            self.executor.run_action(self.plan.nodes[node], self.report)
        except Exception as e:  # reported with the action, as the pool's are
            self.settle(node, e)
        else:
            self.settle(node, None)

    def run_pooled(self, node: str) -> None:
        try:
            self.executor.run_action(self.plan.nodes[node], self.report)
        except BaseException as e:
            self.finished.put((node, e))
            return
        self.finished.put((node, None))

    def collect(self, *, block: bool) -> None:
        """Settle what the pool finished meanwhile (waiting for one when this thread has
        nothing else to do; half a second at a time, so Ctrl-C stays prompt)."""
        import queue

        while self.pending:
            try:
                node, err = self.finished.get(block, timeout=0.5)
            except queue.Empty:
                break
            self.pending -= 1
            self.settle(node, err)
            block = False

    def settle(self, node: str, err: BaseException | None) -> None:
        """A node ended: its failure skips everything after it, its success starts the
        successors that wait on nothing else now."""
        if err is not None:
            self.report.failures.append((self.plan.nodes[node], err))
            for d in _descendants(self.succ, node) - self.failed:
                self.failed.add(d)
                self.report.skipped.append(self.plan.nodes[d])
            return
        for nxt in self.succ[node]:
            self.waiting[nxt] -= 1
            if self.waiting[nxt] == 0 and nxt not in self.failed:
                self.start(nxt)

    def abandon(self) -> None:
        """Ctrl-C: stop the pool's transfers and start nothing new."""
        from .interrupt import abandon

        abandon(self.pool, (f for f in self.submitted if not f.done()))


def _descendants(succ: dict[str, list[str]], node: str) -> set[str]:
    seen: set[str] = set()
    stack = list(succ[node])
    while stack:
        n = stack.pop()
        if n not in seen:
            seen.add(n)
            stack.extend(succ[n])
    return seen


def failure_message(report: ApplyReport) -> str:
    """One line per failure, except credentials: every file of a model refused for them
    is one error with its hint once (a real repository has hundreds of files), the
    other files named after it."""
    lines = []
    refused: dict[str, list[tuple[Any, AuthRequired]]] = {}
    for action, err in report.failures:
        if isinstance(err, AuthRequired) and action.model and action.file:
            if action.model.key not in refused:
                lines.append(action.model.key)  # its place in the output, filled below
            refused.setdefault(action.model.key, []).append((action, err))
            continue
        lines.append(_failure_line(action, err))
    lines = [_refused_line(refused[line]) if line in refused else line for line in lines]
    failed = sorted({a.model.key for a, _ in report.failures if a.model}
                    | {a.model.key for a in report.skipped if a.model})
    if failed:
        lines.append(f"not installed: {', '.join(failed)}")
    return "\n".join(lines)


def _failure_line(action: Any, err: BaseException) -> str:
    who = action.model.key if action.model else action.target
    what = f"{action.kind} {action.file.path}" if action.file else action.kind
    msg = str(err) if isinstance(err, ReconcileError) else f"{type(err).__name__}: {err}"
    return f"{who}: {what} failed: {msg}"


def _refused_line(items: list[tuple[Any, AuthRequired]]) -> str:
    if len(items) == 1:
        return _failure_line(*items[0])
    action, err = items[0]
    others = sorted(a.file.path for a, _ in items[1:])
    named = ", ".join(others[:10]) + (f" and {len(others) - 10} more" if len(others) > 10
                                      else "")
    text = (f"{action.model.key}: fetch {action.file.path} failed: {err.message}\n"
            f"  (the same refusal for {len(others)} more files: {named})")
    return text + (f"\n  hint: {err.hint}" if err.hint else "")
