"""`reconcile export` / `import`: locked models in one archive, for machines with no network.

The archive is a plain tar stream (`tar tf` lists it; it can be piped through ssh or
written to a USB disk), in this order:

    reconcile-export.json   {"format": 1, "models": {key: hash}, "objects": {sha256: size}}
    models.lock             the lock entries of the exported models
    objects/sha256/<hex>    each object once, as the store holds it

An archive is untrusted like every other input: import reads no path from it (a member
is an object only by a name of 64 hex digits, nothing is extracted by tarfile), every
object is hashed while it is copied into the store and must match its name and the
manifest's size, and an object that does not is refused before it is published.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
import tarfile
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .errors import IntegrityError, ReconcileError, StoreError
from .fsutil import write_all
from .lockfile import Lock, LockedModel, dumps
from .store import Store

FORMAT = 1
MANIFEST = "reconcile-export.json"
LOCK = "models.lock"
_OBJECT = re.compile(r"^objects/sha256/([0-9a-f]{64})$")
_META_MAX = 64 << 20
_BUF = 1 << 20


class BundleError(ReconcileError):
    """The archive is not an export of reconcile's, or does not hold what it says."""

    exit_code = 2


@dataclass
class ImportReport:
    objects: int = 0
    present: int = 0
    bytes: int = 0
    models: list[str] = field(default_factory=list)


def export(models: list[LockedModel], store: Store, output: str) -> tuple[int, int]:
    """Write ``models``' objects, from the store, as one tar stream to ``output`` ('-':
    stdout). Returns (objects, bytes). Every object must be installed."""
    objects = {sha: f.size for sha, f in store.objects_of(models, "exporting").items()}
    meta = json.dumps({"format": FORMAT, "models": {m.key: m.hash for m in models},
                       "objects": objects}, indent=1).encode()
    lock = dumps(Lock(models={m.key: m for m in models})).encode()
    if output == "-":
        sys.stdout.flush()
        _write_tar(sys.stdout.fileno(), meta, lock, objects, store)
        return len(objects), sum(objects.values())
    part = output + ".part"
    fd = os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        try:
            _write_tar(fd, meta, lock, objects, store)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(part, output)  # a whole archive or none
    except BaseException:
        Path(part).unlink(missing_ok=True)
        raise
    return len(objects), sum(objects.values())


def _write_tar(fd: int, meta: bytes, lock: bytes, objects: dict[str, int],
               store: Store) -> None:
    """A tar stream: each member's header as tarfile makes it (PAX, so objects over
    8 GiB fit), its bytes copied by the kernel (sendfile: no pass through Python,
    through a pipe too), padded to 512-byte blocks; two zero blocks end it."""
    def header(name: str, size: int) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = size, 0o444, 0
        write_all(fd, info.tobuf(tarfile.PAX_FORMAT))

    for name, data in ((MANIFEST, meta), (LOCK, lock)):
        header(name, len(data))
        write_all(fd, data + _pad(len(data)))
    for sha256, size in objects.items():
        header(f"objects/sha256/{sha256}", size)
        src = os.open(store.object_path(sha256), os.O_RDONLY)
        try:
            sent = 0
            while sent < size:
                n = os.sendfile(fd, src, sent, min(size - sent, 1 << 30))
                if n == 0:
                    raise ReconcileError(f"{store.object_path(sha256)}: shorter than its"
                                         " lock entry; run `reconcile verify --repair`")
                sent += n
        finally:
            os.close(src)
        write_all(fd, _pad(size))
    write_all(fd, bytes(2 * tarfile.BLOCKSIZE))


def _pad(size: int) -> bytes:
    return bytes(-size % tarfile.BLOCKSIZE)


def import_archive(source: str, store: Store) -> ImportReport:
    """Fill the store from an export: every object hashed and checked before it is
    published; an archive missing an object it lists, or holding anything else, fails."""
    stream: IO[bytes] = sys.stdin.buffer if source == "-" else _open(source)
    # a file is read by offset, each object straight into reused buffers; a pipe in order
    seekable = source != "-" and stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
    report = ImportReport()
    meta: dict[str, Any] | None = None
    seen: set[str] = set()
    try:
        raw = stream
        stream, mode = _decompressed(stream, source, seekable)
        seekable = seekable and stream is raw and mode == "r|"  # plain: read by offset
        with tarfile.open(fileobj=stream, mode="r:" if seekable else mode,
                          bufsize=_BUF) as tar:
            for member in tar:
                name = member.name
                if name == MANIFEST and meta is None:
                    meta = _manifest(_small(tar, member))
                    report.models = sorted(meta["models"])
                    _check_room(meta, store, source)
                    continue
                if meta is None:
                    raise BundleError(f"{source}: not a reconcile export ({MANIFEST} must come"
                                      " first)", hint="make it with `reconcile export`")
                if name == LOCK:
                    _small(tar, member)  # for people and tools; the manifest decides
                    continue
                m = _OBJECT.match(name)
                if not m or not member.isfile():
                    raise BundleError(f"{source}: unexpected member {name[:120]!r}; refused"
                                      " (an export holds objects/sha256/<hex> files only)")
                sha256 = m.group(1)
                if sha256 not in meta["objects"] or sha256 in seen:
                    raise BundleError(f"{source}: object {sha256[:16]}… is not listed in the"
                                      " export's manifest, or appears twice")
                if member.size != meta["objects"][sha256]:
                    raise IntegrityError(f"{source}: object {sha256[:16]}… is {member.size}"
                                         f" bytes, the manifest says {meta['objects'][sha256]}")
                seen.add(sha256)
                if store.has_object(sha256):
                    report.present += 1
                    continue
                if seekable:
                    _copy_range(stream.fileno(), member, sha256, store, source)
                else:
                    _copy_in(tar, member, sha256, store, source)
                report.objects += 1
                report.bytes += member.size
    except tarfile.TarError as e:
        raise BundleError(f"{source}: not a readable tar archive ({e})") from None
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()
    if meta is None:
        raise BundleError(f"{source}: not a reconcile export (no {MANIFEST})")
    missing = sorted(set(meta["objects"]) - seen)
    if missing:
        raise IntegrityError(f"{source}: the archive ends before {len(missing)} of its objects"
                             f" ({', '.join(s[:16] + '…' for s in missing[:3])}); truncated?",
                             hint="what was complete is in the store; export again")
    return report


_MAGIC = {b"\x1f\x8b": "gzip", b"\x28\xb5\x2f\xfd": "zstd", b"BZh": "bzip2",
          b"\xfd7zXZ\x00": "xz"}


def _decompressed(stream: IO[bytes], source: str, seekable: bool) -> tuple[IO[bytes], str]:
    """An export someone compressed on its way (``gzip models.tar``, ``zstd``): read
    through it, in order (a compressed stream has no offsets to read objects by), the
    sha256 check unchanged; bzip2 and xz are named, to decompress first."""
    head = stream.peek(6)[:6] if hasattr(stream, "peek") else b""
    if seekable and not head:
        head = stream.read(6)
        stream.seek(0)
    kind = next((k for magic, k in _MAGIC.items() if head.startswith(magic)), None)
    if kind is None:
        return stream, "r|"
    if kind == "gzip":
        return stream, "r|gz"
    if kind == "zstd":
        try:
            import zstandard
        except ImportError:
            zstandard = None
        if zstandard is not None:
            return zstandard.ZstdDecompressor().stream_reader(stream), "r|"
    raise BundleError(f"{source}: compressed with {kind}, which import does not read;"
                      " decompress it first (e.g. `" + {"zstd": "zstd -d", "bzip2": "bunzip2",
                                                        "xz": "unxz"}[kind] + f" {source}`)")


def _check_room(meta: dict[str, Any], store: Store, source: str) -> None:
    """Refuse, before the first byte, an import the store's disk cannot take while
    1 GiB stays free: each object is bounded by its declared size, but an archive may
    declare a terabyte (a sparse file costs its maker nothing)."""
    from .fsutil import room
    from .plan import human

    wanted = [size for sha, size in meta["objects"].items() if not store.has_object(sha)]
    free = room(store.tmp)
    if sum(wanted) > free:
        raise StoreError(
            f"{source}: its {len(wanted)} objects not yet in the store take"
            f" {human(sum(wanted))}, more than the {human(free)} that {store.tmp} can take"
            " while 1 GiB stays free; nothing was imported (free some space, e.g."
            " `reconcile gc`, or point RECONCILE_STORE at a bigger disk)"
        )


def _open(path: str) -> IO[bytes]:
    try:
        return open(path, "rb")
    except OSError as e:
        raise BundleError(f"{path}: {e.strerror}") from None


def _small(tar: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    if not member.isfile() or member.size > _META_MAX:
        raise BundleError(f"{member.name}: not a file of at most {_META_MAX >> 20} MiB")
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def _manifest(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except ValueError:
        doc = None
    ok = (isinstance(doc, dict) and doc.get("format") == FORMAT
          and isinstance(doc.get("models"), dict) and isinstance(doc.get("objects"), dict)
          and all(isinstance(k, str) and re.fullmatch(r"[0-9a-f]{64}", k)
                  and isinstance(v, int) and not isinstance(v, bool) and v >= 0
                  for k, v in doc["objects"].items())
          and all(isinstance(k, str) and isinstance(v, str) for k, v in doc["models"].items()))
    if not ok:
        raise BundleError(f"{MANIFEST}: not a reconcile export manifest (format {FORMAT})")
    return doc


def _copy_in(tar: tarfile.TarFile, member: tarfile.TarInfo, sha256: str, store: Store,
             source: str) -> None:
    """From a pipe: the member's bytes in the order tar gives them."""
    f = tar.extractfile(member)
    assert f is not None
    _into_store(iter(lambda: f.read(_BUF), b""), sha256, store, source)


def _copy_range(fd: int, member: tarfile.TarInfo, sha256: str, store: Store,
                source: str) -> None:
    """From a file: the member's bytes by offset into recycled page-aligned buffers,
    written past the page cache where the filesystem allows (as downloads are): a
    fresh 1 MiB bytes per read and buffered writes made import 5x slower than tar -x."""
    from .http import BUFFERS

    def chunks() -> Iterator[memoryview]:
        pos, end = member.offset_data, member.offset_data + member.size
        while pos < end:
            buf = BUFFERS.get()
            view = memoryview(buf)[: min(len(buf), end - pos)]
            n = os.preadv(fd, [view], pos)
            if n <= 0:
                raise IntegrityError(f"{source}: the archive ends inside object"
                                     f" {sha256[:16]}…; truncated?")
            pos += n
            yield view[:n]

    _into_store(chunks(), sha256, store, source)


def _into_store(chunks: Iterable[Any], sha256: str, store: Store, source: str) -> None:
    """Hash while writing into the store's tmp/; publish only what hashes to its name."""
    from .http import BUFFERS
    from .transfer import PartWriter

    fd, tmp = tempfile.mkstemp(dir=store.tmp, prefix=f"import-{sha256[:12]}-")
    os.close(fd)
    h = hashlib.sha256()
    out = PartWriter(Path(tmp))
    try:
        try:
            for chunk in chunks:
                h.update(chunk)
                out.write(chunk)
                BUFFERS.release(chunk)
        finally:
            out.close()
        if h.hexdigest() != sha256:
            raise IntegrityError(f"{source}: object {sha256[:16]}… does not hash to its name"
                                 f" (it hashes to {h.hexdigest()[:16]}…); refused",
                                 hint="the archive is corrupt or was altered; nothing of this"
                                 " object was installed")
        store.publish_object(Path(tmp), sha256)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
