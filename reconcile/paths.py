"""Relative paths from manifests, remote listings and archives, checked before they touch disk.

A path that a server, an archive or a models.toml hands us is data, not trust: it
must stay inside the directory it is joined to, whatever it contains.
"""

from __future__ import annotations

import os
import re

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MAX_COMPONENT = 255  # bytes; the limit of every common file system
# Directories whose contents tools execute when a shell prompt, an IDE or `git status`
# merely looks at the folder: git's config (core.fsmonitor, hooks), Mercurial's hgrc
# ([extensions], [hooks]). Compared without case and trailing dots or spaces, as
# case-insensitive and Windows file systems would name them; GIT~1 is .git's 8.3 name.
_EXECUTED_FROM = frozenset({".git", ".hg", "git~1"})


def check_relpath(p: str) -> str:
    """Validate a relative path from a manifest, listing or archive; return it normalised.

    Such a path is data an attacker may control (an HF tree entry, an S3 key, a
    zip member), yet it is joined to a directory we write into, and
    ``os.path.join(dest, "/etc/x")`` discards ``dest``. So it must be relative
    with ``/`` separators and no ``.``/``..`` component; backslashes, drive
    letters (``C:``), NUL and control characters are refused because they mean
    a different path on another OS or to another tool, and ``.git``/``.hg``
    components because a model tree holding one would be a live repository.
    Empty components are dropped (``a//b/`` → ``a/b``), which is the only
    normalisation: the result joined to any base stays strictly inside that base.

    Raises ``ValueError`` whose message names the path and the reason.
    """
    if not isinstance(p, str):
        raise ValueError(f"path must be a string, got {type(p).__name__}")
    if p == "":
        raise ValueError("empty path")
    if "\0" in p:
        raise ValueError(f"{p!r}: contains a NUL byte")
    if _CONTROL.search(p):
        raise ValueError(f"{p!r}: contains a control character")
    if "\\" in p:
        raise ValueError(f"{p!r}: contains a backslash; use '/' as the separator")
    if p.startswith("/"):
        raise ValueError(f"{p!r}: absolute path; it must be relative")
    if _DRIVE.match(p):
        raise ValueError(f"{p!r}: starts with a drive letter; it must be relative")
    parts = [c for c in p.split("/") if c]
    if not parts:
        raise ValueError(f"{p!r}: empty path")
    for c in parts:
        if c in (".", ".."):
            raise ValueError(f"{p!r}: '.' and '..' components are not allowed")
        if c.lower().rstrip(". ") in _EXECUTED_FROM:
            raise ValueError(f"{p!r}: a {c!r} component is not allowed (git and Mercurial run"
                             " commands from such a directory when a prompt or IDE looks at"
                             " the folder)")
        try:
            size = len(os.fsencode(c))
        except UnicodeError:
            raise ValueError(f"{p!r}: cannot be encoded as a file name") from None
        if size > _MAX_COMPONENT:
            raise ValueError(f"{p!r}: a component is longer than {_MAX_COMPONENT} bytes")
    return "/".join(parts)


_LMS_FORBIDDEN = re.compile(r'[/<>:"\\|?*\x00-\x1f\x7f]')


def check_folder_name(name: object) -> str | None:
    """None when ``name`` is one folder name as LM Studio's `lms import` accepts it
    (``importCmd.ts``: non-empty, at most 100 characters, no leading or trailing ``.``
    or space, none of ``/ < > : " \\ | ? *``; control characters too), else why not.
    It never is ``.`` or ``..``, so it stays one level below the folder it is joined to."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name or len(name) > 100:
        return f"{name!r}: 1 to 100 characters"
    if name[0] in ". " or name[-1] in ". ":
        return f"{name!r}: starts or ends with '.' or a space"
    if bad := _LMS_FORBIDDEN.search(name):
        return f"{name!r}: {bad.group()!r} is not allowed in a folder name"
    if name.lower().rstrip(". ") in _EXECUTED_FROM:
        return f"{name!r}: not allowed (git and Mercurial run commands from such a folder)"
    return None
