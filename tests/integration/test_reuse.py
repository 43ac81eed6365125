"""`apply` takes what this machine already has (issue #34): a repo that huggingface_hub
downloaded into the HF cache, blobs in ollama's models directory. Those files are
another tool's: their bytes are hashed against the lock on the way into the store
(never trusted, never hard-linked, never changed), and a bad one is fetched again."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from reconcile.store import Store
from tests.hub import Hub
from tests.integration.conftest import FILES, WEIGHTS
from tests.integration.test_provenance import forge

pytestmark = pytest.mark.integration

EVIL = os.urandom(4096)  # bytes of another repo the HF cache holds
BIG = os.urandom(30 << 20)  # the "30 MB file huggingface_hub just downloaded"


def hf_download(hub: Hub, cache: Path, repo: str, *, offline: bool = False) -> Path:
    """huggingface_hub's snapshot_download in a clean process; returns the snapshot dir."""
    code = (
        "import sys; from huggingface_hub import snapshot_download as s; "
        "print(s(sys.argv[1], cache_dir=sys.argv[2]))"
    )
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
    if offline:
        env.update(HF_HUB_OFFLINE="1", HF_ENDPOINT="http://127.0.0.1:9")
    r = subprocess.run(
        [sys.executable, "-c", code, repo, str(cache)], capture_output=True, text=True, env=env
    )
    assert r.returncode == 0, r.stderr
    return Path(r.stdout.strip())


def lock_elsewhere(project, tmp_path: Path, monkeypatch) -> None:
    """models.lock as it arrives from git: locked on another machine (another store), so
    this store has no record of it and no object of it."""
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "elsewhere"))
    r = project.run("lock")
    assert r.code == 0, r.err
    monkeypatch.setenv("RECONCILE_STORE", str(project.store))


def blob_states(cache: Path, folder: str) -> dict[str, tuple[int, int, int, int]]:
    """(inode, mode, mtime, size) of every blob: what reconcile must leave as it found."""
    out = {}
    for p in sorted((cache / folder / "blobs").iterdir()):
        st = p.stat()
        out[p.name] = (st.st_ino, st.st_mode, st.st_mtime_ns, st.st_size)
    return out


def test_apply_takes_a_repo_huggingface_hub_downloaded_and_fetches_none_of_it(
    hf_env, hub, tmp_path, monkeypatch
):
    repo = hub.repo("acme/big")
    commit = repo.commit({**FILES, "model.safetensors": BIG})
    hf_env.write('[models.big]\nsource.huggingface = { repo = "acme/big" }\n')
    lock_elsewhere(hf_env, tmp_path, monkeypatch)
    hf_download(hub, hf_env.cache, "acme/big")  # as transformers' from_pretrained would
    folder = "models--acme--big"
    before = blob_states(hf_env.cache, folder)
    hub.log.clear()
    hub.sent.clear()

    r = hf_env.run("plan")
    assert r.code == 0, r.err
    assert "model.safetensors" in r.out and "from the HF cache" in r.out, r.out
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    assert hub.bytes_sent() == 0  # not the weights, not the small files
    assert not hub.requests("GET", "/resolve/"), hub.log
    assert hub.requests("GET", "/api/models/acme/big/")  # the listing vouches for the lock

    # installed, whole, in the store: a copy, never the other tool's inode
    store = Store(hf_env.store)
    m = read_lock(hf_env.lock).models["big"]
    root = store.model_path(m)
    assert (root / "model.safetensors").read_bytes() == BIG
    assert (root / "config.json").read_bytes() == FILES["config.json"]
    assert blob_states(hf_env.cache, folder) == before  # not changed, not linked, not chmod-ed
    for name in before:
        blob = hf_env.cache / folder / "blobs" / name
        assert not any(os.path.samefile(blob, o) for o in store.objects.rglob("*") if o.is_file())
    assert hf_env.run("plan").out.strip().endswith("match models.lock.")

    # huggingface_hub still reads the snapshot offline, at the locked commit
    snap = hf_download(hub, hf_env.cache, "acme/big", offline=True)
    assert snap.name == commit == m.hf.commit
    assert (snap / "model.safetensors").read_bytes() == BIG

    # the model leaves: prune takes nothing huggingface_hub made
    hf_env.write("")
    assert hf_env.run("apply", "--prune").code == 0
    assert blob_states(hf_env.cache, folder) == before


def test_a_tampered_blob_in_the_hf_cache_is_refused_and_fetched_from_the_hub(
    hf_env, hub, tmp_path, monkeypatch
):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    lock_elsewhere(hf_env, tmp_path, monkeypatch)
    hf_download(hub, hf_env.cache, "acme/tiny")
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    blob = hf_env.cache / "models--acme--tiny" / "blobs" / sha
    evil = bytes(len(WEIGHTS))  # the same size: only its hash tells
    blob.write_bytes(evil)
    hub.sent.clear()

    r = hf_env.run("apply")
    assert r.code == 0, r.err
    assert hub.bytes_sent("model.safetensors") == len(WEIGHTS)  # from the Hub, not the cache
    assert hub.bytes_sent("/acme/tiny/config.json") == 0  # good blobs are still taken
    store = Store(hf_env.store)
    assert store.object_path(sha).read_bytes() == WEIGHTS
    root = store.model_path(read_lock(hf_env.lock).models["m"])
    assert (root / "model.safetensors").read_bytes() == WEIGHTS
    assert blob.read_bytes() == evil  # huggingface_hub's file: reported, never rewritten
    assert not list(store.tmp.iterdir())  # the refused copy is gone


def test_a_snapshot_without_symlinks_is_taken_too(hf_env, hub, tmp_path, monkeypatch):
    """HF_HUB_DISABLE_SYMLINKS (Windows, some network filesystems): the snapshot holds
    real files and blobs/ may be empty; the snapshot at the locked commit is read."""
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    lock_elsewhere(hf_env, tmp_path, monkeypatch)
    hf_download(hub, hf_env.cache, "acme/tiny")
    snap = (
        hf_env.cache
        / "models--acme--tiny"
        / "snapshots"
        / read_lock(hf_env.lock).models["m"].hf.commit
    )
    for p in sorted(snap.rglob("*")):
        if p.is_symlink():
            target = p.resolve()
            p.unlink()
            p.write_bytes(target.read_bytes())
            target.unlink()
    hub.sent.clear()
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    assert hub.bytes_sent() == 0


def test_reused_bytes_still_need_the_source_to_vouch_for_the_lock(
    hf_env, hub, tmp_path, monkeypatch
):
    """A forged lock entry naming bytes the HF cache holds is refused before anything is
    taken: the cache gives bytes, never the right to install them."""
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    lock_elsewhere(hf_env, tmp_path, monkeypatch)
    hub.repo("evil/x").commit({"model.safetensors": EVIL})
    hf_download(hub, hf_env.cache, "evil/x")
    hf_env.lock.write_text(forge(hf_env.lock.read_text(), "m", "model.safetensors", EVIL))
    payload = hashlib.sha256(EVIL).hexdigest()
    r = hf_env.run("apply", "--locked")
    assert r.code == 1, r.err
    assert "models.m: models.lock does not match what the source serves" in r.err
    assert not Store(hf_env.store).has_object(payload)


@pytest.fixture
def ollama_dir(tmp_path, monkeypatch):
    d = tmp_path / "ollama-models"
    monkeypatch.setenv("OLLAMA_MODELS", str(d))
    return d


def test_plan_names_no_local_origin_when_nothing_is_there(hf_env, ollama_dir):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("lock").code == 0
    r = hf_env.run("plan")
    assert "model.safetensors" in r.out and "from the HF cache" not in r.out, r.out


def test_json_summary_counts_no_bytes_for_reused_objects(hf_env, hub, tmp_path, monkeypatch):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    lock_elsewhere(hf_env, tmp_path, monkeypatch)
    hf_download(hub, hf_env.cache, "acme/tiny")
    r = hf_env.run("apply", "--progress", "json")
    assert r.code == 0, r.err
    summary = [json.loads(x) for x in r.err.splitlines() if '"summary"' in x]
    assert summary and summary[-1]["bytes"] == 0, r.err
    assert "0 fetched (0 B)" in r.out, r.out
