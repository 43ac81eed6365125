"""The seed's test source: deterministic content per (org, model, path), no network.

It is a first-class source (like httpx's MockTransport), used by the embedded default
models.toml, the tests and the benchmarks. ``config.json`` is valid JSON that
transformers' AutoConfig accepts, ``*.safetensors`` a valid safetensors file, and any
other path deterministic pseudo-random bytes (``{ path, size }`` picks the size).
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Iterator
from functools import cached_property, lru_cache
from typing import Any

from .base import RemoteFile, Resolution, Source

_BLOCK = 1 << 20


def _seed(org: str, model: str, path: str) -> bytes:
    return hashlib.sha256(f"mock\0{org}\0{model}\0{path}".encode()).digest()


def _prefix(seed: bytes, n: int) -> bytes:
    """n pseudo-random bytes from the seed (sha512 in counter mode)."""
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha512(seed + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:n])


@lru_cache(maxsize=16)
def _block(seed: bytes) -> bytes:
    """1 MiB for sized files, which repeat it (content only needs to be stable)."""
    return _prefix(seed, _BLOCK)


def _config_json(org: str, model: str) -> bytes:
    cfg = {
        "architectures": ["BertModel"],
        "model_type": "bert",
        "hidden_size": 8,
        "num_attention_heads": 2,
        "num_hidden_layers": 1,
        "intermediate_size": 16,
        "vocab_size": 32,
        "_name_or_path": f"{org}/{model}",
    }
    return (json.dumps(cfg, indent=2, sort_keys=True) + "\n").encode()


def _safetensors(seed: bytes) -> bytes:
    data = _prefix(seed, 64)  # 16 float32 values' worth of bytes
    header = {
        "weight": {"dtype": "F32", "shape": [4, 4], "data_offsets": [0, len(data)]},
        "__metadata__": {"format": "pt"},
    }
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    return struct.pack("<Q", len(hb)) + hb + data


def content(org: str, model: str, path: str, size: int | None = None) -> bytes | None:
    """Small files' full bytes; None for sized pseudo-random files (streamed by `_stream`)."""
    seed = _seed(org, model, path)
    if size is not None:
        return None
    if path.endswith("config.json"):
        return _config_json(org, model)
    if path.endswith(".safetensors"):
        return _safetensors(seed)
    return _prefix(seed, 64 + seed[0] * 4)


def _stream(seed: bytes, size: int, start: int, end: int) -> Iterator[bytes]:
    block = _block(seed)
    pos = start
    while pos < end:
        off = pos % _BLOCK
        n = min(_BLOCK - off, end - pos)
        yield block[off : off + n]
        pos += n


def _digest(org: str, model: str, path: str, size: int | None) -> tuple[int, str]:
    data = content(org, model, path, size)
    if data is not None:
        return len(data), hashlib.sha256(data).hexdigest()
    h = hashlib.sha256()
    for chunk in _stream(_seed(org, model, path), size or 0, 0, size or 0):
        h.update(chunk)
    return size or 0, h.hexdigest()


class MockSource(Source):
    type = "mock"
    needs_network = False
    OPTIONS: dict[str, Any] = {"org": "name", "model": "name", "files": "list"}

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        from ..paths import check_relpath

        files = []
        for i, f in enumerate(opts.get("files", [])):
            if isinstance(f, str):
                f = {"path": f}
            if not isinstance(f, dict) or set(f) - {"path", "size"} or "path" not in f:
                raise ValueError(f"files[{i}]: expected a path or {{ path = '…', size = N }}")
            try:
                path = check_relpath(f["path"])
            except ValueError as e:
                raise ValueError(f"files[{i}]: {e}") from None
            size = f.get("size")
            if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 0):
                raise ValueError(f"files[{i}].size: expected a non-negative integer")
            files.append({"path": path, **({"size": size} if size is not None else {})})
        return {"org": opts.get("org", "test"), "model": opts.get("model", "model"), "files": files}

    def resolve(self) -> Resolution:
        org, model = self.options["org"], self.options["model"]
        files = []
        for f in self.options["files"]:
            size, sha = _digest(org, model, f["path"], f.get("size"))
            files.append(RemoteFile(path=f["path"], size=size, sha256=sha))
        return Resolution(pin={"org": org, "model": model}, files=files)

    @cached_property
    def _sizes(self) -> dict[str, int | None]:
        """Declared sizes by path, built once (not once per file: 10,000 files)."""
        return {f["path"]: f.get("size") for f in self.options["files"]}

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        org, model = pin["org"], pin["model"]
        data = content(org, model, file.path, self._sizes.get(file.path))
        end = file.size if end is None else end
        if data is not None:
            yield data[start:end]
            return
        yield from _stream(_seed(org, model, file.path), file.size, start, end)

    def default_hf_name(self) -> tuple[str, str]:
        return (self.options["org"], self.options["model"])


SOURCE = MockSource
