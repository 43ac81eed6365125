"""What run_all.py's table claims must follow from its samples: the size parser, the
medians and floor, and the writeback notes. (Timings are never asserted.)

    python -m pytest -q bench/test_run_all.py
"""

from __future__ import annotations

import statistics
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from all_model import GIB, MIB, DiskWatch, parse_sizes, size_label  # noqa: E402
from all_report import summarize, writeback_notes  # noqa: E402

mib_counts = st.integers(min_value=1, max_value=64 * 1024)


def _spelled(n_mib: int, unit: str) -> str:
    """n MiB the way a user may type it: 64M, 64MiB, 1G, 1.5G."""
    if unit == "G" and (n_mib * 2) % 1024 == 0:
        return f"{n_mib / 1024:g}G"
    return f"{n_mib}{'M' if unit == 'G' else unit}"


@given(st.lists(mib_counts, min_size=1, max_size=6), st.sampled_from(["M", "MiB", "G"]))
def test_sizes_parse_to_sorted_unique_bytes(counts: list[int], unit: str) -> None:
    text = ",".join(_spelled(n, unit) for n in counts)
    assert parse_sizes(text) == sorted({n * MIB for n in counts})


@given(mib_counts)
def test_a_size_label_reads_back_as_the_same_size(n_mib: int) -> None:
    label = size_label(n_mib * MIB)
    assert parse_sizes(label.replace(" MiB", "M").replace(" GiB", "G")) == [n_mib * MIB]


@given(st.integers(min_value=1, max_value=10 * GIB).filter(lambda n: n % MIB))
def test_a_size_that_is_not_whole_mib_is_refused_naming_the_option(n: int) -> None:
    with pytest.raises(SystemExit, match="--sizes"):
        parse_sizes(f"{n}")


@pytest.mark.parametrize("text", ["", "64Q", "M", "-1M", "64M,,x"])
def test_garbage_sizes_are_refused_naming_the_option(text: str) -> None:
    with pytest.raises(SystemExit, match="--sizes"):
        parse_sizes(text)


def test_a_row_that_does_not_fit_the_disk_says_what_to_do(tmp_path: Path) -> None:
    disk = DiskWatch(tmp_path)
    why = disk.room_for(disk.free())  # 4 copies of all the free space cannot fit
    assert why and "--sizes" in why and "BENCH_TMP" in why
    assert DiskWatch(tmp_path, margin=0).room_for(MIB) is None  # ~1 GiB free is enough


times = st.floats(min_value=0.01, max_value=100, allow_nan=False)


def _samples(draw_s: list[float], extra: float) -> list[dict]:
    return [{"s": s, "durable_s": s + extra, "rss_mb": 50.0, "system_iowait_s": 0.0}
            for s in draw_s]


@given(st.lists(times, min_size=1, max_size=5), st.lists(times, min_size=1, max_size=5),
       st.lists(times, min_size=1, max_size=5), st.lists(times, min_size=1, max_size=5),
       st.floats(min_value=0, max_value=10), st.floats(min_value=0, max_value=10))
def test_ratios_and_floor_come_from_the_medians(rec, peer, net, disk, rec_left, peer_left):
    runs = {"reconcile": _samples(rec, rec_left), "peer": _samples(peer, peer_left),
            "floor net": _samples(net, 0), "floor disk": _samples(disk, 0)}
    s = summarize(runs, goal=1.0)
    med = statistics.median
    assert s["floor_s"] == max(med(net), med(disk))
    assert s["peer_ratio"] == pytest.approx(med(peer) / med(rec))
    assert s["floor_ratio"] == pytest.approx(med(rec) / max(med(net), med(disk)))
    assert s["durable_ratio"] == pytest.approx(
        med([p + peer_left for p in peer]) / med([r + rec_left for r in rec]))


@given(times, times, times, times, st.floats(min_value=0, max_value=100))
def test_a_lead_only_until_durable_is_said(rec, peer, rec_dur_extra, peer_dur_extra, iowait):
    s = {"reconcile_s": rec, "peer_s": peer, "reconcile_durable_s": rec + rec_dur_extra,
         "peer_durable_s": peer + peer_dur_extra, "peer_iowait_s": iowait}
    s["peer_ratio"] = s["peer_s"] / s["reconcile_s"]
    s["durable_ratio"] = s["peer_durable_s"] / s["reconcile_durable_s"]
    notes = writeback_notes(s)
    only_durable = s["peer_ratio"] < 1.0 <= s["durable_ratio"]
    assert any("only until durable" in n for n in notes) == only_durable
    # a lead reconcile does not have is never put down to the peer's writeback
    if peer <= rec:
        assert not any(n.startswith("lead") for n in notes)
    # and one the peer's I/O wait could explain is always flagged
    if rec < peer <= rec + iowait and not only_durable:
        assert any(n.startswith("lead") for n in notes)


@given(st.text())
def test_a_failed_row_stays_one_row_of_the_table_whatever_the_error_says(error: str) -> None:
    from all_report import COLUMNS, table

    tbl = table([{"source": "s3", "size_label": "8 MiB", "files_label": "2 × 8 MiB",
                  "error": error}], [{"source": "scale", "work": "w", "error": error}])
    lines = tbl.split("\n")
    assert len(lines) == 4
    assert all(line.count("|") == len(COLUMNS) + 1 for line in lines)
