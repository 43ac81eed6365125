"""The reconciler as a state machine (issue #31): random sequences of declare, move a
branch and `lock --upgrade`, lock a second revision in another project on the same store,
apply, `apply --locked` on a forged lock, prune, gc and a team cache round trip, against
the real local servers the suite already starts: the git forge with giftless
(tests/gitforge.py), the stand-in Hub (tests/hub.py) and moto's S3 server (a versioned
bucket).

After every step, read back from the servers and never from the lock:
- each installed file's bytes are the source's bytes at the locked pin (the real
  `git clone` + `git lfs pull`; huggingface_hub's `snapshot_download`; boto3's
  `get_object` at each version);
- a lock made from a fresh store at the same pin equals the lock made here;
- nothing outside the store and the HF caches changed (a sentinel directory and every
  other file under the example's root are snapshotted).

Its CI share is bounded: by default a few derandomized examples of at most eight steps,
no shrinking; RECONCILE_STATEFUL_EXAMPLES=N explores N random examples and shrinks a
failure to its shortest sequence. The failures it found (#31 cases 1 and 2) are the
plain regression tests at the end of this file.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from reconcile import treehash
from reconcile.lockfile import LockedModel, dumps, read_lock
from reconcile.store import Store
from tests.conftest import Project
from tests.hub import Hub
from tests.servers import Forge, aws_env_only, git_env, git_forge, moto_s3

pytest.importorskip("giftless")
pytestmark = pytest.mark.integration
if shutil.which("git-lfs") is None:
    pytest.skip("needs git-lfs (apt-get install git-lfs)", allow_module_level=True)

EXAMPLES = int(os.environ.get("RECONCILE_STATEFUL_EXAMPLES", "4"))
EXPLORE = bool(os.environ.get("RECONCILE_STATEFUL_EXAMPLES")) and not os.environ.get("CI")
STEPS = 8
_names = itertools.count()

# --- the sources, as the servers serve them --------------------------------------------


def _git(env: dict[str, str], *args: str, cwd: Path | None = None) -> str:
    r = subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True)
    assert r.returncode == 0, (args, r.stderr.decode())
    return r.stdout.decode().strip()


def _tree(root: Path, *, follow: bool = False) -> dict[str, tuple[str, str]]:
    """path → (kind + exec bit, sha256 of the bytes or the link target), `.git` left out.
    ``follow``: read through symlinks (an HF snapshot is links to blobs by design)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        if rel == ".git" or rel.startswith(".git/") or rel == ".gitattributes":
            continue
        if p.is_symlink() and not follow:
            out[rel] = ("l", os.readlink(p))
        elif p.is_file():
            x = "x" if (os.stat(p).st_mode & stat.S_IXUSR) and not follow else "-"
            out[rel] = ("f" + x, hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def _bytes_only(tree: dict[str, tuple[str, str]], root: Path) -> dict[str, str]:
    """The same tree as read through links: path → sha256 of what opening it gives."""
    return {rel: hashlib.sha256((root / rel).read_bytes()).hexdigest() for rel in tree}


class GitRepo:
    """org/<name> on the forge, pushed by the real git + git-lfs; a working copy to move
    its branch, and a second clone that reads back any commit as `git lfs pull` gives it."""

    def __init__(self, forge: Forge, root: Path) -> None:
        from tests.integration.test_git_lfs_source import push_repo

        self.name = f"s{next(_names)}-{os.getpid()}"
        self.env = git_env(root / "git-home")
        self.shas = push_repo(forge, self.name, root / "git-home")
        self.src = Path(self.shas["src"])
        self.url = forge.url(f"org/{self.name}")
        self.truth: dict[str, dict[str, tuple[str, str]]] = {}
        self.clone = root / "truth" / self.name
        self.pushes = 0

    def push(self, *, symlink: bool, lfs: bool = True) -> str:
        """A new commit on main with NEW LFS files and/or a new symlink: what a branch
        that moves looks like."""
        self.pushes += 1
        n = self.pushes
        if lfs:
            (self.src / f"bert/new-{n}.bin").write_bytes(os.urandom(3000 + n))
            (self.src / f"bert/new-{n}.safetensors").write_bytes(os.urandom(5000 + n))
        (self.src / "bert/config.json").write_bytes(b'{"model_type": "bert", "v": %d}\n' % n)
        if symlink:
            os.symlink("tokenizer.json", self.src / f"bert/link-{n}.json")  # a new blob
        _git(self.env, "add", "-A", cwd=self.src)
        _git(self.env, "commit", "-qm", f"push {n}", cwd=self.src)
        _git(self.env, "push", "-q", self.url, "main", cwd=self.src)
        return _git(self.env, "rev-parse", "HEAD", cwd=self.src)

    def files_at(self, commit: str) -> dict[str, tuple[str, str]]:
        """bert/ at ``commit`` as the official clients check it out."""
        if commit not in self.truth:
            env = {**self.env, "GIT_LFS_SKIP_SMUDGE": "1"}
            if not self.clone.exists():
                _git(env, "clone", "-q", self.url, str(self.clone))
            _git(env, "fetch", "-q", "origin", cwd=self.clone)
            _git(env, "checkout", "-q", commit, cwd=self.clone)
            _git(env, "lfs", "pull", cwd=self.clone)
            self.truth[commit] = _tree(self.clone / "bert")
        return self.truth[commit]

    def decl(self, rev: str) -> str:
        return f'source.git-lfs = {{ url = "{self.url}", rev = "{rev}", subdir = "bert" }}'


class HubRepo:
    """acme/<name> on the stand-in Hub: v1 (tag) and main one commit ahead; read back with
    huggingface_hub's own snapshot_download."""

    def __init__(self, hub: Hub, root: Path) -> None:
        self.hub, self.name = hub, f"acme/s{next(_names)}-{os.getpid()}"
        repo = hub.repo(self.name)
        repo.commit(
            {
                "config.json": b'{"model_type": "bert"}',
                "model.safetensors": os.urandom(20_000),
                "tokenizer.json": b'{"v": 1}',
            },
            tag="v1",
        )
        repo.commit({"config.json": b'{"model_type": "bert", "v": 2}'})
        self.repo, self.cache = repo, root / "truth-hf"
        self.truth: dict[str, dict[str, tuple[str, str]]] = {}
        self.pushes = 0

    def push(self) -> str:
        self.pushes += 1
        return self.repo.commit(
            {
                f"new-{self.pushes}.bin": os.urandom(4000 + self.pushes),
                "config.json": b'{"v": %d}' % (self.pushes + 2),
            }
        )

    def files_at(self, commit: str) -> dict[str, tuple[str, str]]:
        from huggingface_hub import snapshot_download

        if commit not in self.truth:
            snap = Path(
                snapshot_download(
                    self.name, revision=commit, cache_dir=self.cache, endpoint=self.hub.url
                )
            )
            self.truth[commit] = {k: ("f-", v[1]) for k, v in _tree(snap, follow=True).items()}
        return self.truth[commit]

    def decl(self, rev: str) -> str:
        return f'source.huggingface = {{ repo = "{self.name}", revision = "{rev}" }}'


class S3Repo:
    """A versioned bucket on moto's S3 server. S3 has no commit: each state the test
    leaves the prefix in is a generation, recorded from the server (every key's
    VersionId and the bytes get_object returns for it); a lock's per-file versionIds
    name the generation it pinned."""

    def __init__(self, endpoint: str) -> None:
        import boto3
        from botocore.config import Config

        self.endpoint, self.bucket = endpoint, f"stateful-{next(_names)}-{os.getpid()}"
        self.s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="admin",
            aws_secret_access_key="admin",
            config=Config(
                s3={"addressing_style": "path"},
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )
        self.s3.create_bucket(Bucket=self.bucket)
        self.s3.put_bucket_versioning(
            Bucket=self.bucket, VersioningConfiguration={"Status": "Enabled"}
        )
        self.gens: list[dict[str, tuple[str, str]]] = []  # path → (versionId, sha256)
        self._put({"config.json": b'{"model_type": "bert"}', "weights.bin": os.urandom(9000)})
        self._put({"config.json": b'{"model_type": "bert", "v": 2}'})
        self.pushes = 0

    def _put(self, files: dict[str, bytes]) -> None:
        for path, data in files.items():
            self.s3.put_object(
                Bucket=self.bucket, Key="m/" + path, Body=data, ChecksumAlgorithm="SHA256"
            )
        gen = {}
        for obj in self.s3.list_objects_v2(Bucket=self.bucket, Prefix="m/")["Contents"]:
            got = self.s3.get_object(Bucket=self.bucket, Key=obj["Key"])
            gen[obj["Key"][2:]] = (got["VersionId"], hashlib.sha256(got["Body"].read()).hexdigest())
        self.gens.append(gen)

    def push(self) -> None:
        self.pushes += 1
        self._put(
            {
                f"new-{self.pushes}.bin": os.urandom(3000 + self.pushes),
                "config.json": b'{"v": %d}' % (self.pushes + 2),
            }
        )

    def generation(self, m: LockedModel) -> str:
        versions = {f.path: (f.pin or {}).get("versionId") for f in m.regular_files()}
        for i, gen in enumerate(self.gens):
            if versions == {k: v[0] for k, v in gen.items()}:
                return str(i)
        raise AssertionError(f"the lock's S3 versions are no state the bucket ever had: {versions}")

    def files_at(self, gen: str) -> dict[str, tuple[str, str]]:
        return {k: ("f-", v[1]) for k, v in self.gens[int(gen)].items()}

    def decl(self, rev: str) -> str:
        return (
            f'source.s3 = {{ bucket = "{self.bucket}", prefix = "m/", '
            f'endpoint = "{self.endpoint}" }}'
        )


# --- the machine ------------------------------------------------------------------------


KEYS = "ghs"  # a git-lfs model, a Hugging Face model, an S3 model


class Reconciler(RuleBasedStateMachine):
    """Two projects (a, b) on one store and one HF cache; each may declare a git-lfs (g),
    a Hugging Face (h) and an S3 (s) model, every example on repositories of its own.
    ``forge``, ``hub``, ``s3``, ``capsys`` and ``base`` are set by the test."""

    forge: Forge
    hub: Hub
    s3: str
    capsys: pytest.CaptureFixture[str]
    base: Path

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(dir=self.base))
        self.store, self.cache = self.root / "store", self.root / "hf"
        self._env(
            RECONCILE_STORE=self.store,
            HF_HUB_CACHE=self.cache,
            HF_HOME=self.root / "hfhome",
            HOME=self.root / "home",
        )
        (self.root / "home").mkdir()
        self.sources = {
            "g": GitRepo(self.forge, self.root),
            "h": HubRepo(self.hub, self.root),
            "s": S3Repo(self.s3),
        }
        self.projects = {p: self._project(p) for p in ("a", "b")}
        self.decls: dict[str, dict[str, str]] = {"a": {}, "b": {}}
        self.applied: dict[str, dict[str, str]] = {"a": {}, "b": {}}  # key → model hash
        self.fresh: dict[tuple[str, str], tuple] = {}
        self.forged = 0
        sentinel = self.root / "sentinel"
        sentinel.mkdir()
        (sentinel / "keep.txt").write_text("must not change\n")
        os.symlink("keep.txt", sentinel / "link")
        self.outside = self._outside()

    # --- plumbing
    def _env(self, **values: Path | str) -> None:
        for k, v in values.items():
            os.environ[k] = str(v)

    def _project(self, name: str) -> Project:
        d = self.root / f"proj-{name}"
        d.mkdir()
        p = Project(d, self.store, self.cache, self.capsys)
        p.write("")
        return p

    def _write(self, p: str) -> None:
        text = "".join(f"[models.{k}]\n{v}\n" for k, v in sorted(self.decls[p].items()))
        self.projects[p].write(text)

    def _run(self, p: str, *args: str) -> None:
        r = self.projects[p].run(*args)
        assert r.code == 0, (p, args, r.err)
        assert "Traceback" not in r.err

    def _outside(self) -> dict[str, tuple]:
        """Everything under the example's root but the store, the HF caches, the
        projects' models.toml/models.lock and the test's own read-back copies."""
        skip = {"store", "hf", "truth", "truth-hf", "git-home", "fresh", "forged"}
        out = {}
        for dirpath, dirs, files in os.walk(self.root):
            rel = Path(dirpath).relative_to(self.root)
            if rel == Path("."):
                dirs[:] = [d for d in dirs if d not in skip]
            for name in dirs + files:
                p = Path(dirpath, name)
                if name in ("models.toml", "models.lock") and rel.name.startswith("proj-"):
                    continue
                st_ = p.lstat()
                out[str(p.relative_to(self.root))] = (
                    st_.st_mode,
                    st_.st_size,
                    os.readlink(p) if p.is_symlink() else p.read_bytes() if p.is_file() else None,
                )
        return out

    def _lock(self, p: str):
        return read_lock(self.projects[p].lock)

    # --- rules
    @initialize(g=st.sampled_from(["first", "main"]), h=st.sampled_from(["first", "main"]))
    def start(self, g: str, h: str) -> None:
        """Project a has both models installed: every sequence starts on a used store
        (a clone cache, objects, HF cache entries), where sequence bugs live."""
        self.declare("a", "g", g)
        self.declare("a", "h", h)
        self.declare("a", "s", "main")
        self.apply("a")

    @rule(
        p=st.sampled_from("ab"), key=st.sampled_from(KEYS), rev=st.sampled_from(["first", "main"])
    )
    def declare(self, p: str, key: str, rev: str) -> None:
        """Declare (or re-declare at another revision) a model, then lock."""
        first = {"g": "v1.0", "h": "v1", "s": "-"}  # S3 has no revision to name
        tag = first[key] if rev == "first" else "main"
        self.decls[p][key] = self.sources[key].decl(tag)
        self._write(p)
        self._run(p, "lock")

    @rule(p=st.sampled_from("ab"), key=st.sampled_from(KEYS), symlink=st.booleans())
    def move_branch_and_upgrade(self, p: str, key: str, symlink: bool) -> None:
        """Push a commit with new LFS files (and a new symlink) to main; lock --upgrade."""
        src = self.sources[key]
        src.push(symlink=symlink) if key == "g" else src.push()  # S3: new object versions
        if self.decls[p]:
            self._run(p, "lock", "--upgrade")

    @rule(p=st.sampled_from("ab"))
    def apply(self, p: str) -> None:
        self._run(p, "apply")
        lock = self._lock(p)
        self.applied[p] = {k: m.hash for k, m in lock.models.items()} if lock else {}

    @rule(p=st.sampled_from("ab"), data=st.data())
    def prune(self, p: str, data: st.DataObject) -> None:
        """A model leaves models.toml; apply --prune."""
        if self.decls[p]:
            key = _pick(data, sorted(self.decls[p]))
            del self.decls[p][key]
            self._write(p)
        self._run(p, "apply", "--prune")
        lock = self._lock(p)
        self.applied[p] = {k: m.hash for k, m in lock.models.items()} if lock else {}

    @rule()
    def gc(self) -> None:
        self._run("a", "gc")

    @precondition(lambda self: any(self.applied.values()))
    @rule(data=st.data())
    def apply_forged_lock(self, data: st.DataObject) -> None:
        """A pull request's models.lock: one file takes the sha256 and size of another
        object already in the store, the model hash recomputed so the lock is
        self-consistent. apply --locked with a fresh HF cache must refuse, or install
        the source's true bytes."""
        p = _pick(data, sorted(k for k, v in self.applied.items() if v))
        lock = self._lock(p)
        key = _pick(data, sorted(self.applied[p]))
        model = lock.models[key]
        victim = _pick(data, [f for f in model.regular_files() if f.size > 0])
        objects = sorted(o.name for o in (self.store / "objects" / "sha256").iterdir())
        other = _pick(data, [o for o in objects if o != victim.sha256] or [""])
        if not other:
            return
        size = (self.store / "objects" / "sha256" / other).stat().st_size
        files = tuple(
            type(f)(
                **{
                    **f.__dict__,
                    "sha256": other,
                    "size": size,
                    "blob": other if f.blob == f.sha256 else f.blob,
                }
            )
            if f is victim
            else f
            for f in model.files
        )
        forged = type(model)(
            **{
                **model.__dict__,
                "files": files,
                "hash": treehash.tree_hash(f.entry() for f in files),
            }
        )
        lock.models = {key: forged}
        self.forged += 1
        d = self.root / "forged" / str(self.forged)
        d.mkdir(parents=True)
        proj = Project(d, self.store, d / "hf", self.capsys)
        proj.write(f"[models.{key}]\n{self.decls[p][key]}\n")
        proj.lock.write_text(dumps(lock))
        with self._elsewhere(self.store, d / "hf"):
            r = proj.run("apply", "--locked")
        assert "Traceback" not in r.err
        if r.code == 0:
            self._check_installed(key, forged, Store(self.store).model_path(forged))

    @precondition(lambda self: any(self.applied.values()))
    @rule(p=st.sampled_from("ab"))
    def push_and_pull_through_a_team_cache(self, p: str) -> None:
        """push to a directory cache, then a fresh store pulls and applies: offline,
        nothing vouches for the lock there (refused, by name); online, the sources'
        listings do, and the pulled bytes are installed. (push sends installed objects:
        a lock not yet applied is refused, by design.)"""
        lock = self._lock(p)
        if not lock or not lock.models \
                or self.applied[p] != {k: m.hash for k, m in lock.models.items()}:
            return
        cache = self.root / "fresh" / "team-cache"
        self._run(p, "push", "--cache", str(cache))
        other = self.root / "fresh" / f"pulled-{next(_names)}"
        with self._elsewhere(other / "store", other / "hf"):
            self._run(p, "pull", "--cache", str(cache))
            r = self.projects[p].run("apply", "--offline", "--cache", "off")
            assert r.code == 1 and "--offline: nothing vouches" in r.err, r.err
            # (an S3 entry the bucket has moved past is vouched for by its versions)
            self._run(p, "apply", "--cache", "off")
        for key, m in self._lock(p).models.items():
            self._check_installed(key, m, Store(other / "store").model_path(m))

    # --- invariants
    def _pin(self, key: str, m: LockedModel) -> str:
        """The source state a locked model names: a commit, or the S3 generation."""
        return self.sources[key].generation(m) if key == "s" else m.pin["commit"]

    def _check_installed(self, key: str, m: LockedModel, tree: Path) -> None:
        want = self.sources[key].files_at(self._pin(key, m))
        got = _tree(tree, follow=key == "h")
        if key == "h":
            got = {k: ("f-", v[1]) for k, v in got.items()}
        assert got == want, (f"{key} at {self._pin(key, m)}: installed ≠ source", _diff(got, want))

    @invariant()
    def installed_bytes_are_the_sources_bytes_at_the_pin(self) -> None:
        for p, applied in self.applied.items():
            lock = self._lock(p)
            for key, m in lock.models.items() if lock else ():
                if applied.get(key) != m.hash:
                    continue
                self._check_installed(key, m, Store(self.store).model_path(m))
                r = self.projects[p].run("path", key)
                assert r.code == 0, r.err
                snap = Path(r.out.strip())
                want = self.sources[key].files_at(self._pin(key, m))
                got = _bytes_only(_tree(snap), snap)
                assert got == {k: v[1] for k, v in want.items() if v[0] != "l"} | {
                    k: _link_sha(want, k) for k, v in want.items() if v[0] == "l"
                }, (f"{p}: `path {key}` hands out other bytes", snap)

    @invariant()
    def a_fresh_store_locks_the_same(self) -> None:
        for p in self.projects:
            lock = self._lock(p)
            for key, m in lock.models.items() if lock else ():
                if key == "s" and int(self._pin(key, m)) != len(self.sources["s"].gens) - 1:
                    continue  # an older S3 state cannot be locked again: no commit to ask for
                got = (m.hash, m.files)
                assert got == self._fresh_lock(key, self._pin(key, m)), (
                    f"{p}: {key} at {self._pin(key, m)} locks otherwise in a fresh store",
                    _diff(
                        {f.path: (f.size, f.sha256, f.lfs) for f in m.files},
                        {
                            f.path: (f.size, f.sha256, f.lfs)
                            for f in self._fresh_lock(key, self._pin(key, m))[1]
                        },
                    ),
                )

    def _fresh_lock(self, key: str, commit: str) -> tuple:
        """(hash, files) of the model locked at ``commit`` in an empty store."""
        if (key, commit) not in self.fresh:
            (self.root / "fresh").mkdir(exist_ok=True)
            d = Path(tempfile.mkdtemp(dir=self.root / "fresh"))
            proj = Project(d, d / "store", d / "hf", self.capsys)
            proj.write(f"[models.{key}]\n{self.sources[key].decl(commit)}\n")
            with self._elsewhere(d / "store", d / "hf"):
                r = proj.run("lock")
            assert r.code == 0, r.err
            m = read_lock(proj.lock).models[key]
            self.fresh[(key, commit)] = (m.hash, m.files)
        return self.fresh[(key, commit)]

    @contextmanager
    def _elsewhere(self, store: Path, cache: Path) -> Iterator[None]:
        """Another machine's store and HF cache for a while (a fresh one, a forger's)."""
        self._env(RECONCILE_STORE=store, HF_HUB_CACHE=cache)
        try:
            yield
        finally:
            self._env(RECONCILE_STORE=self.store, HF_HUB_CACHE=self.cache)

    @invariant()
    def nothing_outside_the_store_and_the_caches_changed(self) -> None:
        assert self._outside() == self.outside


def _pick(data: st.DataObject, choices: list):
    """One of ``choices`` by an index: the same draws whatever the servers' random bytes
    made the list (hypothesis replays a sequence to shrink it; the store's object names
    differ on each replay)."""
    return choices[data.draw(st.integers(0, 63)) % len(choices)]


def _link_sha(tree: dict[str, tuple[str, str]], rel: str) -> str:
    """What opening a symlink of the source's tree gives: its target's bytes."""
    target = (Path(rel).parent / tree[rel][1]).as_posix()
    return tree[target][1]


def _diff(got: dict, want: dict) -> dict:
    keys = set(got) | set(want)
    return {k: (got.get(k), want.get(k)) for k in sorted(keys) if got.get(k) != want.get(k)}


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    with git_forge(tmp_path_factory.mktemp("forge") / "srv") as f:
        yield f


@pytest.fixture(scope="module")
def hub():
    with Hub() as h:
        yield h


@pytest.fixture(scope="module")
def moto():
    with moto_s3() as endpoint:
        yield endpoint


def aws(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    aws_env_only(monkeypatch, tmp_path)


def machine_settings() -> settings:
    """Bounded by default (CI, .ci/run): a fixed, derandomized sequence of examples and
    no shrinking, since each step talks to real servers. RECONCILE_STATEFUL_EXAMPLES=N
    explores: random examples, shrunk to the shortest failing sequence."""
    return settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        derandomize=not EXPLORE,
        database=None,
        phases=tuple(Phase) if EXPLORE else (Phase.explicit, Phase.generate),
        suppress_health_check=list(HealthCheck),
        report_multiple_bugs=False,
    )


@pytest.mark.timeout(0 if EXPLORE else 300)  # exploring and shrinking take their time
def test_the_reconciler_keeps_its_promise_whatever_the_sequence(
    forge, hub, moto, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("RECONCILE_VALIDATION", "none")
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    aws(tmp_path, monkeypatch)
    for var in (
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
        "RECONCILE_CACHE",
        "RECONCILE_STORE",
        "HF_HUB_CACHE",
        "HF_HOME",
        "HOME",
    ):
        monkeypatch.setenv(var, os.environ.get(var, ""))  # restored after the machine
    monkeypatch.chdir(tmp_path)

    class Machine(Reconciler):
        pass

    Machine.forge, Machine.hub, Machine.capsys, Machine.base = forge, hub, capsys, tmp_path
    Machine.s3 = moto
    run_state_machine_as_test(Machine, settings=machine_settings())


# --- what the machine found, as plain regression tests -----------------------------------


@pytest.fixture
def env(project, hub, tmp_path, monkeypatch):
    """A project on the stand-in Hub and the forge; git with a clean HOME."""
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("RECONCILE_VALIDATION", "none")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    (tmp_path / "home").mkdir()
    return project


def _other(project, tmp_path: Path) -> Project:
    """A second project on the same store and HF cache."""
    d = tmp_path / "proj2"
    d.mkdir()
    return Project(d, project.store, project.cache, project.capsys)


def _locked(project, key: str) -> LockedModel:
    return read_lock(project.lock).models[key]


@pytest.mark.parametrize("where", ["another project", "lock --upgrade"])
def test_new_lfs_files_of_a_second_revision_lock_as_weights_not_pointers(
    env, forge, tmp_path, where
):
    """Minimal sequence: lock the repository at one commit (the store's partial clone now
    holds it), push a commit with a NEW LFS file, lock the branch again (in another
    project on the same store, or with lock --upgrade): the new file must lock as a fresh
    store locks it, and apply must install the bytes `git lfs pull` gives."""
    git = GitRepo(forge, tmp_path)
    env.write(f"[models.g]\n{git.decl('main')}\n")
    assert env.run("lock").code == 0
    new = git.push(symlink=False)
    second = env
    if where == "another project":
        second = _other(env, tmp_path)
        second.write(f"[models.g]\n{git.decl('main')}\n")
        assert second.run("lock").code == 0
    else:
        assert env.run("lock", "--upgrade").code == 0
    m = _locked(second, "g")
    assert m.pin["commit"] == new
    files = {f.path: f for f in m.files}
    truth = git.files_at(new)
    for path in ("new-1.bin", "new-1.safetensors"):
        assert files[path].lfs and files[path].sha256 == truth[path][1], (path, files[path])
    assert second.run("apply").code == 0
    assert _tree(Store(env.store).model_path(m)) == truth


def test_a_new_symlink_in_a_second_revision_locks(env, forge, tmp_path):
    git = GitRepo(forge, tmp_path)
    env.write(f"[models.g]\n{git.decl('main')}\n")
    assert env.run("lock").code == 0
    new = git.push(symlink=True, lfs=False)
    r = env.run("lock", "--upgrade")
    assert r.code == 0, r.err
    link = next(f for f in _locked(env, "g").files if f.path == "link-1.json")
    assert link.type == "l" and link.target == "tokenizer.json"
    assert env.run("apply").code == 0
    assert _tree(Store(env.store).model_path(_locked(env, "g"))) == git.files_at(new)


def _forge_lock(project, key: str, path: str, other_sha: str) -> LockedModel:
    """models.lock as a pull request could send it: ``path`` takes the sha256 and size
    of a store object, the model hash recomputed (the algorithm is public)."""
    lock = read_lock(project.lock)
    model = lock.models[key]
    size = Store(project.store).object_path(other_sha).stat().st_size
    files = tuple(
        type(f)(
            **{
                **f.__dict__,
                "sha256": other_sha,
                "size": size,
                "blob": other_sha if f.blob == f.sha256 else f.blob,
            }
        )
        if f.path == path
        else f
        for f in model.files
    )
    forged = type(model)(
        **{**model.__dict__, "files": files, "hash": treehash.tree_hash(f.entry() for f in files)}
    )
    lock.models = {**lock.models, key: forged}
    project.lock.write_text(dumps(lock))
    return forged


@pytest.mark.parametrize("key", ["h", "g", "s"])
def test_a_forged_lock_never_installs_bytes_the_source_did_not_serve(
    env, forge, hub, moto, tmp_path, monkeypatch, key
):
    """Minimal sequence: apply a model (its objects are now in the shared store); a
    pull request swaps one file's sha256 and size for another object of the store and
    recomputes the model hash; apply --locked with a fresh HF cache must refuse, or
    install the source's bytes."""
    aws(tmp_path, monkeypatch)
    source = {
        "h": lambda: HubRepo(hub, tmp_path),
        "g": lambda: GitRepo(forge, tmp_path),
        "s": lambda: S3Repo(moto),
    }[key]()
    env.write(f"[models.{key}]\n{source.decl('main')}\n")
    assert env.run("apply").code == 0
    m = _locked(env, key)
    victim = "weights.bin" if key == "s" else "model.safetensors"
    other = next(
        f.sha256
        for f in m.regular_files()
        if f.path != victim
        and f.size
        and f.sha256 != next(g.sha256 for g in m.files if g.path == victim)
    )
    forged = _forge_lock(env, key, victim, other)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "fresh-hf"))
    r = env.run("apply", "--locked")
    if r.code == 0:
        got = _tree(Store(env.store).model_path(forged), follow=True)
        want = source.files_at(source.generation(m) if key == "s" else m.pin["commit"])
        assert got[victim][1] == want[victim][1], "installed bytes the source never served"
    else:
        assert victim in r.err and "Traceback" not in r.err


def test_an_lfs_object_missing_on_the_server_fails_the_lock_of_a_second_revision(
    env, forge, tmp_path, monkeypatch
):
    """A fresh store refuses it (README: "a missing LFS object fails the lock"); a store
    whose clone already holds the first revision must too."""
    git = GitRepo(forge, tmp_path)
    env.write(f"[models.g]\n{git.decl('main')}\n")
    assert env.run("lock").code == 0
    pointer = (
        b"version https://git-lfs.github.com/spec/v1\noid sha256:" + b"cd" * 32 + b"\nsize 12\n"
    )
    (git.src / "bert/ghost.bin").write_bytes(pointer)  # git-lfs's clean keeps a pointer as is
    _git(git.env, "add", "-A", cwd=git.src)
    _git(git.env, "commit", "-qm", "ghost", cwd=git.src)
    _git(git.env, "push", "-q", "--no-verify", git.url, "main", cwd=git.src)  # no upload
    fresh = _other(env, tmp_path)
    fresh.write(f"[models.g]\n{git.decl('main')}\n")
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "fresh-store"))
    r = fresh.run("lock")
    assert r.code == 1 and "missing on the server" in r.err, r.err
    monkeypatch.setenv("RECONCILE_STORE", str(env.store))
    r = env.run("lock", "--upgrade")
    assert r.code == 1 and "ghost.bin" in r.err and "missing on the server" in r.err, r.err


def test_an_s3_lock_made_elsewhere_installs_its_versions_after_the_bucket_moved_on(
    env, moto, tmp_path, monkeypatch
):
    """A versioned bucket vouches for each locked (key, versionId), not only for what it
    lists now: a lock made on another machine installs the versions it pins on a fresh
    store after new objects were put, and a forged versionId is refused by name."""
    aws(tmp_path, monkeypatch)
    s3 = S3Repo(moto)
    env.write(f"[models.s]\n{s3.decl('main')}\n")
    assert env.run("lock").code == 0
    m = _locked(env, "s")
    s3.push()  # the bucket moves on: a new object, a new config.json version
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "other-store"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "other-hf"))
    r = env.run("apply", "--locked")
    assert r.code == 0, r.err
    got = _tree(Store(tmp_path / "other-store").model_path(m), follow=True)
    assert {k: v[1] for k, v in got.items()} == {
        k: v[1] for k, v in s3.files_at(s3.generation(m)).items()}

    text = env.lock.read_text()
    version = next(f.pin["versionId"] for f in m.files if f.path == "config.json")
    latest = s3.gens[-1]["config.json"][0]
    env.lock.write_text(text.replace(version, latest))  # a real version of another state
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "third-store"))
    r = env.run("apply", "--locked")
    assert r.code == 1 and "config.json" in r.err and "does not match" in r.err, r.err
