"""`source.ollama` against Debian's docker-registry (CNCF distribution), without auth and
with token auth (a token service started here), models pushed as ollama pushes them."""

from __future__ import annotations

import hashlib
import json
import re

import pytest

from reconcile.lockfile import read_lock
from tests.servers import Pusher, TokenService, docker_registry, registry_binary
from tests.test_formats import gguf_bytes

pytestmark = pytest.mark.integration
if registry_binary() is None:
    pytest.skip("needs docker-registry (apt-get install docker-registry)",
                allow_module_level=True)

PASSWORD = "registry-Pa55-that-must-never-leak"
GGUF = gguf_bytes(tensors=[("w", [50_000], 0, 0)], data=200_000)
LAYERS = [
    ("application/vnd.ollama.image.model", GGUF),
    ("application/vnd.ollama.image.template", b"{{ .System }} {{ .Prompt }}"),
    ("application/vnd.ollama.image.params", b'{"stop": ["<|end|>"], "temperature": 0.2}'),
    ("application/vnd.ollama.image.license", b"MIT License\n"),
    ("application/vnd.ollama.image.license", b"Apache License 2.0\n"),
]
CONFIG = json.dumps({"model_format": "gguf", "model_family": "llama", "file_type": "F32",
                     "rootfs": {"type": "layers", "diff_ids": []}}).encode()
MT = "application/vnd.docker.distribution.manifest.v2+json"


def push_ollama(pusher: Pusher, repo: str, tag: str, layers=LAYERS, indent=None) -> bytes:
    """An Ollama model as ollama pushes it: docker v2 manifest, ollama layer types."""
    doc = {"schemaVersion": 2, "mediaType": MT,
           "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                      **pusher.blob(repo, CONFIG)},
           "layers": [{"mediaType": m, **pusher.blob(repo, data)} for m, data in layers]}
    data = json.dumps(doc, indent=indent).encode() + (b"\n" if indent else b"")
    pusher.manifest(repo, tag, data)
    return data


@pytest.fixture(autouse=True)
def ollama_dir(tmp_path, monkeypatch):
    """ollama's models directory for this test (never the developer's ~/.ollama)."""
    d = tmp_path / "ollama-models"
    monkeypatch.setenv("OLLAMA_MODELS", str(d))
    return d


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with docker_registry(tmp_path_factory.mktemp("registry")) as url:
        pusher = Pusher(url)
        registry_manifest = push_ollama(pusher, "library/tinyllm", "latest", indent=3)
        push_ollama(pusher, "library/tinyllm", "1b", layers=LAYERS[:2])
        yield url, registry_manifest


def declare(project, url: str, model: str = "tinyllm", tag: str | None = None,
            extra: str = "") -> None:
    t = f', tag = "{tag}"' if tag else ""
    project.write(f'[models.llm]\nsource.ollama = {{ model = "{model}"{t},'
                  f' registry = "{url}" }}\n' + extra)


def installed(project, key: str = "llm"):
    from reconcile.store import Store

    assert project.run("path", key).code == 0
    return Store(project.store).model_path(read_lock(project.lock).models[key])


def test_lock_pins_the_manifest_digest_and_downloads_nothing_else(project, registry):
    url, served = registry
    declare(project, url)
    r = project.run("lock")
    assert r.code == 0, r.err
    m = read_lock(project.lock).models["llm"]
    digest = "sha256:" + hashlib.sha256(served).hexdigest()
    assert m.pin == {"registry": url, "model": "library/tinyllm", "tag": "latest",
                     "digest": digest}
    files = {f.path: f for f in m.files}
    assert set(files) == {"manifest.json", "config.json", "model.gguf", "template",
                          "params.json", "license", "license-2"}
    assert files["model.gguf"].sha256 == hashlib.sha256(GGUF).hexdigest()
    assert files["manifest.json"].sha256 == digest[7:]
    objects = [p for p in (project.store / "objects").rglob("*") if p.is_file()]
    assert [p.name for p in objects] == [digest[7:]]  # the manifest, and no blob
    r = project.run("apply")
    assert r.code == 0, r.err
    root = installed(project)
    assert (root / "model.gguf").read_bytes() == GGUF
    assert (root / "license-2").read_bytes() == b"Apache License 2.0\n"
    assert (root / "manifest.json").read_bytes() == served  # byte for byte, never re-encoded


def test_tags_names_and_errors(project, registry):
    url, _ = registry
    declare(project, url, "library/tinyllm:1b")
    assert project.run("lock").code == 0
    assert {f.path for f in read_lock(project.lock).models["llm"].files} == {
        "manifest.json", "config.json", "model.gguf", "template"}
    declare(project, url, "tinyllm", tag="nope")
    r = project.run("lock")
    assert r.code == 1 and "tinyllm:nope" in r.err and "no such model or tag" in r.err, r.err
    declare(project, url, "nobody/absent")
    r = project.run("lock")
    assert r.code == 1 and "nobody/absent" in r.err, r.err
    declare(project, url, "../etc")
    r = project.run("lock")
    assert r.code == 2 and "models.llm.source.ollama.model" in r.err, r.err
    declare(project, url, "tinyllm:1b", tag="2b")
    r = project.run("lock")
    assert r.code == 2 and "models.llm.source.ollama.tag" in r.err, r.err


def test_apply_on_a_fresh_machine_fetches_the_manifest_by_digest(project, registry, tmp_path,
                                                                 monkeypatch):
    url, served = registry
    declare(project, url)
    assert project.run("lock").code == 0
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "fresh"))
    r = project.run("apply", "--locked")
    assert r.code == 0, r.err
    from reconcile.store import Store

    root = Store(tmp_path / "fresh").model_path(read_lock(project.lock).models["llm"])
    assert (root / "manifest.json").read_bytes() == served


def test_a_dead_registry_is_one_line(project):
    from tests.servers import free_port

    declare(project, f"http://127.0.0.1:{free_port()}",
            extra="network.retry = { maxAttempts = 1 }\n")
    r = project.run("lock")
    assert r.code == 1 and r.err.count("\n") <= 3 and "Traceback" not in r.err, r.err


@pytest.fixture(scope="module")
def private_registry(tmp_path_factory):
    work = tmp_path_factory.mktemp("private")
    tokens = TokenService(work / "token", {"alice": PASSWORD}, public=("library/open",),
                          lifetime=300)
    with tokens.run(), docker_registry(work / "reg", token=tokens) as url:
        pusher = Pusher(url, user=("alice", PASSWORD))
        push_ollama(pusher, "team/secret", "latest")
        push_ollama(pusher, "library/open", "latest", layers=LAYERS[:2])
        yield url, tokens


def test_token_auth_anonymous_and_with_credentials(project, private_registry, monkeypatch):
    url, tokens = private_registry
    declare(project, url, "open")  # anonymous pull: a token with no credentials
    assert project.run("lock").code == 0
    assert project.run("apply").code == 0
    declare(project, url, "team/secret")
    r = project.run("lock")
    assert r.code == 1 and "access denied" in r.err, r.err
    monkeypatch.setenv("REG_USER", "alice")
    monkeypatch.setenv("REG_PASSWORD", PASSWORD)
    declare(project, url, "team/secret",
            extra='auth = { usernameEnvVar = "REG_USER", passwordEnvVar = "REG_PASSWORD" }\n')
    r = project.run("lock")
    assert r.code == 0, r.err
    r2 = project.run("apply")
    assert r2.code == 0, r2.err
    assert (installed(project) / "model.gguf").read_bytes() == GGUF
    for text in (project.lock.read_text(), r.out + r.err + r2.out + r2.err):
        assert PASSWORD not in text
    assert any(s == "repository:team/secret:pull" for s in tokens.issued)


def test_credentials_go_to_the_registrys_host_or_a_listed_token_realm_only(
        project, tmp_path, monkeypatch):
    """The registry's WWW-Authenticate names a realm on another host: the model's Basic
    credentials go there only when models.toml lists it (auth.tokenRealms); an anonymous
    token (nothing to leak) is asked for anywhere, as Docker Hub's auth.docker.io needs."""
    tokens = TokenService(tmp_path / "token", {"alice": PASSWORD}, public=("library/open",),
                          host="localhost")
    with tokens.run(), docker_registry(tmp_path / "reg", token=tokens) as url:
        pusher = Pusher(url, user=("alice", PASSWORD))
        push_ollama(pusher, "team/secret", "latest")
        push_ollama(pusher, "library/open", "latest", layers=LAYERS[:2])
        declare(project, url, "open")
        r = project.run("lock")
        assert r.code == 0, r.err
        monkeypatch.setenv("REG_USER", "alice")
        monkeypatch.setenv("REG_PASSWORD", PASSWORD)
        auth = 'auth = { usernameEnvVar = "REG_USER", passwordEnvVar = "REG_PASSWORD"%s }\n'
        declare(project, url, "team/secret", extra=auth % "")
        asked = len(tokens.asked)
        r = project.run("lock")
        assert tokens.asked[asked:] == []  # alice's password never went to localhost
        assert r.code == 1 and "localhost" in r.err and "tokenRealms" in r.err, r.err
        assert PASSWORD not in r.err and "Traceback" not in r.err
        declare(project, url, "team/secret", extra=auth % ', tokenRealms = ["localhost"]')
        r = project.run("lock")
        assert r.code == 0, r.err
        assert "alice" in tokens.asked[asked:]


def test_token_realms_are_host_names(project):
    declare(project, "http://127.0.0.1:1", "x",
            extra='auth = { tokenEnvVar = "T", tokenRealms = ["https://auth.example.com/t"] }\n')
    r = project.run("lock")
    assert r.code == 2 and "models.llm.auth.tokenRealms[0]" in r.err, r.err


def test_tokens_are_renewed_when_they_expire(project, tmp_path):
    """Tokens that live 2 s: a source that outlives one asks for a new one before use."""
    import time

    from reconcile.config import load_manifest
    from reconcile.resolve import SourceContext, make_source
    from reconcile.store import Store

    tokens = TokenService(tmp_path / "token", {"admin": "pw"}, public=("library/tinyllm",))
    with tokens.run(), docker_registry(tmp_path / "reg", token=tokens) as url:
        push_ollama(Pusher(url, user=("admin", "pw")), "library/tinyllm", "latest")
        tokens.lifetime = 2
        declare(project, url)
        assert project.run("lock").code == 0
        model = read_lock(project.lock).models["llm"]
        src = make_source(load_manifest(project.manifest).models["llm"],
                          SourceContext(store=Store(project.store).ensure()))
        gguf = next(f for f in model.files if f.path == "model.gguf")
        before = len(tokens.issued)
        assert b"".join(src.open(model.pin, gguf)) == GGUF
        assert len(tokens.issued) == before + 1
        assert b"".join(src.open(model.pin, gguf)) == GGUF
        assert len(tokens.issued) == before + 1  # still valid: reused
        time.sleep(2.1)
        assert b"".join(src.open(model.pin, gguf)) == GGUF
        assert len(tokens.issued) == before + 2  # renewed before use, not after a 401
        src.close()


def test_a_manifest_whose_digest_does_not_match_is_refused(project, registry, tmp_path):
    """A registry (or a proxy) that serves other bytes than its Docker-Content-Digest."""
    import http.server
    import threading
    import urllib.request

    url, _ = registry

    class Lying(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            with urllib.request.urlopen(urllib.request.Request(
                    url + self.path, headers={"Accept": self.headers["Accept"]})) as r:
                body, digest = r.read(), r.headers["Docker-Content-Digest"]
            body = body.replace(b"schemaVersion", b"schemaVersion ")
            self.send_response(200)
            self.send_header("Docker-Content-Digest", digest)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Lying)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        declare(project, f"http://127.0.0.1:{server.server_address[1]}")
        r = project.run("lock")
        assert r.code == 1 and "digest does not match" in r.err, r.err
    finally:
        server.shutdown()


# --- integration.ollama ----------------------------------------------------------------


def ollama_models(mdir):
    """What ollama's loader sees: every manifests/*/*/*/* and the blobs each names,
    checked as `ollama run` opens them (by digest, sha256-<hex>)."""
    found = {}
    for path in mdir.glob("manifests/*/*/*/*"):
        doc = json.loads(path.read_bytes())
        for d in [doc["config"], *doc["layers"]]:
            blob = mdir / "blobs" / d["digest"].replace(":", "-")
            assert hashlib.sha256(blob.read_bytes()).hexdigest() == d["digest"][7:], blob
            assert blob.stat().st_size == d["size"]
        found[path.relative_to(mdir / "manifests").as_posix()] = path.read_bytes()
    return found


def test_apply_installs_where_ollama_finds_it_and_prune_removes_only_its_own(
        project, registry, ollama_dir):
    url, served = registry
    host = url.split("//")[1]
    declare(project, url)
    assert project.run("lock").code == 0
    assert read_lock(project.lock).models["llm"].ollama == f"{host}/library/tinyllm/latest"
    r = project.run("apply")
    assert r.code == 0, r.err
    assert ollama_models(ollama_dir) == {f"{host}/library/tinyllm/latest": served}
    assert not list(ollama_dir.glob(".reconcile-tmp-*"))
    assert not (project.cache / "models--library--tinyllm-latest").exists()  # no HF link
    r = project.run("plan")
    assert r.code == 0 and "No changes" in r.out, r.out

    # ollama's own model shares a blob (the template) and has one reconcile never wrote
    own = ollama_dir / "manifests/registry.ollama.ai/library/other/latest"
    own.parent.mkdir(parents=True)
    template = hashlib.sha256(LAYERS[1][1]).hexdigest()
    theirs = hashlib.sha256(b"ollama's own").hexdigest()
    (ollama_dir / "blobs" / f"sha256-{theirs}").write_bytes(b"ollama's own")
    own.write_text(json.dumps({"config": {"digest": "sha256:" + theirs, "size": 12},
                               "layers": [{"digest": "sha256:" + template,
                                           "size": len(LAYERS[1][1])}]}))
    project.write("")  # the model leaves models.toml
    r = project.run("apply", "--prune")
    assert r.code == 0, r.err
    assert set(ollama_models(ollama_dir)) == {"registry.ollama.ai/library/other/latest"}
    blobs = {p.name for p in (ollama_dir / "blobs").iterdir()}
    assert blobs == {"sha256-" + theirs, "sha256-" + template}  # ollama's, and shared
    assert not (ollama_dir / "manifests" / host).exists()


def test_a_tag_ollama_pulled_at_another_version_is_left_alone(project, registry, ollama_dir):
    url, served = registry
    host = url.split("//")[1]
    theirs = ollama_dir / f"manifests/{host}/library/tinyllm/latest"
    theirs.parent.mkdir(parents=True)
    theirs.write_bytes(b'{"schemaVersion": 2, "layers": []}')
    declare(project, url)
    assert project.run("lock").code == 0
    r = project.run("plan")
    assert "holds another version" in r.out and "ollama rm" in r.out, r.out
    r = project.run("apply")
    assert r.code == 0, r.err
    assert "holds another version" in r.err and "ollama rm" in r.err, r.err  # not plan only
    assert theirs.read_bytes() == b'{"schemaVersion": 2, "layers": []}'
    r = project.run("status")
    assert "holds another version" in r.out and "ollama rm" in r.out, r.out
    r = project.run("status", "--json")
    (row,) = json.loads(r.out)
    assert any("holds another version" in c for c in row.get("conflicts", [])), row
    theirs.unlink()  # `ollama rm`: now reconcile installs the locked version
    assert project.run("apply").code == 0
    assert theirs.read_bytes() == served


def test_a_hand_edited_lock_cannot_install_under_another_name(project, registry):
    url, _ = registry
    declare(project, url)
    assert project.run("lock").code == 0
    text = project.lock.read_text()
    for evil in ("registry.ollama.ai/library/llama3/latest", "../../etc/x/y"):
        project.lock.write_text(re.sub(r'ollama = "[^"]*"', f'ollama = "{evil}"', text))
        r = project.run("apply", "--locked")
        assert r.code != 0 and "models.llm.ollama" in r.err, r.err


def test_basic_auth_and_a_redirect_to_storage_that_never_sees_the_credentials(
        project, registry, monkeypatch):
    """A registry behind Basic auth whose blob GETs answer 307 to storage on another host
    (as the Ollama registry sends to R2): the storage gets no Authorization."""
    import base64
    import http.server
    import threading
    import urllib.request

    url, _ = registry
    seen: list[str | None] = []
    storage_port: list[int] = []

    class Storage(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            seen.append(self.headers.get("Authorization"))
            with urllib.request.urlopen(url + self.path) as r:
                body = r.read()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    class Front(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            want = "Basic " + base64.b64encode(f"bob:{PASSWORD}".encode()).decode()
            if self.headers.get("Authorization") != want:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="registry"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if "/blobs/" in self.path:
                self.send_response(307)
                self.send_header("Location", f"http://localhost:{storage_port[0]}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            req = urllib.request.Request(url + self.path, headers={
                "Accept": self.headers.get("Accept", "")})
            try:
                with urllib.request.urlopen(req) as r:
                    body, status = r.read(), r.status
                    digest = r.headers.get("Docker-Content-Digest", "")
            except urllib.error.HTTPError as e:
                body, status, digest = e.read(), e.code, ""
            self.send_response(status)
            if digest:
                self.send_header("Docker-Content-Digest", digest)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), h) for h in (Storage, Front)]
    storage_port.append(servers[0].server_address[1])
    for s in servers:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        front = f"http://127.0.0.1:{servers[1].server_address[1]}"
        declare(project, front)
        r = project.run("lock")
        assert r.code == 1 and "access denied" in r.err, r.err
        monkeypatch.setenv("REG_USER", "bob")
        monkeypatch.setenv("REG_PASSWORD", PASSWORD)
        declare(project, front, extra='auth = { usernameEnvVar = "REG_USER",'
                ' passwordEnvVar = "REG_PASSWORD" }\n')
        r = project.run("lock")
        assert r.code == 0, r.err
        r = project.run("apply")
        assert r.code == 0, r.err
        assert (installed(project) / "model.gguf").read_bytes() == GGUF
        assert seen and seen == [None] * len(seen)  # every blob came from storage, no creds
    finally:
        for s in servers:
            s.shutdown()


def test_apply_takes_blobs_ollama_pulled_and_refuses_a_bad_one(project, registry, ollama_dir,
                                                               tmp_path, monkeypatch):
    """#34: the blobs `ollama pull` left in its models directory are copied (hashed on the
    way) instead of downloaded; one whose bytes are not the lock's is fetched again."""
    url, _ = registry
    declare(project, url)
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "elsewhere"))  # locked elsewhere
    assert project.run("lock").code == 0
    monkeypatch.setenv("RECONCILE_STORE", str(project.store))
    blobs = ollama_dir / "blobs"
    blobs.mkdir(parents=True)
    for data in [CONFIG, *(d for _, d in LAYERS)]:
        (blobs / f"sha256-{hashlib.sha256(data).hexdigest()}").write_bytes(data)
    bad = blobs / f"sha256-{hashlib.sha256(LAYERS[3][1]).hexdigest()}"
    bad.write_bytes(b"MIT Licanse\n")  # the same size, other bytes
    before = {p.name: (p.stat().st_ino, p.read_bytes()) for p in blobs.iterdir()}

    r = project.run("plan")
    assert "model.gguf" in r.out and "from ollama's models directory" in r.out, r.out
    r = project.run("apply", "--progress", "json")
    assert r.code == 0, r.err
    summary = [json.loads(x) for x in r.err.splitlines() if '"summary"' in x][-1]
    assert summary["bytes"] == len(LAYERS[3][1])  # the bad blob's, from the registry
    root = installed(project)
    assert (root / "model.gguf").read_bytes() == GGUF
    assert (root / "license").read_bytes() == LAYERS[3][1]
    after = {p.name: (p.stat().st_ino, p.read_bytes()) for p in blobs.iterdir()}
    assert after == before  # ollama's files: never replaced, linked or rewritten
