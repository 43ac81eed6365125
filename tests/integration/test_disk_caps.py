"""A hostile cache or server cannot fill the disk (issue #31, part 3).

Every byte path stops as soon as more bytes than the lock's size arrive: a team-cache
object far bigger than the locked file (a directory, moto's S3), a server whose body
never ends. Where the size is not known at lock time, a limit the user can raise
(RECONCILE_MAX_UNKNOWN_SIZE) and the disk's free space stop it. Each test counts what
was written to the store and checks the error is one line naming the file and the fix.
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from reconcile.config import CacheConfig, NetworkConfig
from reconcile.lockfile import LockedFile
from reconcile.store import Store
from tests.servers import aws_env_only, moto_s3

pytestmark = pytest.mark.integration

MiB = 1 << 20
LOCKED = os.urandom(4 * MiB + 123)  # over SMALL_MAX: streamed to a partial file
LOCKED_SHA = hashlib.sha256(LOCKED).hexdigest()


class Written:
    """The bytes a fetch reported writing (its progress callback), net of take-backs,
    and the most it ever held at once."""

    def __init__(self) -> None:
        self.total = self.peak = 0

    def __call__(self, n: int) -> None:
        self.total += n
        self.peak = max(self.peak, self.total)


def _store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store").ensure()


def _tmp_bytes(store: Store) -> int:
    return sum(p.stat().st_size for p in store.tmp.rglob("*") if p.is_file())


# --- the team cache ------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def aws_env(tmp_path, monkeypatch):
    from reconcile.sources import s3

    aws_env_only(monkeypatch, tmp_path)
    yield
    s3._signers.clear()


@contextmanager
def oversized_cache(kind: str, tmp_path: Path, size: int) -> Iterator[CacheConfig]:
    """A team cache whose object named by LOCKED's sha256 holds ``size`` bytes."""
    if kind == "dir":
        root = tmp_path / "team-cache"
        obj = root / "objects" / "sha256" / LOCKED_SHA
        obj.parent.mkdir(parents=True)
        with open(obj, "wb") as f:  # `truncate -s`: sparse, costs the test no disk
            f.truncate(size)
        yield CacheConfig(url=str(root))
        return
    if kind == "registry":
        from tests.servers import Pusher, docker_registry, registry_binary

        if registry_binary() is None:
            pytest.skip("needs docker-registry (apt-get install docker-registry)")
        work = tmp_path / "registry"
        with docker_registry(work) as url:
            Pusher(url).blob("team/models", LOCKED)
            (data,) = (work / "data").rglob(f"blobs/sha256/{LOCKED_SHA[:2]}/{LOCKED_SHA}/data")
            with open(data, "r+b") as f:  # the registry's own file for the blob, grown
                f.truncate(size)
            yield CacheConfig(url=f"oci+http://{url.removeprefix('http://')}/team/models")
        return
    import boto3

    with moto_s3() as endpoint:
        bucket = f"cache-{uuid.uuid4().hex[:12]}"
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key=f"objects/sha256/{LOCKED_SHA}", Body=bytes(size))
        yield CacheConfig(url=f"s3://{bucket}", s3={"endpoint": endpoint})


@pytest.mark.parametrize("kind", ["dir", "moto", "registry"])
def test_an_oversized_team_cache_object_is_cut_off_at_the_locked_size(kind, tmp_path):
    """Before: the whole object (64 MiB here, 2 GiB in the issue) was written to tmp/
    and only then refused by its sha256."""
    from reconcile.remote import open_remote

    store = _store(tmp_path)
    with oversized_cache(kind, tmp_path, 64 * MiB) as cfg:
        remote = open_remote(cfg, tmp_path)
        written = Written()
        try:
            got = remote.fetch(
                LockedFile("weights.bin", len(LOCKED), LOCKED_SHA), store, written, stage=False
            )
        finally:
            remote.close()
    assert got is None  # refused: the model's source is asked next
    assert written.peak <= len(LOCKED), written.peak  # not one byte past it
    assert written.total == 0  # the refused bytes are taken back from the progress
    assert _tmp_bytes(store) == 0
    (warning,) = remote.warnings
    assert "\n" not in warning and "weights.bin" in warning and LOCKED_SHA in warning
    if kind == "registry":  # the blob's size is said before its first byte (Content-Length)
        assert f"states {len(LOCKED)} bytes for this blob" in warning, warning
    else:
        assert f"more than the {len(LOCKED)} bytes" in warning, warning
    assert not store.has_object(LOCKED_SHA)


# --- a server whose body does not end --------------------------------------------------------


class Endless:
    """A tiny HTTP server whose GET answers with a chunked body of zeros that runs on
    (up to ``ceiling`` bytes, then ends properly, so code without a cap finishes and
    fails its assertions instead of hanging). HEAD states no size. ``sent`` counts what
    the server managed to hand to its socket."""

    def __init__(self, ceiling: int = 96 * MiB) -> None:
        self.ceiling, self.sent = ceiling, 0

    def __enter__(self) -> str:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self.send_response(200)
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

            def do_GET(self) -> None:
                self.do_HEAD()
                piece = bytes(64 << 10)
                try:
                    while outer.sent < outer.ceiling:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                        outer.sent += len(piece)
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:  # the client hung up: what it should do
                    self.close_connection = True

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(params=["httpx", "direct"])
def transport(request, monkeypatch):
    """Bytes through httpx, and again through the http.client fast path."""
    monkeypatch.setenv("RECONCILE_DIRECT_MIN", "0" if request.param == "direct" else str(1 << 62))
    return request.param


def _url_source(store: Store, url: str, sha: str | None = None):
    from reconcile.config import parse_manifest
    from reconcile.resolve import SourceContext, make_source

    extra = f', sha256 = "{sha}"' if sha else ""
    m = parse_manifest(f'[models.m]\nsource.url = {{ url = "{url}"{extra} }}\n'.encode())
    return make_source(m.models["m"], SourceContext(store))


def test_a_body_longer_than_the_locked_size_is_cut_off(transport, tmp_path):
    """Before: the whole body (96 MiB here; without end, the disk) was written, then
    refused by its sha256."""
    from reconcile import transfer
    from reconcile.errors import IntegrityError

    store = _store(tmp_path)
    written = Written()
    with Endless() as url:
        src = _url_source(store, f"{url}/weights.bin", LOCKED_SHA)
        with pytest.raises(IntegrityError) as err:
            transfer.fetch(
                src,
                {"url": f"{url}/weights.bin"},
                LockedFile("weights.bin", len(LOCKED), LOCKED_SHA),
                store,
                NetworkConfig(),
                written,
            )
    assert written.peak <= len(LOCKED), written.peak  # not one byte past it
    assert _tmp_bytes(store) == 0
    message = str(err.value)
    assert "\n" not in message and message.startswith("weights.bin: ")
    assert f"more than the {len(LOCKED)} bytes" in message and "lock --upgrade" in message


def test_a_locked_empty_file_takes_no_byte(tmp_path):
    """Size 0 with the empty file's sha256 is a size, not "unknown" (before: the whole
    body was written, then refused by its sha256)."""
    from reconcile import transfer
    from reconcile.errors import IntegrityError

    store = _store(tmp_path)
    written = Written()
    empty = LockedFile("empty.txt", 0, hashlib.sha256(b"").hexdigest())
    with Endless() as url:
        src = _url_source(store, f"{url}/empty.txt", empty.sha256)
        with pytest.raises(IntegrityError, match="more than the 0 bytes"):
            transfer.fetch(src, {"url": f"{url}/empty.txt"}, empty, store, NetworkConfig(), written)
    assert written.peak == 0 and _tmp_bytes(store) == 0


def test_a_body_of_unknown_size_stops_at_the_limit_the_user_can_raise(project, monkeypatch):
    """Lock downloads a bare URL whose server states no size: RECONCILE_MAX_UNKNOWN_SIZE
    stops it (before: the whole body was locked, however long it ran)."""
    monkeypatch.setenv("RECONCILE_MAX_UNKNOWN_SIZE", "8M")
    server = Endless()
    with server as url:
        project.write(f'[models.m]\nsource.url = {{ url = "{url}/endless.bin" }}\n')
        r = project.run("lock")
        monkeypatch.setenv("RECONCILE_MAX_UNKNOWN_SIZE", "lots")
        typo = project.run("lock")
    assert r.code == 1, r.out + r.err
    assert server.sent <= (8 + 8) * MiB, server.sent  # the cap, plus what sockets buffer
    (line,) = [x for x in r.err.splitlines() if "endless.bin" in x]
    assert "stated no size" in line and "RECONCILE_MAX_UNKNOWN_SIZE=" in line, r.err
    assert "Traceback" not in r.err
    assert _tmp_bytes(Store(project.store)) == 0
    assert typo.code == 2 and "RECONCILE_MAX_UNKNOWN_SIZE: expected a size" in typo.err, typo.err


@pytest.fixture
def small_disk(tmp_path):
    """A filesystem with 24 MiB of room past the 1 GiB reconcile keeps free (a tmpfs:
    its size is a limit, not memory taken); skipped where mounting is not allowed."""
    import subprocess

    where = tmp_path / "small-disk"
    where.mkdir()
    size = (1 << 30) + 24 * MiB
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("needs permission to mount a tmpfs (root)")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def test_a_body_of_unknown_size_stops_before_the_disk_is_full(project, small_disk, monkeypatch):
    """With a generous limit, the disk's free space (less 1 GiB kept free) stops it."""
    monkeypatch.setenv("RECONCILE_STORE", str(small_disk / "store"))
    monkeypatch.setenv("RECONCILE_MAX_UNKNOWN_SIZE", "1T")
    server = Endless()
    with server as url:
        project.write(f'[models.m]\nsource.url = {{ url = "{url}/endless.bin" }}\n')
        r = project.run("lock")
    assert r.code == 1, r.out + r.err
    assert server.sent <= (24 + 8) * MiB, server.sent
    (line,) = [x for x in r.err.splitlines() if "endless.bin" in x]
    assert "1 GiB stays free" in line and "RECONCILE_STORE" in line, r.err
    assert _tmp_bytes(Store(small_disk / "store")) == 0


# --- archives (extract = true; OCI tar layers unpack the same way) ------------------------


class Zeros:
    """``size`` zero bytes as a file to read, never held in memory at once."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return bytes(n)


def _bomb(where: Path, kind: str, size: int) -> Path:
    """An archive of a few hundred KiB holding one member of ``size`` zero bytes."""
    import tarfile
    import zipfile

    if kind == "tar.gz":
        path = where / "model.tar.gz"
        with tarfile.open(path, "w:gz", compresslevel=1) as tf:
            info = tarfile.TarInfo("weights.bin")
            info.size = size
            tf.addfile(info, Zeros(size))
        return path
    path = where / "model.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("weights.bin", "w") as f:
        src = Zeros(size)
        while chunk := src.read(MiB):
            f.write(chunk)
    return path


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_an_archive_that_unpacks_past_the_disks_room_is_refused_before_writing(
    project, small_disk, monkeypatch, tmp_path, kind
):
    """Before: the cap was 1 TiB whatever the disk held; the member's declared size
    (96 MiB against 24 MiB of room here) now refuses it before its first byte."""
    monkeypatch.setenv("RECONCILE_STORE", str(small_disk / "store"))
    archive = _bomb(tmp_path, kind, 96 * MiB)
    project.write(f'[models.m]\nsource.url = {{ url = "file://{archive}", extract = true }}\n')
    r = project.run("lock")
    assert r.code == 1, r.out + r.err
    first = r.err.splitlines()[0]
    assert archive.name in first and "'weights.bin'" in first, r.err
    assert "1 GiB stays free" in first and "free some space" in first, r.err
    assert "Traceback" not in r.err
    unpacked = [p for p in (small_disk / "store" / "tmp").rglob("*") if p.is_file()]
    assert unpacked == [], unpacked


def test_the_archive_cap_follows_the_users_limit(project, monkeypatch, tmp_path):
    monkeypatch.setenv("RECONCILE_MAX_UNKNOWN_SIZE", "8M")
    archive = _bomb(tmp_path, "tar.gz", 16 * MiB)
    project.write(f'[models.m]\nsource.url = {{ url = "file://{archive}", extract = true }}\n')
    r = project.run("lock")
    assert r.code == 1 and "RECONCILE_MAX_UNKNOWN_SIZE raises it" in r.err, r.err
    monkeypatch.setenv("RECONCILE_MAX_UNKNOWN_SIZE", "32M")
    r = project.run("lock")
    assert r.code == 0, r.err


# --- import ---------------------------------------------------------------------------------


def _export_of_zeros(path: Path, size: int) -> str:
    """A well-formed `reconcile export` archive of one object of ``size`` zero bytes."""
    import io
    import json
    import tarfile

    h = hashlib.sha256()
    src = Zeros(size)
    while chunk := src.read(MiB):
        h.update(chunk)
    sha = h.hexdigest()
    meta = json.dumps({"format": 1, "models": {"m": "sha256-x"}, "objects": {sha: size}})
    with tarfile.open(path, "w") as tar:
        for name, data in (("reconcile-export.json", meta.encode()), ("models.lock", b"")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(f"objects/sha256/{sha}")
        info.size = size
        tar.addfile(info, Zeros(size))
    return sha


def test_an_import_the_disk_cannot_take_is_refused_before_the_first_byte(
    project, small_disk, monkeypatch, tmp_path
):
    """Before: every object was copied in until the disk was full (an archive may declare
    a terabyte); now the manifest's sizes are weighed against the disk's room first."""
    monkeypatch.setenv("RECONCILE_STORE", str(small_disk / "store"))
    archive = tmp_path / "models.tar"
    sha = _export_of_zeros(archive, 40 * MiB)
    project.write("")
    r = project.run("import", str(archive))
    assert r.code == 1, r.out + r.err
    (line,) = r.err.splitlines()
    assert str(archive) in line and "1 GiB stays free" in line and "RECONCILE_STORE" in line
    assert _tmp_bytes(Store(small_disk / "store")) == 0
    assert not Store(small_disk / "store").has_object(sha)


# --- listings that do not end -----------------------------------------------------------


@pytest.mark.parametrize(
    ("caps", "words"),
    [
        ({"PAGE_KEYS": 2, "MAX_KEYS": 4}, "more than 4 objects under this prefix"),
        ({"PAGE_KEYS": 2, "MAX_PAGES": 2}, "the listing did not end after 2 pages"),
    ],
)
def test_an_s3_listing_past_its_caps_is_refused_by_name(project, monkeypatch, caps, words):
    """Before: pages were followed, and keys taken, for as long as the server went on
    (moto asked for pages of 2 keys, the caps lowered to match 5 objects)."""
    import boto3

    from reconcile.sources import s3

    for name, value in caps.items():
        monkeypatch.setattr(s3, name, value)
    with moto_s3() as endpoint:
        bucket = f"models-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        for i in range(5):
            client.put_object(Bucket=bucket, Key=f"bert/shard-{i}.bin", Body=b"%d" % i)
        project.write(
            f'[models.bert]\nsource.s3 = {{ bucket = "{bucket}", prefix = "bert/",'
            f' endpoint = "{endpoint}" }}\n'
        )
        r = project.run("lock")
        monkeypatch.setattr(s3, "MAX_KEYS", 5)
        monkeypatch.setattr(s3, "MAX_PAGES", 3)
        fits = project.run("lock")
    assert r.code == 1, r.out + r.err
    (line,) = r.err.splitlines()
    assert f"s3://{bucket}/bert/" in line or bucket in line, line
    assert words in line and "narrow prefix in models.toml" in line, line
    assert fits.code == 0, fits.err  # exactly at the caps: locked


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    from tests.servers import mlflow_cli, mlflow_server

    if mlflow_cli() is None:
        pytest.skip("needs mlflow (pip install 'mlflow[auth]')")
    with mlflow_server(tmp_path_factory.mktemp("mlflow")) as url:
        yield url


@pytest.mark.parametrize(
    ("caps", "words"),
    [
        ({"MAX_DEPTH": 3}, "more than 3 directory levels"),
        ({"MAX_ENTRIES": 4}, "more than 4 entries"),
    ],
)
def test_an_mlflow_listing_past_its_caps_is_refused_by_name(
    project, mlflow_url, tmp_path, monkeypatch, caps, words
):
    """Before: the walk went as deep and as wide as the server's directories went (the
    caps lowered here to fit a real model of 5 entries, 4 levels deep)."""
    from mlflow import MlflowClient

    from reconcile.sources import mlflow

    client = MlflowClient(tracking_uri=mlflow_url)
    name = f"deep-{uuid.uuid4().hex[:8]}"
    exp = client.get_experiment_by_name("caps") or None
    exp_id = exp.experiment_id if exp else client.create_experiment("caps")
    src = tmp_path / "model"
    (src / "a" / "b" / "c").mkdir(parents=True)
    (src / "config.json").write_bytes(b"{}")
    (src / "a" / "b" / "c" / "weights.bin").write_bytes(b"w" * 100)
    run = client.create_run(exp_id)
    client.log_artifacts(run.info.run_id, str(src), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model(name)
    client.create_model_version(
        name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
    )
    project.write(
        f'[models.clf]\nsource.mlflow = {{ trackingUri = "{mlflow_url}", modelName = "{name}",'
        ' version = "1" }\nvalidation.enable = false\n'
    )
    for cap, value in caps.items():
        monkeypatch.setattr(mlflow, cap, value)
    r = project.run("lock")
    assert r.code == 1, r.out + r.err
    (line,) = r.err.splitlines()
    assert words in line and "refused, nothing was locked" in line, line
    monkeypatch.setattr(mlflow, "MAX_DEPTH", 4)
    monkeypatch.setattr(mlflow, "MAX_ENTRIES", 5)
    r = project.run("lock")
    assert r.code == 0, r.err  # exactly at the caps: locked


class Endpoint:
    """A tiny HTTP server that answers the n-th GET with ``answer(path, query, n)``:
    (content type, body). It stands for a server whose listing never ends, which no real
    server can be made to be (the answers end after a ceiling, so code without caps
    fails its assertions instead of hanging); ``gets`` counts what it was asked."""

    def __init__(self, answer) -> None:
        self.answer, self.gets = answer, 0

    def __enter__(self) -> str:
        from urllib.parse import parse_qs, urlsplit

        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                outer.gets += 1
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                kind, body = outer.answer(parts.path, query, outer.gets)
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _s3_page(keys: list[str], token: str, more: bool = True) -> tuple[str, bytes]:
    contents = "".join(f"<Contents><Key>{k}</Key><Size>1</Size></Contents>" for k in keys)
    return "application/xml", (
        '<?xml version="1.0" encoding="UTF-8"?>'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>b</Name><Prefix>m/</Prefix><IsTruncated>{str(more).lower()}</IsTruncated>"
        f"{contents}"
        f"<NextContinuationToken>{token}</NextContinuationToken></ListBucketResult>"
    ).encode()


def _keys_forever(path, query, n):
    page = int(query.get("continuation-token", "0"))
    return _s3_page([f"m/{page}-{i}.bin" for i in range(1000)], str(page + 1), n < 150)


@pytest.mark.parametrize(
    ("answer", "words", "gets"),
    [
        (
            lambda path, query, n: _s3_page([], "again", n < 50),
            "the same continuation token twice",
            2,
        ),
        (_keys_forever, "more than 100000 objects under this prefix", 101),
    ],
    ids=["repeated-token", "keys-forever"],
)
def test_an_s3_listing_that_never_ends_stops_at_the_default_caps(project, answer, words, gets):
    """Before: both were followed for as long as the server went on (for ever)."""
    server = Endpoint(answer)
    with server as url:
        project.write(
            f'[models.m]\nsource.s3 = {{ bucket = "models", prefix = "m/", endpoint = "{url}" }}\n'
        )
        r = project.run("lock")
    assert r.code == 1, r.out + r.err
    (line,) = r.err.splitlines()
    assert words in line and "narrow prefix in models.toml" in line, line
    assert server.gets == gets


def _mlflow_forever(path, query, n):
    """A model version whose artifact listing has a directory inside every directory."""
    import json

    if path.endswith("/model-versions/get"):
        doc = {"model_version": {"version": "1", "status": "READY", "run_id": "r"}}
    elif path.endswith("/get-download-uri"):
        doc = {"artifact_uri": "mlflow-artifacts:/0/r/artifacts/model"}
    else:
        doc = {"files": [{"path": "deeper", "is_dir": True}] if n < 200 else []}
    return "application/json", json.dumps(doc).encode()


def test_an_mlflow_listing_that_never_ends_stops_at_the_default_depth(project):
    server = Endpoint(_mlflow_forever)
    with server as url:
        project.write(
            f'[models.m]\nsource.mlflow = {{ trackingUri = "{url}", modelName = "m",'
            ' version = "1" }\n'
        )
        r = project.run("lock")
    assert r.code == 1, r.out + r.err
    (line,) = r.err.splitlines()
    assert "more than 64 directory levels" in line and "nothing was locked" in line, line
    assert server.gets == 2 + 64


def test_an_oci_tar_layer_that_unpacks_past_the_disks_room_is_refused(
    project, small_disk, monkeypatch, tmp_path
):
    """A ModelPack tar+gzip layer of 200 KiB that unpacks to 96 MiB, against 24 MiB of
    room (before: capped at 1 TiB, so unpacked whole)."""
    import json

    from tests.servers import Pusher, docker_registry, registry_binary

    if registry_binary() is None:
        pytest.skip("needs docker-registry (apt-get install docker-registry)")
    monkeypatch.setenv("RECONCILE_STORE", str(small_disk / "store"))
    layer = _bomb(tmp_path, "tar.gz", 96 * MiB).read_bytes()
    mp = "application/vnd.cncf.model."
    with docker_registry(tmp_path / "registry") as url:
        p = Pusher(url)
        doc = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "artifactType": mp + "manifest.v1+json",
            "config": {"mediaType": mp + "config.v1+json", **p.blob("models/bomb", b"{}")},
            "layers": [
                {
                    "mediaType": mp + "weight.v1.tar+gzip",
                    **p.blob("models/bomb", layer),
                    "annotations": {"org.cncf.model.filepath": "weights"},
                }
            ],
        }
        p.manifest("models/bomb", "v1", json.dumps(doc).encode(), media=doc["mediaType"])
        project.write(f'[models.m]\nsource.oci = {{ ref = "{url}/models/bomb:v1" }}\n')
        r = project.run("lock")
    assert r.code == 1, r.out + r.err
    first = r.err.splitlines()[0]
    assert "'weights.bin'" in first and "1 GiB stays free" in first, r.err
    assert [p for p in (small_disk / "store" / "tmp").rglob("*") if p.is_file()] == []


def test_a_listed_file_the_disk_cannot_take_is_refused_before_the_first_byte(
    project, small_disk, monkeypatch
):
    """An S3 object without a checksum is downloaded at lock time, at the size its
    listing claims: 40 MiB against 24 MiB of room (before: written until it fit, or
    until the disk was full)."""
    import boto3

    monkeypatch.setenv("RECONCILE_STORE", str(small_disk / "store"))
    with moto_s3() as endpoint:
        bucket = f"models-{uuid.uuid4().hex[:12]}"
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="bert/weights.bin", Body=bytes(40 * MiB))
        project.write(
            f'[models.bert]\nsource.s3 = {{ bucket = "{bucket}", prefix = "bert/",'
            f' endpoint = "{endpoint}" }}\n'
        )
        r = project.run("lock")
    assert r.code == 1, r.out + r.err
    (line,) = r.err.splitlines()
    assert "weights.bin: needs 40.0 MiB more" in line and "1 GiB stays free" in line, line
    assert _tmp_bytes(Store(small_disk / "store")) == 0


def test_apply_installs_from_the_source_when_the_cache_object_is_oversized(
    project, hub, monkeypatch, tmp_path
):
    """The issue's case end to end: a 20 MiB file whose cache object was grown to 2 GiB
    (sparse): apply cuts it off at 20 MiB, warns once, and installs from the source."""
    import json

    big = os.urandom(20 * MiB)
    hub.repo("acme/big").commit({"config.json": b"{}", "weights.bin": big})
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("RECONCILE_VALIDATION", "none")
    monkeypatch.delenv("RECONCILE_CACHE", raising=False)
    cache = tmp_path / "team-cache"
    project.write(
        f'[models.big]\nsource.huggingface = {{ repo = "acme/big" }}\n[cache]\nurl = "{cache}"\n'
    )
    assert project.run("apply").code == 0
    assert project.run("push").code == 0
    sha = hashlib.sha256(big).hexdigest()
    obj = cache / "objects" / "sha256" / sha
    obj.chmod(0o644)
    with open(obj, "r+b") as f:
        f.truncate(2 << 30)
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "store-2"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-2"))
    r = project.run("apply", "--progress", "json")
    assert r.code == 0, r.err
    (warned,) = [line for line in r.err.splitlines() if "holds more than" in line]
    assert f"more than the {len(big)} bytes locked for it" in warned and "weights.bin" in warned
    events = [json.loads(line) for line in r.err.splitlines() if line.startswith("{")]
    done = {e["file"]: e["bytes"] for e in events if e["event"] == "done"}
    assert done["weights.bin"] == len(big), done
    assert Store(tmp_path / "store-2").object_path(sha).read_bytes() == big
