"""The model of one `run_all.py` row, made once per size and served by every source.

A row's model is what a user's model looks like to a download tool: two weight files of
the row's size (one for 4 GiB and more) and twenty small files of 1-64 KiB. The weights
are incompressible and never sparse (`hfsite.write_big`), so no layer of any server or
filesystem can shortcut them. Each source copies or links these files into its server;
the files here also feed the disk floor (`dd ... oflag=direct`).

Disk: a row needs about four times its weights at once (these files, the server's
copy, a peer's output with a second copy such as git-lfs's `.git/lfs/objects`).
``DiskWatch`` refuses to start a row that would leave less than a margin free and
records the least free space seen, so the results say the peak honestly.
"""

from __future__ import annotations

import os
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from hfsite import write_big

MIB, GIB = 1 << 20, 1 << 30
SMALL_FILES = 20
ONE_BIG_FROM = 4 * GIB  # from this size on, a row's model has one weight file


@dataclass
class BigFile:
    name: str
    path: Path  # the generated copy (kept in the page cache: the disk floor reads it)
    size: int
    sha256: str


@dataclass
class Model:
    size: int  # bytes per weight file
    big: list[BigFile]
    small: dict[str, bytes] = field(default_factory=dict)  # path -> content

    @property
    def label(self) -> str:
        return size_label(self.size)

    @property
    def files_label(self) -> str:
        return f"{len(self.big)} × {self.label} + {len(self.small)} small"

    def files(self) -> dict[str, int]:
        """Every file of the model: path -> size (what each tool must install)."""
        return {**{b.name: b.size for b in self.big},
                **{p: len(d) for p, d in self.small.items()}}


def size_label(n: int) -> str:
    if n >= GIB and n % GIB == 0:
        return f"{n // GIB} GiB"
    if n >= MIB and n % MIB == 0:
        return f"{n // MIB} MiB"
    return f"{n:,} B"


def parse_sizes(text: str) -> list[int]:
    """'64M,256M,1G' -> bytes, sorted; SystemExit naming the bad item otherwise."""
    from reconcile.units import parse_size

    out = []
    for item in (s.strip() for s in text.split(",")):
        try:
            n = parse_size(item, "--sizes")
        except ValueError as e:
            raise SystemExit(f"{e} (e.g. --sizes 64M,256M)") from None
        if n < MIB or n % MIB:
            raise SystemExit(f"--sizes: {item!r} is not a whole number of MiB (at least 1M)")
        out.append(n)
    return sorted(set(out))


def make_model(root: Path, size: int) -> Model:
    """Generate the row's files under ``root`` (deleted by the caller after the row)."""
    root.mkdir(parents=True, exist_ok=True)
    n_big = 1 if size >= ONE_BIG_FROM else 2
    big = []
    for i in range(1, n_big + 1):
        name = f"model-{i:05d}-of-{n_big:05d}.safetensors"
        path = root / name
        big.append(BigFile(name, path, size, write_big(path, size, seed=size + i)))
    rnd = random.Random(size)
    small = {"config.json": os.urandom(rnd.randint(1024, 64 * 1024))}
    for i in range(1, SMALL_FILES):
        name = f"tok/part-{i:02d}.json" if i % 3 == 0 else f"extra-{i:02d}.json"
        small[name] = os.urandom(rnd.randint(1024, 64 * 1024))
    return Model(size, big, small)


def warm(paths: list[Path]) -> None:
    """Read files once so they are in the page cache (untimed; nothing is dropped)."""
    buf = bytearray(8 * MIB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


class DiskWatch:
    """Free space where the benchmark writes: refuse a row that would crowd the disk,
    and keep the least free space seen (the run's peak use, reported with the results)."""

    def __init__(self, where: Path, margin: int = 10 * GIB) -> None:
        self.where, self.margin = where, margin
        self.start = self.free()
        self.least = self.start

    def free(self) -> int:
        return shutil.disk_usage(self.where).free

    def note(self) -> None:
        self.least = min(self.least, self.free())

    def room_for(self, size: int) -> str | None:
        """Before generating a row of weight files of ``size``: None if ~4 copies fit with
        the margin left free, else what the user can do about it."""
        want = 4 * (size if size >= ONE_BIG_FROM else 2 * size) + GIB
        free = self.free()
        if free - want >= self.margin:
            return None
        return (f"not enough disk for the {size_label(size)} rows under {self.where}: they"
                f" need about {want / GIB:.1f} GiB and {self.margin / GIB:.0f} GiB must stay"
                f" free, {free / GIB:.1f} GiB is free. Free some space, set BENCH_TMP to a"
                " larger filesystem, or leave that size out (--sizes 64M,256M,1G)")

    def summary(self) -> dict[str, float]:
        return {"free_at_start_gib": self.start / GIB, "least_free_gib": self.least / GIB,
                "peak_use_gib": (self.start - self.least) / GIB}
