"""Real local servers for tests: start on a free port on 127.0.0.1, wait, stop."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def nginx_binary() -> str | None:
    return shutil.which("nginx") or (
        "/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)


@contextmanager
def nginx(root: Path, work: Path, extra: str = "") -> Iterator[str]:
    """Debian's nginx serving ``root`` statically (ETag, Range, If-Range); yields its URL."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    conf = work / "nginx.conf"
    conf.write_text(f"""
daemon off;
pid {work}/nginx.pid;
error_log {work}/error.log;
user root;
worker_processes 1;
events {{ worker_connections 64; }}
http {{
  access_log {work}/access.log;
  client_body_temp_path {work}/body; proxy_temp_path {work}/proxy;
  fastcgi_temp_path {work}/fcgi; uwsgi_temp_path {work}/uwsgi; scgi_temp_path {work}/scgi;
  default_type application/octet-stream;
  server {{
    listen 127.0.0.1:{port};
    root {root};
    {extra}
  }}
}}
""")
    with run_nginx(conf, work, port) as url:
        yield url


@contextmanager
def run_nginx(conf: Path, work: Path, port: int) -> Iterator[str]:
    """Run nginx in the foreground on a written config until the block ends."""
    binary = nginx_binary()
    if binary is None:
        raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
    proc = subprocess.Popen([binary, "-c", str(conf), "-p", str(work)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def access_log(work: Path) -> list[str]:
    p = work / "access.log"
    return p.read_text().splitlines() if p.exists() else []


def olah_cli() -> str | None:
    """olah (a real HF mirror server) lives in its own venv: it pins its own huggingface_hub."""
    import os

    for cand in (os.environ.get("OLAH_CLI"), str(Path(__file__).resolve().parent.parent
                                                  / ".venv-olah" / "bin" / "olah-cli")):
        if cand and Path(cand).exists():
            return cand
    return None


def git_lfs_repo(path: Path, files: dict[str, bytes], lfs_globs: list[str]) -> str:
    """A non-bare git repo with LFS objects in .git/lfs/objects (what olah's mirrors serve)."""
    path.mkdir(parents=True)
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(path.parent), "PATH": __import__("os").environ["PATH"]}

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=path, env=env, check=True,
                              capture_output=True, text=True).stdout.strip()

    git("init", "-q", "-b", "main")
    git("lfs", "install", "--local")
    for g in lfs_globs:
        git("lfs", "track", g)
    for rel, data in files.items():
        p = path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    git("add", "-A")
    git("commit", "-q", "-m", "init")
    return git("rev-parse", "HEAD")


@contextmanager
def olah(mirrors: Path, work: Path) -> Iterator[str]:
    cli = olah_cli()
    if cli is None:
        raise RuntimeError("olah is not installed (.ci/run puts it in .venv-olah)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    (work / "repos").mkdir(exist_ok=True)
    conf = work / "configs.toml"
    conf.write_text(f"""
[basic]
host = "127.0.0.1"
port = {port}
repos-path = "{work / 'repos'}"
mirror-netloc = "127.0.0.1:{port}"
mirror-lfs-netloc = "127.0.0.1:{port}"
mirrors-path = ["{mirrors}"]
[accessibility]
offline = true
""")
    proc = subprocess.Popen([cli, "-c", str(conf)], cwd=work, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port, timeout=30)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@contextmanager
def tinyproxy(work: Path) -> Iterator[tuple[str, Path]]:
    """Debian's tinyproxy, an HTTP forward proxy; yields (its URL, its log file)."""
    binary = shutil.which("tinyproxy")
    if binary is None:
        raise RuntimeError("tinyproxy is not installed (apt-get install tinyproxy)")
    port = free_port()
    work.mkdir(parents=True, exist_ok=True)
    log = work / "tinyproxy.log"
    conf = work / "tinyproxy.conf"
    conf.write_text(f"Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\n"
                    f"LogFile \"{log}\"\nLogLevel Info\nPidFile \"{work}/tp.pid\"\nMaxClients 50\n")
    proc = subprocess.Popen([binary, "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=10)
