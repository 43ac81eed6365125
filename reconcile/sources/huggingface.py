"""`source.huggingface`: a Hub repo at a revision, resolved without downloading weights.

    revision → commit   GET /api/{type}s/{repo}/revision/{rev}   (skipped for a full sha)
    file list           GET /api/{type}s/{repo}/tree/{commit}?recursive=true (paginated)
    bytes               GET /{prefix}{repo}/resolve/{commit}/{path}  (302 → CDN, Range)

LFS/Xet files carry their sha256 and size in the listing, so `lock` fetches none of
them; only small git files are downloaded at lock time (into the store) to learn
their sha256. Blob names follow the Hub: LFS sha256, else the git blob id.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

from .. import settings
from ..errors import AuthRequired, Gated, NotFound, SourceError
from ..paths import check_relpath
from .base import HFIdentity, HttpSource, RemoteFile, Resolution

SHA1 = re.compile(r"^[0-9a-f]{40}$")
REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")
PREFIX = {"model": "", "dataset": "datasets/", "space": "spaces/"}


class HuggingFaceSource(HttpSource):
    type = "huggingface"
    OPTIONS: dict[str, Any] = {
        "repo": "str",
        "revision": "str",
        "files": "strlist",
        "exclude": "strlist",
        "repoType": "enum:model|dataset|space",
    }

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        repo = opts.get("repo")
        if not repo:
            raise ValueError('repo: required, e.g. repo = "google-bert/bert-base-uncased"')
        if not REPO_ID.match(repo) or "--" in repo or ".." in repo:
            raise ValueError(f"repo: {repo!r} is not a Hub repo id ('org/name' or 'name')")
        return {
            "repo": repo,
            "revision": opts.get("revision", "main"),
            "files": list(opts.get("files", [])),
            "exclude": list(opts.get("exclude", [])),
            "repoType": opts.get("repoType", "model"),
        }

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        self.endpoint = settings.hf_endpoint()

    # --- transport ----------------------------------------------------------------

    def credential_fallbacks(self) -> list[Any]:
        from ..auth import hf_token_fallbacks

        return hf_token_fallbacks()

    @property
    def auth_headers(self) -> dict[str, str]:
        return self.credentials.headers()

    def entity(self, pin: dict[str, Any], file: Any = None) -> str | None:
        return pin.get("commit")  # a file at a commit never changes

    @property
    def repo(self) -> str:
        return self.options["repo"]

    @property
    def api(self) -> str:
        return f"{self.endpoint}/api/{self.options['repoType']}s/{self.repo}"

    def raise_for_status(self, r: Any) -> None:
        """The Hub's error vocabulary (X-Error-Code) → reconcile's errors."""
        if r.status_code < 400:
            return
        code = r.headers.get("X-Error-Code", "")
        kind = self.options["repoType"]
        page = f"{self.endpoint}/{PREFIX[kind]}{self.repo}"
        token_hint = "set HF_TOKEN (or auth.tokenEnvVar / auth.tokenFile in models.toml)"
        if code == "GatedRepo":
            granted = "your token has not been granted access" if r.status_code == 403 else \
                "no token was sent"
            raise Gated(
                f"{kind} {self.repo} is gated ({granted})",
                hint=f"visit {page}, accept the licence with your account, then {token_hint}",
            )
        if code == "RepoNotFound" or (r.status_code == 401 and not code):
            raise NotFound(
                f"{kind} {self.repo} not found on {self.endpoint} (or it is private)",
                hint=f"check the repo id; if it is private, {token_hint}",
            )
        if code == "RevisionNotFound":
            raise NotFound(f"{kind} {self.repo} has no revision '{self.options['revision']}'",
                           hint=f"see the branches and tags at {page}/tree/main")
        if code == "EntryNotFound" or r.status_code == 404:
            from ..http import scrub_url

            raise NotFound(f"{scrub_url(str(r.request.url))}: not found in {self.repo}")
        if r.status_code in (401, 403):
            raise AuthRequired(f"{kind} {self.repo}: HTTP {r.status_code}"
                               f" ({r.headers.get('X-Error-Message', 'access denied')})",
                               hint=token_hint)
        raise SourceError(f"{kind} {self.repo}: HTTP {r.status_code}")

    def _get_json(self, url: str) -> tuple[Any, Any]:
        from ..http import request, scrub_url, transient_status
        from ..transport import RetryPolicy

        def attempt() -> Any:
            r = request(self.client, "GET", url, headers=self.auth_headers)
            if (t := transient_status(r)) is not None:
                raise t
            return r

        try:
            r = RetryPolicy.of(self.decl.network).run(attempt)
        except SourceError as e:
            if not e.hint:
                e.hint = "check HF_ENDPOINT and your network"
            raise
        self.raise_for_status(r)
        try:
            return r.json(), r
        except ValueError:
            raise SourceError(f"{scrub_url(url)}: the server did not answer JSON") from None

    # --- the interface --------------------------------------------------------------

    @classmethod
    def check_pin(cls, pin: dict[str, Any], options: dict[str, Any]) -> None:
        super().check_pin(pin, options)
        if not SHA1.match(str(pin.get("commit", ""))):
            raise ValueError(f"commit: {pin.get('commit')!r} is not a 40-hex commit")
        if pin.get("repoType", "model") not in PREFIX:
            raise ValueError(f"repoType: {pin.get('repoType')!r} is not a repo type")

    def resolve(self) -> Resolution:
        rev = self.options["revision"]
        if SHA1.match(rev):
            commit = rev
        else:
            info, _ = self._get_json(f"{self.api}/revision/{quote(rev, safe='')}")
            commit = info.get("sha") if isinstance(info, dict) else None
            if not commit or not SHA1.match(commit):
                raise SourceError(f"{self.repo}@{rev}: the Hub answered without a commit sha")
        entries = self._list_tree(commit)
        files = [self._remote_file(e) for e in entries if e.get("type") == "file"]
        selected = self._select(files)
        return Resolution(
            pin={"repo": self.repo, "repoType": self.options["repoType"], "revision": rev,
                 "commit": commit},
            files=selected,
            hf=HFIdentity(self.repo, self.options["repoType"], commit, rev,
                          complete=len(selected) == len(files)),
        )

    def resolve_pinned(self, pin: dict[str, Any], files: Any = ()) -> Resolution:
        return self._resolve_with(revision=pin["commit"])

    def _list_tree(self, commit: str) -> list[dict[str, Any]]:
        url: str | None = f"{self.api}/tree/{commit}?recursive=true&expand=false"
        out: list[dict[str, Any]] = []
        while url:
            page, r = self._get_json(url)
            if not isinstance(page, list):
                raise SourceError(f"{self.repo}: unexpected tree listing")
            out.extend(page)
            nxt = r.links.get("next", {}).get("url")
            url = str(r.url.join(nxt)) if nxt else None
        return out

    def _remote_file(self, e: dict[str, Any]) -> RemoteFile:
        try:
            path = check_relpath(e["path"])
        except ValueError as err:
            raise SourceError(f"{self.repo}: the Hub listed an unsafe path: {err}") from None
        lfs = e.get("lfs")
        oid = e.get("oid")
        if lfs:
            sha = lfs.get("oid") or lfs.get("sha256")
            return RemoteFile(path, int(lfs.get("size", e["size"])), sha, blob=sha, lfs=True,
                              git_oid=oid)
        return RemoteFile(path, int(e["size"]), None, blob=oid, git_oid=oid)

    def _select(self, files: list[RemoteFile]) -> list[RemoteFile]:
        include = [_pattern(p) for p in self.options["files"]]
        exclude = [_pattern(p) for p in self.options["exclude"]]
        chosen = [f for f in files
                  if (not include or any(fnmatch.fnmatchcase(f.path, p) for p in include))
                  and not any(fnmatch.fnmatchcase(f.path, p) for p in exclude)]
        if not chosen and files:
            listing = ", ".join(sorted(f.path for f in files)[:30])
            raise NotFound(
                f"{self.repo}: no files matched files={self.options['files']}"
                f" exclude={self.options['exclude']}",
                hint=f"the repo has: {listing}" + (" …" if len(files) > 30 else ""),
            )
        return chosen

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        from ..http import stream

        kind = pin.get("repoType", "model")
        url = (f"{self.endpoint}/{PREFIX[kind]}{pin['repo']}/resolve/{pin['commit']}/"
               f"{quote(file.path)}")
        length = (file.size if end is None else end) - start
        yield from stream(lambda: self.client, url, start=start, end=end, length=length,
                          headers=self.auth_headers,
                          network=self.decl.network, raise_for_status=self.raise_for_status)


def _pattern(p: str) -> str:
    return p + "*" if p.endswith("/") else p


SOURCE = HuggingFaceSource
