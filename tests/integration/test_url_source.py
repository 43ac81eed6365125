"""`source.url` against Debian's nginx (ETag, Range, If-Range, limit_rate) and file://."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import tarfile
import time
import zipfile
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from tests.servers import access_log, nginx, nginx_binary

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(nginx_binary() is None, reason="needs nginx-light")]


@pytest.fixture(params=["httpx", "direct"])
def transport(request, monkeypatch):
    """Run byte transfers through httpx, and again through the http.client fast path."""
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if request.param == "direct" else str(1 << 62))
    return request.param


@pytest.fixture
def site(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    data = os.urandom(3 * 1024 * 1024 + 17)
    (root / "weights.bin").write_bytes(data)
    (root / "slow").mkdir()
    (root / "slow" / "big.bin").write_bytes(os.urandom(4 * 1024 * 1024))
    (root / "login").mkdir()  # what a sign-in wall answers for any file: an HTML page
    page = b"<!DOCTYPE html><html><body><form>Sign in</form></body></html>\n"
    (root / "login" / "model.safetensors").write_bytes(page)
    (root / "login" / "index.html").write_bytes(page)
    work = tmp_path / "nginx"
    with nginx(root, work, extra="location /slow/ { limit_rate 1m; }"
               " location /login/ { types { } default_type text/html; }") as url:
        yield url, root, work, data


def gets(work: Path, path: str) -> int:
    return sum(1 for line in access_log(work) if f"GET {path} " in line)


def test_bare_url_is_downloaded_once_at_lock_time_and_not_again_by_apply(project, site):
    url, _root, work, data = site
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/weights.bin" }}\n')
    assert project.run("lock").code == 0
    f = read_lock(project.lock).models["w"].files[0]
    assert f.sha256 == hashlib.sha256(data).hexdigest() and f.size == len(data)
    assert gets(work, "/weights.bin") == 1
    r = project.run("apply")
    assert r.code == 0, r.err
    assert gets(work, "/weights.bin") == 1  # the store already had it
    snap = Path(project.run("path", "w").out.strip())
    assert (snap / "weights.bin").read_bytes() == data
    assert read_lock(project.lock).models["w"].pin["etag"]


def test_declared_sha256_means_lock_downloads_nothing(transport, project, site):
    url, _root, work, data = site
    sha = hashlib.sha256(data).hexdigest()
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/weights.bin", sha256 = "{sha}" }}\n')
    assert project.run("lock").code == 0
    assert gets(work, "/weights.bin") == 0
    assert project.run("apply").code == 0
    assert gets(work, "/weights.bin") == 1


def test_wrong_declared_sha256_fails_apply_and_installs_nothing(project, site):
    url, _root, _work, _data = site
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/weights.bin", sha256 = "{"0" * 64}" }}\n')
    r = project.sh("apply")
    assert r.code == 1 and "sha256 mismatch" in r.err and "Traceback" not in r.err
    assert not list((project.store / "objects" / "sha256").iterdir())
    assert not (project.cache / "models--reconcile--w").exists()


def test_content_changed_since_lock_is_refused(transport, project, site):
    url, root, _work, data = site
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/weights.bin" }}\n')
    project.run("lock")
    for p in (project.store / "objects" / "sha256").iterdir():
        os.chmod(p, 0o644)
        p.unlink()
    (root / "weights.bin").write_bytes(b"tampered" + data[8:])
    r = project.sh("apply")
    assert r.code == 1 and "sha256 mismatch" in r.err


def test_404_is_a_clear_error(project, site):
    url, *_ = site
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/nope.bin" }}\n')
    r = project.sh("lock")
    assert r.code == 1 and "404" in r.err and "nope.bin" in r.err and "Traceback" not in r.err


def test_dead_server_is_a_clear_error(project):
    project.write('[models.w]\nsource.url = { url = "http://127.0.0.1:9/x.bin" }\n'
                  'network = { retry = { maxAttempts = 1 } }\n')
    r = project.sh("lock")
    assert r.code == 1 and "127.0.0.1:9" in r.err and "Traceback" not in r.err


def test_kill_during_throttled_download_resumes_with_range(transport, project, site):
    url, root, work, _ = site
    data = (root / "slow" / "big.bin").read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/slow/big.bin", sha256 = "{sha}" }}\n')
    assert project.sh("lock").code == 0
    p = project.spawn("apply")
    time.sleep(1.5)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate()
    part = sum(x.stat().st_size for x in (project.store / "tmp").glob("*.part"))
    assert 0 < part < len(data)
    r = project.sh("apply")
    assert r.code == 0, r.err
    ranges = [line for line in access_log(work) if "/slow/big.bin" in line and " 206 " in line]
    assert ranges, access_log(work)
    assert Path(project.sh("path", "w").out.strip(), "big.bin").read_bytes() == data


def test_file_url(project, tmp_path):
    src = tmp_path / "local.bin"
    src.write_bytes(b"local bytes")
    project.write(f'[models.w]\nsource.url = {{ url = "file://{src}" }}\n')
    assert project.run("apply").code == 0
    assert Path(project.run("path", "w").out.strip(), "local.bin").read_bytes() == b"local bytes"


def _tar(entries) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data, mode in entries:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_extract_tar_gives_a_model_tree_and_hash_matches_reconcile_hash(project, site):
    url, root, _work, _ = site
    (root / "m.tar.gz").write_bytes(_tar([("config.json", b'{"model_type": "bert"}', 0o644),
                                          ("bin/run.sh", b"#!/bin/sh\n", 0o755)]))
    project.write(f'[models.m]\nsource.url = {{ url = "{url}/m.tar.gz", extract = true }}\n')
    assert project.run("apply").code == 0, project.run("apply").err
    m = read_lock(project.lock).models["m"]
    assert {f.path for f in m.files} == {"config.json", "bin/run.sh"}
    assert next(f for f in m.files if f.path == "bin/run.sh").executable
    store_path = json.loads(project.run("status", "--json").out)[0]["store_path"]
    assert project.run("hash", store_path).out.strip() == m.hash
    # a fresh store fetches members through the pinned archive
    for p in (project.store / "models").iterdir():
        from reconcile.store import remove_tree

        remove_tree(p)
    assert project.run("gc").code == 0
    assert project.run("apply").code == 0
    assert project.run("verify").code == 0


def test_extract_refuses_path_escape(project, site):
    url, root, *_ = site
    (root / "evil.tar.gz").write_bytes(_tar([("../../escape.txt", b"x", 0o644)]))
    project.write(f'[models.m]\nsource.url = {{ url = "{url}/evil.tar.gz", extract = true }}\n')
    r = project.sh("lock")
    assert r.code == 1 and "escape" in r.err.lower()
    assert not (project.dir.parent / "escape.txt").exists()


def test_extract_refuses_a_git_directory(project, site):
    """A tar whose members would make the model a live repository (#31 case 4)."""
    url, root, *_ = site
    (root / "repo.tar.gz").write_bytes(_tar([
        ("config.json", b"{}", 0o644), (".git/HEAD", b"ref: refs/heads/main\n", 0o644),
        (".git/config", b'[core]\n\tfsmonitor = "touch /tmp/pwned"\n', 0o644)]))
    project.write(f'[models.m]\nsource.url = {{ url = "{url}/repo.tar.gz", extract = true }}\n')
    r = project.sh("lock")
    assert r.code == 1 and ".git/HEAD" in r.err and "not allowed" in r.err, r.err
    assert not project.lock.exists() and not list(project.store.glob("models/*"))


def test_extract_zip(project, site):
    url, root, *_ = site
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("a/b.txt", "hello")
    (root / "m.zip").write_bytes(buf.getvalue())
    project.write(f'[models.m]\nsource.url = {{ url = "{url}/m.zip", extract = true }}\n')
    assert project.run("apply").code == 0
    assert Path(project.run("path", "m").out.strip(), "a", "b.txt").read_text() == "hello"


def test_a_slow_stream_is_split_into_parallel_ranges(transport, project, tmp_path, monkeypatch):
    """A per-connection limit (what CDNs do): after a probe the rest comes in ranges."""
    from reconcile import transfer
    from reconcile.config import parse_manifest
    from reconcile.lockfile import LockedFile
    from reconcile.resolve import SourceContext, make_source
    from reconcile.store import Store

    root = tmp_path / "slowsite"
    root.mkdir()
    data = os.urandom(24 * 1024 * 1024)
    (root / "w.bin").write_bytes(data)
    monkeypatch.setattr(transfer, "PROBE_BYTES", 2 << 20)
    monkeypatch.setattr(transfer, "SPLIT_MIN", 8 << 20)
    monkeypatch.setattr(transfer, "SPLIT_IDLE", 0.0)  # a busy CI machine must not change it
    monkeypatch.setattr(transfer, "SEGMENT_MIN", 2 << 20)
    with nginx(root, tmp_path / "ng", extra="limit_rate 8m;") as url:
        m = parse_manifest(f'[models.m]\nsource.url = {{ url = "{url}/w.bin" }}\n'.encode())
        store = Store(tmp_path / "store").ensure()
        src = make_source(m.models["m"], SourceContext(store))
        f = LockedFile("w.bin", len(data), hashlib.sha256(data).hexdigest())
        got = transfer.fetch(src, {"url": f"{url}/w.bin"}, f, store, m.models["m"].network, jobs=8)
        src.close()
        log = access_log(tmp_path / "ng")
    assert got.sha256 == f.sha256 and store.object_path(f.sha256).read_bytes() == data
    ranges = [line for line in log if " 206 " in line]
    assert len(ranges) >= 4, log  # the stream was handed over to parallel ranges


@pytest.fixture
def big_fetch(tmp_path, monkeypatch):
    """Fetch a 48 MiB file from nginx in-process through the fast path; count the
    buffers it allocates and the bytes written with and without O_DIRECT."""
    import fcntl

    from reconcile import http, transfer
    from reconcile.config import NetworkConfig, parse_manifest
    from reconcile.lockfile import LockedFile
    from reconcile.resolve import SourceContext, make_source
    from reconcile.store import Store

    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0")
    pool = http.BufferPool()
    monkeypatch.setattr(http, "BUFFERS", pool)
    monkeypatch.setattr(transfer, "BUFFERS", pool)
    stats = {"fresh": 0, "gets": 0, "direct": 0, "buffered": 0}
    get, pwrite, pwritev = pool.get, os.pwrite, os.pwritev

    def counting_get():
        stats["gets"] += 1
        stats["fresh"] += not pool._free
        return get()

    def counting_pwrite(fd, data, offset):
        n = pwrite(fd, data, offset)
        stats["direct" if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT else "buffered"] += n
        return n

    def counting_pwritev(fd, buffers, offset):  # runs of whole buffers: one call
        n = pwritev(fd, buffers, offset)
        stats["direct" if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT else "buffered"] += n
        return n

    monkeypatch.setattr(pool, "get", counting_get)
    monkeypatch.setattr(os, "pwrite", counting_pwrite)
    monkeypatch.setattr(os, "pwritev", counting_pwritev)
    root = tmp_path / "site"
    root.mkdir()
    data = os.urandom((48 << 20) + 1234)
    (root / "w.bin").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    store = Store(tmp_path / "store").ensure()

    def fetch(partial: bytes = b"") -> Path:
        if partial:
            store.partial_path(sha).write_bytes(partial)
        with nginx(root, tmp_path / "ng") as url:
            m = parse_manifest(
                f'[models.m]\nsource.url = {{ url = "{url}/w.bin", sha256 = "{sha}" }}\n'.encode())
            src = make_source(m.models["m"], SourceContext(store))
            got = transfer.fetch(src, src.resolve().pin, LockedFile("w.bin", len(data), sha),
                                 store, NetworkConfig())
        assert got.sha256 == sha
        return store.object_path(sha)

    return fetch, data, stats


def test_read_buffers_are_recycled_while_the_bytes_stay_exact(big_fetch):
    # A fresh 1 MiB buffer per read doubled the kernel time of a 2 GiB download
    # (bench/README.md); recycled buffers must still never mix two chunks' bytes.
    fetch, data, stats = big_fetch
    assert fetch().read_bytes() == data
    assert stats["gets"] >= 48 and stats["fresh"] <= 20, stats


def _o_direct_works(where: Path) -> bool:
    try:
        os.close(os.open(where / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT))
        return True
    except OSError:
        return False


def test_whole_buffers_bypass_the_page_cache_and_the_rest_does_not(big_fetch, tmp_path):
    # Page-cache writes made download times swing 4x on these VMs; O_DIRECT from the
    # hashed buffers is steady. The tail is not a whole buffer and must still land.
    if not _o_direct_works(tmp_path):
        pytest.skip("not applicable here: this filesystem has no O_DIRECT")
    fetch, data, stats = big_fetch
    assert fetch().read_bytes() == data
    assert stats["direct"] == 48 << 20 and stats["buffered"] == 1234, stats


def test_a_partial_ending_mid_page_resumes_exactly(big_fetch):
    # an unaligned resume point cannot use O_DIRECT: correctness first
    fetch, data, stats = big_fetch
    assert fetch(partial=data[: (5 << 20) + 77]).read_bytes() == data
    assert stats["buffered"] == len(data) - ((5 << 20) + 77)


def test_an_html_answer_to_a_file_download_fails_at_fetch_with_a_hint(transport, project, site):
    """A login page must not be installed as model.safetensors: it fails at the first
    byte, at lock time (no sha256 known) and at apply time (sha256 declared)."""
    url, _root, _work, _data = site
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/login/model.safetensors" }}\n')
    r = project.run("apply")
    assert r.code == 1 and "HTML page (text/html), not the file" in r.err
    assert "login page or a wrong URL" in r.err and not project.lock.exists()
    sha = "0" * 64
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/login/model.safetensors",'
                  f' sha256 = "{sha}" }}\n')
    r = project.run("apply")
    assert r.code == 1 and "HTML page" in r.err and "sha256 mismatch" not in r.err
    assert not any((project.store / "objects" / "sha256").iterdir())
    # a file that is itself named .html may be HTML
    project.write(f'[models.w]\nsource.url = {{ url = "{url}/login/index.html" }}\n')
    assert project.run("apply").code == 0

