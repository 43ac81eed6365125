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

from .files import scan_file, scan_tree
from .findings import CRITICAL, ERROR, UNKNOWN_GLOBAL, WARNING, Finding, classify
from .questions import contains_pickle, looks_like_pickle
from .stream import scan_bytes, scan_stream

__all__ = ["CRITICAL", "ERROR", "SAFE_GLOBALS", "UNKNOWN_GLOBAL", "WARNING", "Finding",
           "classify", "contains_pickle", "looks_like_pickle", "normalise", "scan_bytes",
           "scan_file", "scan_npy", "scan_stream", "scan_tree"]
