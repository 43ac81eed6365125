"""Core benchmarks: `lock --check`, no-op `apply`, scanners, `hash` / `hash --nar` throughput.

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
            "target_s": 1.0}


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
    """Every tool hashes exactly the same files, once on one core (taskset) and once on
    all cores (reconcile's thread pool; the peers under `xargs -P`), alternating."""
    tree = work / "tree"
    make_tree(tree, total)
    files = sorted(str(p) for p in tree.rglob("*") if p.is_file())
    listing = work / "files.txt"
    listing.write_text("\n".join(files) + "\n")
    # warm the page cache once so every tool reads from memory
    subprocess.run(["cat", *files], stdout=subprocess.DEVNULL, check=True)
    gb = sum(os.path.getsize(f) for f in files) / 1e9
    cores = os.cpu_count() or 1
    one = ["taskset", "-c", "0"] if shutil.which("taskset") else []
    peers = {"reconcile hash": [PY, "-m", "reconcile", "hash", str(tree)],
             "sha256sum": ["sha256sum", *files]}
    parallel = {"reconcile hash": peers["reconcile hash"],
                "sha256sum": ["sh", "-c", f"xargs -P {cores} -n 1 sha256sum < '{listing}'"]}
    if shutil.which("nix-hash"):
        peers["nix-hash --flat"] = ["nix-hash", "--type", "sha256", "--flat", *files]
        parallel["nix-hash --flat"] = ["sh", "-c", f"xargs -P {cores} -n 1 nix-hash --type"
                                       f" sha256 --flat < '{listing}'"]
    per_core = {name: [] for name in peers}
    all_cores = {name: [] for name in parallel}
    for _ in range(3):  # alternate tools so drift hits them alike
        for name, cmd in peers.items():
            per_core[name].append(timed([*one, *cmd], runs=1))
        for name, cmd in parallel.items():
            all_cores[name].append(timed(cmd, runs=1))
    row = {"work": f"hash of a {total >> 20} MiB tree (4 big + 50 small files), GB/s",
           "cores": cores, "one core (taskset -c 0)": {}, f"all {cores} cores": {}}
    for name, runs in per_core.items():
        row["one core (taskset -c 0)"][name] = gb / statistics.median(runs)
    for name, runs in all_cores.items():
        row[f"all {cores} cores"][name] = gb / statistics.median(runs)
    rows = [row]
    if shutil.which("nix"):
        nar = timed([PY, "-m", "reconcile", "hash", "--nar", str(tree)], runs=3)
        nix = timed(["nix", "--extra-experimental-features", "nix-command", "hash", "path",
                     str(tree)], runs=3)
        rows.append({"work": f"NAR hash of a {total >> 20} MiB tree (one stream, one core"
                     " by its nature)", "reconcile --nar_GBps": gb / nar,
                     "nix hash path_GBps": gb / nix, "ratio_vs_nix_hash_path": nix / nar})
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
            "same command, validConfigJson only_s": base, "sha256sum of the file_s": cat,
            "_model": str(model)}


SCANNERS_VENV = Path(__file__).resolve().parent / ".venv-scanners"


def scanner_peers() -> dict[str, list[str]]:
    """The scanners users run instead, from the package index, in a venv of their own
    (made on first use): modelscan and picklescan."""
    bin_ = SCANNERS_VENV / "bin"
    if not (bin_ / "modelscan").exists() or not (bin_ / "picklescan").exists():
        subprocess.run([PY, "-m", "venv", str(SCANNERS_VENV)], check=True)
        subprocess.run([str(bin_ / "pip"), "install", "-q", "modelscan", "picklescan"],
                       check=True)
    return {"modelscan": [str(bin_ / "modelscan"), "-p"],
            "picklescan": [str(bin_ / "picklescan"), "-p"]}


def make_corpus(root: Path) -> dict[str, bool]:
    """Small models, each in its own directory: name -> should a scanner block it."""
    import gzip
    import io
    import pickle
    import zipfile

    evil0 = b"cposix\nsystem\n(S'true'\ntR."  # protocol 0 GLOBAL + REDUCE
    # STACK_GLOBAL whose operands come back from the memo, as obfuscators write it
    evil4 = (b"\x80\x04\x8c\x08builtins\x94\x8c\x04eval\x94h\x00h\x01\x93"
             b"\x8c\x04True\x85R.")

    def torch_zip(payload: bytes) -> bytes:
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("archive/data.pkl", payload)
            z.writestr("archive/version", "3\n")
        return buf.getvalue()

    corpus = {
        "proto0-os-system/model.pkl": (evil0, True),
        "memo-stack-global/model.pkl": (evil4, True),
        "torch-zip/pytorch_model.bin": (torch_zip(evil0), True),
        "pickle-before-zip/pytorch_model.bin": (evil0 + torch_zip(pickle.dumps({"a": 1})), True),
        "gzip-joblib/model.joblib": (gzip.compress(evil0), True),
        "named-safetensors/model.safetensors": (evil4, True),
    }
    try:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.array([object()], dtype=object), allow_pickle=True)
        head = buf.getvalue()
        cut = head.index(b"\x80")  # the object array's pickle: swap in the payload
        corpus["npy-object/array.npy"] = (head[:cut] + evil4, True)
        buf = io.BytesIO()
        np.save(buf, np.arange(1000, dtype=np.float32))
        corpus["npy-float/array.npy"] = (buf.getvalue(), False)
    except ImportError:
        pass
    try:
        import torch

        buf = io.BytesIO()
        torch.save({"w": torch.zeros(16)}, buf)
        corpus["torch-state-dict/pytorch_model.bin"] = (buf.getvalue(), False)
    except ImportError:
        pass
    header = json.dumps({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}).encode()
    import struct

    corpus["safetensors/model.safetensors"] = (struct.pack("<Q", len(header)) + header
                                               + b"\0" * 16, False)
    out = {}
    for rel, (data, bad) in corpus.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        out[rel.split("/")[0]] = bad
    return out


def bench_scanners(work: Path, model: Path) -> dict:
    """reconcile's modelscan against modelscan and picklescan: time on the 1 GiB model,
    and which of a corpus of known-bad and known-good models each blocks."""
    peers = scanner_peers()
    ours = [PY, "-m", "reconcile", "validate", "--validator", "modelscan"]
    tools = {"reconcile": lambda d: [*ours[:4], str(d), *ours[4:]], **{
        name: (lambda d, c=cmd: [*c, str(d)]) for name, cmd in peers.items()}}
    times = {name: [] for name in tools}
    for _ in range(3):
        for name, cmd in tools.items():
            t = time.perf_counter()
            subprocess.run(cmd(model), env=ENV, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            times[name].append(time.perf_counter() - t)
    corpus = work / "corpus"
    expected = make_corpus(corpus)
    # blocked = exit 1, each tool's "found a problem" (modelscan exits 3 when it skipped
    # every file, picklescan 2 on a scan error: neither stops a pipeline that checks for 1)
    caught: dict[str, dict[str, bool]] = {name: {} for name in tools}
    codes: dict[str, dict[str, int]] = {name: {} for name in tools}
    for case in expected:
        for name, cmd in tools.items():
            r = subprocess.run(cmd(corpus / case), env=ENV, capture_output=True, text=True)
            caught[name][case] = r.returncode == 1
            codes[name][case] = r.returncode
    right = {name: sum(caught[name][c] == bad for c, bad in expected.items())
             for name in tools}
    return {"work": "scanners on the 1 GiB safetensors model (s) and on a corpus",
            "time_s": {n: statistics.median(v) for n, v in times.items()},
            "corpus": {c: {"should_block": bad, **{n: caught[n][c] for n in tools}}
                       for c, bad in expected.items()},
            "exit_codes": codes, "right_of": len(expected), "right": right}


def main() -> None:
    quick = "--quick" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="reconcile-bench-"))
    try:
        scan = bench_scan(work)
        results = [bench_lock_check(work), bench_noop_apply(work), scan,
                   bench_scanners(work, Path(scan.pop("_model"))),
                   *bench_hash(work, (256 if quick else 1024) << 20)]
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(work)], check=False)
        shutil.rmtree(work, ignore_errors=True)
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    (out / "core.json").write_text(json.dumps(results, indent=2))
    for r in results:
        print(json.dumps(_rounded(r)))


def _rounded(v):
    if isinstance(v, float):
        return round(v, 3)
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return v


if __name__ == "__main__":
    main()
