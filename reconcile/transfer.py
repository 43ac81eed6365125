"""Move one file's bytes from a source into the store: resume, retry, hash, verify.

This is the only place bytes are written into objects/. It sees sources only
through ``Source.open(pin, file, start, end)``, so retries with backoff and jitter,
``Retry-After``, resume from a partial file, the bandwidth limit, parallel ranges
for big files, and sha256 checked in the same pass as the write, hold for every
source alike. Memory stays constant: chunks are written and hashed, never kept.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import NetworkConfig
from .errors import (
    AuthRequired,
    IntegrityError,
    Mismatch,
    ReconcileError,
    Restart,
    SourceError,
    StoreError,
    Transient,
)
from .http import BUFFERS
from .interrupt import CANCEL, Cancelled
from .lockfile import LockedFile
from .sources.base import Source
from .store import Store, disk_error

Progress = Callable[[int], None]
# Files at least this big are split into parallel ranges. Measured here (bench/), one
# stream through the http.client fast path beats several ranges up to multi-GB files
# (ranges cost a second pass over the data to hash it in order), so only the largest
# files, where a CDN's per-connection limit dominates, are split.
PARALLEL_THRESHOLD = 8 << 30
# Files smaller than this get no entity marker beside their partial: a write per object
# costs more than fetching a few MiB again after an interrupted run.
RECORD_MIN = 8 << 20
# at most this big: fetched into memory, hashed inline and published by group commit
# (one syncfs for many objects); no per-object file lock, partial file or hasher thread,
# which cost ~4 ms an object against ~0.1 ms for the bytes of a small file
SMALL_MAX = 1 << 20
SEGMENT_MIN = 32 << 20
# A stream that turns out slow (a CDN's per-connection limit, a long fat pipe) is
# split after a probe: if its first PROBE_BYTES came slower than SLOW_RATE and at
# least SPLIT_MIN remain, the rest is fetched as parallel ranges.
PROBE_BYTES = 32 << 20
SLOW_RATE = 100_000_000  # bytes/s, about 800 Mbit/s
SPLIT_MIN = 128 << 20
# ... and only when the machine had CPU to spare meanwhile: ranges cost a second hashing
# pass, and a stream slowed by busy cores (a local S3 server, other downloads, on two
# cores) is not sped up by more connections. Measured (bench_s3.py, SeaweedFS on the
# same 2-core box): split, 2 x 512 MiB took 3.2-5.7 s; as streams, 2.0-2.7 s.
SPLIT_IDLE = 0.25


def cpu_sample() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from /proc/stat; None where there is none."""
    try:
        with open("/proc/stat", "rb") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)


def idle_share(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float:
    """The share of CPU time the machine left idle between two samples (1.0: unknown)."""
    if before is None or after is None or after[1] <= before[1]:
        return 1.0
    return (after[0] - before[0]) / (after[1] - before[1])


@dataclass
class FetchResult:
    sha256: str
    size: int
    downloaded: int  # bytes that crossed the network this time (resume makes it smaller)
    fetched: bool = True  # False: another process put it in the store while we waited
    origin: str = "source"  # or "team cache", or the store on this machine it was copied from


class _Throttle:
    """A token bucket shared by every stream of one fetch (bandwidth.limit)."""

    def __init__(self, rate: int | None) -> None:
        self.rate = rate
        self.lock = threading.Lock()
        self.start = time.monotonic()
        self.sent = 0

    def __call__(self, n: int) -> None:
        if not self.rate:
            return
        with self.lock:
            self.sent += n
            ahead = self.sent / self.rate - (time.monotonic() - self.start)
        if ahead > 0:
            time.sleep(ahead)


EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


class Oversized(IntegrityError):
    """More bytes arrived than the file's listed size: cut off there, nothing kept."""


@dataclass(frozen=True)
class Cap:
    """The most bytes one file may bring, and why: its listed size (the lock's, or the
    listing's at lock time), the limit for a size nobody stated, or the disk's room.

    A stream is cut off at the first chunk that would pass it (that chunk is not
    written), so a hostile cache or server that sends 2 GiB (or an endless body) for a
    20 MB file costs at most 20 MB, not the disk: the sha256 check at the end would
    refuse it too, but only after every byte.
    """

    limit: int
    why: str  # "listed" | "unknown" | "disk"

    @classmethod
    def of(cls, file: LockedFile, where: Path, have: int = 0) -> Cap:
        """``file``'s cap; ``have`` bytes of it are already on disk under ``where``.

        A size of 0 is a size only with the empty file's sha256: lock time leaves 0 where
        nobody stated one (a declared sha256 and no Content-Length)."""
        if file.size or file.sha256 == EMPTY_SHA256:
            return cls(file.size, "listed")
        from .fsutil import room
        from .settings import max_unknown_size

        configured, free = max_unknown_size(), have + room(where)
        return cls(configured, "unknown") if configured <= free else cls(free, "disk")

    def exceeded(self, file: LockedFile, where: Path) -> ReconcileError:
        """The one-line error that names the file, the cap and what to do."""
        from .plan import human

        stop = "; stopped there and kept nothing"
        if self.why == "listed":
            return Oversized(
                f"{file.path}: the source sent more than the {self.limit} bytes listed for it"
                f"{stop} (it changed since the lock, or serves another file: check it, then"
                " `reconcile lock --upgrade` if the change is wanted)"
            )
        if self.why == "unknown":
            return SourceError(
                f"{file.path}: the source stated no size and sent more than"
                f" {human(self.limit)}{stop} (if the file really is bigger, raise the limit:"
                " RECONCILE_MAX_UNKNOWN_SIZE=500G)"
            )
        return StoreError(
            f"{file.path}: the source stated no size and sent more than the"
            f" {human(self.limit)} that {where} can take while 1 GiB stays free{stop} (free"
            " some space, e.g. `reconcile gc`, or point RECONCILE_STORE at a bigger disk)"
        )


def _check_room(file: LockedFile, part: Path) -> None:
    """Refuse, before the first byte, a file the store's disk cannot take while 1 GiB
    stays free: a listing may claim a terabyte (at lock time its size is the server's
    word), and a shared disk filled to the last byte breaks every writer on it."""
    from .fsutil import room

    have = 0
    for p in (part, part.with_name(part.name + ".ranges")):
        try:
            have += os.stat(p).st_blocks * 512  # what a (sparse) partial really holds
        except OSError:
            pass
    free = room(part.parent)
    if file.size - have > free:
        from .plan import human

        if not have:
            _entity_path(part).unlink(missing_ok=True)  # nothing started: no trace left
        raise StoreError(
            f"{file.path}: needs {human(file.size - have)} more, but {part.parent} can take"
            f" {human(free)} while 1 GiB stays free; nothing was fetched (free some space,"
            " e.g. `reconcile gc`, or point RECONCILE_STORE at a bigger disk)"
        )


def _cut_off(cap: Cap, file: LockedFile, part: Path) -> ReconcileError:
    """Past the cap: the partial is no prefix worth resuming (it is not the file)."""
    part.unlink(missing_ok=True)
    _entity_path(part).unlink(missing_ok=True)
    return cap.exceeded(file, part.parent)


def backoff_delay(attempt: int, network: NetworkConfig, retry_after: float | None) -> float:
    """The shared RetryPolicy's wait before attempt ``attempt + 1``."""
    from .transport import RetryPolicy

    return RetryPolicy.of(network).delay(attempt, retry_after)


def _check_cancel() -> None:
    if CANCEL.is_set():
        raise Cancelled()


class _Auth:
    """One credential refresh per transfer when a server starts refusing it midway
    (a token that expired during a long download, a rotated token file)."""

    def __init__(self, source: Source) -> None:
        self.source, self.used = source, False

    def retry(self, err: AuthRequired) -> bool:
        if self.used or not self.source.refresh_credentials():
            return False
        self.used = True
        return True


def fetch(
    source: Source,
    pin: dict[str, Any],
    file: LockedFile,
    store: Store,
    network: NetworkConfig,
    progress: Progress | None = None,
    jobs: int = 1,
    stage: bool = False,
) -> FetchResult:
    """Fetch ``file`` into the store. ``file.sha256`` empty means: learn it (lock time).

    ``stage``: a small file is staged (``Store.stage_object``) rather than published;
    the caller runs ``store.commit_staged()`` before anything needs it by name."""
    expected = file.sha256 or None
    if stage and (file.size <= SMALL_MAX if expected else 0 < file.size <= SMALL_MAX):
        return _fetch_small(source, pin, file, store, network, progress)
    if expected:
        key = expected
    else:
        ident = f"{source.type}\0{sorted(pin.items())}\0{file.path}"
        if file.pin:  # the object's own revision (S3): another version is another file
            ident += f"\0{sorted(file.pin.items())}"
        key = "unhashed-" + hashlib.sha256(ident.encode()).hexdigest()[:40]
    lock_name = f"obj-{key}"
    with store.lock(lock_name):
        if expected and store.has_object(expected):
            return FetchResult(expected, file.size, 0, fetched=False)
        part = store.partial_path(key)
        entity = source.entity(pin, file)
        _forget_stale_partial(part, entity, trust_hash=bool(expected),
                              record=not (file.size and file.size < RECORD_MIN))
        try:
            return _fetch_part(source, pin, file, store, network, progress, jobs, part,
                               entity, expected)
        except BaseException:
            _drop_if_empty(part)
            raise


def _drop_if_empty(part: Path) -> None:
    """After a failed fetch: a partial that holds no byte (refused before the first) is
    nothing to resume; it and its entity marker go, so tmp/ keeps only what resumes."""
    try:
        if part.stat().st_size:
            return
    except FileNotFoundError:
        pass
    if part.with_name(part.name + ".ranges").exists():
        return
    part.unlink(missing_ok=True)
    _entity_path(part).unlink(missing_ok=True)


def _fetch_part(source: Source, pin: dict[str, Any], file: LockedFile, store: Store,
                network: NetworkConfig, progress: Progress | None, jobs: int, part: Path,
                entity: str | None, expected: str | None) -> FetchResult:
    """The locked body of ``fetch``: into ``part`` by one stream or ranges, checked,
    published."""
    _check_room(file, part)
    can_split = (jobs > 1 and source.supports_ranges and bool(expected)
                 and not network.bandwidth_limit)
    saved = _saved_ranges(_ranges_progress(part), file.size) if can_split else None
    if can_split and (file.size >= parallel_min() or saved is not None):
        result = _fetch_ranges(source, pin, file, part, network, progress, jobs,
                               saved=saved)
    else:
        got = _fetch_stream(source, pin, file, part, network, progress,
                            resumable=bool(expected) or entity is not None,
                            probe=can_split and file.size >= SPLIT_MIN)
        if isinstance(got, _Handover):
            result = _fetch_ranges(source, pin, file, part, network, progress, jobs,
                                   start=got.have, h=got.h, downloaded=got.downloaded)
        else:
            result = got
    if expected and result.sha256 != expected:
        part.unlink(missing_ok=True)
        raise mismatch(file.path, expected, result.sha256, result.size)
    if file.size and result.size != file.size and expected:
        part.unlink(missing_ok=True)
        raise IntegrityError(f"{file.path}: size mismatch: the lock lists {file.size} bytes,"
                             f" the source sent {result.size} (their sha256 is the lock's)")
    store.publish_object(part, result.sha256)
    _entity_path(part).unlink(missing_ok=True)
    return result


def mismatch(path: str, expected: str, sha256: str, size: int) -> Mismatch:
    """The model's source sent other bytes than the lock's: the error, with what they were."""
    return Mismatch(
        f"{path}: sha256 mismatch: the lock expects {expected}, the source sent {sha256}"
        f" ({size} bytes)",
        sha256=sha256, size=size,
        hint="the source changed since the lock was made, or the transfer was"
        " corrupted; run `reconcile lock --upgrade` only if you trust the new content")


def _fetch_small(source: Source, pin: dict[str, Any], file: LockedFile, store: Store,
                 network: NetworkConfig, progress: Progress | None) -> FetchResult:
    """A small file whole in memory (same retries and credential refresh as a stream),
    checked, then staged for the next group commit. The object's claim (``Store.
    claim_object``) makes one thread of one process fetch it: the others find it."""
    expected = file.sha256 or None
    if expected and not store.claim_object(expected):  # it looks for the object itself
        return FetchResult(expected, file.size, 0, fetched=False)
    try:
        data = _read_small(source, pin, file, network)
    except BaseException:
        if expected:
            store.release_claim(expected)
        raise
    sha = hashlib.sha256(data).hexdigest()
    if expected and (sha != expected or len(data) != file.size):
        store.release_claim(expected)
        raise mismatch(file.path, expected, sha, len(data))
    if progress:
        progress(len(data))
    if expected or store.claim_object(sha):  # unhashed (lock time): claimed now
        store.stage_object(data, sha)
    return FetchResult(sha, len(data), len(data))


def _read_small(source: Source, pin: dict[str, Any], file: LockedFile,
                network: NetworkConfig) -> bytes:
    """The whole file, with a stream's retries and one credential refresh."""
    expected = file.sha256 or None
    auth, attempt, throttle = _Auth(source), 0, _Throttle(network.bandwidth_limit)
    while True:
        attempt += 1
        try:
            chunks, n = [], 0
            for chunk in source.open(pin, file, 0, None):
                _check_cancel()
                chunks.append(bytes(chunk))
                n += len(chunk)
                throttle(len(chunk))
                if n > file.size:  # this path is only taken with a listed size
                    raise Cap(file.size, "listed").exceeded(file, Path("."))
            if expected and n < file.size:
                raise Transient(f"{file.path}: stream ended at {n} of {file.size} bytes")
            break
        except AuthRequired as e:
            if not auth.retry(e):
                raise
            attempt -= 1
        except Transient as e:
            _wait_or_give_up(e, attempt, network, file)
    return b"".join(chunks)


def _wait_or_give_up(e: Transient, attempt: int, network: NetworkConfig, file: LockedFile,
                     hint: str | None = None) -> None:
    """After a transient failure: wait the backoff (a Retry-After honoured) before the
    next attempt, or give up once ``network.max_attempts`` were made."""
    if attempt >= network.max_attempts:
        raise SourceError(f"{file.path}: giving up after {attempt} attempts: {e.message}",
                          hint=hint) from None
    _sleep(backoff_delay(attempt, network, e.retry_after))


def parallel_min() -> int:
    from .settings import parallel_min as configured

    value = configured()
    return PARALLEL_THRESHOLD if value is None else value


def _entity_path(part: Path) -> Path:
    return part.with_name(part.name + ".entity")


def _forget_stale_partial(part: Path, entity: str | None, *, trust_hash: bool,
                          record: bool = True) -> None:
    """Keep a partial only when it is known to be a prefix of what will be fetched now.

    Its entity (the source's validator: an ETag, Last-Modified, a commit) is recorded
    beside it when it is started. A partial of another entity is dropped. Without any
    entity, a partial is kept only when the file's sha256 is known beforehand (the
    final check then catches a splice); at lock time, where the bytes themselves
    become the truth, it starts over: an old prefix spliced to new bytes would be
    locked as the model. ``record`` False (a small file, cheaper to fetch again than to
    mark): nothing is written; an unmarked partial is never trusted at lock time.
    """
    marker = _entity_path(part)
    try:
        recorded: str | None = marker.read_text("utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        recorded = None  # none recorded: a partial from an older reconcile
    have = part.exists()
    if have:
        if trust_hash:
            stale = recorded is not None and recorded != (entity or "")
        else:
            stale = entity is None or recorded != entity
        if stale:
            part.unlink(missing_ok=True)
            have = False
    if not have and record:
        from .fsutil import atomic_write_text

        atomic_write_text(marker, entity or "")


def _rehash_partial(part: Path) -> tuple[Any, int]:
    h = hashlib.sha256()
    try:
        with open(part, "rb") as f:
            size = 0
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
        return h, size
    except FileNotFoundError:
        return h, 0


class _Hasher:
    """sha256 on its own thread, so hashing overlaps receiving and writing.

    hashlib releases the GIL on large updates; chunks are batched to ~1 MiB so the
    queue costs nothing measurable. The queue is bounded: memory stays constant.
    """

    BATCH = 1 << 20

    def __init__(self, h: Any, depth: int = 16) -> None:
        import queue

        self.h = h
        self.q: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=depth)
        self.batch: list[bytes] = []
        self.size = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (batch := self.q.get()) is not None:
            for chunk in batch:
                self.h.update(chunk)
                BUFFERS.release(chunk)  # written and hashed: its buffer can be reused

    def update(self, chunk: bytes) -> None:
        self.batch.append(chunk)
        self.size += len(chunk)
        if self.size >= self.BATCH:
            self.q.put(self.batch)
            self.batch, self.size = [], 0

    def finish(self) -> Any:
        if self.batch:
            self.q.put(self.batch)
        self.q.put(None)
        self.thread.join()
        return self.h


class PartWriter:
    """Appends a stream to a partial file; whole read buffers bypass the page cache.

    Written through the page cache, a 2 GiB download cost 1.3 to 5.5 s of kernel time
    on these VMs from one minute to the next (every page allocated, perhaps faulted in
    by the host, dirtied, written back), and curl pays that too. The same 1 MiB buffers
    that get hashed, written with O_DIRECT, took a steady 0.7-1.4 s: one stream became
    1.5-2.8x curl (bench/README.md). Whatever is not a whole, page-aligned pool buffer at
    an aligned offset (a tail, an unaligned resume, a chunk from httpx) goes through an
    ordinary descriptor, as does everything on a filesystem without O_DIRECT (tmpfs);
    the kernel keeps the two views of the file coherent. Offsets are explicit, so the
    file is always a prefix of the stream: resumable after a crash as before.
    """

    ALIGN = 4096

    def __init__(self, part: Path) -> None:
        self.fd = os.open(part, os.O_WRONLY | os.O_CREAT, 0o644)
        self.pos = os.fstat(self.fd).st_size
        self.dfd: int | None = None
        if hasattr(os, "O_DIRECT"):
            try:
                self.dfd = os.open(part, os.O_WRONLY | os.O_DIRECT)
            except OSError:
                pass

    def write(self, chunk: Any) -> None:
        self.write_many([chunk])

    def write_many(self, chunks: list[Any]) -> None:
        """Write ``chunks`` in order; a run of whole buffers goes down in one pwritev,
        so the disk sees requests of several MiB rather than one at a time."""
        i = 0
        while i < len(chunks):
            run = self._direct_run(chunks, i)
            if run:
                i += run
                continue
            self._buffered(chunks[i])
            i += 1

    def _direct_run(self, chunks: list[Any], i: int) -> int:
        """How many chunks from ``i`` on went down with O_DIRECT (0: none could)."""
        if self.dfd is None or self.pos % self.ALIGN:
            return 0
        j = i
        while j < len(chunks) and BUFFERS.is_whole(chunks[j]):
            j += 1
        if j == i:
            return 0
        try:
            done = os.pwritev(self.dfd, chunks[i:j], self.pos)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
            os.close(self.dfd)  # the filesystem takes O_DIRECT opens but not writes
            self.dfd = None
            return 0
        whole, rest = divmod(done, BUFFERS.size)
        self.pos += whole * BUFFERS.size
        if rest:  # a short write: the tail of that buffer goes the ordinary way
            self._buffered(chunks[i + whole][rest:])
            whole += 1
        return whole

    def _buffered(self, chunk: Any) -> None:
        view = memoryview(chunk)
        done = 0
        while done < len(view):
            n = os.pwrite(self.fd, view[done:], self.pos + done)
            if n <= 0:  # a regular file that takes nothing more: out of space
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        self.pos += done

    def close(self) -> None:
        for fd in (self.fd, self.dfd):
            if fd is not None:
                os.close(fd)


class Sink:
    """Writes a stream into a partial file and hashes it, each on a thread of its own.

    The thread that receives only hands chunks on: with the write (an O_DIRECT write
    waits for the disk) and the sha256 done where it receives, a stream ran at the sum
    of the three stages' times, ~0.7 GB/s here against 1.2 GB/s for each stage alone.
    Now receiving, writing and hashing overlap. Chunks go writer → hasher in order, so
    the file is still always a prefix of the stream and the hash still covers it in
    order; the hasher releases each buffer. Queues are short (a few MiB), so memory
    stays constant. A write error (a full disk) is raised by the next ``put`` or by
    ``close``, which waits until everything put is written and hashed.
    """

    DEPTH = 4  # chunks (hasher: batches of ~1 MiB) in flight between two stages
    COALESCE = 8  # chunks written by one pwritev at most

    def __init__(self, part: Path, h: Any) -> None:
        import queue

        self.out = PartWriter(part)
        self.hasher = _Hasher(h, depth=self.DEPTH)
        self.error: OSError | None = None
        self.q: queue.Queue[Any] = queue.Queue(maxsize=self.DEPTH)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import queue

        done = False
        while not done:
            first = self.q.get()
            if first is None:
                break
            batch = [first]
            while len(batch) < self.COALESCE:  # what else is waiting: one bigger write
                try:
                    more = self.q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                    break
                batch.append(more)
            if self.error is None:
                try:
                    self.out.write_many(batch)
                except OSError as e:
                    self.error = e
            for chunk in batch:  # hashed even after an error: the hasher frees the buffers
                self.hasher.update(chunk)

    def put(self, chunk: Any) -> None:
        """Hand ``chunk`` on at once, whatever its size: batching here kept the first MiB
        of a slow (throttled) download off the disk, so a kill lost all of it."""
        if self.error is not None:
            raise self.error
        self.q.put(chunk)

    def close(self) -> Any:
        """Wait for every write and the hash; the hash object, or the write error."""
        self.q.put(None)
        self.thread.join()
        try:
            self.out.close()
        finally:
            h = self.hasher.finish()
        if self.error is not None:
            raise self.error
        return h


@dataclass
class _Handover:
    """A stream that proved slow, handed to _fetch_ranges at ``have`` bytes."""

    h: Any
    have: int
    downloaded: int


def _fetch_stream(source, pin, file, part, network, progress, probe: bool = False, *,
                  resumable: bool = True) -> FetchResult | _Handover:
    """One stream into ``part``, resumed after transient failures. Not ``resumable``
    (lock time, and the source cannot tell which entity it serves): a retry starts
    from byte 0, since a resume could splice two versions of the file."""
    h, have = _rehash_partial(part)
    if file.size and have > file.size:
        part.unlink()
        h, have = hashlib.sha256(), 0
    if progress and have:
        progress(have)
    cap = Cap.of(file, part.parent, have)
    throttle = _Throttle(network.bandwidth_limit)
    downloaded = 0
    attempt = 0
    handover = False
    try:
        sink = Sink(part, h)
    except OSError as e:
        raise disk_error(e, part.parent) from None
    auth = _Auth(source)

    def restart(had: int) -> int:
        """Back to byte 0: truncate the partial, start a new hash."""
        nonlocal sink
        if progress and had:
            progress(-had)
        with contextlib.suppress(OSError):
            sink.close()  # what it failed to write is truncated away
        os.truncate(part, 0)
        sink = Sink(part, hashlib.sha256())
        return 0

    try:
        while True:
            attempt += 1
            try:
                if file.size and have == file.size and file.sha256:
                    break
                started, from_here, cpu = time.monotonic(), have, cpu_sample()
                stream = source.open(pin, file, have, None)
                for chunk in stream:
                    _check_cancel()
                    if have + len(chunk) > cap.limit:
                        stream.close()
                        raise _cut_off(cap, file, part)
                    try:
                        sink.put(chunk)
                    except OSError as e:
                        raise disk_error(e, part.parent) from None
                    have += len(chunk)
                    downloaded += len(chunk)
                    throttle(len(chunk))
                    if progress:
                        progress(len(chunk))
                    if probe and have - from_here >= PROBE_BYTES:
                        probe = False
                        rate = (have - from_here) / max(time.monotonic() - started, 1e-6)
                        if (rate < SLOW_RATE and file.size - have >= SPLIT_MIN
                                and idle_share(cpu, cpu_sample()) >= SPLIT_IDLE):
                            stream.close()  # hang up; the rest comes as ranges
                            handover = True
                            break
                if handover:
                    break
                if file.size and have < file.size:
                    raise Transient(f"{file.path}: stream ended at {have} of {file.size} bytes")
                break
            except AuthRequired as e:
                if not auth.retry(e):
                    raise
                attempt -= 1  # renewed credentials: this try does not count
            except Transient as e:
                if isinstance(e, Restart) or not resumable:
                    have = restart(have)
                if isinstance(e, Restart):
                    if attempt > network.max_attempts:
                        raise SourceError(f"{file.path}: the server keeps answering"
                                          " resumes with the whole file") from None
                    continue
                _wait_or_give_up(
                    e, attempt, network, file,
                    hint=("the partial download is kept and resumes on the next run"
                          if have else None) if resumable else "nothing is kept: the"
                    " server names no ETag or Last-Modified that a resume could be"
                    " checked against")
    except BaseException:
        with contextlib.suppress(OSError):
            sink.close()  # its own error, if any, matters less than the one under way
        raise
    h = _close(sink, part)
    if handover:
        return _Handover(h, have, downloaded)
    return FetchResult(h.hexdigest(), have, downloaded)


def _close(sink: Sink, part: Path) -> Any:
    try:
        return sink.close()
    except OSError as e:
        raise disk_error(e, part.parent) from None


def _fetch_ranges(source, pin, file, part, network, progress, jobs, *, start: int = 0,
                  h: Any = None, downloaded: int = 0,
                  saved: tuple[list[tuple[int, int]], list[int]] | None = None) -> FetchResult:
    """Several ranges at once into one preallocated file; a hasher follows the watermark.

    Segments are written with pwrite at their offsets. The file is hashed in order
    as soon as a prefix is complete, so hashing overlaps the transfer and the final
    check costs no second pass over data that is already in the page cache.

    The work happens under a separate name (``<part>.ranges``): a file with holes must
    never look like a resumable stream prefix to the next run. It becomes ``part`` only
    once every range has arrived.
    """
    work = part.with_name(part.name + ".ranges")
    if start:
        os.replace(part, work)  # a slow stream's prefix, handed over
        _ranges_progress(part).unlink(missing_ok=True)
    if start or not work.exists():
        saved = None  # progress without its work file (or a stream handed over) is void
    if saved is not None and progress:  # an interrupted run: each range goes on
        progress(sum(d - b for d, (b, _) in zip(saved[1], saved[0], strict=True)))
    bounds, done = saved or _split(file.size, start, jobs)
    fd = _open_work(work, file.size, truncate=saved is None and start == 0)
    ranges = _Ranges(source, pin, file, network, progress, fd, bounds, done, downloaded)
    try:
        hashed, h = ranges.run(jobs, h or hashlib.sha256(), start, _ranges_progress(part))
    finally:
        os.close(fd)
    os.replace(work, part)
    _ranges_progress(part).unlink(missing_ok=True)
    return FetchResult(h.hexdigest(), hashed, ranges.downloaded)


def _split(size: int, start: int, jobs: int) -> tuple[list[tuple[int, int]], list[int]]:
    """[start, size) as equal ranges (two per job, none under SEGMENT_MIN), none begun."""
    nseg = max(2, min(jobs * 2, (size - start) // SEGMENT_MIN))
    seg = -(-(size - start) // nseg)
    bounds = [(start + i * seg, min(size, start + (i + 1) * seg)) for i in range(nseg)]
    return bounds, [b for b, _ in bounds]


def _open_work(work: Path, size: int, *, truncate: bool) -> int:
    """The work file at its full size; ``truncate`` first: unrecorded holes cannot be
    trusted, so a fresh split starts clean."""
    fd = os.open(work, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if truncate:
            os.ftruncate(fd, 0)
        os.ftruncate(fd, size)
    except OSError as e:
        os.close(fd)
        raise disk_error(e, work.parent) from None
    return fd


class _Ranges:
    """One file's ranges in flight: workers write their range at its offsets and move its
    watermark (``done``); the calling thread hashes the file in order behind them. The
    first error for good (or Ctrl-C) stops every worker at its next chunk."""

    def __init__(self, source: Source, pin: dict[str, Any], file: LockedFile,
                 network: NetworkConfig, progress: Progress | None, fd: int,
                 bounds: list[tuple[int, int]], done: list[int], downloaded: int) -> None:
        self.source, self.pin, self.file, self.network = source, pin, file, network
        self.progress, self.fd, self.bounds, self.done = progress, fd, bounds, done
        self.downloaded = downloaded
        self.seg = bounds[0][1] - bounds[0][0]
        self.cond = threading.Condition()
        self.errors: list[BaseException] = []
        self.throttle = _Throttle(network.bandwidth_limit)
        self.auth = _Auth(source)

    def run(self, jobs: int, h: Any, start: int, progress_file: Path) -> tuple[int, Any]:
        """Fetch every range and hash the file from ``start``; (bytes hashed, hash). What
        arrived is recorded in ``progress_file`` as it goes, and on failure, so the next
        run resumes every range."""
        from concurrent.futures import ThreadPoolExecutor

        size = self.file.size
        try:
            with ThreadPoolExecutor(max_workers=min(jobs, len(self.bounds))) as pool:
                futures = [pool.submit(self._worker, i) for i in range(len(self.bounds))]
                hashed = self._hash_in_order(h, start, size, progress_file)
                for fut in futures:
                    fut.result()
        finally:
            if self.errors:
                _save_ranges(progress_file, size, self.bounds, self.done)
        if self.errors:
            raise self.errors[0]
        return hashed, h

    def _hash_in_order(self, h: Any, hashed: int, size: int, progress_file: Path) -> int:
        buf = bytearray(8 << 20)  # read back through one buffer: an mmap would count every
        view = memoryview(buf)  # touched page of a multi-GB file as resident memory
        last_save = time.monotonic()
        while hashed < size:
            if time.monotonic() - last_save > 1.0:
                _save_ranges(progress_file, size, self.bounds, self.done)
                last_save = time.monotonic()
            ready = self._wait_past(hashed)
            if ready is None:
                break
            while hashed < ready:
                n = os.preadv(self.fd, [view[: min(len(buf), ready - hashed)]], hashed)
                if n <= 0:
                    break
                h.update(view[:n])
                hashed += n
        return hashed

    def _wait_past(self, hashed: int) -> int | None:
        """How far the range holding byte ``hashed`` has arrived, once past it; None
        when a worker failed for good or Ctrl-C came."""
        start = self.bounds[0][0]
        with self.cond:
            while True:
                ready = self.done[min((hashed - start) // self.seg, len(self.bounds) - 1)]
                if self.errors:
                    return None
                if ready > hashed:
                    return ready
                if CANCEL.is_set():
                    self.errors.append(Cancelled())
                    return None
                self.cond.wait(0.2)

    def _fail(self, e: BaseException) -> None:
        with self.cond:
            self.errors.append(e)
            self.cond.notify_all()

    def _worker(self, i: int) -> None:
        """Range ``i`` to its end, resumed after transient failures."""
        start, end = self.bounds[i]
        attempt = 0
        while self.done[i] < end:
            attempt += 1
            try:
                if not self._receive(i, end):
                    return
                if self.done[i] < end and not self.errors:
                    raise Transient(f"range {start}-{end} ended early at {self.done[i]}")
            except AuthRequired as e:
                with self.cond:
                    renewed = self.auth.retry(e)
                if not renewed:
                    return self._fail(e)
                attempt -= 1
            except Transient as e:
                if isinstance(e, Restart) or attempt >= self.network.max_attempts:
                    return self._fail(SourceError(f"{self.file.path}: giving up after"
                                                  f" {attempt} attempts: {e.message}"))
                _sleep(backoff_delay(attempt, self.network, e.retry_after))
            except BaseException as e:
                return self._fail(e)

    def _receive(self, i: int, end: int) -> bool:
        """One request for the rest of range ``i``; False when a sibling failed for good."""
        for chunk in self.source.open(self.pin, self.file, self.done[i], end):
            if self.errors:  # a sibling failed for good, or Ctrl-C: stop with it
                return False
            _check_cancel()
            chunk = chunk[: end - self.done[i]]
            os.pwrite(self.fd, chunk, self.done[i])
            BUFFERS.release(chunk)  # hashed later, from the file
            self.throttle(len(chunk))
            with self.cond:
                self.done[i] += len(chunk)
                self.downloaded += len(chunk)
                self.cond.notify_all()
            if self.progress:
                self.progress(len(chunk))
            if self.done[i] >= end:
                break
        return True


def _ranges_progress(part: Path) -> Path:
    return part.with_name(part.name + ".ranges.json")


def _save_ranges(path: Path, size: int, bounds: list[tuple[int, int]], done: list[int]) -> None:
    """How far each range got (a snapshot: never more than what pwrite has written)."""
    import json

    from .fsutil import atomic_write_text

    atomic_write_text(path, json.dumps({"size": size, "bounds": bounds, "done": list(done)}))


def _saved_ranges(path: Path, size: int) -> tuple[list[tuple[int, int]], list[int]] | None:
    import json

    try:
        doc = json.loads(path.read_text("utf-8"))
        bounds = [(int(a), int(b)) for a, b in doc["bounds"]]
        done = [int(d) for d in doc["done"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    ok = (doc.get("size") == size and len(bounds) == len(done) >= 1 and bounds[0][0] == 0
          and bounds[-1][1] == size and all(a <= d <= b for (a, b), d in zip(bounds, done,
                                                                             strict=True)))
    return (bounds, done) if ok else None


def _sleep(seconds: float) -> None:
    """Wait before a retry; Ctrl-C ends the wait at once."""
    if CANCEL.wait(seconds):
        raise Cancelled()


def iter_file(path: Path, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Stream a local file's byte range (file:// URLs, extracted archives)."""
    with open(path, "rb") as f:
        f.seek(start)
        remaining = None if end is None else end - start
        while remaining is None or remaining > 0:
            chunk = f.read(1 << 20 if remaining is None else min(1 << 20, remaining))
            if not chunk:
                break
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk
