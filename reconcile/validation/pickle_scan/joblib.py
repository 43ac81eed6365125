"""joblib: raw array bytes inside the pickle stream, skipped by their declared size."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from typing import Any

from .values import Call, Global, _Malformed

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


def _joblib_array(w: Any, r: Any, pos: int, state: Any) -> None:
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


