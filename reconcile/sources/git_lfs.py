"""`source.git-lfs`: a directory of any git repository, its big files in Git LFS, pinned
to a commit.

    rev → commit   `git ls-remote` (an annotated tag is peeled); a full sha as is
    tree           a bare partial clone per URL in the store (``cache/git/``), fetched
                   ``--depth 1 --filter=blob:limit=1024``: commit, trees, every LFS
                   pointer (always < 1024 bytes) and small files; no LFS object, no
                   history. A pointer gives path, size and sha256 (its oid) for free;
                   regular files are hashed from git's own objects.
    LFS bytes      the batch API (``download``, ``basic`` transfer) at the endpoint
                   git-lfs would use; each href (a CDN, with its own headers) goes
                   through the shared transfer engine and is asked for anew once it
                   expires. Checked at lock too (nothing downloaded): a missing object
                   or a server that offers only Xet fails there, not at apply.

The ``git`` program does the git side (protocol v2, partial clone, the user's proxy,
certificates and credential helpers, so what works for `git clone` works here);
git-lfs need not be installed. Secrets reach git only through its environment
(``GIT_CONFIG_*``), never a command line, a URL or the clone's config.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import AuthRequired, ConfigError, NotFound, SourceError, Transient
from ..paths import check_relpath
from .base import HttpSource, RemoteFile, Resolution

SHA1 = re.compile(r"^[0-9a-f]{40}$")
# a branch, tag or ref name as git allows it, never an option (no leading '-')
REV = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)[A-Za-z0-9._/+-]{1,255}$")
POINTER_MAX = 1024  # git-lfs: a pointer is always smaller (notes: verified at the boundary)
LINK_MAX = 4096  # PATH_MAX: the longest symlink target a checkout can make
LFS_MEDIA = "application/vnd.git-lfs+json"
BATCH = 100  # objects per batch request, git-lfs's default
SMALL_READ = 4 << 20  # regular files up to this size are read whole through one process
HREF_MARGIN = 30.0  # seconds (at most a quarter of its life) an href is renewed before expiry
POINTER_LINE = re.compile(rb"^([a-z0-9.-]+) (.*)$")
LEGACY_VERSION = b"https://hawser.github.com/spec/v1"
VERSION = b"https://git-lfs.github.com/spec/v1"


class MalformedPointer(ValueError):
    """A blob that claims to be an LFS pointer but is not one git-lfs would read."""


@dataclass(frozen=True)
class Pointer:
    oid: str
    size: int


def parse_pointer(data: bytes) -> Pointer | None:
    """The pointer in ``data``; None when it is a plain file. Raises MalformedPointer
    for a blob that starts like a pointer yet breaks git-lfs's rules (the user would get
    the pointer text from `git clone`, so it is refused, never guessed at)."""
    if len(data) >= POINTER_MAX or not data.startswith(b"version "):
        return None
    text = data.replace(b"\r\n", b"\n")
    lines = text[:-1].split(b"\n") if text.endswith(b"\n") else text.split(b"\n")
    first = POINTER_LINE.match(lines[0])
    if not first or first.group(2) not in (VERSION, LEGACY_VERSION):
        return None  # some other text file that starts with "version "
    fields: dict[bytes, bytes] = {}
    keys = []
    for line in lines[1:]:
        m = POINTER_LINE.match(line)
        if not m:
            raise MalformedPointer(f"line {line[:40]!r} is not 'key value'")
        keys.append(m.group(1))
        fields[m.group(1)] = m.group(2)
    ext = [k for k in keys if k.startswith(b"ext-")]
    if keys != ext + sorted(set(keys) - set(ext)) or set(keys) - set(ext) != {b"oid", b"size"}:
        raise MalformedPointer("expected the keys oid and size (sorted, after any ext-)")
    oid = re.fullmatch(rb"sha256:([0-9a-f]{64})", fields[b"oid"])
    if not oid:
        raise MalformedPointer(f"oid {fields[b'oid'][:80]!r} is not sha256:<64 lowercase hex>")
    if not re.fullmatch(rb"[0-9]{1,19}", fields[b"size"]):
        raise MalformedPointer(f"size {fields[b'size'][:40]!r} is not a byte count")
    return Pointer(oid.group(1).decode(), int(fields[b"size"]))


def lfs_endpoint(url: str) -> str:
    """git-lfs's derived endpoint: ``<url>.git/info/lfs`` (one ``.git``, no slash)."""
    parts = urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith(".git"):
        path += ".git"
    return urlunsplit((parts.scheme, parts.netloc, path + "/info/lfs", "", ""))


def check_url(url: str, what: str = "url") -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        hint = (" (the LFS batch API is spoken over https: give the repository's https URL)"
                if parts.scheme in ("ssh", "git") or url.startswith("git@") else "")
        raise ValueError(f"{what}: {url!r} is not an http(s) URL of a git repository{hint}")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{what}: has credentials in it (user:password@), which would be"
                         " committed and written to models.lock; use auth = {"
                         " usernameEnvVar = …, passwordEnvVar = … }, or your git credential"
                         " helper")
    if parts.query or parts.fragment:
        raise ValueError(f"{what}: {url!r} has a query or fragment")
    return url.rstrip("/")


def same_origin(url: str, other: str) -> bool:
    """Whether credentials for ``other`` may go to ``url``: the same scheme, host and
    port. The host alone is not enough: ``http://host/`` would get an https repository's
    token in the clear."""
    from ..transport import origin

    return origin(url) == origin(other)


def check_endpoint(endpoint: str, repo: str) -> None:
    """An https repository's LFS endpoint must be https too: the batch request carries
    the repository's credentials (or the git credential helper's) and names every
    object; refused with the reason rather than sent in the clear."""
    if urlsplit(repo).scheme == "https" and urlsplit(endpoint).scheme != "https":
        raise SourceError(f"{repo}: .lfsconfig names the LFS endpoint {endpoint}, plain "
                          "http for an https repository; refused (credentials would travel "
                          "in the clear)",
                          hint="the repository's .lfsconfig lfs.url must be an https URL; "
                          "ask its owner to fix it, or pin a commit before the change")


class GitLfsSource(HttpSource):
    type = "git-lfs"
    OPTIONS: dict[str, Any] = {"url": "str", "baseUrl": "str", "repo": "str", "rev": "str",
                               "subdir": "str"}

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        url = opts.get("url")
        if not url and opts.get("baseUrl") and opts.get("repo"):
            url = opts["baseUrl"].rstrip("/") + "/" + opts["repo"].strip("/")
        if not url:
            raise ValueError('url: required, e.g. url = "https://git.example.com/org/models"'
                             ' (or baseUrl and repo)')
        out = {"url": check_url(url)}
        rev = opts.get("rev")
        if not rev:
            raise ValueError('rev: required: a branch, a tag or a full commit sha, e.g.'
                             ' rev = "v1.0"')
        if not REV.match(rev):
            raise ValueError(f"rev: {rev!r} is not a branch, tag or commit name")
        out["rev"] = rev
        if opts.get("subdir"):
            try:
                out["subdir"] = check_relpath(opts["subdir"]).rstrip("/")
            except ValueError as e:
                raise ValueError(f"subdir: {e}") from None
        return out

    @classmethod
    def check_pin(cls, pin: dict[str, Any], options: dict[str, Any]) -> None:
        super().check_pin(pin, options)
        if not SHA1.match(str(pin.get("commit", ""))):
            raise ValueError(f"commit: {pin.get('commit')!r} is not a full commit sha")
        if pin.get("subdir", "") != options.get("subdir", ""):
            raise ValueError(f"subdir: {pin.get('subdir')!r} is not what models.toml declares")

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        self.url: str = self.options["url"]
        self.subdir: str = self.options.get("subdir", "")
        self._lock = threading.RLock()
        self._tree: dict[str, Any] | None = None  # commit -> listing, once per source
        self._hrefs: dict[str, tuple[str, dict[str, str], float]] = {}
        self._endpoint: str | None = None
        self._git_auth: dict[str, str] | None = None  # from `git credential fill`
        self._git_auth_origin: tuple[str, str, int | None] | None = None  # for this only
        self._blobs: BlobReader | None = None

    # --- git --------------------------------------------------------------------------

    @property
    def clone(self) -> Path:
        """The bare partial clone this URL shares with every model and project."""
        digest = hashlib.sha256(self.url.encode()).hexdigest()[:20]
        name = re.sub(r"[^A-Za-z0-9._-]", "_", self.url.rsplit("/", 1)[-1])[:40]
        return self.context.store.root / "cache" / "git" / f"{digest}-{name}"

    def _git_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_CONFIG_")
               or k in ("GIT_CONFIG_GLOBAL", "GIT_CONFIG_NOSYSTEM", "GIT_CONFIG_SYSTEM")}
        env.update(GIT_TERMINAL_PROMPT="0", GIT_ALLOW_PROTOCOL="http:https",
                   GIT_LFS_SKIP_SMUDGE="1", LC_ALL="C", GIT_NO_REPLACE_OBJECTS="1")
        config = {"protocol.version": "2", "core.askPass": ""}
        auth = self.credentials.headers().get("Authorization")
        if auth:  # sent to the git host only; lives in this process's environment only
            config["http.extraHeader"] = f"Authorization: {auth}"
        if self.decl.network.proxy:
            config["http.proxy"] = self.decl.network.proxy
        if self.decl.network.ca_bundle:  # for the git host (LFS hrefs go through transport)
            env["GIT_SSL_CAINFO"] = self.decl.network.ca_bundle
        env["GIT_CONFIG_COUNT"] = str(len(config))
        for i, (k, v) in enumerate(config.items()):
            env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = k, v
        return env

    def _git(self, *args: str, input: bytes | None = None, what: str = "") -> bytes:
        """Run git; its failure becomes one line saying what went wrong."""
        cmd = ["git", *(("-C", str(self.clone)) if self.clone.exists() else ()), *args]
        try:
            p = subprocess.run(cmd, input=input, capture_output=True, env=self._git_env(),
                               timeout=max(60.0, self.decl.network.read_timeout))
        except FileNotFoundError:
            raise SourceError("git is not installed; source.git-lfs needs the git program",
                              hint="install git (any version since 2.29)") from None
        except subprocess.TimeoutExpired:
            raise Transient(f"{self.url}: git {args[0]} timed out") from None
        if p.returncode != 0:
            raise self._git_error(p.stderr.decode("utf-8", "replace"), what)
        return p.stdout

    def _git_error(self, stderr: str, what: str) -> Exception:
        lines = [ln.strip() for ln in stderr.splitlines() if ln.strip()
                 and not ln.startswith(("hint:", "warning:"))]
        text = "".join(c for c in (lines[-1] if lines else "git failed") if c.isprintable())
        low = stderr.lower()
        if ("authentication failed" in low or "could not read username" in low
                or re.search(r"returned error: 40[13]\b", low)
                or "terminal prompts disabled" in low):
            return AuthRequired(f"{self.url}: authentication required",
                                hint="set auth.usernameEnvVar/passwordEnvVar (or tokenEnvVar) in"
                                " models.toml, or store a credential for this host in your git"
                                " credential helper (what works for `git clone` works here)")
        if "certificate" in low and ("verif" in low or "problem" in low):
            return SourceError(f"{self.url}: the server's TLS certificate is not trusted ({text})",
                               hint="if a company CA signs it, set network.caBundle to that CA's"
                               " PEM file in models.toml")
        if re.search(r"repository '.*' not found|returned error: 404\b", low):
            return NotFound(f"{self.url}: repository not found",
                            hint="check url in models.toml")
        if "couldn't find remote ref" in low or "not our ref" in low or "unadvertised" in low:
            gone = bool(re.search(r"\bcommit [0-9a-f]{40}\b", what or ""))
            return NotFound(f"{self.url}: {what or 'the revision'} does not exist on the server",
                            hint=f"the branch was rewritten (a force-push) and the server no"
                            f" longer has the commit models.lock pins; `reconcile lock"
                            f" --upgrade {self.decl.key}` pins what the branch names now"
                            " (review the change)" if gone else None)
        if any(s in low for s in ("could not resolve host", "failed to connect",
                                  "connection refused", "timed out", "connection reset",
                                  "couldn't connect", "unable to access")):
            return Transient(f"{self.url}: {text}")
        return SourceError(f"{self.url}: git: {text}")

    def _retrying(self, fn: Any) -> Any:
        from ..transport import RetryPolicy

        return RetryPolicy.of(self.decl.network).run(fn)

    def commit_of(self, rev: str) -> str:
        """The full commit a branch, tag or sha names on the server now."""
        if SHA1.match(rev):
            return rev
        if re.fullmatch(r"[0-9a-f]{4,39}", rev):
            raise ConfigError(f"models.{self.decl.key}.source.{self.type}.rev: {rev!r} looks like"
                              " an abbreviated commit; give all 40 hex digits (a server cannot"
                              " resolve a short sha)")
        out = self._retrying(lambda: self._git("ls-remote", "--", self.url, rev, rev + "^{}",
                                               what=f"rev {rev!r}"))
        refs = {}
        for line in out.decode("utf-8", "replace").splitlines():
            sha, _, ref = line.partition("\t")
            refs[ref] = sha
        for ref in (rev, f"refs/tags/{rev}", f"refs/heads/{rev}"):  # git's own order
            if SHA1.match(refs.get(ref, "")):
                return refs.get(f"{ref}^{{}}", refs[ref])  # an annotated tag: its commit
        raise NotFound(f"{self.url}: no branch or tag named {rev!r}",
                       hint="check rev in models.toml (`git ls-remote URL` lists them)")

    def ensure_commit(self, commit: str) -> None:
        """The commit, its trees and its small blobs in the shared partial clone."""
        with self._store_lock():
            if not self.clone.exists():
                tmp = self.clone.with_name(self.clone.name + f".tmp{os.getpid()}")
                tmp.parent.mkdir(parents=True, exist_ok=True)
                self._git("init", "-q", "--bare", str(tmp))
                os.replace(tmp, self.clone)
            if self._has(f"{commit}^{{commit}}"):
                return
            self._retrying(lambda: self._git(
                "fetch", "-q", "--depth", "1", f"--filter=blob:limit={POINTER_MAX}", "--no-tags",
                "--no-write-fetch-head", "--recurse-submodules=no", self.url, commit,
                what=f"commit {commit}"))
            if not self._has(f"{commit}^{{commit}}"):
                raise NotFound(f"{self.url}: {commit} is not a commit")

    def _store_lock(self) -> Any:
        return self.context.store.lock("git-" + self.clone.name)

    def _has(self, spec: str) -> bool:
        return subprocess.run(["git", "-C", str(self.clone), "cat-file", "-e", spec],
                              capture_output=True, env=self._git_env()).returncode == 0

    def listing(self, commit: str) -> dict[str, Any]:
        """path → (mode, blob id) of the model's tree at ``commit``, the blobs the clone
        lacks, the small files it has (read in one git process) and which of them are
        LFS pointers (path → Pointer, or the MalformedPointer it is)."""
        with self._lock:
            if self._tree is not None and self._tree["commit"] == commit:
                return self._tree
            self.ensure_commit(commit)
            args = ["ls-tree", "-r", "-z", "--full-tree", commit]
            if self.subdir:
                args += ["--", self.subdir + "/"]
            entries = {}
            for rec in self._git(*args).split(b"\0"):
                if not rec:
                    continue
                meta, _, path = rec.partition(b"\t")
                mode, kind, oid = meta.decode().split(" ")
                entries[path.decode("utf-8", "surrogateescape")] = (mode, kind, oid)
            if self.subdir and not entries:
                raise NotFound(f"{self.url}: no directory {self.subdir!r} at commit {commit}",
                               hint="check subdir in models.toml")
            blobs = {oid for _m, kind, oid in entries.values() if kind == "blob"}
            # The blobs the clone lacks are not only files of 1 KiB or more: git fetches a
            # commit lazily (commit and trees, no blob) when a command first asks for it,
            # so a revision another lock reached that way lacks its pointers too. All are
            # fetched before any is judged: a lock must not depend on what the clone holds.
            missing = {ln[1:] for ln in self._git("rev-list", "--objects", "--missing=print",
                                                   commit).decode().split("\n")
                       if ln.startswith("?")} & blobs
            self._fetch_blobs(missing)
            links = {oid for mode, _k, oid in entries.values() if mode == "120000"}
            small = self._read_small(sorted(blobs), links)
            pointers: dict[str, Pointer | MalformedPointer] = {}
            for path, (_m, _kind, oid) in entries.items():
                try:
                    ptr = parse_pointer(small.get(oid, b""))
                except MalformedPointer as e:
                    ptr = e
                if ptr is not None:
                    pointers[path] = ptr
            self._tree = {"commit": commit, "entries": entries, "small": small,
                          "pointers": pointers}
            return self._tree

    def _read_small(self, oids: list[str], links: set[str] = frozenset()) -> dict[str, bytes]:
        """The bytes of every blob under the pointer size, and of every symlink (a target
        may be as long as a path: PATH_MAX), in one git process."""
        if not oids:
            return {}
        checks = self._git("cat-file", "--batch-check", input="\n".join(oids).encode() + b"\n")
        small = [ln.split()[0] for ln in checks.decode().splitlines()
                 if len(ln.split()) == 3 and int(ln.split()[2]) < (
                     LINK_MAX if ln.split()[0] in links else POINTER_MAX)]
        if not small:
            return {}
        out = self._git("cat-file", "--batch", input="\n".join(small).encode() + b"\n")
        blobs, i = {}, 0
        while i < len(out):
            nl = out.index(b"\n", i)
            oid, _kind, size = out[i:nl].decode().split()
            start = nl + 1
            blobs[oid] = out[start:start + int(size)]
            i = start + int(size) + 1
        return blobs

    def _fetch_blobs(self, missing: set[str]) -> None:
        """The model's blobs the partial clone lacks, in one request (not one per blob, as
        git's lazy fetch would)."""
        oids = sorted(missing)
        if not oids:
            return
        with self._store_lock():
            self._retrying(lambda: self._git(
                "-c", "fetch.negotiationAlgorithm=noop", "fetch", "-q", "--no-tags",
                "--no-write-fetch-head", "--recurse-submodules=no", "--filter=blob:none",
                "--stdin", self.url, input="\n".join(oids).encode() + b"\n",
                what="the repository's files"))

    # --- the tree ---------------------------------------------------------------------

    def resolve(self) -> Resolution:
        rev = self.options["rev"]
        commit = self.commit_of(rev)
        tree = self.listing(commit)
        files, lfs = [], []
        prefix = self.subdir + "/" if self.subdir else ""
        for full, (mode, kind, oid) in sorted(tree["entries"].items()):
            path = full[len(prefix):]
            if kind == "commit":
                import sys  # a note, not a failure: `git clone` leaves it empty too

                print(f"warning: models.{self.decl.key}: {full} is a git submodule; not"
                      " included", file=sys.stderr)
                continue
            try:
                check_relpath(path)
            except ValueError as e:
                raise SourceError(f"{self.url}: {full}: a path that cannot be installed ({e})") \
                    from None
            if mode == "120000":
                target = tree["small"].get(oid)
                if target is None:
                    raise SourceError(f"{self.url}: {full}: a symlink target over"
                                      f" {LINK_MAX} bytes")
                files.append(RemoteFile(path, type="l", target=target.decode("utf-8",
                                                                              "surrogateescape"),
                                        git_oid=oid))
                continue
            executable = mode == "100755"
            ptr = tree["pointers"].get(full)
            if isinstance(ptr, MalformedPointer):
                raise SourceError(f"{self.url}: {full} at {commit[:12]}: malformed LFS"
                                  f" pointer ({ptr})", hint="fix the file in the repository"
                                  " (`git lfs pointer --check --file`)")
            data = tree["small"].get(oid)
            if ptr is not None:
                rf = RemoteFile(path, ptr.size, ptr.oid, executable, blob=ptr.oid, lfs=True,
                                git_oid=oid)
                lfs.append(rf)
                files.append(rf)
            elif data is not None:
                files.append(RemoteFile(path, len(data), hashlib.sha256(data).hexdigest(),
                                        executable, blob=oid, git_oid=oid))
            else:  # a regular file ≥ 1 KiB: hashed at lock time from git's bytes
                files.append(RemoteFile(path, None, None, executable, blob=oid, git_oid=oid))
        if not files:
            raise NotFound(f"{self.url}: no files at {rev} ({commit[:12]})")
        if lfs:
            self._batch(lfs, commit)  # the server has them, over a transfer we speak
        pin = {"url": self.url, "rev": rev, "commit": commit}
        if self.subdir:
            pin["subdir"] = self.subdir
        return Resolution(pin=pin, files=files)

    def resolve_pinned(self, pin: dict[str, Any], files: Any = ()) -> Resolution:
        return self._resolve_with(rev=pin["commit"])

    def default_hf_name(self) -> tuple[str, str]:
        parts = [p for p in urlsplit(self.url).path.split("/") if p]
        name = parts[-1].removesuffix(".git") if parts else self.decl.name
        if self.subdir:
            name = f"{name}-{self.subdir.replace('/', '-')}"
        return (parts[-2] if len(parts) > 1 else "reconcile", name)

    # --- LFS --------------------------------------------------------------------------

    def endpoint(self, commit: str) -> str:
        """git-lfs's rule: lfs.url of the commit's .lfsconfig, else <url>.git/info/lfs."""
        if self._endpoint is None:
            self.ensure_commit(commit)
            url = None
            if self._has(f"{commit}:.lfsconfig"):
                try:
                    url = self._git("config", "--blob", f"{commit}:.lfsconfig", "--get",
                                    "lfs.url").decode().strip() or None
                except SourceError:
                    url = None  # no lfs.url in it
            if url:
                try:
                    url = check_url(url, ".lfsconfig lfs.url")
                except ValueError as e:
                    raise SourceError(f"{self.url}: {e}") from None
                check_endpoint(url, self.url)
            self._endpoint = url or lfs_endpoint(self.url)
        return self._endpoint

    def _auth_for(self, url: str) -> dict[str, str]:
        """Credentials for ``url``: the model's auth at the repository's own origin
        (scheme, host and port) only; otherwise what the user's git credential helper
        gave for exactly that origin."""
        from ..transport import origin

        if same_origin(url, self.url) and not self.credentials.anonymous:
            return self.credentials.headers()
        if self._git_auth and self._git_auth_origin == origin(url):
            return self._git_auth
        return {}

    def _credential_fill(self, url: str) -> bool:
        """Ask git's credential helpers (never a prompt) for ``url``'s host; True when
        they had something. Nothing is stored or approved."""
        import base64

        parts = urlsplit(url)
        query = f"protocol={parts.scheme}\nhost={parts.netloc}\npath={parts.path.lstrip('/')}\n\n"
        env = self._git_env()
        p = subprocess.run(["git", "credential", "fill"], input=query.encode(), env=env,
                           capture_output=True, timeout=60)
        if p.returncode != 0:
            return False
        got = dict(ln.partition("=")[::2] for ln in p.stdout.decode().splitlines() if "=" in ln)
        if not got.get("password"):
            return False
        from ..transport import origin

        pair = base64.b64encode(f"{got.get('username', '')}:{got['password']}".encode()).decode()
        self._git_auth = {"Authorization": f"Basic {pair}"}
        self._git_auth_origin = origin(url)
        return True

    def _batch(self, files: list[Any], commit: str) -> None:
        """Ask the batch API for download actions; cache hrefs with their expiry."""
        from ..http import call
        from ..transport import RetryPolicy

        url = self.endpoint(commit) + "/objects/batch"
        for i in range(0, len(files), BATCH):
            chunk = files[i:i + BATCH]
            body = json.dumps({"operation": "download", "transfers": ["basic"],
                               "hash_algo": "sha256",
                               "objects": [{"oid": f.sha256, "size": f.size} for f in chunk]
                               }).encode()

            def attempt(body: bytes = body) -> Any:
                headers = {"Accept": LFS_MEDIA, "Content-Type": LFS_MEDIA,
                           **self._auth_for(url)}
                return call("POST", url, headers, self.decl.network, body=body)

            r = RetryPolicy.of(self.decl.network).run(attempt)
            if r.status_code == 401 and not self._auth_for(url) and self._credential_fill(url):
                r = RetryPolicy.of(self.decl.network).run(attempt)
            self._take(r, chunk, url)

    def _take(self, r: Any, files: list[Any], url: str) -> None:
        by_oid = {f.sha256: f for f in files}
        try:
            answer = json.loads(r.content) if r.content else {}
        except ValueError:
            answer = None
        message = _printable(str(answer.get("message", ""))) if isinstance(answer, dict) else ""
        if r.status_code in (401, 403):
            raise AuthRequired(f"{url}: authentication required (HTTP {r.status_code})",
                               hint="set auth.usernameEnvVar/passwordEnvVar (or tokenEnvVar) in"
                               " models.toml, or store a credential for this host in your git"
                               " credential helper")
        if r.status_code == 404:  # giftless: none of them was found (a 200 names each)
            raise self._missing(files[0], message)
        if r.status_code == 422 and "transfer" in message.lower():
            raise self._xet_only(files[0].path)
        if r.status_code >= 300 or not isinstance(answer, dict):
            raise SourceError(f"{url}: HTTP {r.status_code}" + (f": {message}" if message
                                                                 else ": not an LFS batch answer"))
        transfer = answer.get("transfer", "basic")
        if transfer != "basic":
            raise self._xet_only(files[0].path) if transfer == "xet" else SourceError(
                f"{url}: the server chose the {_printable(str(transfer))!r} transfer; reconcile"
                " speaks the basic one")
        now = time.monotonic()
        wall = time.time()
        for obj in answer.get("objects", []):
            f = by_oid.get(obj.get("oid")) if isinstance(obj, dict) else None
            if f is None:
                continue
            if obj.get("error"):
                err = obj["error"]
                raise self._missing(f, _printable(str(err.get("message", ""))),
                                    err.get("code"))
            action = (obj.get("actions") or {}).get("download")
            if not isinstance(action, dict) or not isinstance(action.get("href"), str):
                raise SourceError(f"{url}: no download action for {f.path}")
            href = action["href"]
            if urlsplit(href).scheme not in ("http", "https"):
                raise SourceError(f"{url}: the href for {f.path} is not http(s)")
            header = {str(k): str(v) for k, v in (action.get("header") or {}).items()}
            lifetime = _lifetime(action, wall)  # used until a margin before it ends
            self._hrefs[f.sha256] = (href, header,
                                     now + lifetime - min(HREF_MARGIN, lifetime / 4))
        absent = [f for f in files if f.sha256 not in self._hrefs]
        if absent:
            raise self._missing(absent[0], "not in the batch answer")

    def _missing(self, f: Any, message: str, code: Any = 404) -> SourceError:
        return NotFound(f"{self.url}: LFS object of {f.path} ({f.sha256[:12]}…, {f.size} bytes)"
                        f" is missing on the server (HTTP {code}{': ' + message if message else ''})",
                        hint="push it with `git lfs push --all`, or pin a commit whose objects"
                        " exist")

    def _xet_only(self, path: str) -> SourceError:
        return SourceError(
            f"{self.url} offers only the 'xet' transfer for {path}; reconcile downloads Xet"
            " content only through the Git LFS basic transfer (the Xet bridge)",
            hint="for a Hugging Face repository use source.huggingface (or its huggingface.co"
            " URL in source.git-xet); otherwise ask the host to enable LFS basic downloads")

    def _href(self, pin: dict[str, Any], file: Any) -> tuple[str, dict[str, str]]:
        """The download href for ``file``; when one must be asked for, every other LFS
        object of the model whose href is missing or expiring comes in the same batch."""
        with self._lock:
            got = self._hrefs.get(file.sha256)
            if got is None or got[2] < time.monotonic():
                tree = self.listing(pin["commit"])
                todo = {file.sha256: file}
                for other in self._lfs_objects(tree):
                    have = self._hrefs.get(other.sha256)
                    if have is None or have[2] < time.monotonic():
                        todo.setdefault(other.sha256, other)
                self._batch(list(todo.values()), pin["commit"])
                got = self._hrefs[file.sha256]
        return got[0], got[1]

    def _lfs_objects(self, tree: dict[str, Any]) -> list[RemoteFile]:
        return [RemoteFile(path, ptr.size, ptr.oid, lfs=True)
                for path, ptr in tree["pointers"].items() if isinstance(ptr, Pointer)]

    # --- bytes ------------------------------------------------------------------------

    def entity(self, pin: dict[str, Any], file: Any = None) -> str | None:
        return pin.get("commit")  # a file at a commit never changes

    def refresh_credentials(self) -> bool:
        with self._lock:
            self._hrefs.clear()  # a refused href is asked for anew
        super().refresh_credentials()
        return True

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        if file.lfs:
            yield from self._open_lfs(pin, file, start, end)
        else:
            yield from self._open_git(pin, file, start, end)

    def _open_lfs(self, pin, file, start, end) -> Iterator[bytes]:
        from ..http import check_answer, stream

        href, header = self._href(pin, file)
        what = f"{self.url}: LFS object of {file.path}"

        def raise_for_status(r: Any) -> None:
            check_answer(r, what, missing="missing on the server", gone=(404, 410),
                         denied="the object store refused it")

        if not any(k.lower() == "authorization" for k in header):
            header = {**header, **(self._auth_for(href) if same_origin(
                href, self.endpoint(pin["commit"])) else {})}
        length = (file.size if end is None else end) - start
        yield from stream(lambda: self.client, href, start=start, end=end, headers=header,
                          length=length, network=self.decl.network,
                          raise_for_status=raise_for_status)

    def _open_git(self, pin, file, start, end) -> Iterator[bytes]:
        """A regular file from the partial clone (fetched with the others it lacks)."""
        self.listing(pin["commit"])  # the clone holds every blob of the model after it
        if file.size <= SMALL_READ:  # one git process serves them all
            data = self._reader().read(file.git_oid)
            yield data[start:end]
            return
        p = subprocess.Popen(["git", "-C", str(self.clone), "cat-file", "blob", file.git_oid],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=self._git_env())
        left = None if end is None else end - start
        try:
            skip = start
            while left is None or left > 0:
                chunk = p.stdout.read(1 << 20)
                if not chunk:
                    break
                if skip:
                    cut = min(skip, len(chunk))
                    chunk, skip = chunk[cut:], skip - cut
                if left is not None:
                    chunk = chunk[:left]
                    left -= len(chunk)
                if chunk:
                    yield chunk
        finally:
            p.stdout.close()
            err = p.stderr.read()
            p.stderr.close()
            code = p.wait()
        if code and (left is None or left > 0):
            raise SourceError(f"{self.url}: {file.path}: git cat-file: "
                              f"{_printable(err.decode('utf-8', 'replace'))}")

    def _reader(self) -> BlobReader:
        with self._lock:
            if self._blobs is None:
                self._blobs = BlobReader(self.clone, self._git_env())
            return self._blobs

    def close(self) -> None:
        super().close()
        if self._blobs is not None:
            self._blobs.close()


class BlobReader:
    """One `git cat-file --batch` process that reads blobs on request: a process per
    small file would cost more than the file (~3 ms each, thousands of files)."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self._lock = threading.Lock()
        self._p = subprocess.Popen(["git", "-C", str(repo), "cat-file", "--batch"],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                   stderr=subprocess.DEVNULL, env=env)

    def read(self, oid: str) -> bytes:
        with self._lock:
            assert self._p.stdin and self._p.stdout
            self._p.stdin.write(oid.encode() + b"\n")
            self._p.stdin.flush()
            head = self._p.stdout.readline().split()
            if len(head) != 3 or head[1] != b"blob":
                raise SourceError(f"git cat-file: object {oid} is not in the partial clone")
            data = self._p.stdout.read(int(head[2]) + 1)[:-1]
        return data

    def close(self) -> None:
        if self._p.stdin:
            self._p.stdin.close()
        self._p.wait()


def _lifetime(action: dict[str, Any], wall: float) -> float:
    """Seconds an href stays usable: expires_in, else expires_at (RFC 3339), else an hour."""
    if isinstance(action.get("expires_in"), int | float) and action["expires_in"] > 0:
        return float(action["expires_in"])
    at = action.get("expires_at")
    if isinstance(at, str) and not at.startswith("0001-"):
        from datetime import datetime

        try:
            return datetime.fromisoformat(at.replace("Z", "+00:00")).timestamp() - wall
        except ValueError:
            pass
    return 3600.0


def _printable(text: str) -> str:
    return "".join(c for c in text[:300] if c.isprintable()).strip()


SOURCE = GitLfsSource
