"""A static Hugging Face-compatible site on nginx, so the server is never the bottleneck.

nginx serves the revision and tree JSON as files and each repo file under
/{repo}/resolve/{sha}/{path} with the Hub's headers (X-Repo-Commit, ETag = git blob
id, X-Linked-Etag/X-Linked-Size = sha256/size for LFS files) set per file through
`map` blocks. Python's http.server or olah top out around 40-45 MB/s (notes hf-hub.md
§4b); nginx serves at memory speed, so the ratio measures the clients.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.servers import free_port, nginx_binary, run_nginx


def git_oid_file(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_big(path: Path, size: int, seed: int) -> None:
    """A large file quickly: a random 1 MiB block, varied per MiB so blocks differ."""
    block = bytearray(os.urandom(1 << 20))
    with open(path, "wb") as f:
        left, i = size, 0
        while left:
            block[:8] = (seed * 1_000_003 + i).to_bytes(8, "little")
            n = min(left, len(block))
            f.write(block[:n])
            left -= n
            i += 1


def build_repo(root: Path, repo: str, files: dict[str, int | bytes], lfs_min: int = 10 << 20
               ) -> str:
    """Write a repo's files and API JSON under root; returns its commit sha."""
    fdir = root / "files" / repo
    entries, siblings, headers = [], [], {}
    sha = hashlib.sha1(repo.encode() + json.dumps(sorted(files)).encode()).hexdigest()
    for i, (path, spec) in enumerate(sorted(files.items())):
        p = fdir / path
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(spec, bytes):
            p.write_bytes(spec)
        else:
            write_big(p, spec, i)
        size = p.stat().st_size
        e = {"type": "file", "path": path, "size": size}
        h = {"etag": None, "linked": None}
        if size >= lfs_min:
            digest = sha256_file(p)
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {size}\n"
            e["oid"] = hashlib.sha1(b"blob %d\0" % len(pointer) + pointer.encode()).hexdigest()
            e["lfs"] = {"oid": digest, "size": size, "pointerSize": len(pointer)}
            h = {"etag": e["oid"], "linked": digest, "size": size}
        else:
            e["oid"] = git_oid_file(p)
            h["etag"] = e["oid"]
        headers[f"/{repo}/resolve/{sha}/{path}"] = h
        entries.append(e)
        siblings.append({"rfilename": path})
    api = root / "api" / repo
    (api / "revision").mkdir(parents=True, exist_ok=True)
    (api / "tree").mkdir(parents=True, exist_ok=True)
    (api / "revision" / "main.json").write_text(json.dumps({"id": repo, "sha": sha,
                                                            "siblings": siblings}))
    (api / "tree" / f"{sha}.json").write_text(json.dumps(entries))
    (root / "headers").mkdir(exist_ok=True)
    (root / "headers" / (repo.replace("/", "--") + ".json")).write_text(json.dumps(headers))
    return sha


def _maps(root: Path) -> str:
    etag, linked, lsize = [], [], []
    for hf in sorted((root / "headers").glob("*.json")):
        for uri, h in json.loads(hf.read_text()).items():
            etag.append(f'  "{uri}" \'"{h["etag"]}"\';')
            if h.get("linked"):
                linked.append(f'  "{uri}" \'"{h["linked"]}"\';')
                lsize.append(f'  "{uri}" "{h["size"]}";')
    def block(var: str, rows: list[str]) -> str:
        return f"map $uri ${var} {{\n  default \"\";\n" + "\n".join(rows) + "\n}\n"

    return block("hf_etag", etag) + block("hf_linked_etag", linked) + block("hf_linked_size", lsize)


@contextmanager
def serve(root: Path):
    """nginx in the foreground on a free port; yields the endpoint URL."""
    binary = nginx_binary()
    if binary is None:
        raise SystemExit("nginx is not installed: apt-get install nginx-light")
    port = free_port()
    work = root / "nginx"
    work.mkdir(exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
user root;
worker_processes 2;
pid {work}/nginx.pid;
error_log {work}/error.log;
events {{ worker_connections 256; }}
http {{
  access_log off;
  sendfile on; tcp_nopush on;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  types {{ }}
  default_type application/octet-stream;
  etag off;
  map_hash_max_size 65536; map_hash_bucket_size 256;
{_maps(root)}
  server {{
    listen 127.0.0.1:{port};
    location ~ "^/api/models/(?<repo>[^/]+/[^/]+)/revision/(?<rev>[^/]+)$" {{
      default_type application/json; alias {root}/api/$repo/revision/$rev.json; }}
    location ~ "^/api/models/(?<repo>[^/]+/[^/]+)/tree/(?<sha>[0-9a-f]{{40}})/?$" {{
      default_type application/json; alias {root}/api/$repo/tree/$sha.json; }}
    location ~ "^/(?<repo>[^/]+/[^/]+)/resolve/(?<sha>[0-9a-f]{{40}})/(?<fpath>.+)$" {{
      alias {root}/files/$repo/$fpath;
      add_header X-Repo-Commit $sha always;
      add_header ETag $hf_etag always;
      add_header X-Linked-Etag $hf_linked_etag always;
      add_header X-Linked-Size $hf_linked_size always;
    }}
  }}
}}
""")
    with run_nginx(conf, work, port) as url:
        yield url
