"""Zip containers (PyTorch checkpoints, .npz, .keras): every member, streamed, CRC-checked."""

from __future__ import annotations

import itertools
import os
import struct
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .findings import WARNING, Finding, _note, _prefixed

# --- zip --------------------------------------------------------------------------------


@dataclass
class _Entry:
    name: str
    offset: int  # of the local header
    data_start: int
    csize: int | None  # None: unknown (data descriptor), read to the end of the stream
    usize: int | None
    method: int
    flags: int
    crc: int | None

    @classmethod
    def of(cls, info: zipfile.ZipInfo, data_start: int) -> _Entry:
        """A central-directory entry whose data begins at ``data_start`` (local header)."""
        return cls(info.filename, info.header_offset, data_start, info.compress_size,
                   info.file_size, info.compress_type, info.flag_bits, info.CRC)


class _Opener(Protocol):
    def __call__(self) -> Any: ...


class _MemberStream:
    """A zip member's data read with ``os.pread`` straight from the local header's data:
    no central-directory trust, CRC computed on the fly, output capped at the declared
    size, constant memory (deflate output produced on demand)."""

    def __init__(self, fd: int, entry: _Entry, file_size: int) -> None:
        self.fd, self.e = fd, entry
        self.cpos = entry.data_start
        self.cend = (
            file_size if entry.csize is None else min(file_size, entry.data_start + entry.csize)
        )
        self.left = entry.usize if entry.usize is not None else 1 << 62
        self.crc = 0
        self.total = 0
        self.done = False
        self.tail = b""
        self.d: Any = None
        self.is_zlib = entry.method == 8
        if entry.method == 8:
            self.d = zlib.decompressobj(-15)
        elif entry.method in (12, 14):
            self.d = zipfile._get_decompressor(entry.method)  # bz2 / lzma as zipfile does

    def _compressed(self, n: int) -> bytes:
        n = min(n, self.cend - self.cpos)
        if n <= 0:
            return b""
        data = os.pread(self.fd, n, self.cpos)
        self.cpos += len(data)
        return data

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = 1 << 62
        out = bytearray()
        while len(out) < n and not self.done and self.left > 0:
            want = min(n - len(out), self.left, 1 << 20)
            if self.d is None:
                chunk = self._compressed(want)
                if not chunk:
                    self.done = True
            else:
                chunk = self._inflate(want)
            out += chunk
            self.left -= len(chunk)
        data = bytes(out)
        self.crc = zlib.crc32(data, self.crc)
        self.total += len(data)
        return data

    def _inflate(self, want: int) -> bytes:
        if self.is_zlib:
            if self.d.eof:
                self.done = True
                return b""
            src = self.d.unconsumed_tail or self._compressed(1 << 16)
            if not src:
                self.done = True
                return self.d.flush()[:want]
            return self.d.decompress(src, want)
        if getattr(self.d, "eof", False):
            self.done = True
            return b""
        src = self._compressed(1 << 16) if getattr(self.d, "needs_input", True) else b""
        if not src and getattr(self.d, "needs_input", True):
            self.done = True
            return b""
        try:
            return self.d.decompress(src, want)
        except TypeError:  # zipfile's LZMA wrapper takes no max_length
            return self.d.decompress(src)

    def drain(self) -> None:
        while self.read(1 << 20):
            pass


def _local_header(fd: int, offset: int, file_size: int) -> _Entry | None:
    if not 0 <= offset <= file_size - 30:  # a damaged directory can point anywhere
        return None
    raw = os.pread(fd, 30, offset)
    if len(raw) < 30 or raw[:4] != b"PK\x03\x04":
        return None
    (_v, flags, method, _t, _d, crc, csize, usize, nlen, xlen) = struct.unpack(
        "<HHHHHIIIHH", raw[4:30]
    )
    name_raw = os.pread(fd, nlen, offset + 30)
    extra = os.pread(fd, xlen, offset + 30 + nlen)
    name = name_raw.decode("utf-8" if flags & 0x800 else "cp437", "replace")
    if 0xFFFFFFFF in (csize, usize):  # zip64: sizes in extra field 0x0001
        i = 0
        while i + 4 <= len(extra):
            tag, size = struct.unpack("<HH", extra[i : i + 4])
            if tag == 1:
                field = extra[i + 4 : i + 4 + size]
                vals = [v[0] for v in struct.iter_unpack("<Q", field[: len(field) // 8 * 8])]
                if usize == 0xFFFFFFFF and vals:
                    usize = vals.pop(0)
                if csize == 0xFFFFFFFF and vals:
                    csize = vals.pop(0)
            i += 4 + size
    unknown = bool(flags & 8) and csize == 0
    return _Entry(
        name,
        offset,
        offset + 30 + nlen + xlen,
        None if unknown else csize,
        None if unknown else usize,
        method,
        flags,
        None if unknown else crc,
    )


def _find_all(fd: int, needle: bytes, start: int, end: int) -> Iterator[int]:
    """Offsets of needle in [start, end), reading 1 MiB at a time."""
    pos = max(start, 0)  # offsets from a damaged directory may be negative
    while pos < end:
        chunk = os.pread(fd, min(1 << 20, end - pos) + len(needle) - 1, pos)
        if not chunk:
            return
        i = chunk.find(needle)
        while i >= 0 and pos + i < end:
            yield pos + i
            i = chunk.find(needle, i + 1)
        pos += max(len(chunk) - len(needle) + 1, 1)


def _crc_check(entry: _Entry, rel: str) -> Callable[[Any], list[Finding]]:
    def check(s: Any) -> list[Finding]:
        s.drain()
        out = []
        if entry.crc is not None and s.crc != entry.crc:
            out.append(
                _note(
                    rel,
                    entry.name,
                    0,
                    f"CRC-32 mismatch ({s.crc:08x} != {entry.crc:08x}): zipfile "
                    "refuses this member, other readers load it",
                )
            )
        if entry.usize is not None and s.total != entry.usize:
            out.append(
                _note(rel, entry.name, 0, f"member holds {s.total} bytes, declared {entry.usize}")
            )
        return out

    return check


def _scan_entry(
    blob: Callable[..., list[Finding]],
    fd: int, e: _Entry, rel: str, file_size: int, prefix: str | None, depth: int
) -> list[Finding]:
    member = _prefixed(prefix, e.name)
    out: list[Finding] = []
    if e.name.endswith("/") and not e.usize:
        return out
    if "/code/" in f"/{e.name}" and e.name.endswith(".py"):
        out.append(
            _note(rel, member, 0, "TorchScript source: compiled and run by torch.jit.load", WARNING)
        )
    if e.flags & 1:
        return [*out, _note(rel, member, e.offset, "encrypted: cannot be scanned")]
    if e.method not in (0, 8, 12, 14):
        return [
            *out,
            _note(rel, member, e.offset, f"compression method {e.method} cannot be scanned"),
        ]
    if e.csize is not None and e.data_start + e.csize > file_size:
        out.append(_note(rel, member, e.offset, "member data runs past the end of the file"))
    try:
        out += blob(
            lambda: _MemberStream(fd, e, file_size), e.usize, rel, member, depth, _crc_check(e, rel)
        )
    except Exception as err:  # any damage inside a member: fail closed, keep going
        out.append(_note(rel, member, 0, f"member unreadable ({err})"))
    return out


def _scan_zip(path: Path, rel: str, prefix: str | None, depth: int,
              blob: Callable[..., list[Finding]]) -> list[Finding]:
    """Every member of a zip; ``blob`` scans one (files._scan_blob: it recurses into
    nested containers, so it is passed in rather than imported)."""
    findings: list[Finding] = []
    with open(path, "rb") as f:
        fd = f.fileno()
        size = os.fstat(fd).st_size
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                zf = zipfile.ZipFile(f)
                infos = zf.infolist()
                cd_start = zf.start_dir
        except Exception as e:  # any failure: fall back to local headers
            findings.append(
                _note(
                    rel,
                    prefix,
                    0,
                    f"zip central directory unreadable ({e}); members "
                    "found by their local headers instead",
                )
            )
            for off in _find_all(fd, b"PK\x03\x04", 0, size):
                e2 = _local_header(fd, off, size)
                if e2 is not None:
                    findings += _scan_entry(blob, fd, e2, rel, size, prefix, depth)
            return findings
        seen: set[str] = set()
        spans: list[tuple[int, int, str]] = []
        for info in infos:
            member = _prefixed(prefix, info.filename)
            if info.filename in seen:
                findings.append(
                    _note(
                        rel,
                        member,
                        info.header_offset,
                        "duplicate member name: readers disagree on which one they load",
                    )
                )
            seen.add(info.filename)
            local = _local_header(fd, info.header_offset, size)
            if local is None:
                findings.append(
                    _note(
                        rel,
                        member,
                        info.header_offset,
                        "central directory entry points at no local header",
                    )
                )
                continue
            if local.name != info.orig_filename:
                findings.append(
                    _note(
                        rel,
                        member,
                        info.header_offset,
                        f"local header names it {local.name!r}: readers "
                        "disagree on what this member is",
                    )
                )
            entry = _Entry.of(info, local.data_start)
            spans.append((info.header_offset, entry.data_start + info.compress_size, info.filename))
            findings += _scan_entry(blob, fd, entry, rel, size, prefix, depth)
        spans.sort()
        for (_a0, a1, an), (b0, _b1, bn) in itertools.pairwise(spans):
            if b0 < a1:
                findings.append(
                    _note(
                        rel,
                        _prefixed(prefix, bn),
                        b0,
                        f"member data overlaps {an!r} (zip bomb or parser confusion)",
                    )
                )
        # local headers no central entry points at: streaming readers still see them
        gaps, pos = [], 0
        for s0, s1, _ in spans:
            if s0 > pos:
                gaps.append((pos, s0))
            pos = max(pos, s1)
        if cd_start > pos:
            gaps.append((pos, cd_start))
        for g0, g1 in gaps:
            for off in _find_all(fd, b"PK\x03\x04", g0, g1):
                hidden = _local_header(fd, off, size)
                if hidden is None:
                    continue
                found = _scan_entry(blob, fd, hidden, rel, size, prefix, depth)
                if found:
                    findings.append(
                        _note(
                            rel,
                            _prefixed(prefix, hidden.name),
                            off,
                            "local header not listed in the central directory",
                        )
                    )
                    findings += found
    return findings


