"""The content-addressed store (the Nix store's role), shared by every project.

    objects/sha256/<hex>      each distinct file once, read-only
    objects/sha256-x/<hex>    the same for executables (a hard link shares its mode)
    models/<id>-<name>/       a model tree of hard links to objects, published by rename
    tmp/                      resumable partial downloads and trees being assembled
    locks/                    OFD lock files: one writer per object / model at a time
    roots/                    symlinks to lockfiles that keep their models alive for gc
    state/                    validation results, HF cache ownership records

Invariant: anything under objects/ or models/ is complete and verified. Writers work
in tmp/ and publish with an atomic rename, so a kill -9 at any moment leaves at worst
a partial file in tmp/ (resumed next time), never a half file where readers look.
Objects are fsynced before they are named, so a power cut cannot leave one either.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import StoreError
from .fsutil import create_temp, umask, write_all
from .lockfile import LockedFile, LockedModel

CLAIM_SHARDS = 16


class Store:
    def __init__(self, root: Path) -> None:
        import threading

        self.root = Path(root)
        self._staged: dict[str, Path] = {}  # sha256 -> written, not yet durable or named
        self._claimed: set[str] = set()  # objects this process is fetching or has staged
        self._staging = threading.Lock()
        self._claim_fds: list[int | None] = [None] * CLAIM_SHARDS
        self.objects = self.root / "objects"
        self.models = self.root / "models"
        # trees built but not yet validated: reachable by no model name until they pass
        self.pending = self.root / "pending"
        self.tmp = self.root / "tmp"
        self.locks = self.root / "locks"
        self.roots = self.root / "roots"
        self.state = self.root / "state"

    def ensure(self) -> Store:
        try:
            for d in (self.objects / "sha256", self.objects / "sha256-x", self.models,
                      self.tmp, self.locks, self.roots, self.state):
                d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(
                f"cannot create the store at {self.root}: {e.strerror}",
                hint="set RECONCILE_STORE to a writable directory",
            ) from None
        return self

    # --- objects -------------------------------------------------------------------

    def object_path(self, sha256: str, executable: bool = False) -> Path:
        return self.objects / ("sha256-x" if executable else "sha256") / sha256

    def object_file(self, sha256: str, executable: bool = False) -> str:
        """``object_path`` as a str, for loops over thousands of files (pathlib's joins
        cost more than the syscall they feed)."""
        return f"{self.objects}/{'sha256-x' if executable else 'sha256'}/{sha256}"

    def has_object(self, sha256: str, executable: bool = False) -> bool:
        return os.path.exists(self.object_file(sha256, executable))

    def partial_path(self, key: str) -> Path:
        return self.tmp / f"{key}.part"

    def lock_files(self) -> set[str]:
        """The files in locks/ this version uses (gc drops those of earlier versions)."""
        return {"store.lock", "names.locks",
                *(f"objects.claims.{shard:x}" for shard in range(CLAIM_SHARDS))}

    @contextmanager
    def lock(self, name: str, timeout: float = -1) -> Iterator[None]:
        """An inter-process (and inter-thread) lock; two applies on overlapping manifests
        serialise here. A one-byte OFD lock in one shared file, at an offset named by the
        name's hash: nothing is created per name (a file per name cost an inode per model,
        twice, on a cold apply of 1,000 models), and the kernel drops it with the process.
        Each acquisition opens the file anew, so threads exclude each other too.
        ``timeout`` 0: raise TimeoutError at once when someone holds it."""
        key = hashlib.sha256(name.encode()).hexdigest()
        try:
            fd = os.open(self.locks / "names.locks", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o666)
        except FileNotFoundError:
            self.locks.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.locks / "names.locks", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                         0o666)
        try:
            if not _ofd_lock(fd, key, wait=timeout != 0):
                raise TimeoutError(f"{name} is locked")
            yield
        finally:
            os.close(fd)  # releases the lock

    def publish_object(self, tmp_file: Path, sha256: str, executable: bool = False) -> Path:
        """Move a verified file into objects/ (read-only); content-addressed, so a race is harmless.

        The bytes reach the disk before the name does: no-op applies trust objects
        without re-hashing them, so after a power cut an object must be whole or absent,
        never a zero-filled file under a good name. (For a download written with O_DIRECT
        the fsync has next to nothing left to do.) A disk that fills up during delayed
        allocation reports it here, too.
        """
        dest = self.object_path(sha256, executable)
        try:
            fd = os.open(tmp_file, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise disk_error(e, self.root) from None
        os.chmod(tmp_file, 0o555 if executable else 0o444)
        _name_object(tmp_file, dest)
        return dest

    def take_from_peer(self, peers: list[Path], sha256: str,
                       executable: bool = False) -> Path | None:
        """Copy an object another store on this machine holds (the system store, for a
        user's): hashed while copied, since that store is another user's and a bad copy
        must not become ours. Returns the store it came from (to say so), None when no
        peer has it whole."""
        for peer in peers:
            if self.take_copy(Store(peer).object_file(sha256), sha256, executable):
                return peer
        return None

    def take_copy(self, src: str | Path, sha256: str, executable: bool = False, *,
                  size: int | None = None) -> bool:
        """Make an object of a file another tool or store holds (see reuse.py), when its
        bytes hash to ``sha256`` (and it has ``size`` bytes): a copy or a reflink, never
        a hard link, so the object is our own inode and the file stays as its maker left
        it. Returns False when it is absent, not a regular file (a FIFO would block the
        read forever), or other bytes; raises StoreError only for our own disk."""
        try:
            fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or size not in (None, st.st_size):
                return False
            tmp = self._copy_hashed(fd, sha256, st.st_size)
        finally:
            os.close(fd)
        if tmp is None:
            return False
        self.publish_object(tmp, sha256, executable)
        return True

    def _copy_hashed(self, src_fd: int, sha256: str, size: int) -> Path | None:
        """A copy of ``src_fd`` in tmp/ whose bytes hash to ``sha256``, else None (and no
        file left). The copy is what gets hashed (a reflink's clone is read back): the
        source may change meanwhile, the object cannot."""
        fd, name = tempfile.mkstemp(dir=self.tmp, prefix=f"take-{sha256[:12]}-")
        tmp = Path(name)
        try:
            try:
                h = _reflink_hash(src_fd, fd, size)
                if h is None:
                    h = _copy_hash(src_fd, fd, size)
            finally:
                os.close(fd)
        except OSError as e:
            tmp.unlink(missing_ok=True)
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise disk_error(e, self.root) from None
            return None
        if h != sha256:
            tmp.unlink(missing_ok=True)
            return None
        return tmp

    # --- small objects: claimed, staged, committed in groups -----------------------------
    #
    # Fetching an object exactly once across threads and processes used to take a file
    # lock per object (~2.3 ms here, more than a small file's bytes). A claim is a
    # one-byte OFD lock at an offset named by the sha256 in one of 16 shared files (no
    # file created per object; the kernel drops it if the process dies), held from the
    # fetch until the group commit has named the object. The kernel keeps a file's locks
    # in one list that every lock and unlock walks: one file for 6,000 claims made that
    # quadratic (a tenth of a cold apply), 16 make it short. A process waiting for
    # another one's claim polls, committing (and so releasing) what it staged on every
    # round: nobody waits while holding.

    def claim_object(self, sha256: str) -> bool:
        """True: fetch and stage it, this process holds its claim. False: it is in the
        store already (another process may just have put it there) or being fetched by
        another thread here."""
        with self._staging:
            if sha256 in self._claimed or sha256 in self._staged:
                return False
            self._claimed.add(sha256)
        try:
            fd = self._claims_fd(sha256)
            delay = 0.002
            while not _ofd_lock(fd, sha256, wait=False):
                # wait holding nothing of ours: commit what this process staged, again on
                # every round, since its other threads may stage claims they were fetching
                # (two processes each waiting on the other's staged objects never wake)
                self.commit_staged()
                if self.has_object(sha256):
                    with self._staging:
                        self._claimed.discard(sha256)
                    return False
                time.sleep(delay)
                delay = min(delay * 2, 0.05)
        except OSError:
            with self._staging:
                self._claimed.discard(sha256)
            raise
        if self.has_object(sha256):
            self.release_claim(sha256)
            return False
        return True

    def release_claim(self, sha256: str) -> None:
        """Give up a claim without staging (the fetch failed)."""
        with self._staging:
            if sha256 not in self._claimed:
                return
            self._claimed.discard(sha256)
        _ofd_unlock(self._claims_fd(sha256), sha256)

    def _claims_fd(self, sha256: str) -> int:
        shard = int(sha256[0], 16) % CLAIM_SHARDS
        fd = self._claim_fds[shard]
        if fd is None:
            with self._staging:
                fd = self._claim_fds[shard]
                if fd is None:
                    fd = self._claim_fds[shard] = os.open(
                        self.locks / f"objects.claims.{shard:x}",
                        os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        return fd

    def stage_object(self, data: bytes, sha256: str) -> None:
        """Write a small verified object under a temporary name; ``commit_staged`` makes
        a batch durable with one syncfs and names it. Until then it does not exist for
        anyone (a kill -9 leaves a stray file in tmp/, never a bad object). The name is
        made by create_temp, not drawn by mkstemp (a fifth of a small object's cost)."""
        try:
            tmp, fd = create_temp(self.tmp, f"stage-{sha256[:16]}-", 0o444)
            try:
                if umask() & 0o444:
                    os.fchmod(fd, 0o444)  # objects are readable by all, whatever the umask
                write_all(fd, data)
            finally:
                os.close(fd)
        except OSError as e:
            raise disk_error(e, self.root) from None
        with self._staging:
            if sha256 in self._staged:
                os.unlink(tmp)
            else:
                self._staged[sha256] = Path(tmp)

    def commit_staged(self, needed: Any = None) -> int:
        """Group commit: one sync of the store's filesystem for every staged object,
        then their names (objects reach the disk before their names, as one by one),
        then their claims are released. ``needed`` (sha256s): only when one of them is
        staged; the first model to need its objects commits everyone's so far."""
        with self._staging:
            if needed is not None and not any(sha in self._staged for sha in needed):
                return 0
            batch, self._staged = self._staged, {}
            if not batch:
                return 0
            try:
                try:
                    _syncfs(self.tmp)
                except OSError as e:  # nothing is named: the bytes may not be on the disk
                    for tmp in batch.values():
                        tmp.unlink(missing_ok=True)
                    raise disk_error(e, self.root) from None
                try:
                    for sha256, tmp in batch.items():
                        _name_object(tmp, self.object_file(sha256))
                except OSError as e:
                    raise disk_error(e, self.root) from None
            finally:
                for sha256 in batch:
                    if sha256 in self._claimed:
                        self._claimed.discard(sha256)
                        _ofd_unlock(self._claims_fd(sha256), sha256)
        return len(batch)

    def ensure_exec_variant(self, sha256: str) -> None:
        """objects/sha256-x/<hex> from the plain object (copy: modes are per inode)."""
        if self.has_object(sha256, True):
            return
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix=f"x-{sha256[:16]}-")
        os.close(fd)
        shutil.copyfile(self.object_path(sha256), tmp)
        self.publish_object(Path(tmp), sha256, True)

    def put_file(self, path: Path, sha256: str, executable: bool = False) -> None:
        """Copy (or hard link) an already hashed local file into objects/."""
        if self.has_object(sha256, executable):
            return
        fd, tmp = tempfile.mkstemp(dir=self.tmp, prefix="put-")
        os.close(fd)
        os.unlink(tmp)
        try:
            shutil.copyfile(path, tmp)
        except OSError as e:
            raise disk_error(e, self.root) from None
        self.publish_object(Path(tmp), sha256, executable)

    # --- model trees ---------------------------------------------------------------

    def objects_of(self, models: list[LockedModel], purpose: str) -> dict[str, LockedFile]:
        """Each object of ``models`` once (sha256 → a file that has it); all must be in
        the store, else the error names the first missing file and ``purpose`` (what
        needs them: pushing, exporting)."""
        objects: dict[str, LockedFile] = {}
        for m in models:
            for f in m.regular_files():
                if not self.has_object(f.sha256):
                    raise StoreError(f"{m.key}: {f.path} is not in the store",
                                     hint=f"run `reconcile apply` before {purpose}")
                objects.setdefault(f.sha256, f)
        return objects

    def model_path(self, model: LockedModel) -> Path:
        return self.models / model.store_id

    def has_model(self, model: LockedModel) -> bool:
        return os.path.isdir(self.model_path(model))

    def pending_path(self, model: LockedModel) -> Path:
        return self.pending / model.store_id

    def tree_path(self, model: LockedModel) -> Path:
        """Where the model's tree is: published, else waiting for its validation."""
        dest = self.model_path(model)
        return dest if dest.is_dir() else self.pending_path(model)

    def assemble(self, model: LockedModel, *, publish: bool = True) -> Path:
        """Build the tree in tmp/ from objects, then put it in place with one rename:
        under models/ (its name), or under pending/ when validation must pass first
        (``publish`` False; :meth:`publish` names it then)."""
        dest = self.model_path(model)
        if dest.is_dir():
            return dest
        if not publish:
            dest = self.pending_path(model)
            if dest.is_dir():
                return dest  # built before; validation failed or was cut short
            dest.parent.mkdir(exist_ok=True)
        work = Path(tempfile.mkdtemp(dir=self.tmp, prefix=f"model-{model.name}-"))
        try:
            top = str(work)
            made = {top}  # str paths: pathlib costs more than the links it feeds
            for f in sorted(model.files, key=lambda f: f.path):
                target = f"{top}/{f.path}"
                parent = os.path.dirname(target)
                if parent not in made:
                    os.makedirs(parent, exist_ok=True)
                    made.update(_parents(parent, top))
                if f.type == "d":
                    os.makedirs(target, exist_ok=True)
                    made.add(target)
                elif f.type == "l":
                    os.symlink(f.target or "", target)
                else:
                    if f.executable:
                        self.ensure_exec_variant(f.sha256)
                    link_or_copy(self.object_file(f.sha256, f.executable), target)
            for d in made - {top}:  # the top: after the rename
                os.chmod(d, 0o555)
            try:
                # moving a directory to another parent rewrites its "..": a user who is not
                # root needs write permission on it, so the top is made read-only after
                os.rename(work, dest)
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                # another process published the same model first: same content, keep theirs
                remove_tree(work)
            else:
                os.chmod(dest, 0o555)
        except BaseException:
            if work.exists():
                remove_tree(work)
            raise
        return dest

    def publish(self, model: LockedModel) -> Path:
        """Name a pending tree once its validation passed (one rename)."""
        dest, pending = self.model_path(model), self.pending_path(model)
        if not pending.is_dir():
            return dest
        os.chmod(pending, 0o755)  # a rename to another parent rewrites ".." (see assemble)
        try:
            os.rename(pending, dest)
        except OSError as e:
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                os.chmod(pending, 0o555)
                raise
            remove_tree(pending)  # published meanwhile by another apply: same content
        os.chmod(dest, 0o555)
        return dest

    # --- roots and gc --------------------------------------------------------------

    @contextmanager
    def session(self, *, exclusive: bool = False) -> Iterator[None]:
        """Hold the store: shared by every lock and apply, exclusive for gc.

        gc decides what is garbage from the registered lockfiles, and an apply or a lock
        in progress has objects that no lockfile names yet: so gc runs only while none
        is running, and they never wait for each other (a shared flock). Raises
        StoreError when gc cannot have the store now.
        """
        import fcntl

        self.locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.locks / "store.lock", os.O_RDWR | os.O_CREAT, 0o666)  # umask trims
        try:
            if exclusive:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise StoreError(
                        f"the store at {self.root} is in use by a running apply or lock",
                        hint="run gc again when it has finished") from None
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def add_api_root(self, lock_text: str) -> Path:
        """Keep models fetched through the Python API (no lockfile of their own) alive:
        their lock is written under roots/ itself; delete the file to release them."""
        from .fsutil import atomic_write_text

        name = "api-" + hashlib.sha256(lock_text.encode()).hexdigest()[:32] + ".lock"
        path = self.roots / name
        if not path.exists():
            atomic_write_text(path, lock_text)
        return path

    def add_root(self, lockfile: Path) -> None:
        lockfile = lockfile.resolve()
        name = hashlib.sha256(os.fsencode(lockfile)).hexdigest()[:32]
        link = self.roots / name
        if os.path.islink(link) and os.readlink(link) == str(lockfile):
            return
        tmp = self.roots / f".{name}.{os.getpid()}"
        os.symlink(lockfile, tmp)
        os.replace(tmp, link)

    def live_roots(self) -> list[Path]:
        out = []
        for link in self.roots.iterdir():
            if link.name.startswith("."):
                continue
            if not link.is_symlink():
                if link.is_file():
                    out.append(link)  # a lock kept here by the Python API
                continue
            target = Path(os.readlink(link))
            if target.is_file():
                out.append(target)
            else:
                link.unlink()  # the project (or its lock) is gone
        return out


def _flock(kind: int, sha256: str) -> bytes:
    """A struct flock for one byte at an offset named by the object (48 bits of it)."""
    import struct

    return struct.pack("hhqqi4x", kind, os.SEEK_SET, int(sha256[:12], 16), 1, 0)


def _ofd_lock(fd: int, sha256: str, *, wait: bool) -> bool:
    import errno
    import fcntl

    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLKW if wait else fcntl.F_OFD_SETLK,
                    _flock(fcntl.F_WRLCK, sha256))
        return True
    except OSError as e:
        if not wait and e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


def _ofd_unlock(fd: int, sha256: str) -> None:
    import fcntl

    fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(fcntl.F_UNLCK, sha256))


_libc: list[Any] = []


def _syncfs(where: Path) -> None:
    """syncfs(2) of the filesystem holding ``where``: every file written so far reaches
    the disk, and a writeback error (a disk full under delayed allocation, EIO) is
    raised as OSError (Linux 5.8+ reports them). Without syncfs: a global sync."""
    import ctypes

    if not _libc:
        try:
            _libc.append(getattr(ctypes.CDLL(None, use_errno=True), "syncfs", None))
        except OSError:
            _libc.append(None)
    if _libc[0] is None:
        os.sync()
        return
    fd = os.open(where, os.O_RDONLY)
    try:
        if _libc[0](fd) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
    finally:
        os.close(fd)


def _name_object(tmp: Path, dest: str | Path) -> None:
    """Give a finished object its name; the first one wins. Replacing the name instead
    would drop the inode another process may be hard-linking into its model tree right
    then (link() of an inode whose last name went fails with ENOENT); the bytes are the
    same either way."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        pass
    except OSError as e:  # a filesystem without hard links (some network and FUSE mounts)
        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
            raise
        os.replace(tmp, dest)
        return
    os.unlink(tmp)


FICLONE = 0x40049409  # linux/fs.h: _IOW(0x94, 9, int)


def _reflink_hash(src_fd: int, dst_fd: int, size: int) -> str | None:
    """Clone ``src_fd`` into ``dst_fd`` (btrfs, XFS, bcachefs: shared extents, copied on
    write) and hash the clone; None where the filesystem cannot clone."""
    import fcntl

    try:
        fcntl.ioctl(dst_fd, FICLONE, src_fd)
    except OSError:
        return None
    return _copy_hash(dst_fd, None, size)


def _copy_hash(src_fd: int, dst_fd: int | None, size: int) -> str | None:
    """sha256 of what is read from ``src_fd`` (from offset 0), written to ``dst_fd`` on the
    way; None when it is not ``size`` bytes (a file growing under us is not the lock's)."""
    h = hashlib.sha256()
    done = 0
    while chunk := os.pread(src_fd, 1 << 20, done):
        done += len(chunk)
        if done > size:
            return None
        h.update(chunk)
        if dst_fd is not None:
            write_all(dst_fd, chunk)
    return h.hexdigest() if done == size else None


def link_or_copy(src: str | Path, dst: str | Path) -> None:
    """Hard link; reflink or copy where hard links cannot cross (other filesystem, limits)."""
    try:
        os.link(src, dst)
        return
    except OSError as e:
        if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP):
            raise
    try:
        shutil.copy2(src, dst)
    except OSError as e:
        raise disk_error(e, dst) from None


def _parents(d: str, top: str) -> list[str]:
    """``d`` and its parents below ``top``."""
    out = []
    while d != top and d.startswith(top):
        out.append(d)
        d = os.path.dirname(d)
    return out


def remove_tree(path: Path) -> None:
    """rmtree that first makes read-only directories writable again."""
    def onerror(func, p, exc):
        parent = os.path.dirname(p)
        os.chmod(parent, 0o755)
        if os.path.isdir(p) and not os.path.islink(p):
            os.chmod(p, 0o755)
        func(p)

    for dirpath, dirs, _ in os.walk(path):
        for d in dirs:
            full = os.path.join(dirpath, d)
            if not os.path.islink(full):
                os.chmod(full, 0o755)
    if os.path.isdir(path):
        os.chmod(path, 0o755)
    shutil.rmtree(path, onerror=onerror)


def disk_error(e: OSError, where: Path) -> StoreError:
    if e.errno == errno.ENOSPC:
        return StoreError(
            f"disk full while writing under {where}",
            hint="free some space (e.g. `reconcile gc`) or point RECONCILE_STORE elsewhere;"
            " partial downloads are kept and resume on the next run",
        )
    if e.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
        return StoreError(f"cannot write under {where}: {e.strerror}")
    return StoreError(f"I/O error under {where}: {e.strerror or e}")

