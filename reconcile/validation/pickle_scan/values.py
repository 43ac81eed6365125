"""The values the pickle VM pushes: globals, calls, sentinels for what it does not model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# --- values the simulation pushes --------------------------------------------------------


class _Sentinel:
    __slots__ = ("label",)

    def __init__(self, label: str) -> None:
        self.label = label

    def __repr__(self) -> str:
        return self.label


UNKNOWN = _Sentinel("?")  # anything not modelled: may well be a str at run time
LONGSTR = _Sentinel("<long str>")  # a str too long to keep
OTHER = _Sentinel("<object>")  # definitely not a str (bytes, float, set, buffer, ...)
TAINTED = _Sentinel("<flagged import>")  # the result of an import already reported


@dataclass(eq=False)
class Global:
    """The object an import opcode pushes (a function, class or module attribute)."""

    module: str
    name: str


@dataclass(eq=False)
class Call:
    """The result of calling something; ``state`` is what BUILD later gave it."""

    fn: Any
    args: Any
    state: Any = None


@dataclass(eq=False)
class _Persistent:
    pid: Any


# Constants that are certainly not a str (C's STACK_GLOBAL rejects them) nor callable.
_CONSTS = (type(None), bool, int, float, list, tuple, dict, str)


class _Malformed(Exception):
    """The C unpickler would stop here too (or we cannot follow the stream any further)."""


