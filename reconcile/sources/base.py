"""The one interface every source implements.

A source answers two questions, and nothing else:

* ``resolve()``: what exactly is this declaration *now*? → a ``Resolution``: an
  immutable pin (commit, version id, digest …) and the file list, with each file's
  size and sha256 where the source knows them without downloading.
* ``open(file, start, end)``: give me these bytes of that pinned file, as a stream.

Everything else (retries, resume, parallel ranges, hashing, the store, the lock,
the HF cache) is shared code that only sees this interface, so adding a source never
touches the planner. Sources raise ``Transient`` for failures worth retrying.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol

from ..errors import Restart, SourceError, Transient  # noqa: F401 - part of this interface
from ..lockfile import LockedFile


class Declaration(Protocol):
    """What a source reads of its model's declaration (``config.ModelDecl`` is one). A
    protocol, so that a source is written against what it reads, not the whole reader."""

    key: str
    name: str
    source: dict[str, Any]
    network: Any
    auth: Any


@dataclass(frozen=True)
class RemoteFile:
    """A file as a source lists it. ``sha256`` None means: hash it at lock time."""

    path: str
    size: int | None = None
    sha256: str | None = None
    executable: bool = False
    blob: str | None = None  # the source's own content id (HF etag: git oid or LFS sha256)
    lfs: bool = False  # stored out of git (HF: LFS/Xet); decides trees/<sha>.json fields
    git_oid: str | None = None
    type: str = "f"  # f | l (symlink) | d (empty directory)
    target: str | None = None  # symlink target
    pin: dict[str, Any] | None = field(default=None, hash=False)  # this file's own revision


@dataclass(frozen=True)
class HFIdentity:
    """Where a model lives in the HF cache, when the source knows it natively."""

    repo_id: str
    repo_type: str = "model"
    commit: str | None = None
    revision: str | None = None
    # False when the model is a selection of the repo's files: huggingface_hub reads
    # trees/<commit>.json as the whole repo's listing, so none is written then
    complete: bool = True


@dataclass(frozen=True)
class Resolution:
    pin: dict[str, Any]  # immutable coordinates; never a secret
    files: list[RemoteFile]
    hf: HFIdentity | None = None
    ollama: str | None = None  # <host>/<namespace>/<model>/<tag>, for integration.ollama


class Unpacked:
    """Archives in the store, each unpacked once per source (the safe extraction, into
    the store's tmp/) and removed when the source closes; the members become files of
    the model. Shared by the url source's archives and OCI tar layers."""

    def __init__(self, store: Any) -> None:
        import threading

        self.store = store
        self.dirs: dict[str, Any] = {}
        self.lock = threading.Lock()

    def root(self, sha256: str, label: str) -> Any:
        """Where the store object ``sha256`` (an archive) is unpacked."""
        import os
        import tempfile
        from pathlib import Path

        from ..archive import safe_extract

        with self.lock:
            if sha256 not in self.dirs:
                dest = Path(tempfile.mkdtemp(dir=self.store.tmp, prefix="unpack-"))
                os.rmdir(dest)
                safe_extract(self.store.object_path(sha256), dest, label=label)
                self.dirs[sha256] = dest
            return self.dirs[sha256]

    def files(self, root: Any, pin: dict[str, Any] | None = None) -> list[RemoteFile]:
        """Every member under ``root`` as a file (its bytes put into the store), a link
        or an empty directory, each with ``pin``."""
        import os

        from ..treehash import scan_tree

        out = []
        for e in scan_tree(root):
            if e.type == "f":
                self.store.put_file(root / e.path, e.sha256)
                out.append(RemoteFile(e.path, e.size, e.sha256, e.executable, pin=pin))
            elif e.type == "l":
                out.append(RemoteFile(e.path, type="l", target=os.readlink(root / e.path),
                                      pin=pin))
            elif not any(True for _ in (root / e.path).iterdir()):
                out.append(RemoteFile(e.path, type="d", pin=pin))
        return out

    def close(self) -> None:
        import shutil

        for d in self.dirs.values():
            shutil.rmtree(d, ignore_errors=True)


class Source(ABC):
    """Base class; concrete sources set ``type`` and ``OPTIONS`` (their models.toml keys)."""

    type: ClassVar[str]
    OPTIONS: ClassVar[dict[str, Any]]
    supports_ranges: ClassVar[bool] = True
    # where credentials come from when not from models.toml's auth (then auth is refused)
    own_credentials: ClassVar[str | None] = None
    needs_network: ClassVar[bool] = True  # False: apply --offline may still fetch from it
    hf_cache: ClassVar[bool] = True  # linked into the HF cache unless models.toml says not
    # the target whose place `reconcile path` and the Python API give (a target's name in
    # reconcile.targets, or "store": the store tree), unless models.toml declares one
    # that gives paths (integration.directory)
    path_target: ClassVar[str] = "huggingface"

    def __init__(self, decl: Declaration, context: Any) -> None:
        self.decl = decl
        self.options = decl.source
        self.context = context

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        """Normalise options after the generic type check; raise ValueError('key: msg')."""
        return opts

    @classmethod
    def check_pin(cls, pin: dict[str, Any], options: dict[str, Any]) -> None:
        """Refuse a pin (from a lock, untrusted) that disagrees with its declaration or
        cannot be used safely; raise ValueError('key: msg'). The pin says where bytes
        come from, so a hand-edited one must not point anywhere models.toml does not."""
        for k, v in pin.items():
            if k in options and isinstance(options[k], str | int | bool) and options[k] != v:
                raise ValueError(f"{k}: {v!r} is not what models.toml declares"
                                 f" ({options[k]!r})")

    @abstractmethod
    def resolve(self) -> Resolution:
        """Pin the declaration and list its files (network allowed)."""

    def resolve_pinned(self, pin: dict[str, Any], files: Any = ()) -> Resolution:
        """The declaration resolved again at a lock's ``pin``, not at what its branch or
        tag names now: the source's own word on a locked tree (see provenance). Sources
        whose revisions move override it; for the rest, resolving again is that question.
        ``files``: the lock's claim, for a source that keeps no listing of the past (S3)
        but can answer for each locked file's own revision."""
        return self.resolve()

    def _resolve_with(self, **options: Any) -> Resolution:
        """resolve() with some options replaced (a pinned revision), the declaration's
        own left as they are."""
        saved = self.options
        self.options = {k: v for k, v in {**saved, **options}.items() if v is not None}
        try:
            return self.resolve()
        finally:
            self.options = saved

    @abstractmethod
    def open(self, pin: dict[str, Any], file: LockedFile, start: int = 0,
             end: int | None = None) -> Iterator[bytes]:
        """Stream bytes [start, end) of a pinned file; end None = to the end."""

    def default_hf_name(self) -> tuple[str, str]:
        """(org, model) for the HF cache when integration.huggingface does not say."""
        return ("reconcile", self.decl.name)

    def entity(self, pin: dict[str, Any], file: LockedFile) -> str | None:
        """What identifies the bytes behind ``pin`` and ``file`` (an ETag, a commit, a
        version id), recorded with a partial download so it is resumed only onto the same
        entity; None when the source cannot tell (then a partial is resumed only when its
        sha256 is known)."""
        return None

    def refresh_credentials(self) -> bool:
        """Called once when a server refuses a transfer (401/403) midway: renew what
        expires (a token file rotated by a sidecar, a registry token, a presigned URL).
        True when something changed and the request is worth one more try."""
        return False

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""


class HttpSource(Source):
    """A source that speaks HTTP through the shared transport (``http``, ``transport``):
    one client built on first use, one set of credentials, read again once when a
    server refuses them midway."""

    def __init__(self, decl: Declaration, context: Any) -> None:
        super().__init__(decl, context)
        self._client: Any = None
        self._credentials: Any = None

    def credential_fallbacks(self) -> list[Any]:
        """Where this source looks for a token when ``auth`` names none."""
        return []

    @property
    def credentials(self) -> Any:
        if self._credentials is None:
            from ..auth import Credentials

            self._credentials = Credentials(self.decl.auth, *self.credential_fallbacks())
        return self._credentials

    @property
    def client(self) -> Any:
        if self._client is None:
            from ..http import make_client

            self._client = make_client(self.decl.network)
        return self._client

    def refresh_credentials(self) -> bool:
        return self._credentials is not None and self._credentials.refresh()

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
