"""Ctrl-C, seen by every thread: a tiny module so the CLI can install it without
importing the transfer machinery (``lock --check`` stays fast).

The main thread gets KeyboardInterrupt as usual; worker threads never do, so the
handler also sets ``CANCEL``, which every transfer loop checks once per chunk (and
every retry wait): a download stops within one buffer, keeping its partial.
"""

from __future__ import annotations

import signal
import threading
from typing import Any

CANCEL = threading.Event()


class Cancelled(KeyboardInterrupt):
    """A transfer stopped because the user pressed Ctrl-C (its partial is kept)."""


def _handler(signum: int, frame: Any) -> None:
    CANCEL.set()
    signal.default_int_handler(signum, frame)


def install() -> None:
    """Route SIGINT through CANCEL (main thread only, as signal handlers must be)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, _handler)


def abandon(pool: Any, futures: Any, grace: float = 1.0) -> None:
    """After Ctrl-C: tell every transfer to stop, start nothing new, and wait at most
    ``grace`` seconds. Transfers stop within one chunk; a thread stuck on a silent
    socket is left behind (the CLI then exits without waiting for it), so Ctrl-C never
    waits for a read timeout."""
    from concurrent.futures import wait

    CANCEL.set()
    pool.shutdown(wait=False, cancel_futures=True)
    wait(list(futures), timeout=grace)
