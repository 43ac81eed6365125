"""The four sources of `run_all.py`: for each, a row's server with the model loaded, and
the tools measured on it.

Every row measures, on the same server and the same bytes:

  reconcile   `reconcile apply` with models.lock in place: `reconcile lock` ran once,
              untimed; every run starts from a fresh store and fresh targets (HF cache,
              ollama models directory). The store's `state/vouched` records from that
              lock are put back (a user's models.lock came from their own `lock`), so
              apply does not ask the source to vouch again; ``keep_vouched=False`` drops
              them too.
  peer        the tool a user would otherwise reach for (`peer_name`), into a fresh dir
  floor net   the weight files fetched in parallel by curl to /dev/null (the network's
              and the server's part; presigned URLs for S3, the LFS batch API's hrefs)
  floor disk  the same bytes written by `dd oflag=direct`, one per weight file, in
              parallel (what a write that leaves nothing to flush costs on this disk)

Each tool is one ``bench_hf.measure``: `sync` untimed first, wall time to exit, then
"durable" = exit + `sync`, peak RSS and CPU. Every result is checked (files, sizes, the
small files' sha256) before it counts; then the output is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from all_model import ONE_BIG_FROM, DiskWatch, Model, warm  # noqa: E402
from bench_git_lfs import Runner as GitRunner  # noqa: E402
from bench_git_lfs import check_tree as git_check_tree  # noqa: E402
from bench_git_lfs import push_tree  # noqa: E402
from bench_hf import BASE_ENV, HF_CODE, measure, wipe  # noqa: E402
from bench_hf import Runner as HfRunner  # noqa: E402
from bench_oci import MT, push_file  # noqa: E402
from bench_s3 import BOTO_CODE, REGION, aws_env, s3_client  # noqa: E402
from bench_s3 import check_tree as s3_check_tree  # noqa: E402
from hfsite import Site, _reconcile_cmd  # noqa: E402

from tests.servers import Pusher, docker_registry, git_forge, seaweedfs  # noqa: E402

PY = sys.executable
RECONCILE = _reconcile_cmd()
OLLAMA = "application/vnd.ollama.image."
# curl fetching its URLs in parallel (8 at once), redirects followed, silent but for errors
CURL_Z = ("curl", "-sSfL", "--no-progress-meter", "-Z", "--parallel-max", "8")


class RowFailed(Exception):
    """A row could not be set up or a tool's result was wrong: the row says so, the run
    goes on."""


class Row:
    """One source at one size. ``open()`` starts the server and loads the model, ``tools()``
    are measured (alternating, by the caller), leaving the context deletes everything."""

    source = ""
    peer_name = ""
    goal = 1.0  # peer / reconcile at least this

    def __init__(self, tmp: Path, model: Model, disk: DiskWatch, *, keep_vouched: bool = True
                 ) -> None:
        self.tmp, self.model, self.disk, self.keep_vouched = tmp, model, disk, keep_vouched
        self.work, self.proj, self.vouched = tmp / "work", tmp / "proj", tmp / "vouched"
        self.env: dict[str, str] = dict(BASE_ENV)
        self.toml = ""

    # --- what a source provides ---------------------------------------------------------

    @contextmanager
    def _serve(self) -> Iterator[None]:
        """Start the server, load the model, set ``env`` and ``toml``."""
        raise NotImplementedError
        yield

    def peer(self) -> dict:
        raise NotImplementedError

    def big_urls(self) -> list[str]:
        """URLs of the weight files that plain curl can fetch (redirects followed)."""
        raise NotImplementedError

    def check_reconcile(self) -> None:
        """Raise RowFailed unless reconcile installed the whole model."""
        raise NotImplementedError

    def context(self) -> dict[str, Callable[[], dict]]:
        """Extra tools measured for context only (not in the table's ratios)."""
        return {}

    # --- shared --------------------------------------------------------------------------

    @contextmanager
    def open(self) -> Iterator[Row]:
        try:
            with self._serve():
                self.disk.note()
                self._lock()
                subprocess.run(self._curl_big(), check=True, env=BASE_ENV)  # warm the server
                yield self
        finally:
            wipe(self.tmp)

    def tools(self) -> dict[str, Callable[[], dict]]:
        return {"reconcile": self.reconcile, "peer": self.peer, "floor net": self.floor_net,
                "floor disk": self.floor_disk, **self.context()}

    def renv(self) -> dict[str, str]:
        """reconcile's environment: the store and every target under ``work``."""
        return {**self.env, "RECONCILE_STORE": str(self.work / "store"),
                "HF_HOME": str(self.work / "hf"), "HF_HUB_CACHE": str(self.work / "hf" / "hub"),
                "OLLAMA_MODELS": str(self.work / "ollama")}

    def _fresh(self) -> None:
        wipe(self.work)
        self.work.mkdir()
        if self.vouched.is_dir():
            shutil.copytree(self.vouched, self.work / "store" / "state" / "vouched")

    def _lock(self) -> None:
        """`reconcile lock` once, untimed; keep what it vouched for (see the module doc)."""
        self.proj.mkdir()
        (self.proj / "models.toml").write_text(self.toml)
        self._fresh()
        p = subprocess.run([RECONCILE, "lock"], env=self.renv(), cwd=self.proj,
                           capture_output=True, text=True)
        if p.returncode:
            raise RowFailed(f"`reconcile lock` exited {p.returncode}: "
                            f"{(p.stdout + p.stderr).strip()[-1500:]}")
        vouched = self.work / "store" / "state" / "vouched"
        if self.keep_vouched and vouched.is_dir():
            shutil.copytree(vouched, self.vouched)
        self._fresh()

    def reconcile(self) -> dict:
        self._fresh()
        r = measure([RECONCILE, "apply"], self.renv(), self.proj)
        self.check_reconcile()
        self.disk.note()
        wipe(self.work)
        return r

    def installed_tree(self) -> Path:
        """The model's tree in reconcile's store (`reconcile path`)."""
        p = subprocess.run([RECONCILE, "path", "m"], env=self.renv(), cwd=self.proj,
                           capture_output=True, text=True)
        if p.returncode:
            raise RowFailed(f"`reconcile path m` exited {p.returncode}: {p.stderr[-500:]}")
        return Path(p.stdout.strip().splitlines()[-1])

    def _curl_big(self) -> list[str]:
        cmd = list(CURL_Z)
        for url in self.big_urls():
            cmd += ["-o", "/dev/null", url]
        return cmd

    def floor_net(self) -> dict:
        return measure(self._curl_big(), BASE_ENV)

    def floor_disk(self) -> dict:
        out = self.tmp / "dd"
        wipe(out)
        out.mkdir()
        big = self.model.big
        warm([b.path for b in big])  # dd reads from memory, as a download reads the network
        script = "".join(f'dd if="{b.path}" of="{out}/{i}" bs=8M oflag=direct status=none &'
                         f" p{i}=$!; " for i, b in enumerate(big))
        script += " && ".join(f"wait $p{i}" for i in range(len(big)))
        r = measure(["sh", "-c", script], BASE_ENV)
        for i, b in enumerate(big):
            if (out / str(i)).stat().st_size != b.size:
                raise RowFailed(f"dd wrote {(out / str(i)).stat().st_size} bytes of {b.size}")
        self.disk.note()
        wipe(out)
        return r


def _sha_files(model: Model) -> dict[str, tuple[int, str]]:
    """path -> (size, sha256) for the tree checks of bench_s3 and bench_git_lfs."""
    out = {b.name: (b.size, b.sha256) for b in model.big}
    out.update({p: (len(d), hashlib.sha256(d).hexdigest()) for p, d in model.small.items()})
    return out


def _checked(check: Callable[[], None]) -> None:
    """The benches' tree checks assert; a row reports that as a failure, not a traceback."""
    try:
        check()
    except (AssertionError, OSError) as e:
        raise RowFailed(f"incomplete result: {e!r}"[:500]) from None


class HfRow(Row):
    """The nginx stand-in Hub (bench/hfsite.py), LFS files answered 200 by the Hub."""

    source, peer_name, goal = "hf", "snapshot_download(max_workers=8)", 1.5

    @contextmanager
    def _serve(self) -> Iterator[None]:
        site = Site(self.tmp / "site")
        files: dict[str, bytes | Path] = {b.name: b.path for b in self.model.big}
        files.update(self.model.small)
        self.info = site.add_repo("bench/m", files)
        with site.serve() as urls:
            self.url = urls.direct
            self.env = {**BASE_ENV, "HF_ENDPOINT": self.url}
            self.toml = f'[models.m]\nsource.huggingface = {{ repo = "{self.info.repo}" }}\n'
            yield

    def peer(self) -> dict:
        hub = self.tmp / "peer"
        wipe(hub)
        r = measure([PY, "-c", HF_CODE, self.info.repo, str(hub), self.url], BASE_ENV)
        _checked(lambda: HfRunner._check(hub, self.info))
        self.disk.note()
        wipe(hub)
        return r

    def big_urls(self) -> list[str]:
        return [self.info.resolve_url(self.url, b.name) for b in self.model.big]

    def check_reconcile(self) -> None:
        _checked(lambda: HfRunner._check(self.work / "hf" / "hub", self.info))

    def context(self) -> dict[str, Callable[[], dict]]:
        """curl for context while it is cheap (not at 4 GiB: the run must fit 15 min)."""
        return {"curl -Z (files)": self.curl_files} if self.model.size < ONE_BIG_FROM else {}

    def curl_files(self) -> dict:
        """Every file of the repo by plain curl, in parallel, to disk: no cache layout,
        no check (what a script with a list of URLs does)."""
        out = self.tmp / "curl"
        wipe(out)
        cmd = [*CURL_Z, "--create-dirs"]
        for path in self.info.files:
            cmd += ["-o", str(out / path), self.info.resolve_url(self.url, path)]
        r = measure(cmd, BASE_ENV)
        for path, size in self.model.files().items():
            if (out / path).stat().st_size != size:
                raise RowFailed(f"curl: {path} has {(out / path).stat().st_size} bytes")
        self.disk.note()
        wipe(out)
        return r


class S3Row(Row):
    """SeaweedFS (`weed mini`), bucket `bench`, prefix `model/`; multipart uploads, so the
    server keeps no whole-object checksum."""

    source, peer_name = "s3", "boto3 download_file"

    @contextmanager
    def _serve(self) -> Iterator[None]:
        with seaweedfs(self.tmp / "weed") as url:
            self.url = url
            self.env = {k: v for k, v in BASE_ENV.items() if not k.startswith("AWS_")}
            self.env.update(aws_env(self.tmp))
            self.s3 = s3 = s3_client(url, pool=32)
            s3.create_bucket(Bucket="bench")
            for b in self.model.big:
                s3.upload_file(str(b.path), "bench", "model/" + b.name)  # multipart
            for path, data in self.model.small.items():
                s3.put_object(Bucket="bench", Key="model/" + path, Body=data)
            self.files = _sha_files(self.model)
            self.script = self.tmp / "boto3_download.py"
            self.script.write_text(BOTO_CODE)
            self.toml = (f'[models.m]\nsource.s3 = {{ bucket = "bench", prefix = "model/",'
                         f' endpoint = "{url}", region = "{REGION}" }}\n')
            yield

    def peer(self) -> dict:
        out = self.tmp / "peer"
        wipe(out)
        r = measure([PY, str(self.script), self.url, "bench", "model/", str(out)], self.env)
        _checked(lambda: s3_check_tree(out, self.files))
        self.disk.note()
        wipe(out)
        return r

    def big_urls(self) -> list[str]:
        return [self.s3.generate_presigned_url("get_object", ExpiresIn=3600, Params={
            "Bucket": "bench", "Key": "model/" + b.name}) for b in self.model.big]

    def check_reconcile(self) -> None:
        tree = self.installed_tree()
        _checked(lambda: s3_check_tree(tree, self.files))


class OciRow(Row):
    """docker-registry (CNCF distribution 2.8) holding an ollama model: the weights as
    `model` and `projector` layers (GGUF-like blobs), the small files as license layers."""

    source, peer_name = "oci", "curl -Z (each blob)"

    @contextmanager
    def _serve(self) -> Iterator[None]:
        with docker_registry(self.tmp / "registry") as url:
            repo, pusher = "library/m", Pusher(url)
            kinds = ["model", "projector"]
            layers = [{"mediaType": OLLAMA + kinds[i], **push_file(url, repo, b.path, b.sha256)}
                      for i, b in enumerate(self.model.big)]
            layers += [{"mediaType": OLLAMA + "license", **pusher.blob(repo, data)}
                       for data in self.model.small.values()]
            config = pusher.blob(repo, b'{"model_format": "gguf", "model_family": "bench"}')
            pusher.manifest(repo, "latest", {
                "schemaVersion": 2, "mediaType": MT, "layers": layers,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           **config}})
            self.blobs = {d["digest"]: d["size"] for d in (*layers, config)}
            self.blob_url = f"{url}/v2/{repo}/blobs/"
            self.toml = f'[models.m]\nsource.ollama = {{ model = "m", registry = "{url}" }}\n'
            yield

    def peer(self) -> dict:
        out = self.tmp / "peer"
        wipe(out)
        out.mkdir()
        cmd = list(CURL_Z)
        for digest in self.blobs:
            cmd += ["-o", str(out / digest.replace(":", "-")), self.blob_url + digest]
        r = measure(cmd, BASE_ENV)
        _checked(lambda: self._check_blobs(out))
        self.disk.note()
        wipe(out)
        return r

    def _check_blobs(self, blobs: Path) -> None:
        for digest, size in self.blobs.items():
            got = (blobs / digest.replace(":", "-")).stat().st_size
            assert got == size, (digest, got, size)

    def big_urls(self) -> list[str]:
        return [f"{self.blob_url}sha256:{b.sha256}" for b in self.model.big]

    def check_reconcile(self) -> None:
        _checked(lambda: self._check_blobs(self.work / "ollama" / "blobs"))


class GitLfsRow(Row):
    """The test forge (git http-backend + giftless, LFS downloads 302 to a storage host),
    repository org/models at tag v1.0, `*.safetensors` in LFS."""

    source, peer_name = "git_lfs", "git clone + git lfs pull"

    @contextmanager
    def _serve(self) -> Iterator[None]:
        with git_forge(self.tmp / "forge", FORGE_CDN="1") as forge:
            self.forge = forge

            def fill(src: Path) -> dict[str, tuple[int, str]]:
                for b in self.model.big:
                    os.link(b.path, src / b.name)
                for path, data in self.model.small.items():
                    (src / path).parent.mkdir(parents=True, exist_ok=True)
                    (src / path).write_bytes(data)
                return _sha_files(self.model)

            self.files = push_tree(forge, self.tmp, fill)
            self.git = GitRunner(self.tmp / "peer", forge, self.files)
            self.toml = (f'[models.m]\nsource.git-lfs = {{ url = "{forge.url("org/models")}",'
                         ' rev = "v1.0" }\n')
            yield

    def peer(self) -> dict:
        r = self.git.git_pull()  # measures, checks the clone and deletes it
        self.disk.note()
        return r

    def big_urls(self) -> list[str]:
        """The storage hrefs the LFS batch API hands out now (they expire)."""
        body = json.dumps({"operation": "download", "transfers": ["basic"], "objects": [
            {"oid": b.sha256, "size": b.size} for b in self.model.big]}).encode()
        media = "application/vnd.git-lfs+json"
        req = urllib.request.Request(self.forge.url("org/models") + ".git/info/lfs/objects/batch",
                                     data=body, method="POST",
                                     headers={"Accept": media, "Content-Type": media})
        with urllib.request.urlopen(req, timeout=30) as r:
            answer = json.load(r)
        return [o["actions"]["download"]["href"] for o in answer["objects"]]

    def check_reconcile(self) -> None:
        tree = self.installed_tree()
        _checked(lambda: git_check_tree(tree, self.files))


SOURCES: dict[str, type[Row]] = {r.source: r for r in (HfRow, S3Row, OciRow, GitLfsRow)}
