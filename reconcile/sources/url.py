"""`source.url`: one file (or an archive to unpack) from http(s):// or file://.

A bare URL gives no content hash, so lock downloads it once, straight into the
store, and pins its sha256 (plus ETag / Last-Modified for `If-Range` resumes).
With ``sha256`` declared and a size the server states, lock downloads nothing.
``extract = true`` unpacks tar/zip safely (no escaping paths or links, no devices)
and the model is the unpacked tree; the archive's own sha256 is pinned too.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from urllib.request import url2pathname

from ..errors import AuthRequired, NotFound, SourceError
from ..paths import check_relpath
from .base import HttpSource, RemoteFile, Resolution, Unpacked

HEX64 = re.compile(r"^[0-9a-f]{64}$")


def _sri_to_hex(value: str) -> str:
    import base64

    if value.startswith("sha256-"):
        return base64.b64decode(value[7:]).hex()
    return value.lower()


class UrlSource(HttpSource):
    type = "url"
    OPTIONS: dict[str, Any] = {"url": "str", "sha256": "str", "extract": "bool", "filename": "str"}

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        url = opts.get("url")
        if not url:
            raise ValueError("url: required (http://, https:// or file://)")
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https", "file"):
            raise ValueError(f"url: scheme '{scheme}' is not supported; use http, https or file")
        if parts.username is not None or parts.password is not None:
            raise ValueError("url: has credentials in it (user:password@), which would be"
                             " committed and written to models.lock; use auth ="
                             " { usernameEnvVar = …, passwordEnvVar = … } or tokenEnvVar")
        out = {"url": url, "extract": bool(opts.get("extract", False))}
        if "sha256" in opts:
            sha = _sri_to_hex(opts["sha256"])
            if not HEX64.match(sha):
                raise ValueError("sha256: expected 64 hex digits or an SRI 'sha256-…' hash")
            out["sha256"] = sha
        name = opts.get("filename") or unquote(urlsplit(url).path.rsplit("/", 1)[-1]) or "download"
        try:
            out["filename"] = check_relpath(name)
        except ValueError as e:
            raise ValueError(f"filename: {e}") from None
        return out

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        self._unpacked = Unpacked(context.store)

    # --- transport ----------------------------------------------------------------

    def entity(self, pin: dict[str, Any], file: Any = None) -> str | None:
        """A strong ETag, else Last-Modified (what If-Range accepts); else nothing."""
        etag = pin.get("etag")
        if etag and not etag.startswith("W/"):
            return etag
        return pin.get("lastModified")

    def close(self) -> None:
        super().close()
        self._unpacked.close()

    def _raise_for_status(self, r: Any) -> None:
        from ..http import scrub_url

        url = scrub_url(str(r.request.url))
        if r.status_code in (401, 403):
            raise AuthRequired(f"{url}: HTTP {r.status_code}: access denied")
        if r.status_code == 404:
            raise NotFound(f"{url}: HTTP 404: not found", hint="check the url in models.toml")
        if r.status_code >= 400:
            raise SourceError(f"{url}: HTTP {r.status_code}")

    def _local(self, url: str) -> Path:
        return Path(url2pathname(urlsplit(url).path))

    def _open_url(self, url: str, start: int, end: int | None, if_range: str | None,
                  length: int | None = None) -> Iterator[bytes]:
        if urlsplit(url).scheme == "file":
            from ..transfer import iter_file

            try:
                yield from iter_file(self._local(url), start, end)
            except FileNotFoundError:
                raise NotFound(f"{url}: no such file") from None
            return
        from ..http import stream

        yield from stream(lambda: self.client, url, start=start, end=end, if_range=if_range,
                          length=length, network=self.decl.network,
                          headers=self.credentials.headers(),
                          raise_for_status=self._raise_for_status)

    def _head(self, url: str) -> tuple[int | None, dict[str, str]]:
        if urlsplit(url).scheme == "file":
            try:
                return self._local(url).stat().st_size, {}
            except FileNotFoundError:
                raise NotFound(f"{url}: no such file") from None
        from ..http import request, transient_status
        from ..transport import RetryPolicy

        def attempt() -> Any:
            r = request(self.client, "HEAD", url, headers=self.credentials.headers())
            if (t := transient_status(r)) is not None:
                raise t
            return r

        r = RetryPolicy.of(self.decl.network).run(attempt)
        self._raise_for_status(r)
        pin = {k: r.headers[h] for k, h in (("etag", "ETag"), ("lastModified", "Last-Modified"))
               if h in r.headers}
        length = r.headers.get("Content-Length")
        return (int(length) if length is not None else None), pin

    # --- the interface --------------------------------------------------------------

    def resolve(self) -> Resolution:
        url = self.options["url"]
        size, pin = self._head(url)
        pin["url"] = url
        name = self.options["filename"]
        sha = self.options.get("sha256")
        if not self.options["extract"]:
            known = sha if size is not None else None
            return Resolution(pin=pin, files=[RemoteFile(name, size, known)])
        return self._resolve_archive(pin, RemoteFile(name, size, sha))

    def _resolve_archive(self, pin: dict[str, Any], archive: RemoteFile) -> Resolution:
        from ..lockfile import LockedFile
        from ..transfer import fetch

        got = fetch(self, pin, LockedFile(archive.path, archive.size or 0, archive.sha256 or ""),
                    self.context.store, self.decl.network)
        pin = {**pin, "archiveSha256": got.sha256, "archiveSize": got.size}
        root = self._unpacked.root(got.sha256, self.options["filename"])
        return Resolution(pin=pin, files=self._unpacked.files(root))

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        if "archiveSha256" not in pin:
            length = (file.size if end is None else end) - start if file.size else None
            yield from self._open_url(pin["url"], start, end, self.entity(pin), length)
            return
        # a member of an archive: make sure the archive object is in the store, then read
        # the member from the unpacked copy (one download serves every member)
        from ..lockfile import LockedFile
        from ..transfer import fetch, iter_file

        store = self.context.store
        if not store.has_object(pin["archiveSha256"]):
            archive = LockedFile(self.options["filename"], pin["archiveSize"], pin["archiveSha256"])
            fetch(self, {k: v for k, v in pin.items() if not k.startswith("archive")}, archive,
                  store, self.decl.network)
        root = self._unpacked.root(pin["archiveSha256"], self.options["filename"])
        yield from iter_file(root / file.path, start, end)

    def default_hf_name(self) -> tuple[str, str]:
        return ("reconcile", self.decl.name)


SOURCE = UrlSource
