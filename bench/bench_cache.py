"""The team cache (#22): fresh stores fill from a warm SeaweedFS bucket, not the Hub; and
`reconcile import` of an export against `tar -x` of the same archive. One run.

Run:  python bench/bench_cache.py [--quick] [--reps N]

The model: 2 x 512 MiB LFS safetensors + 50 small git files (1-64 KiB, some under `tok/`)
on the stand-in Hugging Face Hub (tests/hub.py, in this process on 127.0.0.1, every
request it answers logged), `HF_ENDPOINT` pointing at it. The team cache: SeaweedFS
(`weed mini`, tests/servers.py) on loopback, bucket `team-cache`, models.toml
`[cache] url = "s3://team-cache/bench"` with `endpoint` its S3 port. Every reconcile
process gets dummy AWS credentials, region us-east-1, no instance metadata, validation
off (RECONCILE_VALIDATION=none).

  W  warm the cache: one store `reconcile apply` from the Hub (lock included), then
       `reconcile push`; then a second `reconcile push`, whose output says the object
       bytes it sent. Target: 0.
  A  `reconcile apply --progress none` from the warm cache, models.lock in place, into a
       fresh RECONCILE_STORE and HF_HUB_CACHE: one store alone; then 4 stores at once
       (4 processes started together, each with its own checkout of the project, store
       and HF cache; the time until the last exits). Targets: 4 at once <= 1.3x one
       alone; Hub requests during every apply of A: 0 (Hub.log before/after).
  B  `reconcile export big -o model.tar` (once; its time is recorded), then
       `reconcile import model.tar` into a fresh store against `tar -xf model.tar -C DIR`
       into a fresh directory, and `tar -xf` followed by `sync`. Target: import >= 0.9x
       tar -x (import time <= tar's / 0.9); the same until durable.

Nothing can be dropped from the page cache here, so this is what is warm: the Hub's
bytes are in this process's memory; SeaweedFS's volume files were just written by the
push and are read by every apply of A (so the server reads from memory, as a cache next
to CI runners would for a hot model); the archive in B was just written by export and
is read from the page cache by import and tar alike. `sync` runs untimed before every
measurement, so no run pays for an earlier one's writeback; "durable" adds the `sync`
right after the last process exits. Tools alternate (order reversed every other
repetition), median of N (default 3), every sample shown. --quick: 2 x 64 MiB.

Writes bench/results/cache.json (--quick: cache-quick.json) and prints the table.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import bench_hf  # noqa: E402
from alternate import alternate, first_line, run_info, save_results  # noqa: E402
from bench_hf import BASE_ENV, GNU_TIME, _ok, _runs, cpu_times, measure, med, wipe  # noqa: E402
from bench_s3 import REGION, aws_env, s3_client, server_cpu  # noqa: E402
from hfsite import _reconcile_cmd  # noqa: E402

from tests.hub import Blob, Hub  # noqa: E402
from tests.servers import seaweedfs, weed_binary  # noqa: E402

RECONCILE = _reconcile_cmd()
MIB = 1 << 20
REPO = "bench/big"
BUCKET = "team-cache"
MACHINES = 4
UNITS = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}
PUSHED = re.compile(r"pushed to (\S+): (\d+) objects uploaded \(([\d.]+) (\w+)\),"
                    r" (\d+) already there, (\d+) model entries written")
APPLIED = re.compile(r"Applied: (\d+) fetched \(([\d.]+) (\w+)(?:, (\d+) from the team cache)?\)")
IMPORTED = re.compile(r"imported (\d+) objects \(([\d.]+) (\w+)\), (\d+) already in the store")


class _Blob(Blob):
    """tests.hub.Blob with its sha256 computed once (the stand-in Hub asks for it on every
    revision, resolve and CDN request: 0.3 s a time for 512 MiB)."""

    @functools.cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()


def big_bytes(size: int, seed: int) -> bytes:
    """``size`` bytes of distinct 1 MiB blocks, cheap to make (as bench_tls.make_file)."""
    block = random.Random(seed).randbytes(MIB)
    return b"".join(block[i % 251:] + block[:i % 251] for i in range(size // MIB))


def make_repo(hub: Hub, big: int) -> tuple[str, dict[str, int]]:
    """The model on the Hub: 2 LFS weights + 50 small git files. (commit, path -> size)"""
    files: dict[str, bytes] = {}
    for i in (1, 2):
        files[f"model-0000{i}-of-00002.safetensors"] = big_bytes(big, i)
    rnd = random.Random(3)
    for i in range(50):
        name = f"tok/part-{i:02d}.json" if i % 3 == 0 else f"extra-{i:02d}.json"
        files[name] = rnd.randbytes(rnd.randint(1024, 64 * 1024))
    repo = hub.repo(REPO)
    sha = repo.commit(files)  # *.safetensors are LFS, the rest git files (< 100 kB)
    repo.commits[sha] = {p: _Blob(b.data, b.lfs) for p, b in repo.commits[sha].items()}
    assert sum(b.lfs for b in repo.commits[sha].values()) == 2
    return sha, {p: len(d) for p, d in files.items()}


def to_bytes(num: str, unit: str) -> int:
    return round(float(num) * UNITS[unit])


def parse_push(out: str) -> dict:
    m = PUSHED.search(out)
    if not m:
        raise SystemExit(f"unexpected `reconcile push` output:\n{out}")
    return {"uploaded": int(m[2]), "bytes_sent": to_bytes(m[3], m[4]),
            "bytes_text": f"{m[3]} {m[4]}", "present": int(m[5]), "entries": int(m[6])}


class Bench:
    def __init__(self, tmp: Path, hub: Hub, env: dict[str, str], endpoint: str,
                 commit: str, sizes: dict[str, int]) -> None:
        self.tmp, self.hub, self.env, self.commit, self.sizes = tmp, hub, env, commit, sizes
        self.proj = tmp / "proj"
        self.proj.mkdir()
        (self.proj / "models.toml").write_text(
            f'[models.big]\nsource.huggingface = {{ repo = "{REPO}" }}\n\n'
            f'[cache]\nurl = "s3://{BUCKET}/bench"\nendpoint = "{endpoint}"\n'
            f'region = "{REGION}"\n')
        self.warm_store, self.warm_hf = tmp / "warm" / "store", tmp / "warm" / "hf"
        self.machines = [tmp / f"machine-{i}" for i in range(MACHINES)]
        self.archive = tmp / "model.tar"
        self.hub_paths: list[str] = []  # any Hub request made during A

    def renv(self, store: Path, hf: Path) -> dict[str, str]:
        return {**self.env, "RECONCILE_STORE": str(store), "HF_HUB_CACHE": str(hf)}

    def run(self, args: list[str], env: dict[str, str], cwd: Path) -> tuple[dict, str]:
        """``measure`` plus the command's stdout (measure keeps none)."""
        out = self.tmp / "last-stdout"
        r = measure(["sh", "-c", '"$@" > "$0"', str(out), RECONCILE, *args], env, cwd)
        return r, out.read_text()

    def check_snapshot(self, hf: Path) -> None:
        snap = hf / ("models--" + REPO.replace("/", "--")) / "snapshots" / self.commit
        for path, size in self.sizes.items():
            got = (snap / path).stat().st_size
            assert got == size, (path, got, size)

    # --- W: warm the cache --------------------------------------------------------------
    def warm(self) -> dict:
        env = self.renv(self.warm_store, self.warm_hf)
        n0 = len(self.hub.log)
        apply_, out = self.run(["apply", "--progress", "none"], env, self.proj)
        self.check_snapshot(self.warm_hf)
        apply_.update(stdout=out.strip(), hub_requests=len(self.hub.log) - n0)
        print(f"[W] apply from the Hub (lock included): {apply_['s']:.2f} s,"
              f" {apply_['hub_requests']} Hub requests: {out.strip()}", flush=True)
        res = {"apply_from_hub": apply_}
        for name in ("push", "push_again"):
            r, out = self.run(["push"], env, self.proj)
            r.update(parse_push(out), stdout=out.strip())
            res[name] = r
            print(f"[W] {name}: {r['s']:.2f} s: {out.strip()}", flush=True)
        return res

    # --- A: fresh stores from the warm cache --------------------------------------------
    def machine(self, i: int) -> tuple[list[str], dict[str, str], Path]:
        """Machine i: its own checkout (models.toml + models.lock), store and HF cache."""
        root = self.machines[i]
        wipe(root)
        proj = root / "proj"
        proj.mkdir(parents=True)
        for name in ("models.toml", "models.lock"):
            shutil.copy(self.proj / name, proj / name)
        return ([RECONCILE, "apply", "--progress", "none"],
                self.renv(root / "store", root / "hf"), proj)

    def together(self, n: int) -> dict:
        """``n`` fresh machines' applies started at once; wall time until the last exits."""
        jobs = [self.machine(i) for i in range(n)]
        logs = [self.machines[i] / "time" for i in range(n)]
        outs = [self.machines[i] / "out" for i in range(n)]
        n0 = len(self.hub.log)
        os.sync()  # untimed: start with no dirty pages
        c0, s0 = cpu_times(), bench_hf.SERVER_CPU()
        t0 = time.perf_counter()
        procs = []
        for (cmd, env, cwd), log, out in zip(jobs, logs, outs, strict=True):
            timed = [GNU_TIME, "-o", str(log), "-f", "%M %U %S %e", *cmd] if GNU_TIME else cmd
            with open(out, "w") as f:
                procs.append(subprocess.Popen(timed, env=env, cwd=cwd, stdout=f,
                                              stderr=subprocess.STDOUT, text=True))
        codes = [p.wait() for p in procs]
        t1 = time.perf_counter()
        c1, s1 = cpu_times(), bench_hf.SERVER_CPU()
        os.sync()
        t2 = time.perf_counter()
        texts = [o.read_text() for o in outs]
        if any(codes):
            raise SystemExit(f"FAILED: {n} x reconcile apply: exit codes {codes}\n"
                             + "\n---\n".join(t[-2000:] for t in texts))
        hub = self.hub.log[n0:]
        self.hub_paths += [f"{m} {p}" for m, _h, p, _a in hub]
        per = []
        for log, text, i in zip(logs, texts, range(n), strict=True):
            m = APPLIED.search(text)
            assert m, text
            one = {"fetched": int(m[1]), "bytes_fetched": to_bytes(m[2], m[3]),
                   "from_cache": int(m[4] or 0), "output": text.strip()}
            if GNU_TIME:
                rss, user, sys_, wall = log.read_text().split()[-4:]
                one.update(rss_mb=int(rss) / 1024, cpu_user_s=float(user),
                           cpu_sys_s=float(sys_), s=float(wall))
            per.append(one)
            self.check_snapshot(self.machines[i] / "hf")
        for i in range(n):
            wipe(self.machines[i])
        return {"s": t1 - t0, "durable_s": t2 - t0,
                "rss_mb": max((p.get("rss_mb", 0.0) for p in per), default=0.0),
                "processes": per, "hub_requests": len(hub), "server_cpu_s": s1 - s0,
                **{f"system_{k}_s": c1[k] - c0[k] for k in c0}}

    # --- B: export / import against tar -------------------------------------------------
    def export(self) -> dict:
        env = self.renv(self.warm_store, self.warm_hf)
        r, out = self.run(["export", "big", "-o", str(self.archive)], env, self.proj)
        r.update(stdout=out.strip(), archive_bytes=self.archive.stat().st_size)
        print(f"[B] export: {r['s']:.2f} s: {out.strip()}", flush=True)
        return r

    def import_(self) -> dict:
        store = self.tmp / "import" / "store"
        wipe(store.parent)
        store.parent.mkdir()
        r, out = self.run(["import", str(self.archive)],
                          {**self.env, "RECONCILE_STORE": str(store)}, store.parent)
        m = IMPORTED.search(out)
        assert m and int(m[1]) == len(self.sizes) and int(m[4]) == 0, out
        r["stdout"] = out.strip()
        wipe(store.parent)
        return r

    def tar(self) -> dict:
        dest = self.tmp / "tar-x"
        wipe(dest)
        dest.mkdir()
        r = measure(["tar", "-xf", str(self.archive), "-C", str(dest)], self.env)
        got = len(list((dest / "objects" / "sha256").iterdir()))
        assert got == len(self.sizes), got
        wipe(dest)
        return r


# --- the table ---------------------------------------------------------------------------




def make_table(res: dict) -> str:
    rows = ["| work | reconcile | compared with (same run) | ratio | target |",
            "|---|---|---|---|---|"]

    def row(*cells: str) -> None:
        rows.append("| " + " | ".join(cells) + " |")

    w, n_obj, size = res["warm"], res["objects"], res["model_mib"]
    p1, p2 = w["push"], w["push_again"]
    row("second `reconcile push` (cache already holds everything): object bytes sent",
        f"{p2['bytes_sent']} B ({p2['uploaded']} uploaded, {p2['present']} already there,"
        f" {p2['entries']} entries; {p2['s']:.2f} s)",
        f"first push: {p1['bytes_text']}, {p1['uploaded']} objects, {p1['entries']} entry;"
        f" {p1['s']:.2f} s", "",
        f"0 {_ok(p2['bytes_sent'] == 0 and p2['uploaded'] == 0)}")
    a = res["A"]["runs"]
    one, four = a["1 store alone"], a[f"{MACHINES} stores at once"]
    ratio = med(four) / med(one)
    row(f"`apply` from the warm cache, {size} MiB model, 1 fresh store alone",
        f"{med(one):.2f} s ({_runs(one)})", "", "", "")
    per = [p["s"] for r in four for p in r["processes"] if "s" in p]
    row(f"same, {MACHINES} fresh stores at once (until the last exits)",
        f"{med(four):.2f} s ({_runs(four)}); each process {min(per, default=0):.2f}-"
        f"{max(per, default=0):.2f} s",
        f"1 store alone {med(one):.2f} s", f"takes **{ratio:.2f}×**",
        f"≤ 1.3× {_ok(ratio <= 1.3)}")
    gbs = MACHINES * res["model_bytes"] / med(four) / 1e9
    row("same, until durable (exit + `sync`)",
        f"{MACHINES} at once {med(four, 'durable_s'):.2f} s ({gbs:.2f} GB/s into"
        f" {MACHINES} stores)", f"1 alone {med(one, 'durable_s'):.2f} s",
        f"{med(four, 'durable_s') / med(one, 'durable_s'):.2f}×", "")
    hub = sum(r["hub_requests"] for rs in a.values() for r in rs)
    applies = sum(len(r["processes"]) for rs in a.values() for r in rs)
    hits = sorted({p["from_cache"] for rs in a.values() for r in rs for p in r["processes"]})
    row(f"Hub requests during these {applies} applies (the first apply from the Hub: "
        f"{w['apply_from_hub']['hub_requests']})", f"{hub}",
        f"objects from the team cache per apply: {'/'.join(map(str, hits))} of {n_obj}", "",
        f"0 {_ok(hub == 0 and hits == [n_obj])}")
    procs = [p for rs in a.values() for r in rs for p in r["processes"]]
    if procs and "rss_mb" in procs[0]:
        cpu = statistics.median(p["cpu_user_s"] + p["cpu_sys_s"] for p in procs)
        row("same, peak RSS · CPU user+sys per apply (SeaweedFS CPU: alone · 4 at once)",
            f"{max(p['rss_mb'] for p in procs):.0f} MB · {cpu:.2f} s",
            f"weed {med(one, 'server_cpu_s'):.2f} s · {med(four, 'server_cpu_s'):.2f} s",
            "", "< 150 MB " + _ok(max(p["rss_mb"] for p in procs) < 150))
        cpus = res["cpus"] or 1
        floor = statistics.median(
            (sum(p["cpu_user_s"] + p["cpu_sys_s"] for p in r["processes"])
             + r["server_cpu_s"]) / cpus for r in four)
        row(f"same, {MACHINES} at once: CPU floor (the {MACHINES} applies' and SeaweedFS's"
            f" CPU seconds / {cpus} cores)", f"{floor:.2f} s",
            f"{MACHINES} at once took {med(four):.2f} s",
            f"{floor / med(one):.2f}× one alone", "")
    b = res["B"]["runs"]
    imp, tar = b["reconcile import"], b["tar -xf"]
    r1 = med(tar) / med(imp)
    r2 = med(tar, "durable_s") / med(imp, "durable_s")
    mib = res["B"]["export"]["archive_bytes"] / MIB
    row(f"`reconcile import` of the export ({mib:.0f} MiB tar, {n_obj} objects), fresh store",
        f"{med(imp):.2f} s ({_runs(imp)})", f"`tar -xf` {med(tar):.2f} s ({_runs(tar)})",
        f"**{r1:.2f}×**", f"≥ 0.9× {_ok(r1 >= 0.9)}")
    row("same, until durable", f"{med(imp, 'durable_s'):.2f} s ({_runs(imp, 'durable_s')})",
        f"`tar -xf && sync` {med(tar, 'durable_s'):.2f} s ({_runs(tar, 'durable_s')})",
        f"**{r2:.2f}×**", f"≥ 0.9× {_ok(r2 >= 0.9)}")
    row("same, peak RSS · CPU user+sys",
        f"{max(r['rss_mb'] for r in imp):.0f} MB ·"
        f" {med(imp, 'cpu_user_s') + med(imp, 'cpu_sys_s'):.2f} s",
        f"tar {max(r['rss_mb'] for r in tar):.0f} MB ·"
        f" {med(tar, 'cpu_user_s') + med(tar, 'cpu_sys_s'):.2f} s", "", "")
    e = res["B"]["export"]
    row("for the record: `reconcile export` of the model (once), until durable",
        f"{e['s']:.2f} s · {e['durable_s']:.2f} s", "", "", "")
    return "\n".join(rows)


# --- the benchmark -----------------------------------------------------------------------

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 x 64 MiB instead of 2 x 512 MiB")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per tool (median)")
    args = ap.parse_args()
    big = (64 if args.quick else 512) * MIB
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-cachebench-", dir="/tmp"))
    # weed makes an admin identity of AWS_* and then refuses other keys: start it without
    for var in [v for v in os.environ if v.startswith("AWS_")]:
        del os.environ[var]
    env = {k: v for k, v in BASE_ENV.items() if not k.startswith("AWS_")}
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "RECONCILE_STORE", "NO_PROXY",
                "no_proxy", "RECONCILE_MANIFEST", "RECONCILE_CACHE", "RECONCILE_OFFLINE",
                "HF_HUB_OFFLINE"):
        env.pop(var, None)
    env.update(aws_env(tmp), RECONCILE_VALIDATION="none")
    import boto3

    res = run_info(args, RECONCILE, tmp=str(tmp), boto3=boto3.__version__,
                   weed=first_line([weed_binary(), "version"]),
                   tar=first_line(["tar", "--version"]))
    try:
        hub = Hub()
        t = time.perf_counter()
        commit, sizes = make_repo(hub, big)
        res.update(objects=len(sizes), model_bytes=sum(sizes.values()),
                   model_mib=round(sum(sizes.values()) / MIB))
        print(f"model: 2 x {big // MIB} MiB + 50 small files, {res['model_mib']} MiB"
              f" ({time.perf_counter() - t:.1f} s to make)", flush=True)
        with hub, seaweedfs(tmp / "weed") as endpoint:
            hub.cdn = hub.url  # LFS 302s stay on 127.0.0.1 (the stand-in says localhost)
            env["HF_ENDPOINT"] = hub.url
            bench_hf.SERVER_CPU = server_cpu(tmp / "weed")
            s3_client(endpoint).create_bucket(Bucket=BUCKET)
            print(f"Hub at {hub.url}, SeaweedFS at {endpoint}, data under {tmp}", flush=True)
            b = Bench(tmp, hub, env, endpoint, commit, sizes)
            res["warm"] = b.warm()

            print(f"[A] apply from the warm cache: 1 store alone, {MACHINES} at once",
                  flush=True)
            runs = alternate({"1 store alone": lambda: b.together(1),
                              f"{MACHINES} stores at once": lambda: b.together(MACHINES)},
                             args.reps)
            res["A"] = {"runs": runs, "hub_paths": b.hub_paths[:50]}
            for name, rs in runs.items():
                print(f"  {name}: Hub requests {[r['hub_requests'] for r in rs]}, from the"
                      f" team cache {[[p['from_cache'] for p in r['processes']] for r in rs]}",
                      flush=True)

            res["B"] = {"export": b.export()}
            wipe(b.warm_store.parent)  # B reads only the archive
            print("[B] reconcile import vs tar -xf of the same archive", flush=True)
            res["B"]["runs"] = alternate({"reconcile import": b.import_, "tar -xf": b.tar},
                                         args.reps)
    finally:
        wipe(tmp)

    res["table"] = make_table(res)
    save_results(res, "cache", args.quick)
    print()
    print(f"Team cache: {res['model_mib']} MiB model ({res['objects']} objects), SeaweedFS"
          f" on loopback, median of {args.reps}")
    print()
    print(res["table"])
    if res["A"]["hub_paths"]:
        print("\nHub requests during A:", *res["A"]["hub_paths"], sep="\n  ")
    print(f"\n(raw samples: bench/results/{name})")


if __name__ == "__main__":
    main()
