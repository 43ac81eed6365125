"""integration.directory: a model's files in a project folder as links into the store, run
through the CLI against the stand-in Hub. The folder is owned like the HF cache: what
reconcile did not make is never overwritten or deleted, and prune takes only its own."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from reconcile.store import Store
from tests.integration.conftest import FILES

pytestmark = pytest.mark.integration

TINY = """\
[models.tiny]
source.huggingface = {{ repo = "acme/tiny", revision = "v1.0", files = {files} }}
integration.directory = {{ path = "models/tiny" }}
"""
ALL = '["*.json", "*.safetensors", "sub/*"]'


def declare(project, files: str = ALL, extra: str = "") -> None:
    project.write(TINY.format(files=files) + extra)


def folder_listing(d: Path) -> dict[str, str]:
    """path -> sha256 of every file below ``d`` (following links, as a tool reads it)."""
    out = {}
    for dirpath, _dirs, names in os.walk(d):
        for n in names:
            p = Path(dirpath) / n
            out[p.relative_to(d).as_posix()] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def test_apply_shows_the_lock_in_the_folder_as_one_inode_per_file(hf_env):
    declare(hf_env)
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    folder = hf_env.dir / "models" / "tiny"
    lock = read_lock(hf_env.lock).models["tiny"]
    want = {f.path: f.sha256 for f in lock.regular_files()}
    assert folder_listing(folder) == want
    assert want["model.safetensors"] == hashlib.sha256(FILES["model.safetensors"]).hexdigest()
    store = Store(hf_env.store)
    for f in lock.regular_files():
        here = os.stat(folder / f.path)
        assert not os.path.islink(folder / f.path)  # the same filesystem: a hard link
        assert here.st_ino == os.stat(store.object_path(f.sha256, f.executable)).st_ino
    assert hf_env.run("path", "tiny").out.strip() == str(folder)
    from transformers import AutoConfig

    assert AutoConfig.from_pretrained(folder, local_files_only=True).hidden_size == 8
    status = hf_env.run("status", "--json")
    assert '"directory": "' + str(folder) in status.out.replace("\\\\", "\\")
    assert hf_env.run("plan", "--exit-code").code == 0
    again = hf_env.run("apply")
    assert again.code == 0 and "Nothing to do" in again.out, again.out


def test_a_file_reconcile_did_not_make_is_left_alone_reported_and_survives_prune(hf_env):
    declare(hf_env)
    folder = hf_env.dir / "models" / "tiny"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes(b'{"mine": true}')
    (folder / "notes.txt").write_bytes(b"my notes")
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    assert "config.json exists and reconcile did not create it" in r.err
    assert (folder / "config.json").read_bytes() == b'{"mine": true}'
    assert (folder / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    plan = hf_env.run("plan")
    assert "! tiny:" in plan.out and "config.json" in plan.out and "+ link" not in plan.out
    status = hf_env.run("status")
    assert "conflict:" in status.out and "config.json" in status.out
    # a model whose folder holds someone else's file is not that folder: path gives the
    # snapshot, which holds the locked bytes
    assert hf_env.run("path", "tiny").out.strip() != str(folder)

    assert hf_env.run("remove", "tiny").code == 0
    r = hf_env.run("apply", "--prune")
    assert r.code == 0, r.err
    assert folder_listing(folder) == {
        "config.json": hashlib.sha256(b'{"mine": true}').hexdigest(),
        "notes.txt": hashlib.sha256(b"my notes").hexdigest()}


def test_removing_the_model_and_pruning_takes_the_folder_away(hf_env):
    declare(hf_env, extra='\n[models.other]\nsource.mock = { org = "o", model = "m", files ='
            ' ["a.bin"] }\nintegration.directory = { path = "models/other" }\n')
    assert hf_env.run("apply").code == 0
    assert (hf_env.dir / "models" / "tiny" / "sub" / "deeper" / "notes.md").is_file()
    assert hf_env.run("remove", "tiny").code == 0
    plan = hf_env.run("plan", "--prune")
    assert "- unlink   tiny from " + str(hf_env.dir / "models" / "tiny") in plan.out, plan.out
    r = hf_env.run("apply", "--prune")
    assert r.code == 0, r.err
    assert not (hf_env.dir / "models" / "tiny").exists()
    assert (hf_env.dir / "models" / "other" / "a.bin").is_file()  # not this one's to take
    assert hf_env.run("plan", "--exit-code", "--prune").code == 0


def test_a_narrower_lock_removes_the_dropped_files(hf_env):
    declare(hf_env)
    assert hf_env.run("apply").code == 0
    folder = hf_env.dir / "models" / "tiny"
    assert (folder / "model.safetensors").exists()
    declare(hf_env, files='["*.json"]')
    r = hf_env.run("apply")
    assert r.code == 0, r.err
    lock = read_lock(hf_env.lock).models["tiny"]
    assert folder_listing(folder) == {f.path: f.sha256 for f in lock.regular_files()}
    assert not (folder / "model.safetensors").exists() and not (folder / "sub").exists()
    assert hf_env.run("plan", "--exit-code").code == 0


def test_a_folder_reached_through_a_symlink_is_refused(hf_env, tmp_path):
    """A symlink committed next to models.toml must not send the files elsewhere."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (hf_env.dir / "models").symlink_to(elsewhere)
    declare(hf_env)
    r = hf_env.run("apply")
    assert r.code == 1
    assert "models is not a real directory" in r.err and "Traceback" not in r.err
    assert list(elsewhere.iterdir()) == []


@pytest.mark.parametrize("path, why", [("/tmp/x", "absolute path"),
                                       ("../outside", "'..'"),
                                       ("models/../../x", "'..'")])
def test_a_folder_outside_the_project_is_refused_naming_the_key(hf_env, path, why):
    hf_env.write(TINY.format(files=ALL).replace('"models/tiny"', f'"{path}"'))
    r = hf_env.run("lock")
    assert r.code == 2
    assert "models.tiny.integration.directory.path" in r.err and why in r.err, r.err
    assert not hf_env.lock.exists()


def test_a_folder_on_another_filesystem_gets_symlinks_that_gc_respects(hf_env, tmpfs_store):
    """The store on tmpfs, the project on disk: hard links cannot cross, so each file is
    a symlink to its store object, and gc keeps an object while a link needs it."""
    declare(hf_env, extra="integration.huggingface.enable = false\n")
    assert hf_env.run("apply").code == 0
    folder = hf_env.dir / "models" / "tiny"
    lock = read_lock(hf_env.lock).models["tiny"]
    store = Store(tmpfs_store)
    for f in lock.regular_files():
        assert os.path.islink(folder / f.path)
        assert os.path.samefile(folder / f.path, store.object_path(f.sha256))
    assert folder_listing(folder) == {f.path: f.sha256 for f in lock.regular_files()}
    assert hf_env.run("plan", "--exit-code").code == 0

    assert hf_env.run("remove", "tiny").code == 0
    assert hf_env.run("gc").code == 0  # no lock names it, the folder's links do
    assert folder_listing(folder) == {f.path: f.sha256 for f in lock.regular_files()}
    assert hf_env.run("apply", "--prune").code == 0
    assert not folder.exists()
    assert hf_env.run("gc").code == 0
    assert not any(store.object_path(f.sha256).exists() for f in lock.regular_files())
