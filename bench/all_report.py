"""`run_all.py`'s summary: one table over every source, size and scale case, the machine
it ran on, and the notes that say how to read it (bench/results/all.md is a section
ready for bench/README.md).

Ratios come from medians (every sample stays in all.json). The floor of a row is
max(median of the net floor, median of the disk floor): a download can be no faster
than fetching the bytes, nor than writing them so that nothing is left to flush.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
import statistics
import subprocess
from pathlib import Path

FLOOR_GOAL = 1.3  # reconcile / floor at most
RSS_GOAL_MB = 100


def _first_line(cmd: list[str]) -> str:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    return ((p.stdout or p.stderr).strip().splitlines() or ["?"])[0]


def _version(line: str) -> str:
    """The first word of a version line that looks like a version ('git version 2.39.5',
    'version 8000GB 4.48 pypi linux amd64')."""
    m = re.search(r"\b\d+\.\d+(\.\d+)?\S*", line)
    return m.group(0) if m else line


def machine_info(reconcile_cmd: str, weed: str | None) -> dict[str, str]:
    """What the header line says: when, on what, with which tools."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import boto3
    import huggingface_hub

    here = Path(__file__).resolve().parent
    return {
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
        "cores": str(os.cpu_count()), "kernel": platform.release(),
        "python": platform.python_version(),
        "reconcile": _first_line(["git", "-C", str(here), "describe", "--always", "--dirty"]),
        "reconcile_cmd": reconcile_cmd,
        "huggingface_hub": huggingface_hub.__version__, "boto3": boto3.__version__,
        "curl": _first_line(["curl", "--version"]).split(" (")[0],
        "git": _version(_first_line(["git", "--version"])),
        "git_lfs": _first_line(["git", "lfs", "version"]).split(" (")[0],
        "docker_registry": _first_line(["docker-registry", "--version"]).split(" ")[-1],
        "seaweedfs": _version(_first_line([weed, "version"])) if weed else "not found",
        "nginx": _first_line(["nginx", "-v"]).split(": ")[-1],
    }


def header(info: dict[str, str]) -> str:
    return (f"{info['date']} · {info['cpu']} · {info['cores']} cores · kernel {info['kernel']}"
            f" · Python {info['python']} · reconcile {info['reconcile']} · huggingface_hub"
            f" {info['huggingface_hub']} · boto3 {info['boto3']} · {info['curl']} ·"
            f" git {info['git']} · {info['git_lfs']} · docker-registry"
            f" {info['docker_registry']} · SeaweedFS {info['seaweedfs']} · {info['nginx']}")


# --- one row ---------------------------------------------------------------------------

def _med(rs: list[dict], key: str = "s") -> float:
    return statistics.median(r[key] for r in rs)


def summarize(runs: dict[str, list[dict]], goal: float) -> dict:
    """Medians, ratios and notes of one source row (``runs``: role -> samples)."""
    rec, peer = runs["reconcile"], runs["peer"]
    net, disk = _med(runs["floor net"]), _med(runs["floor disk"])
    s = {"reconcile_s": _med(rec), "reconcile_durable_s": _med(rec, "durable_s"),
         "reconcile_rss_mb": max(r["rss_mb"] for r in rec),
         "peer_s": _med(peer), "peer_durable_s": _med(peer, "durable_s"),
         "peer_iowait_s": _med(peer, "system_iowait_s") if "system_iowait_s" in peer[0] else 0.0,
         "floor_net_s": net, "floor_disk_s": disk, "floor_s": max(net, disk), "goal": goal}
    s["peer_ratio"] = s["peer_s"] / s["reconcile_s"]
    s["durable_ratio"] = s["peer_durable_s"] / s["reconcile_durable_s"]
    s["floor_ratio"] = s["reconcile_s"] / s["floor_s"]
    s["notes"] = writeback_notes(s)
    return s


def writeback_notes(s: dict) -> list[str]:
    """Say where reconcile's lead over the peer may be the peer's writeback, not a
    faster download (the issue: "rows whose advantage comes only from a peer's
    writeback stall say so")."""
    notes = []
    lead = s["peer_s"] - s["reconcile_s"]
    leftover = s["peer_durable_s"] - s["peer_s"]
    if s["peer_ratio"] < 1.0 <= s["durable_ratio"]:
        notes.append(f"reconcile ahead only until durable: the peer exits first but leaves"
                     f" {leftover:.2f} s of writeback")
    elif lead > 0 and s["peer_iowait_s"] >= lead:
        notes.append(f"lead {lead:.2f} s ≤ the peer's I/O wait {s['peer_iowait_s']:.2f} s:"
                     " may be the peer's writeback stall alone")
    if leftover > max(0.5, 0.5 * s["peer_s"]):
        notes.append(f"peer's until-durable ≫ its wall ({s['peer_durable_s']:.2f} s vs"
                     f" {s['peer_s']:.2f} s)")
    return notes


# --- the table ---------------------------------------------------------------------------

COLUMNS = ["source", "per-file size", "files × size", "reconcile s", "peer (name) s",
           "peer ratio", "floor s (net, disk)", "floor ratio", "reconcile until durable",
           "peer until durable", "peak RSS reconcile"]


def _ok(good: bool) -> str:
    return "✓" if good else "✗"


def _failed(error: str) -> str:
    """A failure in one table cell: one line, no '|' (all.json has the whole message)."""
    return "FAILED: " + " ".join(error.split()).replace("|", "/")[:160]


def _samples(rs: list[dict], key: str = "s") -> str:
    return "/".join(f"{r[key]:.2f}" for r in rs)


def source_cells(row: dict) -> list[str]:
    head = [row["source"], row["size_label"], row["files_label"]]
    if "error" in row:
        return [*head, _failed(row["error"])] + [""] * (len(COLUMNS) - 4)
    s, runs = row["summary"], row["runs"]
    mark = "" if not s["notes"] else " ⁽ʷᵇ⁾"
    return [
        *head, f"{s['reconcile_s']:.2f} ({_samples(runs['reconcile'])})",
        f"{row['peer_name']} {s['peer_s']:.2f} ({_samples(runs['peer'])})",
        f"**{s['peer_ratio']:.2f}×** ≥ {s['goal']:g} {_ok(s['peer_ratio'] >= s['goal'])}{mark}",
        f"{s['floor_s']:.2f} ({s['floor_net_s']:.2f}, {s['floor_disk_s']:.2f})",
        f"{s['floor_ratio']:.2f}× ≤ {FLOOR_GOAL} {_ok(s['floor_ratio'] <= FLOOR_GOAL)}",
        f"{s['reconcile_durable_s']:.2f}", f"{s['peer_durable_s']:.2f}",
        f"{s['reconcile_rss_mb']:.0f} MB {_ok(s['reconcile_rss_mb'] < RSS_GOAL_MB)}"]


def extra_cells(row: dict) -> list[str]:
    """A scale or core row: reconcile's time against its goal, a peer where there is one."""
    cells = [row["source"], "—", row["work"]]
    if "error" in row:
        return [*cells, _failed(row["error"])] + [""] * (len(COLUMNS) - 4)
    rec = (f"{row['s']:.2f} (≤ {row['goal_s']:g} s {_ok(row['s'] <= row['goal_s'])})"
           if row.get("goal_s") else f"{row['s']:.2f}")
    peer = ratio = floor = floor_ratio = ""
    if row.get("peer_s"):
        peer = f"{row['peer_name']} {row['peer_s']:.2f}"
        ratio = f"{row['peer_s'] / row['s']:.2f}×"
    if row.get("floor_s"):
        floor, floor_ratio = f"{row['floor_s']:.2f} (disk)", f"{row['s'] / row['floor_s']:.2f}×"
    rss = f"{row['rss_mb']:.0f} MB {_ok(row['rss_mb'] < RSS_GOAL_MB)}" if row.get("rss_mb") else ""
    return [*cells, rec, peer, ratio, floor, floor_ratio, "", "", rss]


def table(rows: list[dict], extras: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(source_cells(row)) + " |")
    for row in extras:
        lines.append("| " + " | ".join(extra_cells(row)) + " |")
    return "\n".join(lines)


def row_notes(rows: list[dict]) -> tuple[list[str], list[str]]:
    """(the writeback notes of the rows marked ⁽ʷᵇ⁾, the context tools' figures)."""
    marked, context = [], []
    for row in rows:
        where = f"{row['source']} {row['size_label']}"
        s = row.get("summary") or {}
        marked += [f"{where}: {n}" for n in s.get("notes", [])]
        for name, rs in row.get("runs", {}).items():
            if name not in ("reconcile", "peer", "floor net", "floor disk"):
                context.append(f"{where}: {name} {_med(rs):.2f} s ({_samples(rs)}), until"
                               f" durable {_med(rs, 'durable_s'):.2f} s")
    return marked, context


def how_to_read(res: dict) -> str:
    """The paragraph under the table: what each column measured, under which conditions."""
    a = res["args"]
    vouched = ("kept from that lock (a user's models.lock came from their own `reconcile"
               " lock`)" if a["keep_vouched"] else "dropped too (apply asks each source"
               " to vouch again)")
    settle = (f"after a {a['settle']:g} s settle" if a["settle"] else
              "run last, no settle wait: for minutes after many inodes were freed, as by"
              " an earlier run's cleanup, creates are slower; `--settle 360` waits")
    return f"""How to read it: times in seconds, median of {a['reps']} (every sample in
parentheses; {a['reps_big']} for 4 GiB and more), tools alternating, `sync` (untimed)
before each run, nothing dropped from the page cache. "reconcile": `reconcile apply`
with models.lock in place (`lock` ran once, untimed), a fresh store and fresh targets
(HF cache, ollama models directory) every run; the store's `state/vouched` records were
{vouched}. reconcile's apply is durable at exit (objects are fsynced before they are
named); the peers are timed to exit, and "until durable" adds the `sync` right after.
Peer ratio = peer / reconcile (goal ≥ 1.0, ≥ 1.5 for hf); floor = max(the weight files
fetched in parallel by curl to /dev/null from the same server (presigned URLs for S3,
the LFS batch API's hrefs for git_lfs), the same bytes written by `dd bs=8M
oflag=direct`, one per file in parallel); floor ratio = reconcile / floor (goal ≤ 1.3).
reconcile checks the sha256 of every file; the peers check none (git-lfs does).
Validation is off (`RECONCILE_VALIDATION=none`: the weights are random bytes);
reconcile's modules are byte-compiled first, as `pip install` leaves them. Scale rows:
cold `apply` of `source.mock` models (bench_scale.py), floor = the disk's time for as
many small files and symlinks ({settle}); core rows: bench_core.py, median of 5.
Peak disk use {res['disk']['peak_use_gib']:.1f} GiB of
{res['disk']['free_at_start_gib']:.0f} GiB free; the run took
{res['elapsed_s'] / 60:.1f} min."""


def markdown(res: dict, tbl: str) -> str:
    """The section for bench/README.md."""
    info = res["info"]
    marked, context = row_notes(res["rows"])
    notes = "\n".join(f"- {n}" for n in marked) or "- (none)"
    context_md = "\n".join(f"- {n}" for n in context) or "- (none)"
    return f"""### All sources (`run_all.py`, {info['date'][:10]}: {info['cpu']}, {info['cores']} cores)

    {res['command']}

{header(info)}

{tbl}

{how_to_read(res)}

⁽ʷᵇ⁾ rows where reconcile's lead may come from the peer's writeback (ahead only until
durable; or a lead no larger than the I/O wait during the peer's runs, which includes
the kernel throttling its page-cache writes), and peers that exit with much left to flush:

{notes}

For context (not in the ratios): plain curl of every file of the hf repo to disk.

{context_md}
"""
