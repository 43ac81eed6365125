"""The HF cache is shared: huggingface_hub, transformers and other projects write into it.

huggingface_hub is the judge: whatever order the official client and reconcile run
in, and whatever reconcile prunes, the official client still loads what it downloaded
itself (offline), and refs it wrote are never moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.hub import Hub
from tests.integration.conftest import FILES
from tests.integration.test_hf_source import cache_listing

pytestmark = pytest.mark.integration


def official(hub: Hub, cache: Path, repo: str, *, offline: bool = False, **kw) -> str:
    """snapshot_download in a clean process (online, or local_files_only); its path."""
    code = ("import sys, json; from huggingface_hub import snapshot_download as s; "
            "print(s(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3], "
            "**json.loads(sys.argv[4])))")
    if offline:
        kw["local_files_only"] = True
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1"}
    r = subprocess.run([sys.executable, "-c", code, repo, str(cache), hub.url, json.dumps(kw)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout.strip()


def owned_by_hf(cache: Path) -> dict:
    return {k: v for k, v in cache_listing(cache).items() if k.startswith("models--acme--tiny")}


def test_prune_leaves_huggingface_hubs_own_snapshot_alone(hf_env, hub):
    """Official client first, reconcile second, then the model leaves models.toml."""
    first = official(hub, hf_env.cache, "acme/tiny")
    theirs = owned_by_hf(hf_env.cache)
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("apply").code == 0
    assert hf_env.run("status", "--exit-code").code == 0
    hf_env.write("")
    r = hf_env.run("apply", "--prune")
    assert r.code == 0, r.err
    assert owned_by_hf(hf_env.cache) == theirs  # every link, ref and tree json still there
    assert official(hub, hf_env.cache, "acme/tiny", offline=True) == first


def test_prune_after_the_official_client_reused_a_revision_keeps_its_own_downloads(hf_env, hub):
    """reconcile first, the official client second (another revision), then prune: what
    the official client downloaded itself still loads offline."""
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("apply").code == 0
    pr = official(hub, hf_env.cache, "acme/tiny", revision="refs/pr/1")
    hf_env.write("")
    assert hf_env.run("apply", "--prune").code == 0
    assert official(hub, hf_env.cache, "acme/tiny", revision="refs/pr/1", offline=True) == pr
    assert (Path(pr) / "extra.txt").read_bytes() == b"pr"


def test_a_sha_pin_never_moves_the_main_ref_huggingface_hub_wrote(hf_env, hub):
    repo = hub.repos[("model", "acme/tiny")]
    old = repo.refs["main"]
    new = repo.commit({"config.json": FILES["config.json"] + b" "}, parent=old)
    theirs = official(hub, hf_env.cache, "acme/tiny")  # refs/main = new
    hf_env.write(f'[models.m]\nsource.huggingface = {{ repo = "acme/tiny", revision = "{old}" }}\n')
    assert hf_env.run("apply").code == 0
    refs = hf_env.cache / "models--acme--tiny" / "refs"
    assert (refs / "main").read_text() == new
    assert official(hub, hf_env.cache, "acme/tiny", offline=True) == theirs
    assert hf_env.run("path", "m").out.strip().endswith(old)
    again = hf_env.run("plan", "--exit-code")
    assert again.code == 0, again.out  # no conflict either: a sha pin does not need main


def test_a_tag_pin_also_gives_main_to_from_pretrained_when_nobody_has_it(hf_env, hub):
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny", revision = "v1.0" }\n')
    assert hf_env.run("apply").code == 0
    refs = hf_env.cache / "models--acme--tiny" / "refs"
    tag = (refs / "v1.0").read_text()
    assert (refs / "main").read_text() == tag
    from transformers import AutoConfig

    env_off = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_env.cache)}
    code = ("from transformers import AutoConfig; import sys;"
            "print(AutoConfig.from_pretrained('acme/tiny').model_type)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, **env_off})
    assert r.returncode == 0 and r.stdout.strip() == "bert", r.stderr[-2000:]
    assert AutoConfig  # imported above only to fail early when transformers is missing


def test_a_branch_ref_held_by_huggingface_hub_is_a_conflict_unless_named(hf_env, hub):
    """The lock pins main at an old commit while the official client has the new one:
    reconcile leaves refs/main alone and says so; naming the ref takes it over."""
    repo = hub.repos[("model", "acme/tiny")]
    old = repo.refs["main"]
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("lock").code == 0
    new = repo.commit({"config.json": FILES["config.json"] + b" "}, parent=old)
    official(hub, hf_env.cache, "acme/tiny")
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    main = hf_env.cache / "models--acme--tiny" / "refs" / "main"
    assert main.read_text() == new
    plan = hf_env.run("plan")
    assert "! m: refs/main of acme/tiny is" in plan.out and "another tool" in plan.out
    assert "No changes" in plan.out
    status = hf_env.run("status")
    assert "conflict: refs/main" in status.out
    assert json.loads(hf_env.run("status", "--json").out)[0]["conflicts"]
    # the user decides: name the ref, re-lock at the old commit, and reconcile takes it over
    hf_env.write(f'[models.m]\nsource.huggingface = {{ repo = "acme/tiny", revision = "{old}" }}\n'
                 'integration.huggingface.refs = ["main"]\n')
    assert hf_env.run("apply").code == 0
    assert main.read_text() == old


def test_the_official_client_moving_a_ref_makes_it_theirs(hf_env, hub):
    """reconcile wrote refs/main; the official client moved it: prune must not delete it."""
    repo = hub.repos[("model", "acme/tiny")]
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert hf_env.run("apply").code == 0
    new = repo.commit({"config.json": FILES["config.json"] + b"  "}, parent=repo.refs["main"])
    theirs = official(hub, hf_env.cache, "acme/tiny")
    hf_env.write("")
    assert hf_env.run("apply", "--prune").code == 0
    assert (hf_env.cache / "models--acme--tiny" / "refs" / "main").read_text() == new
    assert official(hub, hf_env.cache, "acme/tiny", offline=True) == theirs


def test_server_supplied_ids_are_checked_before_they_become_names(hf_env, hub):
    from tests.hub import Blob

    class EvilBlob(Blob):
        @property
        def oid(self) -> str:
            return "../../../../evil"

    repo = hub.repos[("model", "acme/tiny")]
    sha = repo.refs["main"]
    repo.commits[sha]["config.json"] = EvilBlob(FILES["config.json"], False)
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny" }\n')
    r = hf_env.run("apply")
    assert r.code == 1 and "models.m: the source answered with an unusable" in r.err
    assert not hf_env.lock.exists()
    assert not (hf_env.cache / "models--acme--tiny").exists()


def test_a_filtered_model_does_not_hide_the_rest_of_the_repo_from_the_official_client(hf_env, hub):
    """huggingface_hub takes trees/<commit>.json for the whole repo's listing: reconcile
    must not write one that lists only the files it selected."""
    hf_env.write('[models.m]\nsource.huggingface = { repo = "acme/tiny", files = ["config.json"] }\n')
    assert hf_env.run("apply").code == 0
    snap = Path(official(hub, hf_env.cache, "acme/tiny"))
    assert sorted(str(p.relative_to(snap)) for p in snap.rglob("*") if p.is_file()) == sorted(FILES)
    assert hf_env.run("status", "--exit-code").code == 0


def test_files_with_the_same_content_share_one_blob_as_huggingface_hub_lays_them_out(hf_env, hub):
    """Two paths with one content have one blob name (git oid or sha256): a fresh blobs/
    directory links it once, and both snapshot paths point at it; the official client
    lays out the same repo identically."""
    repo = hub.repo("acme/twins")
    weights = b"\x07" * 200_000  # LFS: blob named by sha256
    repo.commit({"a.safetensors": weights, "copy/a.safetensors": weights,
                 "x.json": b'{"same": 1}', "copy/x.json": b'{"same": 1}'})
    hf_env.write('[models.t]\nsource.huggingface = { repo = "acme/twins" }\n')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    ours = {k: v for k, v in cache_listing(hf_env.cache).items() if "twins" in k}
    blobs = [k for k in ours if "/blobs/" in k]
    assert len(blobs) == 2, ours
    assert hf_env.run("status", "--exit-code").code == 0
    other = hf_env.cache.parent / "official"
    official(hub, other, "acme/twins")
    theirs = {k: v for k, v in cache_listing(other).items() if "twins" in k}
    assert ours == theirs
    assert official(hub, hf_env.cache, "acme/twins", offline=True)
