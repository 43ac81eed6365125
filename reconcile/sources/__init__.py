"""Source registry and the seed's factories (``mk_hugging_face``, ``mk_s3`` …).

A factory returns a function that turns a short argument into a ``source`` table,
exactly what `source.<type> = {…}` would be in models.toml, so Python callers and
TOML users describe models with the same data.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from .base import HFIdentity, RemoteFile, Resolution, Source, Transient

__all__ = [
    "HFIdentity",
    "RemoteFile",
    "Resolution",
    "Source",
    "Transient",
    "mk_hugging_face",
    "mk_mock",
    "mk_url",
    "registry",
]

# type name -> module; imported lazily so `lock --check` never pays for httpx.
_MODULES = {
    "mock": "reconcile.sources.mock",
    "url": "reconcile.sources.url",
    "huggingface": "reconcile.sources.huggingface",
}


class _Registry:
    def names(self) -> list[str]:
        return [n for n in _MODULES if self.get(n) is not None]

    def get(self, name: str) -> type[Source] | None:
        module = _MODULES.get(name)
        if module is None:
            return None
        try:
            return importlib.import_module(module).SOURCE
        except ModuleNotFoundError as e:
            if e.name == module:
                return None
            raise


registry = _Registry()


def _factory(stype: str, key: str) -> Callable[..., Callable[..., dict[str, Any]]]:
    def make(**defaults: Any) -> Callable[..., dict[str, Any]]:
        extra = {}
        if "default_auth" in defaults:
            extra["auth"] = defaults.pop("default_auth")

        def source(arg: str | dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
            opts = dict(defaults)
            if isinstance(arg, dict):
                opts.update(arg)
            elif arg is not None:
                opts[key] = arg
            opts.update(kw)
            out: dict[str, Any] = {stype: opts}
            if extra:
                out["_defaults"] = extra
            return out

        return source

    return make


mk_hugging_face = _factory("huggingface", "repo")
mk_url = _factory("url", "url")
mk_mock = _factory("mock", "model")
