"""Growth: lock and apply against the number of files and of models, one run.

Run:  python bench/bench_scale.py [--quick] [--reps N]

  A  one mock model of 300, 1,000, 3,000 and 10,000 small files (64-1,084 bytes, in
     directories of 500); B  100 and 1,000 mock models of 3 small files each. For each:
     `reconcile lock` (fresh), cold `reconcile apply` (fresh store and HF cache),
     no-op `reconcile apply`; validation off. The per-file cost of a cold apply at the
     largest size must stay within 1.3x of the smallest's; cold apply of 6,000 files
     (A, interpolated from 3,000/10,000 is not allowed: a 6,000 row is run) and of
     1,000 models x 3 files <= 2 s.
  C  `reconcile lock` of a Hub repo of 2,000 small git files (the nginx stand-in of
     bench/hfsite.py; lock downloads each to learn its sha256) vs huggingface_hub's
     `snapshot_download` of the same repo, fresh caches, same run: >= 1.0x.

--quick: A up to 3,000 files, B 100 models, C 500 files. Median of N (default 3).
--settle S: wait S seconds after a sync first (default 360: inodes freed in the last
6 minutes slow every create on this disk, see retire()); --sizes/--models/--hub-files
pick cases.
Writes bench/results/scale.json (--quick: scale-quick.json).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from alternate import save_results  # noqa: E402
from bench_hf import BASE_ENV, HF_CODE, measure, wipe  # noqa: E402
from hfsite import Site, _reconcile_cmd  # noqa: E402

RECONCILE = _reconcile_cmd()
PY = sys.executable


def one_model(n: int) -> str:
    files = ", ".join(f'"d{i // 500:02d}/f{i:05d}.bin"' for i in range(n))
    return f'[models.big]\nsource.mock = {{ model = "big", files = [{files}] }}\n'


def many_models(n: int) -> str:
    return "".join(f'[models.m{i:04d}]\nsource.mock = {{ model = "m{i:04d}",'
                   ' files = ["config.json", "a.bin", "b.bin"] }\n' for i in range(n))


def retire(path: Path) -> None:
    """Move a finished tree aside; everything is deleted once, after the last measurement.

    This disk is ext4 without a journal, and there a new inode skips every inode freed
    in the last 60 s (360 s while its inode-table block is dirty, and creating inodes
    beside them dirties it): creating files right after deleting tens of thousands
    costs 0.3-0.7 ms each instead of ~0.03 ms, in the kernel (``recently_deleted`` in
    ext4's ialloc.c), whoever creates them. A cold
    apply measured just after deleting the previous store timed that scan, not the tool;
    a user's first apply on a machine meets no such scan.
    """
    if path.exists():
        trash = path.parent / "trash"
        trash.mkdir(exist_ok=True)
        path.rename(trash / f"{path.name}-{len(list(trash.iterdir()))}")


def run_case(tmp: Path, toml: str, reps: int) -> dict:
    proj = tmp / "proj"
    work = tmp / "work"
    retire(proj)
    proj.mkdir()
    (proj / "models.toml").write_text(toml)
    env = {**BASE_ENV, "RECONCILE_STORE": str(work / "store"), "HF_HUB_CACHE": str(work / "hub"),
           "HF_HOME": str(work / "hf"), "RECONCILE_VALIDATION": "none"}
    out: dict[str, list[float]] = {"lock": [], "cold": [], "noop": [], "cold_elsewhere": []}
    rss = 0.0
    kept = tmp / "vouched"
    for _ in range(reps):
        retire(work)
        (proj / "models.lock").unlink(missing_ok=True)
        r = measure([RECONCILE, "lock"], env, proj)
        out["lock"].append(r["s"])
        # cold: an empty store but for the records `lock` leaves of what the source said
        # (state/vouched: a lock made on this machine); cold_elsewhere: none either, so
        # every model is asked again at its pin first (a lock from a pull request)
        retire(kept)
        shutil.copytree(work / "store" / "state" / "vouched", kept)
        retire(work)
        shutil.copytree(kept, work / "store" / "state" / "vouched")
        r = measure([RECONCILE, "apply", "--locked"], env, proj)
        out["cold"].append(r["s"])
        rss = max(rss, r["rss_mb"])
        out["noop"].append(measure([RECONCILE, "apply", "--locked"], env, proj)["s"])
        retire(work)
        r = measure([RECONCILE, "apply", "--locked"], env, proj)
        out["cold_elsewhere"].append(r["s"])
        rss = max(rss, r["rss_mb"])
    retire(work)
    return {**{k: statistics.median(v) for k, v in out.items()},
            "samples": out, "rss_mb": rss}


def disk_floor(tmp: Path, n: int) -> float:
    """Seconds this disk takes for n small files and n symlinks beside them as long as a
    snapshot's (``../../blobs/<64 hex>``: what a store plus an HF cache needs at the
    least, one inode each), then a sync, in this run and in its conditions."""
    import time

    d = tmp / "floor"
    retire(d)
    d.mkdir()
    os.sync()
    t = time.perf_counter()
    for i in range(n):
        sub = d / f"d{i // 500:02d}"
        if i % 500 == 0:
            sub.mkdir()
        with open(sub / f"f{i:05d}", "wb") as f:
            f.write(b"x" * 500)
        os.symlink(f"../../blobs/{i:064x}", sub / f"l{i:05d}")
    os.sync()
    took = time.perf_counter() - t
    retire(d)
    return took


def run_hub(tmp: Path, n: int, reps: int) -> dict:
    site = Site(tmp / "site")
    files = {f"shard/{i:05d}.json": (b'{"i": %d, "pad": "' % i) + b"x" * (i % 700) + b'"}'
             for i in range(n)}
    info = site.add_repo("bench/many", files)
    res: dict[str, list[float]] = {"reconcile lock": [], "snapshot_download": []}
    with site.serve() as ep:
        url = ep.direct
        proj = tmp / "hubproj"
        proj.mkdir(exist_ok=True)
        (proj / "models.toml").write_text('[models.many]\nsource.huggingface = { repo ='
                                          ' "bench/many" }\n')
        for i in range(reps):
            for tool in (list(res) if i % 2 == 0 else list(res)[::-1]):
                work = tmp / "hubwork"
                retire(work)
                work.mkdir()
                env = {**BASE_ENV, "HF_ENDPOINT": url, "RECONCILE_STORE": str(work / "store"),
                       "HF_HUB_CACHE": str(work / "hub"), "RECONCILE_VALIDATION": "none"}
                if tool == "reconcile lock":
                    (proj / "models.lock").unlink(missing_ok=True)
                    r = measure([RECONCILE, "lock"], env, proj)
                else:
                    r = measure([PY, "-c", HF_CODE, info.repo, str(work / "hub"), url], env)
                res[tool].append(r["s"])
                print(f"  C {tool:<20} {r['s']:.2f} s", flush=True)
    return {k: statistics.median(v) for k, v in res.items()} | {"samples": res, "files": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--settle", type=float, default=360.0,
                    help="seconds to wait after a sync before measuring, so that inodes"
                    " freed before this run (tests, an earlier benchmark) are not"
                    " 'recently deleted' any more (see retire); 0 skips the wait")
    ap.add_argument("--sizes", type=int, nargs="*", help="A: files per model (default"
                    " 300 1000 3000 6000 10000)")
    ap.add_argument("--models", type=int, nargs="*", help="B: models (default 100 1000)")
    ap.add_argument("--hub-files", type=int, help="C: files (default 2000; 0 skips C)")
    args = ap.parse_args()
    if args.settle:
        import time

        os.sync()
        print(f"settling {args.settle:.0f} s (see retire())", flush=True)
        time.sleep(args.settle)
    sizes = args.sizes or ([300, 1000, 3000] if args.quick else [300, 1000, 3000, 6000, 10000])
    models = args.models or ([100] if args.quick else [100, 1000])
    hub_files = args.hub_files if args.hub_files is not None else 500 if args.quick else 2000
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-scale-", dir=os.environ.get("BENCH_TMP")))
    res: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "quick": args.quick, "reps": args.reps, "cpus": os.cpu_count(),
                 "python": platform.python_version(),
                 "reconcile_git": subprocess.run(["git", "describe", "--always", "--dirty"],
                                                 cwd=HERE.parent, capture_output=True,
                                                 text=True).stdout.strip(),
                 "A": {}, "B": {}}
    try:
        for n in sizes:
            r = run_case(tmp, one_model(n), args.reps)
            r["floor"] = disk_floor(tmp, n)
            res["A"][n] = r
            print(f"A {n:>6} files: lock {r['lock']:.2f} s  cold apply {r['cold']:.2f} s"
                  f" ({r['cold'] / n * 1000:.2f} ms/file)  no-op {r['noop']:.2f} s"
                  f"  RSS {r['rss_mb']:.0f} MB  (disk floor {r['floor']:.2f} s)", flush=True)
        for n in models:
            r = run_case(tmp, many_models(n), args.reps)
            res["B"][n] = r
            print(f"B {n:>6} models: lock {r['lock']:.2f} s  cold apply {r['cold']:.2f} s"
                  f"  no-op {r['noop']:.2f} s  RSS {r['rss_mb']:.0f} MB", flush=True)
        if hub_files:
            res["C"] = run_hub(tmp, hub_files, args.reps)
    finally:
        wipe(tmp)
    res["table"] = table(res)
    save_results(res, "scale", args.quick)
    print()
    print(res["table"])


def table(res: dict) -> str:
    lines = ["| work | lock | cold apply | per file (cold) | no-op apply | peak RSS |"
             " disk floor |", "|---|---|---|---|---|---|---|"]
    for n, r in res["A"].items():
        lines.append(f"| 1 model × {int(n):,} files | {r['lock']:.2f} s | {r['cold']:.2f} s |"
                     f" {r['cold'] / int(n) * 1000:.2f} ms | {r['noop']:.2f} s |"
                     f" {r['rss_mb']:.0f} MB | {r['floor']:.2f} s |")
    for n, r in res["B"].items():
        lines.append(f"| {int(n):,} models × 3 files | {r['lock']:.2f} s | {r['cold']:.2f} s |"
                     f" {r['cold'] / (3 * int(n)) * 1000:.2f} ms | {r['noop']:.2f} s |"
                     f" {r['rss_mb']:.0f} MB | |")
    a = res["A"]
    if len(a) > 1:
        small, large = min(a, key=int), max(a, key=int)
        growth = (a[large]["cold"] / int(large)) / (a[small]["cold"] / int(small))
        lines += ["", f"Per-file cost of a cold apply at {int(large):,} files: {growth:.2f}×"
                  f" that at {int(small):,} (target ≤ 1.3×)."]
    if "C" in res:
        c = res["C"]
        lines += [f"Lock of a Hub repo of {c['files']:,} small files: reconcile"
                  f" {c['reconcile lock']:.2f} s vs snapshot_download"
                  f" {c['snapshot_download']:.2f} s"
                  f" ({c['snapshot_download'] / c['reconcile lock']:.2f}×, target ≥ 1.0×)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
