"""The built-in validators: small functions over a model tree, each returning findings.

A check gets the tree's root (read-only) and its argument, and returns a list of
human-readable findings; an empty list is a pass. Content is sniffed, never
trusted from names: a pickle called ``model.safetensors`` is still a pickle.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Check = Callable[[Path, Any], list[str]]

# extensions of weight formats other than safetensors (what safetensorsOnly refuses)
UNSAFE_WEIGHT_EXT = {
    ".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle", ".joblib", ".npy", ".npz", ".h5",
    ".hdf5", ".keras", ".msgpack", ".mar", ".pb", ".dill",
}
LICENSE_NAMES = ("license", "licence", "copying", "notice")


def walk(root: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """(relative path, entry) for everything under root; symlinks are not followed."""
    stack = [("", os.fspath(root))]
    while stack:
        rel, path = stack.pop()
        with os.scandir(path) as it:
            for de in sorted(it, key=lambda d: d.name):
                r = f"{rel}/{de.name}" if rel else de.name
                yield r, de
                if de.is_dir(follow_symlinks=False):
                    stack.append((r, de.path))


def files(root: Path) -> Iterator[tuple[str, str]]:
    for rel, de in walk(root):
        if de.is_file(follow_symlinks=False):
            yield rel, de.path


def _sniff(path: str) -> str:
    from .kinds import sniff

    return sniff(Path(path))


def no_pickle_files(root: Path, _arg: Any = None) -> list[str]:
    out = []
    for rel, path in files(root):
        kind = _sniff(path)
        if kind == "pickle" or Path(rel).suffix.lower() in (".pkl", ".pickle", ".dill"):
            out.append(f"{rel}: is a pickle ({kind})")
        elif kind in ("zip", "numpy", "compressed"):
            from .pickle_scan import contains_pickle

            if contains_pickle(Path(path)):
                out.append(f"{rel}: {kind} container holding pickled data")
    return out


def safetensors_only(root: Path, _arg: Any = None) -> list[str]:
    from .formats import check_safetensors

    out = []
    for rel, path in files(root):
        kind = _sniff(path)
        ext = Path(rel).suffix.lower()
        if kind == "safetensors" or ext == ".safetensors":
            out.extend(f"{rel}: {p}" for p in check_safetensors(Path(path)))
        elif kind in ("pickle", "zip", "numpy", "gguf", "compressed") or ext in UNSAFE_WEIGHT_EXT:
            out.append(f"{rel}: weights in a format other than safetensors ({kind or ext})")
    return out


def max_size(root: Path, limit: Any) -> list[str]:
    from ..units import parse_size

    cap = parse_size(limit)
    total = sum(os.lstat(p).st_size for _, p in files(root))
    return [f"model is {total} bytes, over the limit of {limit} ({cap} bytes)"] if total > cap else []


def required_files(root: Path, patterns: Any) -> list[str]:
    present = [rel for rel, _ in walk(root)]
    return [f"required file missing: {pat}" for pat in _as_list(patterns)
            if not any(fnmatch.fnmatchcase(p, pat) for p in present)]


def no_symlinks(root: Path, _arg: Any = None) -> list[str]:
    return [f"{rel}: is a symlink to {os.readlink(de.path)}" for rel, de in walk(root)
            if de.is_symlink()]


def file_types(root: Path, extensions: Any) -> list[str]:
    allowed = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in _as_list(extensions)}
    return [f"{rel}: extension {Path(rel).suffix or '(none)'} not in {sorted(allowed)}"
            for rel, _ in files(root)
            if Path(rel).suffix.lower() not in allowed and Path(rel).name.lower() not in allowed]


def valid_config_json(root: Path, _arg: Any = None) -> list[str]:
    out = []
    for rel, path in files(root):
        if not rel.endswith(".json"):
            continue
        try:
            with open(path, "rb") as f:
                doc = json.load(f)
        except (ValueError, UnicodeDecodeError) as e:
            out.append(f"{rel}: not valid JSON ({e})")
            continue
        if Path(rel).name == "config.json" and not isinstance(doc, dict):
            out.append(f"{rel}: must be a JSON object")
    return out


# what a file's name promises → the kinds sniff() may find in it
NAMED_FORMATS: dict[str, tuple[str, ...]] = {
    ".safetensors": ("safetensors",),
    ".gguf": ("gguf",),
    ".pt": ("zip", "pickle"), ".pth": ("zip", "pickle"), ".ckpt": ("zip", "pickle"),
    ".pkl": ("pickle", "compressed"), ".pickle": ("pickle", "compressed"),
    ".npy": ("numpy",), ".npz": ("zip",), ".zip": ("zip",),
}
_HTML_HEADS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")


def valid_formats(root: Path, _arg: Any = None) -> list[str]:
    """A file whose name says a format is that format (headers only, no weights read).

    The usual cause is not an attack but a download that went wrong: a login or error
    page saved as ``model.safetensors``, which transformers would then fail on far from
    here. JSON files are validConfigJson's.
    """
    out = []
    for rel, path in files(root):
        name = Path(rel).name.lower()
        ext = Path(name).suffix
        if name.startswith("pytorch_model") and ext == ".bin":
            want: tuple[str, ...] = ("zip", "pickle")
        else:
            want = NAMED_FORMATS.get(ext, ())
        if ext in (".html", ".htm", ".xml", ".svg", ".md", ".txt"):
            continue
        with open(path, "rb") as f:
            head = f.read(512).lstrip().lower()
        if head.startswith(_HTML_HEADS) and ext not in (".json", ""):
            out.append(f"{rel}: is an HTML page, not a {ext or 'model'} file (a login or error"
                       " page saved in its place?)")
        elif want and _sniff(path) not in want:
            out.append(f"{rel}: is not a {' or '.join(want)} file, as its name says")
    return out


def no_python_code(root: Path, _arg: Any = None) -> list[str]:
    out = [f"{rel}: Python code (would run with trust_remote_code)" for rel, _ in files(root)
           if rel.endswith((".py", ".pyc", ".pyw"))]
    for rel, path in files(root):
        if Path(rel).name in ("config.json", "tokenizer_config.json"):
            try:
                with open(path, "rb") as f:
                    doc = json.load(f)
            except ValueError:
                continue
            if isinstance(doc, dict) and "auto_map" in doc:
                out.append(f"{rel}: auto_map asks for remote code ({sorted(doc['auto_map'])})")
    return out


def license_check(root: Path, _arg: Any = None) -> list[str]:
    for rel, path in files(root):
        name = Path(rel).name.lower()
        if name.startswith(LICENSE_NAMES):
            return []
        if name == "readme.md":
            with open(path, encoding="utf-8", errors="replace") as f:
                head = f.read(8192)
            if head.startswith("---") and "\nlicense:" in head.split("\n---", 1)[0]:
                return []
    return ["no LICENSE/COPYING file and no `license:` in README.md front matter"]


def modelscan(root: Path, arg: Any = None) -> list[str]:
    """Our pickle/zip/numpy scanner, safetensors and GGUF header checks, chat templates,
    ONNX external-data paths, Keras configs.

    By default critical findings (code execution), globals outside the allow-list and
    unparseable data all fail. ``"lenient"`` fails only on critical ones (for models
    that legitimately pickle e.g. sklearn classes); ``"strict"`` (the paranoid preset)
    also fails on warnings such as TorchScript source.
    """
    from . import chat_template
    from .formats import check_gguf, check_safetensors
    from .keras_check import check_keras_h5, check_keras_zip
    from .kinds import sniff
    from .onnx_check import check_onnx
    from .pickle_scan import scan_file

    counted = {"lenient": {"critical"}, "strict": {"critical", "unknown", "error", "warning"}}.get(
        arg, {"critical", "unknown", "error"})
    out = []
    for rel, path in files(root):
        out.extend(chat_template.check_file(Path(path), rel))
        if rel.lower().endswith(".onnx"):
            out.extend(check_onnx(Path(path), rel, root))
        elif rel.lower().endswith((".h5", ".hdf5", ".keras")):
            out.extend(check_keras_h5(Path(path), rel))
        kind = sniff(Path(path))
        if kind == "safetensors":
            out.extend(f"{rel}: {p}" for p in check_safetensors(Path(path)))
        elif kind == "gguf":
            out.extend(f"{rel}: {p}" for p in check_gguf(Path(path), deep=True))
        elif kind in ("pickle", "zip", "numpy", "compressed", "tar"):
            out.extend(str(f) for f in scan_file(Path(path), rel) if f.severity in counted)
            if kind == "zip":
                out.extend(check_keras_zip(Path(path), rel))
    return out


def _as_list(v: Any) -> list[str]:
    return [v] if isinstance(v, str) else list(v or [])


BUILTINS: dict[str, tuple[Check, str, bool]] = {
    # name: (check, description, takes an argument)
    "noPickleFiles": (no_pickle_files, "no pickle files or pickles inside containers", False),
    "safetensorsOnly": (safetensors_only, "weights only as valid safetensors", False),
    "maxSize": (max_size, "total size under a limit", True),
    "requiredFiles": (required_files, "listed files (globs) are present", True),
    "noSymlinks": (no_symlinks, "no symlinks in the tree", False),
    "fileTypes": (file_types, "only the listed extensions", True),
    "modelscan": (modelscan, "static scan for code execution in pickles; header checks", False),
    "validConfigJson": (valid_config_json, "every .json parses; config.json is an object", False),
    "validFormats": (valid_formats, "files named as a weight format are that format", False),
    "noPythonCode": (no_python_code, "no .py files and no auto_map remote code", False),
    "licenseCheck": (license_check, "a licence is present", False),
}


def split_ref(item: Any) -> tuple[str, Any]:
    """'name', 'name:arg' or { name = arg } → (name, arg); ValueError for a table that
    does not have exactly one key. The one reading of a validator reference, for
    models.toml's checker and the runner alike."""
    if isinstance(item, dict):
        if len(item) != 1:
            raise ValueError(f"a validator table has exactly one key, got {list(item)}")
        ((name, arg),) = item.items()
        return name, arg
    name, _, text = str(item).partition(":")
    if not text:
        return name, None
    return name, text.split(",") if name in ("requiredFiles", "fileTypes") else text


def check_arg(name: str, arg: Any) -> str | None:
    """What is wrong with a built-in's argument (None: nothing), checked when models.toml
    is read so that a bad one stops apply before anything is fetched."""
    _check, _desc, takes_arg = BUILTINS[name]
    if not takes_arg:
        if name == "modelscan":
            return None if arg in (None, "lenient", "strict") else (
                f"the argument is 'lenient' or 'strict', got {arg!r}")
        return None if arg in (None, True) else "takes no argument"
    if arg is None:
        return f"needs an argument, e.g. {{ {name} = … }}"
    if name == "maxSize":
        from ..units import parse_size

        try:
            parse_size(arg, name)
        except ValueError as e:
            return str(e).split(": ", 1)[1]
        return None
    ok = isinstance(arg, str) or (isinstance(arg, list) and all(isinstance(x, str) for x in arg))
    return None if ok and arg else "expected a string or a list of strings"
