"""integration.lmstudio: a GGUF repo from the stand-in Hub shown in LM Studio's models
folder (<models>/<publisher>/<model>/<file>.gguf), found as LM Studio's own CLI finds it;
owned like integration.directory: one inode, a foreign file left alone, prune."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import gguf
import pytest

from reconcile.store import Store
from tests.integration.conftest import GGUF_REPO as REPO

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    """A home of LM Studio's for this test (never the developer's ~/.lmstudio)."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("OLLAMA_MODELS", str(tmp_path / "ollama-models"))
    monkeypatch.delenv("LMSTUDIO_HOME", raising=False)
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    (tmp_path / "home").mkdir()
    return tmp_path / "home"


def declare(project, lms: str = "true", files: str = '["*Q4_K_M.gguf"]', more: str = "") -> None:
    project.write(f'[models.tiny]\nsource.huggingface = {{ repo = "{REPO}", files = {files} }}\n'
                  + (f"integration.lmstudio = {lms}\n" if lms else "") + more)


def test_the_gguf_is_where_lm_studio_lists_it_one_inode_with_hf_and_ollama(
        hf_env, ggufs, home):
    declare(hf_env, more='integration.ollama = { name = "tiny:q4" }\n')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    shown = home / ".lmstudio" / "models" / "acme" / "tiny-GGUF" / "tiny-Q4_K_M.gguf"
    assert shown.read_bytes() == ggufs["q4"] and not shown.is_symlink()
    assert gguf.GGUFReader(shown).get_field("general.architecture").contents() == "qwen2"
    digest = hashlib.sha256(ggufs["q4"]).hexdigest()
    inodes = {os.stat(p).st_ino for p in (
        shown, hf_env.cache / "models--acme--tiny-GGUF" / "blobs" / digest,
        Path(os.environ["OLLAMA_MODELS"]) / "blobs" / f"sha256-{digest}",
        Store(hf_env.store).object_path(digest))}
    assert len(inodes) == 1
    assert not (home / ".lmstudio-home-pointer").exists()  # reading LM Studio writes nothing
    assert hf_env.run("plan", "--exit-code").code == 0
    again = hf_env.run("apply")
    assert again.code == 0 and "Nothing to do" in again.out, again.out
    status = json.loads(hf_env.run("status", "--json").out)
    assert status[0]["state"] == "ok" and status[0]["lmstudio"] == str(shown.parent)


def test_lm_studios_models_directory_setting_and_home_pointer_are_followed(
        hf_env, ggufs, home, tmp_path):
    elsewhere = tmp_path / "big-disk" / "lms"
    (home / ".lmstudio-home-pointer").write_text(f"{elsewhere}\n")
    elsewhere.mkdir(parents=True)
    (elsewhere / "settings.json").write_text(json.dumps(
        {"downloadsFolder": str(tmp_path / "models-here")}))
    declare(hf_env, lms='{ publisher = "me", model = "tiny" }')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    assert (tmp_path / "models-here" / "me" / "tiny" / "tiny-Q4_K_M.gguf").read_bytes() \
        == ggufs["q4"]
    assert not (home / ".lmstudio").exists()


def test_a_file_reconcile_did_not_make_is_left_alone_and_survives_prune(hf_env, ggufs, home):
    folder = home / ".lmstudio" / "models" / "acme" / "tiny-GGUF"
    folder.mkdir(parents=True)
    (folder / "tiny-Q4_K_M.gguf").write_bytes(b"my own download")
    (folder / "notes.txt").write_bytes(b"mine")
    declare(hf_env, files='["*.gguf"]')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    assert "tiny-Q4_K_M.gguf exists and reconcile did not create it" in r.err
    assert (folder / "tiny-Q4_K_M.gguf").read_bytes() == b"my own download"
    assert (folder / "tiny-Q8_0.gguf").read_bytes() == ggufs["q8"]  # the other is linked
    plan = hf_env.run("plan")
    assert "! tiny:" in plan.out and "tiny-Q4_K_M.gguf" in plan.out

    assert hf_env.run("remove", "tiny").code == 0
    plan = hf_env.run("plan", "--prune")
    assert "- unlink   tiny from LM Studio" in plan.out, plan.out
    assert hf_env.run("apply", "--prune").code == 0
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "tiny-Q4_K_M.gguf"]
    assert (folder / "tiny-Q4_K_M.gguf").read_bytes() == b"my own download"


def test_dropping_the_integration_removes_the_links_and_their_folder(hf_env, ggufs, home):
    declare(hf_env)
    assert hf_env.run("apply").code == 0
    folder = home / ".lmstudio" / "models" / "acme" / "tiny-GGUF"
    assert folder.is_dir()
    declare(hf_env, lms="")
    r = hf_env.run("apply", "--prune")
    assert r.code == 0, r.err
    assert not folder.exists()
    assert hf_env.run("plan", "--exit-code", "--prune").code == 0


def test_a_symlinked_model_folder_is_not_written_through(hf_env, ggufs, home, tmp_path):
    """A folder LM Studio's models folder holds as a symlink (planted, or the user's):
    reconcile writes only into real folders below the models folder."""
    target = tmp_path / "target"
    target.mkdir()
    (home / ".lmstudio" / "models" / "acme").mkdir(parents=True)
    (home / ".lmstudio" / "models" / "acme" / "tiny-GGUF").symlink_to(target)
    declare(hf_env)
    r = hf_env.run("apply")
    assert "is not a real directory" in r.err and "Traceback" not in r.err, r.err
    assert list(target.iterdir()) == []


def test_a_model_without_a_gguf_is_a_clear_error(hf_env, ggufs):
    declare(hf_env, files='["README.md"]')
    r = hf_env.run("apply")
    assert r.code != 0 and "Traceback" not in r.err
    assert "models.tiny: integration.lmstudio needs GGUF files" in r.err, r.err
