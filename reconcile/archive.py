"""Unpack tar and zip archives without trusting a single name in them.

Every member is checked *before* anything is written: relative '/'-separated names
only (no absolute, '..', '.', NUL, backslash, drive letter), no duplicates, only
regular files, directories and symlinks whose target stays inside the tree; no
hard links, devices or FIFOs. Bytes are counted while streaming, so a bomb stops
at the cap whatever the headers claim. Extraction goes into a fresh directory; on
any failure it is removed, so nothing half-extracted is ever left behind.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

from .errors import IntegrityError
from .paths import check_relpath

MAX_MEMBERS = 100_000
MAX_TOTAL = 1 << 40  # 1 TiB: a cap on what streaming may produce, whatever headers say


def _refuse(label: str, member: str, why: str) -> IntegrityError:
    return IntegrityError(f"{label}: refusing member {member!r}: {why}",
                          hint="the archive is unsafe to unpack; nothing was extracted")


def _link_inside(name: str, target: str) -> bool:
    if not target or target.startswith("/") or "\0" in target:
        return False
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    return not (joined == ".." or joined.startswith("../") or joined.startswith("/"))


def _sniff(path: Path, label: str) -> str:
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04") or head.startswith(b"PK\x05\x06"):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise IntegrityError(f"{label}: not a tar or zip archive (extract = true needs one)")


def safe_extract(archive: Path, dest: Path, max_total: int = MAX_TOTAL,
                 label: str | None = None) -> None:
    """Unpack ``archive`` into ``dest`` (which must not exist yet).

    ``label`` names the archive in errors (store objects are named by their hash).
    """
    archive, dest = Path(archive), Path(dest)
    label = label or archive.name
    dest.mkdir(mode=0o700)
    try:
        if _sniff(archive, label) == "zip":
            _extract_zip(archive, dest, max_total, label)
        else:
            _extract_tar(archive, dest, max_total, label)
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise


def _check_names(label: str, names: list[str]) -> list[str]:
    if len(names) > MAX_MEMBERS:
        raise _refuse(label, names[0], f"more than {MAX_MEMBERS} members")
    seen: set[str] = set()
    out = []
    for raw in names:
        name = raw[:-1] if raw.endswith("/") else raw
        try:
            clean = check_relpath(name)
        except ValueError as e:
            raise _refuse(label, raw, f"{e} (path escape)") from None
        key = clean.casefold()
        if key in seen:
            raise _refuse(label, raw, "duplicate name")
        seen.add(key)
        out.append(clean)
    return out


def _write(src, target: Path, budget: list[int], label: str, name: str) -> None:
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "wb") as out:
        while chunk := src.read(1 << 20):
            budget[0] -= len(chunk)
            if budget[0] < 0:
                raise _refuse(label, name, "unpacks to more than the size cap (bomb?)")
            out.write(chunk)


def _mkparents(dest: Path, clean: str) -> Path:
    target = dest / clean
    parent = target.parent
    # refuse to write through a symlink an earlier member planted
    rel = Path(clean).parent
    cur = dest
    for part in rel.parts:
        cur = cur / part
        if cur.is_symlink():
            raise IntegrityError(f"member {clean!r} would be written through a symlink")
    parent.mkdir(parents=True, exist_ok=True)
    return target


def _extract_tar(archive: Path, dest: Path, max_total: int, label: str) -> None:
    with tarfile.open(archive, "r:*") as tf:
        members = tf.getmembers()
        names = _check_names(label, [m.name for m in members])
        for m, clean in zip(members, names, strict=True):
            if m.issym():
                if not _link_inside(clean, m.linkname):
                    raise _refuse(label, m.name, f"symlink to {m.linkname!r} escapes the tree")
            elif m.islnk():
                raise _refuse(label, m.name, "hard links are not allowed")
            elif not (m.isfile() or m.isdir()):
                raise _refuse(label, m.name, "device, FIFO or other special file")
        budget = [max_total]
        for m, clean in zip(members, names, strict=True):
            target = _mkparents(dest, clean)
            if m.isdir():
                target.mkdir(exist_ok=True)
            elif m.issym():
                os.symlink(m.linkname, target)
            else:
                src = tf.extractfile(m)
                assert src is not None
                _write(src, target, budget, label, m.name)
                os.chmod(target, 0o755 if m.mode & 0o111 else 0o644)


def _extract_zip(archive: Path, dest: Path, max_total: int, label: str) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        names = _check_names(label, [i.filename for i in infos])
        links = {}
        for info, clean in zip(infos, names, strict=True):
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                target = zf.read(info).decode("utf-8", "replace")
                if not _link_inside(clean, target):
                    raise _refuse(label, info.filename, f"symlink to {target!r} escapes the tree")
                links[clean] = target
            elif stat.S_IFMT(mode) and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                raise _refuse(label, info.filename, "device, FIFO or other special file")
        budget = [max_total]
        for info, clean in zip(infos, names, strict=True):
            target = _mkparents(dest, clean)
            if info.is_dir():
                target.mkdir(exist_ok=True)
            elif clean in links:
                os.symlink(links[clean], target)
            else:
                with zf.open(info) as src:  # CRC is checked as it streams
                    _write(src, target, budget, label, info.filename)
                if (info.external_attr >> 16) & 0o111:
                    os.chmod(target, 0o755)
