"""A static pickle scanner: walks opcodes, never unpickles, never imports.

Rules (from the research in shared/notes/security.md):

1. An own opcode decoder with a simulated stack, mark stack and memo, so a
   ``STACK_GLOBAL`` whose strings arrive through ``BINGET``/``MEMOIZE``/``DUP`` or any
   string opcode is resolved exactly. The decoder is never *stricter* than CPython's C
   unpickler (``pickletools.genops`` is: it reads ``BINSTRING`` lengths as signed and
   rejects ``INT`` spellings that C accepts), because every byte where we stop and C
   goes on is a byte where a payload could hide. Where C fails we may fail too.
2. Allow-list, not deny-list: exact ``(module, name)`` pairs (after Python 2 name
   mapping) that real torch/numpy/joblib weights need. Anything else is a finding;
   the deny-list only decides whether it is called "critical" or "unknown" (both block
   in the default policy of ``builtin.modelscan``).
3. Decide the format from the bytes: every file, every zip/tar member, whatever its
   name; a file may be two things at once (a pickle with a zip appended is a zip to
   Python's ``zipfile`` and a pickle to ``torch.load``).
4. Fail closed: parse errors after an import, unreadable members, bad CRCs, unresolved
   operands are findings, and findings made before an error are kept. Scan to EOF:
   several pickles may follow each other; known binary interludes (legacy torch
   storages, joblib arrays) are skipped by their declared sizes, nothing else is.
5. Constant memory: big strings/bytes inside pickles are skipped, not read; zip
   members are streamed; a multi-GB non-pickle file is classified from its head.
"""

from __future__ import annotations

import _compat_pickle
import ast
import bz2
import codecs
import gzip
import itertools
import lzma
import math
import os
import re
import stat
import struct
import sys
import tarfile
import tempfile
import warnings
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from .formats import NPY_MAGIC, compressed_kind, zip_like

# --- severities -------------------------------------------------------------------------

CRITICAL = "critical"  # a known way to run code, spawn processes, touch files or the network
UNKNOWN_GLOBAL = "unknown"  # a global outside the allow-list: blocks by default, named apart
ERROR = "error"  # the scanner could not prove the rest harmless (parse error, bad CRC, ...)
WARNING = "warning"  # worth a look, nothing a stock loader would execute (TorchScript, junk)

# --- the allow-list ----------------------------------------------------------------------

_TORCH_DTYPES = (
    "float32 float64 float16 bfloat16 complex32 complex64 complex128 uint8 uint16 uint32 uint64 "
    "int8 int16 int32 int64 bool qint8 quint8 qint32 quint4x2 quint2x4 float8_e5m2 float8_e4m3fn "
    "float8_e5m2fnuz float8_e4m3fnuz float8_e8m0fnu float4_e2m1fn_x2 uint1 uint2 uint3 uint4 "
    "uint5 uint6 uint7 int1 int2 int3 int4 int5 int6 int7 half float double long int short "
    "cfloat cdouble chalf"
).split()
_TORCH_STORAGE_SIZES = {
    "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "DoubleStorage": 8,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt8Storage": 1,
    "QUInt8Storage": 1, "QInt32Storage": 4, "QUInt4x2Storage": 1, "QUInt2x4Storage": 1,
    "UntypedStorage": 1,
}  # fmt: skip
_TORCH_TENSORS = (
    "Tensor FloatTensor HalfTensor BFloat16Tensor DoubleTensor LongTensor IntTensor "
    "ShortTensor CharTensor ByteTensor BoolTensor"
).split()
_TORCH_REBUILD = (
    "_rebuild_tensor _rebuild_tensor_v2 _rebuild_tensor_v3 _rebuild_parameter "
    "_rebuild_parameter_with_state _rebuild_qtensor _rebuild_sparse_tensor "
    "_rebuild_meta_tensor_no_storage _rebuild_wrapper_subclass "
    "_rebuild_device_tensor_from_cpu_tensor _rebuild_device_tensor_from_numpy"
).split()
_TORCH_MISC = (
    "Size device per_tensor_affine per_channel_affine per_tensor_symmetric "
    "per_channel_symmetric per_channel_affine_float_qparams strided sparse_coo sparse_csr "
    "sparse_csc sparse_bsr sparse_bsc _mkldnn contiguous_format channels_last "
    "channels_last_3d preserve_format"
).split()

SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [
        ("collections", "OrderedDict"),
        ("collections", "Counter"),
        ("_codecs", "encode"),  # every bytes payload at protocol < 3
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "bytearray"),
        ("builtins", "bytes"),
        ("builtins", "slice"),
        ("builtins", "complex"),
        ("builtins", "range"),
        ("torch.nn.parameter", "Parameter"),
        ("torch.serialization", "_get_layout"),
        ("torch._tensor", "_rebuild_from_type_v2"),
        ("torch.storage", "TypedStorage"),
        ("torch.storage", "UntypedStorage"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        # joblib's in-stream array wrapper; its sibling NDArrayWrapper is NOT here: it
        # np.load()s a file named in the pickle with allow_pickle=True (a nested load).
        ("joblib.numpy_pickle", "NumpyArrayWrapper"),
    ]
    + [("torch", n) for n in _TORCH_DTYPES + _TORCH_TENSORS + _TORCH_MISC]
    + [(m, s) for m in ("torch", "torch.cuda") for s in _TORCH_STORAGE_SIZES]
    + [("torch._utils", n) for n in _TORCH_REBUILD]
    + [
        (f"numpy.{core}.{mod}", n)
        for core in ("_core", "core")  # numpy 2 spells it _core, numpy 1 core
        for mod, n in (("multiarray", "_reconstruct"), ("multiarray", "scalar"),
                       ("numeric", "_frombuffer"))
    ]
    + [("numpy.dtypes", f"{t}DType") for t in (
        "Float16 Float32 Float64 LongDouble Int8 Int16 Int32 Int64 UInt8 UInt16 UInt32 UInt64 "
        "Bool Complex64 Complex128 Bytes Str Void DateTime64 TimeDelta64".split())]
)  # fmt: skip

# Known to reach code execution, processes, files or the network. Matching is on the top
# module only: CVE-2025-10157 (asyncio.unix_events) shows exact-module lists miss submodules.
_CATEGORIES = {
    "runs code": (
        "builtins __builtin__ code codeop runpy importlib imp pkgutil pydoc types marshal "
        "ctypes _ctypes cffi operator _operator functools copyreg copy_reg pickle _pickle "
        "cPickle dill cloudpickle timeit cProfile profile trace pdb bdb doctest unittest test "
        "idlelib lib2to3 turtledemo _interpreters _xxsubinterpreters inspect gc sys site "
        "sysconfig zipimport ast compileall py_compile asyncio multiprocessing "
        "_multiprocessing threading _thread concurrent sched atexit signal antigravity this "
        "__hello__ __phello__ keras tensorflow tf_keras yaml jinja2 numexpr sympy IPython "
        "_pydevd_bundle pydevd"
    ),
    "runs processes": (
        "os posix nt subprocess _posixsubprocess pty platform pip ensurepip venv distutils "
        "setuptools pkg_resources webbrowser mailcap uuid"
    ),
    "touches files": (
        "io _io shutil tempfile glob pathlib fileinput linecache logging tarfile zipfile gzip "
        "bz2 lzma dbm shelve sqlite3 _sqlite3 mmap fcntl codecs filecmp netrc"
    ),
    "reaches the network": (
        "socket _socket ssl _ssl http urllib urllib2 urllib3 requests httpx aiohttp ftplib "
        "smtplib telnetlib poplib imaplib nntplib xmlrpc socketserver huggingface_hub mlflow "
        "pandas fsspec boto3 botocore"
    ),
}
DANGEROUS_MODULES: dict[str, str] = {
    root: why for why, roots in _CATEGORIES.items() for root in roots.split()
}
# Modules that are fine to name (allow-listed pairs live in them) but hold loaders.
DANGEROUS_PREFIXES: tuple[str, ...] = (
    "torch.load",
    "torch.hub",
    "torch.jit",
    "torch.utils",
    "torch.package",
    "torch.ops",
    "torch._C",
    "torch.classes",
    "torch._dynamo",
    "torch.compile",
    "torch.from_file",
    "torch.serialization.",
    "torch.storage._load_from_bytes",
    "torch.distributed",
    "torch.backends",
    "torch.cuda.memory",
    "torch._ops",
    "numpy.load",
    "numpy.save",
    "numpy.fromfile",
    "numpy.memmap",
    "numpy.loadtxt",
    "numpy.genfromtxt",
    "numpy.lib.npyio",
    "numpy.lib.format",
    "numpy.f2py",
    "numpy.distutils",
    "numpy.testing",
    "numpy.ctypeslib",
    "numpy._core._multiarray_umath.compile",
    "joblib.load",
    "joblib.dump",
    "joblib.numpy_pickle_compat",
    "joblib.numpy_pickle.NDArray",
    "joblib.numpy_pickle.ZNDArray",
    "joblib.numpy_pickle.load",
    "joblib.parallel",
    "joblib._parallel",
    "joblib.externals",
    "sklearn.utils._testing",
    "transformers.dynamic_module_utils",
    "keras.src.utils",
)

# Python-2 module names that also exist on Python 3 (so the unmapped name is importable at
# protocol >= 3, where the unpickler does not map): check both spellings of these.
_PY3_REAL_COMPAT = frozenset(
    "_elementtree _multiprocessing _socket dbm itertools multiprocessing "
    "multiprocessing.process socket test.test_support urllib".split()
)
# Module roots that make an import "evidence" by itself (see _Walker.confirm): the stdlib
# plus what models pickle. Unknown roots count only once the stream goes on to a call
# or STOP, so a text file like "cat\ndog\n" is not taken for a pickle importing at.dog.
_KNOWN_ROOTS = (
    frozenset(sys.stdlib_module_names)
    | frozenset(DANGEROUS_MODULES)
    | frozenset(
        "torch numpy joblib sklearn scipy collections _codecs builtins __builtin__ copy_reg".split()
    )
)

LEGACY_TORCH_MAGIC = 0x1950A86A20F9469CFC6C
_IDENT = re.compile(r"[^\W\d]\w*(?:\.[^\W\d]\w*)*\Z")


@dataclass(frozen=True)
class Finding:
    """Something a loader would execute, or that the scanner could not prove harmless.

    ``offset`` is the byte offset of the opcode (or structure) in ``file`` or, when
    ``member`` is set, in that member's uncompressed data: it is where to look with a hex
    dump, which matters more than a message when a scan result is disputed.
    """

    file: str
    member: str | None
    offset: int
    global_name: str
    severity: str  # critical | unknown | error | warning
    reason: str

    def __str__(self) -> str:
        where = self.file + (f"!{self.member}" if self.member else "")
        return f"{where} @ {self.offset}: {self.global_name} ({self.severity}: {self.reason})"


def _note(
    file: str, member: str | None, offset: int, reason: str, severity: str = ERROR
) -> Finding:
    """A finding about structure rather than a global (``global_name`` is "-")."""
    return Finding(file, member, offset, "-", severity, reason)


def normalise(module: str, name: str) -> tuple[str, str]:
    """Python 2 names as the unpickler maps them forward (``fix_imports``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def _classify_exact(module: str, name: str) -> tuple[str, str] | None:
    if (module, name) in SAFE_GLOBALS:
        return None
    if "." in name:
        return CRITICAL, "dotted name: at protocol 4+ it walks attributes to anything"
    if name.startswith("__") and name.endswith("__"):
        return CRITICAL, "dunder name: reaches interpreter internals (e.g. __builtins__)"
    root = module.split(".", 1)[0]
    if root in DANGEROUS_MODULES:
        return CRITICAL, f"{DANGEROUS_MODULES[root]} when the file is loaded"
    if f"{module}.{name}".startswith(DANGEROUS_PREFIXES):
        return CRITICAL, "loads further files or pickles, or runs code, when the file is loaded"
    return UNKNOWN_GLOBAL, "not on the allow-list of globals that weights need"


def classify(module: str, name: str) -> tuple[str, str] | None:
    """None when the pair is allowed; else ``(severity, reason)``.

    Names are compared byte for byte (no case folding, no Unicode normalisation: imports
    do neither). The Python 2 spelling is mapped forward; where the old name is also a
    real Python 3 module, both spellings must pass.
    """
    norm = normalise(module, name)
    verdict = _classify_exact(*norm)
    if norm != (module, name) and module in _PY3_REAL_COMPAT:
        raw = _classify_exact(module, name)
        if raw and (verdict is None or raw[0] == CRITICAL):
            verdict = raw
    return verdict


# --- values the simulation pushes --------------------------------------------------------


class _Sentinel:
    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return self.label


UNKNOWN = _Sentinel("?")  # anything not modelled: may well be a str at run time
LONGSTR = _Sentinel("<long str>")  # a str too long to keep
OTHER = _Sentinel("<object>")  # definitely not a str (bytes, float, set, buffer, ...)
TAINTED = _Sentinel("<flagged import>")  # the result of an import already reported


@dataclass(eq=False)
class Global:
    """The object an import opcode pushes (a function, class or module attribute)."""

    module: str
    name: str


@dataclass(eq=False)
class Call:
    """The result of calling something; ``state`` is what BUILD later gave it."""

    fn: Any
    args: Any
    state: Any = None


@dataclass(eq=False)
class _Persistent:
    pid: Any


# Constants that are certainly not a str (C's STACK_GLOBAL rejects them) nor callable.
_CONSTS = (type(None), bool, int, float, list, tuple, dict, str)


class _Malformed(Exception):
    """The C unpickler would stop here too (or we cannot follow the stream any further)."""


class _Reader:
    """Bytes with an absolute offset, small look-ahead, and skipping without reading.

    Reads go through an internal buffer of at most ~64 KiB plus the largest single
    argument we keep (1 MiB), so memory stays constant whatever the file size.
    """

    CHUNK = 1 << 16

    def __init__(self, f: Any, base: int = 0, end: int | None = None) -> None:
        self.f = f
        self.buf = b""
        self.i = 0
        self.base = base  # offset of buf[0]
        self.end = end  # absolute offset of EOF when the source is seekable, for skip()

    def tell(self) -> int:
        return self.base + self.i

    def _raw(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except _Malformed:
            raise
        except Exception as e:  # zlib/bz2/lzma errors, caps, OSError: the stream ends here
            raise _Malformed(f"reading failed ({type(e).__name__}: {e})") from e

    def _fill(self, n: int) -> bool:
        if len(self.buf) - self.i >= n:
            return True
        parts = [self.buf[self.i :]]
        self.base += self.i
        self.i = 0
        have = len(parts[0])
        while have < n:
            chunk = self._raw(max(n - have, self.CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)
        return have >= n

    def at_eof(self) -> bool:
        return not self._fill(1)

    def byte(self) -> int:
        if self.i >= len(self.buf) and not self._fill(1):
            return -1
        b = self.buf[self.i]
        self.i += 1
        return b

    def take(self, n: int) -> bytes:
        if not self._fill(n):
            raise _Malformed("pickle data was truncated")
        out = self.buf[self.i : self.i + n]
        self.i += n
        return out

    def skip(self, n: int) -> None:
        avail = len(self.buf) - self.i
        if n <= avail:
            self.i += n
            return
        n -= avail
        self.base += len(self.buf)
        self.buf, self.i = b"", 0
        if self.end is not None:  # seekable: jump
            if self.base + n > self.end:
                self.base = self.end
                raise _Malformed("data was truncated")
            self.f.seek(n, os.SEEK_CUR)
            self.base += n
            return
        while n:
            got = len(self._raw(min(n, 1 << 20)))
            if not got:
                raise _Malformed("data was truncated")
            self.base += got
            n -= got

    def line(self, cap: int = 1 << 16) -> bytes | None:
        """Up to the newline (excluded); None if longer than cap (then skipped)."""
        j = self.buf.find(b"\n", self.i)
        if j >= 0:
            out = self.buf[self.i : j]
            self.i = j + 1
            return out
        kept: list[bytes] | None = [self.buf[self.i :]]
        size = len(self.buf) - self.i
        self.base += len(self.buf)
        self.buf, self.i = b"", 0
        while True:
            chunk = self._raw(self.CHUNK)
            if not chunk:
                raise _Malformed("pickle data was truncated (no newline)")
            j = chunk.find(b"\n")
            part = chunk if j < 0 else chunk[:j]
            size += len(part)
            if kept is not None:
                kept.append(part)
                if size > cap:
                    kept = None
            if j >= 0:
                self.buf, self.i = chunk, j + 1
                return None if kept is None else b"".join(kept)
            self.base += len(chunk)


_STRCAP = 4096  # longer strings are kept as LONGSTR: no module or attribute name is that long
_ARGCAP = 1 << 20  # longer string/bytes arguments are skipped unread
_STACKCAP = 5_000_000
_MEMOCAP = 5_000_000
_ITEMCAP = 100_000  # items kept per container (we only need small state dicts and key lists)
_TRACKCAP = 1_000_000  # items kept across all containers of one walk


@dataclass
class _Segment:
    ok: bool
    top: Any = None
    error: str = ""
    offset: int = 0
    evidence: bool = False  # this pickle would import or call something before it stops


class _Walker:
    """Simulates one unpickler over a stream, pickle after pickle, collecting findings."""

    def __init__(self, file: str, member: str | None, findings: list[Finding]) -> None:
        self.file, self.member, self.findings = file, member, findings
        self.persistent_ids: list[Any] = []
        self.evidence = False  # any pickle in this stream imports or calls something
        self.whole = True  # every byte so far belonged to a complete pickle
        self.stop_at_evidence = False
        self.budget_end: int | None = None  # sniffing: stop walking past this offset
        self._reset()

    def _reset(self) -> None:
        self.stack: list[Any] = []
        self.marks: list[int] = []
        self.memo: dict[int, Any] = {}
        self.memo_full = False
        self.tracked = 0
        self.seg_evidence = False
        self.seg_imports = False  # imported something; confirmed by a later call or STOP

    # -- findings and evidence

    def add(self, offset: int, name: str, severity: str, reason: str) -> None:
        self.findings.append(Finding(self.file, self.member, offset, name, severity, reason))

    def confirm(self) -> None:
        """The stream goes on to use what it imported: it really is a pickle."""
        self.seg_evidence = True
        self.evidence = True
        if self.stop_at_evidence:
            raise _Evidence

    def import_global(self, pos: int, module: Any, name: Any, how: str) -> Any:
        self.seg_imports = True
        if isinstance(module, str) and isinstance(name, str):
            verdict = classify(module, name)
            shown = "{}.{}".format(*normalise(module, name))
            if verdict:
                self.add(pos, shown, *verdict)
            plausible = bool(_IDENT.match(module)) and bool(_IDENT.match(name))
            if plausible and module.split(".", 1)[0] in _KNOWN_ROOTS:
                self.confirm()
            return TAINTED if verdict else Global(*normalise(module, name))
        parts = [m if isinstance(m, str) else "<unresolved>" for m in (module, name)]
        module, name = _describe(module), _describe(name)
        self.add(
            pos,
            ".".join(parts),
            CRITICAL,
            f"{how} with operands the scanner cannot resolve to constant strings "
            f"({module}, {name}): the name is computed at load time",
        )
        self.confirm()
        return TAINTED

    def call(self, pos: int, fn: Any, how: str) -> None:
        if fn is TAINTED or isinstance(fn, Global):
            self.confirm()  # the import itself was judged (and reported if not allowed)
            return
        if fn is OTHER or fn is LONGSTR or isinstance(fn, _CONSTS):
            raise _Malformed(f"{how} of a value that is not callable")
        self.add(
            pos,
            _describe(fn),
            CRITICAL,
            f"{how} calls a value the scanner cannot trace to an allowed global",
        )
        self.confirm()

    # -- stack primitives mirroring the C unpickler's fence semantics

    def push(self, v: Any) -> None:
        if len(self.stack) >= _STACKCAP:
            raise _Malformed("stack deeper than the scanner follows")
        self.stack.append(v)

    def fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def pop(self, n: int) -> list[Any]:
        if len(self.stack) - self.fence() < n:
            raise _Malformed("unpickling stack underflow")
        out = self.stack[len(self.stack) - n :]
        del self.stack[len(self.stack) - n :]
        return out

    def top(self) -> Any:
        if len(self.stack) <= self.fence():
            raise _Malformed("unpickling stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[Any]:
        if not self.marks:
            raise _Malformed("could not find MARK")
        k = self.marks.pop()
        out = self.stack[k:]
        del self.stack[k:]
        return out

    def keep(self, items: list[Any]) -> bool:
        self.tracked += len(items)
        return len(items) <= _ITEMCAP and self.tracked <= _TRACKCAP

    def text(self, raw: bytes, encoding: str = "latin-1") -> Any:
        if len(raw) > _STRCAP:
            return LONGSTR
        return raw.decode(encoding)

    # -- one pickle

    def walk(self, r: _Reader) -> _Segment:
        self._reset()
        start = r.tell()
        pos = start
        try:
            while True:
                pos = r.tell()
                if self.budget_end is not None and pos > self.budget_end:
                    raise _Budget
                op = r.byte()
                if op < 0:
                    if pos == start:
                        return _Segment(False, error="empty", offset=pos)
                    raise _Malformed("pickle ends without STOP")
                handler = _OPS.get(op)
                if handler is None:
                    raise _Malformed(f"invalid load key {bytes([op])!r}")
                if handler(self, r, pos):
                    top = self.pop(1)[0]
                    if self.seg_imports:  # a complete pickle that imports: a real one
                        self.confirm()
                    return _Segment(True, top, offset=pos, evidence=self.seg_evidence)
        except _Malformed as e:
            return _Segment(False, error=str(e), offset=pos, evidence=self.seg_evidence)
        except (_Evidence, _Budget):
            raise
        except (ValueError, struct.error, OverflowError, RecursionError, MemoryError) as e:
            return _Segment(
                False, error=f"{type(e).__name__}: {e}", offset=pos, evidence=self.seg_evidence
            )

    # what an inner pickle gets afresh, and the outer one gets back afterwards
    _PER_PICKLE = ("stack", "marks", "memo", "memo_full", "tracked", "seg_evidence",
                   "seg_imports")

    def nested(self, r: _Reader) -> None:
        """A complete inner pickle with its own stack and memo (joblib object arrays)."""
        saved = {k: getattr(self, k) for k in self._PER_PICKLE}
        seg = self.walk(r)
        for k, v in saved.items():
            setattr(self, k, v)
        if seg.evidence:
            self.confirm()
        if not seg.ok:
            raise _Malformed(f"nested pickle of a joblib object array: {seg.error}")


class _Evidence(Exception):
    """Raised in sniffing mode at the first sign that the stream is a real pickle."""


class _Budget(Exception):
    """Raised in sniffing mode when the walk has read as much as it may."""


# --- opcode handlers: return True for STOP ---------------------------------------------


def _int_line(raw: bytes, what: str) -> Any:
    s = raw.split(b"\0", 1)[0].strip()
    if what == "INT" and s in (b"00", b"01"):
        return s == b"01"
    if what == "LONG" and s.endswith(b"L"):
        s = s[:-1]
    for base in (0, 10):
        try:
            return int(s, base)
        except ValueError:
            continue
    if re.fullmatch(rb"[+-]?[0-9_]+", s):  # past int()'s digit limit: C may still take it
        return OTHER
    raise _Malformed(f"could not convert {raw[:40]!r} to int")


def _h_int(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    w.push(OTHER if raw is None else _int_line(raw, "INT"))


def _h_long(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    w.push(OTHER if raw is None else _int_line(raw, "LONG"))


def _h_float(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    if raw is not None:
        try:
            w.push(float(raw.split(b"\0", 1)[0]))
            return
        except ValueError:
            raise _Malformed("could not convert string to float") from None
    w.push(OTHER)


def _fixed(fmt: str) -> Callable[[_Walker, _Reader, int], None]:
    size = struct.calcsize(fmt)

    def h(w: _Walker, r: _Reader, pos: int) -> None:
        w.push(struct.unpack(fmt, r.take(size))[0])

    return h


def _h_long1(w: _Walker, r: _Reader, pos: int) -> None:
    n = r.take(1)[0]
    w.push(int.from_bytes(r.take(n), "little", signed=True))


def _h_long4(w: _Walker, r: _Reader, pos: int) -> None:
    (n,) = struct.unpack("<i", r.take(4))
    if n < 0:
        raise _Malformed("LONG pickle has negative byte count")
    if n > _ARGCAP:
        r.skip(n)
        w.push(OTHER)
    else:
        w.push(int.from_bytes(r.take(n), "little", signed=True))


def _h_string(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    if raw is None:
        w.push(LONGSTR)
        return
    if len(raw) < 2 or raw[0] != raw[-1] or raw[:1] not in (b"'", b'"'):
        raise _Malformed("the STRING opcode argument must be quoted")
    body = raw[1:-1]
    if b"\\" in body:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                body = codecs.escape_decode(body)[0]
            except ValueError as e:
                raise _Malformed(f"bad STRING escape ({e})") from None
    w.push(w.text(body))


def _counted(size_fmt: str, kind: str) -> Callable[[_Walker, _Reader, int], None]:
    """Length-prefixed arguments. C reads 4- and 8-byte lengths as unsigned: so do we."""
    width = struct.calcsize(size_fmt)

    def h(w: _Walker, r: _Reader, pos: int) -> None:
        (n,) = struct.unpack(size_fmt, r.take(width))
        if n > _ARGCAP or kind == "bytes":
            r.skip(n)
            w.push(OTHER if kind == "bytes" else LONGSTR)
            return
        raw = r.take(n)
        if kind == "unicode":
            if n > _STRCAP:
                w.push(LONGSTR)
                return
            try:
                w.push(raw.decode("utf-8", "surrogatepass"))
            except UnicodeDecodeError:
                raise _Malformed("invalid UTF-8 in a unicode string") from None
        else:  # STRING family: decoded to str by the Python 3 unpickler
            w.push(w.text(raw))

    return h


def _h_unicode(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    if raw is None:
        w.push(LONGSTR)
        return
    try:
        w.push(w.text(raw, "raw-unicode-escape") if len(raw) <= _STRCAP else LONGSTR)
    except UnicodeDecodeError:
        raise _Malformed("bad UNICODE escape") from None


def _h_const(value: Any) -> Callable[[_Walker, _Reader, int], None]:
    def h(w: _Walker, r: _Reader, pos: int) -> None:
        w.push(value)

    return h


def _h_empty_list(w: _Walker, r: _Reader, pos: int) -> None:
    w.push([])


def _h_empty_dict(w: _Walker, r: _Reader, pos: int) -> None:
    w.push({})


def _hashable(x: Any, depth: int = 0) -> bool:
    """Usable as a dict key in the simulation (nesting is bounded: no recursion bombs)."""
    if isinstance(x, (str, int, float, bool, type(None))):
        return True
    return isinstance(x, tuple) and depth < 8 and all(_hashable(i, depth + 1) for i in x)


def _describe(v: Any) -> str:
    """A short, safe text for a simulated value (never a deep or huge repr)."""
    if isinstance(v, str):
        return repr(v if len(v) <= 60 else v[:57] + "...")
    if isinstance(v, Call):
        return "<result of a call>"
    if isinstance(v, _Persistent):
        return "<persistent object>"
    if isinstance(v, Global):
        return f"<{v.module}.{v.name}>"
    if isinstance(v, _Sentinel):
        return repr(v)
    return f"<{type(v).__name__}>"


def _h_append(w: _Walker, r: _Reader, pos: int) -> None:
    (v,) = w.pop(1)
    lst = w.top()
    if isinstance(lst, list) and w.keep([v]):
        lst.append(v)


def _h_appends(w: _Walker, r: _Reader, pos: int) -> None:
    items = w.pop_mark()
    lst = w.top()
    if isinstance(lst, list) and w.keep(items):
        lst.extend(items)


def _h_list(w: _Walker, r: _Reader, pos: int) -> None:
    items = w.pop_mark()
    w.push(items if w.keep(items) else UNKNOWN)


def _h_tuple(w: _Walker, r: _Reader, pos: int) -> None:
    items = w.pop_mark()
    w.push(tuple(items) if w.keep(items) else UNKNOWN)


def _h_tuple_n(n: int) -> Callable[[_Walker, _Reader, int], None]:
    def h(w: _Walker, r: _Reader, pos: int) -> None:
        w.push(tuple(w.pop(n)))

    return h


def _pairs_into(d: Any, items: list[Any], w: _Walker) -> None:
    if len(items) % 2:
        raise _Malformed("odd number of items for a dict")
    if isinstance(d, dict) and w.keep(items[::2]):
        for k, v in zip(items[::2], items[1::2], strict=True):
            if _hashable(k):
                d[k] = v


def _h_dict(w: _Walker, r: _Reader, pos: int) -> None:
    items = w.pop_mark()
    d: dict[Any, Any] = {}
    _pairs_into(d, items, w)
    w.push(d)


def _h_setitem(w: _Walker, r: _Reader, pos: int) -> None:
    items = w.pop(2)
    _pairs_into(w.top(), items, w)


def _h_setitems(w: _Walker, r: _Reader, pos: int) -> None:
    items = w.pop_mark()
    _pairs_into(w.top(), items, w)


def _h_empty_set(w: _Walker, r: _Reader, pos: int) -> None:
    w.push(OTHER)


def _h_additems(w: _Walker, r: _Reader, pos: int) -> None:
    w.pop_mark()
    if not w.stack:  # C checks the mark position only, not the fence
        raise _Malformed("unpickling stack underflow")


def _h_frozenset(w: _Walker, r: _Reader, pos: int) -> None:
    w.pop_mark()
    w.push(OTHER)


def _h_pop(w: _Walker, r: _Reader, pos: int) -> None:
    if w.marks and w.marks[-1] == len(w.stack):  # C's POP also pops a MARK
        w.marks.pop()
    else:
        w.pop(1)


def _h_dup(w: _Walker, r: _Reader, pos: int) -> None:
    w.push(w.top())


def _h_mark(w: _Walker, r: _Reader, pos: int) -> None:
    w.marks.append(len(w.stack))


def _h_pop_mark(w: _Walker, r: _Reader, pos: int) -> None:
    w.pop_mark()


def _memo_get(w: _Walker, idx: int) -> None:
    if idx in w.memo:
        w.push(w.memo[idx])
    elif w.memo_full:
        w.push(UNKNOWN)
    else:
        raise _Malformed(f"memo value not found at index {idx}")


def _memo_put(w: _Walker, idx: int) -> None:
    value = w.top()
    if idx in w.memo or len(w.memo) < _MEMOCAP:
        w.memo[idx] = value
    else:
        w.memo_full = True


def _h_get(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    try:
        _memo_get(w, int(raw or b""))
    except ValueError:
        raise _Malformed("bad GET argument") from None


def _h_put(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    try:
        idx = int(raw or b"")
    except ValueError:
        raise _Malformed("bad PUT argument") from None
    if idx < 0:
        raise _Malformed("negative PUT argument")
    _memo_put(w, idx)


def _memo_op(fmt: str, put: bool) -> Callable[[_Walker, _Reader, int], None]:
    size = struct.calcsize(fmt)

    def h(w: _Walker, r: _Reader, pos: int) -> None:
        (idx,) = struct.unpack(fmt, r.take(size))
        (_memo_put if put else _memo_get)(w, idx)

    return h


def _h_memoize(w: _Walker, r: _Reader, pos: int) -> None:
    _memo_put(w, len(w.memo))  # C uses the count of filled slots


def _global_args(r: _Reader, how: str) -> tuple[str, str]:
    parts = []
    for _ in range(2):
        raw = r.line()
        if raw is None:
            raise _Malformed(f"{how} name longer than any module or attribute")
        try:
            parts.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise _Malformed(f"{how} name is not UTF-8") from None
    return parts[0], parts[1]


def _h_global(w: _Walker, r: _Reader, pos: int) -> None:
    module, name = _global_args(r, "GLOBAL")
    w.push(w.import_global(pos, module, name, "GLOBAL"))


def _h_inst(w: _Walker, r: _Reader, pos: int) -> None:
    if not w.marks:  # C looks for the MARK before it reads the names
        raise _Malformed("could not find MARK")
    module, name = _global_args(r, "INST")
    args = w.pop_mark()
    fn = w.import_global(pos, module, name, "INST")
    w.call(pos, fn, "INST")
    w.push(Call(fn, tuple(args)))


def _h_stack_global(w: _Walker, r: _Reader, pos: int) -> None:
    module, name = w.pop(2)
    for v in (module, name):
        if v is OTHER or (isinstance(v, _CONSTS) and not isinstance(v, str)):
            raise _Malformed("STACK_GLOBAL requires str")
    w.push(w.import_global(pos, module, name, "STACK_GLOBAL"))


def _ext(fmt: str, label: str) -> Callable[[_Walker, _Reader, int], None]:
    size = struct.calcsize(fmt)

    def h(w: _Walker, r: _Reader, pos: int) -> None:
        (code,) = struct.unpack(fmt, r.take(size))
        w.add(
            pos,
            f"{label} {code}",
            CRITICAL,
            "copyreg extension code: imports a global the stream does not name "
            "(the registry is empty by default; any use is an attempt to hide one)",
        )
        w.seg_imports = True  # evidence once it is called or the pickle completes
        w.push(TAINTED)

    return h


def _h_reduce(w: _Walker, r: _Reader, pos: int) -> None:
    fn, args = w.pop(2)
    w.call(pos, fn, "REDUCE")
    w.push(Call(fn, args))


def _h_newobj(w: _Walker, r: _Reader, pos: int) -> None:
    cls, args = w.pop(2)
    w.call(pos, cls, "NEWOBJ")
    w.push(Call(cls, args))


def _h_newobj_ex(w: _Walker, r: _Reader, pos: int) -> None:
    cls, args, _kwargs = w.pop(3)
    w.call(pos, cls, "NEWOBJ_EX")
    w.push(Call(cls, args))


def _h_obj(w: _Walker, r: _Reader, pos: int) -> None:
    items = w.pop_mark()
    if not items:
        raise _Malformed("unpickling stack underflow")
    w.call(pos, items[0], "OBJ")
    w.push(Call(items[0], tuple(items[1:])))


def _h_build(w: _Walker, r: _Reader, pos: int) -> None:
    (state,) = w.pop(1)
    obj = w.top()
    if isinstance(obj, Global):
        w.add(
            pos,
            f"{obj.module}.{obj.name}",
            CRITICAL,
            "BUILD on an imported function or class overwrites its attributes "
            "(e.g. __defaults__) in the loading process",
        )
        w.confirm()
    elif isinstance(obj, Call):
        obj.state = state
        if isinstance(obj.fn, Global):
            w.confirm()
            if (obj.fn.module, obj.fn.name) == ("joblib.numpy_pickle", "NumpyArrayWrapper"):
                _joblib_array(w, r, pos, state)


def _h_persid(w: _Walker, r: _Reader, pos: int) -> None:
    raw = r.line()
    pid = w.text(raw) if raw is not None else LONGSTR
    w.persistent_ids.append(pid)
    w.push(_Persistent(pid))


def _h_binpersid(w: _Walker, r: _Reader, pos: int) -> None:
    (pid,) = w.pop(1)
    w.persistent_ids.append(pid)
    w.push(_Persistent(pid))


def _h_proto(w: _Walker, r: _Reader, pos: int) -> None:
    v = r.take(1)[0]
    if v > 5:  # C refuses it; genops does not. Lenient: report and keep walking
        w.add(pos, f"PROTO {v}", ERROR, "unsupported pickle protocol (the C unpickler stops)")


def _h_frame(w: _Walker, r: _Reader, pos: int) -> None:
    r.take(8)  # framing has no meaning for the stack; frames need not be honest


def _h_next_buffer(w: _Walker, r: _Reader, pos: int) -> None:
    w.push(OTHER)


def _h_readonly_buffer(w: _Walker, r: _Reader, pos: int) -> None:
    w.top()


def _h_stop(w: _Walker, r: _Reader, pos: int) -> bool:
    return True


_OPS: dict[int, Callable[[_Walker, _Reader, int], Any]] = {
    ord("I"): _h_int,
    ord("J"): _fixed("<i"),
    ord("K"): _fixed("<B"),
    ord("M"): _fixed("<H"),
    ord("L"): _h_long,
    0x8A: _h_long1,
    0x8B: _h_long4,
    ord("S"): _h_string,
    ord("T"): _counted("<I", "string"),
    ord("U"): _counted("<B", "string"),
    ord("B"): _counted("<I", "bytes"),
    ord("C"): _counted("<B", "bytes"),
    0x8E: _counted("<Q", "bytes"),
    0x96: _counted("<Q", "bytes"),
    0x97: _h_next_buffer,
    0x98: _h_readonly_buffer,
    ord("N"): _h_const(None),
    0x88: _h_const(True),
    0x89: _h_const(False),
    ord("V"): _h_unicode,
    0x8C: _counted("<B", "unicode"),
    ord("X"): _counted("<I", "unicode"),
    0x8D: _counted("<Q", "unicode"),
    ord("F"): _h_float,
    ord("G"): _fixed(">d"),
    ord("]"): _h_empty_list,
    ord("a"): _h_append,
    ord("e"): _h_appends,
    ord("l"): _h_list,
    ord(")"): _h_const(()),
    ord("t"): _h_tuple,
    0x85: _h_tuple_n(1),
    0x86: _h_tuple_n(2),
    0x87: _h_tuple_n(3),
    ord("}"): _h_empty_dict,
    ord("d"): _h_dict,
    ord("s"): _h_setitem,
    ord("u"): _h_setitems,
    0x8F: _h_empty_set,
    0x90: _h_additems,
    0x91: _h_frozenset,
    ord("0"): _h_pop,
    ord("2"): _h_dup,
    ord("("): _h_mark,
    ord("1"): _h_pop_mark,
    ord("g"): _h_get,
    ord("h"): _memo_op("<B", False),
    ord("j"): _memo_op("<I", False),
    ord("p"): _h_put,
    ord("q"): _memo_op("<B", True),
    ord("r"): _memo_op("<I", True),
    0x94: _h_memoize,
    0x82: _ext("<B", "EXT1"),
    0x83: _ext("<H", "EXT2"),
    0x84: _ext("<i", "EXT4"),
    ord("c"): _h_global,
    0x93: _h_stack_global,
    ord("R"): _h_reduce,
    ord("b"): _h_build,
    ord("i"): _h_inst,
    ord("o"): _h_obj,
    0x81: _h_newobj,
    0x92: _h_newobj_ex,
    0x80: _h_proto,
    ord("."): _h_stop,
    0x95: _h_frame,
    ord("P"): _h_persid,
    ord("Q"): _h_binpersid,
}


# --- joblib: raw array bytes inside the pickle stream (notes §3.5) ---------------------


def _dtype_info(v: Any, depth: int = 0) -> tuple[int | None, bool]:
    """(itemsize, has objects) of a simulated ``numpy.dtype(code, False, True)`` + state."""
    if not (isinstance(v, Call) and isinstance(v.fn, Global)):
        return None, False
    if (v.fn.module, v.fn.name) != ("numpy", "dtype"):
        return None, False
    code = v.args[0] if isinstance(v.args, tuple) and v.args else None
    state = v.state if isinstance(v.state, tuple) else ()
    if not isinstance(code, str):
        return None, False
    flags = state[7] if len(state) > 7 and isinstance(state[7], int) else 0
    nested = depth < 4 and any(_dtype_info(x, depth + 1)[1] for x in _walk_values(state))
    if code.startswith("O") or flags & 1 or nested:
        return None, True
    m = re.fullmatch(r"([biufcmMSUVa])(\d+)", code)
    if not m:
        return None, False
    elsize = state[5] if len(state) > 5 and isinstance(state[5], int) else -1
    if m.group(1) in "SUVa" and elsize > 0:
        return elsize, False
    n = int(m.group(2))
    return (n * 4 if m.group(1) == "U" else n), False


def _walk_values(v: Any, depth: int = 0) -> Iterator[Any]:
    if depth > 6:
        return
    items = v.values() if isinstance(v, dict) else v if isinstance(v, (tuple, list)) else ()
    for x in items:
        yield x
        yield from _walk_values(x, depth + 1)


def _joblib_array(w: _Walker, r: _Reader, pos: int, state: Any) -> None:
    """Skip exactly what joblib's NumpyArrayWrapper.read_array will read, or walk it."""
    if not isinstance(state, dict):
        raise _Malformed("joblib array wrapper with a state the scanner cannot follow")
    shape = state.get("shape")
    if not (isinstance(shape, tuple) and all(type(d) is int and d >= 0 for d in shape)):
        raise _Malformed("joblib array wrapper without a readable shape")
    itemsize, has_objects = _dtype_info(state.get("dtype"))
    if has_objects:
        w.nested(r)  # a complete protocol-5 pickle of the object array
        return
    if itemsize is None:
        raise _Malformed("joblib array with a dtype the scanner cannot size")
    if state.get("numpy_array_alignment_bytes") is not None:
        pad = r.byte()
        if pad < 0:
            raise _Malformed("joblib array truncated")
        r.skip(pad)
    r.skip(math.prod(shape) * itemsize)


# --- streams of pickles -----------------------------------------------------------------


def _legacy_storages(w: _Walker, r: _Reader, keys: Any) -> None:
    """Legacy torch.save: after the key list, each storage is <u64 numel><numel x size>."""
    if not (isinstance(keys, list) and all(isinstance(k, str) for k in keys)):
        raise _Malformed("legacy torch file: the storage key list is not readable")
    sizes: dict[str, int] = {}
    for pid in w.persistent_ids:
        if (
            isinstance(pid, tuple)
            and len(pid) >= 5
            and pid[0] == "storage"
            and isinstance(pid[1], Global)
            and isinstance(pid[2], str)
        ):
            size = _TORCH_STORAGE_SIZES.get(pid[1].name)
            if size is not None:
                sizes[pid[2]] = size
    for key in keys:
        if key not in sizes:
            raise _Malformed(f"legacy torch storage {key!r} has no persistent id to size it")
        (numel,) = struct.unpack("<q", r.take(8))
        if numel < 0:
            raise _Malformed(f"legacy torch storage {key!r} has a negative size")
        r.skip(numel * sizes[key])


def _walk_stream(w: _Walker, r: _Reader) -> None:
    """Pickle after pickle until EOF; findings go to ``w.findings`` as they are made."""
    count = 0
    legacy = False
    while True:
        try:
            if r.at_eof():
                return
        except _Malformed as e:  # a decompressor or member reader failed between pickles
            w.whole = False
            w.add(r.tell(), "-", ERROR if w.evidence else WARNING, str(e))
            return
        seg = w.walk(r)
        count += 1
        if not seg.ok:
            w.whole = False
            if seg.evidence:
                w.add(
                    seg.offset,
                    "-",
                    ERROR,
                    f"unparseable pickle data ({seg.error}) after it already imported or "
                    f"called something: the unpickler acts before it fails",
                )
            elif count == 1:
                w.add(seg.offset, "-", WARNING, f"not a pickle ({seg.error})")
            else:
                w.add(
                    seg.offset,
                    "-",
                    WARNING,
                    f"data after the last complete pickle is not a pickle ({seg.error}); "
                    f"nothing in it is imported before the parse fails",
                )
            return
        if count == 1 and seg.top == LEGACY_TORCH_MAGIC and type(seg.top) is int:
            legacy = True
        if legacy and count == 5:
            start = r.tell()
            try:
                _legacy_storages(w, r, seg.top)
            except _Malformed as e:
                w.whole = False
                w.add(start, "-", ERROR, f"{e}: the rest of the file is not accounted for")
                return
            legacy = False
            try:
                leftover = not r.at_eof()
            except _Malformed:
                leftover = True
            if leftover:
                w.add(
                    r.tell(),
                    "-",
                    ERROR,
                    "bytes after the legacy torch storages are not accounted for",
                )


def scan_stream(
    f: Any,
    file: str,
    member: str | None = None,
    *,
    base: int = 0,
    end: int | None = None,
    require_evidence: bool = True,
) -> list[Finding]:
    """Scan a binary stream as back-to-back pickles.

    With ``require_evidence`` (the default for content found by sniffing), a stream in
    which nothing would be imported or called before the parse fails is not a pickle and
    yields no findings: random weights and text must not raise alarms.
    """
    findings: list[Finding] = []
    w = _Walker(file, member, findings)
    _walk_stream(w, _Reader(f, base, end))
    if require_evidence and not w.evidence:
        return []
    return findings


def _probe(f: Any, *, base: int = 0, end: int | None = None, budget: int = 256 << 20) -> str:
    """'evidence' | 'whole' (data-only pickles to EOF) | 'no', reading at most ~budget."""
    w = _Walker("", None, [])
    w.stop_at_evidence = True
    w.budget_end = base + budget
    r = _Reader(f, base, end)
    try:
        _walk_stream(w, r)
    except _Evidence:
        return "evidence"
    except _Budget:
        return "whole"  # that much valid pickle is a pickle: scan it in full
    if w.whole and r.tell() > base and not w.findings:
        return "whole"
    return "no"


def scan_bytes(
    data: bytes | bytearray | memoryview | IO[bytes],
    file: str = "<bytes>",
    member: str | None = None,
) -> list[Finding]:
    """Scan a pickle stream given as bytes or an open binary file (from its position).

    The caller says it is a pickle, so nothing is dropped: bytes that are not a pickle
    give a ``warning`` "not a pickle" finding instead of an exception.
    """
    if isinstance(data, (bytes, bytearray, memoryview)):
        import io

        data = io.BytesIO(bytes(data))
    return scan_stream(data, file, member, require_evidence=False)


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


def _prefixed(prefix: str | None, member: str | None) -> str | None:
    if prefix is None:
        return member
    return prefix if member is None else f"{prefix}!{member}"


def _scan_blob(
    open_: _Opener,
    size: int | None,
    rel: str,
    member: str,
    depth: int,
    stream_done: Callable[[Any], list[Finding]] | None = None,
) -> list[Finding]:
    """One member (zip or tar): .npy, nested zip, or pickle, decided from its bytes."""
    head = open_().read(8)
    if head.startswith(NPY_MAGIC):
        return scan_npy(open_(), rel, member, size)
    if head.startswith(b"PK\x03\x04"):
        if depth >= 3:
            return [_note(rel, member, 0, "zip nested too deeply to scan")]
        with tempfile.NamedTemporaryFile(prefix="reconcile-scan-") as tmp:
            src = open_()
            while chunk := src.read(1 << 20):
                tmp.write(chunk)
            tmp.flush()
            return _scan_path(Path(tmp.name), rel, member, depth + 1)
    s = open_()
    found = scan_stream(s, rel, member)
    if found and stream_done is not None:
        found += stream_done(s)
    return found


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
        out += _scan_blob(
            lambda: _MemberStream(fd, e, file_size), e.usize, rel, member, depth, _crc_check(e, rel)
        )
    except Exception as err:  # any damage inside a member: fail closed, keep going
        out.append(_note(rel, member, 0, f"member unreadable ({err})"))
    return out


def _scan_zip(path: Path, rel: str, prefix: str | None, depth: int) -> list[Finding]:
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
                    findings += _scan_entry(fd, e2, rel, size, prefix, depth)
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
            findings += _scan_entry(fd, entry, rel, size, prefix, depth)
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
                found = _scan_entry(fd, hidden, rel, size, prefix, depth)
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


# --- tar, compressed --------------------------------------------------------------------


def _scan_tar(path: Path, rel: str, prefix: str | None, depth: int) -> list[Finding]:
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

                findings += _scan_blob(open_, m.size, rel, member, depth)
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


# --- files and trees --------------------------------------------------------------------


def _scan_path(path: Path, rel: str, prefix: str | None, depth: int) -> list[Finding]:
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(512)
        if head.startswith(NPY_MAGIC):
            f.seek(0)
            return scan_npy(f, rel, prefix, size)
        findings: list[Finding] = []
        if not head.startswith(b"PK"):
            # every file is walked from byte 0: torch.load unpickles anything that does
            # not start with a zip local header (a pickle glued before a zip included)
            f.seek(0)
            findings += scan_stream(f, rel, prefix, end=size)
        is_zip = zip_like(f, size, head)
    if is_zip:
        findings += _scan_zip(path, rel, prefix, depth)
    elif len(head) > 262 and head[257:262] == b"ustar":
        findings += _scan_tar(path, rel, prefix, depth)
    elif (kind := compressed_kind(head)) is not None and not findings:
        findings += _scan_compressed(path, rel, prefix, kind)
    return findings


def scan_file(path: Path, rel: str | None = None) -> list[Finding]:
    """Scan one file by what its bytes are (never by its name)."""
    rel = rel if rel is not None else path.name
    try:
        return _scan_path(Path(path), rel, None, 0)
    except OSError as e:
        return [_note(rel, None, 0, f"cannot read ({e})")]
    except Exception as e:  # a scanner bug must block the file, not crash the validator
        return [_note(rel, None, 0, f"scanner failed ({type(e).__name__}: {e}): not scanned")]


def _regular_files(root: Path) -> Iterator[tuple[Path, str]]:
    for dirpath, dirs, files in os.walk(root):  # does not descend into symlinked dirs
        dirs.sort()
        for name in sorted(files):
            p = Path(dirpath, name)
            try:
                if not stat.S_ISREG(os.lstat(p).st_mode):
                    continue  # symlinks, FIFOs (opening one blocks), devices
            except OSError:
                continue
            yield p, p.relative_to(root).as_posix()


def scan_tree(root: Path) -> list[Finding]:
    """Every regular file under root (symlinks are not followed)."""
    out: list[Finding] = []
    for p, rel in _regular_files(Path(root)):
        out += scan_file(p, rel)
    return out


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


__all__ = [
    "CRITICAL",
    "ERROR",
    "SAFE_GLOBALS",
    "UNKNOWN_GLOBAL",
    "WARNING",
    "Finding",
    "classify",
    "contains_pickle",
    "looks_like_pickle",
    "normalise",
    "scan_bytes",
    "scan_file",
    "scan_npy",
    "scan_stream",
    "scan_tree",
]
