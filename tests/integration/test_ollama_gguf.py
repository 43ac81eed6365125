"""integration.ollama for a GGUF from any source: a GGUF repo on the stand-in Hub (and a
file nginx serves) installed into ollama's models directory, read back with
tests/ollama_reader.py as ollama's GetModel reads it. The GGUF's blob is the store's
object (one inode with the HF cache's blob); what reconcile did not write is left alone."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import gguf
import pytest

from reconcile.lockfile import read_lock
from reconcile.store import Store
from tests.ollama_reader import list_models, read_model
from tests.test_gguf import JINJA, make_gguf

pytestmark = pytest.mark.integration

TOML = """\
[models.tiny]
source.huggingface = {{ repo = "acme/tiny-GGUF", files = {files} }}
{extra}
"""
Q4 = '["*Q4_K_M.gguf"]'


@pytest.fixture(autouse=True)
def ollama_dir(tmp_path, monkeypatch):
    """ollama's models directory for this test (never the developer's ~/.ollama)."""
    d = tmp_path / "ollama-models"
    monkeypatch.setenv("OLLAMA_MODELS", str(d))
    return d


def declare(project, files: str = Q4, ollama: str = '{ name = "tiny:q4" }',
            more: str = "") -> None:
    extra = f"integration.ollama = {ollama}\n" if ollama else ""
    project.write(TOML.format(files=files, extra=extra + more))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_an_hf_gguf_reads_back_as_ollama_loads_it_one_inode_with_the_hf_cache(
        hf_env, ggufs, ollama_dir):
    declare(hf_env)
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    m = read_model(ollama_dir, "tiny:q4")
    assert m.name == "registry.ollama.ai/library/tiny/q4"
    assert m.model_path.read_bytes() == ggufs["q4"]
    assert m.chat_template == JINJA and m.template is None  # llama.cpp renders the GGUF's
    assert (m.config["model_family"], m.config["file_type"]) == ("qwen2", "Q4_K_M")
    ref = gguf.GGUFReader(m.model_path)  # llama.cpp's reader: ollama's parameter count
    assert m.config["model_type"] == str(sum(int(t.n_elements) for t in ref.tensors))
    assert m.licenses == ["apache-2.0"]  # the GGUF's general.license
    assert list_models(ollama_dir) == {"registry.ollama.ai/library/tiny/q4": m.digest}

    digest = sha(ggufs["q4"])
    store = Store(hf_env.store)
    inodes = {os.stat(p).st_ino for p in (
        ollama_dir / "blobs" / f"sha256-{digest}",
        hf_env.cache / "models--acme--tiny-GGUF" / "blobs" / digest,
        store.object_path(digest))}
    assert len(inodes) == 1
    assert not (ollama_dir / "blobs" / f"sha256-{digest}").is_symlink()

    assert hf_env.run("plan", "--exit-code").code == 0
    again = hf_env.run("apply")
    assert again.code == 0 and "Nothing to do" in again.out, again.out
    status = json.loads(hf_env.run("status", "--json").out)
    assert [e["state"] for e in status] == ["ok"], status


def test_models_toml_texts_become_ollamas_template_system_params_and_license(
        hf_env, ggufs, ollama_dir):
    declare(hf_env, ollama='{ name = "team/tiny:chat", template = "{{ .System }} {{ .Prompt }}",'
            ' system = "Answer briefly.", parameters = { temperature = 0.7,'
            ' stop = ["<|end|>"] }, license = ["MIT", "Apache-2.0 text"] }')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    m = read_model(ollama_dir, "team/tiny:chat")
    assert m.template == "{{ .System }} {{ .Prompt }}" and m.system == "Answer briefly."
    assert m.options == {"stop": ["<|end|>"], "temperature": 0.7}
    assert m.licenses == ["MIT", "Apache-2.0 text"]

    # a new text is a new image: the manifest is replaced and the old text blobs go
    old = {p.name for p in (ollama_dir / "blobs").iterdir()}
    declare(hf_env, ollama='{ name = "team/tiny:chat", system = "Answer at length." }')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    m = read_model(ollama_dir, "team/tiny:chat")
    assert (m.system, m.template, m.options) == ("Answer at length.", None, None)
    blobs = {p.name for p in (ollama_dir / "blobs").iterdir()}
    named = {d["digest"].replace(":", "-") for d in [m.manifest["config"],
                                                     *m.manifest["layers"]]}
    assert blobs == named and old - blobs  # nothing left behind


def test_a_new_gguf_in_the_lock_replaces_the_manifest_and_releases_the_old_blob(
        hf_env, ggufs, ollama_dir):
    declare(hf_env)
    assert hf_env.run("apply").code == 0
    declare(hf_env, files='["*Q8_0.gguf"]')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    m = read_model(ollama_dir, "tiny:q4")
    assert m.model_path.read_bytes() == ggufs["q8"] and m.config["file_type"] == "Q8_0"
    assert not (ollama_dir / "blobs" / f"sha256-{sha(ggufs['q4'])}").exists()
    assert hf_env.run("plan", "--exit-code").code == 0


def foreign_model(models: Path, name: str, gguf_sha: str | None = None) -> Path:
    """A model as `ollama create` would leave it: its own config, maybe sharing a GGUF."""
    config = b'{"model_format":"gguf","model_family":"llama"}\n'
    (models / "blobs").mkdir(parents=True, exist_ok=True)
    (models / "blobs" / f"sha256-{sha(config)}").write_bytes(config)
    layers = []
    if gguf_sha:
        size = os.stat(models / "blobs" / f"sha256-{gguf_sha}").st_size
        layers.append({"mediaType": "application/vnd.ollama.image.model",
                       "digest": f"sha256:{gguf_sha}", "size": size})
    doc = {"schemaVersion": 2, "config": {"mediaType": "application/vnd.docker.container."
           "image.v1+json", "digest": f"sha256:{sha(config)}", "size": len(config)},
           "layers": layers}
    path = models / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc))
    return path


def test_prune_takes_only_what_reconcile_made_and_leaves_a_foreign_model(
        hf_env, ggufs, ollama_dir):
    declare(hf_env)
    assert hf_env.run("apply").code == 0
    gguf_sha = sha(ggufs["q4"])
    # the user's own model uses the same GGUF blob (ollama created it from ours)
    theirs = foreign_model(ollama_dir, "mine", gguf_sha)
    mine_bytes = theirs.read_bytes()
    declare(hf_env, ollama="")
    plan = hf_env.run("plan", "--prune")
    assert "- unlink   tiny" in plan.out and "from ollama" in plan.out, plan.out
    r = hf_env.run("apply", "--prune")
    assert r.code == 0, r.err
    assert not (ollama_dir / "manifests" / "registry.ollama.ai" / "library" / "tiny").exists()
    assert theirs.read_bytes() == mine_bytes
    assert read_model(ollama_dir, "mine").model_path.read_bytes() == ggufs["q4"]
    assert {p.name for p in (ollama_dir / "blobs").iterdir()} == {
        f"sha256-{gguf_sha}", f"sha256-{json.loads(mine_bytes)['config']['digest'][7:]}"}
    assert hf_env.run("plan", "--exit-code", "--prune").code == 0


def test_a_name_ollama_already_has_at_another_version_is_left_alone_and_reported(
        hf_env, ggufs, ollama_dir):
    theirs = foreign_model(ollama_dir, "tiny")
    before = theirs.read_bytes()
    declare(hf_env, ollama='{ name = "tiny" }')
    r = hf_env.run("apply")
    assert "holds another version" in r.err + r.out and "ollama rm" in r.err + r.out
    assert theirs.read_bytes() == before
    assert not (ollama_dir / "blobs" / f"sha256-{sha(ggufs['q4'])}").exists()
    plan = hf_env.run("plan")
    assert "! tiny:" in plan.out and "+ link" not in plan.out.split("ollama:tiny")[0]


@pytest.mark.parametrize("files, found", [('["*.gguf"]', "2: tiny-Q4_K_M.gguf, tiny-Q8_0.gguf"),
                                          ('["README.md"]', "none")])
def test_zero_or_several_ggufs_are_refused_naming_the_key_and_the_files(
        hf_env, ggufs, ollama_dir, files, found):
    declare(hf_env, files=files)
    r = hf_env.run("lock")
    assert r.code != 0 and "Traceback" not in r.err
    assert "models.tiny: integration.ollama needs exactly one GGUF" in r.err and found in r.err, r.err
    assert 'files = ["*Q4_K_M.gguf"]' in r.err
    # a lock made before the integration was declared: plan says the same
    declare(hf_env, files=files, ollama="")
    assert hf_env.run("lock").code == 0
    declare(hf_env, files=files)
    r = hf_env.run("plan")
    assert r.code != 0 and found in r.err and "Traceback" not in r.err, r.err
    assert not ollama_dir.exists()


def test_a_gguf_from_a_plain_url_is_shown_to_ollama_too(project, tmp_path, ollama_dir):
    from tests.servers import nginx, nginx_binary

    if nginx_binary() is None:
        pytest.skip("needs nginx-light")
    site = tmp_path / "site"
    site.mkdir()
    data = make_gguf(site / "tiny-Q4_K_M.gguf", template=None).read_bytes()
    with nginx(site, tmp_path / "nginx") as url:
        project.write(f'[models.web]\nsource.url = {{ url = "{url}/tiny-Q4_K_M.gguf" }}\n'
                      'integration.ollama = { name = "web/tiny:q4", parameters = { num_ctx ='
                      ' 2048 } }\n')
        r = project.run("apply")
        assert r.code == 0, r.err
    m = read_model(ollama_dir, "web/tiny:q4")
    assert m.model_path.read_bytes() == data and m.options == {"num_ctx": 2048}
    assert m.chat_template is None and m.template is None
    lock = read_lock(project.lock).models["web"]
    assert lock.ollama is None  # where it goes is models.toml's word, not the lock's
    obj = Store(project.store).object_path(sha(data))
    assert os.stat(m.model_path).st_ino == os.stat(obj).st_ino
    assert project.run("plan", "--exit-code").code == 0


def test_a_models_directory_on_another_filesystem_gets_a_symlink_gc_respects(
        hf_env, ggufs, ollama_dir, tmpfs_store):
    """The store on tmpfs, ollama's directory on disk: the GGUF's blob is a symlink to
    the store object, and gc keeps that object while the link needs it."""
    declare(hf_env, more="integration.huggingface.enable = false\n")
    assert hf_env.run("apply").code == 0
    blob = ollama_dir / "blobs" / f"sha256-{sha(ggufs['q4'])}"
    obj = Store(tmpfs_store).object_path(sha(ggufs["q4"]))
    assert blob.is_symlink() and os.path.samefile(blob, obj)
    assert read_model(ollama_dir, "tiny:q4").model_path.read_bytes() == ggufs["q4"]
    assert hf_env.run("plan", "--exit-code").code == 0
    assert hf_env.run("remove", "tiny").code == 0
    assert hf_env.run("gc").code == 0  # no lock names it; ollama's link does
    assert obj.exists()
    assert hf_env.run("apply", "--prune").code == 0
    assert not blob.exists() and list_models(ollama_dir) == {}
    assert hf_env.run("gc").code == 0
    assert not obj.exists()
