"""A stand-in Hugging Face Hub for tests, speaking the endpoints, headers and error codes
the real one does (see shared notes hf-hub.md §2 and §4). Its fidelity is proven in
tests/integration/test_hf_source.py by running the official huggingface_hub against it.

    hub = Hub(); repo = hub.repo("acme/tiny"); sha = repo.commit({"config.json": b"{}"})
    with hub: ... hub.url (API + resolve), hub.cdn (another origin serving LFS bytes)
    hub.fault("*.safetensors", "reset", after=1000)   # inject failures, consumed in order
    hub.log   # (method, host, path, authorization) per request; hub.sent[path] = body bytes
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, unquote, urlsplit


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Blob:
    data: bytes
    lfs: bool

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        if self.lfs:  # git stores the pointer
            return git_oid(self.pointer)
        return git_oid(self.data)

    @property
    def pointer(self) -> bytes:
        return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
                f"size {len(self.data)}\n").encode()


@dataclass
class Repo:
    repo_id: str
    repo_type: str = "model"
    gated: bool = False
    granted: set[str] = field(default_factory=set)
    commits: dict[str, dict[str, Blob]] = field(default_factory=dict)
    refs: dict[str, str] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes], *, lfs=None, branch: str = "main",
               tag: str | None = None, parent: str | None = None) -> str:
        is_lfs = lfs if callable(lfs) else (
            (lambda p, d: p in lfs) if lfs is not None else
            (lambda p, d: p.endswith((".safetensors", ".bin", ".gguf")) or len(d) > 100_000))
        base = dict(self.commits.get(parent or self.refs.get(branch, ""), {}))
        base.update({p: Blob(d, bool(is_lfs(p, d))) for p, d in files.items()})
        h = hashlib.sha1((parent or self.refs.get(branch, "")).encode())
        for p in sorted(base):
            h.update(p.encode() + b"\0" + base[p].oid.encode())
        sha = h.hexdigest()
        self.commits[sha] = base
        self.refs[branch] = sha
        if tag:
            self.refs[tag] = sha
        return sha

    def resolve_rev(self, rev: str) -> str | None:
        if rev in self.commits:
            return rev
        return self.refs.get(rev)


class Hub:
    def __init__(self, page_size: int = 1000) -> None:
        self.repos: dict[tuple[str, str], Repo] = {}
        self.page_size = page_size
        self.faults: list[dict] = []
        self.log: list[tuple[str, str, str, str | None]] = []
        self.sent: dict[str, int] = {}
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    def repo(self, repo_id: str, repo_type: str = "model", **kw) -> Repo:
        r = Repo(repo_id, repo_type, **kw)
        self.repos[(repo_type, repo_id)] = r
        return r

    def fault(self, glob: str, kind: str, count: int = 1, **kw) -> None:
        """kind: status (code=), 429 (retry_after=), reset (after=), truncate (after=),
        slow (rate= bytes/s), corrupt."""
        with self.lock:
            self.faults.append({"glob": glob, "kind": kind, "count": count, **kw})

    def take_fault(self, path: str) -> dict | None:
        with self.lock:
            for f in self.faults:
                if f["count"] > 0 and fnmatch.fnmatch(path, f["glob"]):
                    f["count"] -= 1
                    return f
        return None

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple]:
        return [r for r in self.log if (method is None or r[0] == method) and contains in r[2]]

    def bytes_sent(self, contains: str = "") -> int:
        return sum(n for p, n in self.sent.items() if contains in p)

    # --- lifecycle ------------------------------------------------------------------
    def __enter__(self) -> Hub:
        hub = self

        class Handler(_Handler):
            pass

        Handler.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{port}"
        self.cdn = f"http://localhost:{port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        assert self.server
        self.server.shutdown()
        self.server.server_close()


_API = re.compile(r"^/api/(models|datasets|spaces)/(.+?)/(revision|tree|refs)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?(.+?)/resolve/([^/]+)/(.+)$")


class _Handler(BaseHTTPRequestHandler):
    hub: Hub
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    # --- plumbing
    def _error(self, status: int, code: str | None, message: str, commit: str | None = None):
        body = json.dumps({"error": message}).encode()
        self.send_response(status)
        if code:
            self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, obj, headers: dict[str, str] | None = None) -> None:
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _find(self, rtype: str, repo_id: str) -> Repo | None:
        return self.hub.repos.get((rtype, repo_id))

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        path = unquote(url.path)
        with self.hub.lock:
            self.hub.log.append((self.command, self.headers.get("Host", ""), self.path,
                                 self.headers.get("Authorization")))
        if path.startswith("/cdn/"):
            return self._cdn(path[5:])
        if m := _API.match(url.path):
            fault = self.hub.take_fault(url.path)  # "*" takes the whole Hub down
            if fault and fault["kind"] == "status":
                return self._error(fault.get("code", 500), None, "injected fault")
            rtype, repo_id, what, rest = m.group(1)[:-1], unquote(m.group(2)), m.group(3), m.group(4)
            repo = self._find(rtype, repo_id)
            if repo is None:
                return self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            if what == "refs":
                return self._json({"branches": [{"name": k, "ref": f"refs/heads/{k}",
                                                 "targetCommit": v} for k, v in repo.refs.items()],
                                   "tags": [], "converts": [], "pullRequests": []})
            rev, _, sub = (rest or "").partition("/")
            rev = unquote(rev)
            if what == "revision" and sub:  # refs%2Fpr%2F1 arrives decoded by some clients
                rev = f"{rev}/{sub}"
                sub = ""
            sha = repo.resolve_rev(rev)
            if sha is None:
                return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
            files = repo.commits[sha]
            if what == "revision":
                blobs = "blobs" in parse_qs(url.query)
                sib = []
                for p in sorted(files):
                    s = {"rfilename": p}
                    if blobs:
                        b = files[p]
                        s.update(size=len(b.data), blobId=b.oid)
                        if b.lfs:
                            s["lfs"] = {"sha256": b.sha256, "size": len(b.data),
                                        "pointerSize": len(b.pointer)}
                    sib.append(s)
                return self._json({"id": repo.repo_id, "sha": sha, "siblings": sib,
                                   "gated": "manual" if repo.gated else False})
            return self._tree(repo, sha, unquote(sub), parse_qs(url.query))
        if m := _RESOLVE.match(url.path):
            rtype = {"datasets": "dataset", "spaces": "space"}.get(m.group(1) or "", "model")
            return self._resolve(rtype, unquote(m.group(2)), unquote(m.group(3)),
                                 unquote(m.group(4)))
        self._error(404, None, "not found")

    def _tree(self, repo: Repo, sha: str, sub: str, query) -> None:
        files = repo.commits[sha]
        entries = []
        dirs = set()
        for p in sorted(files):
            if sub and not p.startswith(sub.rstrip("/") + "/"):
                continue
            parts = p.split("/")
            for i in range(1, len(parts)):
                dirs.add("/".join(parts[:i]))
            b = files[p]
            e = {"type": "file", "path": p, "size": len(b.data), "oid": b.oid}
            if b.lfs:
                e["lfs"] = {"oid": b.sha256, "size": len(b.data), "pointerSize": len(b.pointer)}
            entries.append(e)
        for d in dirs:
            entries.append({"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest()})
        entries.sort(key=lambda e: e["path"])
        start = int(query.get("cursor", ["0"])[0])
        page = entries[start:start + self.hub.page_size]
        headers = {}
        if start + self.hub.page_size < len(entries):
            q = f"recursive=true&expand=false&cursor={start + self.hub.page_size}"
            headers["Link"] = f'<{self.hub.url}{urlsplit(self.path).path}?{q}>; rel="next"'
        self._json(page, headers)

    def _resolve(self, rtype: str, repo_id: str, rev: str, fpath: str) -> None:
        repo = self._find(rtype, repo_id)
        if repo is None:
            return self._error(401, "RepoNotFound", "Repository Not Found")
        if repo.gated:
            auth = self.headers.get("Authorization")
            if not auth:
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted."
                                   " You must have access to it and be authenticated to access it."
                                   " Please log in.")
            if auth.removeprefix("Bearer ") not in repo.granted:
                return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and"
                                   " you are not in the authorized list.")
        sha = repo.resolve_rev(rev)
        if sha is None:
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        blob = repo.commits[sha].get(fpath)
        if blob is None:
            return self._error(404, "EntryNotFound", f"{fpath} does not exist", commit=sha)
        if blob.lfs:
            self.send_response(302)
            self.send_header("Location", f"{self.hub.cdn}/cdn/{blob.sha256}?X-Amz-Signature=abc")
            self.send_header("X-Repo-Commit", sha)
            self.send_header("X-Linked-Etag", f'"{blob.sha256}"')
            self.send_header("X-Linked-Size", str(len(blob.data)))
            self.send_header("ETag", f'"{blob.oid}"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self._send_bytes(blob.data, {"X-Repo-Commit": sha, "ETag": f'"{blob.oid}"'},
                         f"/{repo_id}/{fpath}")

    def _cdn(self, sha256: str) -> None:
        for repo in self.hub.repos.values():
            for files in repo.commits.values():
                for p, b in files.items():
                    if b.lfs and b.sha256 == sha256:
                        return self._send_bytes(b.data, {"ETag": f'"{sha256}"'},
                                                f"/{repo.repo_id}/{p}")
        self._error(404, None, "no such object")

    def _send_bytes(self, data: bytes, headers: dict[str, str], logical: str) -> None:
        fault = self.hub.take_fault(logical) if self.command == "GET" else None
        if fault and fault["kind"] in ("status", "429"):
            status = fault.get("code", 429 if fault["kind"] == "429" else 500)
            self.send_response(status)
            if fault["kind"] == "429":
                self.send_header("Retry-After", str(fault.get("retry_after", 1)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        start, end = 0, len(data)
        rng = self.headers.get("Range")
        status = 200
        if rng and (m := re.match(r"bytes=(\d+)-(\d*)$", rng)):
            start = int(m.group(1))
            end = int(m.group(2)) + 1 if m.group(2) else len(data)
            if start >= len(data):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            end = min(end, len(data))
            status = 206
        body = data[start:end]
        if fault and fault["kind"] == "corrupt":
            body = bytes([body[0] ^ 0xFF]) + body[1:] if body else body
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(len(body)))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
        self.end_headers()
        if self.command == "HEAD":
            return
        limit = len(body)
        if fault and fault["kind"] in ("reset", "truncate"):
            limit = min(limit, fault.get("after", len(body) // 2))
        rate = fault.get("rate") if fault and fault["kind"] == "slow" else None
        sent = 0
        try:
            while sent < limit:
                n = min(64 * 1024, limit - sent)
                self.wfile.write(body[sent:sent + n])
                sent += n
                if rate:
                    time.sleep(n / rate)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            with self.hub.lock:
                self.hub.sent[logical] = self.hub.sent.get(logical, 0) + sent
        if sent < len(body):
            self.close_connection = True
            if fault and fault["kind"] == "reset":
                import socket

                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                           b"\x01\x00\x00\x00\x00\x00\x00\x00")
            self.connection.close()


def quote_path(p: str) -> str:
    return quote(p)
