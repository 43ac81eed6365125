"""Registry downloads: reconcile (source.ollama) vs curl of the same blob URL, one run.

Run:  python bench/bench_oci.py [--quick] [--reps N]

Debian's docker-registry (CNCF distribution 2.8, filesystem storage) on loopback holds an
Ollama-style model: a 1 GiB GGUF blob + template, params and config. Each tool fetches
it into a fresh directory:

  reconcile   `reconcile apply` with models.lock in place (lock ran once, untimed):
              every blob checked against its digest, installed in the store and in a
              fresh ollama models directory (integration.ollama)
  curl        `curl -sS -o FILE <registry>/v2/<repo>/blobs/sha256:<gguf>`: the GGUF blob
              alone, unverified; and the same followed by `sha256sum` (what checking
              the digest costs a curl user)

Target: reconcile >= 0.9x curl, peak RSS < 150 MB. --quick: a 128 MiB blob. `sync` runs
untimed before each measurement; the order alternates; median of N (default 3), every
sample shown. Writes bench/results/oci.json (--quick: oci-quick.json).
"""

from __future__ import annotations

import argparse
import http.client
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from alternate import alternate, first_line, ratio_table, run_info, save_results  # noqa: E402
from bench_hf import BASE_ENV, measure, wipe  # noqa: E402
from bench_tls import make_file  # noqa: E402
from hfsite import _reconcile_cmd  # noqa: E402

from tests.servers import Pusher, docker_registry  # noqa: E402

RECONCILE = _reconcile_cmd()
MIB = 1 << 20
MT = "application/vnd.docker.distribution.manifest.v2+json"


def push_file(base: str, repo: str, path: Path, sha: str) -> dict:
    """A monolithic blob upload streamed from disk (the blob never sits in memory)."""
    u = urlsplit(base)
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=600)
    c.request("POST", f"/v2/{repo}/blobs/uploads/")
    r = c.getresponse()
    r.read()
    loc = urlsplit(r.getheader("Location"))
    size = path.stat().st_size
    with open(path, "rb") as f:
        c.request("PUT", f"{loc.path}?{loc.query}&digest=sha256:{sha}", body=f,
                  headers={"Content-Type": "application/octet-stream",
                           "Content-Length": str(size)})
        r = c.getresponse()
        r.read()
    assert r.status == 201, r.status
    return {"digest": f"sha256:{sha}", "size": size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="a 128 MiB blob instead of 1 GiB")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    size = (128 if args.quick else 1024) * MIB
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-ocibench-", dir=os.environ.get("BENCH_TMP")))
    res = run_info(args, RECONCILE, curl=first_line(["curl", "--version"]))
    try:
        with docker_registry(tmp / "registry") as url:
            gguf = tmp / "model.gguf"
            sha = make_file(gguf, size)
            pusher = Pusher(url)
            layers = [{"mediaType": "application/vnd.ollama.image.model",
                       **push_file(url, "library/big", gguf, sha)}]
            for media, data in (("template", b"{{ .Prompt }}"), ("params", b'{"top_k": 40}')):
                layers.append({"mediaType": f"application/vnd.ollama.image.{media}",
                               **pusher.blob("library/big", data)})
            config = pusher.blob("library/big", b'{"model_format": "gguf"}')
            pusher.manifest("library/big", "latest", {
                "schemaVersion": 2, "mediaType": MT,
                "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                           **config}, "layers": layers})
            wipe(gguf)
            blob_url = f"{url}/v2/library/big/blobs/sha256:{sha}"
            subprocess.run(["curl", "-sS", "-o", "/dev/null", blob_url], check=True)  # warm
            work = tmp / "work"
            proj = tmp / "proj"
            proj.mkdir()
            (proj / "models.toml").write_text(
                f'[models.big]\nsource.ollama = {{ model = "big", registry = "{url}" }}\n')
            env = {**BASE_ENV, "RECONCILE_STORE": str(work / "store"),
                   "OLLAMA_MODELS": str(work / "ollama"), "HF_HOME": str(work / "hf")}
            subprocess.run([RECONCILE, "lock"], env=env, cwd=proj, check=True,
                           capture_output=True)

            def fresh() -> None:
                wipe(work)
                work.mkdir()

            def reconcile() -> dict:
                fresh()
                r = measure([RECONCILE, "apply"], env, proj)
                blob = work / "ollama" / "blobs" / f"sha256-{sha}"
                assert blob.stat().st_size == size
                return r

            def curl() -> dict:
                fresh()
                r = measure(["curl", "-sS", "-o", str(work / "blob"), blob_url], BASE_ENV)
                assert (work / "blob").stat().st_size == size
                return r

            def curl_sha() -> dict:
                fresh()
                out = work / "blob"
                r = measure(["sh", "-c", f'curl -sS -o "{out}" "{blob_url}" && sha256sum "{out}"'],
                            BASE_ENV)
                assert out.stat().st_size == size
                return r

            tools = {"reconcile apply (verified)": reconcile, "curl": curl,
                     "curl + sha256sum": curl_sha}
            runs = alternate(tools, args.reps)
    finally:
        wipe(tmp)
    res["runs"] = runs
    title = (f"{size // MIB} MiB GGUF blob (+ template, params, config) from docker-registry"
             f" 2.8; median of {args.reps}")
    res["table"] = ratio_table(runs, "reconcile apply (verified)", title)
    name = save_results(res, "oci", args.quick)
    print()
    print(res["table"])
    print(f"\n(raw samples: bench/results/{name})")


if __name__ == "__main__":
    main()
