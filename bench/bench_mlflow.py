"""MLflow model downloads: reconcile vs mlflow's own client, one tracking server, one run.

Run:  python bench/bench_mlflow.py [--quick] [--reps N]

A real `mlflow server` (sqlite backend, --serve-artifacts with a local artifact root) on
loopback. A registered model version whose artifacts are 2 x 512 MiB + 20 small files
(1-64 KiB), logged with mlflow's client. Each tool fetches version 1 into a fresh
directory:

  reconcile   `reconcile lock && reconcile apply` (source.mlflow), a fresh store: MLflow
              gives no content hash, so lock streams every file once into the store,
              hashing as it goes; apply assembles the model
  mlflow      `mlflow.artifacts.download_artifacts("models:/<name>/1", dst_path=…)`
              (unverified: MLflow has no digest to check against)

Target: reconcile >= 1.0x mlflow, peak RSS < 150 MB. --quick: 2 x 64 MiB. `sync` runs
untimed before each measurement; the order alternates; median of N (default 3), every
sample shown. Writes bench/results/mlflow.json (--quick: mlflow-quick.json).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from alternate import alternate, ratio_table, run_info, save_results  # noqa: E402
from bench_hf import BASE_ENV, measure, wipe  # noqa: E402
from bench_tls import make_file  # noqa: E402
from hfsite import _reconcile_cmd  # noqa: E402

from tests.servers import mlflow_server  # noqa: E402

RECONCILE = _reconcile_cmd()
PY = sys.executable
MIB = 1 << 20
MLFLOW_CODE = """\
import sys
import mlflow
mlflow.set_tracking_uri(sys.argv[1])
mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{sys.argv[2]}/1", dst_path=sys.argv[3])
"""


def seed(url: str, src: Path, big: int) -> dict[str, int]:
    from mlflow import MlflowClient

    files: dict[str, int] = {}
    for i in (1, 2):
        name = f"model-0000{i}-of-00002.safetensors"
        make_file(src / name, big)
        files[name] = big
    rnd = random.Random(1)
    (src / "tok").mkdir()
    for i in range(20):
        name = f"tok/part-{i:02d}.json" if i % 3 == 0 else f"extra-{i:02d}.json"
        data = os.urandom(rnd.randint(1024, 64 * 1024))
        (src / name).write_bytes(data)
        files[name] = len(data)
    client = MlflowClient(tracking_uri=url)
    exp = client.create_experiment("bench")
    run = client.create_run(exp)
    client.log_artifacts(run.info.run_id, str(src), artifact_path="model")
    client.set_terminated(run.info.run_id)
    client.create_registered_model("big")
    client.create_model_version("big", source=f"runs:/{run.info.run_id}/model",
                                run_id=run.info.run_id)
    return files


def check_tree(root: Path, files: dict[str, int]) -> None:
    got = {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*")
           if p.is_file()}
    assert got == files, (root, len(got), len(files))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 x 64 MiB instead of 2 x 512 MiB")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    big = (64 if args.quick else 512) * MIB
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-mlflowbench-", dir=os.environ.get("BENCH_TMP")))
    import mlflow

    res = run_info(args, RECONCILE, mlflow=mlflow.__version__)
    try:
        with mlflow_server(tmp / "server") as url:
            src = tmp / "src"
            src.mkdir()
            files = seed(url, src, big)
            wipe(src)
            script = tmp / "mlflow_download.py"
            script.write_text(MLFLOW_CODE)
            work = tmp / "work"
            proj = tmp / "proj"
            proj.mkdir()
            (proj / "models.toml").write_text(
                f'[models.big]\nsource.mlflow = {{ trackingUri = "{url}", modelName = "big",'
                ' version = "1" }\n')
            env = {**BASE_ENV, "RECONCILE_STORE": str(work / "store"), "HF_HOME": str(work / "hf"),
                   "RECONCILE_VALIDATION": "none"}
            env.pop("HF_HUB_CACHE", None)

            def fresh() -> None:
                wipe(work)
                work.mkdir()

            def reconcile() -> dict:
                fresh()
                (proj / "models.lock").unlink(missing_ok=True)
                lock = measure([RECONCILE, "lock"], env, proj)
                r = measure([RECONCILE, "apply"], env, proj)
                p = subprocess.run([RECONCILE, "path", "big"], env=env, cwd=proj,
                                   capture_output=True, text=True, check=True)
                check_tree(Path(p.stdout.strip().splitlines()[-1]), files)
                return {"s": lock["s"] + r["s"], "durable_s": lock["durable_s"] + r["durable_s"],
                        "rss_mb": max(lock["rss_mb"], r["rss_mb"]), "lock_s": lock["s"],
                        "apply_s": r["s"]}

            def client() -> dict:
                fresh()
                r = measure([PY, str(script), url, "big", str(work / "out")], BASE_ENV)
                check_tree(work / "out", files)
                return r

            tools = {"reconcile lock + apply": reconcile,
                     "mlflow.artifacts.download_artifacts": client}
            runs = alternate(tools, args.reps)
    finally:
        wipe(tmp)
    res["runs"] = runs
    title = (f"2 × {big // MIB} MiB + 20 small artifacts, mlflow {res['mlflow']} server with"
             f" --serve-artifacts; median of {args.reps}")
    res["table"] = ratio_table(runs, "reconcile lock + apply", title)
    name = save_results(res, "mlflow", args.quick)
    print()
    print(res["table"])
    print(f"\n(raw samples: bench/results/{name})")


if __name__ == "__main__":
    main()
