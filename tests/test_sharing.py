"""One store and one HF cache shared by several projects, gc and the Python API.

huggingface_hub (local_files_only) is the judge of the cache: a project's prune or a
gc anywhere must never take away what another project still needs.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reconcile.cli import main

TINY = """
[models.tiny]
source.mock = { org = "acme", model = "tiny", files = ["config.json", "model.safetensors", "sub/notes.txt"] }
validation.preset = "none"
"""


def loads_offline(cache: Path, repo: str = "acme/tiny") -> Path:
    """huggingface_hub's own answer: the snapshot it finds offline, every file readable."""
    from huggingface_hub import snapshot_download

    path = Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))
    for p in path.rglob("*"):
        if p.is_file():
            p.read_bytes()
    return path


def cli(manifest: Path, *args: str) -> int:
    return main(["-f", str(manifest), *args])


@pytest.fixture
def two(project, tmp_path):
    """Projects a and b declaring the same model, on one store and one cache."""
    out = []
    for name in ("a", "b"):
        d = tmp_path / name
        d.mkdir()
        (d / "models.toml").write_text(TINY)
        out.append(d / "models.toml")
    return out


def test_prune_in_one_project_never_breaks_another(project, two):
    a, b = two
    assert cli(a, "apply") == 0
    assert cli(b, "apply") == 0  # finds everything linked: must still register as an owner
    a.write_text("")
    assert cli(a, "apply", "--prune") == 0
    assert cli(b, "status") == 0
    loads_offline(project.cache)
    b.write_text("")
    assert cli(b, "apply", "--prune") == 0  # the last owner goes: so does what reconcile made
    assert not (project.cache / "models--acme--tiny").exists()


def test_a_project_that_only_reads_registers_on_a_no_op_apply(project, two):
    """b's lock came from git with everything already there: its apply does nothing, yet
    it must still be counted before a's prune runs."""
    a, b = two
    assert cli(a, "apply") == 0
    shutil.copy(a.with_name("models.lock"), b.with_name("models.lock"))
    project.capsys.readouterr()
    assert cli(b, "apply") == 0
    assert "Nothing to do" in project.capsys.readouterr().out
    a.write_text("")
    assert cli(a, "apply", "--prune") == 0
    loads_offline(project.cache)


@pytest.mark.parametrize("spelling", ["direct", "via a symlink"])
def test_store_on_another_filesystem_keeps_what_cache_blobs_point_to(project, monkeypatch,
                                                                     spelling):
    """/dev/shm is tmpfs: blobs become symlinks into the store, and gc must keep their
    objects as long as the cache shows them, however RECONCILE_STORE spells the path."""
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(project.dir).st_dev:
        pytest.skip("not applicable here: /dev/shm is not another filesystem than the cache")
    store = shm / f"reconcile-test-{os.getpid()}"
    named = store
    if spelling == "via a symlink":
        store.mkdir()
        named = project.dir.parent / "store-link"
        named.symlink_to(store)
    monkeypatch.setenv("RECONCILE_STORE", str(named))
    try:
        project.write(TINY)
        assert project.run("apply").code == 0
        blobs = list((project.cache / "models--acme--tiny" / "blobs").iterdir())
        assert blobs and all(b.is_symlink() for b in blobs)
        project.write("")  # the model leaves models.toml, but nobody prunes
        assert project.run("lock").code == 0
        r = project.run("gc")
        assert r.code == 0, r.err
        loads_offline(project.cache)
        assert project.run("apply", "--prune").code == 0
        assert project.run("gc").code == 0
        assert not any((store / "objects" / "sha256").iterdir())  # now they may go
    finally:
        shutil.rmtree(store, ignore_errors=True)


def test_objects_fetched_at_lock_time_survive_gc_before_apply(project, tmp_path):
    """A url without a sha256 is downloaded when it is locked; a gc in another project
    between lock and apply must not delete it (apply --offline then needs it)."""
    f = tmp_path / "weights.bin"
    f.write_bytes(os.urandom(4096))
    project.write(f'[models.w]\nsource.url = {{ url = "file://{f}" }}\n'
                  'validation.preset = "none"\n')
    assert project.run("lock").code == 0
    f.unlink()  # from now on only the store has it
    other = tmp_path / "other"
    other.mkdir()
    (other / "models.toml").write_text("")
    assert cli(other / "models.toml", "gc") == 0
    r = project.run("apply", "--offline")
    assert r.code == 0, r.err


def test_gc_waits_for_no_apply_and_deletes_nothing_of_a_running_one(project):
    from reconcile.store import Store

    project.write(TINY)
    store = Store(project.store).ensure()
    with store.session():  # an apply or lock in progress
        r = project.run("gc")
    assert r.code == 1 and "in use by a running apply or lock" in r.err
    assert project.run("gc").code == 0


def test_gc_in_a_loop_against_concurrent_applies(project, tmp_path):
    """Three projects apply again and again in their own processes while gc runs in a
    loop: every apply succeeds, and at the end every project is ok and verifies."""
    projects = []
    for i in range(3):
        d = tmp_path / f"p{i}"
        d.mkdir()
        (d / "models.toml").write_text(
            f'[models.m{i}]\nsource.mock = {{ org = "acme", model = "m{i}", files = ['
            f'"config.json", {{ path = "w.bin", size = {3 << 20} }}] }}\n'
            'validation.preset = "none"\n')
        projects.append(d / "models.toml")
    stop = threading.Event()
    gcs = {"ran": 0, "busy": 0}
    crashes: list[BaseException] = []

    def gc_loop() -> None:
        from reconcile.errors import StoreError
        from reconcile.workspace import Workspace

        ws = Workspace(tmp_path / "nothing" / "models.toml")
        while not stop.is_set():
            try:
                ws.gc()
                gcs["ran"] += 1
            except StoreError:
                gcs["busy"] += 1
            except BaseException as e:  # any other failure of gc fails the test
                crashes.append(e)
                return
            time.sleep(0.005)

    t = threading.Thread(target=gc_loop)
    t.start()
    try:
        for _round in range(3):
            procs = [subprocess.Popen([sys.executable, "-m", "reconcile", "-f", str(m), "apply"],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                     for m in projects]
            for p in procs:
                _out, err = p.communicate(timeout=120)
                assert p.returncode == 0, err
            _drop_model_trees(project.store)  # make them work again
    finally:
        stop.set()
        t.join()
    assert not crashes, crashes
    assert gcs["ran"] > 0
    for m in projects:
        assert cli(m, "apply") == 0
        assert cli(m, "status") == 0
        assert cli(m, "verify") == 0


def _drop_model_trees(root: Path) -> None:
    """Remove every model tree, holding the store as gc does (objects stay)."""
    from reconcile.errors import StoreError
    from reconcile.store import Store, remove_tree

    store = Store(root)
    while True:
        try:
            with store.session(exclusive=True):
                for d in store.models.iterdir():
                    remove_tree(d)
            return
        except StoreError:
            time.sleep(0.01)


def test_models_fetched_with_the_python_api_survive_gc_elsewhere(project, tmp_path):
    import reconcile

    m = reconcile.fetch_model({"name": "api", "source": {"mock": {
        "org": "acme", "model": "api", "files": ["config.json"]}},
        "validation": {"preset": "none"}})
    other = tmp_path / "other"
    other.mkdir()
    (other / "models.toml").write_text("")
    assert cli(other / "models.toml", "gc") == 0
    assert m.store_path.is_dir() and (m.store_path / "config.json").read_bytes()
    loads_offline(project.cache, "acme/api")


@pytest.mark.parametrize("validation,key", [
    ('validation.validators = ["nosuch"]', "models.tiny.validation.validators[0]"),
    ('validation.validators = [{ maxSize = "ten gigs" }]', "models.tiny.validation.validators[0]"),
    ('validation.validators = [{ requiredFiles = 3 }]', "models.tiny.validation.validators[0]"),
    ('validation.validators = [{ modelscan = "loose" }]', "models.tiny.validation.validators[0]"),
    ('validation.validators = ["maxSize"]', "models.tiny.validation.validators[0]"),
])
def test_bad_validation_config_stops_before_anything_is_fetched(project, validation, key):
    project.write(TINY.replace('validation.preset = "none"', validation))
    for args in (("apply",), ("lock",), ("lock", "--check")):
        r = project.run(*args)
        assert r.code == 2, (args, r.err)
        assert key in r.err
    assert not (project.store / "objects").exists() or not any(
        (project.store / "objects" / "sha256").iterdir())


def test_what_another_tool_writes_into_a_snapshot_apply_just_made_stays_theirs(project,
                                                                               monkeypatch):
    """apply makes snapshots/<commit>/ and then fills it without looking first; if
    huggingface_hub downloads into it meanwhile, the paths it wrote are judged as found
    (left alone, not recorded as reconcile's), never replaced."""
    import json

    from reconcile.lockfile import read_lock
    from reconcile.targets import hf_cache as hfcache

    project.write(TINY)
    assert project.run("lock").code == 0
    model = read_lock(project.lock).models["tiny"]
    blob = next(f.blob_name for f in model.files if f.path == "config.json")
    made, theirs = hfcache._make_repo_dirs, {}

    def raced(rdir, commit, trees):
        new = made(rdir, commit, trees)
        link = rdir / "snapshots" / commit / "config.json"
        os.symlink(f"../../blobs/{blob}", link)  # what huggingface_hub writes there
        theirs["ino"] = os.lstat(link).st_ino
        return new

    monkeypatch.setattr(hfcache, "_make_repo_dirs", raced)
    assert project.run("apply").code == 0
    snap = project.cache / "models--acme--tiny" / "snapshots" / model.hf.commit
    assert os.lstat(snap / "config.json").st_ino == theirs["ino"]
    record = next((project.store / "state" / "hfcache").glob("*/models--acme--tiny.json"))
    owned = json.loads(record.read_text())["owned"]
    assert f"models--acme--tiny/snapshots/{model.hf.commit}/config.json" not in owned
    assert f"models--acme--tiny/snapshots/{model.hf.commit}/sub/notes.txt" in owned
    assert loads_offline(project.cache).joinpath("config.json").read_bytes()
