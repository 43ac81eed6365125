"""Questions other validators ask: is this a pickle, does a container hold one?"""

from __future__ import annotations

import ast
import lzma
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ..magic import NPY_MAGIC, compressed_kind, zip_like
from .archives import _decompressing
from .npy import _NPY_HEADER_CAP, _descr
from .stream import _probe
from .zips import _Entry, _local_header, _MemberStream, _Opener

# --- questions other validators ask ------------------------------------------------------


def looks_like_pickle(path: Path) -> bool:
    """Would an unpickler starting at byte 0 import or call something (or is the whole
    file a pickle)? Reads only what it must: non-pickles fail within a few bytes."""
    with open(path, "rb") as f:
        if f.read(2) == b"PK":
            return False
        f.seek(0)
        return _probe(f, end=os.fstat(f.fileno()).st_size) != "no"


def _blob_has_pickle(open_: _Opener) -> bool:
    head = open_().read(8)
    if head.startswith(NPY_MAGIC):
        return _npy_object(open_())
    if head.startswith(b"PK"):
        return True  # a nested zip: report it as a container that may hold pickles
    return _probe(open_()) != "no"


def _npy_object(f: Any) -> bool:
    head = f.read(8)
    width = 2 if head[6:7] == b"\x01" else 4
    try:
        hlen = int.from_bytes(f.read(width), "little")
        header = ast.literal_eval(f.read(min(hlen, _NPY_HEADER_CAP)).decode("latin-1"))
        return _descr(header["descr"])[0] is not False
    except Exception:  # any damage: assume the worst
        return True


def contains_pickle(path: Path) -> bool:
    """Does this file or any member of it carry pickled data (harmless or not)?

    Damaged containers answer True: what cannot be read cannot be shown pickle-free.
    """
    try:
        return _contains_pickle(Path(path))
    except OSError:
        raise
    except Exception:  # corrupt zip/npy/compressed data
        return True


def _contains_pickle(path: Path) -> bool:
    if looks_like_pickle(path):
        return True
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(512)
        if head.startswith(NPY_MAGIC):
            f.seek(0)
            return _npy_object(f)
        if zip_like(f, size, head):
            fd = f.fileno()
            try:
                with zipfile.ZipFile(f) as zf:
                    infos = zf.infolist()
            except Exception:  # unreadable containers count as suspicious
                return True
            for info in infos:
                local = _local_header(fd, info.header_offset, size)
                if local is None:
                    return True
                e = _Entry.of(info, local.data_start)
                if e.method not in (0, 8, 12, 14) or e.flags & 1:
                    return True
                if _blob_has_pickle(lambda e=e: _MemberStream(fd, e, size)):
                    return True
            return False
    kind = compressed_kind(head)
    if kind is not None:
        return _compressed_probe(path, kind)
    return False


def _compressed_probe(path: Path, kind: str) -> bool:
    with open(path, "rb") as raw:
        src = _decompressing(raw, kind)
        if src is None:
            return True  # cannot look inside: assume it may hold a pickle
        try:
            return _probe(src) != "no"
        except (OSError, EOFError, zlib.error, lzma.LZMAError):
            return False


