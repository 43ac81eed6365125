"""Unpack tar and zip archives without trusting a single name in them.

An archive from a URL is attacker-controlled data (notes/security.md §6): names can
be absolute or climb out with ``..``, links can point anywhere, members can be
devices, and the libraries do not protect us on their own (3.11's ``tarfile``
has no default filter and its ``data`` filter had bypasses until 3.11.13;
``zipfile`` silently *rewrites* ``../evil`` to ``evil`` instead of refusing).
So every member is checked here before it is written, and the writes themselves
cannot leave ``dest`` even if a check were wrong:

* names: relative ``/``-separated paths only (:func:`check_relpath`: no absolute
  path, drive letter, backslash, NUL/control character, ``.`` or ``..``); a
  leading ``./`` (``tar -C dir .``) is accepted and dropped; duplicate names, and
  names that collide on a case-insensitive or normalising file system, are refused;
* types: regular files, directories, symlinks and (tar) hard links only; devices,
  FIFOs, encrypted or unknown zip entries are refused;
* symlinks: relative targets of the form ``../../a/b`` (``..`` only as a prefix,
  never more than the link's depth), so a target can never climb out through
  another symlink (``x -> .`` then ``y -> x/..`` is refused); hard links only to
  a regular file extracted earlier from the same archive;
* writes go through directory file descriptors opened with ``O_NOFOLLOW`` and
  files are created with ``O_EXCL | O_NOFOLLOW``, so nothing is ever written
  through a symlink, even one the archive planted inside ``dest``;
* tar members also pass ``tarfile.data_filter`` (a second opinion, not the
  only one); zip entries are checked for overlapping data (zip bombs that reuse
  one compressed stream) and CRC (by ``zipfile`` while streaming);
* sizes: bytes are counted while streaming, against ``max_total``, so a bomb
  stops at the cap whatever the headers claim, and a member whose declared size
  (tar header, zip directory) would pass it is refused before its first byte; the
  cap is what the disk can take while 1 GiB stays free, and at most
  RECONCILE_MAX_UNKNOWN_SIZE (settings.py); member count is capped too.

The archive type comes from its first bytes, never from its name. Tar archives
are read in one forward pass (``r|*``: a multi-GB ``.tar.xz`` is decompressed
once); on any failure everything extracted so far is removed, so the caller
sees either a complete tree or an exception, never half an archive.
"""

from __future__ import annotations

import contextlib
import itertools
import lzma
import os
import re
import shutil
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import IntegrityError, ReconcileError, StoreError
from .paths import check_relpath

__all__ = ["MAX_MEMBERS", "MAX_TOTAL", "check_relpath", "safe_extract"]

MAX_MEMBERS = 100_000
MAX_TOTAL = 1 << 40  # 1 TiB: the most any archive may produce, whatever else allows
_MAX_LINK_TARGET = 4096  # PATH_MAX; a zip symlink's target is its (tiny) content
_COPY = 1 << 20

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# errors that mean "the archive's bytes are broken", as opposed to "we cannot write"
_CORRUPT = (
    tarfile.TarError,
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    NotImplementedError,  # zip compression method zipfile does not know
)


def _refuse(label: str, member: str, why: str) -> IntegrityError:
    return IntegrityError(
        f"{label}: refusing member {member!r}: {why}",
        hint="the archive is unsafe to unpack; nothing from it was kept",
    )


def _corrupt(label: str, member: str | None, e: BaseException) -> IntegrityError:
    where = f" at member {member!r}" if member else ""
    return IntegrityError(f"{label}: corrupt or unreadable archive{where}: {e}")


def _link_target_ok(clean: str, target: str) -> str | None:
    """Why the symlink ``clean -> target`` could point outside the tree, or None if safe.

    Only ``..`` *prefixes* are allowed: they climb real directories (parents are
    never written through symlinks), so counting them is exact. A ``..`` after a
    name component could climb from wherever another symlink leads, which no
    lexical check can bound.
    """
    if not target:
        return "empty symlink target"
    if len(target.encode("utf-8", "surrogateescape")) > _MAX_LINK_TARGET:
        return "symlink target is too long"
    if _CONTROL.search(target):
        return "symlink target contains NUL or a control character"
    if target.startswith("/") or _DRIVE.match(target) or "\\" in target:
        return f"symlink to absolute path {target!r}"
    parts = [c for c in target.split("/") if c not in ("", ".")]
    up = 0
    while up < len(parts) and parts[up] == "..":
        up += 1
    if ".." in parts[up:]:
        return f"symlink target {target!r} has '..' after a name (could climb out through a link)"
    if up > clean.count("/"):
        return f"symlink to {target!r} points outside the archive's tree"
    return None


def _member_name(raw: str, is_dir: bool, label: str) -> str | None:
    """The checked name of an archive member; None for the archive root (``./``)."""
    name = raw
    while name.startswith("./"):
        name = name[2:]
    if name in ("", ".") and is_dir and raw:
        return None
    try:
        return check_relpath(name)
    except ValueError as e:
        raise _refuse(label, raw, f"unsafe path: {e}") from None


class _Writer:
    """Creates members under one open ``dest`` directory, never following a symlink."""

    def __init__(self, dest_fd: int, label: str, max_total: int, max_members: int,
                 cap_why: str = "") -> None:
        self.dest_fd = dest_fd
        self.label = label
        self.budget = max_total
        self.max_total = max_total
        self.cap_why = cap_why  # what the cap is and how to raise it, for the refusal
        self.left = max_members
        self.members: set[str] = set()  # exact names of explicit members
        self.keys: dict[str, str] = {}  # NFC + casefold key -> name (members and parents)
        self.files: set[str] = set()  # regular files written (valid hard-link targets)

    def claim(self, raw: str, clean: str) -> None:
        """Record a member name; refuse duplicates and case/Unicode collisions."""
        self.left -= 1
        if self.left < 0:
            raise _refuse(self.label, raw, "too many members (more than the cap)")
        if clean in self.members:
            raise _refuse(self.label, raw, "duplicate name")
        self.members.add(clean)
        parts = clean.split("/")
        for i in range(1, len(parts) + 1):
            name = "/".join(parts[:i])
            key = unicodedata.normalize("NFC", name).casefold()
            other = self.keys.setdefault(key, name)
            if other != name:
                raise _refuse(
                    self.label,
                    raw,
                    f"collides with {other!r} (names differ only by case or Unicode form, "
                    "which are one file on macOS and Windows)",
                )

    @contextlib.contextmanager
    def parent(self, raw: str, clean: str) -> Iterator[tuple[int, str]]:
        """(fd of the member's parent directory, leaf name); creates missing parents.

        Each component is opened with O_NOFOLLOW|O_DIRECTORY, so a symlink or a
        file where a directory should be is refused instead of followed.
        """
        *dirs, leaf = clean.split("/")
        fd = self.dest_fd
        try:
            for i, part in enumerate(dirs):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=fd)
                try:
                    nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    where = "/".join(dirs[: i + 1])
                    raise _refuse(
                        self.label, raw, f"{where!r} is a symlink or a file, not a directory"
                    ) from None
                if fd != self.dest_fd:
                    os.close(fd)
                fd = nfd
            yield fd, leaf
        finally:
            if fd != self.dest_fd:
                os.close(fd)

    def mkdir(self, raw: str, clean: str) -> None:
        with self.parent(raw, clean) as (pfd, leaf):
            try:
                os.mkdir(leaf, 0o755, dir_fd=pfd)
            except FileExistsError:
                st = os.lstat(leaf, dir_fd=pfd)
                if not stat.S_ISDIR(st.st_mode):
                    raise _refuse(self.label, raw, "a non-directory of that name exists") from None

    def file(
        self, raw: str, clean: str, read: Callable[[int], bytes], executable: bool, size: int
    ) -> None:
        """Stream ``read`` into a new file; counts bytes against the total cap."""
        if size > self.budget:
            raise _refuse(self.label, raw, self.over_cap())
        with self.parent(raw, clean) as (pfd, leaf):
            try:
                fd = os.open(leaf, _NEW_FILE, 0o600, dir_fd=pfd)
            except FileExistsError:
                raise _refuse(self.label, raw, "something of that name already exists") from None
            with open(fd, "wb", buffering=0) as out:
                while True:
                    try:
                        chunk = read(_COPY)
                    except (*_CORRUPT, OSError) as e:
                        raise _corrupt(self.label, raw, e) from None
                    if not chunk:
                        break
                    self.budget -= len(chunk)
                    if self.budget < 0:
                        raise _refuse(self.label, raw, self.over_cap() + " (a bomb?)")
                    view = memoryview(chunk)
                    while view:
                        view = view[out.write(view) :]
                os.fchmod(out.fileno(), 0o755 if executable else 0o644)
        self.files.add(clean)

    def over_cap(self) -> str:
        return f"unpacks to more than the size cap ({self.max_total} bytes{self.cap_why})"

    def symlink(self, raw: str, clean: str, target: str) -> None:
        why = _link_target_ok(clean, target)
        if why:
            raise _refuse(self.label, raw, why)
        with self.parent(raw, clean) as (pfd, leaf):
            try:
                os.symlink(target, leaf, dir_fd=pfd)
            except FileExistsError:
                raise _refuse(self.label, raw, "something of that name already exists") from None

    def hardlink_target(self, raw: str, target_raw: str) -> str:
        """The checked target of a tar hard link: a regular file this archive already wrote."""
        name = target_raw
        while name.startswith("./"):
            name = name[2:]
        try:
            target: str | None = check_relpath(name)
        except ValueError:
            target = None
        if target is None or target not in self.files:
            raise _refuse(
                self.label,
                raw,
                f"hard link to {target_raw!r}, which is not a regular file extracted "
                "earlier from this archive",
            )
        return target

    def hardlink(self, raw: str, clean: str, target_raw: str) -> None:
        target = self.hardlink_target(raw, target_raw)
        with (
            self.parent(raw, target) as (sfd, sleaf),
            self.parent(raw, clean) as (dfd, dleaf),
        ):
            try:
                os.link(sleaf, dleaf, src_dir_fd=sfd, dst_dir_fd=dfd, follow_symlinks=False)
            except FileExistsError:
                raise _refuse(self.label, raw, "something of that name already exists") from None


def _kind(head: bytes) -> str:
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return "unknown"


def safe_extract(
    archive: Path | str,
    dest: Path | str,
    max_total: int | None = None,
    label: str | None = None,
    max_members: int = MAX_MEMBERS,
) -> None:
    """Unpack ``archive`` (tar, tar.gz, tar.bz2, tar.xz or zip) into ``dest``.

    ``dest`` must not exist (it is created, mode 0700) or be an empty directory.
    ``label`` names the archive in errors (store objects are named by their hash).
    Raises ``IntegrityError`` naming the member and the reason for anything
    unsafe, corrupt or over the caps; on any error, what was extracted is removed
    (and ``dest`` too if this call created it). ``max_total`` None: ``default_cap``.
    """
    archive, dest = Path(archive), Path(dest)
    label = label or archive.name
    cap_why = ""
    if max_total is None:
        max_total, cap_why = default_cap(dest.parent)
    created = False
    try:
        os.mkdir(dest, 0o700)
        created = True
    except FileExistsError:
        st = os.lstat(dest)
        if not stat.S_ISDIR(st.st_mode):
            raise ReconcileError(
                f"{dest}: extraction target exists and is not a directory"
            ) from None
        if os.listdir(dest):
            raise ReconcileError(f"{dest}: extraction target must be empty") from None
    try:
        dest_fd = os.open(dest, _DIR_FLAGS)
        try:
            writer = _Writer(dest_fd, label, max_total, max_members, cap_why)
            with open(archive, "rb") as f:
                head = f.read(512)
                f.seek(0)
                kind = _kind(head)
                if kind == "unknown" and tarfile.is_tarfile(archive):  # pre-POSIX tar
                    kind = "tar"
                if kind == "zip":
                    _extract_zip(f, writer, label)
                elif kind == "tar":
                    _extract_tar(f, writer, label, os.fspath(dest))
                elif kind == "zstd":  # tar+zstd (OCI model layers); read forward only
                    try:
                        import zstandard
                    except ImportError:
                        raise IntegrityError(
                            f"{label}: a zstd-compressed archive needs the zstandard package",
                            hint="pip install 'reconcile[zstd]' (or zstandard)") from None
                    try:
                        with zstandard.ZstdDecompressor().stream_reader(f) as zr:
                            _extract_tar(zr, writer, label, os.fspath(dest))
                    except zstandard.ZstdError as e:
                        raise _corrupt(label, None, e) from None
                else:
                    raise IntegrityError(
                        f"{label}: not a tar or zip archive (extract = true needs one)"
                    )
        finally:
            os.close(dest_fd)
    except BaseException as e:
        if created:
            shutil.rmtree(dest, ignore_errors=True)
        else:
            _clear(dest)
        if isinstance(e, OSError):
            raise StoreError(f"{label}: cannot unpack into {dest}: {e}") from e
        raise


def default_cap(where: Path) -> tuple[int, str]:
    """What an archive unpacked under ``where`` may produce, and why (for the error):
    the disk's room while 1 GiB stays free, RECONCILE_MAX_UNKNOWN_SIZE, MAX_TOTAL."""
    from .fsutil import room
    from .settings import max_unknown_size

    configured, free = min(max_unknown_size(), MAX_TOTAL), room(where)
    if configured <= free:
        return configured, ": RECONCILE_MAX_UNKNOWN_SIZE raises it"
    return free, f": what {where} can take while 1 GiB stays free; free some space"


def _clear(dest: Path) -> None:
    """Empty a directory that existed (empty) before, without following links."""
    for entry in os.scandir(dest):
        if entry.is_dir(follow_symlinks=False):
            shutil.rmtree(entry.path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(entry.path)


def _extract_tar(f: BinaryIO, w: _Writer, label: str, dest: str) -> None:
    data_filter = getattr(tarfile, "data_filter", None)  # 3.11.4+
    raw: str | None = None
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            for m in tf:
                raw = m.name
                if "\0" in m.name or "\0" in m.linkname:
                    raise _refuse(label, raw, "name or link target contains a NUL byte")
                if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
                    what = {
                        tarfile.CHRTYPE: "character device",
                        tarfile.BLKTYPE: "block device",
                        tarfile.FIFOTYPE: "FIFO",
                    }.get(m.type, f"special member type {m.type!r}")
                    raise _refuse(label, raw, f"{what}: only files, directories and links")
                clean = _member_name(raw, m.isdir(), label)
                if clean is None:
                    continue
                w.claim(raw, clean)
                # our link rules first: they are stricter and say why
                if m.issym():
                    why = _link_target_ok(clean, m.linkname)
                    if why:
                        raise _refuse(label, raw, why)
                elif m.islnk():
                    w.hardlink_target(raw, m.linkname)
                if data_filter is not None:
                    try:
                        data_filter(m, dest)
                    except tarfile.FilterError as e:
                        raise _refuse(
                            label, raw, f"rejected by tarfile's data filter: {e}"
                        ) from None
                if m.isdir():
                    w.mkdir(raw, clean)
                elif m.issym():
                    w.symlink(raw, clean, m.linkname)
                elif m.islnk():
                    w.hardlink(raw, clean, m.linkname)
                else:
                    src = tf.extractfile(m)
                    if src is None:  # pragma: no cover - isreg() members always have data
                        raise _refuse(label, raw, "no data")
                    with src:
                        w.file(raw, clean, src.read, bool(m.mode & 0o111), m.size)
    except _CORRUPT as e:
        raise _corrupt(label, raw, e) from None
    except OSError as e:
        if raw is None or e.errno is None:  # bz2/gzip decoding errors are bare OSErrors
            raise _corrupt(label, raw, e) from None
        raise


def _extract_zip(f: BinaryIO, w: _Writer, label: str) -> None:
    try:
        zf = zipfile.ZipFile(f)
    except (*_CORRUPT, OSError) as e:
        raise _corrupt(label, None, e) from None
    with zf:
        infos = zf.infolist()
        if len(infos) > w.left:
            raise _refuse(label, infos[0].orig_filename, f"more than {w.left} members")
        plan: list[tuple[zipfile.ZipInfo, str, str, str | None]] = []
        declared = 0
        # every entry is checked before the first byte is written
        for info in infos:
            raw = info.orig_filename  # .filename is cut at a NUL by zipfile
            unix = info.create_system == 3
            mode = info.external_attr >> 16 if unix else 0
            fmt = stat.S_IFMT(mode)
            if info.flag_bits & 0x1:
                raise _refuse(label, raw, "encrypted entry")
            if "\0" in raw:
                raise _refuse(label, raw, "name contains a NUL byte")
            if fmt == stat.S_IFLNK:
                kind = "l"
            elif info.is_dir() or fmt == stat.S_IFDIR:
                kind = "d"
            elif fmt in (0, stat.S_IFREG):
                kind = "f"
            else:
                raise _refuse(label, raw, "device, FIFO or other special file")
            clean = _member_name(raw, kind == "d", label)
            if clean is None:
                continue
            w.claim(raw, clean)
            target = None
            if kind == "l":
                if info.file_size > _MAX_LINK_TARGET:
                    raise _refuse(label, raw, "symlink target is too long")
                try:
                    target = zf.read(info).decode("utf-8")
                except UnicodeDecodeError:
                    raise _refuse(label, raw, "symlink target is not UTF-8") from None
                except (*_CORRUPT, OSError) as e:
                    raise _corrupt(label, raw, e) from None
                why = _link_target_ok(clean, target)
                if why:
                    raise _refuse(label, raw, why)
            elif kind == "f":
                declared += info.file_size
                if declared > w.budget:
                    raise _refuse(label, raw, w.over_cap())
            plan.append((info, clean, kind, target))
        _check_overlaps(zf, infos, label)
        # claim() already recorded the names; the writer's per-member checks repeat safely
        for info, clean, kind, target in plan:
            raw = info.orig_filename
            if kind == "d":
                w.mkdir(raw, clean)
            elif kind == "l":
                assert target is not None
                w.symlink(raw, clean, target)
            else:
                executable = info.create_system == 3 and bool((info.external_attr >> 16) & 0o111)
                try:
                    src = zf.open(info)  # checks the local header name; CRC while reading
                except (*_CORRUPT, OSError) as e:
                    raise _corrupt(label, raw, e) from None
                with src:
                    w.file(raw, clean, src.read, executable, info.file_size)


def _check_overlaps(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], label: str) -> None:
    """Refuse entries whose data overlaps another's (the "overlapping zip bomb").

    Each entry occupies at least 30 header bytes + its name + its compressed
    size from its local header offset; extra fields only make it longer, so an
    overlap found with this lower bound is certain.
    """
    spans = []
    for info in infos:
        name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace")
        spans.append(
            (info.header_offset, info.header_offset + 30 + len(name) + info.compress_size, info)
        )
    spans.sort(key=lambda s: s[0])
    for (_, end, info), (start, _, nxt) in itertools.pairwise(spans):
        if start < end:
            raise _refuse(
                label, nxt.orig_filename, f"its data overlaps entry {info.orig_filename!r}"
            )
    start_dir = getattr(zf, "start_dir", None)
    if spans and isinstance(start_dir, int) and spans[-1][1] > start_dir:
        raise _refuse(label, spans[-1][2].orig_filename, "its data overlaps the central directory")
