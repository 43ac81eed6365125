"""A static pickle scanner: walks opcodes, never unpickles, never imports.

Rules (from the research in shared/notes/security.md):
1. Simulate the unpickler's stack and memo while walking ``pickletools.genops``, so a
   ``STACK_GLOBAL`` whose strings arrive through ``BINGET``/``MEMOIZE`` or any string
   opcode is resolved exactly; operands we cannot resolve are findings.
2. Allow-list, not deny-list: exact ``(module, name)`` pairs (after Python 2 name
   mapping) that real torch/numpy/joblib checkpoints need. Anything else is a
   finding; the deny-list only decides whether it is called critical.
3. Decide the format from the bytes: every file, every zip member, whatever its name.
4. Fail closed: parse errors, unreadable members and bad CRCs are findings, and
   findings made before an error are kept. Scan to EOF: several pickles may follow
   each other.
"""

from __future__ import annotations

import _compat_pickle
import ast
import io
import math
import mmap
import os
import pickletools
import re
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

# --- the allow-list ----------------------------------------------------------------

_TORCH_DTYPES = (
    "float32 float64 float16 bfloat16 complex32 complex64 complex128 uint8 uint16 uint32 uint64 "
    "int8 int16 int32 int64 bool qint8 quint8 qint32 quint4x2 quint2x4 float8_e5m2 float8_e4m3fn "
    "float8_e5m2fnuz float8_e4m3fnuz float8_e8m0fnu float4_e2m1fn_x2 uint1 uint2 uint3 uint4 "
    "uint5 uint6 uint7 int1 int2 int3 int4 int5 int6 int7 half float double long int short "
    "cfloat cdouble"
).split()
_TORCH_STORAGES = (
    "FloatStorage HalfStorage BFloat16Storage DoubleStorage LongStorage IntStorage ShortStorage "
    "CharStorage ByteStorage BoolStorage ComplexFloatStorage ComplexDoubleStorage QInt8Storage "
    "QUInt8Storage QInt32Storage QUInt4x2Storage QUInt2x4Storage"
).split()
_TORCH_REBUILD = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
    "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor "
    "_rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass "
    "_rebuild_device_tensor_from_cpu_tensor _rebuild_device_tensor_from_numpy"
).split()

SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [("collections", "OrderedDict"), ("collections", "Counter"), ("_codecs", "encode"),
     ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"),
     ("builtins", "slice"), ("builtins", "complex"), ("builtins", "range"),
     ("builtins", "bytes"),
     ("torch", "Size"), ("torch", "Tensor"), ("torch", "device"), ("torch", "dtype"),
     ("torch.nn.parameter", "Parameter"), ("torch.serialization", "_get_layout"),
     ("torch._tensor", "_rebuild_from_type_v2"), ("torch.storage", "TypedStorage"),
     ("torch.storage", "UntypedStorage"), ("torch.storage", "_load_from_bytes"),
     ("torch", "per_tensor_affine"), ("torch", "per_channel_affine"),
     ("torch", "per_tensor_symmetric"), ("torch", "per_channel_symmetric"),
     ("torch", "strided"), ("torch", "sparse_coo"), ("torch", "sparse_csr"),
     ("joblib.numpy_pickle", "NumpyArrayWrapper"), ("joblib.numpy_pickle", "NDArrayWrapper")]
    + [("torch", d) for d in _TORCH_DTYPES]
    + [("torch", s) for s in _TORCH_STORAGES]
    + [("torch._utils", r) for r in _TORCH_REBUILD]
    + [(f"numpy{core}.multiarray", n) for core in ("._core", ".core") for n in ("_reconstruct", "scalar")]
    + [(f"numpy{core}.numeric", "_frombuffer") for core in ("._core", ".core")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.dtypes", "Float32DType"),
       ("numpy.dtypes", "Float64DType"), ("numpy.dtypes", "Int64DType"),
       ("numpy.dtypes", "Int32DType"), ("numpy.dtypes", "UInt8DType"),
       ("numpy.dtypes", "BoolDType"), ("numpy.dtypes", "Float16DType")]
)

# Known to reach code execution, files, processes or the network: named "critical".
DANGEROUS_MODULES = frozenset(
    "os posix nt subprocess _posixsubprocess sys builtins importlib runpy pty shutil socket "
    "ctypes _ctypes marshal pickle _pickle dill cloudpickle code codeop timeit cProfile profile "
    "pdb bdb trace doctest functools operator _operator pkgutil asyncio multiprocessing "
    "webbrowser http urllib urllib3 requests httpx tempfile glob sysconfig zipimport types io "
    "_io pip ensurepip venv idlelib lib2to3 distutils setuptools mailcap logging _interpreters "
    "_xxsubinterpreters pydoc platform signal threading _thread smtplib ftplib telnetlib "
    "inspect gc weakref copyreg site imp ast compileall py_compile zipfile tarfile "
    "mlflow".split()
)
DANGEROUS_PREFIXES = ("torch.hub", "torch.utils", "torch.jit", "torch.serialization.load",
                      "numpy.f2py", "numpy.lib.format", "numpy.testing", "numpy.distutils",
                      "pandas.io", "keras.src.utils", "transformers.dynamic_module_utils")
DANGEROUS_PAIRS = frozenset([("torch", "load"), ("torch.serialization", "load"),
                             ("numpy", "load"), ("numpy", "save"), ("numpy", "fromfile"),
                             ("torch", "from_file")])

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C


@dataclass(frozen=True)
class Finding:
    """Something a loader would execute or a scanner could not prove harmless."""

    file: str
    member: str | None
    offset: int
    global_name: str
    severity: str  # critical | unknown | error | warning
    reason: str

    def __str__(self) -> str:
        where = self.file + (f"!{self.member}" if self.member else "")
        return f"{where} @ {self.offset}: {self.global_name} ({self.severity}: {self.reason})"


def normalise(module: str, name: str) -> tuple[str, str]:
    """Python 2 names as the unpickler maps them forward (fix_imports)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def classify(module: str, name: str) -> tuple[str, str] | None:
    """None when allowed; else (severity, reason)."""
    module, name = normalise(module, name)
    if (module, name) in SAFE_GLOBALS:
        return None
    if "." in name or (name.startswith("__") and name.endswith("__")):
        return "critical", "dotted or dunder name reaches arbitrary attributes"
    root = module.split(".")[0]
    if ((module, name) in DANGEROUS_PAIRS or root in DANGEROUS_MODULES
            or f"{module}.{name}".startswith(DANGEROUS_PREFIXES)):
        return "critical", "can execute code, spawn processes, or touch files or the network"
    return "unknown", "not on the allow-list of globals that weights need"


# --- a stream genops can walk, that we can peek and skip on -------------------------


class Stream:
    """read/readline/tell over any binary reader, with peek and skip (for joblib arrays)."""

    def __init__(self, f: BinaryIO, base: int = 0) -> None:
        self.f = f
        self.pos = base
        self.buf = b""

    def _fill(self, n: int) -> None:
        while len(self.buf) < n:
            chunk = self.f.read(max(n - len(self.buf), 1 << 16))
            if not chunk:
                return
            self.buf += chunk

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            data = self.buf + self.f.read()
            self.buf = b""
        else:
            self._fill(n)
            data, self.buf = self.buf[:n], self.buf[n:]
        self.pos += len(data)
        return data

    def readline(self) -> bytes:
        out = b""
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                out += self.buf[: i + 1]
                self.buf = self.buf[i + 1:]
                break
            out += self.buf
            self.buf = b""
            chunk = self.f.read(1 << 16)
            if not chunk:
                break
            self.buf = chunk
            if len(out) > 1 << 20:  # no line is that long in a real pickle
                break
        self.pos += len(out)
        return out

    def tell(self) -> int:
        return self.pos

    def at_eof(self) -> bool:
        self._fill(1)
        return not self.buf

    def skip(self, n: int) -> int:
        done = 0
        while done < n:
            got = len(self.read(min(n - done, 1 << 20)))
            if not got:
                break
            done += got
        return done


# --- the walk ----------------------------------------------------------------------


class _Mark:
    pass


MARK = _Mark()


class _Unknown:
    def __repr__(self) -> str:
        return "?"


UNKNOWN = _Unknown()


@dataclass(frozen=True)
class Global:
    module: str
    name: str


@dataclass
class Call:
    fn: Any
    args: Any


_STR_OPS = {"STRING", "BINSTRING", "SHORT_BINSTRING", "UNICODE", "BINUNICODE",
            "SHORT_BINUNICODE", "BINUNICODE8"}
_INT_OPS = {"INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"}
_GET_OPS = {"GET", "BINGET", "LONG_BINGET"}
_PUT_OPS = {"PUT", "BINPUT", "LONG_BINPUT"}


class _Walker:
    def __init__(self, file: str, member: str | None, findings: list[Finding]) -> None:
        self.file, self.member, self.findings = file, member, findings
        self.resolved: list[tuple[str, str]] = []  # every import with constant operands

    def add(self, offset: int, name: str, severity: str, reason: str) -> None:
        self.findings.append(Finding(self.file, self.member, offset, name, severity, reason))

    def check(self, offset: int, module: Any, name: Any, how: str) -> Global | Any:
        if not isinstance(module, str) or not isinstance(name, str):
            self.add(offset, f"{module!r}.{name!r}", "critical",
                     f"{how} with operands the scanner cannot resolve to constant strings")
            return UNKNOWN
        self.resolved.append((module, name))
        module, name = normalise(module, name)
        verdict = classify(module, name)
        if verdict:
            self.add(offset, f"{module}.{name}", *verdict)
        return Global(module, name)

    def walk(self, s: Stream) -> tuple[Any, bool]:
        """One pickle, up to its STOP. Returns (top value, finished cleanly)."""
        stack: list[Any] = []
        memo: dict[int, Any] = {}
        pending_array: tuple[tuple[int, ...], str] | None = None
        ops = pickletools.genops(s)
        try:
            for op, arg, pos in ops:
                pos = pos if pos is not None else s.tell()
                name = op.name
                if name == "PROTO":
                    if not 0 <= arg <= 5:
                        self.add(pos, f"PROTO {arg}", "error", "unsupported pickle protocol")
                elif name == "FRAME":
                    pass
                elif name in _STR_OPS:
                    stack.append(arg.decode("latin-1") if isinstance(arg, bytes) else arg)
                elif name in _INT_OPS:
                    stack.append(arg)
                elif name in ("NEWTRUE", "NEWFALSE"):
                    stack.append(name == "NEWTRUE")
                elif name == "NONE":
                    stack.append(None)
                elif name == "MARK":
                    stack.append(MARK)
                elif name == "EMPTY_TUPLE":
                    stack.append(())
                elif name in ("TUPLE1", "TUPLE2", "TUPLE3"):
                    n = int(name[-1])
                    items = self.pop(stack, n, pos)
                    stack.append(tuple(items))
                elif name == "TUPLE":
                    stack.append(tuple(self.pop_mark(stack, pos)))
                elif name == "EMPTY_DICT":
                    stack.append({})
                elif name == "DICT":
                    items = self.pop_mark(stack, pos)
                    stack.append(_pairs(items))
                elif name == "SETITEM":
                    k, v = self.pop(stack, 2, pos)
                    if stack and isinstance(stack[-1], dict) and _hashable(k):
                        stack[-1][k] = v
                elif name == "SETITEMS":
                    items = self.pop_mark(stack, pos)
                    if stack and isinstance(stack[-1], dict):
                        stack[-1].update(_pairs(items))
                elif name in _PUT_OPS:
                    memo[arg] = stack[-1] if stack else UNKNOWN
                elif name == "MEMOIZE":
                    memo[len(memo)] = stack[-1] if stack else UNKNOWN
                elif name in _GET_OPS:
                    stack.append(memo.get(arg, UNKNOWN))
                elif name == "GLOBAL":
                    module, _, gname = arg.partition(" ")
                    stack.append(self.check(pos, module, gname, "GLOBAL"))
                elif name == "STACK_GLOBAL":
                    module, gname = self.pop(stack, 2, pos)
                    stack.append(self.check(pos, module, gname, "STACK_GLOBAL"))
                elif name == "INST":
                    module, _, gname = arg.partition(" ")
                    fn = self.check(pos, module, gname, "INST")
                    stack.append(Call(fn, tuple(self.pop_mark(stack, pos))))
                elif name in ("EXT1", "EXT2", "EXT4"):
                    self.add(pos, f"{name} {arg}", "critical",
                             "copyreg extension code: imports a global the stream does not name")
                    stack.append(UNKNOWN)
                elif name == "REDUCE":
                    fn, args = self.pop(stack, 2, pos)
                    stack.append(self.call(pos, fn, args))
                elif name == "NEWOBJ":
                    cls, args = self.pop(stack, 2, pos)
                    stack.append(self.call(pos, cls, args))
                elif name == "NEWOBJ_EX":
                    cls, args, _kw = self.pop(stack, 3, pos)
                    stack.append(self.call(pos, cls, args))
                elif name == "OBJ":
                    items = self.pop_mark(stack, pos)
                    stack.append(self.call(pos, items[0] if items else UNKNOWN, tuple(items[1:])))
                elif name == "BUILD":
                    (state,) = self.pop(stack, 1, pos)
                    obj = stack[-1] if stack else UNKNOWN
                    pending_array = _joblib_array(obj, state)
                    if pending_array is not None:
                        self.skip_joblib_array(s, pending_array)
                elif name == "BINPERSID":
                    self.pop(stack, 1, pos)
                    stack.append(UNKNOWN)
                elif name == "PERSID":
                    stack.append(UNKNOWN)
                elif name == "STOP":
                    return (stack[-1] if stack else None), True
                else:
                    self.generic(op, stack, pos)
        except Exception as e:
            self.add(s.tell(), "-", "error", f"unparseable pickle data ({type(e).__name__}: {e})")
            return None, False
        self.add(s.tell(), "-", "error", "pickle ends without STOP")
        return None, False

    def call(self, pos: int, fn: Any, args: Any) -> Any:
        if not isinstance(fn, Global):
            self.add(pos, repr(fn), "critical", "calls a computed callable")
        return Call(fn, args)

    def skip_joblib_array(self, s: Stream, spec: tuple[tuple[int, ...], str]) -> None:
        """joblib writes array bytes inside the pickle stream right after the wrapper's BUILD."""
        shape, dtype = spec
        pad = s.read(1)
        if pad:
            s.skip(pad[0])
        if "O" in dtype:
            self.walk(s)  # object arrays are a nested pickle: scan it
            return
        itemsize = _itemsize(dtype)
        if itemsize is None:
            self.add(s.tell(), dtype, "error", "joblib array with a dtype the scanner cannot size")
            return
        s.skip(math.prod(shape) * itemsize)

    def pop(self, stack: list[Any], n: int, pos: int) -> list[Any]:
        if len(stack) < n or any(x is MARK for x in stack[len(stack) - n:]):
            raise ValueError(f"stack underflow at {pos}")
        out = stack[len(stack) - n:]
        del stack[len(stack) - n:]
        return out

    def pop_mark(self, stack: list[Any], pos: int) -> list[Any]:
        for i in range(len(stack) - 1, -1, -1):
            if stack[i] is MARK:
                out = stack[i + 1:]
                del stack[i:]
                return out
        raise ValueError(f"no MARK on the stack at {pos}")

    def generic(self, op: Any, stack: list[Any], pos: int) -> None:
        before = list(op.stack_before)
        if pickletools.markobject in before:
            self.pop_mark(stack, pos)
            before = before[: before.index(pickletools.markobject)]
        before = [x for x in before if x is not pickletools.stackslice]
        if before:
            self.pop(stack, len(before), pos)
        for x in op.stack_after:
            stack.append(MARK if x is pickletools.markobject else UNKNOWN)


def _hashable(x: Any) -> bool:
    return isinstance(x, str | int | bool | tuple) or x is None


def _pairs(items: list[Any]) -> dict[Any, Any]:
    return {k: v for k, v in zip(items[::2], items[1::2], strict=False) if _hashable(k)}


def _joblib_array(obj: Any, state: Any) -> tuple[tuple[int, ...], str] | None:
    if not (isinstance(obj, Call) and isinstance(obj.fn, Global)
            and obj.fn.module == "joblib.numpy_pickle" and obj.fn.name == "NumpyArrayWrapper"
            and isinstance(state, dict)):
        return None
    shape = state.get("shape")
    dtype = state.get("dtype")
    if isinstance(dtype, Call) and isinstance(dtype.args, tuple) and dtype.args:
        dtype = dtype.args[0]
    if not (isinstance(shape, tuple) and all(isinstance(d, int) for d in shape)):
        return None
    return shape, dtype if isinstance(dtype, str) else "?"


def _itemsize(dtype: str) -> int | None:
    d = dtype.lstrip("<>|=")
    if d and d[0] in "biufcmMSUV" and d[1:].isdigit():
        return int(d[1:]) * (4 if d[0] == "U" else 1)
    return {"?": 1, "b": 1, "B": 1, "e": 2, "f": 4, "d": 8, "g": 16}.get(d)


def scan_pickle_stream(s: Stream, file: str, member: str | None = None,
                       max_pickles: int | None = None) -> list[Finding]:
    """Every pickle in the stream, back to back, until EOF (or max_pickles)."""
    findings: list[Finding] = []
    walker = _Walker(file, member, findings)
    count = 0
    while not s.at_eof():
        top, ok = walker.walk(s)
        count += 1
        if not ok:
            break
        if count == 1 and top == LEGACY_TORCH_MAGIC:
            max_pickles = 5  # legacy torch.save: five pickles, then raw storage bytes
        if max_pickles is not None and count >= max_pickles:
            break
    return findings


# --- containers ----------------------------------------------------------------------


_IDENT = re.compile(r"^[A-Za-z_][\w.]*$")


def _head_is_pickle(head: bytes) -> bool:
    """Would an unpickler import something from these bytes before failing?

    Protocol 2+ announces itself. Protocol 0/1 have no header, so the head is walked
    like any pickle: it counts when an import (GLOBAL, INST or STACK_GLOBAL) is reached
    with constant, identifier-shaped operands. Data-only pickles cannot run code, and
    random bytes practically never get that far, so weights are not mistaken for pickles.
    """
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    if not head:
        return False
    walker = _Walker("", None, [])
    walker.walk(Stream(io.BytesIO(head)))
    return any(_IDENT.match(m) and _IDENT.match(n) for m, n in walker.resolved)


def looks_like_pickle(path: Path) -> bool:
    """Protocol 2+ by its header; protocol 0/1 (no header) by parsing its first bytes."""
    with open(path, "rb") as f:
        return _head_is_pickle(f.read(64 * 1024))


def scan_npy(f: BinaryIO, file: str, member: str | None, base: int = 0) -> list[Finding]:
    head = f.read(10)
    if head[:6] != b"\x93NUMPY":
        return [Finding(file, member, base, "-", "error", "not a .npy file")]
    major = head[6]
    if major == 1:
        (hlen,) = struct.unpack("<H", head[8:10])
        start = 10
    else:
        rest = f.read(2)
        (hlen,) = struct.unpack("<I", head[8:10] + rest)
        start = 12
    try:
        header = ast.literal_eval(f.read(hlen).decode("latin-1"))
        descr = header["descr"]
    except (ValueError, SyntaxError, KeyError, TypeError):
        return [Finding(file, member, base, "-", "error", "unparseable .npy header")]
    if "O" in repr(descr):
        return scan_pickle_stream(Stream(f, base + start + hlen), file, member)
    return []


def scan_zip(path: Path, rel: str) -> list[Finding]:
    findings: list[Finding] = []
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        findings.append(Finding(rel, None, 0, "-", "error", f"broken zip directory ({e})"))
        return findings + _scan_local_headers(path, rel)
    with zf:
        seen: set[str] = set()
        for info in zf.infolist():
            if info.filename in seen:
                findings.append(Finding(rel, info.filename, info.header_offset, "-", "error",
                                        "duplicate member name: readers disagree on which one"))
            seen.add(info.filename)
            if "/code/" in f"/{info.filename}" and info.filename.endswith(".py"):
                findings.append(Finding(rel, info.filename, info.header_offset, "-", "warning",
                                        "TorchScript source (runs at torch.jit.load)"))
            findings.extend(_scan_member(zf, info, rel, path))
    return findings


def _scan_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, rel: str, path: Path
                 ) -> list[Finding]:
    if info.is_dir():
        return []
    try:
        with zf.open(info) as m:
            head = m.read(512)
        kind = _member_kind(head)
        if kind is None:
            return []
        with zf.open(info) as m:
            if kind == "numpy":
                return scan_npy(m, rel, info.filename)
            found = scan_pickle_stream(Stream(m), rel, info.filename)
            m.read()  # reach EOF so the CRC is checked
            return found
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError) as e:
        out = [Finding(rel, info.filename, info.header_offset, "-", "error",
                       f"unreadable member ({e}); scanned from its local header instead")]
        return out + _scan_raw_member(path, rel, info.header_offset, info.filename)


def _member_kind(head: bytes) -> str | None:
    if head.startswith(b"\x93NUMPY"):
        return "numpy"
    if _head_is_pickle(head):
        return "pickle"
    return None


def _raw_reader(mm: mmap.mmap, offset: int) -> tuple[str, BinaryIO] | None:
    """Read a member from its local header, ignoring the central directory and the CRC."""
    if mm[offset:offset + 4] != b"PK\x03\x04":
        return None
    (_v, flag, method, _t, _d, _crc, csize, _usize, nlen, xlen) = struct.unpack(
        "<HHHHHIIIHH", mm[offset + 4:offset + 30])
    name = mm[offset + 30:offset + 30 + nlen].decode("utf-8", "replace")
    start = offset + 30 + nlen + xlen
    if flag & 8 and csize == 0:
        csize = len(mm) - start  # sizes in a trailing descriptor: read to the end
    data = mm[start:start + csize]
    if method == 8:
        try:
            data = zlib.decompressobj(-15).decompress(data, 1 << 30)
        except zlib.error:
            return None
    elif method != 0:
        return None
    return name, io.BytesIO(data)


def _scan_raw_member(path: Path, rel: str, offset: int, name: str) -> list[Finding]:
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        got = _raw_reader(mm, offset)
    if got is None:
        return [Finding(rel, name, offset, "-", "error", "member cannot be read at all")]
    _, data = got
    kind = _member_kind(data.read(512))
    data.seek(0)
    if kind == "numpy":
        return scan_npy(data, rel, name)
    if kind == "pickle":
        return scan_pickle_stream(Stream(data), rel, name)
    return []


def _scan_local_headers(path: Path, rel: str) -> list[Finding]:
    findings: list[Finding] = []
    if os.path.getsize(path) == 0:
        return findings
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        offset = mm.find(b"PK\x03\x04")
        while offset >= 0:
            got = _raw_reader(mm, offset)
            if got is not None:
                name, data = got
                kind = _member_kind(data.read(512))
                data.seek(0)
                if kind == "numpy":
                    findings += scan_npy(data, rel, name)
                elif kind == "pickle":
                    findings += scan_pickle_stream(Stream(data), rel, name)
            offset = mm.find(b"PK\x03\x04", offset + 4)
    return findings


def _decompressed(path: Path, cap: int) -> Iterator[bytes]:
    import bz2
    import gzip
    import lzma

    with open(path, "rb") as f:
        head = f.read(6)
    if head.startswith(b"\x1f\x8b"):
        opener: Any = gzip.open
    elif head.startswith(b"BZh"):
        opener = bz2.open
    elif head.startswith(b"\xfd7zXZ\x00"):
        opener = lzma.open
    else:
        opener = None
    total = 0
    if opener is not None:
        with opener(path, "rb") as g:
            while chunk := g.read(1 << 20):
                total += len(chunk)
                if total > cap:
                    raise ValueError("decompresses past the size cap")
                yield chunk
        return
    d = zlib.decompressobj()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            out = d.decompress(chunk, cap - total + 1)
            total += len(out)
            if total > cap:
                raise ValueError("decompresses past the size cap")
            yield out


class _IterReader(io.RawIOBase):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks, self.buf = chunks, b""

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        while n < 0 or len(self.buf) < n:
            try:
                self.buf += next(self.chunks)
            except StopIteration:
                break
        if n < 0:
            n = len(self.buf)
        out, self.buf = self.buf[:n], self.buf[n:]
        return out


def scan_compressed(path: Path, rel: str) -> list[Finding]:
    """joblib's compressed dumps: decompress (capped) and scan what comes out."""
    cap = max(os.path.getsize(path) * 1000, 1 << 30)
    reader = _IterReader(_decompressed(path, cap))
    try:
        head = reader.read(64 * 1024)
    except (OSError, ValueError, EOFError, zlib.error):
        return []  # not actually compressed data: nothing a loader could unpickle
    if not _head_is_pickle(head):
        return []
    try:
        return scan_pickle_stream(Stream(io.BufferedReader(_Prefixed(head, reader))), rel)
    except (OSError, ValueError, EOFError, zlib.error) as e:
        return [Finding(rel, None, 0, "-", "error", f"compressed stream broken: {e}")]


class _Prefixed(io.RawIOBase):
    def __init__(self, head: bytes, rest: _IterReader) -> None:
        self.head, self.rest = head, rest

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self.head:
            n = min(len(b), len(self.head))
            b[:n] = self.head[:n]
            self.head = self.head[n:]
            return n
        data = self.rest.read(len(b))
        b[: len(data)] = data
        return len(data)


def scan_tar(path: Path, rel: str) -> list[Finding]:
    import tarfile

    findings: list[Finding] = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            if not m.isfile():
                continue
            f = tf.extractfile(m)
            if f is None:
                continue
            head = f.read(512)
            kind = _member_kind(head)
            if kind is None:
                continue
            f = tf.extractfile(m)
            assert f is not None
            if kind == "numpy":
                findings += scan_npy(f, rel, m.name)
            else:
                findings += scan_pickle_stream(Stream(f), rel, m.name)
    return findings


def scan_file(path: Path, rel: str | None = None) -> list[Finding]:
    """Scan one file by what its bytes are (never by its name)."""
    from .formats import sniff

    rel = rel or path.name
    kind = sniff(path)
    if kind == "pickle":
        with open(path, "rb") as f:
            return scan_pickle_stream(Stream(f), rel)
    if kind == "zip":
        return scan_zip(path, rel)
    if kind == "numpy":
        with open(path, "rb") as f:
            return scan_npy(f, rel, None)
    if kind == "compressed":
        return scan_compressed(path, rel)
    if kind == "tar":
        return scan_tar(path, rel)
    return []


def scan_bytes(data: bytes, file: str = "<bytes>", member: str | None = None) -> list[Finding]:
    return scan_pickle_stream(Stream(io.BytesIO(data)), file, member)


def scan_tree(root: Path) -> list[Finding]:
    """Every regular file under root (symlinks are not followed)."""
    out: list[Finding] = []
    for dirpath, dirs, files in os.walk(root):
        dirs.sort()
        for name in sorted(files):
            p = Path(dirpath, name)
            if p.is_symlink():
                continue
            out += scan_file(p, str(p.relative_to(root)))
    return out


def contains_pickle(path: Path) -> bool:
    """Does this zip/npy/npz/compressed file carry pickled data anywhere?"""
    from .formats import sniff

    kind = sniff(path)
    if kind == "pickle":
        return True
    if kind == "numpy":
        return _npy_is_object(path)
    if kind == "compressed":
        return bool(scan_compressed(path, "")) or True
    if kind == "zip":
        try:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    with zf.open(info) as m:
                        head = m.read(512)
                    if _member_kind(head) == "pickle":
                        return True
                    if _member_kind(head) == "numpy":
                        with zf.open(info) as m:
                            if _npy_object(m):
                                return True
        except (zipfile.BadZipFile, OSError):
            return True  # unreadable containers count as suspicious
    return False


def _npy_object(f: BinaryIO) -> bool:
    head = f.read(10)
    if head[:6] != b"\x93NUMPY":
        return False
    if head[6] == 1:
        (hlen,) = struct.unpack("<H", head[8:10])
    else:
        (hlen,) = struct.unpack("<I", head[8:10] + f.read(2))
    try:
        return "O" in repr(ast.literal_eval(f.read(hlen).decode("latin-1"))["descr"])
    except (ValueError, SyntaxError, KeyError, TypeError):
        return True


def _npy_is_object(path: Path) -> bool:
    with open(path, "rb") as f:
        return _npy_object(f)
