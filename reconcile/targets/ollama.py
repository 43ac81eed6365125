"""The ollama program's models directory: install a locked model where `ollama list` and
`ollama run` find it without pulling.

    <models>/manifests/<host>/<namespace>/<model>/<tag>   the manifest, byte for byte
    <models>/blobs/sha256-<hex>                             every layer and the config

This is the layout ollama reads (``manifest/paths.go``: the ``manifests/*/*/*/*`` glob,
``blobs/sha256-<hex>`` since ollama 0.1.x renamed ``sha256:``), where ``<models>`` is
``$OLLAMA_MODELS``, else ``~/.ollama/models`` (the Linux service's user has it under
``/usr/share/ollama/.ollama/models``). ollama lists new manifests without a restart.

Two kinds of model are installed (``Install``: what is written, however it was made):

- source.ollama: the manifest as the registry served it (a locked file) and its blobs,
  all store objects;
- any other source whose lock has exactly one ``*.gguf`` (``integration.ollama.name``):
  the image ``ollama_manifest.compose`` makes from the GGUF's header (read from the
  store object; only the header) and models.toml's template/system/parameters/license.
  The GGUF's blob is the store object, the same inode the HF cache's blob is; the
  config and the text layers, a few hundred bytes derived from models.toml and the
  header, are written into blobs/ directly. They are not store objects on purpose: the
  store holds bytes a source gave (gc keeps what a lock names, provenance says where
  each came from), and these come from no source and no lock.

What ollama does to this directory decides the order: blobs first (hard links to the
store's objects, a symlink to it where the store is on another filesystem), the
manifest last, written beside and renamed into place, so ollama never lists a model
whose blobs are missing and its startup prune (unreferenced blobs older than an hour)
never sees ours unreferenced. Nothing reconcile did not write is changed: a tag ollama
pulled or created at another version is left alone (and reported); `apply --prune`
removes a manifest only while it still holds reconcile's bytes, and a blob only when no
manifest in the directory needs it. Ownership records (``ownership.Ownership``) are kept
under the store's state/ollama/.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import LockError, StoreError
from ..gguf import GGUFHeader, read_gguf
from ..lockfile import LockedFile, LockedModel
from ..ollama_manifest import Settings, compose, only_gguf
from ..store import Store
from .base import LinkState, Target
from .ownership import (
    Ownership,
    hard_or_symlink,
    ownership_dir,
    project_owners,
    prune_empty_parents,
    symlinked_objects,
)
from .ownership import value as _value

FOLDER = "models"  # one ownership record per models directory
KIND = "ollama"
MANIFEST = "manifest.json"


def models_dir(configured: str | None) -> Path:
    """integration.ollama.modelsDir, else $OLLAMA_MODELS, else ~/.ollama/models."""
    value = configured or settings.env_value("OLLAMA_MODELS")
    return Path(value).expanduser() if value else Path.home() / ".ollama" / "models"


@dataclass(frozen=True)
class Install:
    """What one model puts in the models directory: the manifest at ``rel`` (its bytes;
    None: the store object of ``digest``), blobs that are store objects (sha256 -> size),
    and blobs written from bytes (sha256 -> bytes)."""

    rel: str
    digest: str  # "sha256:<hex>" of the manifest: what ollama calls the model's digest
    owner: str
    manifest: bytes | None = None
    linked: dict[str, int] = field(default_factory=dict)
    written: dict[str, bytes] = field(default_factory=dict)

    def sizes(self) -> dict[str, int]:
        return {**self.linked, **{sha: len(b) for sha, b in self.written.items()}}


def _manifest(model: LockedModel) -> LockedFile:
    return next(f for f in model.files if f.path == MANIFEST)


def pulled(model: LockedModel, project: str) -> Install:
    """A source.ollama model: the locked manifest and every blob it names."""
    assert model.ollama
    man = _manifest(model)
    owner = f"{project}:{model.key}:{model.ollama}@{man.sha256[:16]}:{model.store_id}"
    blobs = {f.sha256: f.size for f in model.regular_files() if f.path != MANIFEST}
    return Install(f"manifests/{model.ollama}", "sha256:" + man.sha256, owner, linked=blobs)


def gguf_owner(model: LockedModel, project: str, name: str, s: Settings) -> str:
    """Per name, GGUF and models.toml's texts (the image is a function of these three:
    the header is the GGUF's), without reading the GGUF: plan asks before it is fetched."""
    gguf = only_gguf(model.key, [f.path for f in model.regular_files()])
    sha = next(f.sha256 for f in model.regular_files() if f.path == gguf)
    texts = json.dumps([s.template, s.system, dict(s.parameters), list(s.license)],
                       sort_keys=True, default=str)
    image = hashlib.sha256(f"{sha}\n{texts}".encode()).hexdigest()[:16]
    return f"{project}:{model.key}:{name}@{image}:{model.store_id}"


def composed(model: LockedModel, store: Store, name: str, s: Settings, owner: str
             ) -> Install | None:
    """The image of the lock's one GGUF; None while the store lacks the GGUF (plan
    before the fetch: not linked yet)."""
    gguf = only_gguf(model.key, [f.path for f in model.regular_files()])
    f = next(f for f in model.regular_files() if f.path == gguf)
    if not store.has_object(f.sha256):
        return None
    image = compose(f.sha256, f.size, _header(store.object_file(f.sha256)), s)
    return Install(f"manifests/{name}", image.digest, owner, image.manifest,
                   linked={f.sha256: f.size}, written=image.small_blobs())


@functools.lru_cache(maxsize=32)
def _header(path: str) -> GGUFHeader:
    """Store objects are named by content: one header read per object and process."""
    return read_gguf(path)


def _digest_of(path: Path) -> str | None:
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None


def _foreign(mdir: Path, rel: str, have: str | None, want: str, own: Ownership) -> str | None:
    """Why the manifest path is not reconcile's to write: another version that reconcile
    did not put there (an `ollama pull` or `ollama create` of the same name)."""
    if have is not None and have != want and not own.holds(rel, have):
        return f"{mdir / rel} holds another version (ollama's own pull?)"
    return None


def link_state(mdir: Path, inst: Install, store: Store) -> LinkState:
    """Cheap: a manifest of a few KiB is read, blobs are only stat'ed."""
    have = _digest_of(mdir / inst.rel)
    own = Ownership(store, mdir, FOLDER, KIND)
    if conflict := _foreign(mdir, inst.rel, have, inst.digest, own):
        return LinkState(True, [conflict])
    if have != inst.digest or (inst.rel in own.data and inst.owner not in own.data[inst.rel]):
        return LinkState(False)
    for sha, size in inst.sizes().items():
        try:
            if os.stat(mdir / "blobs" / f"sha256-{sha}").st_size != size:
                return LinkState(False)
        except FileNotFoundError:
            return LinkState(False)
    return LinkState(True)


def link(mdir: Path, inst: Install, store: Store) -> list[str]:
    """Install the model; returns conflicts left alone (a tag someone else wrote)."""
    rel = inst.rel
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
            have = _digest_of(mdir / rel)
            if conflict := _foreign(mdir, rel, have, inst.digest, own):
                return [conflict]
            for sha, size in sorted(inst.sizes().items()):
                _ensure_blob(mdir, sha, size, inst, store, own)
            if have == inst.digest:
                if rel in own.data:
                    own.add(rel, inst.owner)
                return []  # ollama pulled the same bytes: theirs, and already right
            data = inst.manifest
            if data is None:
                data = store.object_path(inst.digest[7:]).read_bytes()
            _write(mdir, rel, data)
            own.create(rel, inst.owner, inst.digest, replace=True)
        finally:
            own.save()
    return []


def _ensure_blob(mdir: Path, sha: str, size: int, inst: Install, store: Store,
                 own: Ownership) -> None:
    rel = f"blobs/sha256-{sha}"
    path = mdir / rel
    try:
        if os.stat(path).st_size == size:  # ours already, or ollama's: the same bytes
            if rel in own.data:
                own.add(rel, inst.owner)
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
    if sha in inst.written:
        _write_file(tmp, inst.written[sha])
    else:
        hard_or_symlink(store.object_path(sha), tmp)
        os.utime(tmp, follow_symlinks=False)
    os.replace(tmp, path)
    own.create(rel, inst.owner, _value(path) or "", replace=True)


def _tmp(mdir: Path) -> Path:
    """A name beside, never inside manifests/ (ollama's glob would list it as a tag)."""
    fd, name = tempfile.mkstemp(dir=mdir, prefix=".reconcile-tmp-")
    os.close(fd)
    os.unlink(name)
    return Path(name)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o644)


def _write(mdir: Path, rel: str, data: bytes) -> None:
    tmp = _tmp(mdir)
    _write_file(tmp, data)
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

    def _decl(self, model: LockedModel) -> Any:
        return getattr(self.ctx.decls.get(model.key), "ollama", None)

    def _gguf(self, model: LockedModel) -> tuple[str, Settings] | None:
        """(name, settings) when models.toml shows this model's GGUF to ollama."""
        d = self._decl(model)
        if model.ollama is not None or d is None or not d.enable or not d.name:
            return None
        return d.name, Settings(d.template, d.system, d.parameters, d.license)

    def wants(self, model: LockedModel) -> bool:
        """A model whose lock entry names its manifest (source.ollama), or one whose GGUF
        models.toml names (integration.ollama.name)."""
        return model.ollama is not None or self._gguf(model) is not None

    def where(self, model: LockedModel) -> Path | None:
        if not self.wants(model):
            return None
        d = self._decl(model)
        return models_dir(d.models_dir if d is not None else None)

    def _install(self, model: LockedModel) -> Install | None:
        """None: a GGUF the store does not hold yet."""
        if (named := self._gguf(model)) is None:
            return pulled(model, self.ctx.project)
        return composed(model, self.ctx.store, *named, self.owner(model))

    def state(self, model: LockedModel, where: Path) -> LinkState:
        inst = self._install(model)
        return LinkState(False) if inst is None else link_state(where, inst, self.ctx.store)

    def link(self, model: LockedModel, where: Path) -> list[str]:
        inst = self._install(model)
        if inst is None:  # apply links after the fetch: the object is there by now
            raise LockError(f"models.{model.key}: the GGUF is not in the store",
                            hint="run `reconcile apply` again")
        return link(where, inst, self.ctx.store)

    def owner(self, model: LockedModel) -> str:
        if (named := self._gguf(model)) is None:
            return pulled(model, self.ctx.project).owner
        return gguf_owner(model, self.ctx.project, *named)

    def owners(self) -> dict[str, Path]:
        return owners_of_project(self.ctx.store, self.ctx.project)

    def unlink(self, owner: str, where: Path) -> list[Path]:
        return unlink(where, owner, self.ctx.store)

    def held_objects(self) -> set[str]:
        """GGUFs a models directory on another filesystem links to by symlink."""
        return symlinked_objects(self.ctx.store, KIND, FOLDER)

    def describe(self, model: LockedModel, where: Path) -> str:
        named = self._gguf(model)
        return f"{where}/manifests/{named[0] if named else model.ollama}"

    def unlink_note(self, note: str, where: Path) -> str:
        return f"{note} from ollama"

    def conflict_note(self, what: str) -> str:
        return f"{what}: left alone; `ollama rm` it to let reconcile install the locked version"


TARGET = Ollama
