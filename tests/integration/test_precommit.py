"""The pre-commit hooks of .pre-commit-hooks.yaml, run by the real `pre-commit` in a
temporary git repository that points at this checkout: pre-commit clones it and installs
reconcile into its own environment, as it does for any hook repository."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# the one installed beside this interpreter (the test extras' venv, whose bin/ need not be on
# PATH: README runs `.venv/bin/python -m pytest`), else one on PATH
_BESIDE = Path(sys.executable).with_name("pre-commit")
PRE_COMMIT = str(_BESIDE) if _BESIDE.exists() else shutil.which("pre-commit")

MANIFEST = """\
# models this project needs
[models.minimal]
source.mock = { org = "test", model = "minimal", files = ["config.json"] }
"""


def _git(cwd: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()


@pytest.fixture(scope="module")
def hook_repo(tmp_path_factory) -> tuple[Path, str]:
    """This checkout as a hook repository at one commit: its tracked and new files (the
    working tree as it is now, so uncommitted changes are what gets tested)."""
    if PRE_COMMIT is None:
        pytest.skip("pre-commit is not installed (pip install pre-commit)")
    dest = tmp_path_factory.mktemp("hookrepo")
    listed = _git(REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A")
    _git(dest, "commit", "-q", "-m", "hooks under test")
    return dest, _git(dest, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def pre_commit_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pre-commit-home")  # one hook environment for the module


@pytest.fixture
def repo(tmp_path, hook_repo, pre_commit_home, monkeypatch) -> Path:
    path, rev = hook_repo
    d = tmp_path / "project"
    d.mkdir()
    _git(d, "init", "-q")
    (d / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {path}\n    rev: {rev}\n    hooks:\n"
        "      - id: reconcile-lock-check\n      - id: reconcile-check\n")
    (d / "models.toml").write_text(MANIFEST)
    for var in ("RECONCILE_MANIFEST", "HF_HUB_OFFLINE", "RECONCILE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PRE_COMMIT_HOME", str(pre_commit_home))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # nothing of the user's is read
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "store"))
    _reconcile(d, "lock")
    _git(d, "add", "-A")
    _git(d, "commit", "-q", "-m", "models")
    return d


def _reconcile(cwd: Path, *args: str) -> None:
    from reconcile.cli import main

    old = Path.cwd()
    os.chdir(cwd)
    try:
        assert main(list(args)) == 0
    finally:
        os.chdir(old)


def _pre_commit(cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PRE_COMMIT, "run", "--color", "never", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "RECONCILE_OFFLINE": "1"})


def test_lock_check_hook_follows_models_toml_and_lock(repo):
    r = _pre_commit(repo, "--all-files")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "models.lock is up to date with models.toml" in r.stdout and "Passed" in r.stdout

    # a comment-only edit changes no declaration: still up to date
    (repo / "models.toml").write_text("# edited comment\n" + MANIFEST.replace(
        "# models this project needs\n", ""))
    _git(repo, "add", "models.toml")
    r = _pre_commit(repo)
    assert r.returncode == 0, r.stdout + r.stderr

    # a new model without `reconcile lock`: refused, naming the model
    (repo / "models.toml").write_text(MANIFEST + (
        '\n[models.second]\nsource.mock = { org = "test", model = "second", files = ["a.txt"] }\n'))
    _git(repo, "add", "models.toml")
    r = _pre_commit(repo)
    assert r.returncode == 1
    assert "new: second" in r.stdout and "run `reconcile lock`" in r.stdout

    _reconcile(repo, "lock")
    _git(repo, "add", "models.lock")
    r = _pre_commit(repo)
    assert r.returncode == 0, r.stdout + r.stderr


def test_hooks_run_only_when_models_files_change(repo):
    (repo / "models.toml").write_text(MANIFEST + "[models.x]\nsource.mock = {}\n")  # not staged
    (repo / "notes.txt").write_text("unrelated\n")
    _git(repo, "add", "notes.txt")
    r = _pre_commit(repo)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("(no files to check)Skipped") == 2


def test_manifest_hook_names_the_key(repo):
    (repo / "models.toml").write_text(MANIFEST.replace('org = "test"', 'org = "test", colour = 1'))
    _git(repo, "add", "models.toml")
    r = _pre_commit(repo, "reconcile-check")
    assert r.returncode == 1 and "Failed" in r.stdout and "- exit code: 2" in r.stdout
    assert "models.toml:3: models.minimal.source.mock.colour: unknown key" in r.stdout


def test_lock_check_hook_checks_each_manifest_of_a_monorepo(tmp_path, hook_repo, pre_commit_home,
                                                            monkeypatch):
    """models.toml files in subdirectories, none or a fresh one at the root: each matched
    file's own manifest is checked, once, and the one that failed is named."""
    path, rev = hook_repo
    d = tmp_path / "mono"
    d.mkdir()
    _git(d, "init", "-q")
    (d / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {path}\n    rev: {rev}\n    hooks:\n"
        "      - id: reconcile-lock-check\n")
    for var in ("RECONCILE_MANIFEST", "HF_HUB_OFFLINE", "RECONCILE_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("PRE_COMMIT_HOME", str(pre_commit_home))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "store"))
    for sub in ("ml", "services/x"):
        (d / sub).mkdir(parents=True)
        (d / sub / "models.toml").write_text(MANIFEST)
        _reconcile(d / sub, "lock")
    _git(d, "add", "-A")
    _git(d, "commit", "-q", "-m", "models")

    r = _pre_commit(d, "--all-files", "--verbose")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("models.lock is up to date\n") == 2  # ml/ once, though both its files matched
    assert "ml/models.lock is up to date" in r.stdout
    assert "services/x/models.lock is up to date" in r.stdout

    # a fresh manifest at the root does not hide a stale one in ml/
    (d / "models.toml").write_text(MANIFEST)
    _reconcile(d, "lock")
    (d / "ml" / "models.toml").write_text(MANIFEST + (
        '\n[models.second]\nsource.mock = { org = "test", model = "second", files = ["a.txt"] }\n'))
    _git(d, "add", "-A")
    r = _pre_commit(d)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "new: second" in r.stdout
    assert "ml/models.lock is out of date; run `reconcile -f ml/models.toml lock`" in r.stdout
    assert "services/x" not in r.stdout  # not part of the commit: not checked
