"""What a file is, decided from its bytes, and header checks for safetensors and GGUF.

Names lie (a pickle called ``model.safetensors`` is still a pickle), so every
validator asks ``sniff`` first. The header checks read only the header, so a
100 GB file is checked in milliseconds.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
from pathlib import Path

SAFETENSORS_DTYPES = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}
SAFETENSORS_HEADER_LIMIT = 64 * 1024 * 1024  # the reference reader allows 100 MB; we are stricter
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_COMPRESSED = (b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00", b"\x04\x22\x4d\x18")


def _safetensors_head(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:].lstrip(b" ")[:1] == b"{"


def _has_eocd(path: Path, size: int) -> bool:
    """A zip is found by its end-of-central-directory record, not by 'PK' at offset 0."""
    with open(path, "rb") as f:
        tail = min(size, 65536 + 22)
        f.seek(size - tail)
        return b"PK\x05\x06" in f.read(tail)


def sniff(path: Path) -> str:
    """pickle | zip | numpy | safetensors | gguf | tar | compressed | other."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return "other"
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if head.startswith(b"GGUF"):
        return "gguf"
    if _safetensors_head(head, size):
        return "safetensors"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")) or (size >= 22 and _has_eocd(path, size)):
        return "zip"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(_COMPRESSED) or (len(head) > 2 and head[0] == 0x78
                                         and (head[0] * 256 + head[1]) % 31 == 0):
        return "compressed"
    from .pickle_scan import looks_like_pickle

    if looks_like_pickle(path):
        return "pickle"
    return "other"


def check_safetensors(path: Path, header_limit: int = SAFETENSORS_HEADER_LIMIT) -> list[str]:
    """Problems with a safetensors file's header and layout; [] when it is sound."""
    size = os.path.getsize(path)
    if size < 8:
        return ["header too small"]
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        if n > header_limit:
            return [f"header of {n} bytes is larger than the {header_limit} byte limit"]
        if n > size - 8:
            return [f"header length {n} runs past the end of the file ({size} bytes)"]
        raw = f.read(n)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ["header is not valid UTF-8"]
    if text.rstrip(" ") != text.rstrip():
        return ["header padding is not spaces"]
    problems: list[str] = []

    def no_dupes(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            problems.append("duplicate keys in header")
        return dict(pairs)

    try:
        header = json.loads(text, object_pairs_hook=no_dupes)
    except ValueError as e:
        return [f"header is not valid JSON ({e})"]
    if not isinstance(header, dict):
        return ["header is not a JSON object"]
    meta = header.pop("__metadata__", None)
    if meta is not None and not (isinstance(meta, dict)
                                 and all(isinstance(v, str) for v in meta.values())):
        problems.append("__metadata__ must map strings to strings")
    spans = []
    for name, t in header.items():
        where = f"tensor {name!r}"
        if not name or _CONTROL.search(name):
            problems.append(f"{where}: empty name or control characters in the name")
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            problems.append(f"{where}: entry must have exactly dtype, shape, data_offsets")
            continue
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            problems.append(f"{where}: unknown dtype {dtype!r}")
            continue
        if not (isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)):
            problems.append(f"{where}: shape must be a list of non-negative integers")
            continue
        if not (isinstance(offs, list) and len(offs) == 2 and all(type(o) is int and o >= 0
                                                                   for o in offs)):
            problems.append(f"{where}: data_offsets must be two non-negative integers")
            continue
        bits = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if bits % 8:
            problems.append(f"{where}: does not end on a byte boundary")
            continue
        if offs[1] < offs[0] or offs[1] - offs[0] != bits // 8:
            problems.append(f"{where}: data_offsets {offs} do not hold {shape} x {dtype}")
            continue
        spans.append((offs[0], offs[1], name))
    if problems:
        return problems
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            problems.append(f"tensor {name!r}: {'gap' if begin > pos else 'overlap'} at byte {pos}")
        pos = max(pos, end)
    buffer = size - 8 - n
    if pos != buffer:
        problems.append(f"tensors cover {pos} bytes but the data section has {buffer}")
    return problems


_GGUF_TYPE_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def check_gguf(path: Path, max_count: int = 1 << 24) -> list[str]:
    """GGUF magic, version and sane counts (bounded before anything is allocated)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(24)
    if len(head) < 8 or head[:4] != b"GGUF":
        return ["not a GGUF file (bad magic)"]
    (version,) = struct.unpack("<I", head[4:8])
    endian = "<"
    if version not in (1, 2, 3):
        (swapped,) = struct.unpack(">I", head[4:8])
        if swapped not in (1, 2, 3):
            return [f"unsupported GGUF version {version}"]
        version, endian = swapped, ">"
    if version == 1:
        if len(head) < 16:
            return ["truncated GGUF header"]
        tensors, kvs = struct.unpack(endian + "II", head[8:16])
    else:
        if len(head) < 24:
            return ["truncated GGUF header"]
        tensors, kvs = struct.unpack(endian + "QQ", head[8:24])
    problems = []
    if tensors > max_count or tensors * 8 > size:
        problems.append(f"tensor count {tensors} is implausible for a {size} byte file")
    if kvs > max_count or kvs * 8 > size:
        problems.append(f"metadata count {kvs} is implausible for a {size} byte file")
    return problems
