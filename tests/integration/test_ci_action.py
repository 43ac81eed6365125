"""The GitHub Action (action.yml) run as a runner runs it (tests/ghrunner.py: its `run:`
steps by bash with GITHUB_ENV, GITHUB_OUTPUT and RUNNER_OS; actions/cache emulated by a
directory of archives keyed as the action keys them), installing the real reconcile into
its own venv and applying against the local stand-in Hub. Two runs on fresh runners that
share only the cache: the first downloads, the second makes no request at all."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.lockfile import cache_key, read_lock
from tests.conftest import REPO
from tests.ghrunner import Runner, StepFailed
from tests.hub import Hub

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _weights(seed: int = 0) -> bytes:
    import numpy as np
    from safetensors.numpy import save

    return save({"w": np.random.default_rng(seed).random(100_000, dtype=np.float32)})


WEIGHTS = _weights()  # a real safetensors file (apply validates it), 400 kB: an LFS file
FILES = {
    "config.json": json.dumps({"model_type": "bert", "hidden_size": 8}).encode(),
    "model.safetensors": WEIGHTS,
    "README.md": b"# tiny\n",
}
MANIFEST = """\
[models.tiny]
source.huggingface = { repo = "acme/tiny" }
"""


@pytest.fixture(scope="module")
def action_dir(tmp_path_factory) -> Path:
    """This checkout as `uses: <owner>/reconcile@<tag>` gets it: its tracked and new files
    (the working tree as it is now), so pip builds there and not in the repository."""
    dest = tmp_path_factory.mktemp("action")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for rel in filter(None, listed.split("\0")):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> Path:
    """The repository's actions/cache, shared by the module's runs as by a repo's jobs (so
    reconcile's venv is installed once)."""
    return tmp_path_factory.mktemp("actions-cache")


@pytest.fixture
def hub():
    h = Hub()
    h.repo("acme/tiny").commit(FILES)
    with h:
        yield h


@pytest.fixture
def workspace(tmp_path, hub, monkeypatch) -> Path:
    """A checkout holding models.toml and the models.lock its developer committed (locked
    on their own machine: its store is not the runners')."""
    ws = tmp_path / "work" / "repo"
    ws.mkdir(parents=True)
    (ws / "models.toml").write_text(MANIFEST)
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "developer-store"))
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.chdir(ws)
    from reconcile.cli import main

    assert main(["lock"]) == 0
    return ws


def runner_env(hub: Hub, tmp_path: Path) -> dict[str, str]:
    """A runner's environment: PATH and pip's settings from this machine (the venv is
    installed from the same index as the tests'), the Hub, nothing of this test's store."""
    keep = ("PATH", "LANG", "LC_ALL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if k in keep or k.startswith("PIP_")}
    return {**env, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_TELEMETRY": "1"}


def fresh_runner(action_dir: Path, workspace: Path, caches: Path, tmp_path: Path, n: int):
    """A new machine: an empty home (no venv, no models) at the same path, as on GitHub's
    runners, the same checkout path, the repository's cache."""
    home = tmp_path / "home"
    shutil.rmtree(home, ignore_errors=True)  # the last machine is gone
    home.mkdir()
    return Runner(action_dir, workspace, home, caches)


def test_second_run_finds_every_byte_in_the_cache_and_asks_the_hub_nothing(
    action_dir, caches, workspace, hub, tmp_path
):
    inputs = {"manifest": "models.toml", "python": sys.executable}
    key = cache_key(read_lock(workspace / "models.lock"))

    hub.log.clear()
    first = fresh_runner(action_dir, workspace, caches, tmp_path, 1).run(
        inputs, runner_env(hub, tmp_path)
    )
    assert first.outputs == {"cache-hit": "false", "key": key}
    assert hub.bytes_sent("model.safetensors") == len(WEIGHTS)
    assert {"apply", "gc", "save"} <= set(first.ran)
    assert [a.parent.name for a in caches.glob("*/reconcile-models-*/cache.tar")] == [
        f"reconcile-models-Linux-{key}"
    ]
    assert first.env["HF_HUB_OFFLINE"] == "1"
    first_requests = len(hub.log)
    assert first_requests > 0

    hub.log.clear()
    hub.sent.clear()
    second = fresh_runner(action_dir, workspace, caches, tmp_path, 2).run(
        inputs, runner_env(hub, tmp_path)
    )
    assert second.outputs == {"cache-hit": "true", "key": key}
    assert hub.log == [], "a warm run asked the Hub"
    assert "install" not in second.ran, "the venv came from the cache"
    assert "gc" not in second.ran and "save" not in second.ran, "a hit is not saved again"

    # a later step of the job: the official client loads the model offline from the cache
    env = {**runner_env(hub, tmp_path), **second.env, "HF_ENDPOINT": "http://127.0.0.1:9"}
    got = subprocess.run(
        [
            sys.executable,
            "-c",
            "from huggingface_hub import hf_hub_download as d;"
            "print(d('acme/tiny', 'model.safetensors'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert got.returncode == 0, got.stderr
    assert Path(got.stdout.strip()).read_bytes() == WEIGHTS
    assert second.env["HF_HUB_CACHE"] in got.stdout
    print(f"hub requests: first run {first_requests}, second run {len(hub.log)}")


def test_a_stale_lock_is_an_error_annotation_on_the_lock(
    action_dir, caches, workspace, hub, tmp_path
):
    (workspace / "models.toml").write_text(MANIFEST.replace('"acme/tiny"', '"acme/other"'))
    runner = fresh_runner(action_dir, workspace, caches, tmp_path, 1)
    before = sorted(caches.glob("*/reconcile-models-*"))
    hub.log.clear()
    with pytest.raises(StepFailed) as failed:
        runner.run({"python": sys.executable}, runner_env(hub, tmp_path))
    assert failed.value.step == "key"
    lines = failed.value.output.splitlines()
    error = [line for line in lines if line.startswith("::error ")]
    assert error == [
        "::error file=models.lock,title=models.lock is out of date::models.lock does not match"
        " models.toml (changed: tiny): run `reconcile lock` and commit models.lock"
    ]
    assert sorted(caches.glob("*/reconcile-models-*")) == before, "nothing saved for it"
    assert hub.log == [], "no model fetched for a lock nobody made"


def test_with_a_team_cache_a_cold_run_asks_the_team_cache_not_the_hub(
    action_dir, caches, workspace, hub, tmp_path
):
    """The `cache` input: models no actions/cache entry holds come from the team cache (a
    directory here, pushed by the developer); the Hub is asked for the repo's listing at
    the locked commit only (what vouches for the lock: README), never for a file."""
    from reconcile.cli import main

    # other bytes than acme/tiny's, which another test's cache entry (restored by the
    # restore key) may hold
    hub.repo("acme/team").commit({**FILES, "model.safetensors": _weights(seed=1)})
    (workspace / "models.toml").write_text(MANIFEST.replace("tiny", "team"))
    team = tmp_path / "team-cache"
    assert main(["lock"]) == 0
    assert main(["apply"]) == 0
    assert main(["push", "--cache", str(team)]) == 0
    key = cache_key(read_lock(workspace / "models.lock"))
    assert not list(caches.glob(f"*/reconcile-models-Linux-{key}")), "a cold run"

    hub.log.clear()
    run = fresh_runner(action_dir, workspace, caches, tmp_path, 1).run(
        {"python": sys.executable, "cache": str(team)}, runner_env(hub, tmp_path)
    )
    assert run.outputs == {"cache-hit": "false", "key": key}
    asked = [path for _method, _host, path, _auth in hub.log]
    assert asked and all(p.startswith("/api/models/acme/team/tree/") for p in asked), asked
    assert "from the team cache" in run.log


GITLAB = REPO / "ci" / "gitlab" / "reconcile.gitlab-ci.yml"


def gitlab_job(workspace: Path, env: dict[str, str], script: list[str], **variables: str):
    """One job that extends .reconcile-models, run as gitlab-runner's shell executor runs
    one: the template's variables (expanded in order, as GitLab does) over the job's env,
    then before_script and script as one bash script under `set -eo pipefail`."""
    import re

    import yaml

    template = yaml.safe_load(GITLAB.read_text())[".reconcile-models"]
    job_env = {**env, "CI_PROJECT_DIR": str(workspace), "CI": "true", "GITLAB_CI": "true"}
    for name, value in {**template["variables"], **variables}.items():
        job_env[name] = re.sub(r"\$\{?(\w+)\}?", lambda m: job_env.get(m.group(1), ""), str(value))
    lines = ["set -eo pipefail", *template["before_script"], *script]
    return subprocess.run(
        ["bash", "--noprofile", "--norc", "-c", "\n".join(lines)],
        cwd=workspace,
        env=job_env,
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_gitlab_template_fetches_once_then_serves_its_cache_offline(
    action_dir, workspace, hub, tmp_path
):
    """The template's before_script, then a job script loading the model offline; twice,
    GitLab's cache of .cache/reconcile-ci/ emulated by an archive carried between runs
    (the same models.lock: the same cache:key:files key)."""
    import tarfile

    load = (
        f"{sys.executable} -c \"import os; assert os.environ['HF_HUB_OFFLINE'] == '1';"
        " from huggingface_hub import hf_hub_download as d;"
        " print(d('acme/tiny', 'model.safetensors'))\""
    )
    venv = tmp_path / "reconcile-venv"
    args = dict(RECONCILE_SPEC=str(action_dir), RECONCILE_VENV=str(venv))
    archive = tmp_path / "gitlab-cache.tar"
    requests = []
    for _ in range(2):
        hub.log.clear()
        job = gitlab_job(workspace, runner_env(hub, tmp_path), [load], **args)
        assert job.returncode == 0, job.stdout + job.stderr
        assert Path(job.stdout.strip().splitlines()[-1]).read_bytes() == WEIGHTS
        requests.append(len(hub.log))
        with tarfile.open(archive, "w") as tar:  # the runner saves the cache's paths ...
            tar.add(workspace / ".cache" / "reconcile-ci", arcname=".cache/reconcile-ci")
        shutil.rmtree(workspace / ".cache")  # ... and the next job runs on a new machine
        shutil.rmtree(venv)
        with tarfile.open(archive) as tar:
            tar.extractall(workspace, filter="tar")
    assert requests[0] > 0 and requests[1] == 0, requests
