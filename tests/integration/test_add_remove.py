"""`reconcile add` and `remove` against the stand-in Hub: models.toml edited byte for byte,
only the added model locked, all or nothing when the source refuses."""

from __future__ import annotations

import tomllib

import pytest

from reconcile.lockfile import read_lock

pytestmark = pytest.mark.integration

MANIFEST = """\
#:schema ./schemas/models.schema.json
# Team models: keep this comment, and the spacing below.

[models.local]
source.mock = { org = "test", model = "minimal", files = ["config.json"] }   # seed model
"""


@pytest.fixture
def locked(project, hf_env):
    project.write(MANIFEST)
    assert project.run("lock").code == 0
    return project


def test_add_locks_only_the_new_model_and_remove_restores_both_files(locked, hub):
    project = locked
    toml_before, lock_before = project.manifest.read_bytes(), project.lock.read_bytes()
    r = project.run("add", "acme/tiny", "--revision", "v1.0", "--files", "*.json",
                    "*.safetensors")
    assert r.code == 0, r.err
    assert "added models.tiny (huggingface)" in r.out and "locked tiny" in r.out
    text = project.manifest.read_text()
    assert text == MANIFEST + ('\n[models.tiny]\nsource.huggingface = { repo = "acme/tiny",'
                               ' revision = "v1.0", files = ["*.json", "*.safetensors"] }\n')
    lock = read_lock(project.lock)
    tiny = lock.models["tiny"]
    assert tiny.pin["commit"] == hub.repos[("model", "acme/tiny")].refs["v1.0"]
    assert sorted(f.path for f in tiny.files) == ["config.json", "model.safetensors",
                                                  "tokenizer.json", "tokenizer_config.json"]
    assert lock.models["local"] == read_lock_bytes(lock_before)["local"]
    assert project.run("apply", "--locked").code == 0
    assert project.run("path", "tiny").out.strip()

    r = project.run("remove", "tiny")
    assert r.code == 0, r.err
    assert "apply --prune" in r.out
    assert project.manifest.read_bytes() == toml_before
    assert project.lock.read_bytes() == lock_before


def read_lock_bytes(raw: bytes):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "models.lock"
        p.write_bytes(raw)
        return read_lock(p).models


def test_add_does_not_resolve_other_stale_models(locked, hub):
    """`add` locks the one model it adds; another model edited since the last lock stays
    as locked (`lock --check` still reports it), as `uv add` leaves other pins alone."""
    project = locked
    project.manifest.write_text(MANIFEST.replace('["config.json"]', '["config.json", "README.md"]'))
    old_local = read_lock(project.lock).models["local"]
    assert project.run("add", "acme/tiny", "--files", "config.json").code == 0
    assert read_lock(project.lock).models["local"] == old_local
    r = project.run("lock", "--check")
    assert r.code == 1 and "stale: local" in r.out and "tiny" not in r.out


def test_browser_url_and_hf_uri_forms_resolve(locked, hub):
    project = locked
    r = project.run("add", f"{hub.url}/acme/tiny/tree/v1.0", "--name", "from-url",
                    "--files", "config.json")
    assert r.code == 0, r.err
    r = project.run("add", "hf://acme/tiny@main", "--name", "from-uri", "--files", "config.json")
    assert r.code == 0, r.err
    models = tomllib.loads(project.manifest.read_text())["models"]
    assert models["from-url"]["source"]["huggingface"]["revision"] == "v1.0"
    assert models["from-uri"]["source"]["huggingface"]["revision"] == "main"
    lock = read_lock(project.lock).models
    assert lock["from-url"].pin["commit"] == hub.repos[("model", "acme/tiny")].refs["v1.0"]


def test_add_is_all_or_nothing(locked, hub):
    project = locked
    toml_before, lock_before = project.manifest.read_bytes(), project.lock.read_bytes()
    r = project.run("add", "acme/does-not-exist")
    assert r.code == 1 and "acme/does-not-exist" in r.err
    r = project.run("add", "acme/tiny", "--name", "local")
    assert r.code == 2 and "models.local already exists" in r.err
    r = project.run("add", "oci://ghcr.io/UPPER/case:v1")  # refused by the source's checks
    assert r.code == 2 and "ref" in r.err
    r = project.run("remove", "nope")
    assert r.code == 2 and "no model named 'nope'" in r.err and "local" in r.err
    assert project.manifest.read_bytes() == toml_before
    assert project.lock.read_bytes() == lock_before


def test_add_keeps_the_files_mode(locked, hub):
    """models.toml is rewritten through a temp file: it keeps its own mode, not mkstemp's
    0600 (a group-readable manifest stays group-readable)."""
    locked.manifest.chmod(0o664)
    assert locked.run("add", "acme/tiny", "--files", "config.json").code == 0
    assert locked.manifest.stat().st_mode & 0o777 == 0o664
    assert locked.lock.stat().st_mode & 0o777 == 0o644  # a new file: 0666 less the umask


def test_add_a_plain_https_file(project, hub):
    """Any https:// file is a url source (the stand-in Hub's resolve URL, with HF_ENDPOINT
    pointing elsewhere, is just a web server here); add works without a models.toml."""
    url = f"{hub.url}/acme/tiny/resolve/main/config.json"
    r = project.run("add", url, "--name", "cfg")
    assert r.code == 0, r.err
    assert project.manifest.read_text() == f'[models.cfg]\nsource.url = {{ url = "{url}" }}\n'
    (f,) = read_lock(project.lock).models["cfg"].files
    assert f.path == "config.json" and f.size > 0
    assert project.run("remove", "cfg").code == 0
    assert project.manifest.read_text() == ""
