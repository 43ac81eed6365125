"""The Dev Container Feature in .devcontainer/reconcile, and this repository's devcontainer.json.

install.sh runs as the devcontainer CLI runs it (options as VERSION/SOURCE/STORE, the remote
user as _REMOTE_USER) in a clean environment (a fresh HOME, no reconcile on PATH), with its
system paths moved into a temporary prefix (RECONCILE_FEATURE_PREFIX); then its post-create
script runs in real projects with the feature's containerEnv: a fresh apply, a stale lock,
and HF_HUB_OFFLINE=1 (which the script must lift for the apply). The metadata is read by the
reference implementation, the devcontainer CLI from npm, and validated against the official
JSON schemas where they can be had.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.integration

FEATURE = REPO / ".devcontainer" / "reconcile"
DEVCONTAINER_JSON = REPO / ".devcontainer" / "devcontainer.json"
CLI_PACKAGE = "@devcontainers/cli@0.89.0"  # the reference implementation, pinned
SCHEMA_FILES = ("devContainerFeature.schema.json", "devContainer.base.schema.json")


def feature_metadata() -> dict:
    return json.loads((FEATURE / "devcontainer-feature.json").read_text())


def loads_jsonc(text: str):
    """JSON with // and /* */ comments (devcontainer.json is JSONC); strings kept intact."""
    out, i, n = [], 0, len(text)
    while i < n:
        if text[i] == '"':
            j = i + 1
            while text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i:j + 1])
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            i = text.index("*/", i + 2) + 2
        else:
            out.append(text[i])
            i += 1
    return json.loads("".join(out))


# --- running install.sh and the post-create script like the devcontainer CLI does ---------

PASS_THROUGH = {"http_proxy", "https_proxy", "no_proxy", "all_proxy", "ssl_cert_file",
                "ssl_cert_dir", "requests_ca_bundle"}


def clean_env(root: Path, **extra: str) -> dict[str, str]:
    """A fresh HOME and a PATH with python3 but no reconcile. PIP_* and proxy settings pass:
    they are how this machine reaches its package index, as a container's own would be."""
    home, bindir = root / "home", root / "bin"
    home.mkdir(parents=True, exist_ok=True)
    bindir.mkdir(parents=True, exist_ok=True)
    if not (bindir / "python3").exists():
        (bindir / "python3").symlink_to(getattr(sys, "_base_executable", sys.executable))
    env = {"HOME": str(home), "PATH": f"{bindir}:/usr/bin:/bin", "LANG": "C.UTF-8",
           "PIP_RETRIES": "1"}  # without a network, fall back to the local index at once
    env.update({k: v for k, v in os.environ.items()
                if (k.startswith("PIP_") and k != "PIP_RETRIES") or k.lower() in PASS_THROUGH})
    # a local index may be set in the real HOME's pip.conf, which the fresh HOME would drop
    for conf in (Path.home() / ".config" / "pip" / "pip.conf", Path.home() / ".pip" / "pip.conf"):
        if conf.is_file():
            env.setdefault("PIP_CONFIG_FILE", str(conf))
            break
    env.update(extra)
    return env


def remote_user() -> str:
    """Root hands the volume to another user, as the CLI does for "vscode"."""
    return "nobody" if os.geteuid() == 0 else getpass.getuser()


@dataclass
class Installed:
    root: Path
    log: str

    @property
    def prefix(self) -> Path:
        return self.root / "prefix"

    @property
    def volume(self) -> Path:  # the STORE option: the named volume's mount point
        return self.root / "volume"

    @property
    def venv(self) -> Path:
        return self.prefix / "lib" / "reconcile" / "venv"

    @property
    def post_create(self) -> Path:
        return self.prefix / "share" / "reconcile" / "post-create.sh"

    def container_env(self) -> dict[str, str]:
        """The feature's containerEnv, its mount point moved to this volume."""
        target = feature_metadata()["mounts"][0]["target"]
        return {k: v.replace(target, str(self.volume), 1)
                for k, v in feature_metadata()["containerEnv"].items()}

    def env(self, **extra: str) -> dict[str, str]:
        return clean_env(self.root, **{**self.container_env(), **extra})

    def run_post_create(self, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(self.post_create)], cwd=cwd, env=self.env(**extra),
                              capture_output=True, text=True, timeout=300)


def run_install(root: Path, source: str, **extra: str) -> tuple[subprocess.CompletedProcess,
                                                               Installed]:
    env = clean_env(root, VERSION="latest", SOURCE=source, STORE=str(root / "volume"),
                    RECONCILE_FEATURE_PREFIX=str(root / "prefix"), _REMOTE_USER=remote_user(),
                    **extra)
    assert shutil.which("reconcile", path=env["PATH"]) is None  # really without reconcile
    r = subprocess.run(["sh", str(FEATURE / "install.sh")], env=env, capture_output=True,
                       text=True, timeout=300)
    return r, Installed(root, r.stdout + r.stderr)


def copy_source(dst: Path) -> Path:
    """What pip needs to build this checkout, copied (pip would write build/ into the repo)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dst / name)
    shutil.copytree(REPO / "reconcile", dst / "reconcile",
                    ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return dst


def mock_project(d: Path) -> Path:
    """The repository's own manifest and lock: source "mock", no network."""
    d.mkdir(parents=True, exist_ok=True)
    for name in ("models.toml", "models.lock"):
        shutil.copy2(REPO / name, d / name)
    return d


def locked_commit(project: Path, key: str) -> str:
    text = (project / "models.lock").read_text()
    section = text.split(f"[models.{key}]", 1)[1]
    return re.search(r'commit = "([0-9a-f]{40})"', section).group(1)


def snapshot(cache: Path, repo: str, commit: str) -> Path:
    return cache / f"models--{repo.replace('/', '--')}" / "snapshots" / commit


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Installed:
    """install.sh with SOURCE = this checkout, once for the module."""
    root = tmp_path_factory.mktemp("feature")
    source = copy_source(root / "checkout")
    r, inst = run_install(root, str(source))
    assert r.returncode == 0, inst.log[-4000:]
    return inst


# --- (a) a clean install, then the post-create apply --------------------------------------

def test_install_sh_puts_reconcile_in_its_own_venv_and_prepares_the_volume(installed):
    link = installed.prefix / "bin" / "reconcile"
    assert link.is_symlink() and Path(os.readlink(link)) == installed.venv / "bin" / "reconcile"
    r = subprocess.run([str(link), "--version"], env=clean_env(installed.root),
                       cwd=installed.root, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.startswith("reconcile "), r.stderr
    # the venv's own reconcile, not the system python's (whose site-packages stay untouched)
    code = "import reconcile, sys; print(reconcile.__file__); print(sys.prefix)"
    r = subprocess.run([str(installed.venv / "bin" / "python"), "-c", code],  # not in REPO:
                       env=clean_env(installed.root), cwd=installed.root,  # -c imports from cwd
                       capture_output=True, text=True)
    module, prefix = r.stdout.split()
    assert Path(module).is_relative_to(installed.venv) and Path(prefix) == installed.venv
    assert "include-system-site-packages = false" in (installed.venv / "pyvenv.cfg").read_text()
    # Docker copies this directory's owner into a fresh named volume: the remote user's
    uid = pwd.getpwnam(remote_user()).pw_uid
    for d in ("", "store", "huggingface/hub"):
        assert (installed.volume / d).stat().st_uid == uid, d
    assert os.access(installed.post_create, os.X_OK)
    assert "pip install" in installed.log and "wrote" in installed.log


def test_post_create_applies_the_lock_into_the_volume(installed, tmp_path):
    project = mock_project(tmp_path / "proj")
    r = installed.run_post_create(project)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "running: HF_HUB_OFFLINE=0" in r.stdout and "apply --locked" in r.stdout
    cache = Path(installed.container_env()["HF_HUB_CACHE"])
    assert cache.is_relative_to(installed.volume)
    snap = snapshot(cache, "test/minimal", locked_commit(project, "test-minimal"))
    assert (snap / "config.json").is_file()  # what transformers' AutoConfig reads
    # the official client finds it offline, by repo id, in the volume's HF cache
    from huggingface_hub import snapshot_download

    found = snapshot_download("test/minimal", cache_dir=cache, local_files_only=True)
    assert Path(found) == snap and json.loads((Path(found) / "config.json").read_text())
    assert any(Path(installed.container_env()["RECONCILE_STORE"]).iterdir())
    again = installed.run_post_create(project)  # a second create (a rebuilt container)
    assert again.returncode == 0, again.stderr


def test_post_create_without_a_manifest_does_nothing(installed, tmp_path):
    (tmp_path / "empty").mkdir()
    r = installed.run_post_create(tmp_path / "empty")
    assert r.returncode == 0 and "nothing to apply" in r.stdout


# --- (b) a stale lock fails the container's creation, loudly ------------------------------

def test_post_create_fails_on_a_stale_lock_with_reconciles_error(installed, tmp_path):
    project = mock_project(tmp_path / "proj")
    with (project / "models.toml").open("a") as f:
        f.write('\n[models.extra]\nsource.mock = { org = "test", model = "extra", '
                'files = ["config.json"] }\n')
    r = installed.run_post_create(project)
    assert r.returncode != 0
    assert "models.lock is out of date" in r.stderr and "extra" in r.stderr  # reconcile's
    assert "reconcile post-create: error:" in r.stderr and "reconcile lock" in r.stderr
    cache = Path(installed.container_env()["HF_HUB_CACHE"])
    assert not (cache / "models--test--extra").exists()


# --- containerEnv's HF_HUB_OFFLINE=1 must not stop the post-create apply ------------------

def test_post_create_lifts_the_containers_hf_hub_offline(installed, project, hub):
    """A Hugging Face model from the stand-in Hub: with HF_HUB_OFFLINE=1 (the container's
    environment) a plain `apply --locked` refuses the network; the post-create script
    does not."""
    project.write('[models.tiny]\nsource.huggingface = { repo = "acme/tiny" }\n')
    env = installed.env(HF_ENDPOINT=hub.url, RECONCILE_VALIDATION="none",
                        RECONCILE_STORE=str(project.store), HF_HUB_CACHE=str(project.cache),
                        HF_HOME=str(project.dir / "hfhome"), HF_HUB_DISABLE_TELEMETRY="1",
                        HF_HUB_DISABLE_XET="1")
    reconcile = str(installed.venv / "bin" / "reconcile")
    r = subprocess.run([reconcile, "lock"], cwd=project.dir, capture_output=True, text=True,
                       env={**env, "HF_HUB_OFFLINE": "0"})
    assert r.returncode == 0, r.stderr
    assert env["HF_HUB_OFFLINE"] == "1"  # as containerEnv sets it
    plain = subprocess.run([reconcile, "apply", "--locked"], cwd=project.dir,
                           capture_output=True, text=True, env=env)
    assert plain.returncode != 0  # the control: offline, the store is empty
    r = subprocess.run([str(installed.post_create)], cwd=project.dir, capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    snap = snapshot(project.cache, "acme/tiny", locked_commit(project.dir, "tiny"))
    assert (snap / "config.json").is_file() and (snap / "model.safetensors").is_file()


# --- source = "workspace" (this repository's own devcontainer.json) -----------------------

def test_workspace_source_installs_the_checkout_at_post_create(tmp_path):
    r, inst = run_install(tmp_path, "workspace")
    assert r.returncode == 0, inst.log
    assert not (inst.venv / "bin" / "reconcile").exists()  # nothing installed at build time
    r, inst = run_install(tmp_path, "workspace")  # idempotent: a second run reuses all
    assert r.returncode == 0 and "reusing the venv" in inst.log, inst.log
    assert inst.venv.stat().st_uid == pwd.getpwnam(remote_user()).pw_uid  # post-create pip
    bare = inst.run_post_create(mock_project(tmp_path / "not-a-checkout"))
    assert bare.returncode != 0 and "no pyproject.toml" in bare.stderr
    workspace = mock_project(copy_source(tmp_path / "workspace"))
    r = inst.run_post_create(workspace)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "pip install -e ." in r.stdout
    cache = Path(inst.container_env()["HF_HUB_CACHE"])
    snap = snapshot(cache, "test/minimal", locked_commit(workspace, "test-minimal"))
    assert (snap / "config.json").is_file()
    version = subprocess.run([str(inst.prefix / "bin" / "reconcile"), "--version"],
                             capture_output=True, text=True, env=inst.env())
    assert version.returncode == 0 and version.stdout.startswith("reconcile ")


def test_install_sh_refuses_a_package_that_is_not_reconcile(tmp_path):
    """"reconcile" on a public index may be another project: install.sh checks what it got."""
    wheel = tmp_path / "reconcile-0.0.5-py3-none-any.whl"
    info = "reconcile-0.0.5.dist-info"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("reconcile/__init__.py", "")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\nName: reconcile\nVersion: 0.0.5\n")
        z.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                                    "Root-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr(f"{info}/RECORD", "")
    r, inst = run_install(tmp_path, str(wheel))
    assert r.returncode != 0
    assert "did not install the reconcile model CLI" in r.stderr, inst.log
    assert not (inst.post_create).exists()


# --- (c) the metadata: consistent with install.sh, read by the reference CLI, schemas ------

def test_feature_metadata_agrees_with_install_sh_and_devcontainer_json():
    meta = feature_metadata()
    assert meta["id"] == FEATURE.name  # the spec: id is the feature's directory name
    assert re.fullmatch(r"\d+\.\d+\.\d+", meta["version"])
    opts = meta["options"]
    assert {"version", "source", "store"} <= set(opts)
    assert opts["version"]["default"] == "latest" and opts["source"]["default"] == ""
    (mount,) = meta["mounts"]
    assert mount == {"type": "volume", "source": "reconcile-models",
                     "target": opts["store"]["default"]}
    store = mount["target"]  # install.sh makes store/ and huggingface/hub under STORE
    assert meta["containerEnv"] == {"RECONCILE_STORE": f"{store}/store",
                                    "HF_HUB_CACHE": f"{store}/huggingface/hub",
                                    "HF_HUB_OFFLINE": "1"}
    install_sh = (FEATURE / "install.sh").read_text()
    assert 'mkdir -p "$STORE/store" "$STORE/huggingface/hub"' in install_sh
    assert f'STORE="${{STORE:-{store}}}"' in install_sh
    # the postCreateCommand is where install.sh writes the script with its default prefix
    assert meta["postCreateCommand"] == "/usr/local/share/reconcile/post-create.sh"
    assert 'PREFIX="${RECONCILE_FEATURE_PREFIX:-/usr/local}"' in install_sh
    assert 'POST_CREATE="$SHARE/post-create.sh"' in install_sh
    assert 'SHARE="$PREFIX/share/reconcile"' in install_sh
    # this repository's devcontainer.json uses the local feature with options it declares
    features = loads_jsonc(DEVCONTAINER_JSON.read_text())["features"]
    assert set(features["./reconcile"]) <= set(opts)


@pytest.fixture(scope="session")
def devcontainers_cli(tmp_path_factory) -> Path:
    """The devcontainer CLI (the spec's reference implementation) from the npm registry."""
    npm, node = shutil.which("npm"), shutil.which("node")
    if not (npm and node):
        pytest.skip("npm and node >= 20 are needed for the devcontainer CLI")
    major = subprocess.run([node, "--version"], capture_output=True, text=True).stdout
    if int(major.lstrip("v").split(".")[0] or 0) < 20:
        pytest.skip(f"{CLI_PACKAGE} needs node >= 20, not {major.strip()}")
    prefix = tmp_path_factory.mktemp("npm")
    r = subprocess.run([npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund",
                        "--ignore-scripts", "--no-save", CLI_PACKAGE],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip(f"npm install {CLI_PACKAGE} failed: {r.stderr[-500:]}")
    return prefix / "node_modules" / "@devcontainers" / "cli"


def devcontainer(cli: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([shutil.which("node") or "node", str(cli / "devcontainer.js"), *args],
                          cwd=cwd, capture_output=True, text=True, timeout=120)


def test_reference_cli_packages_the_feature_and_refuses_a_broken_copy(devcontainers_cli,
                                                                    tmp_path):
    shutil.copytree(FEATURE, tmp_path / "good" / "reconcile")
    r = devcontainer(devcontainers_cli, "features", "package", "good/reconcile", "-o", "out",
                     cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    collection = json.loads((tmp_path / "out" / "devcontainer-collection.json").read_text())
    (packaged,) = collection["features"]
    assert packaged == feature_metadata()  # the CLI read all of it, as written
    assert (tmp_path / "out" / "devcontainer-feature-reconcile.tgz").is_file()
    broken = tmp_path / "broken" / "reconcile"
    shutil.copytree(FEATURE, broken)
    meta = feature_metadata()
    del meta["version"]
    (broken / "devcontainer-feature.json").write_text(json.dumps(meta))
    r = devcontainer(devcontainers_cli, "features", "package", "broken/reconcile", "-o", "out2",
                     cwd=tmp_path)
    assert r.returncode != 0


def test_reference_cli_reads_devcontainer_json_as_we_do(devcontainers_cli, tmp_path):
    """The JSONC reading here (comments stripped) is the CLI's: same configuration."""
    shutil.copytree(REPO / ".devcontainer", tmp_path / "ws" / ".devcontainer")
    no_docker = tmp_path / "docker"  # no container exists yet: `docker ps` lists none
    no_docker.write_text("#!/bin/sh\nexit 0\n")
    no_docker.chmod(0o755)
    r = devcontainer(devcontainers_cli, "read-configuration", "--workspace-folder", "ws",
                     "--docker-path", str(no_docker), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    config = json.loads(r.stdout)["configuration"]
    config.pop("configFilePath")
    assert config == loads_jsonc(DEVCONTAINER_JSON.read_text())
    assert config["features"]["./reconcile"] == {"source": "workspace"}


@pytest.fixture(scope="session")
def official_schemas(request) -> dict[str, dict]:
    """The spec's JSON schemas (devcontainers/spec, schemas/): from the npm package, should it
    carry them, or from a directory named by RECONCILE_DEVCONTAINER_SCHEMAS."""
    places = [Path(p) for p in [os.environ.get("RECONCILE_DEVCONTAINER_SCHEMAS")] if p]
    if shutil.which("npm"):
        places.append(request.getfixturevalue("devcontainers_cli"))
    found: dict[str, dict] = {}
    for place in places:
        for name in SCHEMA_FILES:
            for path in sorted(place.rglob(name)) if place.is_dir() else []:
                found.setdefault(name, json.loads(path.read_text()))
    if missing := [n for n in SCHEMA_FILES if n not in found]:
        pytest.skip(f"not applicable here: {', '.join(missing)} ship in no package this "
                    f"machine's registries carry ({CLI_PACKAGE} has none); set "
                    "RECONCILE_DEVCONTAINER_SCHEMAS to a devcontainers/spec schemas/ directory")
    return found


def schema_errors(schema: dict, instance) -> list[str]:
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return [e.message for e in cls(schema).iter_errors(instance)]


def test_metadata_validates_against_the_official_schemas(official_schemas):
    feature_schema = official_schemas["devContainerFeature.schema.json"]
    base_schema = official_schemas["devContainer.base.schema.json"]
    assert schema_errors(feature_schema, feature_metadata()) == []
    config = loads_jsonc(DEVCONTAINER_JSON.read_text())
    assert schema_errors(base_schema, config) == []
    # broken copies are rejected: the schemas are really checking
    bad = feature_metadata()
    bad["mounts"] = [{"type": "tmpfs", "source": "x", "target": "/x"}]
    assert schema_errors(feature_schema, bad)
    bad = feature_metadata()
    bad["options"]["store"]["default"] = 1
    assert schema_errors(feature_schema, bad)
    bad = dict(config, imag=config["image"])
    del bad["image"]
    assert schema_errors(base_schema, bad)
