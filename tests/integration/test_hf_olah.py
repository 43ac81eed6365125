"""A second, independent peer for the happy paths: olah, a real HF mirror server,
serving local git + git-lfs repositories offline."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys

import pytest

from reconcile.lockfile import read_lock
from tests.servers import git_lfs_repo, olah, olah_cli

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(olah_cli() is None, reason="olah not installed (.venv-olah)")]

WEIGHTS = os.urandom(200_000)


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    root = tmp_path_factory.mktemp("olah")
    commit = git_lfs_repo(root / "mirrors" / "models" / "testorg" / "tiny-model", {
        "config.json": b'{"model_type": "bert", "hidden_size": 8}',
        "model.safetensors": WEIGHTS,
        "sub/readme.txt": b"nested\n",
    }, ["*.safetensors"])
    with olah(root / "mirrors", root / "work") as url:
        yield url, commit


def test_apply_from_olah_matches_the_official_client(project, mirror, monkeypatch, tmp_path):
    url, commit = mirror
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("RECONCILE_VALIDATION", "none")
    project.write('[models.m]\nsource.huggingface = { repo = "testorg/tiny-model" }\n')
    r = project.run("apply")
    assert r.code == 0, r.err
    m = read_lock(project.lock).models["m"]
    assert m.pin["commit"] == commit
    lfs = next(f for f in m.files if f.path == "model.safetensors")
    assert lfs.lfs and lfs.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    snap = project.cache / "models--testorg--tiny-model" / "snapshots" / commit
    assert (snap / "model.safetensors").read_bytes() == WEIGHTS
    code = ("import sys; from huggingface_hub import snapshot_download as s; "
            "print(s('testorg/tiny-model', cache_dir=sys.argv[1], endpoint=sys.argv[2]))")
    off = tmp_path / "official"
    p = subprocess.run([sys.executable, "-c", code, str(off), url], capture_output=True,
                       text=True, env={**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1",
                                       "HF_HUB_DISABLE_XET": "1"})
    assert p.returncode == 0, p.stderr
    theirs = off / "models--testorg--tiny-model"
    ours = project.cache / "models--testorg--tiny-model"
    for link in (theirs / "snapshots" / commit).rglob("*"):
        if link.is_symlink():
            rel = link.relative_to(theirs)
            assert os.readlink(ours / rel) == os.readlink(link), rel
    assert (ours / "refs" / "main").read_text() == (theirs / "refs" / "main").read_text()
