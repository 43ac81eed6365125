"""Progress where someone watches: rich bars on a terminal, plain lines in a log (CI, a
dev container's setup), NDJSON for programs (`--progress json`).

NDJSON events, one object per line on stderr, fields stable (README documents them):
``plan`` (counts and bytes), ``start`` / ``bytes`` (at most once a second or per 1 %) /
``done`` per file (each naming ``model`` and ``file``), ``warning``, then ``summary``
and/or ``error`` from the CLI. Every event has ``event`` and ``t`` (seconds since the run
started). In that mode nothing else is written to stderr: a program reads every line.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable
from typing import IO, Any

from .apply import ProgressSink
from .plan import Plan, human


class _Clock:
    def __init__(self) -> None:
        self.start = time.monotonic()

    def now(self) -> float:
        return round(time.monotonic() - self.start, 3)


class JsonProgress(ProgressSink):
    """NDJSON events on a stream (stderr by default)."""

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stderr
        self.clock = _Clock()
        self.lock = threading.Lock()
        self.states: dict[str, dict[str, Any]] = {}

    def emit(self, event: str, **fields: Any) -> None:
        line = json.dumps({"event": event, "t": self.clock.now(), **fields})
        with self.lock:
            self.out.write(line + "\n")
            self.out.flush()

    def begin(self, plan: Plan) -> None:
        c = plan.counts()
        self.emit("plan", fetch=c.get("fetch", 0), bytes=plan.fetch_bytes(),
                  assemble=c.get("assemble", 0), validate=c.get("validate", 0),
                  link=c.get("link", 0), unlink=c.get("unlink", 0))

    def task(self, description: str, total: int, *, model: str | None = None,
             file: str | None = None) -> Callable[[int], None]:
        who = {"model": model, "file": file, "label": description}
        self.emit("start", **who, total=total)
        state: dict[str, Any] = {"done": 0, "last_t": time.monotonic(), "last_pct": 0,
                                 "who": who}

        def advance(n: int) -> None:
            state["done"] += n
            now = time.monotonic()
            pct = state["done"] * 100 // total if total else 0
            if now - state["last_t"] >= 1.0 or pct > state["last_pct"]:
                state["last_t"], state["last_pct"] = now, pct
                self.emit("bytes", **who, done=state["done"], total=total)

        self.states[description] = state
        return advance

    def finish(self, description: str, *, origin: str = "source") -> None:
        state = self.states.pop(description, {"done": 0, "who": {"label": description}})
        self.emit("done", **state["who"], bytes=state["done"], origin=origin)


class LineProgress(ProgressSink):
    """A plain line per finished file, and one every 10 s for a long transfer: a log
    that shows a 20-minute download moving, without a terminal's redraws."""

    EVERY = 10.0

    def __init__(self, out: IO[str] | None = None) -> None:
        self.out = out or sys.stderr
        self.lock = threading.Lock()
        self.states: dict[str, dict[str, Any]] = {}

    def say(self, text: str) -> None:
        with self.lock:
            self.out.write(text + "\n")
            self.out.flush()

    def begin(self, plan: Plan) -> None:
        c = plan.counts()
        if n := c.get("fetch"):
            self.say(f"fetching {n} file{'s' if n > 1 else ''} ({human(plan.fetch_bytes())})")

    def task(self, description: str, total: int, *, model: str | None = None,
             file: str | None = None) -> Callable[[int], None]:
        state = {"done": 0, "last": time.monotonic(), "total": total}
        self.states[description] = state

        def advance(n: int) -> None:
            state["done"] += n
            now = time.monotonic()
            if now - state["last"] >= self.EVERY:
                state["last"] = now
                self.say(f"  … {description}: {human(state['done'])} of {human(total)}")

        return advance

    def finish(self, description: str, *, origin: str = "source") -> None:
        state = self.states.pop(description, {"done": 0, "total": 0})
        size = human(state["total"] or state["done"])
        if origin == "store":  # another process fetched it while this one waited
            self.say(f"{description}: in the store already ({size})")
        elif origin not in ("source", "team cache"):
            self.say(f"copied {description} from {origin} ({size})")
        else:
            self.say(f"fetched {description} ({size}"
                     + (", from the team cache)" if origin == "team cache" else ")"))


class RichProgress(ProgressSink):
    """Bars on the terminal's stderr. ``color``: auto (rich's rules, NO_COLOR
    included), never, or always."""

    def __init__(self, color: str = "auto") -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(binary_units=True),  # MiB, as the plain lines and summaries say
            _speed_column(),
            TimeRemainingColumn(),
            transient=True,
            console=Console(stderr=True, no_color=True if color == "never" else None,
                            force_terminal=True if color == "always" else None),
        )
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def task(self, description: str, total: int, *, model: str | None = None,
             file: str | None = None) -> Callable[[int], None]:
        with self.lock:
            tid = self.progress.add_task(description[-40:], total=total or None)
            self.tasks[description] = tid
        return lambda n: self.progress.advance(tid, n)

    def finish(self, description: str, *, origin: str = "source") -> None:
        with self.lock:
            tid = self.tasks.pop(description, None)
        if tid is not None:
            self.progress.remove_task(tid)


def _speed_column_class() -> type:
    from rich.progress import ProgressColumn
    from rich.text import Text

    class SpeedColumn(ProgressColumn):
        """rich's TransferSpeedColumn counts in MB/s; this one in MiB/s, like the rest."""

        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("?" if speed is None else f"{human(int(speed))}/s",
                        style="progress.data.speed")

    return SpeedColumn


def _speed_column() -> Any:
    return _speed_column_class()()
