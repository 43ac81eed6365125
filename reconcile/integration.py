"""The seed's integration helpers: cache names, link scripts, model paths."""

from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path
from typing import Any

from .targets.hf_cache import mk_cache_name as _mk_cache_name


def mk_cache_name(spec: dict[str, str] | None = None, *, org: str | None = None,
                  model: str | None = None, repo_type: str = "model") -> str:
    """``mk_cache_name({"org": "meta-llama", "model": "Llama-2-7b-hf"})`` → models--meta-llama--Llama-2-7b-hf."""
    spec = dict(spec or {})
    org = spec.get("org", org)
    model = spec.get("model", model)
    if not model:
        raise ValueError("mk_cache_name needs a model name")
    return _mk_cache_name(org, model, spec.get("repo_type", repo_type))


def get_model_path(model: Any) -> Path:
    """The snapshot directory of a fetched model (the seed's getModelPath)."""
    return Path(model.path)


def mk_link_script(model: Any, cache_dir: str = "$HOME/.cache/huggingface/hub") -> str:
    """A POSIX shell script that links a fetched model into another HF cache.

    ``cache_dir`` is a shell word of the caller's (``$HOME`` expands); everything that
    comes from the lock is quoted. It reproduces the layout reconcile writes (relative snapshot links to blobs that
    are hard links, or symlinks across filesystems, to the store) for machines or
    containers that see the store but run no Python.
    """
    from .lockfile import check_model

    locked = model.locked
    if locked.hf is None:
        raise ValueError(f"model {locked.key} has HF integration disabled")
    check_model(locked)  # every word below comes from the lock: checked, then quoted
    commit = shlex.quote(locked.hf.commit)
    repo = f'"{cache_dir}"/{shlex.quote(locked.hf.folder)}'
    store_tree = shlex.quote(str(model.store_path))
    lines = ["#!/bin/sh", "set -eu", f"repo={repo}", f"src={store_tree}",
             f"snap=\"$repo/snapshots/\"{commit}",
             'mkdir -p "$repo/blobs" "$repo/refs" "$snap"']
    for f in locked.files:
        q = shlex.quote(f.path)
        if f.type == "d":
            lines.append(f'mkdir -p "$snap"/{q}')
            continue
        if "/" in f.path:
            lines.append(f'mkdir -p "$(dirname "$snap"/{q})"')
        if f.type == "l":
            lines.append(f'ln -sfn {shlex.quote(f.target or "")} "$snap"/{q}')
            continue
        blob = shlex.quote(f.blob_name)
        rel = "../" * (f.path.count("/") + 2) + f"blobs/{f.blob_name}"
        lines.append(f'[ -e "$repo/blobs/"{blob} ] || ln "$src"/{q} "$repo/blobs/"{blob}'
                     f' 2>/dev/null || ln -s "$src"/{q} "$repo/blobs/"{blob}')
        lines.append(f'ln -sfn {shlex.quote(rel)} "$snap"/{q}')
    for ref in locked.hf.refs:
        q = shlex.quote(ref)
        lines.append(f'mkdir -p "$(dirname "$repo/refs/"{q})"')
        lines.append(f'printf %s {commit} > "$repo/refs/"{q}')
    return "\n".join(lines) + "\n"


def default_manifest_text() -> str:
    return resources.files("reconcile").joinpath("default_models.toml").read_text("utf-8")


def starter_manifest_text() -> str:
    """What `reconcile init` writes into the user's project: no models (a fake one
    would land in their HF cache), and a `#:schema` line editors can follow from any
    directory: the schema's own URL, not a path only reconcile's repository has."""
    from .schema import models_schema

    text = resources.files("reconcile").joinpath("starter_models.toml").read_text("utf-8")
    return f"#:schema {models_schema()['$id']}\n{text}"
