"""The OCI distribution protocol, as every registry speaks it: manifests, blobs, tokens.

Shared by `source.ollama` and `source.oci` (and the team cache on a registry). What it
does, and why:

* every manifest GET sends an ``Accept`` listing the OCI and Docker manifest and index
  types: a registry answers 404 ("OCI manifest found, but accept header does not
  support OCI manifests") or 400 to a client that lists too few;
* the manifest's digest is sha256 of the bytes as served: it is checked against
  ``Docker-Content-Digest`` and against a digest reference, and never re-encoded;
* a 401 carries the challenge: ``Bearer realm,service,scope`` → a token from the realm
  for that scope (anonymous, or Basic with the model's ``auth``), renewed before it
  expires; ``Basic`` → the model's credentials directly;
* blobs go through the shared transfer engine with the current token; a redirect to
  storage on another host carries no credential (``transport.redirect_headers``).
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from ..errors import AuthRequired, IntegrityError, NotFound, SourceError
from .base import HttpSource, RemoteFile

MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
MANIFEST_MAX = 4 << 20  # distribution refuses manifests over 4 MiB
TOKEN_MAX = 1 << 20
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"|(\w+)=([^,\s]+)')


@dataclass(frozen=True)
class Manifest:
    data: bytes  # exactly as served: its sha256 is the digest
    digest: str
    media_type: str

    def json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self.data)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise SourceError(f"manifest {self.digest[:19]}…: not a JSON object")
        return doc


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """('bearer', {realm, service, scope}) from a WWW-Authenticate header."""
    scheme, _, rest = header.strip().partition(" ")
    params = {}
    for m in _CHALLENGE_PARAM.finditer(rest):
        key = (m.group(1) or m.group(3)).lower()
        params[key] = m.group(2) if m.group(1) else m.group(4)
    return scheme.lower(), params


def printable(text: str, limit: int = 200) -> str:
    return "".join(c for c in text[:limit] if c.isprintable()).strip()


def error_text(body: bytes) -> str:
    """'CODE: message' of a distribution error body, else a printable excerpt."""
    try:
        errors = json.loads(body).get("errors") or []
        first = errors[0]
        return printable(f"{first.get('code', '')}: {first.get('message', '')}")
    except (ValueError, AttributeError, IndexError, TypeError):
        return printable(body.decode("utf-8", "replace"), 120)


#: Public registries whose token service lives on another host, by design and documented:
#: the credentials may go there without a tokenRealms entry.
KNOWN_REALMS: dict[str, tuple[str, ...]] = {
    "registry-1.docker.io": ("auth.docker.io",),
    "index.docker.io": ("auth.docker.io",),
    "docker.io": ("auth.docker.io",),
    "registry.gitlab.com": ("gitlab.com",),
}


class Registry:
    """One repository on one registry, with the credentials of one model."""

    def __init__(self, base: str, repository: str, network: Any, credentials: Any) -> None:
        self.base = base.rstrip("/")
        self.repository = repository
        self.network = network
        self.credentials = credentials  # auth.Credentials: Basic for the realm, or a token
        self._lock = threading.Lock()
        self._auth: dict[str, str] | None = None  # what the last success needed
        self._challenge: tuple[str, dict[str, str]] | None = None
        self._expires = float("inf")

    @property
    def name(self) -> str:
        return f"{urlsplit(self.base).netloc}/{self.repository}"

    def url(self, kind: str, reference: str) -> str:
        return f"{self.base}/v2/{self.repository}/{kind}/{reference}"

    # --- auth -------------------------------------------------------------------------

    def headers(self) -> dict[str, str]:
        """The Authorization the registry wants now (a token renewed before it expires)."""
        with self._lock:
            if self._auth is not None and time.monotonic() >= self._expires:
                self._auth = self._answer(self._challenge) if self._challenge else None
            return dict(self._auth or {})

    def forget(self) -> None:
        """A refused token: ask for a new one on the next challenge."""
        with self._lock:
            self._auth, self._expires = None, float("inf")

    def _answer(self, challenge: tuple[str, dict[str, str]]) -> dict[str, str]:
        scheme, params = challenge
        mine = self.credentials.headers()
        if scheme == "basic":
            if not mine.get("Authorization", "").startswith("Basic "):
                raise self._denied(401, "the registry wants a username and password")
            return mine
        if scheme != "bearer" or not params.get("realm"):
            raise SourceError(f"{self.name}: unsupported authentication challenge {scheme!r}")
        if mine.get("Authorization", "").startswith("Bearer "):
            return mine  # a registry token the user already has
        return self._token(params, mine)

    def _token(self, params: dict[str, str], mine: dict[str, str]) -> dict[str, str]:
        from ..http import call

        realm = params["realm"]
        if urlsplit(realm).scheme not in ("http", "https"):
            raise SourceError(f"{self.name}: token realm {printable(realm)!r} is not http(s)")
        if urlsplit(realm).scheme == "http" and urlsplit(self.base).scheme == "https":
            raise SourceError(f"{self.name}: the registry sends credentials to a plain-http"
                              f" token realm ({printable(realm)}); refused")
        if mine:
            self._check_realm_host(realm)
        query = {k: params[k] for k in ("service", "scope") if params.get(k)}
        if "scope" not in query:
            query["scope"] = f"repository:{self.repository}:pull"
        url = realm + ("&" if "?" in realm else "?") + urlencode(query)
        r = call("GET", url, {"Accept": "application/json", **mine}, self.network,
                 max_body=TOKEN_MAX)
        if r.status_code in (401, 403):
            raise self._denied(r.status_code, "the token service refused the credentials"
                               if mine else "the token service wants credentials")
        if r.status_code >= 300:
            raise SourceError(f"{self.name}: token service: HTTP {r.status_code}:"
                              f" {error_text(r.content)}")
        try:
            answer = json.loads(r.content)
            token = answer.get("token") or answer.get("access_token")
        except (ValueError, AttributeError):
            token, answer = None, {}
        if not isinstance(token, str) or not token or any(c in token for c in "\r\n"):
            raise SourceError(f"{self.name}: the token service gave no token")
        life = answer.get("expires_in")
        life = float(life) if isinstance(life, int | float) and life > 0 else 60.0  # the spec's
        self._expires = time.monotonic() + life - min(10.0, life / 4)
        return {"Authorization": f"Bearer {token}"}

    def _check_realm_host(self, realm: str) -> None:
        """The model's credentials go to the registry's own host, a realm that models.toml
        lists (``auth.tokenRealms``) or a known public pair (Docker Hub's
        auth.docker.io); any other realm a registry names is refused, since a registry
        (or whoever answers for it) could name any host."""
        host = (urlsplit(realm).hostname or "").lower()
        own = (urlsplit(self.base).hostname or "").lower()
        listed = getattr(getattr(self.credentials, "auth", None), "token_realms", ())
        if host == own or host in listed or host in KNOWN_REALMS.get(own, ()):
            return
        raise AuthRequired(
            f"{self.name}: the registry asks for the credentials at a token service on"
            f" another host ({printable(host)}); not sent",
            hint=f'if {printable(host)} is this registry\'s token service, list it in the'
            f' model\'s auth: tokenRealms = ["{printable(host)}"]')

    def _denied(self, status: int, why: str) -> AuthRequired:
        return AuthRequired(f"{self.name}: access denied (HTTP {status}): {why}",
                            hint="set auth.usernameEnvVar/passwordEnvVar (or tokenEnvVar) in"
                            " models.toml for a private repository, and check its name")

    # --- requests ---------------------------------------------------------------------

    def get(self, url: str, headers: dict[str, str], method: str = "GET",
            max_body: int = MANIFEST_MAX, body: bytes | None = None) -> Any:
        """One small request (``body``: an upload chunk), answering a 401 challenge once:
        a push's first request brings the challenge for the push scope."""
        from ..http import call
        from ..transport import RetryPolicy

        policy = RetryPolicy.of(self.network)
        r = policy.run(lambda: call(method, url, {**headers, **self.headers()}, self.network,
                                    max_body=max_body, body=body))
        if r.status_code == 401 and r.headers.get("WWW-Authenticate"):
            challenge = parse_challenge(r.headers["WWW-Authenticate"])
            with self._lock:
                self._challenge = challenge
                self._auth = self._answer(challenge)
            r = policy.run(lambda: call(method, url, {**headers, **self.headers()},
                                        self.network, max_body=max_body, body=body))
        if r.status_code in (401, 403):
            raise self._denied(r.status_code, error_text(r.content) or "unauthorized")
        return r

    def authorize(self) -> None:
        """Learn what the registry wants before a blob transfer (a HEAD of the repository's
        manifest list is enough to get the challenge and the token)."""
        with self._lock:
            if self._auth is not None or self._challenge is not None:
                return
        self.get(self.url("tags", "list"), {}, "GET", max_body=MANIFEST_MAX)

    def manifest(self, reference: str) -> Manifest:
        """The manifest bytes for a tag or digest, their digest checked."""
        r = self.get(self.url("manifests", reference), {"Accept": ", ".join(MANIFEST_TYPES)})
        where = f"{self.name}:{reference}" if not DIGEST.match(reference) \
            else f"{self.name}@{reference}"
        if r.status_code == 404:
            raise NotFound(f"{where}: no such model or tag on the registry"
                           f" ({error_text(r.content) or 'HTTP 404'})",
                           hint="check the name and tag (registries want lowercase"
                           " repository names)")
        if r.status_code >= 300:
            raise SourceError(f"{where}: HTTP {r.status_code}: {error_text(r.content)}")
        digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
        stated = r.headers.get("Docker-Content-Digest")
        if stated and stated != digest:
            raise IntegrityError(f"{where}: the manifest's digest does not match: the registry"
                                 f" says {printable(stated, 80)}, its bytes hash to {digest}")
        if DIGEST.match(reference) and reference != digest:
            raise IntegrityError(f"{where}: the manifest served for this digest hashes to"
                                 f" {digest}")
        media = (r.headers.get("Content-Type") or "").split(";")[0].strip()
        return Manifest(r.content, digest, media)


def descriptor_file(path: str, desc: dict[str, Any], where: str) -> RemoteFile:
    """A layer or config descriptor as a file: its digest is its sha256."""
    digest, size = desc.get("digest"), desc.get("size")
    if not isinstance(digest, str) or not DIGEST.match(digest):
        raise SourceError(f"{where}: {path}: digest {str(digest)[:80]!r} is not sha256:<hex>")
    if not isinstance(size, int) or isinstance(size, bool) or size < 0:
        raise SourceError(f"{where}: {path}: size {str(size)[:40]!r} is not a byte count")
    return RemoteFile(path, size, digest[7:])


def blob_stream(registry: Registry, client: Callable[[], Any], digest: str, file: Any,
                network: Any,
                start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Bytes [start, end) of a blob, with the registry's current token."""
    from ..http import check_answer, stream

    registry.authorize()
    what = f"{registry.name}@{digest[:19]}… ({file.path})"
    length = (file.size if end is None else end) - start

    def raise_for_status(r: Any) -> None:
        check_answer(r, what, missing="the registry no longer has this blob")
        check_blob_size(r, what, file.size, ranged=bool(start or end is not None))

    yield from stream(client, registry.url("blobs", digest), start=start, end=end,
                      headers=registry.headers(), length=length, network=network,
                      raise_for_status=raise_for_status)


def blob_size(r: Any, ranged: bool) -> int | None:
    """The blob's whole size as the answer states it (a range's total, or the length of
    a whole answer), None when it does not say."""
    total = (r.headers.get("Content-Range") or "").rpartition("/")[2]
    if not total.isdigit() and not ranged and r.status_code == 200:
        total = r.headers.get("Content-Length") or ""
    return int(total) if total.isdigit() else None


def check_blob_size(r: Any, what: str, size: int, ranged: bool) -> None:
    """A descriptor whose size is not its blob's: said at the first answer, as what it
    is. The bytes may well hash to the digest, so neither "sha256 mismatch" nor a relock
    (which copies the same descriptor) is the fix; the artifact's manifest is."""
    actual = blob_size(r, ranged)
    if actual is None or actual == size or r.status_code >= 300:
        return
    raise IntegrityError(
        f"{what}: size mismatch: the manifest states {size} bytes for this blob, the"
        f" registry holds {actual}",
        hint="the artifact's manifest is wrong, not its bytes, and relocking copies the same"
        " size: push the artifact again with the tool that made it (it writes the blob's"
        " size), then lock")


class RegistrySource(HttpSource):
    """What ollama and OCI sources share: blobs by digest from one repository."""

    registry: Registry

    def entity(self, pin: dict[str, Any], file: Any = None) -> str | None:
        return file.sha256 if file is not None else pin.get("digest")

    def refresh_credentials(self) -> bool:
        super().refresh_credentials()
        self.registry.forget()
        return True

    def blob(self, file: Any, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        return blob_stream(self.registry, lambda: self.client, "sha256:" + file.sha256, file,
                           self.decl.network, start, end)
