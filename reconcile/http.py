"""The two HTTP implementations behind one behaviour: httpx, and http.client for big bodies.

``request`` (httpx: API calls, HEADs, small files) and ``direct_stream`` (http.client
straight into recycled 1 MiB buffers) share everything a user can notice through
``transport``: the TLS context, the proxy choice, the redirect rule (both follow
redirects here, never inside httpx, so credentials and signed headers never reach
another origin), and one translation of failures: transport trouble, 408, 429 and
5xx become ``Transient`` for the shared retry policy; an untrusted certificate is a
plain error that says how to add a CA. Sources keep their protocol's error
vocabulary (``raise_for_status`` per source).
"""

from __future__ import annotations

import mmap
import threading
from collections.abc import Callable, Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .errors import Restart, SourceError, Transient
from .netconfig import NetworkConfig
from .transport import scrub_url

USER_AGENT = "reconcile/0.1"
CHUNK = 1 << 20


class BufferPool:
    """Read buffers of CHUNK bytes, recycled once their bytes are written and hashed.

    A fresh 1 MiB bytearray per read is an mmap, 256 page faults and an munmap, whose
    TLB shootdown interrupts the hasher's core too. On a 2-core VM that doubled the
    kernel time of a 2 GiB download (and made it slower than curl); with recycling it
    is faster. get() never blocks: when no buffer is free it allocates, so a consumer
    that never calls release() only pays the old price. Only the last consumer of a
    chunk may release it (transfer.py: after the write and the hash).
    """

    def __init__(self, size: int = CHUNK, keep: int = 32) -> None:
        self.size, self.keep = size, keep
        self._free: list[mmap.mmap] = []  # append/pop are atomic under the GIL

    def get(self) -> mmap.mmap:
        """A buffer; anonymous mmaps are page-aligned, as O_DIRECT writes need."""
        try:
            return self._free.pop()
        except IndexError:
            return mmap.mmap(-1, self.size)

    def is_whole(self, chunk: Any) -> bool:
        """Is ``chunk`` a whole (so page-aligned) buffer of this pool's kind?"""
        return (isinstance(chunk, memoryview) and isinstance(chunk.obj, mmap.mmap)
                and chunk.nbytes == self.size == len(chunk.obj))

    def release(self, chunk: Any) -> None:
        """Take back the buffer under ``chunk`` (a memoryview from direct_stream)."""
        buf = chunk.obj if isinstance(chunk, memoryview) else None
        if isinstance(buf, mmap.mmap) and len(buf) == self.size and len(self._free) < self.keep:
            self._free.append(buf)


BUFFERS = BufferPool()
DIRECT_MIN = 16 << 20  # transfers at least this big skip httpx (see direct_stream)
SMALL_BODY = 1 << 20  # transfers at most this big are read whole (see _small_body)


def base_headers(extra: dict[str, str] | None = None) -> dict[str, str]:
    """What every request carries: our name, and no transparent compression."""
    return {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **(extra or {})}


def make_client(network: NetworkConfig, headers: dict[str, str] | None = None) -> Any:
    """An httpx client with the shared TLS context and proxy; it follows no redirect
    itself (``request`` does, with the one redirect rule). ``headers`` go with every
    request to every origin: never put credentials there, pass them to ``request``."""
    import httpx

    from .transport import ssl_context

    timeout = httpx.Timeout(connect=network.connect_timeout, read=network.read_timeout,
                            write=network.read_timeout, pool=network.read_timeout)
    return httpx.Client(
        timeout=timeout,
        follow_redirects=False,
        verify=ssl_context(network.ca_bundle),
        proxy=network.proxy,
        trust_env=True,  # HTTP(S)_PROXY / NO_PROXY like every other tool
        headers=base_headers(headers),
        limits=httpx.Limits(max_connections=32, max_keepalive_connections=16),
    )


REDIRECTS = (301, 302, 303, 307, 308)


def request(client: Any, method: str, url: str, *, headers: dict[str, str] | None = None,
            stream: bool = False, max_redirects: int = 10) -> Any:
    """One httpx request, redirects followed by the shared rule; the final response.

    Transport failures become ``Transient`` (or a TLS error that says how to add a CA).
    With ``stream`` the caller closes the response.
    """
    import httpx

    from .transport import check_redirect, redirect_headers

    h = dict(headers or {})
    for _ in range(max_redirects + 1):
        try:
            r = client.send(client.build_request(method, url, headers=h), stream=stream)
        except httpx.TransportError as e:
            raise transport_failure(e, url) from None
        location = r.headers.get("Location")
        if r.status_code not in REDIRECTS or not location:
            return r
        r.close()
        new = str(r.url.join(location))
        check_redirect(url, new)
        h = redirect_headers(h, url, new)
        if r.status_code == 303:
            method = "GET"
        url = new
    raise Transient(f"{scrub_url(url)}: more than {max_redirects} redirects")


def _restart(url: str) -> Transient:
    """A ranged request answered with the whole entity: the server ignores ranges, or
    If-Range found the file changed. Never splice: the caller starts from byte 0."""
    return Restart(f"{scrub_url(url)}: the server sent the whole file to a resume")


def transport_failure(e: BaseException, url: str) -> SourceError:
    """A failure below HTTP: an untrusted certificate (final) or a Transient one."""
    from .transport import tls_failure

    return tls_failure(e, url) or Transient(f"{scrub_url(url)}: {type(e).__name__}: {e}")


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
    if response.status_code in (408, 429) or response.status_code >= 500:
        return Transient(
            f"{scrub_url(str(response.request.url))}: HTTP {response.status_code}",
            retry_after=retry_after(response.headers.get("Retry-After")),
        )
    return None


def check_answer(r: Any, what: str, *, missing: str, denied: str = "access denied",
                 gone: tuple[int, ...] = (404,)) -> None:
    """Raise the usual error for a failed answer to a byte request (retryable statuses
    are ``transient_status``'s): ``what: HTTP n: why``."""
    from .errors import AuthRequired, NotFound

    if r.status_code < 300:
        return
    if r.status_code in (401, 403):
        raise AuthRequired(f"{what}: HTTP {r.status_code}: {denied}")
    if r.status_code in gone:
        raise NotFound(f"{what}: HTTP {r.status_code}: {missing}")
    raise SourceError(f"{what}: HTTP {r.status_code}")


def refuse_html(headers: Any, requested: str) -> None:
    """A file download answered with an HTML page is a login page, an error page or a
    wrong URL, never a model file: stop at the first byte, not after a validator.
    (The requested URL's name decides, not a CDN's after redirects: a file that is
    itself named .html may be HTML.)"""
    kind = (headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if kind in ("text/html", "application/xhtml+xml") and not urlsplit(
            requested).path.lower().endswith((".html", ".htm", ".xhtml")):
        raise SourceError(
            f"{scrub_url(requested)}: the server answered with an HTML page ({kind}),"
            " not the file",
            hint="that is usually a login page or a wrong URL: check the URL, and give"
            " credentials with auth.tokenEnvVar if the file is private")


def stream(
    client: Callable[[], Any],
    url: str,
    *,
    start: int = 0,
    end: int | None = None,
    headers: dict[str, str] | None = None,
    raise_for_status: Callable[[Any], None],
    if_range: str | None = None,
    length: int | None = None,
    network: NetworkConfig | None = None,
) -> Iterator[bytes]:
    """Yield bytes [start, end) of ``url``; a server that ignores Range is handled.

    ``client`` returns the source's httpx client; it is only asked for when needed, so a
    big transfer (``length`` ≥ DIRECT_MIN, via ``direct_stream``) never pays for importing
    httpx and building its TLS context. ``headers`` are the source's own (auth included).
    """
    h = dict(headers or {})
    if start or end is not None:
        h["Range"] = f"bytes={start}-" + ("" if end is None else str(end - 1))
        if if_range:
            h["If-Range"] = if_range
    from .settings import direct_min

    threshold = direct_min()
    if (network is not None and length is not None
            and length >= (DIRECT_MIN if threshold is None else threshold)):
        yield from direct_stream(url, base_headers(h), start, end, network, raise_for_status)
        return
    if network is not None and length is not None and length <= SMALL_BODY:
        yield from _small_body(url, h, start, end, network, raise_for_status)
        return
    r = request(client(), "GET", url, headers=h, stream=True)
    try:
        if (t := transient_status(r)) is not None:
            raise t
        raise_for_status(r)
        refuse_html(r.headers, url)
        if start and r.status_code == 200:
            raise _restart(url)
        remaining = None if end is None else end - start
        for chunk in r.iter_raw():
            if remaining is not None:
                chunk = chunk[:remaining]
                remaining -= len(chunk)
            yield chunk
            if remaining == 0:
                return
    except Exception as e:
        import httpx

        if isinstance(e, httpx.TransportError):  # resets, timeouts, truncated bodies
            raise transport_failure(e, url) from None
        raise
    finally:
        r.close()


def _small_body(url: str, headers: dict[str, str], start: int, end: int | None,
                network: NetworkConfig, raise_for_status: Callable[[Any], None]) -> Iterator[bytes]:
    """A small body (≤ SMALL_BODY, as transfer.SMALL_MAX files are kept in memory anyway)
    read whole on this thread's kept connection (``call``).

    Through httpx, the first small file of a run paid for importing httpx and building
    its client and TLS contexts (0.2-0.6 s on 2 busy cores, while the big files' streams
    had long started), and every further one ~1 ms of Python; an ollama model's 20
    small layers finished 0.3 s after its two 64 MiB blobs."""
    reply = call("GET", url, headers, network, max_body=SMALL_BODY)
    raise_for_status(reply)
    refuse_html(reply.headers, url)
    if start and reply.status_code == 200:
        raise _restart(url)
    body = reply.content if end is None else reply.content[: end - start]
    if body:
        yield body


class Reply:
    """The bits of an answer that sources' raise_for_status look at (an httpx.Response
    has them too), and the body when ``call`` read it whole."""

    def __init__(self, status: int, headers: Any, url: str, content: bytes = b"") -> None:
        from types import SimpleNamespace

        self.status_code, self.headers, self.content = status, headers, content
        self.request = SimpleNamespace(url=url)

    def read(self) -> bytes:
        return self.content


def _connect(url: str, network: NetworkConfig) -> tuple[Any, str, dict[str, str]]:
    """An http.client connection for ``url`` (through the proxy ``transport`` picks: a
    CONNECT tunnel for https, an absolute-form request for http), the request target
    to send, and the headers the proxy wants with it."""
    import http.client

    from .transport import ssl_context

    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    proxy, target, extra = _route(url, network)
    if proxy is None:
        if parts.scheme == "https":
            return http.client.HTTPSConnection(host, port, timeout=network.connect_timeout,
                                               context=ssl_context(network.ca_bundle)), target, {}
        return http.client.HTTPConnection(host, port, timeout=network.connect_timeout), target, {}
    p = urlsplit(proxy)
    if parts.scheme == "https":  # TLS end to end, through a CONNECT tunnel
        conn: Any = http.client.HTTPSConnection(p.hostname, p.port or 8080,
                                                timeout=network.connect_timeout,
                                                context=ssl_context(network.ca_bundle))
        conn.set_tunnel(host, port or 443, headers=_proxy_auth(p))
        return conn, target, {}
    conn = http.client.HTTPConnection(p.hostname, p.port or 8080, timeout=network.connect_timeout)
    return conn, target, extra


def _proxy_auth(p: Any) -> dict[str, str]:
    import base64
    from urllib.parse import unquote

    if p.username is None:
        return {}
    pair = f"{unquote(p.username)}:{unquote(p.password or '')}".encode()
    return {"Proxy-Authorization": "Basic " + base64.b64encode(pair).decode()}


def _route(url: str, network: NetworkConfig) -> tuple[str | None, str, dict[str, str]]:
    """(the proxy for ``url`` or None, the request target, headers for the proxy)."""
    from .transport import proxy_for

    proxy = proxy_for(url, network.proxy)
    return (proxy, *_target(url, proxy))


def _target(url: str, proxy: str | None) -> tuple[str, dict[str, str]]:
    """The request target and the proxy's headers: origin-form, or absolute-form with
    the proxy's credentials for plain http through a proxy (https tunnels instead)."""
    parts = urlsplit(url)
    if proxy is None or parts.scheme == "https":
        return urlunsplit(("", "", parts.path or "/", parts.query, "")), {}
    absolute = urlunsplit(("http", parts.netloc.rpartition("@")[2], parts.path or "/",
                           parts.query, ""))
    return absolute, _proxy_auth(urlsplit(proxy))


_kept = threading.local()  # this thread's open connections, by (scheme, netloc)


def call(method: str, url: str, headers: dict[str, str], network: NetworkConfig, *,
         max_body: int = 16 << 20, max_redirects: int = 10, body: bytes | None = None) -> Reply:
    """One small API request (a HEAD, a page of a listing) on a connection this thread
    keeps open: thousands of them at lock time (S3: a HEAD per object) cost ~0.3 ms of
    Python each here, against ~1.5 ms through httpx. Same TLS context, proxy choice and
    redirect rule as everything else; failures become ``Transient``; a body over
    ``max_body`` is refused, whatever the server says. ``body`` (a small JSON request) is
    sent again on a 307/308 redirect only."""
    import http.client

    from .transport import check_redirect, redirect_headers

    headers = base_headers(headers)
    for _ in range(max_redirects + 1):
        r = None
        for fresh in (False, True):  # a kept connection the server closed: once more, anew
            conn, target, extra = _kept_connection(url, network, fresh)
            try:
                conn.request(method, target, body, headers={**headers, **extra})
                conn.sock.settimeout(network.read_timeout)
                r = conn.getresponse()
                break
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as e:
                _drop_connection(url)
                if fresh:
                    raise transport_failure(e, url) from None
            except (OSError, http.client.HTTPException) as e:
                _drop_connection(url)
                raise transport_failure(e, url) from None
        assert r is not None
        try:
            content = r.read(max_body + 1)  # b"" for a HEAD; read, so the connection is free
        except (OSError, http.client.HTTPException) as e:
            _drop_connection(url)
            raise transport_failure(e, url) from None
        if len(content) > max_body:
            _drop_connection(url)
            raise SourceError(f"{scrub_url(url)}: the answer is over {max_body >> 20} MiB")
        if r.will_close:
            _drop_connection(url)
        if r.status in REDIRECTS and r.getheader("Location"):
            from urllib.parse import urljoin

            new = urljoin(url, r.getheader("Location"))
            check_redirect(url, new)
            headers = redirect_headers(headers, url, new)
            url = new
            if r.status not in (307, 308):
                method, body = ("GET" if method == "POST" else method), None
            continue
        reply = Reply(r.status, r.headers, url, content)
        if (t := transient_status(reply)) is not None:
            raise t
        return reply
    raise Transient(f"{scrub_url(url)}: more than {max_redirects} redirects")


def _kept_connection(url: str, network: NetworkConfig, fresh: bool) -> tuple[Any, str, dict]:
    """This thread's connection for ``url``'s origin, the request target and the proxy's
    headers. The proxy is chosen once per connection: reading the environment for it
    cost 0.35 ms a request, more than the request itself on loopback."""
    conns = _kept.__dict__.setdefault("conns", {})
    parts = urlsplit(url)
    key = (parts.scheme, parts.netloc, network.proxy, network.ca_bundle)
    if fresh or key not in conns:
        _drop_connection(url)
        conns[key] = (_connect(url, network)[0], _route(url, network)[0])
    conn, proxy = conns[key]
    return (conn, *_target(url, proxy))


def _drop_connection(url: str) -> None:
    conns = _kept.__dict__.get("conns", {})
    parts = urlsplit(url)
    for key in [k for k in conns if k[:2] == (parts.scheme, parts.netloc)]:
        conns.pop(key)[0].close()


def direct_stream(url: str, headers: dict[str, str], start: int, end: int | None,
                  network: NetworkConfig, raise_for_status: Callable[[Any], None],
                  max_redirects: int = 10) -> Iterator[memoryview]:
    """A large body straight from http.client into 1 MiB buffers.

    httpx allocates and re-parses every ~64 KiB read in Python, which caps one stream
    near 1 GB/s before the bytes are even written or hashed; ``readinto`` fills big
    buffers in C. TLS trust, proxies (CONNECT for https) and the redirect rule are
    ``transport``'s, exactly as for httpx.
    Chunks are views of BUFFERS' buffers: keep one as long as you like, and hand it
    to ``BUFFERS.release`` once nothing will read it again.
    """
    import http.client

    from .transport import check_redirect, redirect_headers

    headers = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
    requested = url
    for _ in range(max_redirects + 1):
        try:
            conn, target, extra = _connect(url, network)
            conn.request("GET", target, headers={**headers, **extra})
            conn.sock.settimeout(network.read_timeout)
            r = conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            raise transport_failure(e, url) from None
        answer = Reply(r.status, r.headers, url)
        if r.status in REDIRECTS and r.getheader("Location"):
            from urllib.parse import urljoin

            new = urljoin(url, r.getheader("Location"))
            conn.close()
            check_redirect(url, new)
            headers = redirect_headers(headers, url, new)
            url = new
            continue
        if (t := transient_status(answer)) is not None:
            conn.close()
            raise t
        try:
            raise_for_status(answer)
            refuse_html(r.headers, requested)
        except BaseException:
            conn.close()
            raise
        if start and r.status == 200:
            conn.close()
            raise _restart(url)
        remaining = None if end is None else end - start
        try:
            while remaining is None or remaining > 0:
                view = memoryview(BUFFERS.get())
                n = 0
                while n < CHUNK:
                    got = r.readinto(view[n:])
                    if not got:
                        break
                    n += got
                if n == 0:
                    break
                chunk = view[:n]
                if remaining is not None:
                    chunk = chunk[:remaining]
                    remaining -= len(chunk)
                if len(chunk):
                    yield chunk
                if n < CHUNK:
                    break
            if r.length:  # Content-Length promised more than arrived
                raise Transient(f"{scrub_url(url)}: connection closed early")
        except (TimeoutError, OSError, http.client.HTTPException) as e:
            raise transport_failure(e, url) from None
        finally:
            conn.close()
        return
    raise Transient(f"{scrub_url(url)}: more than {max_redirects} redirects")
