"""models.toml → models.lock: resolve each declaration to exact pins and hashes.

Unchanged declarations keep their pins (compared by fingerprint), so `lock` is
cheap and stable; `upgrade` re-resolves some or all. Files whose sha256 a source
cannot tell are downloaded now, straight into the store, so `apply` never fetches
them twice. A declared `hash` that disagrees with the resolved one stops everything
before anything is installed (the seed's fixed-output derivation behaviour).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from . import treehash
from .config import Manifest, ModelDecl
from .errors import (
    ConfigError,
    IntegrityError,
    LockError,
    ModelsFailed,
    ReconcileError,
    SourceError,
)
from .lockfile import FieldError, HFLink, Lock, LockedFile, LockedModel, check_model
from .sources import registry
from .sources.base import Resolution, Source
from .store import Store

SHA_RE = re.compile(r"^[0-9a-f]{40}$")
GIT_BLOB_CHECK_MAX = 16 << 20  # small git files are re-read to compare blob ids


@dataclass
class SourceContext:
    """What a source may use besides its declaration."""

    store: Store
    offline: bool = False
    jobs: int = 4


@dataclass
class LockReport:
    lock: Lock
    resolved: list[str] = field(default_factory=list)  # keys re-resolved this time
    kept: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def check_signature(decl: ModelDecl, files: Iterable[LockedFile],
                    fetch: Callable[[LockedFile], Any], store: Store) -> str:
    """The model's signature file (fetched into the store like any small file, if it is
    not there) verified against ``files``; returns the signer for the lock. Lock and
    apply both call it: at apply, against the lock's list, which a pull request may have
    edited."""
    from .signing import SignatureError, check_model

    sig = decl.signature
    assert sig is not None
    files = list(files)
    entry = next((f for f in files if f.path == sig.file and f.type == "f"), None)
    if entry is None:
        raise SignatureError(f"models.{decl.key}: the signature file {sig.file} is not among"
                             " the model's files",
                             hint="check signature.file (and the source's files filter)")
    if not store.has_object(entry.sha256):
        fetch(entry)
    with open(store.object_path(entry.sha256), "rb") as f:
        bundle = f.read(16 << 20)
    return check_model(sig, files, bundle, f"models.{decl.key}")


def make_source(decl: ModelDecl, context: SourceContext) -> Source:
    cls = registry.get(decl.source_type)
    if cls is None:  # config already refused it; a lock from a newer reconcile could hit this
        raise ConfigError(f"models.{decl.key}: source type '{decl.source_type}' is not available")
    return cls(decl, context)


def stale_keys(manifest: Manifest, lock: Lock | None) -> dict[str, str]:
    """key -> 'new' | 'stale' | 'removed' for every model where lock and manifest disagree."""
    locked = lock.models if lock else {}
    out: dict[str, str] = {}
    for key, decl in manifest.models.items():
        if key not in locked:
            out[key] = "new"
        elif locked[key].fingerprint != decl.fingerprint():
            out[key] = "stale"
    for key in locked:
        if key not in manifest.models:
            out[key] = "removed"
    return out


def lock_models(
    manifest: Manifest,
    old: Lock | None,
    store: Store,
    *,
    upgrade: bool | Iterable[str] = False,
    offline: bool = False,
    jobs: int = 4,
    on_model: Callable[[str], None] | None = None,
    only: Iterable[str] | None = None,
) -> LockReport:
    """Resolve what is new, changed or asked for (``upgrade``); keep the rest as locked.

    ``only`` limits the work to those keys (`reconcile add`): every other entry of the
    old lock is kept as it is, even one that is stale, and nothing else is resolved.
    """
    upgrade_keys = set(manifest.models) if upgrade is True else set(upgrade or ())
    unknown = upgrade_keys - set(manifest.models)
    if unknown:
        raise ConfigError(f"--upgrade: no model named {', '.join(sorted(unknown))} in {manifest.path}")
    old_models = old.models if old else {}
    context = SourceContext(store=store, offline=offline, jobs=jobs)
    report = LockReport(lock=Lock())
    todo = []
    limit = set(only) if only is not None else None
    for key, decl in manifest.models.items():
        prev = old_models.get(key)
        if limit is not None and key not in limit:
            if prev:
                report.lock.models[key] = prev
                report.kept.append(key)
        elif prev and key not in upgrade_keys and prev.fingerprint == decl.fingerprint():
            report.lock.models[key] = prev
            report.kept.append(key)
        else:
            todo.append(decl)
    if todo:
        if offline:
            raise LockError(
                f"models.lock needs resolving ({', '.join(d.key for d in todo)}) but --offline"
                " was given",
                hint="run `reconcile lock` with network access, or commit an up-to-date lock",
            )
        store.ensure()
        failures: list[tuple[str, ReconcileError]] = []
        pool = ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo))))
        futures = [(d.key, pool.submit(resolve_model, d, context, on_model)) for d in todo]
        try:
            for key, future in futures:
                try:
                    locked = future.result()
                except ReconcileError as e:
                    if not e.message.startswith(f"models.{key}:"):
                        e.message = f"models.{key}: {e.message}"  # which model, in every case
                    failures.append((key, e))
                    continue
                report.lock.models[key] = locked
                report.resolved.append(key)
        except KeyboardInterrupt:
            from .interrupt import abandon

            abandon(pool, (f for _, f in futures))
            raise
        pool.shutdown(wait=True)
        if len(failures) == 1:
            raise failures[0][1]
        if failures:
            raise ModelsFailed(failures)
    report.removed = sorted(set(old_models) - set(manifest.models))
    if limit is not None:  # an entry models.toml no longer has is `remove`'s business
        report.lock.models |= {k: old_models[k] for k in report.removed if k not in limit}
        report.removed = [k for k in report.removed if k in limit]
    check_ref_conflicts(report.lock.models.values())
    report.lock.models = dict(sorted(report.lock.models.items()))
    return report


def resolve_model(
    decl: ModelDecl, context: SourceContext, on_model: Callable[[str], None] | None = None,
    *, at: LockedModel | None = None, borrow: Callable[[LockedFile], bool] | None = None,
) -> LockedModel:
    """Resolve a declaration from its source: as it is now, or, with ``at`` (a lock's
    entry), again at that entry's pin, to see whether the source vouches for it.
    ``borrow(file)`` may put a claimed small file's object into the store from
    elsewhere (a team cache): its git blob id is checked against the source's listing."""
    from .transfer import fetch

    source = make_source(decl, context)
    claimed = {f.path: f for f in at.files} if at else {}

    def complete(lf: LockedFile) -> LockedFile:
        """Download a file the source gave no sha256 for, straight into the store."""
        if lf.type != "f" or lf.sha256:
            return lf
        if (same := _same_git_blob(lf, claimed.get(lf.path), context.store, borrow)):
            # the size too: a listing may give none (git files over 1 KiB)
            return LockedFile(**{**lf.__dict__, "sha256": same[0], "size": same[1]})
        got = fetch(source, res.pin, lf, context.store, decl.network, jobs=context.jobs,
                    stage=True)
        return LockedFile(**{**lf.__dict__, "sha256": got.sha256, "size": got.size})

    try:
        res = source.resolve_pinned(at.pin, at.files) if at else source.resolve()
        files = [
            LockedFile(path=rf.path, size=rf.size or 0, sha256=rf.sha256 or "",
                       executable=rf.executable, blob=rf.blob, lfs=rf.lfs, git_oid=rf.git_oid,
                       type=rf.type, target=rf.target, pin=rf.pin)
            for rf in res.files
        ]
        with ThreadPoolExecutor(max_workers=max(1, context.jobs)) as pool:
            files = list(pool.map(complete, files))
        signed_by = None
        if decl.signature is not None:
            context.store.commit_staged()  # the signature file, if lock just fetched it
            signed_by = check_signature(decl, files, lambda f: fetch(
                source, res.pin, f, context.store, decl.network), context.store)
    finally:
        context.store.commit_staged()  # what lock fetched is there for apply, by name
        source.close()
    if decl.ollama.name:  # shown to ollama as one GGUF: said now, not at the next apply
        from .ollama_manifest import only_gguf

        only_gguf(decl.key, [f.path for f in files if f.type == "f"])
    model_hash = treehash.tree_hash(f.entry() for f in files)
    if decl.hash and decl.hash != model_hash:
        raise IntegrityError(
            f"models.{decl.key}: hash mismatch\n  declared: {decl.hash}\n  resolved: {model_hash}",
            hint="if the new content is what you want, put the resolved hash in models.toml;"
            " nothing was installed",
        )
    locked = LockedModel(
        key=decl.key,
        name=decl.name,
        source_type=decl.source_type,
        fingerprint=decl.fingerprint(),
        hash=model_hash,
        pin=res.pin,
        files=tuple(files),
        hf=hf_link(decl, source, res, model_hash),
        ollama=res.ollama if decl.ollama.enable else None,
        signed_by=signed_by,
    )
    try:  # what a server said becomes names on disk: the same checks as a lock on read
        check_model(locked)
    except FieldError as e:
        raise SourceError(f"models.{decl.key}: the source answered with an unusable"
                          f" {e.field}: {e.message}",
                          hint="nothing was locked or installed; report it to the server's"
                          " owner if it persists") from None
    if at is None:
        from . import provenance

        provenance.record(context.store, locked)  # the source's own word, at this pin
    if on_model:
        on_model(decl.key)
    return locked


def _same_git_blob(listed: LockedFile, claimed: LockedFile | None, store: Store,
                   borrow: Callable[[LockedFile], bool] | None = None
                   ) -> tuple[str, int] | None:
    """The claimed sha256 (and the size) of a small git file, when the store's object of
    that sha256 is the very blob the source lists (same git blob id): no need to
    download it again."""
    if claimed is None or not listed.git_oid or claimed.git_oid != listed.git_oid \
            or not claimed.sha256 or claimed.size > GIT_BLOB_CHECK_MAX:
        return None
    if not store.has_object(claimed.sha256) and not (borrow and borrow(claimed)):
        return None
    try:
        data = store.object_path(claimed.sha256).read_bytes()
    except OSError:
        return None
    oid = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
    if oid != listed.git_oid or hashlib.sha256(data).hexdigest() != claimed.sha256:
        return None
    return claimed.sha256, len(data)


def hf_link(decl: ModelDecl, source: Source, res: Resolution, model_hash: str) -> HFLink | None:
    """Where the model appears in the HF cache (repo, commit, refs), fixed at lock time."""
    integ = decl.integration
    if not integ.enable:
        return None
    revision = None
    if res.hf and not (integ.org or integ.model):
        repo_id, repo_type, commit = res.hf.repo_id, res.hf.repo_type, res.hf.commit or ""
        revision = res.hf.revision
    else:
        default_org, default_model = (
            res.hf.repo_id.split("/", 1) if res.hf and "/" in res.hf.repo_id
            else source.default_hf_name()
        )
        org, model = integ.org or default_org, integ.model or default_model
        repo_id = f"{org}/{model}" if org else model
        repo_type = res.hf.repo_type if res.hf else "model"
        commit = res.hf.commit if res.hf and res.hf.commit else synthetic_commit(model_hash)
        revision = res.hf.revision if res.hf else None
    partial = bool(res.hf and not res.hf.complete and repo_id == res.hf.repo_id)
    if integ.refs:  # named in models.toml: apply may take these over from another tool
        return HFLink(repo_id, repo_type, commit, tuple(integ.refs), claim=True, partial=partial)
    if revision and not SHA_RE.match(revision):
        refs: tuple[str, ...] = (revision,)
    elif res.hf and res.hf.commit:  # a sha pin: refs/main only where nobody has one (targets.hf_cache)
        refs = ()
    else:
        refs = ("main",)
    return HFLink(repo_id, repo_type, commit, refs, partial=partial)


def synthetic_commit(model_hash: str) -> str:
    """A stable 40-hex 'commit' for sources without one, so the HF cache layout holds."""
    return hashlib.sha1(f"reconcile:{model_hash}".encode()).hexdigest()


def check_ref_conflicts(models: Iterable[LockedModel]) -> None:
    claims: dict[tuple[str, str], tuple[str, str]] = {}
    for m in models:
        if not m.hf:
            continue
        for ref in m.hf.refs:
            k = (m.hf.folder, ref)
            if k in claims and claims[k][1] != m.hf.commit:
                other = claims[k][0]
                raise ConfigError(
                    f"models '{other}' and '{m.key}' both claim ref '{ref}' of HF repo"
                    f" {m.hf.repo_id} with different commits",
                    hint="give one of them integration.huggingface.refs = [\"other-name\"],"
                    " or a different org/model",
                )
            claims[k] = (m.key, m.hf.commit)

