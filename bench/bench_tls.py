"""One big file over TLS: reconcile against `curl --cacert`, same nginx, same CA, one run.

Run:  python bench/bench_tls.py [--quick] [--reps N]
nginx serves a 2 GiB file (--quick: 256 MiB) over https with a certificate from a CA
made here with openssl (a company's CA, as far as either client can tell). reconcile
trusts it through `network.caBundle`, curl through `--cacert`. reconcile verifies the
file's sha256 while downloading; curl does not (`curl && sha256sum -c` is shown for
context). Runs alternate; medians are reported. Results go to bench/results/tls.json
and the README row is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import statistics
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from alternate import save_results  # noqa: E402
from bench_hf import measure, wipe  # noqa: E402

from tests.servers import make_ca, nginx  # noqa: E402


def make_file(path: Path, size: int) -> str:
    h = hashlib.sha256()
    block = os.urandom(1 << 20)
    with open(path, "wb") as f:
        for i in range(size >> 20):
            chunk = block[i % 251:] + block[: i % 251]  # distinct blocks, cheap to make
            f.write(chunk)
            h.update(chunk)
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    size = (256 if args.quick else 2048) << 20
    base = Path(tempfile.mkdtemp(prefix="bench-tls-"))
    try:
        ca, cert, key = make_ca(base / "pki")
        site = base / "site"
        site.mkdir()
        sha = make_file(site / "big.bin", size)
        env = {**os.environ, "RECONCILE_VALIDATION": "none"}
        env.pop("SSL_CERT_FILE", None)
        rows: dict[str, list[dict]] = {"reconcile apply": [], "curl --cacert": [],
                                       "curl --cacert && sha256sum -c": []}
        with nginx(site, base / "nginx", tls=(cert, key)) as url:
            for _ in range(args.reps):
                work = base / "work"
                wipe(work)
                (work / "proj").mkdir(parents=True)
                (work / "proj" / "models.toml").write_text(
                    f'[models.big]\nsource.url = {{ url = "{url}/big.bin", sha256 = "{sha}" }}\n'
                    f'network.caBundle = "{ca}"\nintegration.huggingface.enable = false\n')
                renv = {**env, "RECONCILE_STORE": str(work / "store"),
                        "HF_HUB_CACHE": str(work / "hub")}
                rows["reconcile apply"].append(measure(
                    [sys.executable, "-m", "reconcile", "-f", str(work / "proj" / "models.toml"),
                     "apply"], renv))
                out = work / "big.bin"
                rows["curl --cacert"].append(measure(
                    ["curl", "-sf", "--cacert", str(ca), "-o", str(out), f"{url}/big.bin"], env))
                out.unlink()
                rows["curl --cacert && sha256sum -c"].append(measure(
                    ["sh", "-c", f"curl -sf --cacert '{ca}' -o '{out}' '{url}/big.bin' && echo"
                     f" '{sha}  {out}' | sha256sum -c --quiet"], env))
                out.unlink()
        med = {k: statistics.median(r["s"] for r in v) for k, v in rows.items()}
        res = {"size_bytes": size, "reps": args.reps, "median_s": med,
               "ratio_vs_curl": med["curl --cacert"] / med["reconcile apply"],
               "ratio_vs_curl_sha256sum": med["curl --cacert && sha256sum -c"]
               / med["reconcile apply"], "runs": rows}
        save_results(res, "tls")
        gib = size / (1 << 30)
        print(f"| {gib:g} GiB file over TLS (private CA via network.caBundle) |"
              f" {med['reconcile apply']:.2f} s | `curl --cacert` {med['curl --cacert']:.2f} s"
              f" · `curl && sha256sum -c` {med['curl --cacert && sha256sum -c']:.2f} s |"
              f" **{res['ratio_vs_curl']:.2f}×** · {res['ratio_vs_curl_sha256sum']:.2f}× |"
              f" ≥ 0.9× {'✓' if res['ratio_vs_curl'] >= 0.9 else '✗'} |")
    finally:
        wipe(base)


if __name__ == "__main__":
    main()
