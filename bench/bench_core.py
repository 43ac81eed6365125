"""Core benchmarks: `lock --check`, no-op `apply`, `hash` / `hash --nar` throughput.

Run:  python bench/bench_core.py [--quick]
Each figure is measured against the tool a user would otherwise reach for, in the
same run on the same files, and printed as a ratio (>1 means reconcile is faster).
Results go to bench/results/core.json; copy the table into bench/README.md.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable
ENV = {**os.environ, "RECONCILE_VALIDATION": "none", "HF_HUB_DISABLE_TELEMETRY": "1"}


def timed(cmd: list[str], env: dict[str, str] | None = None, runs: int = 5, **kw) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        subprocess.run(cmd, check=True, env=env or ENV, stdout=subprocess.DEVNULL, **kw)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def manifest(n_models: int, n_files: int) -> str:
    out = []
    for i in range(n_models):
        files = ", ".join(f'"d{j % 3}/f{j}.txt"' for j in range(n_files))
        out.append(f'[models.m{i:03d}]\nsource.mock = {{ org = "bench", model = "m{i:03d}",'
                   f' files = [{files}] }}\n')
    return "\n".join(out)


def bench_lock_check(work: Path) -> dict:
    proj = work / "lockcheck"
    proj.mkdir()
    (proj / "models.toml").write_text(manifest(300, 3))
    env = {**ENV, "RECONCILE_STORE": str(work / "store-lc"), "HF_HUB_CACHE": str(work / "hub-lc")}
    subprocess.run([PY, "-m", "reconcile", "-f", str(proj / "models.toml"), "lock"], check=True,
                   env=env, stdout=subprocess.DEVNULL)
    t = timed([PY, "-m", "reconcile", "-f", str(proj / "models.toml"), "lock", "--check"], env)
    base = timed([PY, "-c", "pass"], env)
    return {"work": "lock --check, 300 models", "reconcile_s": t, "python -c pass_s": base,
            "target_s": 0.4}


def bench_noop_apply(work: Path) -> dict:
    proj = work / "noop"
    proj.mkdir()
    (proj / "models.toml").write_text(manifest(100, 30))
    env = {**ENV, "RECONCILE_STORE": str(work / "store-noop"), "HF_HUB_CACHE": str(work / "hub-noop")}
    cmd = [PY, "-m", "reconcile", "-f", str(proj / "models.toml"), "apply"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    t = timed(cmd, env)
    # the peer: huggingface_hub resolving the same 100 snapshots from its cache offline
    peer = ("from huggingface_hub import snapshot_download\n"
            "for i in range(100): snapshot_download(f'bench/m{i:03d}', local_files_only=True)\n")
    p = timed([PY, "-c", peer], {**env, "HF_HUB_OFFLINE": "1"})
    return {"work": "no-op apply, 100 models x 30 files", "reconcile_s": t,
            "huggingface_hub offline snapshot_download x100_s": p, "ratio": p / t,
            "target_s": 1.0, "anchor_dvc_checkout_s": 0.61}


def make_tree(root: Path, total: int) -> None:
    root.mkdir()
    big = total // 4
    block = os.urandom(1 << 20)
    for i in range(4):
        with open(root / f"part-{i}.bin", "wb") as f:
            for _ in range(big >> 20):
                f.write(block)
    (root / "small").mkdir()
    for i in range(50):
        (root / "small" / f"{i}.json").write_text(json.dumps({"i": i}))


def bench_hash(work: Path, total: int) -> list[dict]:
    tree = work / "tree"
    make_tree(tree, total)
    files = sorted(str(p) for p in tree.rglob("*") if p.is_file())
    # warm the page cache once so every tool reads from memory
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    gb = total / 1e9
    rows = []
    ours = timed([PY, "-m", "reconcile", "hash", str(tree)], runs=3)
    sha = timed(["sha256sum", *files], runs=3)
    row = {"work": f"hash of a {total >> 20} MiB tree", "reconcile_GBps": gb / ours,
           "sha256sum_GBps": gb / sha, "ratio_vs_sha256sum": sha / ours}
    if shutil.which("nix-hash"):
        flat = timed(["nix-hash", "--type", "sha256", "--flat", *files[:4]], runs=3)
        row["nix-hash --flat_GBps"] = gb / flat
        row["ratio_vs_nix-hash_flat"] = flat / ours
    rows.append(row)
    if shutil.which("nix"):
        nar = timed([PY, "-m", "reconcile", "hash", "--nar", str(tree)], runs=3)
        nix = timed(["nix", "--extra-experimental-features", "nix-command", "hash", "path",
                     str(tree)], runs=3)
        rows.append({"work": f"NAR hash of a {total >> 20} MiB tree",
                     "reconcile --nar_GBps": gb / nar, "nix hash path_GBps": gb / nix,
                     "ratio_vs_nix_hash_path": nix / nar})
    return rows


def bench_scan(work: Path) -> dict:
    """modelscan over a 1 GiB safetensors model: the header is read, the weights are not."""
    import struct

    model = work / "scanmodel"
    model.mkdir()
    n = 256 * 1024 * 1024  # 1 GiB of F32
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    block = os.urandom(1 << 20)
    with open(model / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(header)) + header)
        for _ in range(4 * n >> 20):
            f.write(block)
    (model / "config.json").write_text('{"model_type": "bert"}')
    os.sync()
    t = timed([PY, "-m", "reconcile", "validate", str(model), "--validator", "modelscan"], runs=3)
    base = timed([PY, "-m", "reconcile", "validate", str(model / "config.json").rsplit("/", 1)[0],
                  "--validator", "validConfigJson"], runs=3)
    cat = timed(["sha256sum", str(model / "model.safetensors")], runs=1)
    return {"work": "modelscan of a 1 GiB safetensors model", "reconcile validate_s": t,
            "same command, validConfigJson only_s": base, "sha256sum of the file_s": cat}


def main() -> None:
    quick = "--quick" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    try:
        results = [bench_lock_check(work), bench_noop_apply(work), bench_scan(work),
                   *bench_hash(work, (256 if quick else 1024) << 20)]
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "core.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()}))


if __name__ == "__main__":
    main()
