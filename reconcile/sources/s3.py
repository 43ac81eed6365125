"""`source.s3`: a prefix of a bucket on AWS S3 or any S3-compatible store, pinned per object.

    list     ListObjectsV2, 1,000 keys a page; paths are keys relative to the prefix
    pin      per object: its VersionId (versioned bucket), else its ETag + Last-Modified
    sha256   the object's full-object ChecksumSHA256 (a HEAD per object, in parallel);
             without one the object is downloaded once at lock time, into the store
    bytes    GETs signed per attempt: the pinned VersionId, else If-Match on the ETag, so
             an object overwritten since lock is refused, never installed

boto3 does only what it alone should: the credential chain (environment, profiles,
SSO, container and instance roles), endpoint, region and addressing rules, and SigV4
signing (see ``Signer``; local and cheap). Every request then goes through reconcile's
own transport (TLS trust, proxies, retries, the fast path for big bodies), so S3
behaves exactly like every other source, and a HEAD costs a fifth of a boto3 call.
Credentials never come from models.toml; signatures and session tokens travel in
headers, never in a URL, so no message, log or proxy line shows them.
"""

from __future__ import annotations

import base64
import re
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_plus, urlsplit

from ..errors import AuthRequired, ChangedSinceLock, ConfigError, NotFound, SourceError
from ..paths import check_relpath
from .base import HttpSource, RemoteFile, Resolution

# AWS's rules for new buckets (3-63 characters; lowercase letters, digits, '.', '-')
BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
REGION = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
PROFILE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+=,-]{0,127}$")
_NS = "{http://s3.amazonaws.com/doc/2006-03-01/}"
XML_MAX = 16 << 20  # a page of 1,000 keys is ~0.3 MB; a bigger answer is not a listing
# A listing is the server's to end: one that never does (IsTruncated forever, empty pages,
# a token that repeats) or that names a million keys (each costs a HEAD, then a file) is
# refused with these caps, far above any model (the largest have a few thousand files).
PAGE_KEYS = 1000  # MaxKeys asked for: S3's own maximum and default
MAX_KEYS = 100_000
MAX_PAGES = 10_000
CREDENTIALS_HINT = ("S3 credentials come from AWS's own chain: AWS_ACCESS_KEY_ID and"
                    " AWS_SECRET_ACCESS_KEY, AWS_PROFILE or profile = \"…\" in models.toml,"
                    " SSO (`aws sso login`), or a container/instance role; anonymous = true"
                    " for a public bucket")


def _check_prefix(prefix: str) -> str:
    """The prefix as a directory ('' or ending in '/'), or ValueError: S3 keys are plain
    strings, and a prefix with '..' or '//' would make paths that name no place."""
    if not prefix:
        return ""
    if prefix.startswith("/"):
        raise ValueError(f"prefix: {prefix!r} starts with '/'; S3 keys have no leading slash"
                         f" (write {prefix.lstrip('/')!r})")
    parts = prefix.rstrip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"prefix: {prefix!r} has an empty, '.' or '..' part")
    return "/".join(parts) + "/"


class S3Source(HttpSource):
    type = "s3"
    OPTIONS: dict[str, Any] = {
        "bucket": "str",
        "prefix": "str",
        "region": "str",
        "endpoint": "str",
        "profile": "str",
        "anonymous": "bool",
        "addressingStyle": "enum:auto|path|virtual",
    }
    own_credentials = CREDENTIALS_HINT
    SHORTHAND = r"^s3://"  # the schema's pattern for the string form (see shorthand)

    @classmethod
    def shorthand(cls, value: Any) -> Any:
        """``source.s3 = "s3://bucket/prefix/"``, as the aws CLI writes it."""
        if isinstance(value, str) and value.startswith("s3://"):
            bucket, _, prefix = value[5:].partition("/")
            return {"bucket": bucket, "prefix": prefix}
        return value

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        bucket = opts.get("bucket")
        if not bucket:
            raise ValueError('bucket: required, e.g. bucket = "my-models"')
        if not BUCKET.match(bucket) or ".." in bucket:
            raise ValueError(f"bucket: {bucket!r} is not a bucket name (3-63 characters:"
                             " lowercase letters, digits, '.' and '-')")
        out: dict[str, Any] = {"bucket": bucket, "prefix": _check_prefix(opts.get("prefix", "")),
                               "anonymous": bool(opts.get("anonymous", False))}
        if "region" in opts:
            if not REGION.match(opts["region"]):
                raise ValueError(f"region: {opts['region']!r} is not a region name such as"
                                 " 'us-west-2'")
            out["region"] = opts["region"]
        if "endpoint" in opts:
            ep = urlsplit(opts["endpoint"])
            if ep.scheme not in ("http", "https") or not ep.hostname:
                raise ValueError(f"endpoint: {opts['endpoint']!r} is not an http(s) URL such as"
                                 " 'https://minio.example.com:9000'")
            if ep.username is not None or ep.password is not None or ep.query or ep.fragment:
                raise ValueError("endpoint: give the server's URL only (no user:password@, no"
                                 f" query); {CREDENTIALS_HINT}")
            out["endpoint"] = opts["endpoint"].rstrip("/")
        if "profile" in opts:
            if out["anonymous"]:
                raise ValueError("profile: give profile or anonymous = true, not both")
            if not PROFILE.match(opts["profile"]):
                raise ValueError(f"profile: {opts['profile']!r} is not a profile name")
            out["profile"] = opts["profile"]
        # S3-compatible servers on a plain host name usually want path-style URLs
        out["addressingStyle"] = opts.get("addressingStyle",
                                          "path" if "endpoint" in out else "auto")
        return out

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        self.bucket: str = self.options["bucket"]
        self.prefix: str = self.options["prefix"]

    # --- signing --------------------------------------------------------------------

    @property
    def signer(self) -> Any:
        """boto3's S3 client for this source's profile, region and endpoint; shared by
        every model that names the same ones (clients are thread-safe)."""
        return _signer(self.options.get("profile"), self.options.get("region"),
                       self.options.get("endpoint"), self.options["anonymous"],
                       self.options["addressingStyle"], self.decl.key)

    def sign(self, method: str, operation: str, headers: dict[str, str] | None = None,
             payload: str | None = None, **params: Any) -> tuple[str, dict[str, str]]:
        """(url, headers) of one signed request, made anew for every attempt; ``payload``
        is the sha256 (hex) of a request body."""
        url = self.signer.url(operation, {"Bucket": self.bucket, **params})
        return url, self.signer.sign(method, url, headers or {}, self.bucket, payload)

    def url_of(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def key_of(self, path: str) -> str:
        return self.prefix + path

    # --- answers --------------------------------------------------------------------

    def _error(self, status: int, headers: Any, body: bytes, what: str) -> SourceError:
        """One line with a hint for an S3 error answer (HEAD answers have no body: the
        status decides then)."""
        code, message, region = _error_fields(body)
        region = region or headers.get("x-amz-bucket-region")
        mine = self.options.get("region") or self.signer.region
        if status == 301 or code in ("PermanentRedirect", "AuthorizationHeaderMalformed",
                                     "IllegalLocationConstraintException") or (
                region and region != mine and status in (301, 400)):
            where = f"region {region!r}" if region else "another region"
            return ConfigError(f"s3://{self.bucket}: the bucket is in {where}, not {mine!r}",
                               hint=f'set region = "{region}" in models.toml' if region
                               else "set region in models.toml to the bucket's region")
        if code == "NoSuchBucket":
            return NotFound(f"s3://{self.bucket}: no such bucket",
                            hint="check bucket (and endpoint) in models.toml")
        if status in (401, 403):
            why = {"InvalidAccessKeyId": "the access key id is not known to the server",
                   "SignatureDoesNotMatch": "the secret key does not match the access key id",
                   "ExpiredToken": "the session token has expired",
                   "InvalidToken": "the session token is not valid"}.get(code, "access denied")
            return AuthRequired(f"{what}: {why} (HTTP {status}{', ' + code if code else ''})",
                                hint=CREDENTIALS_HINT)
        if status == 404:
            return NotFound(f"{what}: {code or 'not found'}" + (f" ({message})" if message else ""))
        return SourceError(f"{what}: HTTP {status}" + (f" {code}" if code else "")
                           + (f": {message}" if message else ""))

    def _call(self, method: str, operation: str, params: dict[str, Any], what: str,
              headers: dict[str, str] | None = None) -> Any:
        """One S3 API request, signed anew for each attempt of the shared retry policy;
        the answer, or the error S3 gave, translated."""
        from ..http import call
        from ..transport import RetryPolicy

        def attempt() -> Any:
            url, signed = self.sign(method, operation, headers, **params)
            return call(method, url, signed, self.decl.network, max_body=XML_MAX)

        r = RetryPolicy.of(self.decl.network).run(attempt)
        if r.status_code >= 300:
            raise self._error(r.status_code, r.headers, r.content, what)
        return r

    # --- the interface --------------------------------------------------------------

    def resolve(self) -> Resolution:
        listed = list(self._list())
        if not listed:
            raise NotFound(f"{self.url_of(self.prefix)}: no objects under this prefix",
                           hint="check bucket and prefix in models.toml (S3 keys are"
                           " case-sensitive)")
        # a HEAD per object: latency-bound against a remote S3 (16 in flight: ~300/s at
        # 50 ms), server-bound on loopback (8 or 16 threads made no difference there)
        workers = max(1, min(16, len(listed)))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            files = list(pool.map(self._head, listed))
        return Resolution(pin={"bucket": self.bucket, "prefix": self.prefix}, files=files)

    def resolve_pinned(self, pin: dict[str, Any], files: Any = ()) -> Resolution:
        """S3 keeps no listing of the past. A versioned bucket answers for each locked
        (key, versionId): a HEAD of that version gives its size and, when it was uploaded
        with one, its sha256 (else the version's bytes are hashed); an unversioned one
        only for what it serves now (listed again)."""
        regular = [f for f in files if f.type == "f"]
        if not regular or len(regular) != len(files) \
                or not all((f.pin or {}).get("versionId") for f in regular):
            return self.resolve()
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(regular)))) as pool:
            heads = list(pool.map(self._head_version, regular))
        return Resolution(pin={"bucket": self.bucket, "prefix": self.prefix}, files=heads)

    def _head_version(self, f: Any) -> RemoteFile:
        key, version = self.key_of(f.path), f.pin["versionId"]
        r = self._call("HEAD", "head_object", {"Key": key, "VersionId": version,
                                               "ChecksumMode": "ENABLED"},
                       self.url_of(key), {"x-amz-checksum-mode": "ENABLED"})
        size = r.headers.get("Content-Length", "")
        if not size.isdigit():
            raise SourceError(f"{self.url_of(key)}: the server gave no size for version"
                              f" {version[:40]} (Content-Length {size[:20]!r})")
        return RemoteFile(f.path, int(size), _full_sha256(r.headers),
                          pin={"versionId": version})

    def _list(self) -> Iterator[tuple[str, str]]:
        """(path, key) of every object under the prefix; refuses keys that would name a
        place outside the model tree, skips folder markers."""
        from xml.etree import ElementTree

        token, keys = None, 0
        for page in range(MAX_PAGES + 1):
            if page == MAX_PAGES:
                raise self._runaway(f"the listing did not end after {MAX_PAGES} pages")
            params = {"Prefix": self.prefix, "EncodingType": "url", "MaxKeys": PAGE_KEYS}
            if token:
                params["ContinuationToken"] = token
            body = self._call("GET", "list_objects_v2", params, self.url_of(self.prefix)).content
            try:
                root = ElementTree.fromstring(body)
            except ElementTree.ParseError as e:
                raise SourceError(f"{self.url_of(self.prefix)}: the listing is not S3's XML"
                                  f" ({e})") from None
            for item in root.iter(f"{_NS}Contents"):
                key = unquote_plus(item.findtext(f"{_NS}Key") or "")
                if key.endswith("/"):
                    continue  # a "folder" marker: nothing to install
                keys += 1
                if keys > MAX_KEYS:
                    raise self._runaway(f"more than {MAX_KEYS} objects under this prefix")
                yield self._path_of(key), key
            last, token = token, root.findtext(f"{_NS}NextContinuationToken")
            if root.findtext(f"{_NS}IsTruncated") != "true" or not token:
                return
            if token == last:
                raise self._runaway("the server sent the same continuation token twice")

    def _runaway(self, why: str) -> SourceError:
        """A listing too long to be one model's (or one that never ends), refused."""
        return SourceError(
            f"{self.url_of(self.prefix)}: {why}; refused, nothing was locked (a model is"
            " not that many files: narrow prefix in models.toml)"
        )

    def _path_of(self, key: str) -> str:
        path = key[len(self.prefix):]
        try:
            if not key.startswith(self.prefix) or check_relpath(path) != path:
                raise ValueError("not a plain relative path")
        except ValueError as e:
            raise SourceError(f"{self.url_of(key)}: this key would name a place outside the"
                              f" model ({e}: '..', '.', empty or absolute parts); refused",
                              hint="rename the object, or narrow prefix in models.toml;"
                              " nothing was locked") from None
        return path

    def _head(self, listed: tuple[str, str]) -> RemoteFile:
        path, key = listed
        r = self._call("HEAD", "head_object", {"Key": key, "ChecksumMode": "ENABLED"},
                       self.url_of(key), {"x-amz-checksum-mode": "ENABLED"})
        h = r.headers
        version = h.get("x-amz-version-id")
        if version and version != "null":
            pin = {"versionId": version}
        else:  # unversioned: If-Match on this ETag at apply; a change is refused
            pin = {"etag": h.get("ETag", ""), "modified": h.get("Last-Modified", "")}
            pin = {k: v for k, v in pin.items() if v}
        size = h.get("Content-Length", "")
        if not size.isdigit():
            raise SourceError(f"{self.url_of(key)}: the server gave no size for the object"
                              f" (Content-Length {size[:20]!r})")
        return RemoteFile(path, int(size), _full_sha256(h), pin=pin)

    def entity(self, pin: dict[str, Any], file: Any = None) -> str | None:
        fp = (file.pin if file is not None else None) or {}
        return fp.get("versionId") or fp.get("etag")

    def refresh_credentials(self) -> bool:
        # every attempt signs anew, and boto3's refreshable credentials (SSO, roles)
        # renew themselves when they near expiry: one more try is worth it
        return True

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        from ..http import stream

        key = self.key_of(file.path)
        fp = file.pin or {}
        headers = {}
        params: dict[str, Any] = {"Key": key}
        if fp.get("versionId"):
            params["VersionId"] = fp["versionId"]
        elif fp.get("etag"):
            headers["If-Match"] = fp["etag"]
        what = self.url_of(key)

        def raise_for_status(r: Any) -> None:
            if r.status_code < 300:
                return
            if r.status_code == 412:
                raise ChangedSinceLock(
                    f"{what} changed since models.lock was written (its ETag is no longer"
                    f" {fp.get('etag')})",
                    hint="nothing was installed; if the new object is what you want, run"
                    f" `reconcile lock --upgrade {self.decl.key}` and review the change")
            body = r.read() if hasattr(r, "read") else b""
            err = self._error(r.status_code, r.headers, body[:XML_MAX], what)
            if isinstance(err, NotFound) and "NoSuchBucket" not in err.message:
                gone = f"version {fp['versionId']}" if fp.get("versionId") else "the object"
                err = NotFound(f"{what}: {gone} no longer exists (deleted since models.lock"
                               " was written)", hint="restore it, or run `reconcile lock"
                               f" --upgrade {self.decl.key}` to pin what is there now")
            raise err

        length = (file.size if end is None else end) - start if file.size else None
        url, signed = self.sign("GET", "get_object", headers, **params)
        yield from stream(lambda: self.client, url, start=start, end=end, headers=signed,
                          length=length, network=self.decl.network,
                          raise_for_status=raise_for_status)


def _full_sha256(headers: Any) -> str | None:
    """The object's sha256 when S3 states it for the whole object: a multipart upload's
    checksum is a checksum of part checksums (COMPOSITE), which names no file."""
    value = headers.get("x-amz-checksum-sha256")
    if not value:
        return None
    kind = headers.get("x-amz-checksum-type")
    etag = headers.get("ETag", "")
    if kind != "FULL_OBJECT" and (kind == "COMPOSITE" or "-" in value
                                   or re.search(r"-\d+\"?$", etag)):
        return None
    try:
        digest = base64.b64decode(value, validate=True)
    except ValueError:
        return None
    return digest.hex() if len(digest) == 32 else None


def _error_fields(body: bytes) -> tuple[str, str, str | None]:
    """(Code, Message, Region) of an S3 error document; empty when there is none."""
    if not body.lstrip().startswith(b"<"):
        return "", "", None
    from xml.etree import ElementTree

    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return "", "", None
    def text(tag: str, limit: int) -> str:  # a server's words reach a terminal: printable only
        return "".join(c for c in (root.findtext(tag) or "")[:limit] if c.isprintable()).strip()

    return text("Code", 64), text("Message", 200), text("Region", 32) or None


class Signer:
    """boto3's S3 rules for one (profile, region, endpoint): which URL an operation goes
    to (endpoint, addressing style, region) and its SigV4 signature. Nothing is sent
    through boto3: the request then goes through reconcile's transport."""

    # a presigned URL's own auth parameters; what remains is the operation's own query
    _QUERY_AUTH = frozenset({"x-amz-algorithm", "x-amz-credential", "x-amz-date",
                             "x-amz-expires", "x-amz-signedheaders", "x-amz-signature",
                             "x-amz-security-token"})

    def __init__(self, session: Any, client: Any, anonymous: bool) -> None:
        self.session, self.client, self.anonymous = session, client, anonymous
        name = client.meta.region_name
        self.region = "us-east-1" if name in (None, "aws-global") else name
        self._bases: dict[str, str] = {}

    def url(self, operation: str, params: dict[str, Any]) -> str:
        """The URL boto3 would send ``operation`` to, without any credential in it.

        Object requests (a HEAD or GET per file, thousands at lock) reuse the bucket's
        base URL: botocore's endpoint rules take ~0.6 ms a call, and they depend on the
        bucket, not the key. Keys are quoted as botocore quotes them ('/' kept)."""
        from urllib.parse import parse_qsl, quote, urlencode

        bucket = params["Bucket"]
        if operation in ("get_object", "head_object") and set(params) <= {
                "Bucket", "Key", "VersionId", "ChecksumMode"}:
            base = self._bases.get(bucket)
            if base is None:
                probe = urlsplit(self._presign("head_object", {"Bucket": bucket, "Key": "k"}))
                base = probe._replace(path=probe.path[:-2], query="").geturl()
                self._bases[bucket] = base
            url = base + "/" + quote(params["Key"], safe="/~")
            if "VersionId" in params:
                url += "?versionId=" + _quote(params["VersionId"])
            return url
        parts = urlsplit(self._presign(operation, params))
        query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)
                 if k.lower() not in self._QUERY_AUTH]
        return parts._replace(query=urlencode(query, quote_via=_quote)).geturl()

    def _presign(self, operation: str, params: dict[str, Any]) -> str:
        from botocore.exceptions import BotoCoreError

        try:
            return self.client.generate_presigned_url(operation, Params=params)
        except BotoCoreError as e:
            raise SourceError(f"s3://{params['Bucket']}: {e}") from None

    def sign(self, method: str, url: str, headers: dict[str, str], bucket: str,
             payload: str | None = None) -> dict[str, str]:
        """The headers that sign this request (Authorization, X-Amz-Date, any session
        token): no credential ever sits in a URL, where proxies and logs see it."""
        if self.anonymous:
            return dict(headers)
        from botocore.exceptions import BotoCoreError

        from .sigv4 import sign

        try:
            credentials = self.session.get_credentials()
            if credentials is None:
                raise AuthRequired(f"s3://{bucket}: no AWS credentials found",
                                   hint=CREDENTIALS_HINT)
            frozen = credentials.get_frozen_credentials()  # refreshed when near expiry
        except BotoCoreError as e:  # an SSO session expired, a broken credential_process …
            raise AuthRequired(f"s3://{bucket}: AWS credentials: {e}",
                               hint=CREDENTIALS_HINT) from None
        return sign(method, url, headers, access_key=frozen.access_key,
                    secret_key=frozen.secret_key, token=frozen.token, region=self.region,
                    **({"payload": payload} if payload else {}))


def _quote(value: str, safe: str = "", encoding: Any = None, errors: Any = None) -> str:
    """Query encoding as SigV4 canonicalises it (RFC 3986 unreserved kept, '~' too)."""
    from urllib.parse import quote

    return quote(value, safe="-_.~", encoding=encoding, errors=errors)


_signers: dict[tuple[Any, ...], Signer | EnvSigner] = {}
_signers_lock = threading.Lock()


def _signer(profile: str | None, region: str | None, endpoint: str | None, anonymous: bool,
            style: str, key: str) -> Signer | EnvSigner:
    """One per (profile, region, endpoint, …): a boto3 session costs ~0.1 s."""
    ident = (profile, region, endpoint, anonymous, style)
    with _signers_lock:
        if ident not in _signers:
            _signers[ident] = _make_signer(profile, region, endpoint, anonymous, style, key)
        return _signers[ident]


class EnvSigner:
    """The ``Signer`` for the common case of an S3-compatible server (MinIO, SeaweedFS,
    Ceph) given by ``endpoint`` with path-style URLs and its keys in AWS_ACCESS_KEY_ID /
    AWS_SECRET_ACCESS_KEY: what boto3 would find is plain, so nothing of botocore is
    loaded for the object requests that apply makes. Importing boto3 and building its S3
    client cost ~0.2 s and 37 MB of resident memory here, a third of an apply's peak.
    Anything else (a listing at lock, a put to the team cache) goes to boto3's ``Signer``,
    made when first needed. tests/test_sigv4.py checks the URLs equal botocore's."""

    def __init__(self, endpoint: str, region: str, anonymous: bool,
                 fallback: Any) -> None:
        self.endpoint, self.region, self.anonymous = endpoint, region, anonymous
        self._fallback = fallback
        self._full: Signer | None = None

    @property
    def full(self) -> Signer:
        if self._full is None:
            self._full = self._fallback()
        return self._full

    def url(self, operation: str, params: dict[str, Any]) -> str:
        from urllib.parse import quote

        if operation not in ("get_object", "head_object") or not set(params) <= {
                "Bucket", "Key", "VersionId", "ChecksumMode"}:
            return self.full.url(operation, params)
        url = f"{self.endpoint}/{params['Bucket']}/{quote(params['Key'], safe='/~')}"
        if "VersionId" in params:
            url += "?versionId=" + _quote(params["VersionId"])
        return url

    def sign(self, method: str, url: str, headers: dict[str, str], bucket: str,
             payload: str | None = None) -> dict[str, str]:
        import os

        from .sigv4 import sign

        if self.anonymous:
            return dict(headers)
        return sign(method, url, headers, access_key=os.environ["AWS_ACCESS_KEY_ID"],
                    secret_key=os.environ["AWS_SECRET_ACCESS_KEY"],
                    token=os.environ.get("AWS_SESSION_TOKEN")
                    or os.environ.get("AWS_SECURITY_TOKEN") or None,
                    region=self.region, **({"payload": payload} if payload else {}))


def _env_signer(profile: str | None, region: str | None, endpoint: str | None,
                anonymous: bool, style: str) -> tuple[str, str] | None:
    """(endpoint, region) when boto3 could only find what ``EnvSigner`` reads; else None.

    boto3 takes the environment's keys before any profile unless a profile is named, and
    the region from the environment before the config file; any named profile, a
    missing region, or virtual-host/auto URLs (endpoint rules) leave it to boto3."""
    import os

    env = os.environ
    if endpoint is None or style != "path" or profile or env.get("AWS_PROFILE") \
            or env.get("AWS_DEFAULT_PROFILE"):
        return None
    if not anonymous and not (env.get("AWS_ACCESS_KEY_ID") and env.get("AWS_SECRET_ACCESS_KEY")):
        return None
    region = region or env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION")
    if not region:
        return None
    parts = urlsplit(endpoint)
    if parts.path.strip("/"):  # a path under the server: botocore's rules decide
        return None
    return f"{parts.scheme}://{parts.netloc}", region


def _make_signer(profile: str | None, region: str | None, endpoint: str | None,
                 anonymous: bool, style: str, key: str) -> Signer | EnvSigner:
    plain = _env_signer(profile, region, endpoint, anonymous, style)
    if plain is not None:
        return EnvSigner(*plain, anonymous, lambda: _boto_signer(
            profile, region, endpoint, anonymous, style, key))
    return _boto_signer(profile, region, endpoint, anonymous, style, key)


def _boto_signer(profile: str | None, region: str | None, endpoint: str | None,
                 anonymous: bool, style: str, key: str) -> Signer:
    import logging

    import boto3
    import botocore
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ProfileNotFound

    # botocore's debug log shows session tokens and access key ids in clear
    for name in ("boto3", "botocore", "s3transfer", "urllib3"):
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    try:
        session = boto3.Session(profile_name=profile)
    except ProfileNotFound:
        raise ConfigError(f"models.{key}.source.s3.profile: AWS profile {profile!r} is not in"
                          " the AWS config or credentials file",
                          hint="list profiles with `aws configure list-profiles`; files:"
                          " AWS_CONFIG_FILE, AWS_SHARED_CREDENTIALS_FILE (default ~/.aws)") from None
    # presigning needs some credentials; the URL it gives is all that is used of it
    config = Config(signature_version=botocore.UNSIGNED if anonymous else "s3v4",
                    s3={"addressing_style": style},
                    request_checksum_calculation="when_required",
                    response_checksum_validation="when_required")
    try:
        client = session.client("s3", region_name=region, endpoint_url=endpoint, config=config,
                                aws_access_key_id="url-only", aws_secret_access_key="url-only")
    except BotoCoreError as e:
        raise ConfigError(f"models.{key}.source.s3: {e}") from None
    return Signer(session, client, anonymous)


SOURCE = S3Source
