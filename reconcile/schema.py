"""JSON Schemas for models.toml and models.lock, generated from the specs config.py checks.

Editors (taplo, VS Code's Even Better TOML) use them through ``#:schema``. Regenerate
with ``python -m reconcile.schema``; a test fails when schemas/ is out of date.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .config import (
    AUTH_SPEC,
    CACHE_SPEC,
    ENV_NAME_RE,
    HOST_RE,
    MODEL_SPEC,
    NAME_RE,
    NETWORK_SPEC,
    SRI_RE,
    VALIDATOR_SPEC,
)

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"


# a ref: git's ref-name rules, as lockfile.check_ref applies them
REF_PATTERN = (r"^(?!@$)(?![/.])(?!.*(\.\.|@\{|//|/\.|\.lock/|\.lock$|/$|\.$))"
               r"[^\x00-\x20\x7f~^:?*\[\\]+$")


def _type(spec: Any) -> dict[str, Any]:
    if isinstance(spec, dict):
        return {"type": "object", "additionalProperties": False,
                "properties": {k: _type(v) for k, v in spec.items()}}
    if isinstance(spec, list):
        return {"oneOf": [_type(alt) for alt in spec]}
    simple = {
        "str": {"type": "string"},
        "bool": {"type": "boolean"},
        "int": {"type": "integer", "minimum": 0},
        "number": {"type": "number", "minimum": 0},
        "strlist": {"type": "array", "items": {"type": "string"}},
        "str|int": {"oneOf": [{"type": "string"}, {"type": "integer", "minimum": 0}]},
        "reflist": {"type": "array", "items": {"type": "string", "pattern": REF_PATTERN}},
        "hostlist": {"type": "array",
                     "items": {"type": "string", "pattern": f"^{HOST_RE.pattern}$"}},
        "envnames": {"type": "array",
                     "items": {"type": "string", "pattern": f"^{ENV_NAME_RE.pattern}$"}},
        "list": {"type": "array"},
        "any-table": {"type": "object"},
        "size": {"oneOf": [{"type": "integer", "minimum": 0},
                           {"type": "string", "pattern": r"^\s*\d+(\.\d+)?\s*([KMGTkmgt]i?[Bb]?|[Bb])?\s*$"}]},
        "name": {"type": "string", "pattern": NAME_RE.pattern},
        "sri": {"type": "string", "pattern": SRI_RE.pattern},
        "validator-list": {"type": "array", "items": {
            "oneOf": [{"type": "string"}, {"type": "object", "minProperties": 1,
                                           "maxProperties": 1}]}},
    }
    if spec in simple:
        return simple[spec]
    if spec.startswith("enum:"):
        return {"enum": spec[5:].split("|")}
    raise ValueError(spec)


def models_schema() -> dict[str, Any]:
    from .sources import registry

    sources = {}
    shared = {}
    for name in sorted(registry.names()):
        cls = registry.get(name)
        opts = {**cls.OPTIONS}
        sources[name] = _type({**opts, "use": "str"})
        if getattr(cls, "SHORTHAND", None):  # e.g. source.s3 = "s3://bucket/prefix/"
            sources[name] = {"oneOf": [sources[name], {"type": "string",
                                                       "pattern": cls.SHORTHAND}]}
        shared[name] = {"type": "object", "additionalProperties": _type(
            {**opts, "auth": AUTH_SPEC, "network": NETWORK_SPEC})}
    model = _type({k: v for k, v in MODEL_SPEC.items() if k != "source"})
    model["properties"]["source"] = {
        "type": "object", "minProperties": 1, "maxProperties": 1,
        "additionalProperties": False, "properties": sources,
    }
    model["required"] = ["source"]
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://reconcile.dev/schemas/models.schema.json",
        "title": "reconcile models.toml",
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "models": {"type": "object", "propertyNames": {"pattern": NAME_RE.pattern},
                       "additionalProperties": model},
            "sources": {"type": "object", "additionalProperties": False, "properties": shared},
            "validators": {"type": "object", "additionalProperties": {
                **_type(VALIDATOR_SPEC), "required": ["command"]}},
            "cache": {**_type(CACHE_SPEC), "required": ["url"]},
        },
    }


def lock_schema() -> dict[str, Any]:
    hex64 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
    hexid = {"type": "string", "pattern": "^([0-9a-f]{40}|[0-9a-f]{64})$"}
    file = {
        "type": "object", "additionalProperties": False, "required": ["path"],
        "properties": {
            "path": {"type": "string"}, "type": {"enum": ["f", "l", "d"]},
            "size": {"type": "integer", "minimum": 0}, "sha256": hex64,
            "executable": {"type": "boolean"}, "blob": hexid, "oid": hexid, "lfs": {"type": "boolean"}, "target": {"type": "string"},
            "pin": {"type": "object", "additionalProperties": {
                "type": ["string", "integer", "boolean"], "pattern": "^[\\x20-\\x7e]{1,1024}$"}},
        },
    }
    model = {
        "type": "object", "additionalProperties": False,
        "required": ["name", "source", "hash", "fingerprint", "pin", "files"],
        "properties": {
            "name": {"type": "string"}, "source": {"type": "string"},
            "hash": {"type": "string", "pattern": SRI_RE.pattern},
            "fingerprint": {"type": "string", "pattern": "^sha256:[0-9a-f]{64}$"},
            "pin": {"type": "object"},
            "hf": {"type": "object", "required": ["repo", "type", "commit", "refs"],
                   "properties": {"repo": {"type": "string"}, "type": {"enum": ["model", "dataset", "space"]},
                                  "commit": {"type": "string", "pattern": "^[0-9a-f]{40}$"},
                                  "refs": {"type": "array", "items": {"type": "string",
                                                                      "pattern": REF_PATTERN}},
                                  "claimRefs": {"type": "boolean"},
                                  "partial": {"type": "boolean"}}},
            "ollama": {"type": "string", "description": "<host>/<namespace>/<model>/<tag>:"
                       " where integration.ollama installs the model under manifests/"},
            "signedBy": {"type": "string", "pattern": "^(key|certificate):[\\x20-\\x7e]{1,1024}$",
                         "description": "who signed the model (models.toml's signature)"},
            "files": {"type": "array", "items": file},
        },
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://reconcile.dev/schemas/lock.schema.json",
        "title": "reconcile models.lock",
        "type": "object", "required": ["version"], "additionalProperties": False,
        "properties": {"version": {"const": 1},
                       "models": {"type": "object", "additionalProperties": model}},
    }


def render() -> dict[str, str]:
    return {
        "models.schema.json": json.dumps(models_schema(), indent=2) + "\n",
        "lock.schema.json": json.dumps(lock_schema(), indent=2) + "\n",
    }


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMA_DIR
    out.mkdir(exist_ok=True)
    for name, text in render().items():
        (out / name).write_text(text)
        print(f"wrote {out / name}")
