"""The Hugging Face source against a stand-in Hub that the official client accepts.

First the stand-in is proven faithful (huggingface_hub downloads from it and raises
its own exceptions for its errors); then reconcile's cache is compared with the
official client's, file by file and blob name by blob name.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from tests.hub import Hub, git_oid
from tests.integration.conftest import FILES, TOKEN, WEIGHTS

pytestmark = pytest.mark.integration

@pytest.fixture(params=["httpx", "direct"])
def transport(request, monkeypatch):
    """Run byte transfers through httpx, and again through the http.client fast path."""
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if request.param == "direct" else str(1 << 62))
    return request.param


def official_cache(hub: Hub, tmp: Path, repo: str, **kw) -> Path:
    """Run huggingface_hub.snapshot_download in a clean process; return its cache dir."""
    cache = tmp / "official"
    code = ("import sys, json; from huggingface_hub import snapshot_download as s; "
            "print(s(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3], "
            "**json.loads(sys.argv[4])))")
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    r = subprocess.run([sys.executable, "-c", code, repo, str(cache), hub.url, json.dumps(kw)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    return cache


def cache_listing(cache: Path) -> dict[str, tuple[str, str]]:
    """Every entry of a HF cache as (kind, link target or content) — comparable across caches."""
    out = {}
    for p in sorted(cache.rglob("*")):
        rel = str(p.relative_to(cache))
        if rel.startswith((".locks", "CACHEDIR.TAG")) or "/.no_exist" in rel:
            continue
        if p.is_symlink():
            out[rel] = ("link", os.readlink(p))
        elif p.is_file():
            out[rel] = ("file", p.read_bytes().decode("utf-8", "replace") if p.stat().st_size
                        < 10_000 else str(p.stat().st_size))
        else:
            out[rel] = ("dir", "")
    return out


# --- the stand-in is faithful --------------------------------------------------------


@pytest.mark.parametrize("repo,kw", [
    ("acme/tiny", {}),
    ("acme/tiny", {"revision": "v1.0"}),
    ("acme/tiny", {"revision": "refs/pr/1"}),
    ("acme/data", {"repo_type": "dataset"}),
    ("gpt2x", {}),
    ("acme/many", {}),
])
def test_official_client_downloads_from_the_stand_in(hub, tmp_path, repo, kw):
    hub.page_size = 10  # acme/many needs three pages
    cache = official_cache(hub, tmp_path, repo, **kw)
    from huggingface_hub import scan_cache_dir

    info = scan_cache_dir(cache)
    assert not info.warnings and len(info.repos) == 1
    folder = next(cache.glob("*--*"))
    for link in folder.glob("snapshots/*/**/*"):
        if link.is_symlink():
            assert os.readlink(link).startswith("../")
            name = Path(os.readlink(link)).name
            data = link.read_bytes()
            assert name in (git_oid(data), __import__("hashlib").sha256(data).hexdigest())


def test_official_client_raises_its_own_errors_for_the_stand_ins(hub, tmp_path, monkeypatch):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        GatedRepoError,
        RemoteEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    kw = {"cache_dir": tmp_path / "c", "endpoint": hub.url}
    with pytest.raises(RepositoryNotFoundError):
        hf_hub_download("acme/nope", "config.json", **kw)
    with pytest.raises(RevisionNotFoundError):
        hf_hub_download("acme/tiny", "config.json", revision="nope", **kw)
    with pytest.raises(RemoteEntryNotFoundError):
        hf_hub_download("acme/tiny", "missing.txt", **kw)
    with pytest.raises(GatedRepoError):
        hf_hub_download("acme/gated", "config.json", token=False, **kw)
    with pytest.raises(GatedRepoError):
        hf_hub_download("acme/gated", "config.json", token="hf_notgranted", **kw)
    assert Path(hf_hub_download("acme/gated", "config.json", token=TOKEN, **kw)).read_bytes() == b"{}"


# --- reconcile's cache equals the official client's -----------------------------------


@pytest.mark.parametrize("repo,decl,kw", [
    ("acme/tiny", 'repo = "acme/tiny"', {}),
    ("acme/tiny", 'repo = "acme/tiny", revision = "v1.0"', {"revision": "v1.0"}),
    ("acme/data", 'repo = "acme/data", repoType = "dataset"', {"repo_type": "dataset"}),
    ("acme/demo", 'repo = "acme/demo", repoType = "space"', {"repo_type": "space"}),
    ("gpt2x", 'repo = "gpt2x"', {}),
])
def test_cache_is_identical_to_the_official_clients(hf_env, hub, tmp_path, repo, decl, kw):
    hf_env.write(f"[models.m]\nsource.huggingface = {{ {decl} }}\n")
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    ours = cache_listing(hf_env.cache)
    theirs = cache_listing(official_cache(hub, tmp_path, repo, **kw))
    if kw.get("revision"):  # the one difference, on purpose: from_pretrained(repo) offline
        folder = "models--" + repo.replace("/", "--")  # finds the tag's snapshot too
        theirs[f"{folder}/refs/main"] = theirs[f"{folder}/refs/{kw['revision']}"]
    assert ours == theirs
    from huggingface_hub import scan_cache_dir

    assert not scan_cache_dir(hf_env.cache).warnings


def test_pr_ref_and_full_sha_revisions(hf_env, hub):
    sha = hub.repos[("model", "acme/tiny")].refs["v1.0"]
    hf_env.write(f'[models.pr]\nsource.huggingface = {{ repo = "acme/tiny", revision = "refs/pr/1" }}\n'
                 f'[models.sha]\nsource.huggingface = {{ repo = "acme/tiny", revision = "{sha}" }}\n'
                 'integration.huggingface.refs = ["pinned"]\n')
    assert hf_env.run("apply").code == 0
    refs = hf_env.cache / "models--acme--tiny" / "refs"
    assert (refs / "refs" / "pr" / "1").read_text() != sha
    assert (refs / "pinned").read_text() == sha
    # a full sha needs no revision call
    assert not hub.requests("GET", f"/revision/{sha}")


def test_transformers_loads_the_linked_model_offline(hf_env):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("apply").code == 0
    code = ("from transformers import AutoConfig, AutoTokenizer\n"
            "c = AutoConfig.from_pretrained('acme/tiny'); t = AutoTokenizer.from_pretrained('acme/tiny')\n"
            "print(c.model_type, t('hello world')['input_ids'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "bert [4, 5]"


def test_lock_downloads_small_files_only_and_apply_fetches_the_rest(hf_env, hub):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("lock").code == 0
    assert hub.bytes_sent("model.safetensors") == 0
    assert hub.bytes_sent("/acme/tiny/config.json") == len(FILES["config.json"])
    f = {x.path: x for x in read_lock(hf_env.lock).models["m"].files}
    assert f["model.safetensors"].lfs and f["model.safetensors"].size == len(WEIGHTS)
    assert f["config.json"].blob == git_oid(FILES["config.json"])
    r = hf_env.run("apply")
    assert r.code == 0 and "1 fetched" in r.out  # only the LFS file; the rest is in the store
    assert hub.bytes_sent("model.safetensors") == len(WEIGHTS)
    assert hub.bytes_sent("/acme/tiny/config.json") == len(FILES["config.json"])


def test_files_and_exclude_globs_and_no_match_lists_what_exists(hf_env):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny", files = ["*.json", "sub/"],'
                 ' exclude = ["tokenizer*"] }\n')
    assert hf_env.run("lock").code == 0
    paths = {f.path for f in read_lock(hf_env.lock).models["m"].files}
    assert paths == {"config.json", "sub/readme.txt", "sub/deeper/notes.md"}
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny", files = ["*.gguf"] }\n')
    r = hf_env.sh("lock")
    assert r.code == 1 and "no files matched" in r.err and "model.safetensors" in r.err


def test_tree_pagination_is_followed(hf_env, hub):
    hub.page_size = 7
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/many" }\n')
    assert hf_env.run("lock").code == 0
    assert len(read_lock(hf_env.lock).models["m"].files) == 25
    assert len(hub.requests("GET", "/tree/")) == 4


@pytest.mark.parametrize("decl,expect", [
    ('repo = "acme/nope"', "not found"),
    ('repo = "acme/tiny", revision = "nope"', "has no revision 'nope'"),
])
def test_not_found_errors_have_their_own_messages(hf_env, decl, expect):
    hf_env.write(f"[models.m]\nsource.huggingface = {{ {decl} }}\n")
    r = hf_env.sh("lock")
    assert r.code == 1 and expect in r.err and "Traceback" not in r.err


def test_lock_names_every_failing_model_and_writes_no_lock(hf_env):
    hf_env.write('[models.good]\nsource.huggingface = { repo = "acme/tiny" }\n'
                 '[models.gone]\nsource.huggingface = { repo = "acme/nope" }\n'
                 '[models.typo]\nsource.huggingface = { repo = "acme/tiny", revision = "nope" }\n')
    r = hf_env.sh("lock")
    assert r.code == 1 and "2 models failed to lock" in r.err and "Traceback" not in r.err
    assert "models.gone: model acme/nope not found" in r.err
    assert "models.typo: model acme/tiny has no revision 'nope'" in r.err
    assert "hint: check the repo id" in r.err  # each keeps its own hint
    assert not hf_env.lock.exists()
    hf_env.write('[models.gone]\nsource.huggingface = { repo = "acme/nope" }\n')
    r = hf_env.sh("lock")  # one failure: its own error, named
    assert r.code == 1 and r.err.startswith("error: models.gone: model acme/nope not found")


def test_gated_repo_without_token_gets_the_actionable_message(transport, hf_env, monkeypatch):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/gated" }\n')
    r = hf_env.sh("apply")
    assert r.code == 1 and "gated" in r.err and "accept the licence" in r.err
    assert "HF_TOKEN" in r.err and "/acme/gated" in r.err
    monkeypatch.setenv("HF_TOKEN", "hf_notgranted")
    r = hf_env.sh("apply")
    assert r.code == 1 and "not been granted" in r.err


def test_token_reaches_only_the_hub_and_never_the_lock_store_or_output(transport, hf_env, hub, monkeypatch):
    monkeypatch.setenv("MY_TOKEN", TOKEN)
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/gated" }\n'
                 'auth = { tokenEnvVar = "MY_TOKEN" }\n')
    r = hf_env.sh("apply")
    assert r.code == 0, r.err
    assert TOKEN not in r.out + r.err
    assert TOKEN not in hf_env.lock.read_text()
    for p in hf_env.store.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert TOKEN.encode() not in p.read_bytes()
    auth_by_host = {(host, auth) for _, host, _, auth in hub.log}
    assert any(a == f"Bearer {TOKEN}" for h, a in auth_by_host if h.startswith("127.0.0.1"))
    assert all(a is None for h, a in auth_by_host if h.startswith("localhost"))  # the CDN


def test_token_file_and_hf_home_token(hf_env, tmp_path, monkeypatch):
    tf = tmp_path / "tok"
    tf.write_text(TOKEN + "\n")
    hf_env.write(f'[models.m]\nsource.huggingface = {{ repo = "acme/gated" }}\nauth = {{ tokenFile = "{tf}" }}\n')
    assert hf_env.sh("apply").code == 0
    (tmp_path / "hfhome").mkdir(exist_ok=True)
    (tmp_path / "hfhome" / "token").write_text(TOKEN)
    hf_env.write('[models.m2]\nsource.huggingface = { repo = "acme/gated" }\nintegration.huggingface.refs = ["x"]\n')
    assert hf_env.sh("lock", "--upgrade").code == 0


@pytest.mark.parametrize("kind,kw", [
    ("status", {"code": 500}),
    ("status", {"code": 503}),
    ("429", {"retry_after": 1}),
    ("reset", {"after": 100_000}),
    ("truncate", {"after": 50_000}),
])
def test_transient_faults_are_retried_and_resumed(transport, hf_env, hub, kind, kw):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n'
                 'network = { retry = { maxAttempts = 3, baseDelay = 0.05 } }\n')
    assert hf_env.run("lock").code == 0
    hub.fault("*model.safetensors", kind, **kw)
    import time

    t = time.monotonic()
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    assert all(f["count"] == 0 for f in hub.faults)  # the fault really happened
    assert hf_env.run("verify").code == 0
    if kind == "429":
        assert time.monotonic() - t >= kw["retry_after"]  # Retry-After was honoured
    if kind in ("reset", "truncate"):  # resumed with Range, not restarted
        assert any("Range" in str(x) for x in hub.log) or hub.bytes_sent("model.safetensors") < 2 * len(WEIGHTS)
        assert hub.bytes_sent("model.safetensors") < len(WEIGHTS) + kw["after"] + 1


def test_corrupted_bytes_are_refused_and_nothing_is_installed(transport, hf_env, hub):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("lock").code == 0
    hub.fault("*model.safetensors", "corrupt")
    r = hf_env.sh("apply")
    assert r.code == 1 and "sha256 mismatch" in r.err
    assert not (hf_env.cache / "models--acme--tiny" / "refs" / "main").exists()
    assert hf_env.sh("apply").code == 0  # the next run converges


def test_404_and_401_are_not_retried(hf_env, hub):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/nope" }\n'
                 'network = { retry = { maxAttempts = 5, baseDelay = 0.01 } }\n')
    assert hf_env.sh("lock").code == 1
    assert len(hub.requests("GET", "/api/models/acme/nope")) == 1


def test_offline_apply_with_missing_objects_fails_clearly(hf_env, hub):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("lock").code == 0
    n = len(hub.log)
    r = hf_env.sh("apply", "--offline")
    assert r.code == 1 and "--offline" in r.err
    assert len(hub.log) == n


@pytest.mark.skipif(__import__("shutil").which("tinyproxy") is None, reason="needs tinyproxy")
def test_network_proxy_carries_every_request(hf_env, hub, tmp_path):
    from tests.servers import tinyproxy

    with tinyproxy(tmp_path / "proxy") as (proxy, log):
        hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n'
                     f'network = {{ proxy = "{proxy}" }}\n')
        r = hf_env.run("apply")
        assert r.code == 0, r.err
        text = log.read_text()
    assert "/api/models/acme/tiny/revision/main" in text
    assert "/cdn/" in text  # the LFS bytes came through the proxy too


def test_mk_hugging_face_factory_with_default_auth(hf_env, monkeypatch):
    import reconcile

    monkeypatch.setenv("TEAM_TOKEN", TOKEN)
    hf = reconcile.sources.mk_hugging_face(default_auth={"tokenEnvVar": "TEAM_TOKEN"})
    m = reconcile.fetch_model({"name": "gated", "source": hf("acme/gated")})
    assert m.meta == {"org": "acme", "model": "gated", "sourceType": "huggingface",
                      "repo": "acme/gated", "revision": "main"}
    assert (m.path / "config.json").read_bytes() == b"{}"
    assert m.hf_cache_path == "models--acme--gated"


def test_a_refused_fetch_leaves_no_empty_partial_and_promises_no_resume(project, hf_env, hub):
    """A fetch that fails before its first byte keeps no 0-byte tmp/<sha>.part nor its
    .entity, and says "kept and resumes" only when bytes were kept."""
    hub.repo("acme/nine").commit({"weights.bin": os.urandom(9 << 20)})
    project.write('[models.n]\nsource.huggingface = { repo = "acme/nine" }\n'
                  'network = { retry = { maxAttempts = 1 } }\n')
    assert project.run("lock").code == 0
    hub.fault("/acme/nine/*", "status", code=503, count=100)
    r = project.run("apply")
    assert r.code == 1 and "giving up" in r.err, r.err
    assert "kept and resumes" not in r.err, r.err
    assert not list((project.store / "tmp").glob("*.part*"))
    hub.faults.clear()
    hub.fault("/acme/nine/*", "truncate", after=1 << 20)
    r = project.run("apply")
    assert r.code == 1 and "kept and resumes" in r.err, r.err
    assert [p.stat().st_size for p in (project.store / "tmp").glob("*.part")] == [1 << 20]


def test_a_credential_error_is_printed_once_per_source(project, hf_env, hub, monkeypatch):
    """Every file of a model refused for its credentials: one error with its hint and the
    other files named, not the same paragraph once per file."""
    files = {f"shard-{i}.bin": os.urandom(2 << 20) for i in range(4)}
    hub.repo("acme/private4", gated=True, granted={TOKEN}).commit(files)
    project.write('[models.p]\nsource.huggingface = { repo = "acme/private4" }\n')
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    assert project.run("lock").code == 0
    monkeypatch.setenv("HF_TOKEN", "hf_revoked")
    r = project.run("apply", "--locked")
    assert r.code == 1, r.err
    assert r.err.count("hint:") == 1 and r.err.count("HF_TOKEN") == 1, r.err
    assert all(name in r.err for name in files), r.err
