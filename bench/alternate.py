"""What the peer benchmarks share: tools run in alternating order, and their table."""

from __future__ import annotations

import statistics
from collections.abc import Callable


def alternate(tools: dict[str, Callable[[], dict]], reps: int) -> dict[str, list[dict]]:
    """Each tool ``reps`` times, the order reversed every other repetition (so no tool
    always runs on a cache or disk the previous one left warm), every sample printed."""
    runs: dict[str, list[dict]] = {n: [] for n in tools}
    names = list(tools)
    width = max(len(n) for n in names) + 2
    for i in range(reps):
        for n in (names if i % 2 == 0 else names[::-1]):
            r = tools[n]()
            runs[n].append(r)
            print(f"  {n:<{width}} {r['s']:7.3f} s  durable {r['durable_s']:7.3f} s"
                  f"  RSS {r['rss_mb']:6.1f} MB", flush=True)
    return runs


def ratio_table(runs: dict[str, list[dict]], mine: str, title: str) -> str:
    """Median wall time (samples), durable time, peak RSS, and each peer's median over
    reconcile's (> 1: reconcile is faster)."""
    med = {n: statistics.median(r["s"] for r in rs) for n, rs in runs.items()}
    lines = [title, "", "| tool | wall s (samples) | durable s | peak RSS MB | vs reconcile |",
             "|---|---|---|---|---|"]
    for n, rs in runs.items():
        samples = ", ".join(f"{r['s']:.2f}" for r in rs)
        dur = statistics.median(r["durable_s"] for r in rs)
        ratio = "—" if n == mine else f"{med[n] / med[mine]:.2f}×"
        lines.append(f"| {n} | {med[n]:.2f} ({samples}) | {dur:.2f} |"
                     f" {max(r['rss_mb'] for r in rs):.0f} | {ratio} |")
    return "\n".join(lines)


def run_info(args: object, reconcile_cmd: str, **extra: object) -> dict:
    """The facts a result file starts with: when, how, on what, which reconcile."""
    import datetime
    import os
    import platform
    import subprocess
    from pathlib import Path

    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "quick": getattr(args, "quick", False), "reps": getattr(args, "reps", 1),
            "cpus": os.cpu_count(), "python": platform.python_version(),
            "reconcile_cmd": reconcile_cmd,
            "reconcile_git": subprocess.run(["git", "describe", "--always", "--dirty"],
                                            cwd=Path(__file__).parent, capture_output=True,
                                            text=True).stdout.strip(), **extra}


def save_results(res: dict, stem: str, quick: bool = False, indent: int = 1) -> str:
    """bench/results/<stem>.json (<stem>-quick.json for a --quick run; not committed);
    returns the file's name."""
    import json
    from pathlib import Path

    out = Path(__file__).resolve().parent / "results"
    out.mkdir(exist_ok=True)
    name = f"{stem}-quick.json" if quick else f"{stem}.json"
    (out / name).write_text(json.dumps(res, indent=indent))
    return name


def first_line(cmd: list[str]) -> str:
    """A tool's version line, for the record."""
    import subprocess

    return subprocess.run(cmd, capture_output=True, text=True).stdout.split("\n")[0].strip()
