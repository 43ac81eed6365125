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

# The one registry: source type -> (module, the argument its factory takes first).
# Adding a source is its module plus one line here; models.toml's checker, the JSON
# Schema, the factories (mk_<type>) and __all__ follow. A line whose module does not
# exist yet is a planned source: models.toml naming it is told so, not "unknown".
# Modules are imported lazily, so `lock --check` never pays for httpx.
SOURCES: dict[str, tuple[str, str]] = {
    "mock": ("reconcile.sources.mock", "model"),
    "url": ("reconcile.sources.url", "url"),
    "huggingface": ("reconcile.sources.huggingface", "repo"),
    "s3": ("reconcile.sources.s3", "prefix"),  # mk_s3(bucket=…)("models/llama/")
    "mlflow": ("reconcile.sources.mlflow", "name"),
    "git-lfs": ("reconcile.sources.git_lfs", "repo"),
    "git-xet": ("reconcile.sources.git_xet", "url"),
    "ollama": ("reconcile.sources.ollama", "model"),
    "oci": ("reconcile.sources.oci", "ref"),
}
# the seed's factory names where they are not mk_<type>
_FACTORY_NAMES = {"huggingface": "mk_hugging_face"}


class _Registry:
    def names(self) -> list[str]:
        """Source types this version can use."""
        return [n for n in SOURCES if self.get(n) is not None]

    def planned(self) -> list[str]:
        """Source types that are declared but not shipped in this version."""
        return [n for n in SOURCES if self.get(n) is None]

    def get(self, name: str) -> type[Source] | None:
        entry = SOURCES.get(name)
        if entry is None:
            return None
        try:
            return importlib.import_module(entry[0]).SOURCE
        except ModuleNotFoundError as e:
            if e.name == entry[0]:
                return None
            raise


registry = _Registry()


def _camel(name: str) -> str:
    """Python's keyword (base_url) as models.toml spells the option (baseUrl)."""
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _factory(stype: str, key: str) -> Callable[..., Callable[..., dict[str, Any]]]:
    """The seed's mk<Source>: shared defaults in, a function that builds a source table.
    Keywords may be Python's snake_case (``base_url=``) or the option's own name."""

    def make(**defaults: Any) -> Callable[..., dict[str, Any]]:
        defaults = {k if k == "default_auth" else _camel(k): v for k, v in defaults.items()}
        extra = {}
        if "default_auth" in defaults:
            extra["auth"] = defaults.pop("default_auth")

        def source(arg: str | dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
            opts = dict(defaults)
            if isinstance(arg, dict):
                opts.update(arg)
            elif arg is not None:
                opts[key] = arg
            opts.update({_camel(k): v for k, v in kw.items()})
            out: dict[str, Any] = {stype: opts}
            if extra:
                out["_defaults"] = extra
            return out

        return source

    make.__name__ = make.__qualname__ = _FACTORY_NAMES.get(stype, "mk_" + stype.replace("-", "_"))
    make.__doc__ = f"The seed's factory for `source.{stype}` (first argument: {key})."
    return make


def make_factories(sources: dict[str, tuple[str, str]]) -> dict[str, Callable[..., Any]]:
    """mk_<type> for every registered source (the seed's names where they differ)."""
    return {_FACTORY_NAMES.get(t, "mk_" + t.replace("-", "_")): _factory(t, key)
            for t, (_module, key) in sources.items()}


_factories = make_factories(SOURCES)
globals().update(_factories)

__all__ = ["HFIdentity", "RemoteFile", "Resolution", "Source", "Transient", "registry",
           *sorted(_factories)]
