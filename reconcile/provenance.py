"""Which entries of models.lock the source itself vouches for.

models.lock arrives in pull requests. An entry whose files reproduce its `hash` is
only self-consistent: anyone can write the sha256 of an object that already sits in
the shared store or the team cache (objects there are named by content, so any bytes
can be put under any name in a team cache) beside a trusted repository's pin, and
recompute the hash. The store and the cache then hand over those bytes without the
source ever being asked. So a locked model is installed only when one of these holds:

* the store (or a peer store: the system store) has a record that the source gave this
  tree at this pin: written when `lock` resolved it there, or when `apply` asked the
  source (below) once before;
* models.toml pins its content (`hash = "sha256-…"`), or its signature verifies
  against the lock's file list (checked before anything is fetched);
* the source, asked at the pin, gives the same tree: its listing (HF tree API, git
  tree and LFS pointers, registry manifest by digest), small files by their git blob
  id, and, where a source lists no sha256 (a URL, MLflow), the bytes themselves.

Records are keyed by (source type, pin, hash): one file per vouched tree, so a no-op
`apply` costs one `stat` per model and asks no server.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import IntegrityError, LockError, NotFound, ReconcileError
from .fsutil import atomic_write_text
from .lockfile import LockedModel
from .store import Store


def _record_path(store: Store, source_type: str, pin: dict[str, Any], tree_hash: str) -> Path:
    key = hashlib.sha256(json.dumps([source_type, pin, tree_hash], sort_keys=True,
                                    separators=(",", ":")).encode()).hexdigest()
    return store.state / "vouched" / key[:2] / key


def record(store: Store, m: LockedModel) -> None:
    """The source said: at ``m.pin`` the tree is ``m.hash``."""
    try:
        atomic_write_text(_record_path(store, m.source_type, m.pin, m.hash), m.hash + "\n")
    except OSError:
        pass  # a read-only store (another user's): asked again next time, nothing wrong


def recorded(store: Store, m: LockedModel, peers: list[Path] = ()) -> bool:
    """This store's record, or a peer store's (RECONCILE_PEER_STORES: stores on this
    machine the user chose to take objects from, such as the system store)."""
    return any(_record_path(s, m.source_type, m.pin, m.hash).is_file()
               for s in (store, *(Store(p) for p in peers)))


def vouch(store: Store, manifest: Any, models: list[LockedModel], *, offline: bool,
          peers: list[Path] = (),
          resolve_at_pin: Callable[[Any, LockedModel], LockedModel],
          needs_network: Callable[[Any], bool], jobs: int = 4) -> list[str]:
    """Check every model that nothing vouches for yet by asking its source at the pin
    (``jobs`` sources at once: each is a listing's round trips); raise IntegrityError
    naming the first model whose lock entry the source contradicts, LockError when
    offline leaves some unvouched. Returns the keys asked."""
    from concurrent.futures import ThreadPoolExecutor

    todo, unreachable = [], []
    for m in models:
        decl = manifest.models[m.key]
        if recorded(store, m, peers) or (decl.hash and decl.hash == m.hash) \
                or (decl.signature is not None and not decl.signature.ignore):
            continue  # a signature was checked against these very files before this
            # (one that leaves files out vouches for none of those: the source is asked)
        if offline and needs_network(decl):
            unreachable.append(m.key)
            continue
        todo.append((decl, m))
    if unreachable:
        raise LockError(f"--offline: nothing vouches for models.lock's entry of"
                        f" {', '.join(unreachable)} on this machine (it was not locked or"
                        " checked here, and models.toml pins no hash for it)",
                        hint="run `reconcile apply` once with network access (the source is"
                        " asked for its listing, not the weights), or pin `hash = \"…\"` in"
                        " models.toml, or sign the model")
    if not todo:
        return []

    def ask(item: tuple[Any, LockedModel]) -> LockedModel | ReconcileError:
        try:
            return resolve_at_pin(*item)
        except ReconcileError as e:
            return e

    with ThreadPoolExecutor(max_workers=max(1, min(jobs, len(todo)))) as pool:
        answers = list(pool.map(ask, todo))
    for (_decl, m), truth in zip(todo, answers, strict=True):
        _judge(store, m, truth)
    return [m.key for _d, m in todo]


def _judge(store: Store, m: LockedModel, truth: LockedModel | ReconcileError) -> None:
    """Record the entry the source confirmed; raise for one it could not or did not."""
    if isinstance(truth, ReconcileError):
        raise type(truth)(f"models.{m.key}: models.lock's entry could not be checked with its"
                          f" source: {truth.message}", hint=_unchecked_hint(m, truth)) from None
    if truth.hash != m.hash:
        raise IntegrityError(f"models.{m.key}: models.lock does not match what the source"
                             f" serves at {_pin_text(m)}: {difference(m, truth)}",
                             hint="nothing was installed; if models.lock came in a pull"
                             " request, do not merge it; `reconcile lock --upgrade"
                             f" {m.key}` writes what the source serves")
    record(store, m)


def _unchecked_hint(m: LockedModel, e: ReconcileError) -> str:
    """Waiting helps a source that did not answer; not one that answered that the pin is
    gone (a rewritten branch, a deleted version): then the source's own hint, or the
    relock."""
    if isinstance(e, NotFound):
        return e.hint or (f"the source no longer serves {_pin_text(m)}; `reconcile lock"
                          f" --upgrade {m.key}` pins what it serves now (review the change)")
    return ("the source is asked once per new lock entry (its listing at the pin, not the"
            " weights); retry when it answers, or pin `hash = \"…\"` in models.toml to"
            " install from the store or team cache without it")


def difference(claim: LockedModel, truth: LockedModel) -> str:
    """The first few paths where the lock and the source disagree, for the message."""
    want = {f.path: f.entry() for f in truth.files}
    have = {f.path: f.entry() for f in claim.files}
    diffs = []
    for path in sorted(set(want) | set(have)):
        if path not in want:
            diffs.append(f"{path} (the source has no such file)")
        elif path not in have:
            diffs.append(f"{path} (missing from the lock)")
        elif want[path] != have[path]:
            diffs.append(f"{path} (lock: {_short(have[path])}, source: {_short(want[path])})")
    more = f" and {len(diffs) - 3} more" if len(diffs) > 3 else ""
    return ", ".join(diffs[:3]) + more if diffs else "the tree differs"


def _short(entry: Any) -> str:
    sha = getattr(entry, "sha256", "") or ""
    return f"{getattr(entry, 'size', '?')} bytes, sha256 {sha[:12]}"


def _pin_text(m: LockedModel) -> str:
    for k in ("commit", "digest", "version", "etag", "url"):
        if k in m.pin:
            return f"{k} {str(m.pin[k])[:40]}"
    return "its pin"
