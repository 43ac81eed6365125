"""GGUF headers: what a ``.gguf`` file says about itself, read without its tensor data.

A GGUF (llama.cpp's format, v2 and v3) starts with ``GGUF``, a uint32 version, a
uint64 tensor count and a uint64 key/value count, then the key/values (a string key, a
uint32 type, a typed value: integers, floats, bool, strings, arrays of those), then one
descriptor per tensor (name, dims, type, offset), then the data. The ollama target needs
a few of the key/values (architecture, quantization, chat template, licence) and the
parameter count, which ollama computes as the sum of the tensors' element counts
(``fs/ggml/gguf.go: Decode`` sets ``general.parameter_count``), so the descriptors are
read too; the data never is.

The file is untrusted (any source, any server), so the reader is bounded everywhere: the
counts, each string and array length, nesting, and the total bytes read, checked
*before* anything is allocated; long values (a 150k-token vocabulary, an embedded
tokenizer.json) are skipped, kept only as their type and length. It only calls
``read`` on the stream, so it works on a file, a pipe or a download as it arrives.
Big-endian files (s390x builds) are read as well; v1 (2023) is refused as llama.cpp
refuses it. Any problem raises ``FormatError`` naming the file, the byte and the fix.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from .errors import FormatError

# metadata value types (gguf spec): struct format of each scalar; 8 = string, 9 = array
SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q",
           12: "d"}
STRING, ARRAY = 8, 9
MAX_DIMS = 4  # GGML_MAX_DIMS; ollama's fs/gguf MaxTensorDims
CHUNK = 1 << 16

# general.file_type (llama.cpp's llama_ftype) -> the name ollama shows as the
# quantization (fs/ggml/type.go: FileType.String); 4-6 and 33-35 were removed formats
FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
    38: "MXFP4_MOE", 39: "NVFP4", 40: "Q1_0",
}  # fmt: skip


@dataclass(frozen=True)
class Limits:
    """Hard bounds for an untrusted header. The defaults pass every real model (the
    largest vocabularies take ~20 MB of metadata) and match ollama's own caps where it
    has them (16 MiB strings, ``fs/gguf``), so a file ollama reads is read here too."""

    max_kv: int = 1 << 16
    max_tensors: int = 1 << 20
    max_string: int = 16 << 20  # a string's declared length
    max_array: int = 1 << 26  # an array's declared element count
    max_depth: int = 3  # arrays of arrays of ...
    max_bytes: int = 128 << 20  # the whole header: key/values and tensor descriptors
    keep_string: int = 1 << 20  # longer strings are skipped, not kept
    keep_array: int = 1 << 12  # longer arrays (vocabularies) are skipped, not kept


LIMITS = Limits()


@dataclass(frozen=True)
class Skipped:
    """A value too large to keep: its GGUF type and length, not its content."""

    type: int
    length: int


@dataclass(frozen=True)
class GGUFHeader:
    """The metadata of one GGUF file, and the facts the ollama config is made of."""

    version: int
    byte_order: str  # "<" or ">"
    tensor_count: int
    metadata: dict[str, Any]
    tensor_elements: int | None  # sum over the descriptors; None when they were not read
    size: int  # bytes the header took

    def text(self, key: str) -> str | None:
        value = self.metadata.get(key)
        return value if isinstance(value, str) else None

    @property
    def architecture(self) -> str | None:
        return self.text("general.architecture")

    @property
    def name(self) -> str | None:
        return self.text("general.name")

    @property
    def license(self) -> str | None:
        """An identifier such as ``apache-2.0`` (not the licence's text)."""
        return self.text("general.license")

    @property
    def chat_template(self) -> str | None:
        """The Jinja template (``tokenizer.chat_template``), when kept."""
        return self.text("tokenizer.chat_template")

    @property
    def file_type(self) -> int | None:
        value = self.metadata.get("general.file_type")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def quantization(self) -> str | None:
        """``Q4_K_M``, ``F16`` …; ``unknown`` for a type ollama does not name."""
        return None if self.file_type is None else FILE_TYPES.get(self.file_type, "unknown")

    @property
    def parameter_count(self) -> int | None:
        """As ollama counts it (the tensors' elements); else a ``general.parameter_count``."""
        if self.tensor_elements is not None:
            return self.tensor_elements
        value = self.metadata.get("general.parameter_count")
        return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Reader:
    """Exact reads from a stream, counted against the header's byte budget."""

    def __init__(self, stream: BinaryIO, file: str, limits: Limits) -> None:
        self.stream, self.file, self.limits = stream, file, limits
        self.pos = 0
        self.order = "<"

    def fail(self, message: str, hint: str | None = None) -> FormatError:
        return FormatError(message, file=self.file, offset=self.pos, hint=hint)

    def budget(self, n: int, what: str) -> None:
        if self.pos + n > self.limits.max_bytes:
            raise self.fail(f"{what} would take the header past {self.limits.max_bytes} bytes;"
                            " not a GGUF this tool reads")

    def read(self, n: int, what: str) -> bytes:
        self.budget(n, what)
        data = self.stream.read(n)
        if len(data) != n:
            raise self.fail(f"the file ends inside {what} (truncated?)",
                            hint="download it again: the lock's sha256 tells a whole file")
        self.pos += n
        return data

    def skip(self, n: int, what: str) -> None:
        self.budget(n, what)
        while n:
            n -= len(self.read(min(n, CHUNK), what))

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(self.order + fmt, self.read(struct.calcsize(fmt), what))[0]

    def count(self, what: str, limit: int) -> int:
        n = self.unpack("Q", what)
        if n > limit:
            raise self.fail(f"{what} is {n}, over the limit of {limit}")
        return n

    def string(self, what: str) -> str | Skipped:
        n = self.count(f"the length of {what}", self.limits.max_string)
        if n > self.limits.keep_string:
            self.skip(n, what)
            return Skipped(STRING, n)
        return self.read(n, what).decode("utf-8", "replace")


def _value(r: _Reader, vtype: int, what: str, depth: int = 0, keep: bool = True) -> Any:
    """One typed value; with ``keep`` False it is only walked (bounded, nothing kept)."""
    if vtype in SCALARS:
        return r.unpack(SCALARS[vtype], what)
    if vtype == STRING:
        if keep:
            return r.string(what)
        r.skip(r.count(f"the length of {what}", r.limits.max_string), what)
        return None
    if vtype == ARRAY and depth < r.limits.max_depth:
        etype = r.unpack("I", f"the element type of {what}")
        n = r.count(f"the length of {what}", r.limits.max_array)
        return _array(r, etype, n, what, depth, keep)
    if vtype == ARRAY:
        raise r.fail(f"{what}: arrays nested deeper than {r.limits.max_depth}")
    raise r.fail(f"{what}: unknown value type {vtype}",
                 hint="a newer GGUF revision? update reconcile, or convert the model again")


def _array(r: _Reader, etype: int, n: int, what: str, depth: int,
           keep: bool) -> list[Any] | Skipped | None:
    """Arrays up to ``keep_array`` elements are kept; longer ones (a vocabulary, its
    scores, its merges) are walked and returned as ``Skipped``."""
    if etype not in SCALARS and etype not in (STRING, ARRAY):
        raise r.fail(f"{what}: unknown array element type {etype}")
    keep = keep and n <= r.limits.keep_array
    if etype in SCALARS:
        size = struct.calcsize(SCALARS[etype])
        if not keep:
            r.skip(n * size, what)
            return Skipped(etype, n)
        return list(struct.unpack(f"{r.order}{n}{SCALARS[etype]}", r.read(n * size, what)))
    r.budget(n * 8, what)  # every element takes its length field at least: no long loop
    items = [_value(r, etype, what, depth + 1, keep) for _ in range(n)]
    return items if keep else Skipped(etype, n)


def _start(r: _Reader) -> tuple[int, int, int]:
    """Magic, version (and so the byte order), tensor and key/value counts."""
    magic = r.read(4, "the magic")
    if magic != b"GGUF":
        raise r.fail(f"not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                     hint="is the file a GGUF? the `files` pattern may match something else")
    raw = r.read(4, "the version")
    version = struct.unpack("<I", raw)[0]
    if version not in (2, 3) and struct.unpack(">I", raw)[0] in (2, 3):
        r.order, version = ">", struct.unpack(">I", raw)[0]
    if version == 1:
        raise r.fail("GGUF version 1 (2023) is not supported",
                     hint="convert the model again with a current llama.cpp")
    if version not in (2, 3):
        raise r.fail(f"unsupported GGUF version {version} (2 and 3 are)")
    tensors = r.count("the tensor count", r.limits.max_tensors)
    kvs = r.count("the key/value count", r.limits.max_kv)
    return version, tensors, kvs


def _metadata(r: _Reader, kvs: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for i in range(kvs):
        n = r.count(f"the length of key {i}", 65535)
        try:
            key = r.read(n, f"key {i}").decode("utf-8")
        except UnicodeDecodeError:
            raise r.fail(f"key {i} is not UTF-8") from None
        if key in out:
            raise r.fail(f"duplicate key {key!r}")  # llama.cpp refuses these too
        vtype = r.unpack("I", f"the type of {key!r}")
        out[key] = _value(r, vtype, repr(key))
    return out


def _tensor_elements(r: _Reader, tensors: int) -> int:
    """The sum of every tensor's element count, read from the descriptors only."""
    total = 0
    for i in range(tensors):
        n = r.count(f"the length of tensor {i}'s name", 65535)
        r.skip(n, f"tensor {i}'s name")
        dims = r.unpack("I", f"tensor {i}'s dimension count")
        if dims > MAX_DIMS:
            raise r.fail(f"tensor {i} has {dims} dimensions (at most {MAX_DIMS})")
        total += math.prod(r.unpack("Q", f"tensor {i}'s shape") for _ in range(dims))
        r.skip(12, f"tensor {i}'s type and offset")
    return total


def parse_gguf(stream: BinaryIO, file: str, limits: Limits = LIMITS, *,
               tensors: bool = True) -> GGUFHeader:
    """Read a GGUF header from ``stream`` (positioned at its first byte); ``file`` names
    it in errors. ``tensors=False`` stops after the key/values (no parameter count)."""
    r = _Reader(stream, file, limits)
    version, n_tensors, kvs = _start(r)
    metadata = _metadata(r, kvs)
    elements = _tensor_elements(r, n_tensors) if tensors else None
    return GGUFHeader(version, r.order, n_tensors, metadata, elements, r.pos)


def read_gguf(path: Path | str, limits: Limits = LIMITS, *, tensors: bool = True) -> GGUFHeader:
    """The header of the GGUF file at ``path``."""
    try:
        with open(path, "rb") as f:
            return parse_gguf(f, str(path), limits, tensors=tensors)
    except OSError as e:
        raise FormatError(f"cannot be read ({e.strerror})", file=str(path)) from None
