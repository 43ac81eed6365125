"""Hugging Face downloads: reconcile vs huggingface_hub and curl, against one nginx site.

Run:  python bench/bench_hf.py [--quick]
  repo A   1 GiB of LFS weights (2 x 512 MiB) + 50 small files:
           `reconcile apply` (lock included) vs `huggingface_hub.snapshot_download`
  file B   one 2 GiB file: `reconcile apply` with models.lock in place (the committed-lock
           case; lock time reported apart) vs `curl -o` and `curl -o && sha256sum -c`
  file C   one 5 GB file: peak RSS of `reconcile apply`
Fresh store and caches for every run, median of 3, tools alternate. reconcile also
verifies every sha256 while downloading; huggingface_hub verifies none.
Results: bench/results/hf.json (and a markdown table on stdout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hfsite import build_repo, serve

PY = sys.executable
BASE_ENV = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HUB_DISABLE_XET": "1",
            "RECONCILE_VALIDATION": "none", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}


def run_timed(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, int]:
    """Wall time and peak RSS (KiB) of one command, through GNU time.

    Dirty pages of earlier runs are flushed first (untimed): otherwise one tool pays
    for the previous tool's writeback and the ratio measures the disk, not the client.
    """
    os.sync()
    t = time.perf_counter()
    p = subprocess.run(["/usr/bin/time", "-f", "RSS=%M", *cmd], env=env, cwd=cwd,
                       capture_output=True, text=True)
    dt = time.perf_counter() - t
    if p.returncode:
        raise SystemExit(f"{cmd} failed:\n{p.stdout}\n{p.stderr}")
    rss = int(re.findall(r"RSS=(\d+)", p.stderr)[-1])
    return dt, rss


def reconcile_run(url: str, repo: str, work: Path, *, lock_first: bool = False) -> dict:
    proj = work / "proj"
    shutil.rmtree(work, ignore_errors=True)
    proj.mkdir(parents=True)
    (proj / "models.toml").write_text(f'[models.m]\nsource.huggingface = {{ repo = "{repo}" }}\n')
    env = {**BASE_ENV, "HF_ENDPOINT": url, "RECONCILE_STORE": str(work / "store"),
           "HF_HUB_CACHE": str(work / "hub")}
    out = {}
    if lock_first:
        out["lock_s"], _ = run_timed([PY, "-m", "reconcile", "lock"], env, proj)
    out["s"], out["rss_kib"] = run_timed([PY, "-m", "reconcile", "apply", "--jobs", "8"], env, proj)
    subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
    shutil.rmtree(work, ignore_errors=True)
    return out


def hf_run(url: str, repo: str, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    code = ("import sys; from huggingface_hub import snapshot_download as s; "
            "s(sys.argv[1], cache_dir=sys.argv[2], endpoint=sys.argv[3], max_workers=8)")
    dt, rss = run_timed([PY, "-c", code, repo, str(work / "hub"), url], BASE_ENV)
    shutil.rmtree(work, ignore_errors=True)
    return {"s": dt, "rss_kib": rss}


def curl_run(url: str, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    dt, rss = run_timed(["curl", "-sf", "-o", str(work / "out"), url], BASE_ENV)
    shutil.rmtree(work, ignore_errors=True)
    return {"s": dt, "rss_kib": rss}


def curl_verified_run(url: str, work: Path, sha256: str) -> dict:
    """What a user who checks downloads runs: curl, then sha256sum -c."""
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    out = work / "out"
    script = f"curl -sf -o {out} {url} && echo '{sha256}  {out}' | sha256sum -c --quiet"
    dt, rss = run_timed(["sh", "-c", script], BASE_ENV)
    shutil.rmtree(work, ignore_errors=True)
    return {"s": dt, "rss_kib": rss}


def median(rows: list[dict], key: str = "s") -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    quick = "--quick" in sys.argv
    scale = 4 if quick else 1
    root = Path(tempfile.mkdtemp(prefix="reconcile-hfbench-"))
    work = root / "work"
    results = []
    try:
        small = {f"small/{i:02d}.json": json.dumps({"i": i, "pad": "x" * (i * 97)}).encode()
                 for i in range(50)}
        build_repo(root / "site", "bench/repo-a", {
            "model-00001-of-00002.safetensors": (512 << 20) // scale,
            "model-00002-of-00002.safetensors": (512 << 20) // scale,
            "config.json": b'{"model_type": "bert"}', **small})
        sha_b = build_repo(root / "site", "bench/file-b", {"big.bin": (2 << 30) // scale})
        build_repo(root / "site", "bench/file-c", {"huge.bin": (5 * 10**9) // scale})
        with serve(root / "site") as url:
            rec, off = [], []
            for _ in range(3):
                rec.append(reconcile_run(url, "bench/repo-a", work, lock_first=False))
                off.append(hf_run(url, "bench/repo-a", work))
            split = reconcile_run(url, "bench/repo-a", work, lock_first=True)
            results.append({
                "work": f"repo: 2 x {512 // scale} MiB LFS + 51 small files",
                "reconcile apply (lock included) s": median(rec),
                "huggingface_hub snapshot_download s": median(off),
                "ratio (hf / reconcile)": median(off) / median(rec),
                "reconcile lock s / apply s": [split["lock_s"], split["s"]],
                "reconcile peak RSS MB": max(r["rss_kib"] for r in rec) / 1024,
                "huggingface_hub peak RSS MB": max(r["rss_kib"] for r in off) / 1024,
            })
            rb, cb, cv = [], [], []
            big_url = f"{url}/bench/file-b/resolve/{sha_b}/big.bin"
            big_sha = json.loads((root / "site" / "api" / "bench" / "file-b" / "tree"
                                  / f"{sha_b}.json").read_text())[0]["lfs"]["oid"]
            for _ in range(3):
                cb.append(curl_run(big_url, work))
                rb.append(reconcile_run(url, "bench/file-b", work, lock_first=True))
                cv.append(curl_verified_run(big_url, work, big_sha))
            results.append({
                "work": f"one {2048 // scale} MiB file (models.lock already there)",
                "reconcile apply s": median(rb), "reconcile lock s": median(rb, "lock_s"),
                "curl s": median(cb),
                "ratio (curl / reconcile)": median(cb) / median(rb),
                "curl + sha256sum -c s": median(cv),
                "ratio (curl+sha256sum / reconcile)": median(cv) / median(rb),
                "reconcile peak RSS MB": max(r["rss_kib"] for r in rb) / 1024,
            })
            rc = reconcile_run(url, "bench/file-c", work)
            results.append({"work": f"one {5000 // scale} MB file", "reconcile apply s": rc["s"],
                            "reconcile peak RSS MB": rc["rss_kib"] / 1024})
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(root)], check=False)
        shutil.rmtree(root, ignore_errors=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "hf.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
