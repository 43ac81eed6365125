"""Every source at every size, against the tool a user would otherwise use and against
the floor, in one run and one table.

    python bench/run_all.py             # the full matrix (≤ 15 min on 2 cores)
    python bench/run_all.py --quick     # a smoke run: 8 MiB files, 1 repetition (≤ 2 min)
    python bench/run_all.py --only hf,s3 --sizes 64M,256M --reps 5

Sources (bench/all_sources.py): hf (the nginx stand-in Hub), s3 (SeaweedFS), oci
(docker-registry, source.ollama), git_lfs (the test forge); sizes 64 MiB, 256 MiB,
1 GiB, 4 GiB per weight file (bench/all_model.py: 2 files + 20 small ones; one file at
4 GiB). Last the cheap rows: scale (cold apply of 1,000 models x 3 files and of one model
of 6,000 files, bench_scale.py) and core (`lock --check`, no-op apply, bench_core.py).
`--only` takes source names and `scale`, `core`.

It measures the reconcile of this checkout (PYTHONPATH is set to it). Prints the
summary table; writes bench/results/all.json (every sample) and all.md (a section for
bench/README.md); --quick writes all-quick.json and all-quick.md instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# every reconcile this run starts is this checkout's, whatever is installed in the venv
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))

import all_report  # noqa: E402
from all_model import DiskWatch, make_model, parse_sizes, size_label  # noqa: E402
from all_sources import PY, RECONCILE, SOURCES, Row, RowFailed  # noqa: E402
from alternate import alternate, save_results  # noqa: E402
from bench_hf import wipe  # noqa: E402

from tests.servers import weed_binary  # noqa: E402

SIZES, QUICK_SIZES = "64M,256M,1G,4G", "8M"
CHEAP = ("scale", "core")
REPS, REPS_BIG = 3, 2  # REPS_BIG: rows of 1 GiB and more (15 min in all), unless --reps says so
BIG_REPS_FROM = 1 << 30


def parse_args(argv: list[str] | None = None):
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help=f"sizes {QUICK_SIZES}, 1 repetition: a smoke run (≤ 2 min)")
    ap.add_argument("--only", default=",".join([*SOURCES, *CHEAP]),
                    help="rows to run, comma-separated: " + ", ".join([*SOURCES, *CHEAP]))
    ap.add_argument("--sizes", help=f"per-file sizes (default {SIZES}; --quick {QUICK_SIZES})")
    ap.add_argument("--reps", type=int, help=f"repetitions per tool, median reported"
                    f" (default {REPS}, {REPS_BIG} for 1 GiB and more; --quick 1)")
    ap.add_argument("--drop-vouched", action="store_true",
                    help="start every apply without the store's state/vouched records of"
                    " the untimed lock (apply then asks each source to vouch again)")
    ap.add_argument("--settle", type=float, default=0.0,
                    help="seconds to wait after a sync before the scale rows (see"
                    " bench_scale.retire); default 0")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in SOURCES and s not in CHEAP]
    if unknown:
        ap.error(f"--only: unknown {', '.join(unknown)}; choose from"
                 f" {', '.join([*SOURCES, *CHEAP])}")
    if args.reps is not None and args.reps < 1:
        ap.error("--reps: at least 1")
    args.only = only
    args.sizes = parse_sizes(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    args.reps_big = args.reps or (1 if args.quick else REPS_BIG)
    args.reps = args.reps or (1 if args.quick else REPS)
    return args


def run_row(cls: type[Row], tmp: Path, model, disk: DiskWatch, reps: int,
            keep_vouched: bool) -> dict:
    """One source at one size: set up, measure every tool ``reps`` times, alternating."""
    row = {"source": cls.source, "size": model.size, "size_label": model.label,
           "files_label": model.files_label, "peer_name": cls.peer_name, "reps": reps}
    print(f"[{cls.source} {model.label}] {model.files_label}", flush=True)
    t = time.perf_counter()
    try:
        with cls(tmp, model, disk, keep_vouched=keep_vouched).open() as r:
            row["setup_s"] = time.perf_counter() - t
            row["runs"] = alternate(r.tools(), reps)
        row["summary"] = all_report.summarize(row["runs"], cls.goal)
    except SystemExit as e:  # bench_hf.measure: a tool failed (a signal's exit re-raises)
        if not isinstance(e.code, str):
            raise
        row["error"] = e.code.strip()
    except RowFailed as e:
        row["error"] = str(e)
    except Exception as e:  # a server or client library's error: this row fails, not the run
        row["error"] = f"{type(e).__name__}: {e}".strip()
    row["elapsed_s"] = time.perf_counter() - t
    if "error" in row:
        print(f"  FAILED: {row['error'][:2000]}", flush=True)
    print(f"  ({row['elapsed_s']:.0f} s)", flush=True)
    return row


def run_sources(args, tmp: Path, disk: DiskWatch) -> list[dict]:
    """The matrix, size by size: each size's model is made once, served by every source
    in turn, then deleted."""
    rows = []
    sources = [SOURCES[s] for s in SOURCES if s in args.only]
    for size in args.sizes if sources else []:
        reps = args.reps_big if size >= BIG_REPS_FROM else args.reps
        why = disk.room_for(size)
        if why:
            print(f"[{size_label(size)}] skipped: {why}", flush=True)
            rows += [{"source": c.source, "size": size, "size_label": size_label(size),
                      "files_label": "", "error": why} for c in sources]
            continue
        t = time.perf_counter()
        model = make_model(tmp / "gen", size)
        print(f"[{size_label(size)}] model made in {time.perf_counter() - t:.1f} s", flush=True)
        for cls in sources:
            rows.append(run_row(cls, tmp / cls.source, model, disk, reps,
                                not args.drop_vouched))
            print(f"  ({(time.perf_counter() - args.t0) / 60:.1f} min so far)", flush=True)
        wipe(tmp / "gen")
    return rows


def run_scale(tmp: Path, reps: int, settle: float) -> list[dict]:
    """Cold apply of 1,000 models x 3 files and of one model of 6,000 files (goal ≤ 2 s
    each), by bench_scale.py's own cases, with its disk floor beside them."""
    import bench_scale

    if settle:
        os.sync()
        time.sleep(settle)
    out = []
    for work, toml, n in (("1,000 models × 3 files", bench_scale.many_models(1000), 3000),
                          ("1 model × 6,000 files", bench_scale.one_model(6000), 6000)):
        where = tmp / "scale"
        where.mkdir(parents=True, exist_ok=True)
        r = bench_scale.run_case(where, toml, reps)
        floor = bench_scale.disk_floor(where, n)
        print(f"[scale] {work}: cold apply {r['cold']:.2f} s ({r['cold_elsewhere']:.2f} s"
              f" for a lock made elsewhere), no-op {r['noop']:.2f} s, lock {r['lock']:.2f} s"
              f" (disk floor {floor:.2f} s)", flush=True)
        out.append({"source": "scale", "work": f"cold `apply`, {work}", "s": r["cold"],
                    "goal_s": 2.0, "rss_mb": r["rss_mb"], "floor_s": floor,
                    "lock_s": r["lock"], "noop_s": r["noop"], "samples": r["samples"]})
        out.append({"source": "scale", "work": f"cold `apply`, {work}, lock made elsewhere"
                    " (each model asked at its pin first)", "s": r["cold_elsewhere"],
                    "rss_mb": r["rss_mb"], "floor_s": floor, "samples": r["samples"]})
    wipe(tmp / "scale")
    return out


def run_core(tmp: Path) -> list[dict]:
    """`lock --check` of 300 models and no-op apply of 100 x 30 files (bench_core.py, 5
    runs each, medians)."""
    import bench_core

    where = tmp / "core"
    where.mkdir()
    lc = bench_core.bench_lock_check(where)
    noop = bench_core.bench_noop_apply(where)
    wipe(where)
    print(f"[core] lock --check {lc['reconcile_s']:.2f} s, no-op apply"
          f" {noop['reconcile_s']:.2f} s", flush=True)
    return [{"source": "core", "work": "`lock --check`, 300 models", "s": lc["reconcile_s"],
             "goal_s": lc["target_s"], "raw": lc},
            {"source": "core", "work": "no-op `apply`, 100 models × 30 files",
             "s": noop["reconcile_s"], "goal_s": noop["target_s"],
             "peer_name": "snapshot_download(local_files_only) ×100",
             "peer_s": noop["huggingface_hub offline snapshot_download x100_s"], "raw": noop}]


def run_cheap(args, tmp: Path) -> list[dict]:
    """The scale and core rows; a failure is a row that says so."""
    out = []
    for name, run in (("scale", lambda: run_scale(tmp, args.reps, args.settle)),
                      ("core", lambda: run_core(tmp))):
        if name not in args.only:
            continue
        try:
            out += run()
        except (Exception, SystemExit) as e:  # reported as a failed row
            if isinstance(e, SystemExit) and not isinstance(e.code, str):
                raise
            out.append({"source": name, "work": name, "error": str(e)[-1000:] or repr(e)})
            print(f"[{name}] FAILED: {e}", flush=True)
    return out


def precompile() -> None:
    """Bytecode for this checkout's reconcile, as `pip install` leaves it: with
    PYTHONDONTWRITEBYTECODE set (as in some dev shells) every run would compile its ~40
    modules again (~0.2 s of each apply here)."""
    import compileall

    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    compileall.compile_dir(str(ROOT / "reconcile"), quiet=1)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    precompile()
    tmp = Path(tempfile.mkdtemp(prefix="reconcile-all-", dir=os.environ.get("BENCH_TMP")))
    disk = DiskWatch(tmp)
    info = all_report.machine_info(RECONCILE, weed_binary())
    info["reconcile_module"] = subprocess.run(
        [PY, "-c", "import reconcile; print(reconcile.__file__)"], capture_output=True,
        text=True).stdout.strip()  # this checkout's, through PYTHONPATH
    print(all_report.header(info), flush=True)
    res: dict = {"info": info, "command": " ".join(["python bench/run_all.py", *sys.argv[1:]]),
                 "args": {"only": args.only, "sizes": args.sizes, "reps": args.reps,
                          "reps_big": args.reps_big, "quick": args.quick,
                          "keep_vouched": not args.drop_vouched, "settle": args.settle},
                 "tmp": str(tmp)}
    args.t0 = t0 = time.perf_counter()
    try:
        res["rows"] = run_sources(args, tmp, disk)
        # last: the source rows free few inodes, and on ext4 creates are slow for minutes
        # after many were freed (bench_scale.retire), as an earlier run's cleanup does
        res["extras"] = run_cheap(args, tmp)
    finally:
        wipe(tmp)
    res["elapsed_s"] = time.perf_counter() - t0
    res["disk"] = disk.summary()
    tbl = all_report.table(res["rows"], res["extras"])
    res["table"] = tbl
    stem = "all-quick" if args.quick else "all"
    save_results(res, stem, indent=1)
    (HERE / "results" / f"{stem}.md").write_text(all_report.markdown(res, tbl))
    print()
    print(all_report.header(info))
    print()
    print(tbl)
    marked, context = all_report.row_notes(res["rows"])
    if marked or context:
        print("\n" + "\n".join(f"- {n}" for n in (*marked, *context)))
    print(f"\n{res['elapsed_s'] / 60:.1f} min; peak disk use {res['disk']['peak_use_gib']:.1f}"
          f" GiB; bench/results/{stem}.json (every sample), bench/results/{stem}.md")


if __name__ == "__main__":
    main()
