"""Streams of pickles: one after another to EOF, legacy torch storages between them.

The VM (``vm``) walks one pickle; this decides what a whole stream is (a pickle, data
after a pickle, not a pickle at all) and is the scanner's entry point for a stream.
"""

from __future__ import annotations

import struct
from typing import IO, Any

from .findings import _TORCH_STORAGE_SIZES, ERROR, LEGACY_TORCH_MAGIC, WARNING, Finding
from .reader import _Reader
from .values import Global, _Malformed
from .vm import _Budget, _Evidence, _Walker


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


