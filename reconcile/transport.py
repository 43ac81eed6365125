"""What every request of every source shares, whichever HTTP implementation carries it.

Two implementations move bytes (``http.py``): httpx for API calls and small bodies, and
``http.client`` straight into recycled buffers for big ones. Users must not be able to
tell them apart, so everything they decide is decided here, once:

* **TLS trust** (``ssl_context``): ``network.caBundle`` in models.toml adds a CA to the
  default bundle; ``SSL_CERT_FILE`` / ``REQUESTS_CA_BUNDLE`` / ``CURL_CA_BUNDLE`` and
  ``SSL_CERT_DIR`` replace it, as for curl, requests and OpenSSL. Verification is never
  turned off; an untrusted certificate is one error naming the host and the fix.
* **Proxies** (``proxy_for``): ``network.proxy``, else ``HTTPS_PROXY``/``HTTP_PROXY``
  with ``NO_PROXY``.
* **Redirects** (``redirect_headers``): credentials and signed headers never go to
  another origin.
* **Retrying** (``RetryPolicy``): which failures are transient, backoff with jitter,
  ``Retry-After``; used by every request a source makes.
"""

from __future__ import annotations

import functools
import random
import socket
import ssl
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from . import settings
from .errors import SourceError

T = TypeVar("T")

# headers that carry credentials or a signature: dropped when a redirect changes origin
SENSITIVE = frozenset({"authorization", "cookie", "proxy-authorization", "x-amz-security-token",
                       "x-amz-content-sha256", "x-amz-date", "x-ms-date", "x-goog-signature"})


def scrub_url(url: str) -> str:
    """A URL fit for messages: no userinfo, no query (signed URLs carry tokens there)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


# --- TLS ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _context(cafile: str | None, capath: str | None, extra: str | None) -> ssl.SSLContext:
    if cafile or capath:
        ctx = ssl.create_default_context(cafile=cafile, capath=capath)
    else:
        import certifi

        ctx = ssl.create_default_context(cafile=certifi.where())
    if extra:
        ctx.load_verify_locations(cafile=extra)
    return ctx


def ssl_context(ca_bundle: str | None = None) -> ssl.SSLContext:
    """The one TLS context both implementations use (cached: building one costs ~20 ms)."""
    try:
        return _context(settings.ca_file(), settings.ca_dir(), ca_bundle)
    except (OSError, ssl.SSLError) as e:
        where = ca_bundle or settings.ca_file() or settings.ca_dir()
        raise SourceError(f"cannot load the CA certificates from {where}: {e}",
                          hint="point network.caBundle / SSL_CERT_FILE at a PEM file") from None


def tls_failure(exc: BaseException, url: str) -> SourceError | None:
    """A certificate that failed verification, as one actionable error (never retried)."""
    seen: BaseException | None = exc
    while seen is not None:
        text = str(seen)
        if isinstance(seen, ssl.SSLCertVerificationError) or "CERTIFICATE_VERIFY_FAILED" in text:
            reason = getattr(seen, "verify_message", None) or "certificate verify failed"
            host = urlsplit(url).hostname or url
            return SourceError(
                f"{host}: TLS certificate not trusted ({reason})",
                hint="behind a company proxy or with a private CA, add it: network.caBundle ="
                " \"ca.pem\" in models.toml, or SSL_CERT_FILE=/path/to/bundle.pem")
        seen = seen.__cause__ or seen.__context__
    return _plain_http(exc, url) or _unknown_host(exc, url)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


def _plain_http(exc: BaseException, url: str) -> SourceError | None:
    """https:// to a server that speaks plain HTTP (a local registry, a MinIO without
    TLS): the handshake reads an HTTP answer. Asking again changes nothing."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not any("WRONG_VERSION_NUMBER" in str(e) for e in _chain(exc)):
        return None
    plain = parts._replace(scheme="http", path="", query="", fragment="").geturl()
    return SourceError(f"{parts.hostname}: the server speaks plain HTTP, not TLS (https)",
                       hint=f"use {plain} in models.toml (for a registry: oci+{plain}/…)")


# getaddrinfo's "no such name" answers; EAI_AGAIN (a resolver that did not answer) stays
# transient
_NO_SUCH_NAME = {getattr(socket, n) for n in ("EAI_NONAME", "EAI_NODATA") if hasattr(socket, n)}
_NO_SUCH_NAME_TEXT = ("Name or service not known", "nodename nor servname provided",
                      "No address associated with hostname")


def _unknown_host(exc: BaseException, url: str) -> SourceError | None:
    """A host name the resolver says does not exist: a typo or a missing endpoint, not
    something a retry fixes (three DNS failures, with waits, said nothing more)."""
    for e in _chain(exc):
        if (isinstance(e, socket.gaierror) and e.errno in _NO_SUCH_NAME) or any(
                t in str(e) for t in _NO_SUCH_NAME_TEXT):
            host = urlsplit(url).hostname or url
            return SourceError(f"{host}: the host name does not resolve",
                               hint="check the URL or endpoint in models.toml (an S3-compatible"
                               " server: endpoint = \"…\" or AWS_ENDPOINT_URL), and your DNS")
    return None


# --- proxies --------------------------------------------------------------------------


def proxy_for(url: str, proxy: str | None) -> str | None:
    """The proxy a request to ``url`` goes through, or None: ``network.proxy`` wins, then
    the environment (HTTPS_PROXY, HTTP_PROXY, ALL_PROXY, NO_PROXY) as curl reads it."""
    import urllib.request

    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        return None
    if proxy:
        return proxy
    proxies = urllib.request.getproxies()
    chosen = proxies.get(parts.scheme) or proxies.get("all")
    if not chosen or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return chosen if "://" in chosen else f"http://{chosen}"


# --- redirects ------------------------------------------------------------------------


def origin(url: str) -> tuple[str, str, int | None]:
    p = urlsplit(url)
    port = p.port or {"http": 80, "https": 443}.get(p.scheme)
    return p.scheme, (p.hostname or "").lower(), port


def redirect_headers(headers: dict[str, str], old: str, new: str) -> dict[str, str]:
    """The headers a redirect may carry: all of them to the same origin; none that
    authenticate or sign anywhere else (a CDN, a presigned bucket URL). A redirect from
    https to http is refused outright by the caller."""
    if origin(old) == origin(new):
        return dict(headers)
    return {k: v for k, v in headers.items() if k.lower() not in SENSITIVE}


def check_redirect(old: str, new: str) -> None:
    if urlsplit(old).scheme == "https" and urlsplit(new).scheme != "https":
        raise SourceError(f"{scrub_url(old)}: redirected to plain http ({scrub_url(new)});"
                          " refused")


# --- retrying -------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """One rule for every request: which failures are retried, and how long to wait.

    Transient = connection trouble (resets, timeouts, truncated bodies), HTTP 408, 429
    and 5xx. The wait before attempt n+1 is ``base_delay * 2**(n-1)`` with full jitter
    (half to all of it), at most ``max_delay``; a longer ``Retry-After`` wins.
    """

    attempts: int = 3
    base_delay: float = 2.0
    max_delay: float = 60.0

    @classmethod
    def of(cls, network: Any) -> RetryPolicy:
        return cls(network.max_attempts, network.base_delay, network.max_delay)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        wait = self.base_delay * (2 ** (attempt - 1)) * (0.5 + random.random() / 2)
        wait = min(wait, self.max_delay)
        if retry_after is not None:
            wait = max(wait, min(retry_after, 300.0))
        return wait

    def run(self, call: Callable[[], T], *, sleep: Callable[[float], None] = time.sleep) -> T:
        """``call()`` until it returns or fails for good; Transient failures are retried."""
        from .errors import Transient

        attempt = 0
        while True:
            attempt += 1
            try:
                return call()
            except Transient as e:
                if attempt >= self.attempts:
                    raise SourceError(f"giving up after {attempt} attempts: {e.message}",
                                      hint=e.hint) from None
                sleep(self.delay(attempt, e.retry_after))
