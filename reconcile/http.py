"""HTTP plumbing shared by HTTP-based sources: one client setup, one streaming reader.

Sources keep their protocol's error vocabulary (``raise_for_status`` per source);
this module only turns transport trouble (resets, timeouts, 5xx, 429) into
``Transient`` so the generic retry loop in transfer.py handles every source alike.
httpx drops ``Authorization`` when a redirect leaves the origin (a CDN), which is
exactly the behaviour the Hub's 302s need.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .config import NetworkConfig
from .sources.base import Transient

USER_AGENT = "reconcile/0.1"
CHUNK = 1 << 20


def make_client(network: NetworkConfig, headers: dict[str, str] | None = None) -> Any:
    import httpx

    timeout = httpx.Timeout(connect=network.connect_timeout, read=network.read_timeout,
                            write=network.read_timeout, pool=network.read_timeout)
    return httpx.Client(
        timeout=timeout,
        follow_redirects=True,
        proxy=network.proxy,
        trust_env=True,  # HTTP(S)_PROXY / NO_PROXY like every other tool
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(headers or {})},
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
    )


def scrub_url(url: str) -> str:
    """A URL fit for messages: no userinfo, no query (signed URLs carry tokens there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        import time

        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return None


def transient_status(response: Any) -> Transient | None:
    if response.status_code == 429 or response.status_code >= 500:
        return Transient(
            f"{scrub_url(str(response.request.url))}: HTTP {response.status_code}",
            retry_after=retry_after(response.headers.get("Retry-After")),
        )
    return None


def stream(
    client: Any,
    url: str,
    *,
    start: int = 0,
    end: int | None = None,
    headers: dict[str, str] | None = None,
    raise_for_status: Callable[[Any], None],
    if_range: str | None = None,
) -> Iterator[bytes]:
    """Yield bytes [start, end) of ``url``; a server that ignores Range is handled."""
    import httpx

    h = dict(headers or {})
    if start or end is not None:
        h["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        if if_range:
            h["If-Range"] = if_range
    try:
        with client.stream("GET", url, headers=h) as r:
            if (t := transient_status(r)) is not None:
                raise t
            raise_for_status(r)
            skip = 0
            if start and r.status_code == 200:
                skip = start  # Range ignored (or If-Range failed): skip what we have
            remaining = None if end is None else end - start
            for chunk in r.iter_raw():
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk = chunk[skip:]
                    skip = 0
                if remaining is not None:
                    chunk = chunk[:remaining]
                    remaining -= len(chunk)
                yield chunk
                if remaining == 0:
                    return
    except httpx.TransportError as e:  # resets, timeouts, truncated bodies
        raise Transient(f"{scrub_url(url)}: {type(e).__name__}: {e}") from None
