"""reconcile: declare models once, pin them exactly, fetch fast, check for danger.

The Python API is the library the CLI uses::

    import reconcile
    m = reconcile.fetch_model({"name": "bert", "source": {"huggingface": {"repo": "org/bert"}}})
    m.path            # the HF snapshot directory
    m.meta            # {"org", "model", "sourceType", "repo", "revision"}
    m.hf_cache_path   # "models--org--bert"

``instantiate(defs)`` does the same for a dict of definitions; ``models.test.empty``
and ``models.test.minimal`` are the seed's predefined models (``model_defs`` holds
their definitions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from . import errors, sourcetypes
from .errors import ReconcileError

__all__ = [
    "FetchedModel",
    "ReconcileError",
    "edit",
    "errors",
    "fetch_model",
    "instantiate",
    "integration",
    "model_defs",
    "models",
    "modes",
    "remote",
    "signing",
    "sources",
    "validation",
]
__version__ = "0.1.0"


def _source_registry() -> Any:
    """The registry of source types, imported when models.toml is first read."""
    from .sources import registry

    return registry


# config.py asks sourcetypes, not the sources (which import the network code, which
# reads config): this package, run before any of its modules, says where they are
sourcetypes.provide(_source_registry)


@dataclass
class FetchedModel:
    """What fetch_model returns: the seed's derivation with its passthru attributes."""

    key: str
    locked: Any
    store_path: Path  # the validated tree in the store (`raw` before validation is the same bytes)
    path: Path  # where its own tool loads it (Workspace.model_path): a snapshot, a directory …
    meta: dict[str, Any] = field(default_factory=dict)
    hf_cache_path: str | None = None

    @property
    def raw(self) -> Path:
        return self.store_path

    @property
    def hash(self) -> str:
        return self.locked.hash

    def __fspath__(self) -> str:
        return str(self.path)


def _normalise(key: str, config: dict[str, Any]) -> dict[str, Any]:
    """Accept the seed's shapes: factories' `_defaults`, `validation.validators` objects."""
    config = dict(config)
    source = dict(config.get("source", {}))
    defaults = source.pop("_defaults", {})
    config["source"] = source
    if "auth" in defaults:
        config["auth"] = {**defaults["auth"], **config.get("auth", {})}
    config.setdefault("name", key)
    return config


def instantiate(defs: dict[str, dict[str, Any]], *, store: Any = None, cache: Path | None = None,
                jobs: int = 4) -> dict[str, FetchedModel]:
    """Fetch, validate and link every definition; returns key -> FetchedModel."""
    from .apply import failure_message
    from .config import manifest_from_dict
    from .lockfile import dumps
    from .resolve import lock_models
    from .validation.runner import Validator
    from .workspace import Workspace

    doc: dict[str, Any] = {"models": {}, "validators": {}}
    for key, cfg in defs.items():
        cfg = _normalise(key, cfg)
        vals = cfg.get("validation", {}).get("validators", [])
        if any(isinstance(v, Validator) for v in vals):  # mk_validator objects from Python
            names = []
            for v in vals:
                if isinstance(v, Validator) and v.command is not None:
                    doc["validators"][v.name] = {"command": v.command, "timeout": v.timeout,
                                                 "onFailure": v.on_failure,
                                                 "buildInputs": list(v.build_inputs)}
                    names.append(v.name)
                elif isinstance(v, Validator):
                    names.append({v.name: v.arg} if v.arg is not None else v.name)
                else:
                    names.append(v)
            cfg["validation"] = {**cfg["validation"], "validators": names}
        doc["models"][key] = cfg
    manifest = manifest_from_dict(doc)
    with Workspace(Path("<python>"), manifest=manifest, store=store, cache=cache) as ws:
        ws.store.ensure()
        with ws.store.session():  # like apply: gc waits, and the models get a root of their own
            lock = lock_models(manifest, None, ws.store, jobs=jobs).lock
            ws.store.add_api_root(dumps(lock))
            report = ws.apply_lock(lock, jobs=jobs)
    if not report.ok:
        raise ReconcileError(failure_message(report))
    out = {}
    for key, m in lock.models.items():
        decl = manifest.models[key]
        store_path = ws.store.model_path(m)
        org, _, name = (m.hf.repo_id.rpartition("/") if m.hf else ("", "", m.name))
        src = decl.source
        out[key] = FetchedModel(
            key=key,
            locked=m,
            store_path=store_path,
            path=ws.model_path(m),
            meta={"org": org or None, "model": name, "sourceType": decl.source_type,
                  "repo": src.get("repo", m.hf.repo_id if m.hf else None),
                  "revision": src.get("revision", "main")},
            hf_cache_path=m.hf.folder if m.hf else None,
        )
    return out


def fetch_model(config: dict[str, Any], **kw: Any) -> FetchedModel:
    """The seed's fetchModel: one model definition in, a fetched, validated model out."""
    key = str(config.get("name", "model"))
    return instantiate({key: config}, **kw)[key]


model_defs = SimpleNamespace(test=SimpleNamespace(
    empty={"name": "test-empty", "source": {"mock": {"org": "test", "model": "empty",
                                                       "files": []}}},
    minimal={"name": "test-minimal", "source": {"mock": {
        "org": "test", "model": "minimal",
        "files": ["config.json", "model.safetensors", "README.md"]}}},
))


class _Models:
    """``models.test.minimal`` fetches lazily on first access, like a Nix attribute."""

    class _Test:
        @property
        def empty(self) -> FetchedModel:
            return fetch_model(model_defs.test.empty)

        @property
        def minimal(self) -> FetchedModel:
            return fetch_model(model_defs.test.minimal)

    test = _Test()


models = _Models()


def __getattr__(name: str) -> Any:  # lazy submodules keep `import reconcile` fast
    if name in ("sources", "validation", "integration", "edit", "signing", "remote", "modes"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(name)
