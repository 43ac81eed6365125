"""NumPy .npy files: an object array is a pickle; any other dtype is data."""

from __future__ import annotations

import ast
import math
import os
import re
from typing import Any

from ..magic import NPY_MAGIC
from .findings import Finding, _note
from .stream import scan_stream

# --- .npy -------------------------------------------------------------------------------

_NPY_HEADER_CAP = 1 << 20


def _descr(d: Any) -> tuple[bool | None, int | None]:
    """(has objects — None if unsure, itemsize — None if unknown) of an .npy descr."""
    if isinstance(d, str):
        s = d.lstrip("<>|=")
        if s.startswith("O") or s.lower().startswith("object"):
            return True, None
        m = re.fullmatch(r"([biufcmMSUVa?])(\d*)(\[\w+\])?", s)
        if not m:
            return False, None
        kind, digits = m.group(1), m.group(2)
        if kind == "?":
            return False, 1
        if not digits:
            return False, None
        return False, int(digits) * (4 if kind == "U" else 1)
    if isinstance(d, tuple) and len(d) == 2:
        obj, size = _descr(d[0])
        shape = d[1] if isinstance(d[1], tuple) else (d[1],)
        if size is not None and all(type(x) is int and x >= 0 for x in shape):
            return obj, size * math.prod(shape)
        return obj, None
    if isinstance(d, list):
        total: int | None = 0
        any_obj: bool | None = False
        for field in d:
            if not (isinstance(field, (tuple, list)) and len(field) in (2, 3)):
                return None, None
            sub = field[1] if len(field) == 2 else (field[1], field[2])
            obj, size = _descr(sub)
            if obj is None or obj:
                any_obj = obj if any_obj is False else any_obj
                if obj:
                    any_obj = True
            total = None if total is None or size is None else total + size
        return any_obj, total
    return None, None


def scan_npy(
    f: Any, file: str, member: str | None, size: int | None = None, base: int = 0
) -> list[Finding]:
    """An .npy: the header by ``ast.literal_eval``; object arrays carry a pickle."""
    head = f.read(8)
    if len(head) < 8 or head[:6] != NPY_MAGIC:
        return [_note(file, member, base, "not a .npy file")]
    major = head[6]
    if major not in (1, 2, 3):
        return [_note(file, member, base, f"unsupported .npy version {major}")]
    width = 2 if major == 1 else 4
    raw = f.read(width)
    if len(raw) < width:
        return [_note(file, member, base, "truncated .npy header")]
    hlen = int.from_bytes(raw, "little")
    if hlen > _NPY_HEADER_CAP:
        return [_note(file, member, base, f".npy header of {hlen} bytes")]
    start = base + 8 + width + hlen
    text = f.read(hlen)
    try:
        header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin-1"))
        descr, shape = header["descr"], header["shape"]
    except Exception:  # literal_eval raises many kinds: all mean unreadable
        return [_note(file, member, base, "unparseable .npy header")]
    has_obj, itemsize = _descr(descr)
    if has_obj is not False:
        # np.load(allow_pickle=True) unpickles everything after the header
        end = base + size if size is not None and hasattr(f, "seek") else None
        return scan_stream(f, file, member, base=start, end=end, require_evidence=has_obj is None)
    if (
        size is None
        or itemsize is None
        or not isinstance(shape, tuple)
        or not all(type(d) is int and d >= 0 for d in shape)
    ):
        return []
    expected, actual = math.prod(shape) * itemsize, size - (start - base)
    if expected == actual:
        return []
    out = [
        _note(
            file, member, start, f"array data is {actual} bytes but the header declares {expected}"
        )
    ]
    if actual > expected:  # trailing bytes: a second loader could unpickle them
        if hasattr(f, "seek"):
            f.seek(expected, os.SEEK_CUR)
        else:
            left = expected
            while left and (chunk := f.read(min(left, 1 << 20))):
                left -= len(chunk)
        out += scan_stream(f, file, member, base=start + expected)
    return out


