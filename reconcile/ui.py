"""Progress for people: rich bars on a terminal; nothing at all otherwise."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .apply import ProgressSink


class RichProgress(ProgressSink):
    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}", justify="left"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            transient=True,
        )
        self.tasks: dict[str, Any] = {}
        self.lock = threading.Lock()

    def __enter__(self) -> RichProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def task(self, description: str, total: int) -> Callable[[int], None]:
        with self.lock:
            tid = self.progress.add_task(description[-40:], total=total or None)
            self.tasks[description] = tid
        return lambda n: self.progress.advance(tid, n)

    def finish(self, description: str) -> None:
        with self.lock:
            tid = self.tasks.pop(description, None)
        if tid is not None:
            self.progress.remove_task(tid)
