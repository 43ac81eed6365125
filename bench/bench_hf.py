"""Hugging Face downloads: reconcile vs huggingface_hub and curl, one nginx site, one run.

    python bench/bench_hf.py [--quick] [--reps N]

  A  repo: 1 GiB of LFS weights (2 x 512 MiB safetensors) + 50 small files
       `reconcile apply --jobs 8` with no models.lock (lock included), and
       `reconcile lock` then `reconcile apply` (both timed), vs
       `huggingface_hub.snapshot_download(max_workers=8)`; LFS served 200 by the "Hub".
  A' the same repo through the 302 → CDN endpoint (how huggingface.co serves LFS).
  B  one 2 GiB file: `reconcile apply` (models.lock in place, and lock included) vs
       `curl -s -o file URL`; for context `curl && sha256sum -c` and snapshot_download.
  C  one 5 GB file: peak RSS (and time) of `reconcile apply` (huggingface_hub for context).

--quick divides every size by 8. Every run starts from fresh, empty caches and store
(deleted after the run, with the site's copy of a repo deleted once its section is done).
Every tool writes to the same filesystem (a temp dir next to the site). Nothing is
dropped from the page cache: the site's files are read once before a section (untimed) so
nginx serves from memory, and `sync` runs (untimed) before each measurement so no tool
pays for an earlier tool's writeback. The order of tools alternates between repetitions.
Times are wall clock to process exit; "durable" adds the `sync` right after (the time
until the written data is on disk). Median of N (default 3); RSS is the max over runs.
reconcile checks the sha256 of every file it downloads; huggingface_hub and curl do not.

Writes bench/results/hf.json and hf.md (the section for bench/README.md), prints the table.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from alternate import save_results  # noqa: E402
from hfsite import CLIENT_ENV, RepoInfo, Site, _reconcile_cmd  # noqa: E402

PY = sys.executable
RECONCILE = _reconcile_cmd()
GNU_TIME = "/usr/bin/time" if Path("/usr/bin/time").exists() else None
BASE_ENV = {**os.environ, **CLIENT_ENV}
for var in ("HF_HOME", "HF_TOKEN", "HF_HUB_OFFLINE", "RECONCILE_OFFLINE", "HTTP_PROXY",
            "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
    BASE_ENV.pop(var, None)
HF_CODE = ("import sys; from huggingface_hub import snapshot_download as s; "
           "s(sys.argv[1], revision='main', cache_dir=sys.argv[2], endpoint=sys.argv[3],"
           " max_workers=8)")


# --- one measurement ---------------------------------------------------------------------

SERVER_CPU = lambda: 0.0  # noqa: E731  (set to the running site's nginx CPU counter)


def cpu_times() -> dict[str, float]:
    """System-wide CPU seconds from /proc/stat (all cores): busy, iowait, steal."""
    try:
        f = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    except OSError:
        return {}
    hz = os.sysconf("SC_CLK_TCK")
    user, nice, system, _idle, iowait, irq, softirq, steal = (f + [0] * 8)[:8]
    return {"busy": (user + nice + system + irq + softirq) / hz, "iowait": iowait / hz,
            "steal": steal / hz}


def measure(cmd: list[str], env: dict[str, str], cwd: Path | None = None) -> dict:
    """Wall time, time until durable, peak RSS and CPU of one command."""
    os.sync()  # untimed: start with no dirty pages, whoever wrote them
    tf = None
    if GNU_TIME:
        fd, tf = tempfile.mkstemp(prefix="time-")
        os.close(fd)
        cmd = [GNU_TIME, "-o", tf, "-f", "%M %U %S %R %c", *cmd]
    c0, s0 = cpu_times(), SERVER_CPU()
    t0 = time.perf_counter()
    if GNU_TIME:
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        t1 = time.perf_counter()
    else:
        import resource

        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        p = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
        t1 = time.perf_counter()
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
    c1, s1 = cpu_times(), SERVER_CPU()
    os.sync()
    t2 = time.perf_counter()
    if p.returncode:
        raise SystemExit(f"FAILED ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-3000:]}\n"
                         f"{p.stderr[-3000:]}")
    if GNU_TIME:
        rss_kib, user, sys_, minflt, nivcsw = Path(tf).read_text().split()[-5:]
        os.unlink(tf)
        rss, user, sys_ = int(rss_kib) / 1024, float(user), float(sys_)
        extra = {"minor_faults": int(minflt), "invol_ctx_switches": int(nivcsw)}
    else:  # ru_maxrss of RUSAGE_CHILDREN is the largest child so far: fine for one tool
        rss = after.ru_maxrss / 1024
        user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        extra = {"minor_faults": after.ru_minflt - before.ru_minflt}
    return {"s": t1 - t0, "durable_s": t2 - t0, "rss_mb": rss, "cpu_user_s": user,
            "cpu_sys_s": sys_, **extra,
            "nginx_cpu_s": s1 - s0, **{f"system_{k}_s": c1[k] - c0[k] for k in c0}}


def wipe(path: Path) -> None:
    if path.exists():
        subprocess.run(["chmod", "-R", "u+w", str(path)], check=False)  # store objects are r/o
        shutil.rmtree(path, ignore_errors=True)


class Runner:
    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch

    def _fresh(self) -> Path:
        wipe(self.scratch)
        self.scratch.mkdir(parents=True)
        return self.scratch

    def reconcile(self, url: str, info: RepoInfo, *, mode: str) -> dict:
        """mode: "apply" (no lock: apply locks first), "split" (lock, then apply), or
        "locked" (lock untimed-apart, then apply: models.lock committed)."""
        work = self._fresh()
        proj = work / "proj"
        proj.mkdir()
        (proj / "models.toml").write_text(
            f'[models.m]\nsource.huggingface = {{ repo = "{info.repo}" }}\n')
        env = {**BASE_ENV, "HF_ENDPOINT": url, "RECONCILE_STORE": str(work / "store"),
               "HF_HUB_CACHE": str(work / "hub")}
        out: dict = {}
        if mode in ("split", "locked"):
            lock = measure([RECONCILE, "lock", "--jobs", "8"], env, proj)
            out["lock_s"] = lock["s"]
            out["lock_rss_mb"] = lock["rss_mb"]
        r = measure([RECONCILE, "apply", "--jobs", "8"], env, proj)
        out.update(r)
        if mode in ("split", "locked"):
            out["lock_plus_apply_s"] = out["lock_s"] + r["s"]
        self._check(work / "hub", info)
        wipe(work)
        return out

    def hf(self, url: str, info: RepoInfo) -> dict:
        work = self._fresh()
        r = measure([PY, "-c", HF_CODE, info.repo, str(work / "hub"), url], BASE_ENV)
        self._check(work / "hub", info)
        wipe(work)
        return r

    def curl(self, url: str, info: RepoInfo, path: str, verify: bool = False) -> dict:
        work = self._fresh()
        out = work / "out"
        src = info.resolve_url(url, path)
        if verify:
            sha = info.files[path]["sha256"]
            cmd = ["sh", "-c", f"curl -sf -o '{out}' '{src}' && echo '{sha}  {out}'"
                   " | sha256sum -c --quiet"]
        else:
            cmd = ["curl", "-sf", "-o", str(out), src]
        r = measure(cmd, BASE_ENV)
        assert out.stat().st_size == info.files[path]["size"]
        wipe(work)
        return r

    @staticmethod
    def _check(hub: Path, info: RepoInfo) -> None:
        """Cheap completeness check (sizes); the clients' own hashing is what is timed."""
        snap = hub / ("models--" + info.repo.replace("/", "--")) / "snapshots" / info.sha
        for path, f in info.files.items():
            size = (snap / path).stat().st_size
            assert size == f["size"], (path, size, f["size"])


def rounds(reps: int, tools: dict[str, callable]) -> dict[str, list[dict]]:
    """Each tool ``reps`` times; the order is reversed every other repetition."""
    names = list(tools)
    got: dict[str, list[dict]] = {n: [] for n in names}
    for i in range(reps):
        for n in (names if i % 2 == 0 else names[::-1]):
            got[n].append(tools[n]())
            r = got[n][-1]
            print(f"    {n:<28} {r['s']:7.3f} s  durable {r['durable_s']:7.3f} s"
                  f"  RSS {r['rss_mb']:6.1f} MB  cpu {r['cpu_user_s']:.2f}u+{r['cpu_sys_s']:.2f}s"
                  f"  nginx {r['nginx_cpu_s']:.2f}s"
                  f"  box busy {r.get('system_busy_s', 0):.2f}s/{2 * r['s']:.2f}s"
                  f" steal {r.get('system_steal_s', 0):.2f}s"
                  + (f"  (lock {r['lock_s']:.3f} s)" if "lock_s" in r else ""), flush=True)
    return got


def med(rows: list[dict], key: str = "s") -> float:
    return statistics.median(r[key] for r in rows)


def sha256_rate() -> float:
    """One sha256 stream over bytes already in memory (GB/s, best of 3): the floor of any
    download that verifies a single file while it streams, whatever the network does.
    CPUs with SHA extensions reach ~2 GB/s here; without them ~0.2 GB/s."""
    import hashlib

    buf, best = memoryview(bytearray(256 << 20)), 0.0
    for _ in range(3):
        h, t = hashlib.sha256(), time.perf_counter()
        for i in range(0, len(buf), 1 << 20):
            h.update(buf[i:i + (1 << 20)])
        best = max(best, len(buf) / (time.perf_counter() - t) / 1e9)
    return best


def cpu_has_sha() -> bool:
    try:
        return " sha_ni " in Path("/proc/cpuinfo").read_text().split("\n\n")[0] + " "
    except OSError:
        return False


def warm(site: Site, info: RepoInfo) -> None:
    """Read the site's copy once so nginx serves from memory (nothing is dropped)."""
    for path in info.files:
        with open(site.root / "files" / info.repo / path, "rb") as f:
            while f.read(8 << 20):
                pass


# --- the benchmark -----------------------------------------------------------------------

def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="divide every size by 8")
    ap.add_argument("--reps", type=int, default=3, help="repetitions per tool (median)")
    ap.add_argument("--only", default="A,B,C",
                    help="sections to run, e.g. B (a partial or --quick run writes"
                         " results/hf-B.json / hf-quick.json and leaves hf.json and"
                         " hf.md alone)")
    args = ap.parse_args()
    only = set(args.only.upper().split(","))
    full = only >= {"A", "B", "C"}
    reps, div, mib = args.reps, (8 if args.quick else 1), 1 << 20
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-hfbench-", dir=os.environ.get("BENCH_TMP")))
    site = Site(tmp / "site")
    run = Runner(tmp / "scratch")
    res: dict = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
                 "quick": args.quick, "reps": reps,
                 "cpus": os.cpu_count(), "python": platform.python_version(),
                 "reconcile_cmd": RECONCILE, "tmp": str(tmp), "sections": {}}
    try:
        import huggingface_hub

        res["huggingface_hub"] = huggingface_hub.__version__
        res["curl"] = subprocess.run(["curl", "--version"], capture_output=True,
                                     text=True).stdout.split("\n")[0]
        res["sha256_gbps"], res["sha_ni"] = sha256_rate(), cpu_has_sha()
        print(f"one sha256 stream: {res['sha256_gbps']:.2f} GB/s"
              f" (SHA extensions: {'yes' if res['sha_ni'] else 'no'})", flush=True)
        t = time.perf_counter()
        # the biggest first, so repo A is the most recently written (hottest) copy
        c_size = 5 * 10**9 // div
        if "C" in only:
            info_c = site.add_repo("bench/file-c", {"huge.safetensors": c_size})
        if "B" in only:
            info_b = site.add_repo("bench/file-b", {"big.safetensors": (2048 * mib) // div})
        if "A" in only:
            small = {"config.json": b'{"model_type": "bert", "hidden_size": 768}'}
            small.update({f"small/{i:02d}.json": json.dumps({"i": i, "pad": "x" * (i * 97)})
                          .encode() for i in range(49)})
            info_a = site.add_repo("bench/repo-a", {
                "model-00001-of-00002.safetensors": (512 * mib) // div,
                "model-00002-of-00002.safetensors": (512 * mib) // div, **small})
        print(f"site built in {time.perf_counter() - t:.1f} s under {tmp}", flush=True)

        with site.serve() as urls:
            global SERVER_CPU
            SERVER_CPU = site.server_cpu_seconds
            if "A" in only:  # A: a repo, LFS served 200 by the Hub, then 302 → CDN
                warm(site, info_a)
                a_label = f"2 × {512 // div} MiB LFS + 50 small files"
                for key, url, how in (("A", urls.direct, "LFS 200 from the Hub"),
                                      ("A_cdn", urls.redirect, "LFS 302 → CDN")):
                    print(f"[{key}] repo: {a_label}, {how}", flush=True)
                    tools = {
                        "reconcile apply": lambda u=url: run.reconcile(u, info_a, mode="apply"),
                        "huggingface_hub": lambda u=url: run.hf(u, info_a),
                    }
                    if key == "A":
                        tools["reconcile lock; apply"] = (
                            lambda u=url: run.reconcile(u, info_a, mode="split"))
                    got = rounds(reps, tools)
                    res["sections"][key] = {"work": f"repo: {a_label} ({how})", "runs": got}
                site.remove_repo(info_a.repo)

            if "B" in only:  # B: one 2 GiB file
                warm(site, info_b)
                path_b = "big.safetensors"
                print(f"[B] one {2048 // div} MiB file", flush=True)
                got = rounds(reps, {
                    "curl": lambda: run.curl(urls.direct, info_b, path_b),
                    "reconcile apply (locked)": lambda: run.reconcile(urls.direct, info_b,
                                                                      mode="locked"),
                    "reconcile apply": lambda: run.reconcile(urls.direct, info_b, mode="apply"),
                    "curl + sha256sum -c": lambda: run.curl(urls.direct, info_b, path_b,
                                                            verify=True),
                    "huggingface_hub": lambda: run.hf(urls.direct, info_b),
                })
                res["sections"]["B"] = {"work": f"one {2048 // div} MiB file", "runs": got,
                                        "bytes": (2048 * mib) // div}
                site.remove_repo(info_b.repo)

            if "C" in only:  # C: one 5 GB file, peak RSS
                warm(site, info_c)
                print(f"[C] one {c_size / 1e9:g} GB file (peak RSS)", flush=True)
                got = rounds(reps, {  # every peer as often, in alternating order
                    "reconcile apply": lambda: run.reconcile(urls.direct, info_c, mode="apply"),
                    "curl": lambda: run.curl(urls.direct, info_c, "huge.safetensors"),
                    "huggingface_hub": lambda: run.hf(urls.direct, info_c),
                })
                res["sections"]["C"] = {"work": f"one {c_size / 1e9:g} GB file", "runs": got}
                site.remove_repo(info_c.repo)
    finally:
        wipe(tmp)

    table = make_table(res)
    res["table"] = table
    res["summary"] = {key: {tool: {"median_s": med(rs), "best_s": _best(rs),
                                   "max_rss_mb": _rss(rs)} for tool, rs in sec["runs"].items()}
                      for key, sec in res["sections"].items()}
    # only a full-size run of every section replaces hf.json and hf.md
    save_results(res, f"hf-{''.join(sorted(only))}" if not full else "hf", args.quick, indent=2)
    if full and not args.quick:
        (HERE / "results" / "hf.md").write_text(readme(res, table))
    print()
    print(table)


# --- reporting ---------------------------------------------------------------------------

def _ok(b: bool) -> str:
    return "✓" if b else "✗"


def _runs(rs: list[dict], key: str = "s") -> str:
    return "/".join(f"{r[key]:.2f}" for r in rs)


def _cpu(rs: list[dict]) -> float:
    return med(rs, "cpu_user_s") + med(rs, "cpu_sys_s")


def _best(rs: list[dict], key: str = "s") -> float:
    return min(r[key] for r in rs)


def _rss(rs: list[dict]) -> float:
    return max(r["rss_mb"] for r in rs)


def make_table(res: dict) -> str:
    S = res["sections"]
    rows = ["| work | reconcile | peer (same run) | ratio | target |", "|---|---|---|---|---|"]

    def row(*cells: str) -> None:
        rows.append("| " + " | ".join(cells) + " |")

    for key in ("A", "A_cdn"):
        if key not in S:
            continue
        a = S[key]["runs"]
        rec, hf = a["reconcile apply"], a["huggingface_hub"]
        ratio = med(hf) / med(rec)
        row(f"{S[key]['work']}: `apply`, lock included", f"{med(rec):.2f} s ({_runs(rec)})",
            f"`snapshot_download(max_workers=8)` {med(hf):.2f} s ({_runs(hf)})",
            f"**{ratio:.2f}×** (best/best {_best(hf) / _best(rec):.2f}×)",
            f"≥ 1.5× {_ok(ratio >= 1.5)}")
        if "reconcile lock; apply" in a:
            sp = a["reconcile lock; apply"]
            tot = med(sp, "lock_plus_apply_s")
            row("same, `lock` then `apply`",
                f"{med(sp, 'lock_s'):.2f} s + {med(sp):.2f} s = {tot:.2f} s"
                f" ({_runs(sp, 'lock_plus_apply_s')})",
                "huggingface_hub as above", f"{med(hf) / tot:.2f}×", "")
        row("same, until durable (exit + `sync`)", f"{med(rec, 'durable_s'):.2f} s",
            f"{med(hf, 'durable_s'):.2f} s", f"{med(hf, 'durable_s') / med(rec, 'durable_s'):.2f}×",
            "")
        row("same, peak RSS · CPU user+sys", f"{_rss(rec):.0f} MB · {_cpu(rec):.2f} s",
            f"{_rss(hf):.0f} MB · {_cpu(hf):.2f} s", "", "")
    if "B" in S:
        b = S["B"]["runs"]
        curl, locked = b["curl"], b["reconcile apply (locked)"]
        for name, label in (("reconcile apply (locked)", "`apply`, models.lock in place"),
                            ("reconcile apply", "`apply`, lock included")):
            rec = b[name]
            ratio = med(curl) / med(rec)
            extra = f" (`lock` alone: {med(rec, 'lock_s'):.2f} s)" if "lock_s" in rec[0] else ""
            row(f"{S['B']['work']}: {label}{extra}", f"{med(rec):.2f} s ({_runs(rec)})",
                f"`curl -s -o` {med(curl):.2f} s ({_runs(curl)})",
                f"**{ratio:.2f}×** (best/best {_best(curl) / _best(rec):.2f}×)",
                f"≥ 0.9× {_ok(ratio >= 0.9)}")
        floor = S["B"]["bytes"] / 1e9 / res["sha256_gbps"]
        row("same (lock in place) vs its floor: one sha256 stream over the same bytes,"
            " in memory", f"{med(locked):.2f} s", f"{floor:.2f} s",
            f"takes {med(locked) / floor:.2f}× the floor", "")
        row("same (lock in place), until durable (exit + `sync`)",
            f"{med(locked, 'durable_s'):.2f} s", f"curl {med(curl, 'durable_s'):.2f} s",
            f"{med(curl, 'durable_s') / med(locked, 'durable_s'):.2f}×", "")
        for name in ("curl + sha256sum -c", "huggingface_hub"):
            peer = b[name]
            row(f"same (lock in place) vs `{name}`", f"{med(locked):.2f} s",
                f"{med(peer):.2f} s ({_runs(peer)})", f"{med(peer) / med(locked):.2f}×", "")
        row("same (lock in place), peak RSS · CPU user+sys",
            f"{_rss(locked):.0f} MB · {_cpu(locked):.2f} s",
            f"curl {_rss(curl):.0f} MB · {_cpu(curl):.2f} s", "", "")
    if "C" in S:
        c = S["C"]["runs"]
        rc, cc, hc = c["reconcile apply"], c["curl"], c["huggingface_hub"]
        rss = _rss(rc)
        row(f"{S['C']['work']}: peak RSS of `apply`", f"{rss:.0f} MB ({_runs(rc, 'rss_mb')})",
            f"huggingface_hub {_rss(hc):.0f} MB, curl {_rss(cc):.0f} MB", "",
            f"< 150 MB {_ok(rss < 150)}")
        row("same, time", f"{med(rc):.2f} s ({_runs(rc)})",
            f"curl {med(cc):.2f} s ({_runs(cc)}), huggingface_hub {med(hc):.2f} s"
            f" ({_runs(hc)})", f"{med(cc) / med(rc):.2f}× (curl)", "")
    return "\n".join(rows)


def readme(res: dict, table: str) -> str:
    quick = ", **--quick sizes**" if res["quick"] else ""
    curl = res["curl"].split(" (")[0]
    return f"""### Hugging Face downloads (`bench_hf.py`)

    python bench/hfsite.py     # the site: huggingface_hub and reconcile both accept it (direct + 302)
    python bench/bench_hf.py   # --quick: sizes ÷ 8 · --reps N · --only A,B,C

Measured {res['date']}: {res['cpus']} cores, Python {res['python']}, huggingface_hub
{res['huggingface_hub']}, {curl}{quick}. One sha256 stream hashes
{res['sha256_gbps']:.2f} GB/s on this CPU (SHA extensions: {'yes' if res['sha_ni'] else 'no'}).

- Server: one nginx serving a static HF-compatible site (`bench/hfsite.py`: revision and
  tree JSON; `resolve` with `X-Repo-Commit`, `ETag`, `X-Linked-Etag`, `X-Linked-Size` per
  file). "LFS 200" rows: the Hub answers LFS files itself; "302 → CDN" rows: a second
  endpoint redirects them to a third server block, as huggingface.co does. nginx used
  0.1-0.6 s of CPU per run: the server is not the bottleneck.
- Fairness: same site and same filesystem for every tool; fresh caches and store for every
  run; tools in reverse order every other repetition; `sync` (untimed) before each run so
  no tool pays for another's writeback; nothing dropped from the page cache.
- Figures: median of {res['reps']}, every sample in parentheses, and best-of ratios. Times are
  to process exit; "until durable" adds the `sync` right after. Ratios > 1: reconcile is
  faster. reconcile checks the sha256 of every file it downloads; huggingface_hub and curl
  check none. Raw samples (CPU, RSS, page faults, nginx CPU): `bench/results/hf.json`.
- Noise: writing into the page cache is very noisy on this VM (`dd` of 2 GiB: 0.37 s to
  5.2 s from one minute to the next; curl of the same 2 GiB file: 2.4 s to 6.5 s). Single
  samples swing by ±40 %, so a median of 3 can land on either side of a target.

{table}
"""


if __name__ == "__main__":
    main()
