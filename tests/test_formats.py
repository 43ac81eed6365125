"""safetensors/GGUF header checks and content sniffing (shared/notes/security.md §3, §4).

Sound files pass, each kind of damage is named, and headers are checked without reading
the tensor data (sparse files of 1 GiB and 1 TiB show it).
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import pickle
import struct
import tarfile
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from reconcile.validation.formats import check_gguf, check_safetensors
from reconcile.validation.kinds import sniff

# --- safetensors ------------------------------------------------------------------------


def st_file(
    tmp: Path,
    header: dict | bytes,
    body: bytes = b"",
    name: str = "m.safetensors",
    length: int | None = None,
) -> Path:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp / name
    p.write_bytes(struct.pack("<Q", len(hb) if length is None else length) + hb + body)
    return p


def test_a_file_written_by_safetensors_passes(tmp_path):
    tensors = {
        "a": np.ones((3, 4), np.float32),
        "b": np.zeros(5, np.int64),
        "c": np.ones((2, 2), np.float16),
        "d": np.array(True),
        "e": np.zeros((0, 3)),
    }
    save_file(tensors, str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    assert sniff(tmp_path / "m.safetensors") == "safetensors"
    assert check_safetensors(tmp_path / "m.safetensors") == []


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
Z8 = b"\0" * 8


def t(**kw: object) -> dict:
    return {**T, **kw}


@pytest.mark.parametrize(
    "header,body,expect",
    [
        ({"t": t(dtype="f32")}, Z8, "unknown dtype"),  # case-sensitive, as the reader
        ({"t": t(dtype="X9")}, Z8, "unknown dtype"),
        ({"t": t(dtype=["F32"])}, Z8, "unknown dtype"),  # not a str at all
        ({"t": t(shape=[-1])}, Z8, "non-negative"),
        ({"t": t(shape=[2.0])}, Z8, "non-negative"),
        ({"t": t(shape=[True, 2])}, Z8, "non-negative"),
        ({"t": t(data_offsets=[0.0, 8.0])}, Z8, "two non-negative integers"),
        ({"t": t(data_offsets=[0, 4, 8])}, Z8, "two non-negative integers"),
        ({"t": t(data_offsets=[8, 0])}, Z8, "end before they begin"),
        ({"t": t(data_offsets=[0, 4])}, b"\0" * 4, "do not hold"),  # wrong size
        ({"t": t(data_offsets=[8, 16])}, b"\0" * 16, "gap"),  # first tensor not at 0
        ({"t": T, "u": t(data_offsets=[16, 24])}, b"\0" * 24, "gap"),
        ({"t": T, "u": T}, Z8, "overlap"),  # two tensors, one range
        ({"t": T, "u": t(data_offsets=[4, 12])}, b"\0" * 12, "overlap"),
        ({"t": T}, b"\0" * 12, "data section has 12"),  # bytes after the last tensor
        ({"t": t(data_offsets=[0, 8])}, b"\0" * 4, "out of bounds"),  # buffer too short
        ({"t": T, "__metadata__": {"k": 1}}, Z8, "__metadata__"),
        ({"t": T, "__metadata__": ["k"]}, Z8, "__metadata__"),
        ({"t": t(extra=1)}, Z8, "exactly dtype"),  # the reader ignores unknown keys; we do not
        ({"t": {"dtype": "F32", "data_offsets": [0, 8]}}, Z8, "exactly dtype"),
        ({"": T}, Z8, "empty name"),
        ({"a\x00b": T}, Z8, "control characters"),
        ({"t": t(dtype="F4", shape=[3], data_offsets=[0, 2])}, b"\0" * 2, "byte boundary"),
        ({"t": t(shape=[2**40, 2**40, 2**40])}, Z8, "overflow"),
        (b"[1, 2]", b"", "not a JSON object"),
        (b"{nope", b"", "not valid JSON"),
        (b"{}\x00\x00", b"", "not valid JSON"),  # NUL padding: only whitespace is padding
        (b"[" * 100_000, b"", "not valid JSON"),  # nesting deeper than the parser recurses
        (b'{"t": {}, "t": {}}', b"", "duplicate keys"),
        (b"\xff\xfe", b"", "not valid UTF-8"),
    ],
)
def test_each_kind_of_damage_is_named(tmp_path, header, body, expect):
    problems = check_safetensors(st_file(tmp_path, header, body))
    assert any(expect in p for p in problems), problems


@pytest.mark.parametrize(
    "header,body",
    [
        (b'   {"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', Z8),  # leading spaces
        (b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}     ', Z8),  # padding
        (b'{"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', Z8),  # len % 8 != 0
        (b"{}", b""),  # nothing at all
        ({"z": t(shape=[0, 5], data_offsets=[0, 0]), "t": T}, Z8),  # zero-size tensor
        ({"s": t(shape=[], data_offsets=[0, 4])}, b"\0" * 4),  # scalar: one element
        ({"t": t(dtype="F4", shape=[2], data_offsets=[0, 1])}, b"\0"),  # sub-byte, whole byte
        ({"t": T, "__metadata__": {"format": "pt"}}, Z8),
    ],
)
def test_what_the_reference_reader_accepts_passes(tmp_path, header, body):
    assert check_safetensors(st_file(tmp_path, header, body)) == []


def test_header_lengths(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(b"\x01\x02")
    assert check_safetensors(p) == ["header too small"]
    assert "runs past the end" in check_safetensors(st_file(tmp_path, b"{}", length=1000))[0]
    assert "larger than" in check_safetensors(st_file(tmp_path, b"{}", length=10**12))[0]
    assert "larger than" in check_safetensors(st_file(tmp_path, b"{}", length=100_000_001))[0]
    assert "empty" in check_safetensors(st_file(tmp_path, b"", length=0))[0]
    big = st_file(tmp_path, b"{}" + b" " * 200)
    assert check_safetensors(big) == [] and "larger than" in check_safetensors(big, 100)[0]


def _sparse_safetensors(path: Path, nbytes: int) -> None:
    n = nbytes // 4
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}})
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header.encode())
        f.truncate(8 + len(header) + 4 * n)  # a hole: the body is never written


def test_a_1tib_sparse_file_shows_the_body_is_not_read(tmp_path):
    # reading a terabyte of holes takes minutes; a header check takes milliseconds
    p = tmp_path / "huge.safetensors"
    _sparse_safetensors(p, 1 << 40)
    t0 = time.perf_counter()
    assert check_safetensors(p) == [] and sniff(p) == "safetensors"
    assert time.perf_counter() - t0 < 2


def test_modelscan_validator_reports_header_damage(tmp_path):
    from reconcile.validation.builtin import modelscan

    st_file(tmp_path, {"t": t(dtype="X9")}, Z8)
    (tmp_path / "ok.json").write_text("{}")
    out = modelscan(tmp_path)
    assert len(out) == 1 and "m.safetensors" in out[0] and "unknown dtype" in out[0]


# --- GGUF ---------------------------------------------------------------------------------


def gguf_bytes(
    version: int = 3,
    endian: str = "<",
    kvs: list | None = None,
    tensors: list | None = None,
    alignment: int = 32,
    data: int = 64,
    counts: tuple[int, int] | None = None,
) -> bytes:
    """A GGUF file: kvs as (key, type, raw value bytes), tensors as (name, dims, type, off)."""
    wide = version >= 2
    ln = (endian + "Q") if wide else (endian + "I")

    def s(x: str) -> bytes:
        b = x.encode()
        return struct.pack(ln, len(b)) + b

    kvs = kvs if kvs is not None else [("general.architecture", 8, s("llama"))]
    tensors = tensors if tensors is not None else [("w", [4, 2], 0, 0)]
    n_t, n_kv = counts or (len(tensors), len(kvs))
    out = b"GGUF" + struct.pack(endian + "I", version)
    out += struct.pack(endian + ("QQ" if wide else "II"), n_t, n_kv)
    for key, vtype, raw in kvs:
        out += s(key) + struct.pack(endian + "I", vtype) + raw
    for name, dims, ttype, off in tensors:
        out += s(name) + struct.pack(endian + "I", len(dims))
        out += b"".join(struct.pack(ln, d) for d in dims)
        out += struct.pack(endian + "IQ", ttype, off)
    out += b"\0" * (-len(out) % alignment)
    return out + b"\0" * data


def g(tmp: Path, data: bytes) -> Path:
    p = tmp / "m.gguf"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize("version,endian", [(3, "<"), (3, ">"), (2, "<"), (1, "<")])
def test_sound_gguf_files_pass(tmp_path, version, endian):
    p = g(tmp_path, gguf_bytes(version, endian))
    assert check_gguf(p) == [] and check_gguf(p, deep=True) == []
    assert sniff(p) == "gguf"


def test_gguf_header_problems(tmp_path):
    assert "bad magic" in check_gguf(g(tmp_path, b"GGML" + b"\0" * 40))[0]
    assert "unsupported GGUF version 4" in check_gguf(g(tmp_path, gguf_bytes(4)))[0]
    assert "truncated" in check_gguf(g(tmp_path, b"GGUF\x03\x00\x00\x00\x01"))[0]
    huge = g(tmp_path, gguf_bytes(counts=(10**15, 1)))
    assert "tensor count" in check_gguf(huge)[0]  # refused before any allocation
    assert "metadata count" in check_gguf(g(tmp_path, gguf_bytes(counts=(1, 2**60))))[0]


U32 = struct.pack("<I", 4)  # a 4-byte value


@pytest.mark.parametrize(
    "kw,expect",
    [
        ({"kvs": [("k", 8, struct.pack("<Q", 10**9) + b"x")]}, "runs past the end"),
        ({"kvs": [("k", 13, b"")]}, "unknown value type 13"),
        ({"kvs": [("k", 9, struct.pack("<IQ", 4, 10**12))]}, "runs past the end"),
        ({"kvs": [("k", 9, struct.pack("<IQ", 8, 10**12))]}, "runs past the end"),
        ({"kvs": [("k", 4, U32), ("k", 4, U32)]}, "duplicate metadata key"),
        ({"kvs": [("general.alignment", 4, struct.pack("<I", 24))]}, "power of two"),
        ({"tensors": [("w", [4, 2], 0, 4)]}, "not aligned"),
        ({"tensors": [("w", [4, 2], 0, 0), ("v", [4], 0, 0)]}, "overlap"),
        ({"tensors": [("w", [64, 64], 0, 0)]}, "outside"),
        ({"tensors": [("w", [33], 2, 0)]}, "multiple of the type's block"),
        ({"tensors": [("w", [1, 1, 1, 1, 1], 0, 0)]}, "dimensions"),
        ({"counts": (1, 3)}, "runs past the end"),  # a count larger than what follows
    ],
)
def test_gguf_deep_walk_names_damage(tmp_path, kw, expect):
    problems = check_gguf(g(tmp_path, gguf_bytes(**kw)), deep=True)
    assert any(expect in p for p in problems), problems


def test_gguf_written_by_the_gguf_package(tmp_path):
    import gguf
    for endian in (gguf.GGUFEndian.LITTLE, gguf.GGUFEndian.BIG):
        w = gguf.GGUFWriter(str(tmp_path / "r.gguf"), "llama", endianess=endian)
        w.add_array("tokenizer.ggml.tokens", ["a", "bb", "ccc"])
        w.add_uint32("general.alignment", 64)
        w.add_tensor("w", np.ones((4, 8), np.float32))
        w.add_tensor("b", np.ones(3, np.float16))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        assert check_gguf(tmp_path / "r.gguf", deep=True) == []


def test_gguf_deep_walk_does_not_read_tensor_data(tmp_path, monkeypatch):
    import builtins

    from reconcile.validation import formats

    p = g(tmp_path, gguf_bytes(tensors=[("w", [1 << 28], 0, 0)], data=0))
    with open(p, "r+b") as f:
        f.truncate(os.path.getsize(p) + (1 << 30))
    read = [0]

    class Counting:
        def __init__(self, f):
            self.f = f

        def read(self, n=-1):
            data = self.f.read(n)
            read[0] += len(data)
            return data

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    def counting_open(*a, **kw):
        return Counting(builtins.open(*a, **kw))  # Counting closes it on exit

    monkeypatch.setattr(formats, "open", counting_open, raising=False)
    assert check_gguf(p, deep=True) == []
    assert 0 < read[0] < 4096  # the header and one tensor info, none of the 1 GiB


# --- sniff ------------------------------------------------------------------------------


def test_sniff_by_content_not_name(tmp_path):
    def w(name: str, data: bytes) -> Path:
        p = tmp_path / name
        p.write_bytes(data)
        return p

    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a/data.pkl", pickle.dumps({"x": 1}, 2))
    tarred = io.BytesIO()
    with tarfile.open(fileobj=tarred, mode="w") as tf:
        info = tarfile.TarInfo("pickle")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    npy = io.BytesIO()
    np.save(npy, np.ones(2))
    evil = b"cposix\ngetcwd\n(tR."
    cases = {
        "model.safetensors": (pickle.dumps({"a": 1}, 2), "pickle"),  # the name lies
        "p0.bin": (evil, "pickle"),  # protocol 0 has no header
        "data.pkl": (pickle.dumps([1, 2], 5), "pickle"),  # data only, whole file parses
        "x.bin": (zipped.getvalue(), "zip"),
        "prefixed.pt": (b"\x00" * 100 + zipped.getvalue(), "zip"),
        "glued.pt": (evil + zipped.getvalue(), "pickle"),  # torch.load unpickles the front
        "old.pt": (tarred.getvalue(), "tar"),
        "a.bin": (npy.getvalue(), "numpy"),
        "g.bin": (gzip.compress(b"x"), "compressed"),
        "z.bin": (zlib.compress(b"x"), "compressed"),
        "b.bin": (bz2.compress(b"x"), "compressed"),
        "xz.bin": (lzma.compress(b"x"), "compressed"),
        "empty.pkl": (b"", "other"),
        "labels.txt": (b"cat\ndog\nbird\n", "other"),
        "rand.pkl": (
            os.urandom(4096).replace(b"PK", b"pk")
            + b"PK\x05\x06"
            + struct.pack("<HHHHIIH", 0, 0, 1, 1, 46, 100, 0),
            "other",
        ),
        # ^ an end-of-directory record pointing at no central directory is not a zip
    }
    for name, (data, kind) in cases.items():
        assert sniff(w(name, data)) == kind, name


def test_modelscan_validator_walks_gguf_bodies(tmp_path):
    # tensors that overlap pass the header-only check; modelscan must catch them
    from reconcile.validation.builtin import modelscan

    g(tmp_path, gguf_bytes(tensors=[("w", [4, 2], 0, 0), ("v", [4], 0, 0)]))
    assert check_gguf(tmp_path / "m.gguf") == []
    assert any("overlap" in p for p in modelscan(tmp_path))
