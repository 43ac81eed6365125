"""The CI integrations' own checks, by the tools CI platforms' users run on them: actionlint
on a workflow that uses the action (its inputs and outputs checked against action.yml),
check-jsonschema's schemas for action.yml and the GitLab template, and shellcheck on every
script the action runs. tests/integration/test_ci_action.py runs the action itself."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO

ACTION = REPO / "action.yml"
EXAMPLE = REPO / "ci" / "github" / "example-workflow.yml"
GITLAB = REPO / "ci" / "gitlab" / "reconcile.gitlab-ci.yml"


def tool(name: str) -> str:
    """The test extra's copy beside this interpreter (README runs `.venv/bin/python -m
    pytest`, whose bin/ need not be on PATH), else one on PATH."""
    beside = Path(sys.executable).with_name(name)
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        pytest.skip(f"{name} is not installed (pip install -e '.[test]')")
    return found


def run(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_action_matches_the_github_actions_schema():
    r = run(tool("check-jsonschema"), "--builtin-schema", "vendor.github-actions", str(ACTION))
    assert r.returncode == 0, r.stdout + r.stderr


def test_gitlab_template_matches_the_gitlab_ci_schema():
    r = run(tool("check-jsonschema"), "--builtin-schema", "vendor.gitlab-ci", str(GITLAB))
    assert r.returncode == 0, r.stdout + r.stderr


def _repo_with(tmp_path: Path, workflow: str) -> Path:
    """A repository holding action.yml and one workflow: actionlint checks a local action's
    (`uses: ./`) inputs and outputs only inside a repository with .github/workflows."""
    (tmp_path / ".github" / "workflows").mkdir(parents=True)
    shutil.copy(ACTION, tmp_path / "action.yml")
    (tmp_path / ".github" / "workflows" / "models.yml").write_text(workflow)
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    return tmp_path


def _actionlint(repo: Path) -> subprocess.CompletedProcess[str]:
    return run(tool("actionlint"), f"-shellcheck={tool('shellcheck')}", "-no-color", cwd=repo)


def test_actionlint_passes_the_example_workflow(tmp_path):
    r = _actionlint(_repo_with(tmp_path, EXAMPLE.read_text()))
    assert r.returncode == 0, r.stdout + r.stderr


def test_actionlint_sees_the_action_a_wrong_input_or_output_is_reported(tmp_path):
    """Proof that the check above reads action.yml: a misspelt input and output fail it."""
    text = EXAMPLE.read_text()
    wrong = text.replace("manifest: models.toml", "manifests: models.toml").replace(
        "outputs.key }}", "outputs.keys }}"
    )
    assert wrong != text
    r = _actionlint(_repo_with(tmp_path, wrong))
    assert r.returncode == 1
    assert 'input "manifests" is not defined' in r.stdout
    assert 'property "keys" is not defined' in r.stdout


def _scripts() -> list[tuple[str, str]]:
    """Every shell script the action runs: its inline run: steps and the files they call."""
    steps = yaml.safe_load(ACTION.read_text())["runs"]["steps"]
    inline = [(f"action.yml step {s['id']}", s["run"]) for s in steps if "run" in s]
    files = [(str(p.relative_to(REPO)), p.read_text()) for p in (REPO / "ci").rglob("*.sh")]
    return inline + files


@pytest.mark.parametrize("name,script", _scripts(), ids=lambda v: v if "\n" not in v else "")
def test_every_script_of_the_action_passes_shellcheck(name, script):
    r = subprocess.run(
        [tool("shellcheck"), "--shell=bash", "--severity=style", "-"],
        input=script,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, f"{name}:\n{r.stdout}"


def test_every_script_the_action_calls_is_in_the_repository():
    called = [
        line.split('"$GITHUB_ACTION_PATH/', 1)[1].split('"', 1)[0]
        for _, script in _scripts()
        for line in script.splitlines()
        if '"$GITHUB_ACTION_PATH/' in line
    ]
    assert called, "action.yml calls its scripts by $GITHUB_ACTION_PATH"
    assert all((REPO / path).is_file() for path in called), called


def _gitlab_lines() -> list:
    return yaml.safe_load(GITLAB.read_text())[".reconcile-models"]["before_script"]


def test_gitlab_template_lines_are_all_shell_strings():
    """A line such as `- echo "key: …"` is a YAML mapping, not a command, and the schema
    lets it through (GitLab then refuses the pipeline): every line must be a string."""
    assert all(isinstance(line, str) for line in _gitlab_lines()), _gitlab_lines()


def test_gitlab_template_script_passes_shellcheck():
    r = subprocess.run(
        [tool("shellcheck"), "--shell=bash", "--severity=style", "-"],
        input="\n".join(str(line) for line in _gitlab_lines()),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stdout


# --- the action's setup step: what it installs, and the key of the venv it caches -----------


def _setup(tmp_path: Path, action: Path = REPO, **inputs: str) -> tuple[int, str, dict]:
    out = tmp_path / "output"
    out.write_text("")
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path / "home"),
        "RUNNER_OS": "Linux",
        "GITHUB_OUTPUT": str(out),
        "GITHUB_ACTION_PATH": str(action),
        "INPUT_VERSION": "",
        "INPUT_SOURCE": "",
        "INPUT_PATH": "~/.cache/reconcile-ci",
        "INPUT_PYTHON": sys.executable,
        **inputs,
    }
    p = subprocess.run(
        ["bash", str(REPO / "ci" / "github" / "setup.sh")],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    outputs = dict(line.split("=", 1) for line in out.read_text().splitlines())
    return p.returncode, p.stdout + p.stderr, outputs


def test_setup_installs_the_actions_own_checkout_by_default(tmp_path):
    code, _, out = _setup(tmp_path)
    assert code == 0
    assert out["spec"] == str(REPO)
    assert out["path"] == str(tmp_path / "home" / ".cache" / "reconcile-ci")
    assert out["venv-key"].startswith("reconcile-venv-Linux-")


def test_setup_version_is_a_ref_of_the_actions_repository_never_pypi(tmp_path):
    code, _, out = _setup(tmp_path, INPUT_VERSION="v0.1.0", ACTION_REPOSITORY="acme/reconcile")
    assert code == 0
    assert out["spec"] == "git+https://github.com/acme/reconcile@v0.1.0"
    for bad in (
        {"INPUT_VERSION": "v0.1.0"},
        {"INPUT_VERSION": "1 --index-url=http://x", "ACTION_REPOSITORY": "acme/reconcile"},
    ):
        code, log, out = _setup(tmp_path, **bad)
        assert code == 1 and "spec" not in out
        assert log.startswith("::error title=reconcile::input version"), log


def test_setup_refuses_a_python_older_than_311_with_an_annotation(tmp_path):
    code, log, _ = _setup(tmp_path, INPUT_PYTHON="false")
    assert code == 1
    assert log.startswith("::error title=reconcile::input python (false)"), log


def test_venv_key_changes_with_the_source_tree(tmp_path):
    """A checkout edited between runs must not be served the venv of its old state."""
    action = tmp_path / "action"
    shutil.copytree(
        REPO / "reconcile", action / "reconcile", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(REPO / "pyproject.toml", action / "pyproject.toml")
    keys = [_setup(tmp_path, action)[2]["venv-key"]]
    keys.append(_setup(tmp_path, action)[2]["venv-key"])
    (action / "reconcile" / "cli.py").write_text("# edited\n", "utf-8")
    keys.append(_setup(tmp_path, action)[2]["venv-key"])
    assert keys[0] == keys[1] != keys[2]
