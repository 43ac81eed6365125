"""The ollama program's models directory: install a locked model where `ollama list` and
`ollama run` find it without pulling.

    <models>/manifests/<host>/<namespace>/<model>/<tag>   the manifest, byte for byte
    <models>/blobs/sha256-<hex>                             every layer and the config

This is the layout ollama reads (``manifest/paths.go``: the ``manifests/*/*/*/*`` glob,
``blobs/sha256-<hex>`` since ollama 0.1.x renamed ``sha256:``), where ``<models>`` is
``$OLLAMA_MODELS``, else ``~/.ollama/models`` (the Linux service's user has it under
``/usr/share/ollama/.ollama/models``). ollama lists new manifests without a restart.

What ollama does to this directory decides the order: blobs first (hard links to the
store's objects, else copies), the manifest last, written beside and renamed into
place, so ollama never lists a model whose blobs are missing and its startup prune
(unreferenced blobs older than an hour) never sees ours unreferenced. Nothing
reconcile did not write is changed: a tag ollama pulled at another version is left
alone (and reported); `apply --prune` removes a manifest only while it still holds
reconcile's bytes, and a blob only when no manifest in the directory needs it.
Ownership records (``ownership.Ownership``) are kept under the store's state/ollama/.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from .. import settings
from ..errors import StoreError
from ..lockfile import LockedFile, LockedModel
from ..store import Store, link_or_copy
from .base import LinkState, Target
from .ownership import Ownership, ownership_dir, project_owners, prune_empty_parents
from .ownership import value as _value

FOLDER = "models"  # one ownership record per models directory
KIND = "ollama"
MANIFEST = "manifest.json"


def models_dir(configured: str | None) -> Path:
    """integration.ollama.modelsDir, else $OLLAMA_MODELS, else ~/.ollama/models."""
    value = configured or settings.env_value("OLLAMA_MODELS")
    return Path(value).expanduser() if value else Path.home() / ".ollama" / "models"


def owner_id(model: LockedModel, project: str) -> str:
    return f"{project}:{model.key}:{model.ollama}@{_manifest(model).sha256[:16]}:{model.store_id}"


def _manifest(model: LockedModel) -> LockedFile:
    return next(f for f in model.files if f.path == MANIFEST)


def _blobs(model: LockedModel) -> dict[str, int]:
    """sha256 -> size of every blob the manifest names (the config and each layer)."""
    return {f.sha256: f.size for f in model.regular_files() if f.path != MANIFEST}


def _digest_of(path: Path) -> str | None:
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _foreign(mdir: Path, rel: str, have: str | None, want: str, own: Ownership) -> str | None:
    """Why the manifest path is not reconcile's to write: another version that reconcile
    did not put there (an `ollama pull` of the same tag)."""
    if have is not None and have != want and not own.holds(rel, have):
        return f"{mdir / rel} holds another version (ollama's own pull?)"
    return None


def link_state(mdir: Path, model: LockedModel, store: Store, project: str) -> LinkState:
    """Cheap: a manifest of a few KiB is read, blobs are only stat'ed."""
    assert model.ollama
    rel = f"manifests/{model.ollama}"
    want = "sha256:" + _manifest(model).sha256
    have = _digest_of(mdir / rel)
    own = Ownership(store, mdir, FOLDER, KIND)
    if conflict := _foreign(mdir, rel, have, want, own):
        return LinkState(True, [conflict])
    if have != want or (rel in own.data and owner_id(model, project) not in own.data[rel]):
        return LinkState(False)
    for sha, size in _blobs(model).items():
        try:
            if os.stat(mdir / "blobs" / f"sha256-{sha}").st_size != size:
                return LinkState(False)
        except FileNotFoundError:
            return LinkState(False)
    return LinkState(True)


def link(mdir: Path, model: LockedModel, store: Store, project: str) -> list[str]:
    """Install the model; returns conflicts left alone (a tag someone else wrote)."""
    assert model.ollama
    owner = owner_id(model, project)
    rel = f"manifests/{model.ollama}"
    try:
        (mdir / "blobs").mkdir(parents=True, exist_ok=True)
        (mdir / rel).parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StoreError(f"cannot write ollama's models directory {mdir}: {e.strerror}",
                         hint="set integration.ollama.modelsDir (or OLLAMA_MODELS) to the"
                         " directory your ollama server uses, and make it writable") from None
    with store.lock("ollama-" + ownership_dir(store, mdir, KIND).name):
        own = Ownership(store, mdir, FOLDER, KIND)
        try:
            want = "sha256:" + _manifest(model).sha256
            have = _digest_of(mdir / rel)
            if conflict := _foreign(mdir, rel, have, want, own):
                return [conflict]
            for sha, size in sorted(_blobs(model).items()):
                _ensure_blob(mdir, sha, size, store, own, owner)
            if have == want:
                if rel in own.data:
                    own.add(rel, owner)
                return []  # ollama pulled the same bytes: theirs, and already right
            _write(mdir, rel, store.object_path(_manifest(model).sha256).read_bytes())
            own.create(rel, owner, want, replace=True)
        finally:
            own.save()
    return []


def _ensure_blob(mdir: Path, sha: str, size: int, store: Store, own: Ownership,
                 owner: str) -> None:
    rel = f"blobs/sha256-{sha}"
    path = mdir / rel
    try:
        if os.stat(path).st_size == size:  # ours already, or ollama's: the same bytes
            if rel in own.data:
                own.add(rel, owner)
            else:
                os.utime(path)  # fresh: ollama's prune spares recent blobs
            return
        if not own.holds(rel, _value(path) or ""):
            raise StoreError(f"{path} exists with another size: a broken blob ollama wrote;"
                             " left alone", hint="`ollama rm` the model that uses it, or"
                             " delete that file, then apply again")
    except FileNotFoundError:
        pass
    tmp = _tmp(mdir)
    link_or_copy(store.object_path(sha), tmp)
    os.utime(tmp)
    os.replace(tmp, path)
    own.create(rel, owner, _value(path) or "", replace=True)


def _tmp(mdir: Path) -> Path:
    """A name beside, never inside manifests/ (ollama's glob would list it as a tag)."""
    fd, name = tempfile.mkstemp(dir=mdir, prefix=".reconcile-tmp-")
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _write(mdir: Path, rel: str, data: bytes) -> None:
    tmp = _tmp(mdir)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, 0o644)
    os.replace(tmp, mdir / rel)


def owners_of_project(store: Store, project: str) -> dict[str, Path]:
    """owner id -> models directory, for every ollama install of this project."""
    return project_owners(store, KIND, project, FOLDER)


def unlink(mdir: Path, owner: str, store: Store) -> list[Path]:
    """Drop ``owner``; remove what no owner needs and still holds reconcile's bytes, and
    no manifest in the directory names."""
    removed: list[Path] = []
    with store.lock("ollama-" + ownership_dir(store, mdir, KIND).name):
        own = Ownership(store, mdir, FOLDER, KIND)
        freed = own.release(owner)
        for rel in sorted(r for r in freed if r.startswith("manifests/")):
            path = mdir / rel
            if own.written.get(rel) == _digest_of(path):  # still reconcile's bytes
                path.unlink(missing_ok=True)
                removed.append(path)
                prune_empty_parents(path.parent, mdir / "manifests")
            own.forget(rel)
        needed = _referenced(mdir)
        for rel in sorted(r for r in freed if r.startswith("blobs/")):
            path = mdir / rel
            if rel[len("blobs/sha256-"):] not in needed and own.written.get(rel) == _value(path):
                path.unlink(missing_ok=True)
                removed.append(path)
            own.forget(rel)
        own.save()
    return removed


def _referenced(mdir: Path) -> set[str]:
    """sha256 hex of every blob some manifest in the directory names (ollama's too)."""
    out: set[str] = set()
    for path in mdir.glob("manifests/*/*/*/*"):
        try:
            doc = json.loads(path.read_bytes())
            descs = [doc.get("config") or {}, *(doc.get("layers") or [])]
        except (OSError, ValueError, AttributeError):
            continue
        for d in descs:
            digest = d.get("digest", "") if isinstance(d, dict) else ""
            if isinstance(digest, str) and digest.startswith("sha256:"):
                out.add(digest[7:])
    return out


class Ollama(Target):
    """integration.ollama: where `ollama list` and `ollama run` find the model."""

    name = "ollama"
    node = "ollama:"  # link:ollama:KEY
    hold_on_conflict = True  # a tag ollama pulled at another version: the model waits

    def wants(self, model: LockedModel) -> bool:
        """A model whose lock entry names its manifest (source.ollama); another way to
        give a model a manifest joins here."""
        return model.ollama is not None

    def where(self, model: LockedModel) -> Path | None:
        if not self.wants(model):
            return None
        decl = self.ctx.decls.get(model.key)
        return models_dir(decl.ollama.models_dir if decl is not None else None)

    def state(self, model: LockedModel, where: Path) -> LinkState:
        return link_state(where, model, self.ctx.store, self.ctx.project)

    def link(self, model: LockedModel, where: Path) -> list[str]:
        return link(where, model, self.ctx.store, self.ctx.project)

    def owner(self, model: LockedModel) -> str:
        return owner_id(model, self.ctx.project)

    def owners(self) -> dict[str, Path]:
        return owners_of_project(self.ctx.store, self.ctx.project)

    def unlink(self, owner: str, where: Path) -> list[Path]:
        return unlink(where, owner, self.ctx.store)

    def describe(self, model: LockedModel, where: Path) -> str:
        return f"{where}/manifests/{model.ollama}"

    def unlink_note(self, note: str, where: Path) -> str:
        return f"{note} from ollama"

    def conflict_note(self, what: str) -> str:
        return f"{what}: left alone; `ollama rm` it to let reconcile install the locked version"


TARGET = Ollama
