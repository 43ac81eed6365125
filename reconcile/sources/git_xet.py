"""`source.git-xet`: a repository whose large files are stored with Xet, pinned to a commit.

Xet changes how a host stores big files, not what a downloader needs (notes,
sources-ollama-xet.md part 2): git-xet itself implements uploads only, and every
Xet-backed file is still an ordinary LFS pointer that the host serves over plain
HTTP (Hugging Face's "bridge"). So:

* a Hugging Face URL (huggingface.co, or the ``HF_ENDPOINT`` mirror) goes through the
  Hugging Face source: the Hub's tree gives every file's sha256, the bridge the
  bytes, and the model lands in the HF cache where transformers looks;
* any other host is Git LFS (``source.git-lfs``); a server that offers only the
  ``xet`` transfer in its batch answer is refused at lock with the reason, never
  half-supported.

No Xet protocol code, no hf_xet dependency: nothing here pretends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from .. import settings
from .base import HttpSource, Resolution
from .git_lfs import REV, GitLfsSource, check_url
from .huggingface import REPO_ID, HuggingFaceSource

_KINDS = {"datasets": "dataset", "spaces": "space"}


def hub_repo(url: str) -> tuple[str, str] | None:
    """(repo id, repo type) when ``url`` names a repository on the Hub, else None."""
    parts, hub = urlsplit(url), urlsplit(settings.hf_endpoint())
    if parts.netloc.lower() not in {"huggingface.co", "hf.co", hub.netloc.lower()}:
        return None
    path = [p for p in parts.path.split("/") if p]
    kind = "model"
    if path and path[0] in _KINDS:
        kind, path = _KINDS[path[0]], path[1:]
    if path:
        path[-1] = path[-1].removesuffix(".git")
    repo = "/".join(path)
    return (repo, kind) if len(path) in (1, 2) and REPO_ID.match(repo) else None


class GitXetSource(HttpSource):
    type = "git-xet"
    OPTIONS: dict[str, Any] = {"url": "str", "rev": "str"}

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        url = opts.get("url", "")
        if url.startswith("xet://"):
            raise ValueError(f"url: {url!r}: xet:// named XetHub repositories, which now live"
                             " on Hugging Face; give the repository's https URL (e.g."
                             " https://huggingface.co/org/model)")
        if not url:
            raise ValueError('url: required, e.g. url = "https://huggingface.co/org/model"')
        if not opts.get("rev"):
            raise ValueError('rev: required: a branch, a tag or a full commit sha')
        if not REV.match(opts["rev"]):
            raise ValueError(f"rev: {opts['rev']!r} is not a branch, tag or commit name")
        return {"url": check_url(url), "rev": opts["rev"]}

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        hub = hub_repo(self.options["url"])
        if hub:
            options = {"repo": hub[0], "repoType": hub[1], "revision": self.options["rev"]}
            self.delegate: Any = HuggingFaceSource(
                dataclasses.replace(decl, source=HuggingFaceSource.check_options(options)),
                context)
        else:
            self.delegate = GitLfsSource(decl, context)

    @classmethod
    def check_pin(cls, pin: dict[str, Any], options: dict[str, Any]) -> None:
        if hub_repo(options["url"]):
            hub = hub_repo(options["url"])
            if pin.get("repo") not in (None, hub[0]):
                raise ValueError(f"repo: {pin.get('repo')!r} is not what models.toml declares")
        else:
            GitLfsSource.check_pin(pin, options)

    def resolve(self) -> Resolution:
        return self.delegate.resolve()

    def open(self, pin: dict[str, Any], file: Any, start: int = 0,
             end: int | None = None) -> Iterator[bytes]:
        return self.delegate.open(pin, file, start, end)

    def entity(self, pin: dict[str, Any], file: Any = None) -> str | None:
        return self.delegate.entity(pin, file)

    def default_hf_name(self) -> tuple[str, str]:
        return self.delegate.default_hf_name()

    def refresh_credentials(self) -> bool:
        return self.delegate.refresh_credentials()

    def close(self) -> None:
        self.delegate.close()


SOURCE = GitXetSource
