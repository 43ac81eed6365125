"""The lock round-trips exactly; the model hash is order-free and equals a scan of disk."""

from __future__ import annotations

import os
import stat
import string
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile import treehash
from reconcile.lockfile import HFLink, Lock, LockedFile, LockedModel, dumps, parse_lock

names = st.text(alphabet=string.ascii_letters + string.digits + "._-é ✓\"", min_size=1,
                max_size=12).filter(lambda s: s not in (".", ".."))
safe_names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,15}", fullmatch=True)
paths = st.lists(names, min_size=1, max_size=3).map("/".join)
hexes = st.text(alphabet="0123456789abcdef", min_size=64, max_size=64)


# a file's own pin (S3: versionId, or etag + modified): printable ASCII, quotes included
file_pins = st.dictionaries(st.sampled_from(["versionId", "etag", "modified"]),
                            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7e),
                                    min_size=1, max_size=40) | st.integers(0, 2**40),
                            min_size=1)


@st.composite
def locked_files(draw):
    kind = draw(st.sampled_from(["f", "f", "f", "l", "d"]))
    path = draw(paths)
    if kind == "f":
        return LockedFile(path, draw(st.integers(0, 2**40)), draw(hexes), draw(st.booleans()),
                          draw(st.none() | hexes), draw(st.booleans()),
                          draw(st.none() | st.text("0123456789abcdef", min_size=40, max_size=40)),
                          pin=draw(st.none() | file_pins))
    if kind == "l":
        return LockedFile(path, type="l", target=draw(names))
    return LockedFile(path, type="d")


@st.composite
def locks(draw):
    models = {}
    for key in draw(st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8), max_size=4,
                             unique=True)):
        files = draw(st.lists(locked_files(), max_size=6, unique_by=lambda f: f.path))
        kinds = {f.path: f.type for f in files}  # nothing below a file or a symlink
        files = [f for f in files if all(kinds.get(f.path.rsplit("/", i)[0], "d") == "d"
                                         for i in range(1, f.path.count("/") + 1))]
        hf = draw(st.none() | st.builds(HFLink, st.just("org/" + key), st.sampled_from(
            ["model", "dataset"]), st.text("0123456789abcdef", min_size=40, max_size=40),
            st.lists(st.sampled_from(["main", "v1", "refs/pr/1"]), min_size=1, max_size=2,
                     unique=True).map(tuple)))
        models[key] = LockedModel(key, draw(safe_names), "mock", "sha256:" + draw(hexes),
                                  treehash.tree_hash(f.entry() for f in files),
                                  draw(st.dictionaries(st.sampled_from(["org", "commit", "etag"]),
                                                       names)), tuple(files), hf)
    return Lock(models)


def canonical(lock: Lock) -> dict:
    """A blob equal to the sha256 is left out of the lock: compare the blob's name."""

    def f_(f: LockedFile) -> tuple:
        return (f.path, f.type, f.size if f.type == "f" else 0, f.sha256, f.executable,
                f.blob_name, f.lfs, f.git_oid, f.target, f.pin or None)

    return {k: (m.name, m.hash, m.fingerprint, m.pin, m.hf,
                sorted(map(f_, m.files), key=lambda t: os.fsencode(t[0])))
            for k, m in lock.models.items()}


@given(locks())
def test_lock_round_trips_and_serialises_deterministically(lock):
    text = dumps(lock)
    again = parse_lock(text.encode())
    assert canonical(again) == canonical(lock)
    assert dumps(again) == text


@given(st.lists(locked_files(), max_size=10, unique_by=lambda f: f.path), st.randoms())
def test_tree_hash_ignores_order(files, rnd):
    shuffled = list(files)
    rnd.shuffle(shuffled)
    assert treehash.tree_hash(f.entry() for f in files) == treehash.tree_hash(
        f.entry() for f in shuffled)


@given(st.lists(locked_files(), min_size=1, max_size=6, unique_by=lambda f: f.path))
def test_any_change_of_an_entry_changes_the_hash(files):
    base = treehash.tree_hash(f.entry() for f in files)
    f0 = files[0]
    if f0.type == "f":
        changed = LockedFile(f0.path, f0.size + 1, f0.sha256, f0.executable)
        flipped = LockedFile(f0.path, f0.size, f0.sha256, not f0.executable)
        for alt in (changed, flipped):
            assert treehash.tree_hash(x.entry() for x in [alt, *files[1:]]) != base


tree_spec = st.dictionaries(
    paths, st.one_of(st.binary(max_size=64).map(lambda b: ("f", b, False)),
                     st.binary(max_size=8).map(lambda b: ("f", b, True)),
                     names.map(lambda t: ("l", t, False)), st.just(("d", b"", False))),
    max_size=8)


def build(root: Path, spec) -> list[LockedFile]:
    """Write spec to disk; return the lock entries a source would report for it."""
    import hashlib

    out = []
    for path, (kind, data, x) in sorted(spec.items()):
        p = root / path
        if any(q.is_file() or q.is_symlink() for q in [*p.parents][: path.count("/")]):
            continue  # a prefix of this path is already a file
        if p.exists() or p.is_symlink():
            continue
        p.parent.mkdir(parents=True, exist_ok=True)
        if kind == "f":
            p.write_bytes(data)
            if x:
                os.chmod(p, 0o755)
            out.append(LockedFile(path, len(data), hashlib.sha256(data).hexdigest(), x))
        elif kind == "l":
            os.symlink(data, p)
            out.append(LockedFile(path, type="l", target=data))
        else:
            p.mkdir()
            out.append(LockedFile(path, type="d"))
    return out


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree_spec)
def test_hash_from_metadata_equals_hash_of_the_tree_on_disk(tmp_path_factory, spec):
    root = tmp_path_factory.mktemp("tree")
    files = build(root, spec)
    # directories that contain something are implied by metadata; a scan sees them all
    assert treehash.tree_hash(f.entry() for f in files) == treehash.hash_path(root)


def test_known_vector_is_stable(tmp_path):
    """The published definition, computed by hand, pins the format forever."""
    import base64
    import hashlib

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.txt").write_bytes(b"hello\n")
    (tmp_path / "run.sh").write_bytes(b"#!/bin/sh\n")
    os.chmod(tmp_path / "run.sh", 0o755)
    os.symlink("a/x.txt", tmp_path / "link")
    s = hashlib.sha256
    manifest = (
        b"reconcile-tree-v1\0"
        + b"d 0 0 " + b"0" * 64 + b" a\0"
        + b"f 0 6 " + s(b"hello\n").hexdigest().encode() + b" a/x.txt\0"
        + b"l 0 7 " + s(b"a/x.txt").hexdigest().encode() + b" link\0"
        + b"f 1 10 " + s(b"#!/bin/sh\n").hexdigest().encode() + b" run.sh\0"
    )
    expected = "sha256-" + base64.b64encode(s(manifest).digest()).decode()
    assert treehash.hash_path(tmp_path) == expected
    assert stat.S_IMODE(os.stat(tmp_path / "run.sh").st_mode) & 0o111
