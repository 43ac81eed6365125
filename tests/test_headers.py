"""safetensors and GGUF header checks: sound files pass, each kind of damage is named."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from reconcile.validation.formats import check_gguf, check_safetensors
from reconcile.validation.kinds import sniff


def st_file(tmp: Path, header: dict | bytes, body: bytes, name: str = "m.safetensors") -> Path:
    hb = header if isinstance(header, bytes) else json.dumps(header).encode()
    p = tmp / name
    p.write_bytes(struct.pack("<Q", len(hb)) + hb + body)
    return p


def test_real_safetensors_pass(tmp_path):
    save_file({"a": np.ones((3, 4), np.float32), "b": np.zeros(5, np.int64)},
              str(tmp_path / "m.safetensors"), metadata={"format": "pt"})
    assert sniff(tmp_path / "m.safetensors") == "safetensors"
    assert check_safetensors(tmp_path / "m.safetensors") == []


T = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("header,body,expect", [
    ({"t": T}, b"\0" * 8, None),
    ({"t": {**T, "dtype": "f32"}}, b"\0" * 8, "unknown dtype"),
    ({"t": {**T, "shape": [-1]}}, b"\0" * 8, "non-negative"),
    ({"t": {**T, "data_offsets": [0, 4]}}, b"\0" * 4, "do not hold"),
    ({"t": {**T, "data_offsets": [8, 16]}}, b"\0" * 16, "gap"),
    ({"t": T, "u": T}, b"\0" * 8, "overlap"),
    ({"t": T}, b"\0" * 12, "data section has 12"),
    ({"t": T}, b"\0" * 4, "data section has 4"),
    ({"t": T, "__metadata__": {"k": 1}}, b"\0" * 8, "__metadata__"),
    ({"t": {**T, "extra": 1}}, b"\0" * 8, "exactly dtype"),
    ({"": T}, b"\0" * 8, "empty name"),
    (b"[1, 2]", b"", "not a JSON object"),
    (b"{nope", b"", "not valid JSON"),
    (b'{"t": {}, "t": {}}', b"", "duplicate keys"),
    (b"\xff\xfe", b"", "not valid UTF-8"),
])
def test_broken_headers_are_named(tmp_path, header, body, expect):
    problems = check_safetensors(st_file(tmp_path, header, body))
    if expect is None:
        assert problems == []
    else:
        assert any(expect in p for p in problems), problems


def test_header_length_past_the_end_and_huge(tmp_path):
    p = tmp_path / "x.safetensors"
    p.write_bytes(struct.pack("<Q", 1000) + b"{}")
    assert "runs past the end" in check_safetensors(p)[0]
    p.write_bytes(struct.pack("<Q", 10**12) + b"{}")
    assert "larger than" in check_safetensors(p)[0]
    p.write_bytes(b"\x01\x02")
    assert check_safetensors(p) == ["header too small"]


def test_a_big_sparse_safetensors_is_checked_from_its_header(tmp_path):
    n = 256 * 1024 * 1024  # 1 GiB of F32
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    p = tmp_path / "big.safetensors"
    with open(p, "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        f.truncate(8 + len(header) + 4 * n)
    assert check_safetensors(p) == []


def gguf(tmp: Path, version: int, tensors: int, kvs: int, endian: str = "<") -> Path:
    p = tmp / "m.gguf"
    p.write_bytes(b"GGUF" + struct.pack(endian + "IQQ", version, tensors, kvs) + b"\0" * 64)
    return p


def test_gguf_checks(tmp_path):
    assert check_gguf(gguf(tmp_path, 3, 1, 2)) == []
    assert check_gguf(gguf(tmp_path, 3, 1, 2, ">")) == []  # big-endian files exist
    assert "unsupported GGUF version" in check_gguf(gguf(tmp_path, 9, 1, 2))[0]
    assert "implausible" in check_gguf(gguf(tmp_path, 3, 10**15, 1))[0]
    (tmp_path / "bad.gguf").write_bytes(b"GGML....")
    assert "bad magic" in check_gguf(tmp_path / "bad.gguf")[0]
    assert sniff(gguf(tmp_path, 3, 1, 2)) == "gguf"


def test_modelscan_validator_reports_header_damage(tmp_path):
    from reconcile.validation.builtin import modelscan

    st_file(tmp_path, {"t": {**T, "dtype": "X9"}}, b"\0" * 8)
    (tmp_path / "ok.json").write_text("{}")
    out = modelscan(tmp_path)
    assert len(out) == 1 and "m.safetensors" in out[0] and "unknown dtype" in out[0]
