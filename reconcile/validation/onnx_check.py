"""ONNX external data: every tensor stored outside the .onnx file must stay inside the model.

A TensorProto with ``data_location = EXTERNAL`` names a file by ``location`` (plus
``offset`` and ``length``) relative to the model. Loaders that follow it read
wherever it points: ``../../.ssh/id_rsa`` (CVE-2022-25882, CVE-2024-27318) or a
symlink planted beside the model (onnx/onnx#7686). security.md §3.7 gives the rule
checked here: a relative path without ``..``, drive or NUL that resolves inside the
model directory to a regular file, not a symlink, with ``offset + length`` inside it.

ONNX is protobuf. Rather than depend on ``onnx`` (and protobuf) to validate, this
walks the wire format over an mmap, following only the fields that can hold a
tensor, so a 2 GB model with inline weights costs a few page reads, not a parse.
"""

from __future__ import annotations

import mmap
import os
import stat
from pathlib import Path, PurePosixPath

from ..paths import check_relpath

# field numbers from onnx.proto3 (ir_version 10)
MODEL_GRAPH, MODEL_TRAINING, MODEL_FUNCTIONS = 7, 20, 25
GRAPH_NODE, GRAPH_INITIALIZER, GRAPH_SPARSE_INITIALIZER = 1, 5, 15
NODE_ATTRIBUTE = 5
ATTR_T, ATTR_G, ATTR_TENSORS, ATTR_GRAPHS, ATTR_SPARSE, ATTR_SPARSES = 5, 6, 10, 11, 22, 23
TENSOR_NAME, TENSOR_EXTERNAL_DATA, TENSOR_DATA_LOCATION = 8, 13, 14
SPARSE_VALUES, SPARSE_INDICES = 1, 2
TRAINING_INIT, TRAINING_ALGORITHM = 1, 2
FUNCTION_NODE = 7
EXTERNAL = 1
MAX_DEPTH = 64  # subgraphs nest (If/Loop bodies); a deeper file is refused, not recursed


class WireError(Exception):
    pass


def _varint(buf: mmap.mmap | bytes, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise WireError("truncated or overlong varint")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def fields(buf: mmap.mmap | bytes, start: int, end: int):
    """(field number, wire type, value) of one message; value is (start, end) for
    length-delimited fields and the integer otherwise. Nothing is copied."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        num, wtype = key >> 3, key & 7
        if wtype == 0:
            value, pos = _varint(buf, pos, end)
        elif wtype == 1 or wtype == 5:
            value, pos = None, pos + (8 if wtype == 1 else 4)
        elif wtype == 2:
            n, pos = _varint(buf, pos, end)
            value, pos = (pos, pos + n), pos + n
        else:
            raise WireError(f"unsupported wire type {wtype}")
        if pos > end:
            raise WireError("a field runs past its message")
        yield num, wtype, value


def _children(kind: str) -> dict[int, str]:
    """Which fields of a message of ``kind`` lead towards tensors, and what they hold."""
    return {
        "model": {MODEL_GRAPH: "graph", MODEL_TRAINING: "training", MODEL_FUNCTIONS: "function"},
        "graph": {GRAPH_NODE: "node", GRAPH_INITIALIZER: "tensor",
                  GRAPH_SPARSE_INITIALIZER: "sparse"},
        "training": {TRAINING_INIT: "graph", TRAINING_ALGORITHM: "graph"},
        "function": {FUNCTION_NODE: "node"},
        "node": {NODE_ATTRIBUTE: "attribute"},
        "attribute": {ATTR_T: "tensor", ATTR_G: "graph", ATTR_TENSORS: "tensor",
                      ATTR_GRAPHS: "graph", ATTR_SPARSE: "sparse", ATTR_SPARSES: "sparse"},
        "sparse": {SPARSE_VALUES: "tensor", SPARSE_INDICES: "tensor"},
    }[kind]


def external_tensors(buf: mmap.mmap | bytes) -> list[tuple[str, dict[str, str]]]:
    """(tensor name, external_data entries) of every tensor stored outside the file."""
    out: list[tuple[str, dict[str, str]]] = []
    stack = [("model", 0, len(buf), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise WireError(f"subgraphs nested deeper than {MAX_DEPTH}")
        if kind == "tensor":
            tensor = _tensor(buf, start, end)
            if tensor:
                out.append(tensor)
            continue
        wanted = _children(kind)
        for num, wtype, value in fields(buf, start, end):
            if wtype == 2 and num in wanted:
                stack.append((wanted[num], *value, depth + 1))
    return out


def _tensor(buf: mmap.mmap | bytes, start: int, end: int) -> tuple[str, dict[str, str]] | None:
    name, entries, location = "?", {}, 0
    for num, wtype, value in fields(buf, start, end):
        if num == TENSOR_NAME and wtype == 2:
            name = _text(buf, value)
        elif num == TENSOR_DATA_LOCATION and wtype == 0:
            location = value
        elif num == TENSOR_EXTERNAL_DATA and wtype == 2:
            kv = {k: _text(buf, v) for k, w, v in fields(buf, *value) if w == 2}
            entries[kv.get(1, "")] = kv.get(2, "")
    return (name, entries) if location == EXTERNAL or entries else None


def _text(buf: mmap.mmap | bytes, span: tuple[int, int]) -> str:
    return bytes(buf[span[0]:span[1]]).decode("utf-8", "replace")


def check_onnx(path: Path, rel: str, root: Path) -> list[str]:
    """Findings for one .onnx file of the model tree at ``root``."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return [f"{rel}: empty ONNX file"]
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                tensors = external_tensors(buf)
    except WireError as e:
        return [f"{rel}: not a readable ONNX protobuf ({e})"]
    base = PurePosixPath(rel).parent
    return [f"{rel}: tensor {name!r}: {problem}" for name, entries in tensors
            if (problem := _external_problem(entries, base, root))]


def _external_problem(entries: dict[str, str], base: PurePosixPath, root: Path) -> str | None:
    location = entries.get("location", "")
    if not location:
        return "external data without a location"
    try:
        parts = check_relpath(location).split("/")
    except ValueError:
        leaves = ".." in location.split("/")
        why = "leaves the model directory" if leaves else "is not a plain relative path"
        return f"external data location {location!r} {why}"
    target = root.joinpath(*base.parts, *parts)
    if any(os.path.islink(root.joinpath(*base.parts, *parts[:i]))
           for i in range(1, len(parts) + 1)):
        return f"external data location {location!r} is a symlink"
    try:
        st = os.stat(target)
    except OSError:
        return f"external data file {location!r} is missing"
    if not stat.S_ISREG(st.st_mode):
        return f"external data location {location!r} is not a regular file"
    try:
        offset = int(entries.get("offset") or 0)
        length = int(entries["length"]) if entries.get("length") else st.st_size - offset
    except ValueError:
        return "external data offset/length are not integers"
    if offset < 0 or length < 0 or offset + length > st.st_size:
        return (f"external data [{offset}, {offset + length}) lies outside {location!r}"
                f" ({st.st_size} bytes)")
    return None
