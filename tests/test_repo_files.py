"""The repository's own files: the embedded default works offline, schemas are current."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tomllib

import jsonschema
import pytest

from reconcile import schema
from reconcile.integration import default_manifest_text
from tests.conftest import REPO


def test_embedded_default_manifest_is_the_repos_models_toml():
    assert (REPO / "models.toml").read_text() == default_manifest_text()


def test_committed_lock_is_up_to_date():
    r = subprocess.run([sys.executable, "-m", "reconcile", "-f", str(REPO / "models.toml"),
                        "lock", "--check"], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_main_job_runs_offline_from_a_fresh_copy(project):
    for name in ("models.toml", "models.lock"):
        shutil.copy(REPO / name, project.dir / name)
    env_offline = {"HF_HUB_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9",
                   "RECONCILE_VALIDATION": ""}
    import os

    p = subprocess.run([sys.executable, "-m", "reconcile", "apply", "--locked", "--offline"],
                       cwd=project.dir, capture_output=True, text=True,
                       env={**os.environ, **env_offline})
    assert p.returncode == 0, p.stderr
    rows = json.loads(project.sh("status", "--json").out)
    assert {r["key"] for r in rows} == {"test-empty", "test-minimal"}
    assert all(r["state"] == "ok" for r in rows)
    code = ("from transformers import AutoConfig; "
            "print(AutoConfig.from_pretrained('test/minimal').model_type)")
    t = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert t.returncode == 0 and t.stdout.strip() == "bert", t.stderr


def test_schemas_in_the_repo_are_generated_from_the_code():
    for name, text in schema.render().items():
        assert (REPO / "schemas" / name).read_text() == text, "run python -m reconcile.schema"


def test_repo_manifest_and_lock_validate_against_their_schemas():
    ms = json.loads((REPO / "schemas" / "models.schema.json").read_text())
    ls = json.loads((REPO / "schemas" / "lock.schema.json").read_text())
    jsonschema.validate(tomllib.loads((REPO / "models.toml").read_text()), ms)
    jsonschema.validate(tomllib.loads((REPO / "models.lock").read_text()), ls)


def test_schema_rejects_what_the_checker_rejects():
    ms = json.loads((REPO / "schemas" / "models.schema.json").read_text())
    bad = [
        {"models": {"a": {"source": {"mock": {}}, "integraton": {}}}},
        {"models": {"a": {"source": {"mock": {}, "url": {"url": "http://x"}}}}},
        {"models": {"a": {"source": {"mock": {}}, "hash": "md5-xx"}}},
        {"models": {"../a": {"source": {"mock": {}}}}},
        {"models": {"a": {"source": {"mock": {}}, "auth": {"token": "x"}}}},
    ]
    for doc in bad:
        assert list(jsonschema.Draft202012Validator(ms).iter_errors(doc)), doc


def test_readme_manifest_example_is_valid():
    import re

    from reconcile.config import parse_manifest

    text = (REPO / "README.md").read_text()
    example = re.search(r"```toml\n(.*?)```", text, re.S).group(1)
    m = parse_manifest(example.encode())
    assert m.models["bert"].source["files"] == ["*.json", "*.safetensors", "vocab.txt"]
    assert m.models["llama"].auth.token_env_var == "MY_ORG_TOKEN"
    assert "has-license" in m.validators


def test_ci_cannot_go_green_without_the_real_peers(tmp_path):
    """With RECONCILE_REQUIRE_PEERS=1 (.ci/run sets it) a skip for a missing peer fails,
    whether it is a skipif, a pytest.skip or a module-level importorskip; a skip that
    says it is not applicable on this machine stays a skip. Without it, all skip."""
    import os

    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_peers.py").write_text(
        "import pytest\n"
        "@pytest.mark.skipif(True, reason='needs nginx-light')\n"
        "def test_marker(): pass\n"
        "def test_call(): pytest.skip('needs tinyproxy')\n"
        "def test_machine(): pytest.skip('not applicable here: no O_DIRECT')\n"
        "def test_runs(): pass\n")
    (tmp_path / "test_module.py").write_text(
        "import pytest\nno_such = pytest.importorskip('no_such_peer_module')\n"
        "def test_x(): pass\n")

    def run(flag: str, target: str = "") -> subprocess.CompletedProcess:
        env = {**os.environ, "RECONCILE_REQUIRE_PEERS": flag,
               "RECONCILE_ALLOWED_SKIPS": "test_peers.py::test_machine"}
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "-rA", str(tmp_path / target)], capture_output=True, text=True,
                              env=env, cwd=tmp_path)

    strict = run("1", "test_peers.py")
    assert strict.returncode == 1, strict.stdout
    assert strict.stdout.count("missing peer with RECONCILE_REQUIRE_PEERS=1") >= 2
    assert "needs nginx-light" in strict.stdout and "needs tinyproxy" in strict.stdout
    assert "1 skipped" in strict.stdout and "1 passed" in strict.stdout
    module = run("1", "test_module.py")  # a collection error: the run stops, loudly
    assert module.returncode != 0 and "missing peer" in module.stdout
    relaxed = run("")
    assert relaxed.returncode == 0 and "4 skipped" in relaxed.stdout, relaxed.stdout


def test_ci_lets_only_the_named_tests_skip_as_not_applicable(tmp_path):
    """A "not applicable here:" skip is a skip in CI only for a test RECONCILE_ALLOWED_SKIPS
    names (.ci/run's list): the --system test, which needs root, fails loudly where CI is
    not root instead of never running. And .ci/run's list names tests that exist."""
    import os
    import re

    shutil.copy(REPO / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_machine.py").write_text(
        "import pytest\n"
        "def test_named(): pytest.skip('not applicable here: no O_DIRECT')\n"
        "@pytest.mark.parametrize('x', [1])\n"
        "def test_param(x): pytest.skip('not applicable here: no /proc/stat')\n"
        "def test_root(): pytest.skip('not applicable here: needs root')\n")
    env = {**os.environ, "RECONCILE_REQUIRE_PEERS": "1",
           "RECONCILE_ALLOWED_SKIPS": "test_machine.py::test_named\ntest_machine.py::test_param"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA",
                        "test_machine.py"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1, r.stdout
    assert "2 skipped" in r.stdout and "1 failed" in r.stdout, r.stdout
    assert "needs root (not in RECONCILE_ALLOWED_SKIPS, the list in .ci/run)" in r.stdout

    ci = (REPO / ".ci" / "run").read_text()
    listed = re.search(r"RECONCILE_ALLOWED_SKIPS=\"([^\"]*)\"", ci).group(1).split()
    assert 0 < len(listed) <= 6, listed
    assert not any("test_modes" in t for t in listed)  # the --system test runs in CI
    for nodeid in listed:
        path, name = nodeid.split("::")
        assert f"def {name}(" in (REPO / path).read_text(), nodeid


def _imports() -> dict[str, set[str]]:
    """module -> the reconcile modules it imports anywhere (top level, in a function, or
    under TYPE_CHECKING), read from the source."""
    import ast

    root = REPO / "reconcile"

    def name(p) -> str:
        parts = list(p.relative_to(REPO).with_suffix("").parts)
        return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)

    mods = {name(p): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in mods.items():
        pkg = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                base = pkg.split(".")[: len(pkg.split(".")) - max(node.level - 1, 0)]
                target = ".".join([*base, node.module] if node.module else base) \
                    if node.level else (node.module or "")
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in mods else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[mod] = {d for d in deps if d in mods and d != mod}
    return graph


def test_no_module_imports_one_that_imports_it_back():
    """Deferred imports included: a cycle hidden in a function is still a cycle."""
    graph = _imports()
    mutual = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph[b]})
    assert not mutual, mutual

    def reaches(a: str, b: str) -> bool:  # a package's modules import the other one's
        return any(d == b or d.startswith(b + ".") for m, deps in graph.items()
                   if m == a or m.startswith(a + ".") for d in deps)

    for a, b in [("reconcile.validation.formats", "reconcile.validation.pickle_scan"),
                 ("reconcile.config", "reconcile.sources")]:
        assert not (reaches(a, b) and reaches(b, a)), (a, b)


def test_readme_commands_work_with_a_python_that_refuses_system_pip(tmp_path):
    """Debian's and Ubuntu's python3 refuse `pip install` outside a venv (PEP 668).
    README's command must get past that with the system's own python3; the package
    index is out of a test's reach, so pip here finds no dependencies, and the test
    checks only that it got as far as looking for them, in a venv of that python."""
    import glob
    import os

    if not glob.glob("/usr/lib/python3*/EXTERNALLY-MANAGED") or not os.path.exists(
            "/usr/bin/python3"):
        pytest.skip("not applicable here: no externally managed system python3")
    text = (REPO / "README.md").read_text()
    main_job = text.split("Set up and run the main job")[1].split("\n\n")[1].strip()
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    work = tmp_path / "copy"
    for f in files:
        (work / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / f, work / f)
    env = {**os.environ, "PATH": "/usr/bin:/bin", "PIP_NO_INDEX": "1",
           "PIP_FIND_LINKS": str(tmp_path / "no-wheels"), "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    r = subprocess.run(["bash", "-c", main_job], cwd=work, capture_output=True, text=True,
                       env=env, timeout=300)
    assert "externally-managed-environment" not in r.stderr, r.stderr
    assert "No matching distribution" in r.stderr or r.returncode == 0, r.stderr
    assert "home = /usr/bin" in (work / ".venv" / "pyvenv.cfg").read_text()
    old = subprocess.run(["bash", "-c", "python3 -m pip install -e ."], cwd=work,
                         capture_output=True, text=True, env=env, timeout=300)
    assert "externally-managed-environment" in old.stderr  # what README used to say


def test_ci_runs_readmes_test_command_with_the_hashed_lock():
    """README's test command, one line, is what .ci/run runs; it installs the hashed lock,
    which pins every package of the test extra (and of reconcile) with a sha256 each."""
    import re

    text = (REPO / "README.md").read_text()
    command = text.split("Run the tests:")[1].split("\n\n")[1].strip()
    assert "\n" not in command and "requirements-test.txt" in command
    ci_lines = (REPO / ".ci" / "run").read_text().splitlines()
    assert command in ci_lines
    lock = (REPO / "requirements-test.txt").read_text()
    entries = re.findall(r"^([A-Za-z0-9_.\-]+)==(\S+) \\\n((?:\s+--hash=sha256:[0-9a-f]{64}"
                         r"(?: \\)?\n)+)", lock, re.M)
    pinned = {name.lower().replace("_", "-") for name, _, _ in entries}
    assert len(entries) == len(re.findall(r"^[A-Za-z0-9_.\-]+==", lock, re.M)) > 50
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    for req in [*project["dependencies"], *project["optional-dependencies"]["test"]]:
        name = re.match(r"[A-Za-z0-9_.\-]+", req).group(0).lower().replace("_", "-")
        assert name in pinned, f"{name} is not in requirements-test.txt: run .ci/lock-tests"
    assert re.search(r"^moto==(?!5\.2\.6\b)", lock, re.M)  # see pyproject.toml


def test_readme_gguf_example_for_ollama_is_valid():
    import re

    from reconcile.config import parse_manifest

    text = (REPO / "README.md").read_text()
    example = next(b for b in re.findall(r"```toml\n(.*?)```", text, re.S)
                   if "integration.ollama = { name" in b)
    decl = parse_manifest(example.encode()).models["tiny"]
    assert decl.ollama.enable and decl.ollama.name == "registry.ollama.ai/library/qwen-tiny/q4"
