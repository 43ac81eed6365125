"""`source.git-lfs` and `source.git-xet` against a forge-like server started here
(tests/gitforge.py: git http-backend + giftless), with repositories pushed by the real
git and git-lfs clients; what reconcile installs must equal, byte for byte, what
`git clone` + `git lfs pull` checks out at the same commit."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import time
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from tests.servers import Forge, git_env, git_forge

pytest.importorskip("giftless")
pytestmark = pytest.mark.integration
if shutil.which("git-lfs") is None:
    pytest.skip("needs git-lfs (apt-get install git-lfs)", allow_module_level=True)

PASSWORD = "forge-Pa55word-that-must-never-leak"


def safetensors(n: int) -> bytes:
    """A valid safetensors file of one U8 tensor with ``n`` random bytes."""
    import json
    import struct

    header = json.dumps({"w": {"dtype": "U8", "shape": [n], "data_offsets": [0, n]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + os.urandom(n)


V1 = {
    "bert/model.safetensors": safetensors(200_000),
    "bert/config.json": b'{"model_type": "bert", "hidden_size": 32}\n',
    "bert/tokenizer.json": b'{"vocab": [' + b", ".join(b'"t%d"' % i for i in range(900)) + b"]}",
    "bert/run.sh": b"#!/bin/sh\necho hi\n",
    "bert/sub/pointer-lookalike.txt": b"version 2 of the notes\n",
    "bert/empty.bin": b"",
    "other/big.bin": os.urandom(120_000),
    "README.md": b"# models\n",
}
V2_CONFIG = b'{"model_type": "bert", "hidden_size": 64}\n'


def _git(env: dict[str, str], *args: str, cwd: Path | None = None,
         input: bytes | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, input=input)
    assert r.returncode == 0, (args, r.stderr.decode())
    return r.stdout.decode().strip()


def push_repo(forge: Forge, name: str, home: Path, auth: str = "") -> dict[str, str]:
    """org/<name> on the forge: commit v1 (annotated tag v1.0) and v2 on main; returns
    {'v1': sha, 'v2': sha}. Pushed by the real git + git-lfs (pre-push uploads)."""
    env = git_env(home)
    _git(env, "lfs", "install", "--skip-repo")
    _git(env, "init", "-q", "--bare", "-b", "main", str(forge.root / f"repos/org/{name}.git"))
    src = home / f"src-{name}"
    src.mkdir()
    _git(env, "init", "-q", "-b", "main", cwd=src)
    _git(env, "lfs", "track", "*.safetensors", "*.bin", cwd=src)
    for rel, data in V1.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    (src / "bert/run.sh").chmod(0o755)
    os.symlink("config.json", src / "bert/link.json")
    _git(env, "add", "-A", cwd=src)
    _git(env, "commit", "-qm", "v1", cwd=src)
    v1 = _git(env, "rev-parse", "HEAD", cwd=src)
    _git(env, "tag", "-a", "v1.0", "-m", "release", cwd=src)
    (src / "bert/config.json").write_bytes(V2_CONFIG)
    _git(env, "commit", "-qam", "v2", cwd=src)
    v2 = _git(env, "rev-parse", "HEAD", cwd=src)
    url = forge.url(f"org/{name}")
    if auth:
        url = url.replace("http://", f"http://{auth}@")
    _git(env, "push", "-q", url, "main", "v1.0", cwd=src)
    return {"v1": v1, "v2": v2, "src": str(src)}


def official_checkout(forge: Forge, name: str, commit: str, home: Path, dest: Path,
                      auth: str = "") -> Path:
    """What `git clone` + `git lfs pull` give at ``commit`` (the real clients)."""
    env = {**git_env(home), "GIT_LFS_SKIP_SMUDGE": "1"}
    _git(env, "lfs", "install", "--skip-repo")
    url = forge.url(f"org/{name}")
    if auth:
        url = url.replace("http://", f"http://{auth}@")
    _git(env, "clone", "-q", url, str(dest))
    _git(env, "checkout", "-q", commit, cwd=dest)
    _git(env, "lfs", "pull", cwd=dest)
    assert (dest / "bert/model.safetensors").read_bytes() == V1["bert/model.safetensors"]
    return dest


def tree_of(root: Path) -> dict[str, tuple[str, str]]:
    """path → (kind+mode, content digest or link target), .git left out."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel == ".git" or rel.startswith(".git/"):
            continue
        if p.is_symlink():
            out[rel] = ("l", os.readlink(p))
        elif p.is_file():
            x = "x" if os.stat(p).st_mode & stat.S_IXUSR else "-"
            out[rel] = ("f" + x, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    root = tmp_path_factory.mktemp("forge")
    with git_forge(root / "srv") as f:
        f.shas = push_repo(f, "models", root / "home")
        yield f


@pytest.fixture(autouse=True)
def git_home(tmp_path, monkeypatch):
    """reconcile's git runs with a clean HOME: no developer config, no stored secrets."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    return home


def declare(project, url: str, rev: str, subdir: str | None = "bert", extra: str = "",
            key: str = "bert", kind: str = "git-lfs") -> None:
    sub = f', subdir = "{subdir}"' if subdir else ""
    project.write(f'[models.{key}]\nsource.{kind} = {{ url = "{url}", rev = "{rev}"{sub} }}\n'
                  + extra)


def installed(project, key: str = "bert") -> Path:
    """The model's tree in the store (the HF cache's snapshot links to the same bytes)."""
    from reconcile.store import Store

    r = project.run("path", key)
    assert r.code == 0, r.err
    return Store(project.store).model_path(read_lock(project.lock).models[key])


# --- lock and apply -------------------------------------------------------------------


def test_tag_locks_the_peeled_commit_without_any_lfs_download_and_apply_equals_git(
        project, forge, tmp_path):
    forge.clear_log()
    declare(project, forge.url("org/models"), "v1.0")
    r = project.run("lock")
    assert r.code == 0, r.err
    m = read_lock(project.lock).models["bert"]
    assert m.pin == {"url": forge.url("org/models"), "rev": "v1.0", "commit": forge.shas["v1"],
                     "subdir": "bert"}
    files = {f.path: f for f in m.files}
    assert set(files) == {"model.safetensors", "config.json", "tokenizer.json", "run.sh",
                          "sub/pointer-lookalike.txt", "empty.bin", "link.json"}
    weights = files["model.safetensors"]
    assert weights.lfs and weights.sha256 == hashlib.sha256(V1["bert/model.safetensors"]).hexdigest()
    assert weights.size == len(V1['bert/model.safetensors'])
    assert files["run.sh"].executable and not files["config.json"].executable
    assert files["link.json"].type == "l" and files["link.json"].target == "config.json"
    assert files["tokenizer.json"].sha256 == hashlib.sha256(V1["bert/tokenizer.json"]).hexdigest()
    assert not files["sub/pointer-lookalike.txt"].lfs  # starts with "version ", not a pointer
    assert forge.object_gets() == []  # lock read pointers, never an LFS object
    assert any(p.endswith("/objects/batch") for _, _, p, _ in forge.requests())

    r = project.run("apply")
    assert r.code == 0, r.err
    # only this model's LFS object was fetched, not other/big.bin outside the subdir
    oid = hashlib.sha256(V1["other/big.bin"]).hexdigest()
    gets = forge.object_gets()
    assert len(gets) == 1 and oid not in gets[0]
    got = tree_of(installed(project))
    want = tree_of(official_checkout(forge, "models", forge.shas["v1"], tmp_path / "oh",
                                     tmp_path / "clone") / "bert")
    assert got == want


def test_branch_follows_main_until_upgrade_and_a_full_sha_is_taken_as_is(project, forge):
    declare(project, forge.url("org/models"), "main", subdir=None)
    assert project.run("lock").code == 0
    m = read_lock(project.lock).models["bert"]
    assert m.pin["commit"] == forge.shas["v2"]
    assert project.run("apply").code == 0
    root = installed(project)
    assert (root / "bert/config.json").read_bytes() == V2_CONFIG
    assert (root / "other/big.bin").read_bytes() == V1["other/big.bin"]

    declare(project, forge.url("org/models"), forge.shas["v1"])
    assert project.run("lock").code == 0
    assert read_lock(project.lock).models["bert"].pin["commit"] == forge.shas["v1"]
    assert project.run("apply").code == 0
    assert (installed(project) / "config.json").read_bytes() == V1["bert/config.json"]


def test_apply_on_a_fresh_machine_uses_only_the_lock(project, forge, tmp_path, monkeypatch):
    """The lock goes to another machine (empty store, no partial clone): apply fetches."""
    declare(project, forge.url("org/models"), "v1.0")
    assert project.run("lock").code == 0
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "other-store"))
    r = project.run("apply", "--locked")
    assert r.code == 0, r.err
    from reconcile.store import Store

    root = Store(tmp_path / "other-store").model_path(read_lock(project.lock).models["bert"])
    assert (root / "tokenizer.json").read_bytes() == V1["bert/tokenizer.json"]
    assert (root / "model.safetensors").read_bytes() == V1["bert/model.safetensors"]
    clone = next((tmp_path / "other-store" / "cache" / "git").iterdir())
    config = (clone / "config").read_text()
    assert "promisor" in config  # a partial clone: LFS objects and history never in it


def test_errors_are_one_line_each(project, forge):
    url = forge.url("org/models")
    for rev, needle in (("no-such-branch", "no branch or tag named 'no-such-branch'"),
                        ("0" * 40, "does not exist on the server"),
                        ("abc1234", "abbreviated commit")):
        declare(project, url, rev)
        r = project.run("lock")
        assert r.code in (1, 2) and needle in r.err, (rev, r.err)
        assert "Traceback" not in r.err
    declare(project, forge.url("org/nothing-here"), "main")
    r = project.run("lock")
    assert r.code == 1 and "repository not found" in r.err, r.err
    declare(project, url, "v1.0", subdir="../etc")
    r = project.run("lock")
    assert r.code == 2 and "models.bert.source.git-lfs.subdir" in r.err, r.err
    declare(project, url, "v1.0", subdir="nope")
    r = project.run("lock")
    assert r.code == 1 and "no directory 'nope'" in r.err, r.err
    declare(project, url, "--upload-pack=touch /tmp/pwned")
    r = project.run("lock")
    assert r.code == 2 and "models.bert.source.git-lfs.rev" in r.err
    declare(project, "ssh://git@example.com/org/models.git", "main")
    r = project.run("lock")
    assert r.code == 2 and "https URL" in r.err


def test_missing_lfs_object_and_malformed_pointer_fail_the_lock_by_name(
        project, forge, tmp_path):
    env = git_env(tmp_path / "h")
    _git(env, "init", "-q", "--bare", "-b", "main", str(forge.root / "repos/org/broken.git"))
    src = tmp_path / "broken"
    src.mkdir()
    _git(env, "init", "-q", "-b", "main", cwd=src)
    good_missing = b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"ab" * 32 \
        + b"\nsize 12\n"
    (src / "a").mkdir()
    (src / "a/weights.bin").write_bytes(good_missing)  # a pointer whose object was never pushed
    (src / "b").mkdir()
    (src / "b/weights.bin").write_bytes(b"version https://git-lfs.github.com/spec/v1\n"
                                        b"size 12\noid sha256:" + b"ab" * 32 + b"\n")
    _git(env, "add", "-A", cwd=src)
    _git(env, "commit", "-qm", "x", cwd=src)
    _git(env, "push", "-q", forge.url("org/broken"), "main", cwd=src)
    declare(project, forge.url("org/broken"), "main", subdir="a")
    r = project.run("lock")
    assert r.code == 1 and "LFS object of weights.bin" in r.err and "missing on the server" in r.err
    declare(project, forge.url("org/broken"), "main", subdir="b")
    r = project.run("lock")
    assert r.code == 1 and "b/weights.bin" in r.err and "malformed LFS pointer" in r.err, r.err


def test_lfsconfig_names_the_endpoint(project, forge, tmp_path):
    """git-lfs's rule: .lfsconfig's lfs.url wins over <url>.git/info/lfs."""
    env = git_env(tmp_path / "h")
    _git(env, "init", "-q", "--bare", "-b", "main", str(forge.root / "repos/org/code.git"))
    src = tmp_path / "code"
    src.mkdir()
    _git(env, "init", "-q", "-b", "main", cwd=src)
    oid = hashlib.sha256(V1["bert/model.safetensors"]).hexdigest()
    (src / "model.safetensors").write_bytes(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\n"
        f"size {len(V1['bert/model.safetensors'])}\n".encode())
    (src / ".lfsconfig").write_text(f'[lfs]\n\turl = {forge.url("org/models.git/info/lfs")}\n')
    _git(env, "add", "-A", cwd=src)
    _git(env, "commit", "-qm", "x", cwd=src)
    _git(env, "push", "-q", forge.url("org/code"), "main", cwd=src)
    forge.clear_log()
    declare(project, forge.url("org/code"), "main", subdir=None)
    assert project.run("lock").code == 0
    assert project.run("apply").code == 0
    assert (installed(project) / "model.safetensors").read_bytes() == V1["bert/model.safetensors"]
    assert any(p == "/org/models.git/info/lfs/objects/batch" for _, _, p, _ in forge.requests())


def test_mk_git_lfs_is_the_seeds_factory(project, forge):
    import reconcile
    from reconcile.sources import mk_git_lfs

    git = mk_git_lfs(base_url=forge.base + "/org")
    path = reconcile.fetch_model({"name": "bert", "source": git(
        {"repo": "models", "rev": "v1.0", "subdir": "bert"})})
    assert (Path(path) / "config.json").read_bytes() == V1["bert/config.json"]
    assert (Path(path) / "run.sh").stat().st_mode & stat.S_IXUSR


# --- auth, redirects, expiry, xet ------------------------------------------------------


@pytest.fixture(scope="module")
def private_forge(tmp_path_factory):
    """Basic auth on git and the batch API; object downloads 302 to a CDN that refuses
    any request carrying credentials."""
    root = tmp_path_factory.mktemp("private")
    with git_forge(root / "srv", FORGE_AUTH=f"alice:{PASSWORD}", FORGE_CDN="1") as f:
        f.shas = push_repo(f, "models", root / "home", auth=f"alice:{PASSWORD}")
        yield f


def test_auth_from_models_toml_reaches_git_and_lfs_never_the_cdn_lock_or_store(
        project, private_forge, monkeypatch):
    declare(project, private_forge.url("org/models"), "v1.0")
    r = project.run("lock")
    assert r.code == 1 and "authentication required" in r.err, r.err
    monkeypatch.setenv("FORGE_USER", "alice")
    monkeypatch.setenv("FORGE_PASSWORD", PASSWORD)
    declare(project, private_forge.url("org/models"), "v1.0",
            extra='auth = { usernameEnvVar = "FORGE_USER", passwordEnvVar = "FORGE_PASSWORD" }\n')
    private_forge.clear_log()
    r = project.run("lock")
    assert r.code == 0, r.err
    r2 = project.run("apply")
    assert r2.code == 0, r2.err
    assert (installed(project) / "model.safetensors").read_bytes() == V1["bert/model.safetensors"]
    cdn = [(p, s) for port, _m, p, s in private_forge.requests() if port == private_forge.cdn_port]
    assert cdn and all(s in (200, 206) for _p, s in cdn)  # 400 = credentials reached the CDN
    for text in (project.lock.read_text(), r.out + r.err + r2.out + r2.err):
        assert PASSWORD not in text and "alice" not in text
    for p in project.store.rglob("*"):
        if p.is_file() and p.stat().st_size < 10_000_000:
            assert PASSWORD.encode() not in p.read_bytes(), p


def test_the_users_git_credential_helper_is_used(project, private_forge, git_home):
    """Whatever works for `git clone` works here: a stored credential, no auth in toml."""
    env = git_env(git_home)
    _git(env, "config", "--global", "credential.helper", "store")
    host = f"127.0.0.1:{private_forge.port}"
    (git_home / ".git-credentials").write_text(f"http://alice:{PASSWORD}@{host}\n")
    declare(project, private_forge.url("org/models"), "v1.0")
    r = project.run("lock")
    assert r.code == 0, r.err
    r = project.run("apply")
    assert r.code == 0, r.err
    assert (installed(project) / "model.safetensors").read_bytes() == V1["bert/model.safetensors"]
    for p in (project.store / "cache").rglob("config"):
        assert PASSWORD not in p.read_text()


def test_expired_hrefs_are_asked_for_again_before_use(project, tmp_path):
    """giftless signs hrefs for FORGE_LIFETIME seconds (expires_in). One batch answer
    serves every object while it lives; once it nears its end, the href is asked for
    anew before use, so the object store never sees an expired one (no 401)."""
    from reconcile.config import load_manifest
    from reconcile.resolve import SourceContext, make_source
    from reconcile.store import Store

    with git_forge(tmp_path / "srv") as f:  # git-lfs will not push with 2-second hrefs
        push_repo(f, "models", tmp_path / "h")
    with git_forge(tmp_path / "srv", FORGE_LIFETIME="2") as f:
        declare(project, f.url("org/models"), "v1.0", subdir=None)
        assert project.run("lock").code == 0
        model = read_lock(project.lock).models["bert"]
        weights = next(x for x in model.files if x.path == "bert/model.safetensors")
        source = make_source(load_manifest(project.manifest).models["bert"],
                             SourceContext(store=Store(project.store).ensure()))
        f.clear_log()

        def batches() -> int:
            return sum(p.endswith("/objects/batch") for _, _, p, _ in f.requests())

        data = b"".join(source.open(model.pin, weights))
        assert data == V1["bert/model.safetensors"] and batches() == 1
        other = next(x for x in model.files if x.path == "other/big.bin")
        assert b"".join(source.open(model.pin, other)) == V1["other/big.bin"]
        assert batches() == 1  # both hrefs came in the first answer
        time.sleep(2.1)
        assert b"".join(source.open(model.pin, weights)) == V1["bert/model.safetensors"]
        assert batches() == 2
        assert all(s < 400 for *_x, s in f.requests()), f.requests()
        source.close()


def test_a_xet_only_server_is_refused_at_lock_with_the_reason(project, tmp_path):
    with git_forge(tmp_path / "srv") as f:
        push_repo(f, "models", tmp_path / "h")
    with git_forge(tmp_path / "srv", FORGE_XET="1") as f:
        declare(project, f.url("org/models"), "v1.0", kind="git-xet", subdir=None)
        r = project.run("lock")
        assert r.code == 1, r.err
        assert "offers only the 'xet' transfer" in r.err and "basic transfer" in r.err
        assert not project.lock.exists()


def test_git_xet_on_any_other_host_is_git_lfs(project, forge):
    declare(project, forge.url("org/models"), "v1.0", kind="git-xet", subdir=None)
    r = project.run("lock")
    assert r.code == 0, r.err
    assert project.run("apply").code == 0
    assert (installed(project) / "bert/model.safetensors").read_bytes() == \
        V1["bert/model.safetensors"]


def test_git_xet_rejects_xethub_urls_with_the_reason(project):
    declare(project, "xet://xethub/org/repo", "main", kind="git-xet", subdir=None)
    r = project.run("lock")
    assert r.code == 2 and "models.bert.source.git-xet.url" in r.err and "https" in r.err


def test_git_xet_on_the_hub_goes_through_the_hugging_face_source(hf_env, hub):
    """A Hub URL: the tree API's sha256 pins, the resolve bridge, the HF cache."""
    from tests.integration.conftest import FILES

    declare(hf_env, hub.url + "/acme/tiny.git", "v1.0", kind="git-xet", subdir=None)
    r = hf_env.run("lock")
    assert r.code == 0, r.err
    m = read_lock(hf_env.lock).models["bert"]
    assert m.pin["repo"] == "acme/tiny" and len(m.pin["commit"]) == 40
    weights = next(f for f in m.files if f.path == "model.safetensors")
    assert weights.lfs and weights.sha256 == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    assert hf_env.run("apply").code == 0
    snap = hf_env.cache / "models--acme--tiny" / "snapshots" / m.pin["commit"]
    assert (snap / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    declare(hf_env, hub.url + "/datasets/acme/data", "main", kind="git-xet", subdir=None)
    assert hf_env.run("lock").code == 0
    assert hf_env.run("apply").code == 0
    assert list(hf_env.cache.glob("datasets--acme--data/snapshots/*/train.csv"))


def test_a_hand_edited_lock_cannot_point_the_model_elsewhere(project, forge):
    declare(project, forge.url("org/models"), "v1.0")
    assert project.run("lock").code == 0
    text = project.lock.read_text()
    for old, new in ((forge.url("org/models"), forge.url("org/evil")),
                     ('subdir = "bert"', 'subdir = "other"'),
                     (forge.shas["v1"], "not-a-commit")):
        project.lock.write_text(text.replace(old, new))
        r = project.run("apply", "--locked")
        assert r.code != 0 and "models.lock" in r.err, (old, r.err)


def test_a_dead_server_is_one_line(project):
    from tests.servers import free_port

    declare(project, f"http://127.0.0.1:{free_port()}/org/models", "main",
            extra="network.retry = { maxAttempts = 1 }\n")
    r = project.run("lock")
    assert r.code == 1 and r.err.count("\n") <= 3 and "Traceback" not in r.err, r.err
    assert "Failed to connect" in r.err or "Could not connect" in r.err or "refused" in r.err


@pytest.mark.parametrize(("stderr", "kind", "text"), [
    ("fatal: unable to access 'http://127.0.0.1:40123/o/r/': Failed to connect to 127.0.0.1"
     " port 40123 after 0 ms: Couldn't connect to server", "Transient", "Failed to connect"),
    ("fatal: unable to access 'http://h:40301/o/r/': The requested URL returned error: 403",
     "AuthRequired", "authentication required"),
    ("fatal: Authentication failed for 'http://h/o/r/'", "AuthRequired",
     "authentication required"),
    ("fatal: repository 'http://h:4040/o/r/' not found", "NotFound", "repository not found"),
    ("fatal: couldn't find remote ref refs/heads/x", "NotFound", "does not exist"),
])
def test_git_failures_are_named_by_what_happened_not_by_digits_in_a_port(stderr, kind, text):
    from reconcile.sources.git_lfs import GitLfsSource

    src = GitLfsSource.__new__(GitLfsSource)
    src.url = "http://h/o/r"
    err = src._git_error(stderr, "")
    assert type(err).__name__ == kind and text in err.message, (type(err), err.message)


def test_a_forge_behind_a_company_ca(project, forge, tmp_path):
    """https with a certificate from a private CA (nginx in front of the forge):
    network.caBundle reaches git (http.sslCAInfo) and the batch API alike."""
    from tests.servers import make_ca, nginx, nginx_binary

    if nginx_binary() is None:
        pytest.skip("needs nginx (apt-get install nginx-light)")
    ca, cert, key = make_ca(tmp_path / "pki")
    (tmp_path / "empty").mkdir()
    proxy = (f"location / {{ proxy_pass http://127.0.0.1:{forge.port}; proxy_set_header Host"
             " $http_host; proxy_set_header X-Forwarded-Proto https; proxy_buffering off;"
             " client_max_body_size 0; }")
    with nginx(tmp_path / "empty", tmp_path / "ng", extra=proxy, tls=(cert, key)) as url:
        declare(project, url + "/org/models", "v1.0", extra="network.retry = { maxAttempts = 1 }\n")
        r = project.run("lock")
        assert r.code == 1 and "certificate" in r.err and "caBundle" in r.err, r.err
        declare(project, url + "/org/models", "v1.0",
                extra=f'[models.bert.network]\ncaBundle = "{ca}"\n')
        r = project.run("lock")
        assert r.code == 0, r.err
        forge.clear_log()
        assert project.run("apply").code == 0
        assert forge.object_gets()  # the object came through nginx from the forge
    assert (installed(project) / "model.safetensors").read_bytes() == V1["bert/model.safetensors"]


def _tls_front(forge: Forge, tmp_path: Path):
    """nginx with TLS in front of ``forge``, logging every request's Authorization
    header (a plain-http request to its port is logged too, answered 400): the place a
    credential sent in the clear would show."""
    from tests.servers import free_port, make_ca, nginx_binary, run_nginx

    if nginx_binary() is None:
        pytest.skip("needs nginx (apt-get install nginx-light)")
    ca, cert, key = make_ca(tmp_path / "pki")
    work, port = tmp_path / "ng", free_port()
    work.mkdir()
    (work / "nginx.conf").write_text(f"""
daemon off; pid {work}/nginx.pid; error_log {work}/error.log; user root;
worker_processes 1; events {{ worker_connections 64; }}
http {{
  log_format auth '$scheme $request_method $uri $status [$http_authorization]';
  access_log {work}/access.log auth;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  server {{
    listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};
    location / {{ proxy_pass http://127.0.0.1:{forge.port}; proxy_set_header Host $http_host;
      proxy_set_header X-Forwarded-Proto https; proxy_buffering off; client_max_body_size 0; }}
  }}
}}
""")
    return ca, work, run_nginx(work / "nginx.conf", work, port)


def test_an_http_lfs_url_for_an_https_repo_is_refused_before_credentials_go_out(
        project, private_forge, tmp_path, monkeypatch):
    """.lfsconfig names the same host and port over plain http: the model's credentials
    would travel in the clear. The lock stops first, naming the endpoint and the fix."""
    env = git_env(tmp_path / "h")
    repo = private_forge.root / "repos/org/downgrade.git"
    _git(env, "init", "-q", "--bare", "-b", "main", str(repo))
    src = tmp_path / "src"
    src.mkdir()
    _git(env, "init", "-q", "-b", "main", cwd=src)
    data = V1["bert/model.safetensors"]
    (src / "model.safetensors").write_bytes(
        f"version https://git-lfs.github.com/spec/v1\noid sha256:"
        f"{hashlib.sha256(data).hexdigest()}\nsize {len(data)}\n".encode())
    ca, work, running = _tls_front(private_forge, tmp_path)
    monkeypatch.setenv("FORGE_USER", "alice")
    monkeypatch.setenv("FORGE_PASSWORD", PASSWORD)
    with running as plain:  # run_nginx names the port http://; it speaks TLS only
        url = plain.replace("http://", "https://")
        (src / ".lfsconfig").write_text(f"[lfs]\n\turl = {plain}/org/models.git/info/lfs\n")
        _git(env, "add", "-A", cwd=src)
        _git(env, "commit", "-qm", "x", cwd=src)
        _git(env, "push", "-q", str(repo), "main", cwd=src)
        declare(project, url + "/org/downgrade", "main", subdir=None,
                extra='auth = { usernameEnvVar = "FORGE_USER", passwordEnvVar = "FORGE_PASSWORD" }'
                f'\n[models.bert.network]\ncaBundle = "{ca}"\n')
        r = project.run("lock")
        log = (work / "access.log").read_text()
    assert [ln for ln in log.splitlines() if ln.startswith("https GET")], log  # git went over TLS
    assert not [ln for ln in log.splitlines() if not ln.startswith("https ")], log
    assert r.code == 1, r.err
    assert ".lfsconfig" in r.err and "http://" in r.err and "https" in r.err, r.err
    assert "Traceback" not in r.err and PASSWORD not in r.err


def test_lfs_credentials_go_to_the_repositorys_origin_only():
    """Scheme, host and port: http://host/ is not https://host/, nor is another port."""
    from reconcile.sources.git_lfs import same_origin

    repo = "https://git.example.com/org/m"
    assert same_origin("https://git.example.com/org/m.git/info/lfs", repo)
    assert same_origin("https://GIT.example.com:443/org/m.git/info/lfs", repo)
    assert not same_origin("http://git.example.com/org/m.git/info/lfs", repo)
    assert not same_origin("https://git.example.com:8443/org/m.git/info/lfs", repo)
    assert not same_origin("https://lfs.example.com/org/m", repo)
    assert not same_origin("https://git.example.com.evil.net/org/m", repo)


def test_two_projects_share_one_partial_clone_per_url(project, forge, tmp_path):
    """Another project on the same store, at another rev, at the same time: one clone
    (a lock per URL serialises fetches), both models right."""
    import threading

    from tests.conftest import Project

    other = Project(tmp_path / "proj2", project.store, project.cache, project.capsys)
    other.dir.mkdir()
    declare(project, forge.url("org/models"), "v1.0")
    declare(other, forge.url("org/models"), "main")
    results = {}
    threads = [threading.Thread(target=lambda p=p, k=k: results.__setitem__(k, p.sh("apply")))
               for p, k in ((project, "a"), (other, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results["a"].code == 0 and results["b"].code == 0, results["a"].err + results["b"].err
    assert (installed(project) / "config.json").read_bytes() == V1["bert/config.json"]
    assert (installed(other) / "config.json").read_bytes() == V2_CONFIG
    assert len(list((project.store / "cache" / "git").iterdir())) == 1


# --- #31 case 1: a lock's result does not depend on what the shared clone holds --------


def test_a_second_revision_locks_its_new_lfs_files_as_lfs_whatever_the_clone_holds(
        project, forge, tmp_path):
    """Project A locks v1 (the shared partial clone now holds v1); the repo moves on with
    a new LFS `.bin`, a new in-tree symlink and a new regular file over 1 KiB; project B
    on the same store locks main. Every file B installs equals `git clone` + `git lfs
    pull` at that commit, and B's lock equals one made from a fresh store."""
    from tests.conftest import Project

    home = tmp_path / "pusher"
    home.mkdir()
    shas = push_repo(forge, "moving", home)
    env, src = git_env(home), Path(shas["src"])
    url = forge.url("org/moving")
    declare(project, url, "v1.0")
    assert project.run("apply").code == 0
    (src / "bert/extra.bin").write_bytes(os.urandom(50_000))  # LFS (*.bin is tracked)
    os.symlink("extra.bin", src / "bert/alias.bin")
    (src / "bert/notes.txt").write_bytes(b"n" * 3000)  # a plain git file over 1 KiB
    _git(env, "add", "-A", cwd=src)
    _git(env, "commit", "-qm", "v3", cwd=src)
    v3 = _git(env, "rev-parse", "HEAD", cwd=src)
    _git(env, "push", "-q", url, "main", cwd=src)

    other = Project(tmp_path / "b", project.store, project.cache, project.capsys)
    other.dir.mkdir()
    declare(other, url, "main")
    r = other.run("apply")
    assert r.code == 0, r.err
    lock_b = read_lock(other.lock).models["bert"]
    assert lock_b.pin["commit"] == v3
    extra = next(f for f in lock_b.files if f.path == "extra.bin")
    assert extra.lfs and extra.size == 50_000
    git = official_checkout(forge, "moving", v3, tmp_path / "h2", tmp_path / "co")
    want = {k.removeprefix("bert/"): v for k, v in tree_of(git).items() if k.startswith("bert/")}
    assert tree_of(installed(other)) == want

    fresh = Project(tmp_path / "c", tmp_path / "store2", tmp_path / "cache2", project.capsys,
                    own_store=True)
    fresh.dir.mkdir()
    declare(fresh, url, v3)
    assert fresh.run("lock").code == 0, "a fresh store locks it too"
    assert read_lock(fresh.lock).models["bert"].hash == lock_b.hash

    # the next revision names an LFS object the server never received: the lock says so
    (src / "bert/ghost.dat").write_bytes(b"version https://git-lfs.github.com/spec/v1\noid"
                                         b" sha256:" + b"cd" * 32 + b"\nsize 12\n")
    _git(env, "add", "-A", cwd=src)
    _git(env, "commit", "-qm", "v4", cwd=src)
    _git(env, "-c", "core.hooksPath=/dev/null", "push", "-q", url, "main", cwd=src)
    r = other.run("lock", "--upgrade")
    assert r.code == 1 and "ghost.dat" in r.err and "missing on the server" in r.err, r.err


def test_a_force_pushed_branch_whose_locked_commit_is_gone_hints_the_upgrade(
        project, forge, tmp_path, monkeypatch):
    """main rewritten (force-push, then the server's gc): the locked commit is gone and
    apply says how to take what the branch names now."""
    shas = push_repo(forge, "rewritten", tmp_path / "pusher")
    declare(project, forge.url("org/rewritten"), "main")
    assert project.run("lock").code == 0
    assert read_lock(project.lock).models["bert"].pin["commit"] == shas["v2"]
    bare = forge.root / "repos/org/rewritten.git"
    env = git_env(tmp_path / "pusher")
    _git(env, "update-ref", "refs/heads/main", shas["v1"], cwd=bare)
    _git(env, "reflog", "expire", "--expire=now", "--all", cwd=bare)
    _git(env, "gc", "-q", "--prune=now", cwd=bare)
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "other-store"))
    r = project.run("apply", "--locked")
    assert r.code == 1 and shas["v2"][:12] in r.err, r.err
    assert "`reconcile lock --upgrade bert`" in r.err and "Traceback" not in r.err, r.err


def test_a_lock_applied_on_a_store_filled_from_a_team_cache_is_vouched_for(
        project, forge, tmp_path, monkeypatch):
    """Found by the stateful test: git files over 1 KiB are listed without a size, and
    the check of a lock made elsewhere took their size from the listing (0), so an
    honest lock was refused on a store `pull` had filled."""
    declare(project, forge.url("org/models"), "main")
    assert project.run("apply").code == 0
    cache = tmp_path / "team"
    assert project.run("push", "--cache", str(cache)).code == 0
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "s2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "h2"))
    assert project.run("pull", "--cache", str(cache)).code == 0
    forge.clear_log()
    r = project.run("apply", "--cache", "off")
    assert r.code == 0, r.err
    assert not forge.object_gets(), "the LFS objects came from the pulled store"
    from reconcile.store import Store

    root = Store(tmp_path / "s2").model_path(read_lock(project.lock).models["bert"])
    assert (root / "tokenizer.json").read_bytes() == V1["bert/tokenizer.json"]
