"""A static Hugging Face-compatible site on nginx, so the server is never the bottleneck.

Python stand-ins and olah serve ~40-45 MB/s (notes hf-hub.md §4b): against them every
client looks equally fast. Here nginx serves everything as static files:

    GET  /api/models/{repo}/revision/{rev}          {"id","sha","siblings"}  (rev = main or the sha)
    GET  /api/models/{repo}/tree/{sha}[?recursive=true&expand=false]
                                                    [{type,path,size,oid[,lfs:{oid,size,pointerSize}]}]
    HEAD|GET /{repo}/resolve/{sha|main}/{path}      the bytes, with X-Repo-Commit, ETag (git blob
                                                    id), and for LFS files X-Linked-Etag (sha256)
                                                    and X-Linked-Size; Range is nginx's own

Header values are per file, through `map $uri ...` blocks; `etag off` elsewhere.
``serve()`` starts one nginx with two Hub endpoints on the same files: ``.direct``
answers LFS files 200 itself; ``.redirect`` answers them like huggingface.co, a 302
carrying the X-* headers to a CDN server block on a third port (another origin: clients
must not forward Authorization there, and huggingface_hub 2.4 does not follow that HEAD
redirect) that serves /cdn/{repo}/{path}?X-Amz-Signature=... (query ignored).

Self-contained (stdlib + nginx). Check that both clients accept it:

    python bench/hfsite.py            # builds a small repo, runs snapshot_download and
                                      # `reconcile apply` against it (direct and CDN mode)
    python bench/hfsite.py --serve    # build a demo repo and serve it until Ctrl-C
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
BLOCK = 1 << 20
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".onnx", ".h5", ".msgpack")


def _die_with_parent() -> None:
    """In the nginx child: get SIGTERM when the Python parent dies, however it dies."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _cleanup_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so `finally` stops nginx and deletes the temp dirs."""
    import threading

    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL):
        def raise_exit(signum, frame):
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, raise_exit)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_big(path: Path, size: int, seed: int) -> str:
    """``size`` bytes of incompressible content, fast, never sparse; returns the sha256.

    One random 1 MiB block written over and over, its first 16 bytes changed per MiB
    (seed + index), so no two blocks are equal and no filesystem or HTTP layer can
    dedupe or compress it. The sha256 is computed on the fly (no second pass).
    """
    block = bytearray(os.urandom(BLOCK))
    h = hashlib.sha256()
    with open(path, "wb") as f:
        left, i = size, 0
        while left:
            block[:16] = seed.to_bytes(8, "little") + i.to_bytes(8, "little")
            n = min(left, BLOCK)
            chunk = memoryview(block)[:n]
            f.write(chunk)
            h.update(chunk)
            left -= n
            i += 1
    return h.hexdigest()


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Endpoints(NamedTuple):
    direct: str  # LFS files served 200 by the "Hub" itself
    redirect: str  # LFS files answered 302 → CDN origin (as huggingface.co does)


@dataclass
class RepoInfo:
    repo: str
    sha: str
    files: dict[str, dict] = field(default_factory=dict)  # path → {size, oid, sha256?, lfs}

    def resolve_url(self, endpoint: str, path: str) -> str:
        return f"{endpoint}/{self.repo}/resolve/{self.sha}/{path}"

    @property
    def total_bytes(self) -> int:
        return sum(f["size"] for f in self.files.values())


class Site:
    """A directory tree that nginx serves as a Hub. Add repos, then ``serve()``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.repos: dict[str, RepoInfo] = {}

    def add_repo(self, repo: str, files: dict[str, int | bytes | Path], *,
                 lfs_min: int = 10 << 20) -> RepoInfo:
        """``files``: path → bytes (a plain git file), a size (generated content), or an
        existing file (hard-linked in, so several benchmarks can serve one copy).

        A generated file is LFS when it has a weights suffix or is ≥ ``lfs_min``
        bytes, like `git lfs track` + the Hub's 10 MB rule.
        """
        assert repo.count("/") == 1 and "--" not in repo, repo
        fdir = self.root / "files" / repo
        if fdir.exists():
            shutil.rmtree(fdir)
        info = RepoInfo(repo, hashlib.sha1(os.urandom(20)).hexdigest())
        dirs: set[str] = set()
        for i, (path, spec) in enumerate(sorted(files.items())):
            p = fdir / path
            p.parent.mkdir(parents=True, exist_ok=True)
            parts = path.split("/")
            dirs.update("/".join(parts[:k]) for k in range(1, len(parts)))
            if isinstance(spec, bytes):
                p.write_bytes(spec)
                info.files[path] = {"size": len(spec), "oid": git_blob_oid(spec), "lfs": False}
                continue
            if isinstance(spec, Path):
                os.link(spec, p)
                digest, spec = _sha256(p), p.stat().st_size
            else:
                digest = write_big(p, spec, seed=i)
            if spec >= lfs_min or path.endswith(LFS_SUFFIXES):
                pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\n"
                           f"size {spec}\n").encode()
                info.files[path] = {"size": spec, "oid": git_blob_oid(pointer), "sha256": digest,
                                    "pointer_size": len(pointer), "lfs": True}
            else:
                info.files[path] = {"size": spec, "oid": git_blob_oid(p.read_bytes()),
                                    "lfs": False}
        tree = [{"type": "directory", "path": d, "oid": hashlib.sha1(d.encode()).hexdigest(),
                 "size": 0} for d in sorted(dirs)]
        for path, f in info.files.items():
            e = {"type": "file", "path": path, "size": f["size"], "oid": f["oid"]}
            if f["lfs"]:
                e["lfs"] = {"oid": f["sha256"], "size": f["size"], "pointerSize": f["pointer_size"]}
            tree.append(e)
        api = self.root / "api" / repo
        shutil.rmtree(api, ignore_errors=True)
        (api / "revision").mkdir(parents=True)
        (api / "tree").mkdir(parents=True)
        rev = json.dumps({"id": repo, "modelId": repo, "sha": info.sha, "private": False,
                          "siblings": [{"rfilename": p} for p in sorted(info.files)]})
        (api / "revision" / "main.json").write_text(rev)
        (api / "revision" / f"{info.sha}.json").write_text(rev)
        (api / "tree" / f"{info.sha}.json").write_text(json.dumps(tree))
        self.repos[repo] = info
        return info

    nginx_pid: int | None = None

    def server_cpu_seconds(self) -> float:
        """CPU seconds (user + system) the running nginx's processes have used so far."""
        if not self.nginx_pid:
            return 0.0
        pids = [self.nginx_pid]
        try:
            kids = Path(f"/proc/{self.nginx_pid}/task/{self.nginx_pid}/children").read_text()
            pids += [int(k) for k in kids.split()]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
        return total / os.sysconf("SC_CLK_TCK")

    def remove_repo(self, repo: str) -> None:
        """Free the disk space of a repo (the running server keeps its config)."""
        shutil.rmtree(self.root / "files" / repo, ignore_errors=True)
        shutil.rmtree(self.root / "api" / repo, ignore_errors=True)
        self.repos.pop(repo, None)

    def _maps(self, cdn_port: int) -> str:
        rows: dict[str, list[str]] = {"hf_etag": [], "hf_linked_etag": [], "hf_linked_size": [],
                                      "hf_cdn": []}
        for info in self.repos.values():
            for path, f in info.files.items():
                for rev in (info.sha, "main"):
                    uri = f"/{info.repo}/resolve/{rev}/{path}".replace('"', '\\"')
                    rows["hf_etag"].append(f'  "{uri}" \'"{f["oid"]}"\';')
                    if f["lfs"]:
                        rows["hf_linked_etag"].append(f'  "{uri}" \'"{f["sha256"]}"\';')
                        rows["hf_linked_size"].append(f'  "{uri}" "{f["size"]}";')
                        loc = (f"http://127.0.0.1:{cdn_port}/cdn/{info.repo}/{path}"
                               f"?X-Amz-Signature={f['sha256'][:16]}")
                        rows["hf_cdn"].append(f'  "{uri}" "{loc}";')
        out = []
        for var, lines in rows.items():
            out.append(f"  map $uri ${var} {{\n    default \"\";\n" + "\n".join(lines) + "\n  }")
        return "\n".join(out)

    def config(self, port: int, redirect_port: int, cdn_port: int, work: Path) -> str:
        root = self.root
        files_loc = f"""
      alias {root}/files/$repo/$fpath;
      add_header X-Repo-Commit $hf_commit always;
      add_header ETag $hf_etag always;
      add_header X-Linked-Etag $hf_linked_etag always;
      add_header X-Linked-Size $hf_linked_size always;"""
        commit_rows = "\n".join(f'    "{i.repo}" "{i.sha}";' for i in self.repos.values())

        def hub(listen: int, redirect: bool) -> str:
            loc = files_loc + ('\n      if ($hf_cdn != "") { return 302 $hf_cdn; }'
                               if redirect else "")
            return f"""
  server {{
    listen 127.0.0.1:{listen};
    location ~ "^/api/models/(?<repo>[^/]+/[^/]+)/revision/(?<rev>[^/]+)$" {{
      default_type application/json; alias {root}/api/$repo/revision/$rev.json; }}
    location ~ "^/api/models/(?<repo>[^/]+/[^/]+)/tree/(?<sha>[0-9a-f]{{40}})/?$" {{
      default_type application/json; alias {root}/api/$repo/tree/$sha.json; }}
    location ~ "^/(?<repo>[^/]+/[^/]+)/resolve/(?<rev>[^/]+)/(?<fpath>.+)$" {{{loc}
    }}
  }}"""
        return f"""
daemon off;
user root;
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on; tcp_nodelay on;
  keepalive_requests 10000;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  types {{ }}
  default_type application/octet-stream;
  etag off;
  server_tokens off;
  map_hash_max_size 262144; map_hash_bucket_size 512;
{self._maps(cdn_port)}
  map $repo $hf_commit {{
    default "";
{commit_rows}
  }}
{hub(port, False)}{hub(redirect_port, True)}
  server {{
    listen 127.0.0.1:{cdn_port};
    location ~ "^/cdn/(?<repo>[^/]+/[^/]+)/(?<fpath>.+)$" {{ alias {root}/files/$repo/$fpath; }}
  }}
}}
"""

    @contextmanager
    def serve(self):
        """nginx in the foreground on free 127.0.0.1 ports; yields the endpoints.

        ``.direct``: LFS bytes answered 200 by the Hub itself; ``.redirect``: LFS files
        answered 302 to the CDN server block (a third port), like huggingface.co.
        """
        if not Path(NGINX).exists():
            raise SystemExit("nginx is not installed: apt-get install nginx-light")
        work = Path(tempfile.mkdtemp(prefix="nginx-", dir=self.root))
        port, redirect_port, cdn_port = free_port(), free_port(), free_port()
        conf = work / "nginx.conf"
        conf.write_text(self.config(port, redirect_port, cdn_port, work))
        proc = subprocess.Popen([NGINX, "-c", str(conf), "-p", str(work)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                preexec_fn=_die_with_parent)
        _cleanup_on_sigterm()
        self.nginx_pid = proc.pid
        try:
            deadline = time.monotonic() + 10
            while True:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    log = (work / "error.log").read_text() if (work / "error.log").exists() else ""
                    raise RuntimeError(f"nginx exited: {err}{log}")
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError("nginx did not start") from None
                    time.sleep(0.02)
            yield Endpoints(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{redirect_port}")
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            shutil.rmtree(work, ignore_errors=True)


# --- self-check: both clients accept the site ---------------------------------------------

CLIENT_ENV = {"HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
              "HF_HUB_DISABLE_PROGRESS_BARS": "1", "RECONCILE_VALIDATION": "none"}


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _check_snapshot(folder: Path, info: RepoInfo) -> None:
    got = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert got == sorted(info.files), (got, sorted(info.files))
    for path, f in info.files.items():
        p = folder / path
        assert p.stat().st_size == f["size"], path
        if f["lfs"]:
            assert _sha256(p) == f["sha256"], path
        else:
            assert git_blob_oid(p.read_bytes()) == f["oid"], path


def _check_cache_layout(cache: Path, info: RepoInfo) -> None:
    """The blob names huggingface_hub would choose: sha256 for LFS, git oid otherwise."""
    rdir = cache / ("models--" + info.repo.replace("/", "--"))
    assert (rdir / "refs" / "main").read_text() == info.sha
    blobs = {p.name for p in (rdir / "blobs").iterdir()}
    want = {f["sha256"] if f["lfs"] else f["oid"] for f in info.files.values()}
    assert want <= blobs, want - blobs


def self_check() -> None:
    py = sys.executable
    tmp = Path(tempfile.mkdtemp(prefix="hfsite-check-"))
    try:
        site = Site(tmp / "site")
        info = site.add_repo("bench/check", {
            "model-00001-of-00002.safetensors": 24 << 20,
            "model-00002-of-00002.safetensors": (20 << 20) + 12345,
            "pytorch_model.bin": 3 << 20,  # LFS by suffix although small
            "config.json": b'{"model_type": "bert"}',
            "sub/dir/readme.txt": b"hello\n",
            **{f"small/{i:02d}.json": json.dumps({"i": i}).encode() for i in range(10)},
        })
        with site.serve() as urls:
            for cdn in (False, True):
                url = urls.redirect if cdn else urls.direct
                mode = "302 to CDN" if cdn else "direct 200"
                f = info.files["model-00001-of-00002.safetensors"]
                head = subprocess.run(["curl", "-sI", info.resolve_url(url,
                                       "model-00001-of-00002.safetensors")],
                                      capture_output=True, text=True, check=True).stdout.lower()
                assert f"x-linked-etag: \"{f['sha256']}\"" in head, head
                assert f"x-linked-size: {f['size']}" in head, head
                assert f"x-repo-commit: {info.sha}" in head, head
                assert ("302" in head.splitlines()[0]) == cdn, head
                big = site.root / "files" / info.repo / "model-00001-of-00002.safetensors"
                rng = subprocess.run(["curl", "-sfL", "-r", "1048570-1048599", info.resolve_url(
                    url, big.name)], capture_output=True, check=True).stdout
                assert rng == big.read_bytes()[1048570:1048600], rng
                # huggingface_hub 2.x
                hub = tmp / "hub-hf"
                code = ("import sys; from huggingface_hub import snapshot_download as s; "
                        "print(s(sys.argv[1], revision='main', cache_dir=sys.argv[2],"
                        " endpoint=sys.argv[3], max_workers=8))")
                p = subprocess.run([py, "-c", code, info.repo, str(hub), url],
                                   env={**os.environ, **CLIENT_ENV}, capture_output=True,
                                   text=True)
                assert p.returncode == 0, p.stderr[-3000:]
                _check_snapshot(Path(p.stdout.strip().splitlines()[-1]), info)
                _check_cache_layout(hub, info)
                print(f"[{mode}] huggingface_hub snapshot_download: OK")
                # reconcile
                proj, store, rhub = tmp / "proj", tmp / "store", tmp / "hub-rec"
                proj.mkdir()
                (proj / "models.toml").write_text(
                    f'[models.m]\nsource.huggingface = {{ repo = "{info.repo}" }}\n')
                env = {**os.environ, **CLIENT_ENV, "HF_ENDPOINT": url,
                       "RECONCILE_STORE": str(store), "HF_HUB_CACHE": str(rhub)}
                p = subprocess.run([_reconcile_cmd(), "apply", "--jobs", "8"], cwd=proj, env=env,
                                   capture_output=True, text=True)
                assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
                # the cache reconcile wrote, read back by the official client offline
                code = ("import sys; from huggingface_hub import snapshot_download as s; "
                        "print(s(sys.argv[1], revision='main', cache_dir=sys.argv[2],"
                        " local_files_only=True))")
                p = subprocess.run([py, "-c", code, info.repo, str(rhub)],
                                   env={**os.environ, **CLIENT_ENV, "HF_HUB_OFFLINE": "1"},
                                   capture_output=True, text=True)
                assert p.returncode == 0, p.stderr[-3000:]
                _check_snapshot(Path(p.stdout.strip().splitlines()[-1]), info)
                _check_cache_layout(rhub, info)
                print(f"[{mode}] reconcile apply --jobs 8 (+ offline snapshot_download of its"
                      " cache): OK")
                for d in (hub, proj, store, rhub):
                    subprocess.run(["chmod", "-R", "u+w", str(d)], check=False)
                    shutil.rmtree(d, ignore_errors=True)
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(tmp)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


def _reconcile_cmd() -> str:
    """The console script next to this interpreter (a pyenv shim adds ~0.1 s of bash)."""
    exe = Path(sys.executable).parent / "reconcile"
    return str(exe) if exe.exists() else (shutil.which("reconcile") or "reconcile")


def main() -> None:
    if "--serve" in sys.argv:
        tmp = Path(tempfile.mkdtemp(prefix="hfsite-"))
        try:
            site = Site(tmp)
            info = site.add_repo("bench/demo", {"model.safetensors": 64 << 20,
                                                "config.json": b'{"model_type": "bert"}'})
            with site.serve() as urls:
                print(f"HF_ENDPOINT={urls.direct} (LFS served 200) or {urls.redirect} (LFS 302 →"
                      f" CDN)  repo {info.repo}  commit {info.sha}  (Ctrl-C stops)")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    self_check()


if __name__ == "__main__":
    main()
