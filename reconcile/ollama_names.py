"""ollama's model names, as ``types/model/name.go`` reads them: ``[host/][namespace/]model[:tag]``
with the defaults registry.ollama.ai, library and latest, each part 1-80 letters, digits,
``_ . -``. Pure and light: models.toml's checks (config), source.ollama and the ollama
target all read names here, so a name is valid in one place iff it is in the others.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .errors import ConfigError

DEFAULT_REGISTRY = "https://registry.ollama.ai"
PART = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}$")
HOST = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,349}(:[0-9]{1,5})?$")


def parse_name(model: str, tag: str | None, registry: str | None) -> dict[str, str]:
    """{registry, namespace, model, tag} as ollama reads a name; ValueError('key: why')."""
    name = model.strip()
    if "://" in name:
        raise ValueError(f"model: {model!r}: give the registry as registry = \"…\", not in"
                         " the name")
    slash = name.rfind("/")
    colon = name.rfind(":")
    inline_tag = None
    if colon > slash:
        name, inline_tag = name[:colon], name[colon + 1:]
    if inline_tag is not None and tag is not None and inline_tag != tag:
        raise ValueError(f"tag: {tag!r} disagrees with the tag in model ({inline_tag!r})")
    parts = name.split("/")
    if len(parts) > 3 or not all(parts):
        raise ValueError(f"model: {model!r} is not [host/][namespace/]model[:tag]")
    host = parts[0] if len(parts) == 3 else None
    namespace = parts[-2] if len(parts) >= 2 else "library"
    base = registry or (f"https://{host}" if host else DEFAULT_REGISTRY)
    if registry and host and urlsplit(registry).netloc.lower() != host.lower():
        raise ValueError(f"registry: {registry!r} disagrees with the host in model ({host!r})")
    ep = urlsplit(base)
    if ep.scheme not in ("http", "https") or not ep.netloc or ep.path.strip("/") or ep.query \
            or ep.username or ep.password:
        raise ValueError(f"registry: {registry!r} is not a registry URL such as"
                         " 'https://registry.ollama.ai' (http:// only for a local registry)")
    out = {"registry": f"{ep.scheme}://{ep.netloc}", "namespace": namespace,
           "model": parts[-1], "tag": inline_tag or tag or "latest"}
    if not HOST.match(ep.netloc):
        raise ValueError(f"registry: {ep.netloc!r} is not a host[:port]")
    for key in ("namespace", "model", "tag"):
        if not PART.match(out[key]) or (key == "namespace" and "." in out[key]):
            raise ValueError(f"{'tag' if key == 'tag' else 'model'}: {out[key]!r} is not a valid"
                             f" ollama {key} (1-80 letters, digits, '_', '.', '-')")
    return out


def ollama_name(name: str) -> str:
    """``<host>/<namespace>/<model>/<tag>`` for a name as ``ollama run`` takes it
    (``types/model/name.go`` defaults: registry.ollama.ai, library, latest), the
    form models.lock's ``ollama`` key and ollama's manifests/ directory use."""
    if not isinstance(name, str):
        raise ConfigError(f"expected a model name, got {type(name).__name__}", key="ollama.name")
    try:
        parts = parse_name(name, None, None)
    except ValueError as e:
        key, _, why = str(e).partition(": ")
        raise ConfigError(why, key="ollama.name" if key == "model" else f"ollama.{key}",
                          hint="a name such as 'my-model:q4' or 'team/my-model:latest'"
                          ) from None
    host = parts["registry"].split("://", 1)[1]
    return f"{host}/{parts['namespace']}/{parts['model']}/{parts['tag']}"
