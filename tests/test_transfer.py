"""The shared transfer engine: parallel ranges, resume, retries, verification."""

from __future__ import annotations

import hashlib

import pytest

from reconcile import transfer
from reconcile.config import NetworkConfig, parse_manifest
from reconcile.errors import IntegrityError, SourceError
from reconcile.lockfile import LockedFile
from reconcile.resolve import SourceContext, make_source
from reconcile.sources.base import Transient
from reconcile.store import Store

SIZE = 9 * 1024 * 1024 + 123


def mock_source(store: Store):
    m = parse_manifest(f'[models.m]\nsource.mock = {{ files = [{{ path = "w.bin", size = {SIZE} }}] }}\n'.encode())
    src = make_source(m.models["m"], SourceContext(store))
    res = src.resolve()
    f = res.files[0]
    return src, res.pin, LockedFile(f.path, f.size, f.sha256)


class Flaky:
    """Wraps a source: the first `fail` opens die after `after` bytes (a reset)."""

    def __init__(self, inner, fail: int, after: int) -> None:
        self.inner, self.fail, self.after = inner, fail, after
        self.type, self.supports_ranges = inner.type, True
        self.opens: list[tuple[int, int | None]] = []

    def __getattr__(self, name):  # the rest of the Source interface is the inner one's
        return getattr(self.inner, name)

    def open(self, pin, file, start=0, end=None):
        self.opens.append((start, end))
        sent = 0
        for chunk in self.inner.open(pin, file, start, end):
            if self.fail and sent + len(chunk) > self.after:
                self.fail -= 1
                yield chunk[: self.after - sent]
                raise Transient("connection reset")
            sent += len(chunk)
            yield chunk


@pytest.fixture
def store(tmp_path):
    return Store(tmp_path / "store").ensure()


def test_parallel_ranges_produce_the_exact_bytes(store, monkeypatch):
    monkeypatch.setattr(transfer, "PARALLEL_THRESHOLD", 1 << 20)
    monkeypatch.setattr(transfer, "SEGMENT_MIN", 1 << 20)
    src, pin, f = mock_source(store)
    flaky = Flaky(src, fail=2, after=300_000)
    got = transfer.fetch(flaky, pin, f, store, NetworkConfig(base_delay=0.01), jobs=4)
    assert got.sha256 == f.sha256 and got.size == SIZE
    assert len({s for s, e in flaky.opens if e is not None}) > 2  # really split into ranges
    with open(store.object_path(f.sha256), "rb") as fh:
        assert hashlib.file_digest(fh, "sha256").hexdigest() == f.sha256


def test_stream_resumes_after_a_reset_from_where_it_stopped(store):
    src, pin, f = mock_source(store)
    flaky = Flaky(src, fail=1, after=1_000_000)
    got = transfer.fetch(flaky, pin, f, store, NetworkConfig(base_delay=0.01))
    assert got.sha256 == f.sha256
    assert flaky.opens == [(0, None), (1_000_000, None)]
    assert got.downloaded == SIZE


def test_gives_up_after_max_attempts_and_keeps_the_partial(store):
    src, pin, f = mock_source(store)
    flaky = Flaky(src, fail=10, after=1000)
    with pytest.raises(SourceError, match="giving up after 2 attempts"):
        transfer.fetch(flaky, pin, f, store, NetworkConfig(max_attempts=2, base_delay=0.01))
    assert store.partial_path(f.sha256).stat().st_size == 2000
    assert not store.has_object(f.sha256)


def test_a_corrupt_partial_is_detected_and_discarded(store):
    src, pin, f = mock_source(store)
    store.partial_path(f.sha256).write_bytes(b"garbage" * 100)
    with pytest.raises(IntegrityError, match="sha256 mismatch"):
        transfer.fetch(src, pin, f, store, NetworkConfig())
    assert not store.partial_path(f.sha256).exists()  # the next run starts clean
    assert transfer.fetch(src, pin, f, store, NetworkConfig()).sha256 == f.sha256


def test_bandwidth_limit_is_respected(store):
    import time

    src, pin, f = mock_source(store)
    small = LockedFile(f.path, 2 * 1024 * 1024, "")
    t = time.monotonic()
    transfer.fetch(src, pin, small, store, NetworkConfig(bandwidth_limit=4 * 1024 * 1024))
    assert time.monotonic() - t >= 0.4


@pytest.mark.parametrize("idle, split", [(0.9, True), (0.1, False)])
def test_a_slow_stream_is_split_only_while_the_machine_has_cpu_to_spare(store, monkeypatch,
                                                                        idle, split):
    """More connections help a stream held back by the network (a CDN's per-connection
    limit), not one held back by busy cores: ranges add a second hashing pass."""
    monkeypatch.setattr(transfer, "PROBE_BYTES", 1 << 20)
    monkeypatch.setattr(transfer, "SLOW_RATE", 1 << 60)  # every stream counts as slow
    monkeypatch.setattr(transfer, "SPLIT_MIN", 1 << 20)
    monkeypatch.setattr(transfer, "SEGMENT_MIN", 1 << 20)
    ticks = iter(range(0, 10**9, 1000))

    def sample():  # 1000 jiffies between samples, `idle` of them idle
        t = next(ticks)
        return int(t * idle), t

    monkeypatch.setattr(transfer, "cpu_sample", sample)
    src, pin, f = mock_source(store)
    flaky = Flaky(src, fail=0, after=0)
    got = transfer.fetch(flaky, pin, f, store, NetworkConfig(base_delay=0.01), jobs=4)
    assert got.sha256 == f.sha256
    ranged = [o for o in flaky.opens if o[1] is not None]
    assert bool(ranged) == split, flaky.opens


def test_idle_share_reads_proc_stat():
    a = transfer.cpu_sample()
    if a is None:
        pytest.skip("not applicable here: no /proc/stat")
    sum(i * i for i in range(200_000))
    assert 0.0 <= transfer.idle_share(a, transfer.cpu_sample()) <= 1.0
    assert transfer.idle_share(None, a) == 1.0 and transfer.idle_share(a, a) == 1.0


def test_backoff_honours_retry_after_and_grows():
    net = NetworkConfig(base_delay=1)
    assert transfer.backoff_delay(1, net, 7) == 7
    assert 0.5 <= transfer.backoff_delay(1, net, None) <= 1
    assert 4 <= transfer.backoff_delay(4, net, None) <= 8


def test_a_crash_during_ranges_never_poisons_the_next_run(store, monkeypatch):
    """After a slow stream is handed to ranges and the process dies, the partial on disk
    has holes; the next run must not take it for a resumable prefix."""
    monkeypatch.setattr(transfer, "PROBE_BYTES", 1 << 20)
    monkeypatch.setattr(transfer, "SLOW_RATE", 1 << 60)  # every stream counts as slow
    monkeypatch.setattr(transfer, "SPLIT_MIN", 1 << 20)
    monkeypatch.setattr(transfer, "SEGMENT_MIN", 1 << 20)
    monkeypatch.setattr(transfer, "SPLIT_IDLE", 0.0)  # however busy the machine is
    src, pin, f = mock_source(store)

    class Crash(Flaky):
        def open(self, pin, file, start=0, end=None):
            if end is not None and start > 4 << 20:
                raise RuntimeError("simulated crash in a range worker")
            yield from self.inner.open(pin, file, start, end)

    with pytest.raises(RuntimeError):
        transfer.fetch(Crash(src, 0, 0), pin, f, store, NetworkConfig(base_delay=0.01), jobs=4)
    assert not store.has_object(f.sha256)
    got = transfer.fetch(src, pin, f, store, NetworkConfig(base_delay=0.01), jobs=4)
    assert got.sha256 == f.sha256 and store.has_object(f.sha256)
