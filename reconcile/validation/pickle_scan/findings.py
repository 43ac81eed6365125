"""Severities, the allow-list of globals real checkpoints need, and Finding."""

from __future__ import annotations

import _compat_pickle
import re
import sys
from dataclasses import dataclass

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


def _prefixed(prefix: str | None, member: str | None) -> str | None:
    if prefix is None:
        return member
    return prefix if member is None else f"{prefix}!{member}"
