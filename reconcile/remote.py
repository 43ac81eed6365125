"""The team cache: store objects shared through storage a team already runs.

A bucket, a directory (an NFS mount works the same) or an OCI registry holds objects by
their sha256, so CI runners and colleagues fill their stores from it instead of the Hub.
reconcile runs no server: the storage is the distributed engine, the lock is the index.

Layout in a bucket (under its prefix) or a directory:

    objects/sha256/<hex>     a file's bytes, named by their sha256
    models/<store-id>.lock   one model's lock entry (a models.lock of that model alone),
                             written after all of its objects: its presence means complete

In a registry repository: blobs ``sha256:<hex>``, and per model an OCI manifest tagged
``<store-id>`` whose layers are its objects (annotated with their paths) and whose config
is the lock entry; a registry collects blobs that no manifest names, so each model keeps
its own.

Everything read from a cache is untrusted: it streams through the same transfer code as
a source, checked against the lock's sha256; a bad object is reported and fetched from
the model's source instead.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from .config import CACHE_NETWORK, AuthConfig, CacheConfig, NetworkConfig, check_cache_url
from .errors import (
    IntegrityError,
    Mismatch,
    NotFound,
    ReconcileError,
    SourceError,
    Transient,
)
from .lockfile import Lock, LockedFile, LockedModel, dumps
from .sources.base import Source
from .sources.distribution import Registry, RegistrySource

PART = 16 << 20  # S3 multipart parts and registry upload chunks: bounded memory per upload
SAMPLE = 64 << 10  # bytes compared at each of an object's sample points on push
MODEL_TYPE = "application/vnd.reconcile.model.v1"
ENTRY_TYPE = "application/vnd.reconcile.lock-entry.v1+toml"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


class CacheError(ReconcileError):
    """The team cache refused or lacks what was asked of it."""


def object_key(sha256: str) -> str:
    return f"objects/sha256/{sha256}"


def model_tag(m: LockedModel) -> str:
    """The model's name in a cache: its store id (hash + name), as a registry tag allows."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", m.store_id)[:128]


def entry_text(m: LockedModel) -> str:
    return dumps(Lock(models={m.key: m}))


@dataclass(frozen=True)
class _Decl:
    """A source declaration for the cache's own reader (sources read nothing else)."""

    source: dict[str, Any]
    network: NetworkConfig = CACHE_NETWORK
    auth: AuthConfig = field(default_factory=AuthConfig)
    key: str = "team cache"
    name: str = "cache"


@dataclass
class PushReport:
    uploaded: int = 0
    present: int = 0
    bytes_sent: int = 0
    models: int = 0
    replaced: list[str] = field(default_factory=list)  # objects whose cached copy was bad


def sample_ranges(size: int) -> list[tuple[int, int]]:
    """Where push compares a present object with the store's: its start, middle and end
    (a truncated, zeroed or overwritten copy differs there; ``--verify`` reads it all)."""
    if size <= 3 * SAMPLE:
        return [(0, size)]
    mid = (size - SAMPLE) // 2
    return [(0, SAMPLE), (mid, mid + SAMPLE), (size - SAMPLE, size)]


class Remote(ABC):
    """One team cache. ``source`` streams objects (a file whose path is its object key);
    the rest are existence checks and uploads."""

    def __init__(self, url: str, push: bool) -> None:
        self.url = url
        self.push_allowed = push
        self.source: Source
        self.dead: str | None = None  # why the cache was given up on for this run
        self.warnings: list[str] = []
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.corrupt: dict[str, str] = {}  # sha256 -> why the cache's copy was refused

    # --- reading ----------------------------------------------------------------------

    def fetch(self, file: LockedFile, store: Any, progress: Any = None, jobs: int = 1,
              stage: bool = True) -> Any:
        """The object of ``file`` into the store from the cache, checked against its
        sha256; None when the cache lacks it, holds a bad copy (reported once) or does
        not answer (then it is not asked again this run)."""
        from .transfer import Oversized, fetch

        if self.dead:
            return None
        cached = replace(file, path=object_key(file.sha256), pin=None)
        counted: list[int] = []  # append is atomic: parallel ranges report from threads

        def counting(n: int) -> None:
            counted.append(n)
            progress(n)

        try:
            got = fetch(self.source, {}, cached, store, self.source.decl.network,
                        counting if progress else None, jobs=jobs, stage=stage)
        except (IntegrityError, NotFound, Transient, SourceError, OSError) as e:
            if counted:
                progress(-sum(counted))  # the source's bytes are counted next, once
            if isinstance(e, Oversized):
                self._warn(f"team cache {self.url}: {object_key(file.sha256)} ({file.path})"
                           f" holds more than the {file.size} bytes locked for it; cut off"
                           " there, skipped, fetched from the model's source")
            elif isinstance(e, IntegrityError):
                self.corrupt[file.sha256] = self._corrupt_why(file, e)
                self._warn(f"team cache {self.url}: {object_key(file.sha256)} ({file.path})"
                           f" is corrupt ({self.corrupt[file.sha256]}); skipped, fetched from"
                           " the model's source")
            elif isinstance(e, NotFound):
                with self._lock:
                    self.misses += 1
            else:
                self.give_up(e)
            return None
        with self._lock:
            self.hits += 1
        return got

    @staticmethod
    def _corrupt_why(file: LockedFile, e: IntegrityError) -> str:
        """What the cache's copy is, in the cache's words: the transfer's own message
        speaks of "the source", which is the model's, not this."""
        if isinstance(e, Mismatch):
            return (f"the team cache's copy hashes to {e.sha256} ({e.size} bytes); the lock"
                    f" expects {file.sha256}")
        return e.message

    def give_up(self, why: object) -> None:
        """Not asked again this run (once warned): the models' sources take over."""
        with self._lock:
            if self.dead is None:
                self.dead = str(why)
                self.warnings.append(f"team cache {self.url} did not answer ({why});"
                                     " fetching from the models' sources")

    def _warn(self, text: str) -> None:
        with self._lock:
            self.warnings.append(text)

    @abstractmethod
    def state(self, sha256: str, size: int) -> str:
        """What the cache holds under the object's name: "absent"; "wrong" (another size,
        or a checksum the storage keeps that is not this one); "vouched" (the storage
        states this sha256 itself, an S3 checksum); "sized" (the size is right, the
        bytes unseen: push compares them, readers check them)."""

    def has_object(self, sha256: str, size: int) -> bool:
        """Whether the cache holds the whole object (its size checked; its bytes are
        checked when read)."""
        return self.state(sha256, size) in ("vouched", "sized")

    def _read(self, f: LockedFile, start: int, end: int) -> bytes:
        """Bytes [start, end) of the cache's copy of ``f`` (empty when it is gone)."""
        cached = replace(f, path=object_key(f.sha256), pin=None)
        try:
            return b"".join(bytes(c) for c in self.source.open({}, cached, start, end))
        except (NotFound, IntegrityError, SourceError, Transient, OSError):
            return b""

    def holds(self, f: LockedFile, local: Path, verify: bool = False) -> bool:
        """Whether the cache's copy of ``f`` is right: its stored checksum when the storage
        keeps one, else its size and sample ranges compared with the store's own bytes;
        ``verify``: all of its bytes hashed (a corrupt copy that pull reported, whatever
        it differs in)."""
        return self._checked(f, local, self.state(f.sha256, f.size), verify)

    def _checked(self, f: LockedFile, local: Path, state: str, verify: bool) -> bool:
        if state in ("absent", "wrong"):
            return False
        if verify:
            return self._hashes_to(f)
        if state == "vouched":
            return True
        with open(local, "rb") as mine:
            for start, end in sample_ranges(f.size):
                mine.seek(start)
                if self._read(f, start, end) != mine.read(end - start):
                    return False
        return True

    def _hashes_to(self, f: LockedFile) -> bool:
        h, n = hashlib.sha256(), 0
        cached = replace(f, path=object_key(f.sha256), pin=None)
        try:
            for chunk in self.source.open({}, cached, 0, None):
                h.update(chunk)
                n += len(chunk)
                if n > f.size:
                    return False
        except (NotFound, IntegrityError, SourceError, Transient, OSError):
            return False
        return n == f.size and h.hexdigest() == f.sha256

    def drop_object(self, sha256: str) -> None:
        """Before a bad copy is replaced, where writing the same name again would keep it
        (a registry keeps the first blob of a digest); nothing elsewhere."""
        return None

    def unfixable(self, f: LockedFile) -> str:
        """The hint when a replaced object still reads wrong."""
        return (f"remove {object_key(f.sha256)} from the cache by hand, then push again")

    @abstractmethod
    def has_model(self, m: LockedModel) -> bool:
        """Whether every object of ``m`` was pushed (the model's entry is written last)."""

    # --- writing ----------------------------------------------------------------------

    @abstractmethod
    def put_object(self, path: Path, sha256: str, size: int, jobs: int) -> int:
        """Upload a store object; returns the bytes sent."""

    @abstractmethod
    def put_model(self, m: LockedModel) -> None:
        """Record ``m`` as complete (after all its objects)."""

    def push(self, models: list[LockedModel], store: Any, jobs: int = 4,
             verify: bool = False) -> PushReport:
        """Upload what the cache lacks of ``models`` (existence checks first, objects in
        parallel), then each model's entry. Two machines pushing at once is safe: an
        object is content-addressed and written whole or not at all.

        A present object is checked (``holds``): a corrupt copy under the right name
        would otherwise stay forever, every reader refusing it and every push skipping
        it. A bad copy is replaced and read back."""
        if not self.push_allowed:
            raise CacheError(f"team cache {self.url} is read-only here (push = false)",
                             hint="push from a machine whose models.toml allows it")
        report = PushReport()
        objects = store.objects_of(models, "pushing")
        lock = threading.Lock()

        def one(f: LockedFile) -> None:
            local = store.object_path(f.sha256)
            state = self.state(f.sha256, f.size)
            if self._checked(f, local, state, verify):
                with lock:
                    report.present += 1
                return
            bad = state != "absent"
            if bad:
                self.drop_object(f.sha256)
            sent = self.put_object(local, f.sha256, f.size, jobs)
            if bad and not self.holds(f, local, verify):
                raise CacheError(f"team cache {self.url}: {object_key(f.sha256)} ({f.path})"
                                 " is corrupt there and still reads wrong after it was"
                                 " uploaded again", hint=self.unfixable(f))
            with lock:
                report.uploaded += 1
                report.bytes_sent += sent
                if bad:
                    report.replaced.append(f.path)

        big = [f for f in objects.values() if f.size > PART]
        small = [f for f in objects.values() if f.size <= PART]
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            list(pool.map(one, small))
        for f in big:  # each is split into parallel parts itself
            one(f)
        for m in models:
            if not self.has_model(m):
                self.put_model(m)
                report.models += 1
        return report

    def close(self) -> None:
        self.source.close()


# --- a directory -----------------------------------------------------------------------


class _DirSource(Source):
    type = "cache"
    OPTIONS: dict[str, Any] = {}
    needs_network = False

    def __init__(self, root: Path) -> None:
        super().__init__(_Decl({}), None)
        self.root = root

    def resolve(self) -> Any:  # pragma: no cover - never declared in models.toml
        raise NotImplementedError

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        from .transfer import iter_file

        path = self.root / file.path
        if not path.is_file():
            raise NotFound(f"{path}: not in the team cache")
        yield from iter_file(path, start, end)


class DirRemote(Remote):
    def __init__(self, url: str, root: Path, push: bool) -> None:
        super().__init__(url, push)
        self.root = root
        self.source = _DirSource(root)

    def state(self, sha256: str, size: int) -> str:
        try:
            return "sized" if (self.root / object_key(sha256)).stat().st_size == size \
                else "wrong"
        except OSError:
            return "absent"

    def has_model(self, m: LockedModel) -> bool:
        return (self.root / "models" / f"{model_tag(m)}.lock").is_file()

    def put_object(self, path: Path, sha256: str, size: int, jobs: int) -> int:
        import shutil
        import tempfile

        dest = self.root / object_key(sha256)
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{sha256[:16]}-")
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)  # whole or absent, whoever else writes the same name
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return size

    def put_model(self, m: LockedModel) -> None:
        from .fsutil import atomic_write_text

        atomic_write_text(self.root / "models" / f"{model_tag(m)}.lock", entry_text(m))


# --- an S3 bucket ---------------------------------------------------------------------


class S3Remote(Remote):
    def __init__(self, url: str, cfg: CacheConfig, context: Any) -> None:
        from .sources.s3 import S3Source

        super().__init__(url, cfg.push)
        parts = urlsplit(url)
        prefix = parts.path.lstrip("/")
        if prefix and not prefix.endswith("/"):
            prefix += "/"
        opts = {"bucket": parts.netloc, "prefix": prefix, **cfg.s3}
        self.s3 = S3Source(_Decl(S3Source.check_options(opts), network=cfg.network), context)
        self.source = self.s3

    def _head(self, key: str) -> Any | None:
        try:
            return self.s3._call("HEAD", "head_object",
                                 {"Key": self.s3.key_of(key), "ChecksumMode": "ENABLED"},
                                 self.s3.url_of(self.s3.key_of(key)),
                                 {"x-amz-checksum-mode": "ENABLED"})
        except NotFound:
            return None

    def state(self, sha256: str, size: int) -> str:
        """Its size, and the checksum S3 keeps when one was uploaded with it (ours are):
        one HEAD tells an object overwritten with other bytes; one stored without a
        checksum (by another tool, or a server that keeps none) is compared by push."""
        from .sources.s3 import _full_sha256

        r = self._head(object_key(sha256))
        if r is None:
            return "absent"
        stated = _full_sha256(r.headers)
        if r.headers.get("Content-Length") != str(size) or stated not in (None, sha256):
            return "wrong"
        return "sized" if stated is None else "vouched"

    def has_model(self, m: LockedModel) -> bool:
        return self._head(f"models/{model_tag(m)}.lock") is not None

    def _send(self, method: str, operation: str, body: bytes, params: dict[str, Any],
              headers: dict[str, str] | None = None) -> Any:
        from .http import call
        from .transport import RetryPolicy

        digest = hashlib.sha256(body).hexdigest()
        what = self.s3.url_of(params.get("Key", ""))

        def attempt() -> Any:
            url, signed = self.s3.sign(method, operation, headers, payload=digest, **params)
            return call(method, url, signed, self.s3.decl.network, body=body,
                        max_body=1 << 20)

        r = RetryPolicy.of(self.s3.decl.network).run(attempt)
        if r.status_code >= 300:
            raise self.s3._error(r.status_code, r.headers, r.content, what)
        return r

    def _put_bytes(self, key: str, body: bytes) -> None:
        checksum = base64.b64encode(hashlib.sha256(body).digest()).decode()
        self._send("PUT", "put_object", body, {"Key": self.s3.key_of(key)},
                   {"x-amz-checksum-sha256": checksum})

    def put_object(self, path: Path, sha256: str, size: int, jobs: int) -> int:
        key = object_key(sha256)
        if size <= PART:
            self._put_bytes(key, path.read_bytes())
            return size
        return self._multipart(path, self.s3.key_of(key), size, jobs)

    def _multipart(self, path: Path, key: str, size: int, jobs: int) -> int:
        """Parts of PART bytes (more for objects past 10,000 parts) uploaded in parallel,
        each read when it is sent: memory stays at a few parts whatever the size."""
        from xml.etree import ElementTree

        part = max(PART, -(-size // 9_000))
        r = self._send("POST", "create_multipart_upload", b"", {"Key": key})
        upload = ElementTree.fromstring(r.content).findtext(
            "{http://s3.amazonaws.com/doc/2006-03-01/}UploadId")
        if not upload:
            raise CacheError(f"{self.s3.url_of(key)}: the server started no multipart upload")
        fd = os.open(path, os.O_RDONLY)

        def send(n: int) -> str:
            body = os.pread(fd, part, (n - 1) * part)
            got = self._send("PUT", "upload_part", body,
                             {"Key": key, "UploadId": upload, "PartNumber": n})
            return got.headers.get("ETag", "")

        try:
            count = -(-size // part)
            with ThreadPoolExecutor(max_workers=max(1, min(jobs, 4))) as pool:
                etags = list(pool.map(send, range(1, count + 1)))
            xml = "".join(f"<Part><PartNumber>{n}</PartNumber><ETag>{e}</ETag></Part>"
                          for n, e in enumerate(etags, 1))
            body = f"<CompleteMultipartUpload>{xml}</CompleteMultipartUpload>".encode()
            self._send("POST", "complete_multipart_upload", body,
                       {"Key": key, "UploadId": upload})
        except BaseException:
            try:
                self._send("DELETE", "abort_multipart_upload", b"",
                           {"Key": key, "UploadId": upload})
            except ReconcileError:
                pass
            raise
        finally:
            os.close(fd)
        return size

    def put_model(self, m: LockedModel) -> None:
        self._put_bytes(f"models/{model_tag(m)}.lock", entry_text(m).encode())


# --- an OCI registry -------------------------------------------------------------------


class _RegistryReader(RegistrySource):
    """Blobs of the cache's repository, read as the ollama and OCI sources read theirs
    (the token renewed on a refusal, the blob's digest as its entity)."""

    type = "cache"
    OPTIONS: dict[str, Any] = {}

    def __init__(self, registry: Any, network: NetworkConfig) -> None:
        super().__init__(_Decl({}, network=network), None)
        self.registry = registry

    def resolve(self) -> Any:  # pragma: no cover - never declared in models.toml
        raise NotImplementedError

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        return self.blob(file, start, end)  # the object's name is its sha256


class OciRemote(Remote):
    def __init__(self, url: str, cfg: CacheConfig) -> None:
        from .auth import Credentials

        super().__init__(url, cfg.push)
        parts = urlsplit(url)
        scheme = "http" if parts.scheme == "oci+http" else "https"
        self.base = f"{scheme}://{parts.netloc}"
        self.registry = Registry(self.base, parts.path.strip("/"), cfg.network,
                                 Credentials(cfg.auth))
        self.source = _RegistryReader(self.registry, cfg.network)

    def _request(self, method: str, url: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> Any:
        return self.registry.get(url, headers or {}, method, body=body)

    def _location(self, r: Any) -> str:
        loc = urljoin(self.base + "/", r.headers.get("Location", ""))
        here, there = urlsplit(self.base), urlsplit(loc)
        if (there.scheme, there.netloc) != (here.scheme, here.netloc):
            raise CacheError(f"{self.registry.name}: the registry sent the upload to another"
                             f" host ({there.netloc}); refused, our credentials stay here")
        return loc

    def state(self, sha256: str, size: int) -> str:
        r = self._request("HEAD", self.registry.url("blobs", f"sha256:{sha256}"))
        if r.status_code != 200:
            return "absent"
        return "sized" if r.headers.get("Content-Length") == str(size) else "wrong"

    def drop_object(self, sha256: str) -> None:
        """Unlink the blob from the repository (a registry keeps the first bytes it got
        for a digest; if it keeps them after this, ``unfixable`` says so)."""
        self._request("DELETE", self.registry.url("blobs", f"sha256:{sha256}"))

    def unfixable(self, f: LockedFile) -> str:
        return (f"the registry keeps the bytes it first stored for sha256:{f.sha256[:12]}…"
                " whatever is uploaded again: its operator must delete that blob from the"
                " registry's storage (then `registry garbage-collect`), then push again")

    def has_model(self, m: LockedModel) -> bool:
        r = self._request("HEAD", self.registry.url("manifests", model_tag(m)),
                          headers={"Accept": OCI_MANIFEST})
        return r.status_code == 200

    def _upload(self, read: Any, size: int, digest: str) -> None:
        """POST a session, PATCH chunks of PART bytes, PUT with the digest: the
        distribution spec's chunked upload, which keeps one chunk in memory."""
        what = f"{self.registry.name}: upload of {digest[:19]}…"
        r = self._request("POST", self.registry.url("blobs", "uploads/"), b"")
        if r.status_code != 202:
            raise CacheError(f"{what}: HTTP {r.status_code} (push needs the 'push' scope)")
        loc = self._location(r)
        done = 0
        while done < size:
            chunk = read(done, min(PART, size - done))
            r = self._request("PATCH", loc, chunk, {
                "Content-Type": "application/octet-stream",
                "Content-Range": f"{done}-{done + len(chunk) - 1}"})
            if r.status_code != 202:
                raise CacheError(f"{what}: HTTP {r.status_code} at byte {done}")
            loc = self._location(r)
            done += len(chunk)
        sep = "&" if "?" in loc else "?"
        r = self._request("PUT", f"{loc}{sep}digest={digest}", b"",
                          {"Content-Type": "application/octet-stream"})
        if r.status_code != 201:
            raise CacheError(f"{what}: HTTP {r.status_code} when committing the blob")

    def put_object(self, path: Path, sha256: str, size: int, jobs: int) -> int:
        fd = os.open(path, os.O_RDONLY)
        try:
            self._upload(lambda off, n: os.pread(fd, n, off), size, f"sha256:{sha256}")
        finally:
            os.close(fd)
        return size

    def put_model(self, m: LockedModel) -> None:
        entry = entry_text(m).encode()
        config = "sha256:" + hashlib.sha256(entry).hexdigest()
        if not self.has_object(config[7:], len(entry)):
            self._upload(lambda off, n: entry[off:off + n], len(entry), config)
        layers = [{"mediaType": "application/octet-stream", "digest": f"sha256:{f.sha256}",
                   "size": f.size, "annotations": {"org.opencontainers.image.title": f.path}}
                  for f in m.regular_files()]
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": MODEL_TYPE,
                    "config": {"mediaType": ENTRY_TYPE, "digest": config, "size": len(entry)},
                    "layers": layers}
        r = self._request("PUT", self.registry.url("manifests", model_tag(m)),
                          json.dumps(manifest).encode(), {"Content-Type": OCI_MANIFEST})
        if r.status_code != 201:
            raise CacheError(f"{self.registry.name}:{model_tag(m)}: HTTP {r.status_code} when"
                             " writing the model's manifest")


# --- choosing one -----------------------------------------------------------------------


def configured(manifest_cache: CacheConfig | None) -> CacheConfig | None:
    """The cache to use: RECONCILE_CACHE (also set by --cache) overrides models.toml's
    url, keeping its other settings; "off" turns the cache off."""
    from . import settings

    override = settings.cache_url()
    if override is None:
        return manifest_cache
    if override.lower() in ("off", "none"):
        return None
    try:
        check_cache_url(override)
    except ValueError as e:
        raise CacheError(f"RECONCILE_CACHE / --cache: {e}") from None
    if manifest_cache is None:
        return CacheConfig(url=override)
    return replace(manifest_cache, url=override)


def open_remote(cfg: CacheConfig, base: Path, context: Any = None) -> Remote:
    """The cache ``cfg`` names; a plain path is relative to models.toml's directory."""
    url = cfg.url
    parts = urlsplit(url)
    if parts.scheme == "s3":
        return S3Remote(url, cfg, context)
    if parts.scheme in ("oci", "oci+http"):
        return OciRemote(url, cfg)
    root = Path(parts.path) if parts.scheme == "file" else Path(os.path.expanduser(url))
    return DirRemote(url, root if root.is_absolute() else base / root, cfg.push)
