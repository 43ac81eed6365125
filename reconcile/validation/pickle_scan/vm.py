"""The pickle VM: an opcode walk with a simulated stack, mark stack and memo (never unpickles).

It walks one pickle; ``stream`` strings pickles together, ``reader`` feeds it bytes.
"""

from __future__ import annotations

import codecs
import re
import struct
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .findings import (
    _IDENT,
    _KNOWN_ROOTS,
    CRITICAL,
    ERROR,
    Finding,
    classify,
    normalise,
)
from .joblib import _joblib_array
from .reader import _Reader
from .values import (
    _CONSTS,
    LONGSTR,
    OTHER,
    TAINTED,
    UNKNOWN,
    Call,
    Global,
    _Malformed,
    _Persistent,
    _Sentinel,
)

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
