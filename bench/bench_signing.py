"""Model signature checks: reconcile.signing.verify vs `model_signing verify key`, one run.

Run:  python bench/bench_signing.py [--quick] [--reps N]

A model of 2 x 512 MiB weights + 50 small files (1-64 KiB, some in subdirectories) is
written to a temp dir and signed by the real `model_signing sign key` CLI (P-256, PyPI
`model-signing` + `pyopenssl`; untimed). Then, alternating:

  reconcile (in-process)  `signing.verify(bundle, files, public_key_pem=...)` with the
                          per-file sha256 map the lock already holds: what `reconcile`
                          does inside a run (bundle and key read from disk each time)
  reconcile (process)     the same in a fresh `python -c`: interpreter start-up, imports
                          and reading the map from a JSON file included, for a
                          like-for-like comparison with a CLI
  model_signing verify    `python -m model_signing verify key MODEL --signature S
                          --public_key P`: walks and re-hashes the whole tree (page
                          cache warm: the files were just written, so this favours it)
  model_signing --help    its start-up and imports alone, for context

Target: reconcile (in-process) < 50 ms. --quick: 2 x 64 MiB. Median of N (default 5),
every sample shown. Writes bench/results/signing.json (--quick: signing-quick.json).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from alternate import alternate, run_info, save_results  # noqa: E402
from bench_hf import BASE_ENV, measure, wipe  # noqa: E402
from bench_tls import make_file  # noqa: E402

from reconcile import signing  # noqa: E402

MIB = 1 << 20
PY = sys.executable
OURS_PROCESS = (
    "import json, sys; from pathlib import Path; from reconcile import signing; "
    "files = json.loads(Path(sys.argv[1]).read_text()); "
    "print(signing.verify(Path(sys.argv[2]).read_bytes(), files, "
    "public_key_pem=Path(sys.argv[3]).read_bytes()))"
)


def make_model(root: Path, big: int) -> dict[str, str]:
    """The model tree, and its per-file sha256 (what models.lock holds)."""
    files: dict[str, str] = {}
    (root / "tokenizer").mkdir(parents=True)
    for i in range(2):
        name = f"model-{i + 1:05d}-of-00002.safetensors"
        files[name] = make_file(root / name, big)
    for i in range(50):
        name = f"tokenizer/part{i:02d}.json" if i % 3 == 0 else f"extra{i:02d}.json"
        data = os.urandom(1024 * (1 + (i * 37) % 64))
        (root / name).write_bytes(data)
        files[name] = hashlib.sha256(data).hexdigest()
    return files


def table(runs: dict[str, list[dict]], mine: str, title: str) -> str:
    """alternate.ratio_table in milliseconds (reconcile's rows are far below 0.01 s)."""
    med = {n: statistics.median(r["s"] for r in rs) for n, rs in runs.items()}
    lines = [title, "", "| tool | wall ms (samples) | peak RSS MB | vs reconcile |",
             "|---|---|---|---|"]
    for n, rs in runs.items():
        samples = ", ".join(f"{r['s'] * 1000:.1f}" for r in rs)
        ratio = "—" if n == mine else f"{med[n] / med[mine]:.0f}×"
        lines.append(f"| {n} | {med[n] * 1000:.1f} ({samples}) |"
                     f" {max(r['rss_mb'] for r in rs):.0f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 x 64 MiB instead of 2 x 512 MiB")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    big = (64 if args.quick else 512) * MIB
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-sigbench-", dir=os.environ.get("BENCH_TMP")))
    version = subprocess.run([PY, "-m", "pip", "show", "model-signing"], capture_output=True,
                             text=True).stdout
    res = run_info(args, "reconcile.signing.verify (in-process)",
                   model_signing=next((ln.split()[-1] for ln in version.splitlines()
                                       if ln.startswith("Version:")), "not installed"))
    env = {**BASE_ENV, "PYTHONPATH": str(HERE.parent)}
    try:
        model = tmp / "model"
        files = make_model(model, big)
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", str(tmp / "key.pem")], check=True)
        subprocess.run(["openssl", "ec", "-in", str(tmp / "key.pem"), "-pubout", "-out",
                        str(tmp / "pub.pem")], check=True, capture_output=True)
        sig, pub, lock = tmp / "model.sig", tmp / "pub.pem", tmp / "files.json"
        t0 = time.perf_counter()
        subprocess.run([PY, "-m", "model_signing", "sign", "key", str(model), "--private_key",
                        str(tmp / "key.pem"), "--signature", str(sig)], check=True,
                       capture_output=True)
        res["model_signing_sign_s"] = time.perf_counter() - t0
        lock.write_text(json.dumps(files))
        res["bundle_bytes"] = sig.stat().st_size
        res["files"] = len(files)
        res["model_bytes"] = sum((model / n).stat().st_size for n in files)

        def ours() -> dict:
            t = time.perf_counter()
            signer = signing.verify(sig.read_bytes(), files, public_key_pem=pub.read_bytes())
            s = time.perf_counter() - t
            assert signer.kind == "key"
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            return {"s": s, "durable_s": s, "rss_mb": rss}

        def ours_process() -> dict:
            return measure([PY, "-c", OURS_PROCESS, str(lock), str(sig), str(pub)], env)

        def theirs() -> dict:
            return measure([PY, "-m", "model_signing", "verify", "key", str(model),
                            "--signature", str(sig), "--public_key", str(pub)], env)

        def theirs_startup() -> dict:
            return measure([PY, "-m", "model_signing", "--help"], env)

        ours()  # untimed: the first call pays for lazy imports inside cryptography
        tools = {"reconcile (in-process)": ours, "reconcile (process)": ours_process,
                 "model_signing verify key": theirs, "model_signing --help": theirs_startup}
        runs = alternate(tools, args.reps)
    finally:
        wipe(tmp)
    res["runs"] = runs
    title = (f"verify a key-signed model of 2 x {big // MIB} MiB + 50 small files "
             f"({res['files']} files, signature {res['bundle_bytes']} bytes); "
             f"median of {args.reps}")
    res["table"] = table(runs, "reconcile (in-process)", title)
    name = save_results(res, "signing", args.quick)
    print()
    print(res["table"])
    ms = statistics.median(r["s"] for r in runs["reconcile (in-process)"])
    print(f"\nreconcile in-process median {ms * 1000:.2f} ms (target < 50 ms: "
          f"{'met' if ms < 0.05 else 'MISSED'})")
    print(f"(raw samples: bench/results/{name})")


if __name__ == "__main__":
    main()
