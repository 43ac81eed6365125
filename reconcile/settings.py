"""Every environment variable reconcile reads, with its default, in one place.

Values are read when a function is called, not at import, so tests and long-lived
processes that change the environment see the change (unlike huggingface_hub, which
freezes HF_HUB_OFFLINE at import time).
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_ENDPOINT = "https://huggingface.co"


def _env(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def _expand(path: str) -> Path:
    return Path(os.path.expandvars(os.path.expanduser(path)))


def store_dir() -> Path:
    """RECONCILE_STORE, else $XDG_DATA_HOME/reconcile, else ~/.local/share/reconcile."""
    if explicit := _env("RECONCILE_STORE"):
        return _expand(explicit)
    data_home = _env("XDG_DATA_HOME") or "~/.local/share"
    return _expand(data_home) / "reconcile"


def hf_home() -> Path:
    """HF_HOME, else $XDG_CACHE_HOME/huggingface, else ~/.cache/huggingface (as huggingface_hub)."""
    if explicit := _env("HF_HOME"):
        return _expand(explicit)
    cache_home = _env("XDG_CACHE_HOME") or "~/.cache"
    return _expand(cache_home) / "huggingface"


def hf_hub_cache() -> Path:
    """HF_HUB_CACHE, else the legacy HUGGINGFACE_HUB_CACHE, else $HF_HOME/hub."""
    explicit = _env("HF_HUB_CACHE") or _env("HUGGINGFACE_HUB_CACHE")
    return _expand(explicit) if explicit else hf_home() / "hub"


def hf_endpoint() -> str:
    return (_env("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hf_token_file() -> Path:
    return _expand(_env("HF_TOKEN_PATH") or str(hf_home() / "token"))


def hf_token_env() -> str | None:
    return _env("HF_TOKEN") or _env("HUGGING_FACE_HUB_TOKEN")


def offline() -> bool:
    """RECONCILE_OFFLINE or HF_HUB_OFFLINE set to 1/on/yes/true."""
    for name in ("RECONCILE_OFFLINE", "HF_HUB_OFFLINE"):
        if (os.environ.get(name) or "").strip().lower() in {"1", "on", "yes", "true"}:
            return True
    return False


def validation_preset() -> str | None:
    return _env("RECONCILE_VALIDATION")


def env_value(name: str) -> str | None:
    """A user-named variable (auth.tokenEnvVar): the one sanctioned dynamic read."""
    return _env(name)


def direct_min() -> int | None:
    """RECONCILE_DIRECT_MIN: transfers at least this many bytes use the http.client fast path."""
    value = _env("RECONCILE_DIRECT_MIN")
    return int(value) if value and value.isdigit() else None


def max_unknown_size() -> int:
    """RECONCILE_MAX_UNKNOWN_SIZE ('200G', '500M', bytes): the most one download whose
    size nobody stated beforehand (a bare URL with no Content-Length, an MLflow artifact
    listed without its size) may bring, and what one archive may unpack to; default
    DEFAULT_MAX_UNKNOWN_SIZE. The disk's free space caps both as well (fsutil.room)."""
    from .errors import ConfigError
    from .units import parse_size

    value = _env("RECONCILE_MAX_UNKNOWN_SIZE")
    if value is None:
        return DEFAULT_MAX_UNKNOWN_SIZE
    try:
        return parse_size(value, "RECONCILE_MAX_UNKNOWN_SIZE")
    except ValueError as e:
        raise ConfigError(str(e), hint="e.g. RECONCILE_MAX_UNKNOWN_SIZE=500G") from None


# big enough for any one file of today's largest open models (single GGUF files of
# ~200 GB are rare; shards are ~5-50 GB), small enough that a runaway body stops
DEFAULT_MAX_UNKNOWN_SIZE = 256 << 30


def ca_file() -> str | None:
    """A CA bundle that replaces the default one: SSL_CERT_FILE (OpenSSL's), else
    REQUESTS_CA_BUNDLE or CURL_CA_BUNDLE (what requests and curl users already set)."""
    value = _env("SSL_CERT_FILE") or _env("REQUESTS_CA_BUNDLE") or _env("CURL_CA_BUNDLE")
    return str(_expand(value)) if value else None


def ca_dir() -> str | None:
    """SSL_CERT_DIR: a directory of hashed CA certificates (OpenSSL's c_rehash layout)."""
    value = _env("SSL_CERT_DIR")
    return str(_expand(value)) if value else None


def parallel_min() -> int | None:
    """RECONCILE_PARALLEL_MIN: files at least this many bytes are fetched as parallel
    ranges from the start (default: transfer.PARALLEL_THRESHOLD)."""
    value = _env("RECONCILE_PARALLEL_MIN")
    return int(value) if value and value.isdigit() else None


def peer_stores() -> list[Path]:
    """RECONCILE_PEER_STORES: other stores on this machine (os.pathsep-separated) whose
    objects are copied instead of downloaded; `--user` sets it to the system store."""
    value = _env("RECONCILE_PEER_STORES")
    return [_expand(p) for p in value.split(os.pathsep) if p] if value else []


def cache_url() -> str | None:
    """RECONCILE_CACHE: the team cache's URL, over models.toml's [cache] url ("off": none)."""
    return _env("RECONCILE_CACHE")
