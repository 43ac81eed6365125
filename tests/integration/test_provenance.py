"""#31 case 2: a models.lock from a pull request installs only bytes its source vouches
for at the pin. A forged entry (one file's sha256 and size swapped for an object that
already sits in the shared store or the team cache, the model hash recomputed, pin and
commit kept) is refused before anything is installed; an honest lock made elsewhere is
checked against the source's listing once (no weights downloaded), then remembered."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from reconcile import treehash
from reconcile.lockfile import dumps, parse_lock, read_lock
from tests.conftest import Project
from tests.integration.conftest import FILES

pytestmark = pytest.mark.integration

EVIL = os.urandom(4096)  # another project's weights, already on this machine
TINY = '[models.tiny]\nsource.huggingface = { repo = "acme/tiny" }\n'


@pytest.fixture
def evil_hub(hub):
    hub.repo("mallory/other").commit({"config.json": b"{}", "model.safetensors": EVIL})
    return hub


def forge(lock_text: str, key: str, path: str, data: bytes) -> str:
    """The lock with ``path`` of model ``key`` claiming ``data``'s sha256 and size, and a
    model hash that fits (the algorithm is public): self-consistent, and a lie."""
    import hashlib

    lock = parse_lock(lock_text.encode())
    m = lock.models[key]
    files = tuple(type(f)(**{**f.__dict__, "sha256": hashlib.sha256(data).hexdigest(),
                             "size": len(data)}) if f.path == path else f for f in m.files)
    lock.models[key] = type(m)(**{**m.__dict__, "files": files,
                                  "hash": treehash.tree_hash(f.entry() for f in files)})
    return dumps(lock)


def other_project(project, tmp_path, name: str, store: Path | None = None) -> Project:
    p = Project(tmp_path / name, store or project.store, tmp_path / f"hf-{name}",
                project.capsys, own_store=True)
    p.dir.mkdir()
    return p


def snapshot_file(p: Project, repo: str, path: str) -> Path | None:
    found = list((p.cache / f"models--{repo.replace('/', '--')}" / "snapshots").glob(
        f"*/{path}"))
    return found[0] if found else None


def test_a_forged_lock_cannot_install_an_object_the_store_already_holds(hf_env, evil_hub,
                                                                        tmp_path, monkeypatch):
    project = hf_env
    other = other_project(project, tmp_path, "mallory")  # same store: its objects are here
    other.write('[models.o]\nsource.huggingface = { repo = "mallory/other" }\n')
    assert other.run("apply").code == 0
    honest = other_project(project, tmp_path, "upstream", store=tmp_path / "store-up")
    honest.write(TINY)
    assert honest.run("lock").code == 0  # the lock as made on another machine

    project.write(TINY)
    project.lock.write_text(forge(honest.lock.read_text(), "tiny", "model.safetensors", EVIL))
    before = len(evil_hub.log)
    r = project.run("apply", "--locked")
    assert r.code == 1, r.err
    assert "models.tiny: models.lock does not match what the source serves" in r.err
    assert "model.safetensors" in r.err and "lock --upgrade tiny" in r.err
    assert "Traceback" not in r.err
    assert snapshot_file(project, "acme/tiny", "model.safetensors") is None
    m = read_lock(project.lock).models["tiny"]
    assert not (project.store / "models" / m.store_id).exists()
    asked = [e[2] for e in evil_hub.log[before:]]
    assert asked and all("/api/" in p or "/resolve/" in p for p in asked)
    assert not any("model.safetensors" in p for p in asked), "no weights were downloaded"

    # the honest lock from the other machine: checked once against the listing, installed
    project.lock.write_text(honest.lock.read_text())
    r = project.run("apply", "--locked")
    assert r.code == 0, r.err
    assert snapshot_file(project, "acme/tiny", "model.safetensors").read_bytes() \
        == FILES["model.safetensors"]
    before = len(evil_hub.log)
    assert project.run("apply", "--locked").code == 0
    assert len(evil_hub.log) == before, "vouched once: a no-op apply asks no server"


def test_a_forged_lock_cannot_install_bytes_from_the_team_cache(hf_env, evil_hub, tmp_path):
    """Anyone with push rights puts any bytes into a team cache under their own sha256."""
    project = hf_env
    cache = tmp_path / "team"
    obj = cache / "objects" / "sha256"
    obj.mkdir(parents=True)
    import hashlib

    (obj / hashlib.sha256(EVIL).hexdigest()).write_bytes(EVIL)
    honest = other_project(project, tmp_path, "upstream", store=tmp_path / "store-up")
    honest.write(TINY)
    assert honest.run("lock").code == 0
    project.write(TINY + f'[cache]\nurl = "{cache}"\n')
    project.lock.write_text(forge(honest.lock.read_text(), "tiny", "model.safetensors", EVIL))
    r = project.run("apply", "--locked")
    assert r.code == 1 and "does not match what the source serves" in r.err, r.err
    assert snapshot_file(project, "acme/tiny", "model.safetensors") is None
    assert not list((project.store / "objects" / "sha256").glob(
        hashlib.sha256(EVIL).hexdigest())), "the forged object was never taken"


def test_a_forged_small_file_is_refused_by_its_git_blob_id(hf_env, evil_hub, tmp_path):
    """config.json (a plain git file: the Hub lists its blob id, not its sha256) swapped for
    the other project's config.json, which the store holds."""
    project = hf_env
    other = other_project(project, tmp_path, "mallory")
    other.write('[models.o]\nsource.huggingface = { repo = "mallory/other" }\n')
    assert other.run("apply").code == 0
    honest = other_project(project, tmp_path, "upstream", store=tmp_path / "store-up")
    honest.write(TINY)
    assert honest.run("lock").code == 0
    project.write(TINY)
    project.lock.write_text(forge(honest.lock.read_text(), "tiny", "config.json", b"{}"))
    r = project.run("apply", "--locked")
    assert r.code == 1 and "config.json" in r.err and "does not match" in r.err, r.err


def test_offline_installs_only_what_something_vouches_for(hf_env, evil_hub, tmp_path,
                                                          monkeypatch):
    """A store filled by `pull` or `import` and a lock made elsewhere: --offline refuses,
    naming what would vouch; a `hash =` pin in models.toml is such a voucher."""
    project = hf_env
    honest = other_project(project, tmp_path, "upstream", store=tmp_path / "store-up")
    honest.write(TINY)
    assert honest.run("apply").code == 0
    # its objects are on this machine (another store, read as a peer, like a store filled
    # by `pull` or `import`), and nothing there says the source vouched for them
    import shutil

    shutil.rmtree(honest.store / "state" / "vouched")
    monkeypatch.setenv("RECONCILE_PEER_STORES", str(honest.store))
    project.write(TINY)
    project.lock.write_text(honest.lock.read_text())
    r = project.run("apply", "--locked", "--offline")
    assert r.code != 0 and "--offline: nothing vouches" in r.err and "tiny" in r.err, r.err
    assert "hash =" in r.err
    assert snapshot_file(project, "acme/tiny", "config.json") is None

    m = read_lock(honest.lock).models["tiny"]
    pinned = TINY + f'hash = "{m.hash}"\n'
    honest.write(pinned)
    assert honest.run("lock").code == 0  # the declaration changed: its fingerprint too
    project.write(pinned)
    project.lock.write_text(honest.lock.read_text())
    r = project.run("apply", "--locked", "--offline")
    assert r.code == 0, r.err
    assert snapshot_file(project, "acme/tiny", "config.json").read_bytes() == FILES["config.json"]
