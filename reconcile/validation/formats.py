"""Header checks for safetensors and GGUF (what a file *is* is ``kinds.sniff``'s question).

The header checks read only the header and the file size, so a 100 GB file is checked in
milliseconds and a hostile header cannot make us allocate more than it is long.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import IO, Any

from .chat_template import findings as template_findings

# dtype -> bits per element (safetensors 0.8 accepts exactly these, case-sensitive)
SAFETENSORS_DTYPES: dict[str, int] = {
    "BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "F8_E4M3FNUZ": 8,
    "F8_E5M2FNUZ": 8, "I16": 16, "U16": 16, "F16": 16, "BF16": 16, "I32": 32, "U32": 32,
    "F32": 32, "C64": 64, "F64": 64, "I64": 64, "U64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6,
}  # fmt: skip
# The reference reader allows 100,000,000 bytes; real headers are kilobytes to a few MB.
SAFETENSORS_HEADER_LIMIT = 64 * 1024 * 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")



# --- safetensors --------------------------------------------------------------------------


def _no_duplicates(problems: list[str]) -> Any:
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                problems.append(f"duplicate keys in header: {k!r} (readers keep different ones)")
            out[k] = v
        return out

    return hook


def _nonneg_ints(v: Any, n: int | None = None) -> bool:
    return (
        isinstance(v, list)
        and (n is None or len(v) == n)
        and all(type(x) is int and x >= 0 for x in v)
    )


def check_safetensors(path: Path, header_limit: int = SAFETENSORS_HEADER_LIMIT) -> list[str]:
    """Problems with a safetensors file's header and layout; [] when it is sound.

    Stricter than the reference reader where it is lax (duplicate keys, unknown keys in
    entries, empty or control-character names), because a file two readers see
    differently is a file someone can make mean two things.
    """
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
    if n == 0:
        return ["header is empty: not valid JSON"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return ["header is not valid UTF-8"]
    problems: list[str] = []
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates(problems))
    except (ValueError, RecursionError) as e:
        return [f"header is not valid JSON ({str(e)[:200]})"]
    if not isinstance(header, dict):
        return ["header is not a JSON object"]
    buffer = size - 8 - n
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        problems.append("__metadata__ must map strings to strings")
    spans: list[tuple[int, int, str]] = []
    bounds: list[str] = []
    for name, t in header.items():
        where = f"tensor {name!r}"
        if not name or _CONTROL.search(name):
            problems.append(f"{where}: empty name or control characters in the name")
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            problems.append(f"{where}: entry must have exactly dtype, shape, data_offsets")
            continue
        dtype, shape, offs = t["dtype"], t["shape"], t["data_offsets"]
        if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
            problems.append(f"{where}: unknown dtype {dtype!r}")
            continue
        if not _nonneg_ints(shape):
            problems.append(f"{where}: shape must be a list of non-negative integers")
            continue
        if not _nonneg_ints(offs, 2):
            problems.append(f"{where}: data_offsets must be two non-negative integers")
            continue
        begin, end = offs
        bits = math.prod(shape) * SAFETENSORS_DTYPES[dtype]
        if bits // 8 >= 1 << 64:
            problems.append(f"{where}: overflow computing the buffer size from its shape")
            continue
        if bits % 8:
            problems.append(f"{where}: {shape} x {dtype} does not end on a byte boundary")
            continue
        if end < begin:
            problems.append(f"{where}: data_offsets {offs} end before they begin")
            continue
        if end - begin != bits // 8:
            problems.append(
                f"{where}: data_offsets {offs} do not hold {shape} x {dtype} ({bits // 8} bytes)"
            )
            continue
        if end > buffer:
            bounds.append(
                f"{where}: data_offsets end at {end}, out of bounds of the "
                f"{buffer}-byte data section"
            )
        spans.append((begin, end, name))
    if problems:
        return problems
    problems = bounds
    pos = 0
    for begin, end, name in sorted(spans):
        if begin != pos:
            kind = "gap" if begin > pos else "overlap"
            problems.append(f"tensor {name!r}: {kind} at byte {min(begin, pos)} of the data")
        pos = max(pos, end)
    if pos != buffer:
        problems.append(f"tensors cover {pos} bytes but the data section has {buffer}")
    return problems


# --- GGUF ---------------------------------------------------------------------------------

# metadata value type -> size in bytes (8 = string, 9 = array)
_GGUF_SCALARS = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
# ggml tensor type -> (elements per block, bytes per block); newer types are not sized
GGML_TYPES: dict[int, tuple[int, int]] = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34),
    9: (32, 40), 10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176),
    14: (256, 210), 15: (256, 292), 16: (256, 66), 17: (256, 74), 18: (256, 98),
    19: (256, 50), 20: (32, 18), 21: (256, 110), 22: (256, 82), 23: (256, 136), 24: (1, 1),
    25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8), 29: (256, 56), 30: (1, 2), 34: (256, 54),
    35: (256, 66), 39: (32, 17), 40: (64, 36), 41: (128, 18),
}  # fmt: skip
_GGUF_MAX_DIMS = 4
_TEMPLATE_MAX = 1 << 20  # real chat templates are a few KiB
_MAX_PROBLEMS = 20


class _GGUFError(Exception):
    pass


class _GGUFReader:
    """Sequential reads that never go past the file and never allocate more than asked
    for small fields; long strings and arrays are skipped with seek."""

    def __init__(self, f: IO[bytes], size: int, endian: str, wide: bool) -> None:
        self.f, self.size, self.e = f, size, endian
        self.len_fmt = "Q" if wide else "I"

    def pos(self) -> int:
        return self.f.tell()

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos() + n > self.size:
            raise _GGUFError(f"{what} runs past the end of the file")

    def unpack(self, fmt: str, what: str) -> Any:
        n = struct.calcsize(self.e + fmt)
        self.need(n, what)
        return struct.unpack(self.e + fmt, self.f.read(n))[0]

    def length(self, what: str) -> int:
        return int(self.unpack(self.len_fmt, what))

    def string(self, what: str, keep: int = 0) -> str | None:
        n = self.length(f"{what} length")
        self.need(n, what)
        if n <= keep:
            return self.f.read(n).decode("utf-8", "replace")
        self.f.seek(n, os.SEEK_CUR)
        return None

    def skip_value(self, vtype: int, what: str, depth: int = 0) -> None:
        if vtype in _GGUF_SCALARS:
            self.need(_GGUF_SCALARS[vtype], what)
            self.f.seek(_GGUF_SCALARS[vtype], os.SEEK_CUR)
        elif vtype == 8:
            self.string(what)
        elif vtype == 9 and depth < 2:
            etype = self.unpack("I", f"{what} element type")
            count = self.length(f"{what} length")
            if etype in _GGUF_SCALARS:
                self.need(count * _GGUF_SCALARS[etype], what)
                self.f.seek(count * _GGUF_SCALARS[etype], os.SEEK_CUR)
            elif etype in (8, 9):
                # each element takes at least its length field: bound count before looping
                self.need(count * struct.calcsize(self.len_fmt), what)
                for _ in range(count):
                    self.skip_value(etype, what, depth + 1)
            else:
                raise _GGUFError(f"{what}: unknown array element type {etype}")
        else:
            raise _GGUFError(f"{what}: unknown value type {vtype}")


def check_gguf(path: Path, max_count: int = 1 << 24, *, deep: bool = False) -> list[str]:
    """GGUF magic, version and sane counts; with ``deep``, a bounded walk of the body.

    Counts are checked against the file size before anything is read (a huge KV count
    is a memory DoS in naive readers). ``deep`` also requires string and array lengths
    to lie within the file and tensors to be aligned, inside the data section, sized
    by type x dims and not overlapping; it reads the metadata (a few MB for a large
    vocabulary) but never tensor data. It is opt-in because callers that build
    header-only stand-ins (tests, placeholders) would fail it.
    """
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 8 or head[:4] != b"GGUF":
            return ["not a GGUF file (bad magic)"]
        endian = "<"
        (version,) = struct.unpack("<I", head[4:8])
        if version not in (1, 2, 3):
            (swapped,) = struct.unpack(">I", head[4:8])
            if swapped not in (1, 2, 3):
                return [f"unsupported GGUF version {version}"]
            version, endian = swapped, ">"  # big-endian files exist (s390x builds)
        wide = version >= 2  # v1 used 32-bit counts and lengths
        width = 8 if wide else 4
        if len(head) < 8 + 2 * width:
            return ["truncated GGUF header"]
        tensors, kvs = struct.unpack(endian + ("QQ" if wide else "II"), head[8 : 8 + 2 * width])
        problems = []
        # each KV takes at least a key length, a type and one byte; each tensor info at
        # least a name length, n_dims, one dim, a type and an offset
        if tensors > max_count or tensors * (2 * width + 16) > size:
            problems.append(f"tensor count {tensors} is implausible for a {size} byte file")
        if kvs > max_count or kvs * (width + 5) > size:
            problems.append(f"metadata count {kvs} is implausible for a {size} byte file")
        if problems or not deep:
            return problems
        f.seek(8 + 2 * width)
        r = _GGUFReader(f, size, endian, wide)
        try:
            alignment = _gguf_metadata(r, kvs, problems)
            _gguf_tensors(r, tensors, alignment, problems)
        except _GGUFError as e:
            problems.append(str(e))
        except (struct.error, OSError) as e:
            problems.append(f"unreadable GGUF structure ({e})")
    return problems[:_MAX_PROBLEMS]


def _gguf_metadata(r: _GGUFReader, kvs: int, problems: list[str]) -> int:
    alignment = 32
    seen: set[str] = set()
    for i in range(kvs):
        key = r.string(f"metadata key {i}", keep=65535)
        if key is None:
            raise _GGUFError(f"metadata key {i} longer than 65535 bytes")
        if key in seen:
            problems.append(f"duplicate metadata key {key!r}")
        seen.add(key)
        vtype = r.unpack("I", f"type of {key!r}")
        if key == "general.alignment":
            if vtype != 4:
                problems.append("general.alignment must be a uint32")
                r.skip_value(vtype, key)
                continue
            alignment = r.unpack("I", key)
            if alignment == 0 or alignment & (alignment - 1):
                problems.append(f"general.alignment {alignment} is not a power of two")
                alignment = 32
        elif key.split(".")[:2] == ["tokenizer", "chat_template"] and vtype == 8:
            text = r.string(repr(key), keep=_TEMPLATE_MAX)
            if text is None:
                problems.append(f"{key}: a chat template over {_TEMPLATE_MAX} bytes")
            problems.extend(f"{key}: chat template {f}" for f in template_findings(text or ""))
        else:
            r.skip_value(vtype, repr(key))
    return alignment


def _gguf_tensors(r: _GGUFReader, tensors: int, alignment: int, problems: list[str]) -> None:
    infos: list[tuple[str, int, int | None]] = []
    for i in range(tensors):
        name = r.string(f"tensor {i} name", keep=65535)
        if name is None:
            raise _GGUFError(f"tensor {i} name longer than 65535 bytes")
        n_dims = r.unpack("I", f"tensor {name!r} n_dims")
        if not 1 <= n_dims <= _GGUF_MAX_DIMS:
            raise _GGUFError(f"tensor {name!r}: {n_dims} dimensions (1..{_GGUF_MAX_DIMS})")
        dims = [r.length(f"tensor {name!r} dims") for _ in range(n_dims)]
        ttype = r.unpack("I", f"tensor {name!r} type")
        offset = r.unpack("Q", f"tensor {name!r} offset")
        nbytes = None
        if ttype in GGML_TYPES:
            block, bsize = GGML_TYPES[ttype]
            count = math.prod(dims)
            if dims[0] % block:
                problems.append(
                    f"tensor {name!r}: {dims[0]} is not a multiple of the type's block of {block}"
                )
            else:
                nbytes = count // block * bsize
        if offset % alignment:
            problems.append(f"tensor {name!r}: offset {offset} not aligned to {alignment}")
        infos.append((name, offset, nbytes))
    data_start = -(-r.pos() // alignment) * alignment
    data_len = r.size - data_start
    if data_len < 0:
        problems.append("no room for the data section")
        return
    spans = []
    for name, offset, nbytes in infos:
        end = offset + (nbytes or 0)
        if end > data_len:
            problems.append(
                f"tensor {name!r}: [{offset}, {end}) lies outside the {data_len}-byte data section"
            )
        elif nbytes is not None:
            spans.append((offset, end, name))
    spans.sort()
    for (_a0, a1, an), (b0, _b1, bn) in itertools.pairwise(spans):
        if b0 < a1:
            problems.append(f"tensors {an!r} and {bn!r} overlap")
