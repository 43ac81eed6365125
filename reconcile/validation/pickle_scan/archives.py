"""Torch's oldest format (a tar of pickles) and compressed pickles (joblib .gz/.bz2/.xz/.z)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import tarfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from .findings import Finding, _note, _prefixed
from .stream import scan_stream
from .values import _Malformed

# --- tar, compressed --------------------------------------------------------------------


def _scan_tar(path: Path, rel: str, prefix: str | None, depth: int,
              blob: Callable[..., list[Finding]]) -> list[Finding]:
    """Torch's oldest format is a tar of pickles (sys_info, pickle, tensors, storages)."""
    findings: list[Finding] = []
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                member = _prefixed(prefix, m.name)

                def open_(m: tarfile.TarInfo = m) -> Any:
                    return tf.extractfile(m)

                findings += blob(open_, m.size, rel, member, depth)
    except (tarfile.TarError, OSError, EOFError) as e:
        findings.append(_note(rel, prefix, 0, f"tar unreadable ({e})"))
    return findings


class _Capped:
    def __init__(self, f: Any, cap: int) -> None:
        self.f, self.left = f, cap

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(n if n >= 0 else 1 << 20)
        self.left -= len(data)
        if self.left < 0:
            raise _Malformed("decompresses past the size cap")
        return data


class _ZlibReader:
    def __init__(self, f: Any) -> None:
        self.f, self.d = f, zlib.decompressobj()

    def read(self, n: int = -1) -> bytes:
        n = n if n >= 0 else 1 << 20
        while True:
            if self.d.eof:
                return b""
            src = self.d.unconsumed_tail or self.f.read(1 << 16)
            if not src:
                return self.d.flush()
            out = self.d.decompress(src, n)
            if out:
                return out


def _decompressing(raw: IO[bytes], kind: str) -> Any | None:
    """A reader of what ``raw`` decompresses to (None: a format we cannot read).

    Closing ``raw`` is the caller's job; these wrappers hold no other resources.
    """
    if kind == "gzip":
        return gzip.GzipFile(fileobj=raw)
    if kind == "bz2":
        return bz2.BZ2File(raw)
    if kind in ("xz", "lzma"):
        return lzma.LZMAFile(raw)
    if kind == "zlib":
        return _ZlibReader(raw)
    return None


def _scan_compressed(path: Path, rel: str, prefix: str | None, kind: str) -> list[Finding]:
    """joblib's compressed dumps: the whole file is compressed; scan what comes out,
    up to a cap (a decompression bomb is an error, not a hang)."""
    cap = max(os.path.getsize(path) * 1024, 1 << 30)
    with open(path, "rb") as raw:
        src = _decompressing(raw, kind)
        if src is None:
            return [_note(rel, prefix, 0, f"{kind}-compressed: the scanner cannot decompress it")]
        return scan_stream(_Capped(src, cap), rel, prefix)


