"""One project's operations: config → lock → plan → apply, plus status, verify, gc.

This is the library the CLI and the Python API share. Each method reads the
manifest and lock it needs, calls the single-purpose modules in order, and returns
a value; nothing here prints or exits.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from . import settings
from . import targets as _targets
from .config import Manifest, load_manifest
from .errors import ConfigError, IntegrityError, LockError, ReconcileError, ValidationFailed
from .fsutil import atomic_write_text
from .lockfile import (
    Lock,
    LockedFile,
    LockedModel,
    lock_doc,
    lock_from_doc,
    read_lock,
    write_lock,
)
from .store import Store, remove_tree


@dataclass
class GcReport:
    objects: list[Path] = field(default_factory=list)
    models: list[Path] = field(default_factory=list)
    partials: list[Path] = field(default_factory=list)
    bytes: int = 0


@dataclass
class VerifyReport:
    """What `verify` did: corrupt paths by model, the models it could check (installed
    ones), and how many locked models were asked about."""

    corrupt: dict[str, list[str]]
    checked: list[str]
    selected: int


def check_pins(lock: Lock, manifest: Manifest, path: Path) -> None:
    """Each source checks the pins it will put into URLs and requests (a hand-edited
    lock must not send a request, or a token, anywhere the declaration does not)."""
    from .errors import LockFileInvalid
    from .sources import registry

    for key, m in lock.models.items():
        decl = manifest.models.get(key)
        cls = registry.get(m.source_type)
        if cls is None or decl is None or m.fingerprint != decl.fingerprint():
            continue  # stale: apply locks it again, --locked refuses it
        try:
            cls.check_pin(m.pin, decl.source)
            if m.ollama is not None:  # a path in ollama's directory: only the pin's own
                name = getattr(cls, "ollama_name", None)
                if not decl.ollama.enable or name is None or name(m.pin) != m.ollama:
                    raise ValueError(f"ollama: {m.ollama!r} is not where models.toml installs"
                                     " this model")
        except ValueError as e:
            raise LockFileInvalid(
                f"{path}: models.{key}.{'' if str(e).startswith('ollama:') else 'pin.'}{e}",
                hint="regenerate it with `reconcile lock` (or `git checkout` it if you edited"
                " it)") from None


def _pin_text(m: LockedModel) -> str:
    """A pin as a person reads it: the commit, version or digest, shortened."""
    for k in ("commit", "version", "digest", "etag", "archiveSha256"):
        if k in m.pin:
            return f"{k} {str(m.pin[k]).strip(chr(34))[:12]}"
    return m.hash[:19]


class Workspace:
    def __init__(
        self,
        manifest_path: Path | str = "models.toml",
        *,
        store: Store | None = None,
        cache: Path | None = None,
        lock_path: Path | None = None,
        manifest: Manifest | None = None,
    ) -> None:
        self.manifest_path = Path(manifest_path)
        self.lock_path = lock_path or self.manifest_path.with_name("models.lock")
        if manifest is not None:
            self.__dict__["manifest"] = manifest
        self._lock_memo: tuple[str, Lock] | None = None
        self.store = store or Store(settings.store_dir())
        self.cache = cache or settings.hf_hub_cache()

    @cached_property
    def manifest(self) -> Manifest:
        return load_manifest(self.manifest_path)

    def _check_manifest(self) -> None:
        """Parse and check models.toml before a command touches the disk: a typo exits 2
        having created no store, HF cache or lock."""
        _ = self.manifest

    @cached_property
    def remote(self) -> Any:
        """The team cache (remote.py) models.toml or RECONCILE_CACHE names, else None."""
        from .remote import configured, open_remote

        cfg = configured(self.manifest.cache)
        if cfg is None:
            return None
        from .resolve import SourceContext

        return open_remote(cfg, self.manifest_path.parent, SourceContext(store=self.store))

    def close(self) -> None:
        """Close the team cache's connections if it was opened (the CLI when a command
        ends, the Python API after each call: a long-lived process keeps no sockets)."""
        remote = self.__dict__.pop("remote", None)
        if remote is not None:
            remote.close()

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def project(self) -> str:
        """Stable id of this project (its lockfile's absolute path)."""
        return hashlib.sha256(os.fsencode(self.lock_path.resolve())).hexdigest()[:16]

    def read_lock(self) -> Lock | None:
        """The lock, parsed once per content: tomllib is pure Python and slow on big locks,
        so the parsed document is kept as JSON in the store, keyed by the file's sha256."""
        try:
            raw = self.lock_path.read_bytes()
        except FileNotFoundError:
            return None
        key = hashlib.sha256(raw).hexdigest()
        if self._lock_memo and self._lock_memo[0] == key:
            return self._lock_memo[1]
        cache = self.store.state / "lockcache" / f"{key}.json"
        try:
            # written only after these bytes parsed and passed every check
            lock = lock_from_doc(json.loads(cache.read_text("utf-8")), self.lock_path,
                                 checked=True)
        except (OSError, ValueError, LockError):
            doc = lock_doc(raw, self.lock_path)
            lock = lock_from_doc(doc, self.lock_path)
            try:
                atomic_write_text(cache, json.dumps(doc, separators=(",", ":")))
            except OSError:
                pass  # a read-only store only makes the next read slower
        self._lock_memo = (key, lock)
        return lock

    # --- lock ----------------------------------------------------------------------

    def stale(self) -> dict[str, str]:
        from .resolve import stale_keys

        return stale_keys(self.manifest, self.read_lock())

    def lock(self, *, upgrade: bool | list[str] = False, offline: bool = False,
             jobs: int = 4, only: list[str] | None = None) -> Any:
        from .resolve import lock_models

        self._check_manifest()
        old = self.read_lock()
        self.store.ensure()
        with self.store.session():  # objects fetched at lock time are named by no lock yet
            report = lock_models(self.manifest, old, self.store, upgrade=upgrade,
                                 offline=offline or settings.offline(), jobs=jobs, only=only)
            report.written = write_lock(self.lock_path, report.lock)
            self.store.add_root(self.lock_path)
        return report

    def ci_key(self, only: list[str] | None = None) -> str:
        """`reconcile lock --key`: the CI cache key of models.lock (lockfile.cache_key).

        Read straight from the file, offline, with no store: CI computes it before the
        cache that holds the store is restored.
        """
        from .lockfile import cache_key, selected_models

        lock = read_lock(self.lock_path)
        if lock is None:
            raise LockError(f"{self.lock_path} does not exist, so it has no cache key",
                            hint="run `reconcile lock` and commit models.lock")
        selected_models(lock, only, self.lock_path)  # an unknown key names this lock
        return cache_key(lock, only)

    def add(self, decl: Any, *, lock: bool = True, offline: bool = False) -> Any:
        """Append ``decl`` (an edit.Declaration) to models.toml and lock that model only.

        All or nothing, like `uv add`: if the declaration is refused or cannot be
        resolved, models.toml is put back as it was and models.lock is not touched.
        Returns the lock report (None with ``lock=False``).
        """
        from .edit import add_text

        try:
            before: str | None = self.manifest_path.read_text("utf-8")
        except FileNotFoundError:
            before = None
        atomic_write_text(self.manifest_path, add_text(before or "", decl))
        self.__dict__.pop("manifest", None)
        try:
            self.manifest  # noqa: B018 - the declaration's options are checked here
            return self.lock(only=[decl.key], offline=offline) if lock else None
        except BaseException as e:
            if before is None:
                self.manifest_path.unlink(missing_ok=True)
            else:
                atomic_write_text(self.manifest_path, before)
            self.__dict__.pop("manifest", None)
            if isinstance(e, ConfigError) and (e.key or "").startswith(f"models.{decl.key}."):
                # the declaration was refused: a models.toml line would name text that
                # was taken out again (or a file that no longer exists)
                raise ConfigError(e.reason, key=e.key, hint=e.hint) from None
            raise

    def remove(self, key: str) -> bool:
        """Take models.<key> out of models.toml and models.lock, every other byte kept.
        Returns whether the lock had an entry. Installed files stay until
        `apply --prune` (the HF cache) and `gc` (the store)."""
        from .edit import remove_text

        text = remove_text(self.manifest_path.read_text("utf-8"), key)
        old = self.read_lock()
        had = bool(old and key in old.models)
        if old and had:
            write_lock(self.lock_path, Lock(models={k: m for k, m in old.models.items()
                                                    if k != key}, version=old.version))
        atomic_write_text(self.manifest_path, text)
        self.__dict__.pop("manifest", None)
        return had

    def current_lock(self, *, locked: bool = False, offline: bool = False, jobs: int = 4) -> Lock:
        """The lock to apply: re-locked first when stale (like `uv sync`), unless ``locked``."""
        stale = self.stale()
        lock = self.read_lock()
        if not stale and lock is not None:
            return lock
        if locked:
            raise LockError(
                f"{self.lock_path} is out of date with {self.manifest_path}: "
                + ", ".join(f"{k} ({why})" for k, why in sorted(stale.items())),
                hint="run `reconcile lock` and commit models.lock, or drop --locked",
            )
        return self.lock(offline=offline, jobs=jobs).lock

    # --- plan / apply --------------------------------------------------------------

    def validation(self, revalidate: bool = False) -> Any:
        from .validation.runner import Runner

        return Runner(self.store, self.manifest, revalidate=revalidate)

    def preview_lock(self, *, locked: bool = False, offline: bool = False,
                     jobs: int = 4) -> tuple[Lock, list[tuple[str, str, str]]]:
        """The lock apply would use, resolved in memory when models.lock is stale or
        missing (nothing written; only what resolving needs is fetched), and what would
        change in it: (symbol, key, what) with + new, ~ re-pinned, - removed."""
        self._check_manifest()
        old = self.read_lock()
        stale = self.stale()
        if not stale and old is not None:
            return old, []
        if locked:
            self.current_lock(locked=True)  # raises, naming what is stale
        from .resolve import lock_models

        self.store.ensure()
        with self.store.session():
            report = lock_models(self.manifest, old, self.store, offline=offline or
                                 settings.offline(), jobs=jobs)
        before = old.models if old else {}
        changes = []
        for key, m in report.lock.models.items():
            prev = before.get(key)
            if prev is None:
                changes.append(("+", key, f"new: {m.source_type} pinned at {_pin_text(m)}"))
            elif prev.hash != m.hash or prev.pin != m.pin:
                changes.append(("~", key, f"{_pin_text(prev)} → {_pin_text(m)}"))
            elif prev.fingerprint != m.fingerprint:
                changes.append(("~", key, "declaration changed, same content"))
        changes += [("-", key, "removed from models.toml") for key in sorted(set(before)
                                                                            - set(report.lock.models))]
        return report.lock, sorted(changes, key=lambda c: c[1])

    def plan(self, lock: Lock | None = None, *, prune: bool = False,
             revalidate: bool = False) -> Any:
        from .plan import make_plan

        if lock is None:
            lock = self.read_lock()
            if lock is None:
                raise LockError(f"{self.lock_path} does not exist", hint="run `reconcile lock`")
            # models removed from the manifest leave with the next lock: plan without them
            lock = Lock({k: m for k, m in lock.models.items() if k in self.manifest.models})
        check_pins(lock, self.manifest, self.lock_path)
        runner = self.validation(revalidate)
        plan = make_plan(lock, self.store, self.cache, project=self.project,
                         needs_validation=runner.needs, prune=prune,
                         decls=self.manifest.models, origin=self._origin)
        return self._local_origins(plan)

    def elsewhere(self) -> Any:
        """Where on this machine apply may copy objects from instead of downloading them
        (reuse.Elsewhere): peer stores, the HF cache, ollama's models directories."""
        from .reuse import Elsewhere, existing_dirs
        from .targets.ollama import models_dir

        dirs = [models_dir(d.ollama.models_dir) for d in self.manifest.models.values()
                if d.ollama.enable]
        return Elsewhere(hf_cache=self.cache, peers=tuple(settings.peer_stores()),
                         ollama_dirs=existing_dirs([*dirs, models_dir(None)]))

    def _local_origins(self, plan: Any) -> Any:
        """Name the place on this machine each fetch will be copied from, where one holds
        a file of its size (`plan` shows "from the HF cache"); apply checks the bytes."""
        from dataclasses import replace

        fetches = [(n, a) for n, a in plan.nodes.items() if a.kind == "fetch"]
        if not fetches:
            return plan  # a converged plan stats nothing more
        elsewhere = self.elsewhere()
        for node, a in fetches:
            if place := elsewhere.where(a.model, a.file):
                plan.nodes[node] = replace(a, origin=place)
        return plan

    def targets(self, *, decls: bool = True) -> list[_targets.Target]:
        """The registered targets for this project (``decls``: with models.toml's
        declarations, which say where a model goes; gc reads no models.toml)."""
        return _targets.active(self.store, self.cache, self.project,
                               self.manifest.models if decls else None)

    def _origin(self, m: LockedModel) -> str:
        """Where apply will take a model's missing objects from (shown by `plan`): a
        store on this machine that holds them all (--user's system store), the team
        cache, or the source."""
        if (peer := self._peer_with(m)) is not None:
            from .modes import store_name

            return store_name(peer)
        remote = self.remote
        if remote is None:
            return ""
        if remote.dead is None:
            try:
                return "team cache" if remote.has_model(m) else "source"
            except ReconcileError as e:
                remote.give_up(e)  # asked once: the next models do not wait for it too
        return "source (team cache unreachable)"

    def _peer_with(self, m: LockedModel) -> Path | None:
        """The first peer store holding every object of ``m`` this store lacks."""
        missing = [f.sha256 for f in m.regular_files() if not self.store.has_object(f.sha256)]
        for peer in settings.peer_stores():
            other = Store(peer)
            if all(other.object_path(h).exists() for h in missing):
                return peer
        return None

    def apply(self, *, jobs: int = 4, offline: bool = False, prune: bool = False,
              locked: bool = False, revalidate: bool = False, progress: Any = None) -> Any:
        offline = offline or settings.offline()
        self._check_manifest()
        self.store.ensure()
        with self.store.session():
            lock = self.current_lock(locked=locked, offline=offline, jobs=jobs)
            self.store.add_root(self.lock_path)
            return self.apply_lock(lock, jobs=jobs, offline=offline, prune=prune,
                                   revalidate=revalidate, progress=progress)

    def apply_lock(self, lock: Lock, *, jobs: int = 4, offline: bool = False,
                   prune: bool = False, revalidate: bool = False, progress: Any = None) -> Any:
        """Plan and execute a given lock (the step `apply` and `fetch_model` share)."""
        from .apply import Executor, ProgressSink
        from .resolve import SourceContext, make_source
        from .transfer import SMALL_MAX, FetchResult, fetch

        self.store.ensure()
        context = SourceContext(store=self.store, offline=offline, jobs=jobs)
        sources: dict[str, Any] = {}  # one per model, made when first needed

        def source_of(m: LockedModel) -> Any:
            src = sources.get(m.key)
            if src is None:
                src = sources.setdefault(m.key, make_source(self.manifest.models[m.key], context))
            return src

        check_pins(lock, self.manifest, self.lock_path)  # before any pin reaches a source
        self._check_signatures(lock, source_of)
        self._vouch(lock, context, offline)
        plan = self.plan(lock, prune=prune, revalidate=revalidate)
        runner = self.validation(revalidate)

        elsewhere = self.elsewhere()
        peers = elsewhere.peers
        remote = self.remote
        if remote is not None and offline and remote.source.needs_network:
            remote = None

        def fetch_object(action, advance) -> Any:
            from dataclasses import replace

            m = action.model
            if elsewhere and (place := elsewhere.take(self.store, m, action.file)):
                # copied from a store, the HF cache or ollama on this machine: nothing
                # downloaded (a copy that is not the lock's bytes was dropped: fetched below)
                return FetchResult(action.file.sha256, action.file.size, 0, origin=place)
            if remote is not None and (got := remote.fetch(action.file, self.store, advance,
                                                            jobs)) is not None:
                return replace(got, origin="team cache")
            decl = self.manifest.models[m.key]
            src = source_of(m)
            if offline and src.needs_network:
                raise LockError(f"{action.file.path} is not in the store and --offline forbids"
                                " fetching it", hint="run apply once with network access")
            return fetch(src, m.pin, action.file, self.store, decl.network, advance, jobs=jobs,
                         stage=True)

        def waits_on_nothing(action: Any) -> bool:
            """A small file from a source on this machine: no thread has anything to wait
            for, so it is fetched on apply's own thread (see Executor.execute)."""
            if action.kind != "fetch" or action.size > SMALL_MAX or remote or peers:
                return False
            try:
                return not source_of(action.model).needs_network
            except ReconcileError:
                return False  # fetch_object meets it again and reports it for this file

        targets = self.targets()
        executor = Executor(self.store, self.cache, self.project, fetch_object,
                            lambda a: runner.run(a.model), jobs=jobs,
                            progress=progress or ProgressSink(), inline=waits_on_nothing,
                            targets={t.name: t for t in targets})
        with self.store.session():
            try:
                report = executor.execute(plan)
            finally:
                for src in sources.values():
                    src.close()
            self._adopt(lock, plan, targets)
        if remote is not None:
            report.warnings.extend(remote.warnings)
            report.cache_hits = remote.hits
        # a conflict that holds a model back gets no link action: say it here, or only
        # plan would (an HF ref another tool holds is linked around, not skipped)
        held = {t.name for t in targets if t.hold_on_conflict}
        report.warnings.extend(f"{key}: {note}" for key, via, note in plan.conflicts
                               if via in held)
        report.warnings = list(dict.fromkeys(report.warnings))
        report.plan = plan
        return report

    def _adopt(self, lock: Lock, plan: Any, targets: list[_targets.Target]) -> None:
        """This project needs what other projects linked too: register it as an owner
        wherever apply had nothing to write."""
        for m in lock.models.values():
            for t, where in _targets.placed(targets, m):
                if f"link:{t.node}{m.key}" not in plan.nodes:
                    t.adopt(m, where)

    def _vouch(self, lock: Lock, context: Any, offline: bool) -> None:
        """Every entry of the lock is the source's word before a byte of it is taken from
        the store, a peer store or the team cache (see provenance)."""
        from . import provenance
        from .resolve import resolve_model
        from .sources import registry

        models = [m for k, m in lock.models.items() if k in self.manifest.models]
        elsewhere = self.elsewhere()
        remote = self.remote if not offline else None

        def borrow(m: LockedModel, f: LockedFile) -> bool:
            """A small git file's claimed object from a peer store, the HF cache, ollama's
            directory or the team cache: the source's listing gives its git blob id,
            which the bytes must then match, so they need not come from the source."""
            if elsewhere and elsewhere.take(self.store, m, f):
                return True
            return remote is not None and remote.fetch(f, self.store, stage=False) is not None

        provenance.vouch(
            self.store, self.manifest, models, offline=offline, peers=list(elsewhere.peers),
            resolve_at_pin=lambda decl, m: resolve_model(
                decl, context, at=m, borrow=lambda f: borrow(m, f)),
            needs_network=lambda decl: registry.get(decl.source_type).needs_network,
            jobs=context.jobs)

    def _check_signatures(self, lock: Lock, source_of: Any) -> None:
        """Every model models.toml wants signed is checked against the lock's file list
        before anything is fetched or linked: the lock comes in pull requests, and a
        sha256 edited there must not install bytes the publisher never signed.
        ``source_of(model)``: apply's source for the model (made once, used again)."""
        from .resolve import check_signature
        from .transfer import fetch

        for key, m in lock.models.items():
            decl = self.manifest.models.get(key)
            if decl is None or decl.signature is None:
                continue

            def get(f: LockedFile, decl: Any = decl, m: LockedModel = m) -> Any:
                return fetch(source_of(m), m.pin, f, self.store, decl.network)

            check_signature(decl, m.files, get, self.store)

    # --- the team cache -------------------------------------------------------------

    def _cache_or_fail(self) -> Any:
        from .remote import CacheError

        if self.remote is None:
            raise CacheError("no team cache is configured",
                             hint='add [cache] url = "s3://bucket/prefix" (or oci://…, a'
                             " directory) to models.toml, or pass --cache URL")
        return self.remote

    def selected_models(self, keys: list[str] | None) -> list[LockedModel]:
        """The locked models named (all when none), from an up-to-date lock."""
        lock = self.current_lock(locked=True)
        unknown = sorted(set(keys or ()) - set(lock.models))
        if unknown:
            raise ConfigError(f"no model named {', '.join(unknown)} in {self.lock_path}")
        return [m for k, m in lock.models.items() if not keys or k in keys]

    def push(self, keys: list[str] | None = None, *, jobs: int = 4,
             verify: bool = False) -> Any:
        """Upload the installed objects of the locked models (or ``keys``) the team cache
        lacks or holds a bad copy of, then each model's entry; nothing right is sent
        twice. ``verify``: read every present object whole (not only samples)."""
        remote = self._cache_or_fail()
        with self.store.session():
            return remote.push(self.selected_models(keys), self.store, jobs=jobs,
                               verify=verify)

    def pull(self, keys: list[str] | None = None, *, jobs: int = 4) -> tuple[int, int]:
        """Fill the store from the team cache only (no source is asked); returns (objects
        taken, bytes). Missing or bad objects fail, naming them."""
        from concurrent.futures import ThreadPoolExecutor

        from .remote import CacheError

        remote = self._cache_or_fail()
        todo: dict[str, tuple[str, Any]] = {}
        for m in self.selected_models(keys):
            for f in m.regular_files():
                if not self.store.has_object(f.sha256):  # exec variants come at assemble
                    todo.setdefault(f.sha256, (m.key, f))
        self.store.ensure()
        with self.store.session():
            with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
                got = list(pool.map(lambda kf: remote.fetch(kf[1], self.store, jobs=1,
                                                             stage=False), todo.values()))
            self.store.commit_staged()
        missing = [f"{k}: {f.path}" + (f" (corrupt in the team cache: {remote.corrupt[f.sha256]})"
                                       if f.sha256 in remote.corrupt else "")
                   for (k, f), r in zip(todo.values(), got, strict=True) if r is None]
        if missing:
            why = remote.dead or "not in the cache, or corrupt there"
            raise CacheError(f"{len(missing)} objects could not be taken from {remote.url}"
                             f" ({why}): " + ", ".join(missing[:5])
                             + (" …" if len(missing) > 5 else ""),
                             hint="`reconcile push --verify` them from a machine that has"
                             " them installed: it uploads what the cache lacks and replaces"
                             " a corrupt copy")
        return len(todo), sum(f.size for _, f in todo.values())

    # --- inspection ----------------------------------------------------------------

    def status(self) -> list[dict[str, Any]]:
        lock = self.read_lock()
        stale = self.stale()
        runner = self.validation()
        targets = self.targets()
        out = []
        for key in sorted(set(self.manifest.models) | set(lock.models if lock else ())):
            m = lock.models.get(key) if lock else None
            entry: dict[str, Any] = {"key": key, "name": m.name if m else
                                     self.manifest.models[key].name}
            if m is None or key in stale:
                entry.update(state=stale.get(key, "unlocked"), hash=m.hash if m else None,
                             store_path=None)
                out.append(entry)
                continue
            installed = self.store.has_model(m)
            states = [(t, where, t.state(m, where)) for t, where in _targets.placed(targets, m)]
            linked = all(st.linked for _, _, st in states)
            warnings = runner.recorded_warnings(m) if installed else []
            verdict, why = runner.verdict(m)
            if verdict == "invalid":
                state = "invalid"
                entry["validation"] = why
                installed = False  # not handed out: no store_path
            elif not installed:
                state = "missing"
            elif verdict == "unvalidated":
                state = "unvalidated"
                installed = False
            elif not linked:
                state = "unlinked"
            else:
                state = "ok"
            entry.update(state=state, hash=m.hash, source=m.source_type,
                         store_path=str(self.store.model_path(m)) if installed else None,
                         files=len(m.files), size=sum(f.size for f in m.regular_files()))
            if m.hf:
                entry["hf_repo_id"] = m.hf.repo_id
                entry["hf_repo_type"] = m.hf.repo_type
            for t, where, st in states:
                if st.linked:
                    entry.update(t.status(m, where))
            if self.remote is not None:
                entry["cache"] = self._origin(m) == "team cache"
            conflicts = [t.conflict_note(c) for t, _, st in states for c in st.conflicts]
            if conflicts:
                entry["conflicts"] = conflicts
            if warnings:
                entry["warnings"] = warnings
            out.append(entry)
        return out

    def validate(self, target: str, *, preset: str | None = None,
                 validators: list[str] | None = None, continue_on_error: bool = False) -> list[Any]:
        """`reconcile validate`: a directory, or a locked and installed model by key.

        Validators: the ones named (``NAME[:ARG]``), else the model's own set, else the
        preset's. Stops at the first aborting failure unless ``continue_on_error``.
        """
        from .validation.runner import (
            Runner,
            parse_ref,
            run_validator,
            secret_vars,
            validators_for,
        )

        manifest = self.manifest if self.manifest_path.exists() else None
        customs = manifest.validators if manifest else {}
        model = None
        root = Path(target)
        if not root.is_dir():
            model = self.model(target)
            if not self.store.has_model(model):
                raise LockError(f"model '{target}' is not installed", hint="run `reconcile apply`")
            root = self.store.model_path(model)
        if validators:
            chosen = [parse_ref(v, customs, "--validator") for v in validators]
        elif model is not None:
            chosen = Runner(self.store, manifest, preset=preset).validators(model)
        else:
            chosen = validators_for(None, customs, preset)
        outcomes = []
        for v in chosen:
            outcome = run_validator(v, root, secret_vars(manifest))
            outcomes.append(outcome)
            if outcome.status != "pass" and outcome.on_failure == "abort" and not continue_on_error:
                break
        return outcomes

    def model(self, key: str) -> LockedModel:
        lock = self.read_lock()
        if lock is None or key not in lock.models:
            known = ", ".join(sorted(lock.models)) if lock else "none (no lock)"
            raise ConfigError(f"no model '{key}' in {self.lock_path}", hint=f"known: {known}")
        return lock.models[key]

    def path(self, key: str) -> Path:
        """The seed's getModelPath: where the model is handed out (``model_path``)."""
        m = self.model(key)
        self._check_passed(m)
        if not self.store.has_model(m):
            raise LockError(f"model '{key}' is not installed", hint="run `reconcile apply`")
        return self.model_path(m)

    def model_path(self, m: LockedModel) -> Path:
        """The path a user loads ``m`` from with its own tool: a declared project
        directory, else the place the source names (an HF model's snapshot; an MLflow
        model's store tree, which mlflow.pyfunc loads), else the store tree."""
        from .sources import registry

        cls = registry.get(m.source_type)
        default = cls.path_target if cls is not None else "store"
        return _targets.user_path(self.targets(), m, default) or self.store.model_path(m)

    def _check_passed(self, m: LockedModel) -> None:
        """A model that failed its validation (or has not passed it yet under this
        project's validators) is never handed out: the scanner blocked it for a reason."""
        verdict, why = self.validation().verdict(m)
        if verdict == "invalid":
            raise ValidationFailed(f"model '{m.key}' failed validation: {why}; it is not"
                                   " handed out", hint=f"`reconcile validate {m.key}` shows the"
                                   " findings; fix the source, or change models.toml's"
                                   " validation, then `reconcile apply`")
        if verdict == "unvalidated" and self.store.has_model(m):
            raise ValidationFailed(f"model '{m.key}' has not passed this project's validators"
                                   " yet", hint="run `reconcile apply`")

    def verify(self, keys: list[str] | None = None, *, repair: bool = False) -> VerifyReport:
        """Re-hash installed models: which were checked (a model not installed has
        nothing to check, and saying "all verified" of it would be false) and which
        paths were corrupt (repaired when asked)."""
        from .treehash import sha256_file

        lock = self.read_lock()
        if lock is None:
            raise LockError(f"{self.lock_path} does not exist", hint="run `reconcile lock`")
        for k in keys or ():
            self.model(k)
        bad: dict[str, list[str]] = {}
        selected = [k for k in lock.models if not keys or k in keys]
        checked = [k for k in selected if self.store.has_model(lock.models[k])]
        for key in checked:
            m = lock.models[key]
            root = self.store.model_path(m)
            for f in m.regular_files():
                p = root / f.path
                try:
                    ok = p.stat().st_size == f.size and sha256_file(p) == f.sha256
                except OSError:
                    ok = False
                if not ok:
                    bad.setdefault(key, []).append(f.path)
        if repair and bad:
            for key, paths in bad.items():
                m = lock.models[key]
                for path in paths:
                    f = next(x for x in m.files if x.path == path)
                    for obj in (self.store.object_path(f.sha256),
                                self.store.object_path(f.sha256, True)):
                        obj.unlink(missing_ok=True)
                remove_tree(self.store.model_path(m))
            self.validation().forget({lock.models[k].hash for k in bad})
            report = self.apply(locked=True)
            if not report.ok:
                from .apply import failure_message

                raise IntegrityError("repair failed:\n" + failure_message(report))
        return VerifyReport(bad, checked, len(selected))

    def _in_use(self, tmp: Path) -> bool:
        """A partial download whose lock someone holds, or any other temp younger than an hour."""
        import time

        if tmp.name.endswith(".part"):
            try:
                with self.store.lock(f"obj-{tmp.name[:-5]}", timeout=0):
                    return False
            except TimeoutError:
                return True
        try:
            return time.time() - tmp.lstat().st_mtime < 3600
        except FileNotFoundError:
            return True

    def gc(self, *, dry_run: bool = False) -> GcReport:
        """Delete store entries no registered lockfile needs (this one is registered first).

        Holds the store exclusively: a running apply or lock has objects no lockfile
        names yet. Objects that a target's link points to by symlink (an HF cache on
        another filesystem than the store) are kept as long as that link is there.
        """
        self.store.ensure()
        report = GcReport()
        with self.store.session(exclusive=True):
            if self.lock_path.exists():
                self.store.add_root(self.lock_path)
            keep_models: set[str] = set()
            keep_objects = self._linked_objects()
            for root in self.store.live_roots():
                try:
                    lock = read_lock(root)
                except LockError:
                    continue  # an unreadable lock elsewhere protects nothing; go on
                for m in (lock.models.values() if lock else ()):
                    keep_models.add(m.store_id)
                    keep_objects.update(f.sha256 for f in m.regular_files())
            self._collect(report, keep_models, keep_objects, dry_run)
        return report

    def _linked_objects(self) -> set[str]:
        """Objects that a target's links point to by symlink (an HF cache or a directory
        on another filesystem than the store): deleting one would break that place."""
        return {o for t in self.targets(decls=False) for o in t.held_objects()}

    def _collect(self, report: GcReport, keep_models: set[str], keep_objects: set[str],
                 dry_run: bool) -> None:
        pending = sorted(self.store.pending.iterdir()) if self.store.pending.is_dir() else []
        for d in sorted(self.store.models.iterdir()) + pending:
            if d.name not in keep_models:
                report.models.append(d)
                if not dry_run:
                    remove_tree(d)
        for sub in ("sha256", "sha256-x"):
            for obj in sorted((self.store.objects / sub).iterdir()):
                if obj.name not in keep_objects:
                    report.objects.append(obj)
                    report.bytes += obj.stat().st_size
                    if not dry_run:
                        obj.unlink()
        for p in (self.store.state / "lockcache").glob("*.json"):
            if not dry_run:
                p.unlink(missing_ok=True)  # parse caches: rebuilt on the next read
        current = self.store.lock_files()
        for p in self.store.locks.iterdir() if not dry_run else ():
            if p.name not in current:  # an earlier version's lock files: empty, unused
                p.unlink(missing_ok=True)
        for p in sorted(self.store.tmp.iterdir()):
            if self._in_use(p):
                continue  # another apply is writing it right now
            report.partials.append(p)
            if not dry_run:
                if p.is_dir():
                    remove_tree(p)
                else:
                    p.unlink(missing_ok=True)
