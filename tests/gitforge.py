"""A forge-like git server for tests: `git http-backend` (smart HTTP, partial clone) and
giftless (the Git LFS batch API and its storage) under one URL, as forges serve them,
plus a second port that plays the storage CDN forges redirect object downloads to.

    python tests/gitforge.py ROOT PORT CDN_PORT

Repositories live in ROOT/repos/<org>/<name>.git, LFS objects in ROOT/lfs. Behaviour
is set through the environment (tests start it with what they need):

    FORGE_AUTH=user:password   Basic auth on git and on the batch API (not on storage
                               hrefs, which carry their own signed token)
    FORGE_CDN=1                object GETs answer 302 to the CDN port, with a signed
                               URL; the CDN serves Range and refuses any request that
                               carries an Authorization header (a leaked credential)
    FORGE_LIFETIME=N           seconds an href lives (expires_in, the token's expiry)
    FORGE_XET=1                the batch API offers only the `xet` transfer

Every request is appended to ROOT/requests.log as `port METHOD path status` so tests
can tell what was downloaded. The official git and git-lfs clients run against it
unchanged (tests/integration/test_git_lfs_source.py pushes and clones through it).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

ROOT, PORT, CDN_PORT = os.path.abspath(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
AUTH = os.environ.get("FORGE_AUTH", "")
CDN = os.environ.get("FORGE_CDN") == "1"
XET = os.environ.get("FORGE_XET") == "1"
LIFETIME = int(os.environ.get("FORGE_LIFETIME", "900"))
KEY = b"test-only-cdn-signing-key"
_log_lock = threading.Lock()

os.makedirs(f"{ROOT}/repos", exist_ok=True)
os.makedirs(f"{ROOT}/lfs", exist_ok=True)
os.environ["GIFTLESS_CONFIG_STR"] = f"""
AUTH_PROVIDERS: ["giftless.auth.allow_anon:read_write"]
LEGACY_ENDPOINTS: false
TRANSFER_ADAPTERS:
  basic:
    factory: giftless.transfer.basic_streaming:factory
    options:
      storage_class: giftless.storage.local_storage:LocalStorage
      storage_options: {{path: {ROOT}/lfs}}
      action_lifetime: {LIFETIME}
PRE_AUTHORIZED_ACTION_PROVIDER:
  factory: giftless.auth.jwt:factory
  options: {{algorithm: HS256, private_key: "test-only-signing-key-0123456789abcdef",
             default_lifetime: {LIFETIME}}}
"""
from giftless.app import init_app  # noqa: E402

lfs_app = init_app()

GIT_CONFIG = {"http.receivepack": "true", "uploadpack.allowFilter": "true",
              "uploadpack.allowAnySHA1InWant": "true", "safe.directory": "*"}


def log(port: int, method: str, path: str, status: str) -> None:
    with _log_lock, open(f"{ROOT}/requests.log", "a") as f:
        f.write(f"{port} {method} {path} {status.split()[0]}\n")


def git_app(environ, start_response):
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    path = environ.get("PATH_INFO", "")
    # forges answer for /org/name as for /org/name.git
    m = re.match(r"^(/[^/]+/[^/]+?)(\.git)?(/.*)$", path)
    if m and not m.group(2):
        path = f"{m.group(1)}.git{m.group(3)}"
    env = {"PATH": os.environ["PATH"], "GIT_PROJECT_ROOT": f"{ROOT}/repos",
           "GIT_HTTP_EXPORT_ALL": "1", "REMOTE_USER": "test", "REMOTE_ADDR": "127.0.0.1",
           "PATH_INFO": path, "CONTENT_LENGTH": str(len(body))}
    for k in ("QUERY_STRING", "REQUEST_METHOD", "CONTENT_TYPE", "HTTP_CONTENT_ENCODING"):
        if environ.get(k):
            env[k] = environ[k]
    if environ.get("HTTP_GIT_PROTOCOL"):
        env["GIT_PROTOCOL"] = environ["HTTP_GIT_PROTOCOL"]
    env["GIT_CONFIG_COUNT"] = str(len(GIT_CONFIG))
    for i, (k, v) in enumerate(GIT_CONFIG.items()):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = k, v
    out = subprocess.run(["git", "http-backend"], input=body, env=env,
                         capture_output=True).stdout
    head, sep, rest = out.partition(b"\r\n\r\n")
    if not sep:
        head, _, rest = out.partition(b"\n\n")
    status, headers = "200 OK", []
    for line in head.decode("latin-1").splitlines():
        k, _, v = line.partition(":")
        if k.lower() == "status":
            status = v.strip()
        elif k:
            headers.append((k, v.strip()))
    start_response(status, headers)
    return [rest]


def cdn_url(org_repo: str, oid: str) -> str:
    exp = str(int(time.time()) + LIFETIME)
    sig = hmac.new(KEY, f"{org_repo}/{oid}:{exp}".encode(), hashlib.sha256).hexdigest()
    return f"http://127.0.0.1:{CDN_PORT}/{org_repo}/{oid}?exp={exp}&sig={sig}"


def batch(environ, start_response):
    """giftless's answer, reshaped for FORGE_XET (a server that offers only xet)."""
    captured: dict = {}

    def keep(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, headers

    body = b"".join(lfs_app(environ, keep))
    if XET and captured["status"].startswith("200"):
        answer = json.loads(body)
        answer["transfer"] = "xet"
        for obj in answer.get("objects", []):
            if "actions" in obj:
                obj["actions"] = {"download": {
                    "href": "http://127.0.0.1:1/xet-token-refresh",
                    "header": {"X-Xet-Cas-Url": "http://127.0.0.1:1/cas",
                               "X-Xet-Access-Token": "xet-token",
                               "X-Xet-Token-Expiration": str(int(time.time()) + 3600)}}}
        body = json.dumps(answer).encode()
        captured["headers"] = [(k, v) for k, v in captured["headers"]
                               if k.lower() != "content-length"]
        captured["headers"].append(("Content-Length", str(len(body))))
    start_response(captured["status"], captured["headers"])
    return [body]


def storage(environ, start_response):
    """An object GET: giftless checks its signed token; with FORGE_CDN the bytes then
    come from the CDN instead (302), as forges hand downloads to their object store."""
    if not CDN or environ["REQUEST_METHOD"] != "GET":
        return lfs_app(environ, start_response)
    captured: dict = {}

    def keep(status, headers, exc_info=None):
        captured["status"], captured["headers"] = status, headers

    answer = lfs_app(environ, keep)
    if not captured["status"].startswith("200"):
        start_response(captured["status"], captured["headers"])
        return answer
    if hasattr(answer, "close"):
        answer.close()
    m = re.match(r"^/(.+?)\.git/info/lfs/objects/storage/([0-9a-f]{64})$", environ["PATH_INFO"])
    start_response("302 Found", [("Location", cdn_url(m.group(1), m.group(2))),
                                 ("Content-Length", "0")])
    return [b""]


def authorized(environ) -> bool:
    if not AUTH:
        return True
    given = environ.get("HTTP_AUTHORIZATION", "")
    return given == "Basic " + base64.b64encode(AUTH.encode()).decode()


def app(environ, start_response):
    if environ.get("HTTP_X_FORWARDED_PROTO") == "https":  # behind a TLS proxy (nginx)
        environ["wsgi.url_scheme"] = "https"
    path = environ.get("PATH_INFO", "")
    statuses: list[str] = []

    def logged(status, headers, exc_info=None):
        statuses.append(status)
        return start_response(status, headers)

    try:
        if "/info/lfs/objects/storage/" in path:  # pre-authorised by its own token
            return storage(environ, logged)
        if not authorized(environ):
            logged("401 Unauthorized", [("WWW-Authenticate", 'Basic realm="forge"'),
                                        ("Content-Type", "text/plain"),
                                        ("Content-Length", "13")])
            return [b"Unauthorized\n"]
        if "/info/lfs/" in path:
            return batch(environ, logged)
        return git_app(environ, logged)
    finally:
        log(PORT, environ["REQUEST_METHOD"], path, statuses[0] if statuses else "500")


class CdnHandler(BaseHTTPRequestHandler):
    """Object storage behind signed URLs: Range, ETag, and no credentials accepted."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def answer(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        log(CDN_PORT, self.command, self.path.split("?")[0], str(status))

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.path)
        q = {k: v[0] for k, v in parse_qs(parts.query).items()}
        if self.headers.get("Authorization"):
            return self.answer(400, "credentials must never be sent to the CDN\n")
        m = re.match(r"^/(.+)/([0-9a-f]{64})$", parts.path)
        want = hmac.new(KEY, f"{m.group(1)}/{m.group(2)}:{q.get('exp')}".encode() if m else b"",
                        hashlib.sha256).hexdigest()
        if not m or not hmac.compare_digest(want, q.get("sig", "")):
            return self.answer(403, "bad signature\n")
        if int(q.get("exp", "0")) < time.time():
            return self.answer(403, "Request has expired\n")
        path = f"{ROOT}/lfs/{m.group(1)}/{m.group(2)}"
        size = os.path.getsize(path)
        start, end = 0, size
        rng = re.match(r"^bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
        if rng:
            start = int(rng.group(1))
            end = min(size, int(rng.group(2)) + 1) if rng.group(2) else size
            if start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(end - start))
        self.send_header("ETag", f'"{m.group(2)}"')
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Type", "application/octet-stream")
        self.end_headers()
        log(CDN_PORT, "GET", parts.path, "206" if rng else "200")
        with open(path, "rb") as f:
            try:
                self.wfile.flush()
                self.connection.sendfile(f, start, end - start)
            except (BrokenPipeError, ConnectionResetError):
                pass


class Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class Quiet(WSGIRequestHandler):
    def log_message(self, *args) -> None:
        pass


cdn = ThreadingHTTPServer(("127.0.0.1", CDN_PORT), CdnHandler)
cdn.daemon_threads = True
threading.Thread(target=cdn.serve_forever, daemon=True).start()
make_server("127.0.0.1", PORT, app, server_class=Server, handler_class=Quiet).serve_forever()
