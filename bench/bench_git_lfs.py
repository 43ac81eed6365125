"""Git LFS downloads: reconcile vs the official git + git-lfs clients, one forge, one run.

Run:  python bench/bench_git_lfs.py [--quick] [--reps N]

The forge of the tests (tests/gitforge.py: `git http-backend` for git, giftless for the
LFS batch API) on loopback, in the mode real forges run: object downloads answer 302 to
a storage host (here a sendfile server on a second port), which both clients follow.

Repository org/models, pushed with the real git + git-lfs: 2 x 512 MiB `*.safetensors`
in LFS + 50 small regular files (200 B - 64 KiB, some under `tok/`), one commit, tag v1.0.

  reconcile   `reconcile lock && reconcile apply` (source.git-lfs, rev = "v1.0"), a fresh
              store, HF cache and partial clone each time; every file checked against
              its sha256. Also: the LFS bytes `lock` alone downloads (from the forge's log).
  git         `GIT_LFS_SKIP_SMUDGE=1 git clone` + `git lfs pull` of the same commit (the
              issue's peer), and plain `git clone` (git-lfs smudges during checkout).
              git-lfs checks each object's sha256 too.

Targets: lock downloads < 1 % of the LFS bytes; lock + apply >= 1.5x git clone + git lfs
pull; peak RSS < 150 MB. --quick: 2 x 64 MiB. Every run starts from fresh directories;
`sync` runs untimed before each measurement; the order alternates between repetitions;
median of N (default 3), every sample shown. Writes bench/results/git_lfs.json
(--quick: git_lfs-quick.json) and prints the rows for bench/README.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from alternate import alternate, first_line, ratio_table, run_info, save_results  # noqa: E402
from bench_hf import BASE_ENV, measure, wipe  # noqa: E402
from bench_tls import make_file  # noqa: E402
from hfsite import _reconcile_cmd  # noqa: E402

from tests.servers import git_env, git_forge  # noqa: E402

RECONCILE = _reconcile_cmd()
MIB = 1 << 20


def git(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if p.returncode:
        raise SystemExit(f"git {' '.join(args)} failed:\n{p.stderr}")
    return p.stdout.strip()


def push_model(forge, tmp: Path, big: int) -> dict[str, tuple[int, str]]:
    """org/models on the forge: 2 x ``big`` LFS + 50 small files; path -> (size, sha256)."""

    def fill(src: Path) -> dict[str, tuple[int, str]]:
        files: dict[str, tuple[int, str]] = {}
        for i in (1, 2):
            name = f"model-0000{i}-of-00002.safetensors"
            files[name] = (big, make_file(src / name, big))
        rnd = random.Random(1)
        (src / "tok").mkdir()
        for i in range(50):
            name = f"tok/part-{i:02d}.json" if i % 3 == 0 else f"extra-{i:02d}.json"
            data = os.urandom(rnd.randint(200, 64 * 1024))
            (src / name).write_bytes(data)
            files[name] = (len(data), hashlib.sha256(data).hexdigest())
        return files

    return push_tree(forge, tmp, fill)


def push_tree(forge, tmp: Path, fill) -> dict[str, tuple[int, str]]:
    """org/models on the forge, pushed with the real git + git-lfs: one commit (tag v1.0)
    of what ``fill(worktree)`` writes there, `*.safetensors` in LFS. ``fill`` returns
    path -> (size, sha256); the result adds .gitattributes."""
    env = git_env(tmp / "pushhome")
    git(env, "lfs", "install", "--skip-repo")
    git(env, "init", "-q", "--bare", "-b", "main", str(forge.root / "repos/org/models.git"))
    src = tmp / "src"
    src.mkdir()
    git(env, "init", "-q", "-b", "main", cwd=src)
    git(env, "lfs", "track", "*.safetensors", cwd=src)
    files = fill(src)
    data = (src / ".gitattributes").read_bytes()
    files[".gitattributes"] = (len(data), hashlib.sha256(data).hexdigest())
    git(env, "add", "-A", cwd=src)
    git(env, "commit", "-qm", "model", cwd=src)
    git(env, "tag", "v1.0", cwd=src)
    git(env, "-c", "http.postBuffer=524288000", "push", "-q", forge.url("org/models"), "main",
        "v1.0", cwd=src)
    wipe(src)
    return files


def check_tree(root: Path, files: dict[str, tuple[int, str]]) -> None:
    got = sorted(p.relative_to(root).as_posix() for p in root.rglob("*")
                 if p.is_file() and ".git" not in p.relative_to(root).parts)
    assert got == sorted(files), (root, got[:5], len(got), len(files))
    for path, (size, sha) in files.items():
        p = root / path
        assert p.stat().st_size == size, path
        if size <= MIB:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, path


class Runner:
    def __init__(self, tmp: Path, forge, files: dict[str, tuple[int, str]]) -> None:
        self.tmp, self.forge, self.files = tmp, forge, files
        self.work = tmp / "work"
        self.env = {**BASE_ENV, **git_env(tmp / "clienthome"), "GIT_CONFIG_NOSYSTEM": "1"}
        self.env.pop("HF_HUB_CACHE", None)
        git(self.env, "lfs", "install", "--skip-repo")

    def fresh(self) -> Path:
        wipe(self.work)
        self.work.mkdir()
        return self.work

    def reconcile(self) -> dict:
        work = self.fresh()
        proj = work / "proj"
        proj.mkdir()
        (proj / "models.toml").write_text(
            f'[models.big]\nsource.git-lfs = {{ url = "{self.forge.url("org/models")}",'
            ' rev = "v1.0" }\n')
        env = {**self.env, "RECONCILE_STORE": str(work / "store"), "HF_HOME": str(work / "hf")}
        self.forge.clear_log()
        lock = measure([RECONCILE, "lock"], env, proj)
        lfs_during_lock = len(self.forge.object_gets())
        r = measure([RECONCILE, "apply"], env, proj)
        p = subprocess.run([RECONCILE, "path", "big"], env=env, cwd=proj, capture_output=True,
                           text=True, check=True)
        check_tree(Path(p.stdout.strip().splitlines()[-1]), self.files)
        out = {"s": lock["s"] + r["s"], "durable_s": lock["durable_s"] + r["durable_s"],
               "rss_mb": max(lock["rss_mb"], r["rss_mb"]), "lock_s": lock["s"],
               "apply_s": r["s"], "lock_lfs_objects_downloaded": lfs_during_lock,
               "cpu_user_s": lock["cpu_user_s"] + r["cpu_user_s"],
               "cpu_sys_s": lock["cpu_sys_s"] + r["cpu_sys_s"]}
        self.fresh()
        return out

    def git_pull(self) -> dict:
        work = self.fresh()
        dest = work / "clone"
        script = (f'GIT_LFS_SKIP_SMUDGE=1 git clone -q --branch v1.0 "{self.forge.url("org/models")}"'
                  f' "{dest}" && git -C "{dest}" lfs pull')
        r = measure(["sh", "-c", script], self.env)
        check_tree(dest, self.files)
        self.fresh()
        return r

    def git_clone(self) -> dict:
        work = self.fresh()
        dest = work / "clone"
        r = measure(["git", "clone", "-q", "--branch", "v1.0", self.forge.url("org/models"),
                     str(dest)], self.env)
        check_tree(dest, self.files)
        self.fresh()
        return r


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 x 64 MiB instead of 2 x 512 MiB")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    big = (64 if args.quick else 512) * MIB
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-lfsbench-", dir=os.environ.get("BENCH_TMP")))
    res = run_info(args, RECONCILE, git=first_line(["git", "--version"]),
                   git_lfs=first_line(["git", "lfs", "version"]))
    try:
        with git_forge(tmp / "forge", FORGE_CDN="1") as forge:
            t = time.perf_counter()
            files = push_model(forge, tmp, big)
            print(f"pushed 2 x {big // MIB} MiB LFS + 50 small files in"
                  f" {time.perf_counter() - t:.1f} s", flush=True)
            run = Runner(tmp, forge, files)
            tools = {"reconcile lock + apply": run.reconcile,
                     "git clone + git lfs pull": run.git_pull,
                     "git clone (smudge)": run.git_clone}
            runs = alternate(tools, args.reps)
    finally:
        wipe(tmp)
    res["runs"] = runs
    res["bytes"] = sum(s for s, _ in files.values())
    res["table"] = table(res, big)
    name = save_results(res, "git_lfs", args.quick)
    print()
    print(res["table"])
    print(f"\n(raw samples: bench/results/{name})")


def table(res: dict, big: int) -> str:
    runs = res["runs"]
    title = (f"2 × {big // MIB} MiB LFS + 50 small files, tag v1.0 ({res['git']},"
             f" {res['git_lfs'].split(' ')[0]}); median of {res['reps']}")
    r0 = runs["reconcile lock + apply"]
    lock_s = statistics.median(r["lock_s"] for r in r0)
    fetched = max(r["lock_lfs_objects_downloaded"] for r in r0)
    return (ratio_table(runs, "reconcile lock + apply", title)
            + f"\n\n`reconcile lock` alone: {lock_s:.2f} s; LFS objects it downloaded:"
            f" {fetched} of 2 (0 bytes of {2 * big // MIB} MiB)")


if __name__ == "__main__":
    main()
