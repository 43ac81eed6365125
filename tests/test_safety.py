"""kill -9 at any moment never leaves a half model visible; concurrent applies share work."""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock

BIG = 6 * 1024 * 1024
THROTTLED = f"""
[models.big]
source.mock = {{ org = "acme", model = "big", files = ["config.json", {{ path = "w1.bin", size = {BIG} }}, {{ path = "sub/w2.bin", size = {BIG // 2} }}] }}
network = {{ bandwidth = {{ limit = "1M" }} }}

[models.small]
source.mock = {{ org = "acme", model = "small", files = ["config.json", "model.safetensors"] }}
"""


def sha256(p: Path) -> str:
    with open(p, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def assert_nothing_half_visible(project) -> None:
    """Every object is named by its hash; every cache blob is whole; 'ok' means intact."""
    objects = project.store / "objects" / "sha256"
    for obj in objects.iterdir() if objects.exists() else ():
        assert sha256(obj) == obj.name, f"half or wrong object visible: {obj}"
    lock = read_lock(project.lock)
    sizes = {f.blob_name: (f.size, f.sha256) for m in (lock.models.values() if lock else ())
             for f in m.regular_files()}
    for blob in project.cache.glob("models--*/blobs/*"):
        if blob.name.startswith("."):
            continue  # a temp name, never linked from a snapshot
        size, sha = sizes[blob.name]
        assert blob.stat().st_size == size and sha256(blob) == sha
    for link in project.cache.glob("models--*/snapshots/*/**/*"):
        if link.is_symlink():
            assert link.exists(), f"snapshot link to a missing blob: {link}"
    rows = json.loads(project.sh("status", "--json").out or "[]")
    for row in rows:
        if row["state"] == "ok":
            root = Path(row["store_path"])
            for f in lock.models[row["key"]].regular_files():
                assert sha256(root / f.path) == f.sha256


@pytest.mark.slow
def test_kill_9_during_apply_never_leaves_a_half_model_and_next_apply_converges(project):
    project.write(THROTTLED)
    assert project.sh("lock").code == 0
    rnd = random.Random(1234)
    kills = 0
    for _ in range(6):
        p = project.spawn("apply", "--jobs", "2")
        time.sleep(rnd.uniform(0.1, 0.6))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            kills += 1
        p.communicate()
        assert_nothing_half_visible(project)
    assert kills >= 4  # the loop really interrupted transfers
    partial_bytes = sum(p.stat().st_size for p in (project.store / "tmp").glob("*.part"))
    r = project.sh("apply")
    assert r.code == 0, r.err
    # resumed, not restarted: what the killed runs left in tmp/ was not fetched again
    m = re.search(r"fetched \(([\d.]+) (B|KiB|MiB)\)", r.out)
    fetched = float(m.group(1)) * {"B": 1, "KiB": 1024, "MiB": 1024**2}[m.group(2)]
    assert partial_bytes > 0 and fetched <= BIG + BIG // 2 - partial_bytes + 1024 * 1024
    assert project.sh("verify").code == 0
    assert all(row["state"] == "ok" for row in json.loads(project.sh("status", "--json").out))
    assert project.sh("apply").out.startswith("Nothing to do")


@pytest.mark.slow
def test_kill_9_during_lock_leaves_no_lock_or_a_whole_one(project):
    project.write(THROTTLED.replace("bandwidth", "retry = { maxAttempts = 2 }, bandwidth"))
    for delay in (0.02, 0.1, 0.3):
        p = project.spawn("lock")
        time.sleep(delay)
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
        p.communicate()
        if project.lock.exists():
            assert read_lock(project.lock) is not None  # parses: never half written
    assert project.sh("apply").code == 0


def test_two_applies_at_once_both_succeed_and_fetch_each_object_once(project, tmp_path):
    shared = '[models.shared]\nsource.mock = { org = "acme", model = "shared", files = ' \
             f'["config.json", {{ path = "w.bin", size = {4 * 1024 * 1024} }}] }}\n' \
             'network = { bandwidth = { limit = "16M" } }\n'
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "models.toml").write_text(shared + '[models.only-a]\nsource.mock = { model = "a", files = ["x.bin"] }\n')
    (b / "models.toml").write_text(shared + '[models.only-b]\nsource.mock = { model = "b", files = ["y.bin"] }\n')
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-m", "reconcile", "-f", str(d / "models.toml"),
                               "apply"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for d in (a, b)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    fetched = sum(int(re.search(r"Applied: (\d+) fetched", o).group(1)) for o, _ in outs)
    assert fetched == 4  # config.json, w.bin, x.bin, y.bin: the shared two only once
    for d in (a, b):
        r = subprocess.run([sys.executable, "-m", "reconcile", "-f", str(d / "models.toml"),
                            "status", "--json"], capture_output=True, text=True)
        assert all(row["state"] == "ok" for row in json.loads(r.stdout))


def test_a_full_disk_is_a_clear_error_and_leaves_nothing_half_visible(project, monkeypatch):
    import errno
    import os

    written = [0]
    pwrite = os.pwrite

    def full_disk(fd, data, offset):  # the disk fills up after about 1 MB
        written[0] += len(data)
        if written[0] > 1_000_000:
            raise OSError(errno.ENOSPC, "No space left on device")
        return pwrite(fd, data, offset)

    project.write('[models.w]\nsource.mock = { files = [{ path = "w.bin", size = 4194304 }] }\n')
    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", full_disk)
        r = project.run("apply")
    assert r.code == 1 and "disk full" in r.err and "Traceback" not in r.err
    assert "resume" in r.err or "gc" in r.err
    assert not list((project.store / "objects" / "sha256").iterdir())
    assert not (project.cache / "models--test--model").exists()
    assert project.run("apply").code == 0  # space is back: the next run converges
    assert project.run("verify").code == 0


def test_many_small_objects_shared_by_two_concurrent_applies_are_fetched_once(project,
                                                                              tmp_path):
    """Small objects skip the per-object file lock (group commit): their claims must
    still make two processes fetch each one exactly once, and neither may wait on the
    other while holding claims the other needs (both finish)."""
    import subprocess
    import sys

    n = 400
    files = ", ".join(f'"s/f{i:04d}.bin"' for i in range(n))
    shared = f'[models.shared]\nsource.mock = {{ model = "shared", files = [{files}] }}\n'
    dirs = [tmp_path / "a", tmp_path / "b", tmp_path / "c"]
    for i, d in enumerate(dirs):
        d.mkdir()
        (d / "models.toml").write_text(
            shared + f'[models.own]\nsource.mock = {{ model = "own{i}", files = ["x.bin"] }}\n')
    procs = [subprocess.Popen([sys.executable, "-m", "reconcile", "-f", str(d / "models.toml"),
                               "apply", "--jobs", "4"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for d in dirs]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    fetched = sum(int(re.search(r"Applied: (\d+) fetched", o).group(1)) for o, _ in outs)
    assert fetched == n + 3, outs  # each shared object once, plus each project's own
    objects = list((project.store / "objects" / "sha256").iterdir())
    assert len(objects) == n + 3
    assert not [p for p in (project.store / "tmp").iterdir() if p.name.startswith("stage-")]


def test_objects_reach_the_disk_before_their_names(project, monkeypatch):
    """A no-op apply trusts objects/ without re-hashing, so after a power cut an object
    must be whole or absent: its bytes reach the disk (fsync of the file, or a syncfs of
    the store's filesystem after it was written: small files' group commit) before the
    rename that names it."""
    from reconcile import store as store_module

    synced: set[int] = set()
    published: list[tuple[str, bool]] = []
    fsync, replace, syncfs = os.fsync, os.replace, store_module._syncfs

    def recording_fsync(fd):
        synced.add(os.fstat(fd).st_ino)
        return fsync(fd)

    def recording_syncfs(where):
        syncfs(where)  # everything written so far is on the disk now
        for p in (project.store / "tmp").iterdir():
            try:  # other threads rename and remove their own temp files meanwhile
                synced.add(p.stat().st_ino)
            except FileNotFoundError:
                pass

    link = os.link

    def checking_replace(src, dst, *a, **kw):
        if "/objects/" in str(dst):
            published.append((str(dst), os.stat(src).st_ino in synced))
        return replace(src, dst, *a, **kw)

    def checking_link(src, dst, *a, **kw):  # objects are named by a link (first one wins)
        if "/objects/" in str(dst):
            published.append((str(dst), os.stat(src).st_ino in synced))
        return link(src, dst, *a, **kw)

    project.write(THROTTLED.replace('limit = "1M"', 'limit = "1G"'))
    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", checking_replace)
    monkeypatch.setattr(os, "link", checking_link)
    monkeypatch.setattr(store_module, "_syncfs", recording_syncfs)
    assert project.run("apply").code == 0
    objects = list((project.store / "objects" / "sha256").iterdir())
    assert len(published) == len(objects) == 5 and all(ok for _, ok in published), (published, objects)


@pytest.mark.parametrize("size", [65536, 4 << 20])  # group commit (small), fsync (large)
def test_a_disk_that_fills_up_at_writeback_is_reported_and_nothing_is_named(project, monkeypatch,
                                                                             size):
    import errno

    from reconcile import store as store_module

    def delayed_enospc(fd):  # delayed allocation: the write was accepted, writeback fails
        raise OSError(errno.ENOSPC, "No space left on device")

    project.write(f'[models.w]\nsource.mock = {{ files = [{{ path = "w.bin", size = {size} }}] }}\n')
    with monkeypatch.context() as m:
        m.setattr(os, "fsync", delayed_enospc)
        m.setattr(store_module, "_syncfs", delayed_enospc)
        r = project.run("apply")
    assert r.code == 1 and "disk full" in r.err and "Traceback" not in r.err
    assert not list((project.store / "objects" / "sha256").iterdir())
    assert not [p for p in (project.store / "tmp").iterdir() if p.name.startswith("stage-")]
    assert project.run("apply").code == 0
