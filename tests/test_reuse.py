"""reuse.py and Store.take_copy: another tool's file becomes an object only when its bytes
are the lock's, and is left exactly as it was found (issue #34). The end-to-end cases
(huggingface_hub's cache, ollama's directory) are in tests/integration/test_reuse.py."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.lockfile import HFLink, LockedFile, LockedModel
from reconcile.paths import check_relpath
from reconcile.reuse import HF_CACHE, OLLAMA, Elsewhere
from reconcile.store import Store

TMP = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def state(p: Path) -> tuple[int, int, int, bytes]:
    st_ = p.stat()
    return st_.st_ino, st_.st_mode, st_.st_mtime_ns, p.read_bytes()


@TMP
@given(
    data=st.binary(max_size=3000),
    change=st.sampled_from(["none", "flip", "truncate", "append"]),
    where=st.integers(min_value=0),
)
def test_take_copy_names_an_object_only_for_the_locked_bytes(tmp_path, data, change, where):
    store = Store(tmp_path / f"store-{os.urandom(4).hex()}").ensure()
    sha = hashlib.sha256(data).hexdigest()
    found = bytearray(data)
    if change == "flip" and data:
        found[where % len(data)] ^= 0xFF
    elif change == "truncate" and data:
        del found[where % len(data) :]
    elif change == "append":
        found += b"x"
    src = tmp_path / f"theirs-{os.urandom(4).hex()}"
    src.write_bytes(bytes(found))
    before = state(src)

    took = store.take_copy(src, sha, size=len(data))

    assert took == (bytes(found) == data)
    assert store.has_object(sha) == took
    if took:
        obj = store.object_path(sha)
        assert obj.read_bytes() == data
        assert not os.path.samefile(obj, src)  # our own inode, never the other tool's
    assert state(src) == before  # not chmod-ed, touched, moved or rewritten
    assert not list(store.tmp.iterdir())  # a refused copy leaves nothing behind


def test_take_copy_refuses_what_is_not_a_regular_file(tmp_path):
    """A FIFO at a blob's name would block a plain open() forever; a directory or a
    missing file is simply not there."""
    store = Store(tmp_path / "store").ensure()
    sha = hashlib.sha256(b"").hexdigest()
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    (tmp_path / "dir").mkdir()
    for p in (fifo, tmp_path / "dir", tmp_path / "absent"):
        assert not store.take_copy(p, sha, size=0)
    assert not store.has_object(sha)


def test_take_copy_with_no_size_takes_a_peer_object_whole(tmp_path):
    peer = Store(tmp_path / "peer").ensure()
    data = os.urandom(5000)
    sha = hashlib.sha256(data).hexdigest()
    peer.put_file(_write(tmp_path / "f", data), sha)
    store = Store(tmp_path / "store").ensure()
    assert store.take_from_peer([tmp_path / "nothing", tmp_path / "peer"], sha)
    assert store.object_path(sha).read_bytes() == data


def _write(p: Path, data: bytes) -> Path:
    p.write_bytes(data)
    return p


def model(path: str, sha: str, blob: str | None = None) -> LockedModel:
    f = LockedFile(path=path, size=3, sha256=sha, blob=blob)
    return LockedModel(
        key="m",
        name="m",
        source_type="huggingface",
        fingerprint="",
        hash="sha256-AAAA",
        pin={},
        files=(f,),
        hf=HFLink("acme/tiny", "model", "c" * 40, ("main",)),
    )


SHA = "a" * 64
REL = st.lists(
    st.text(alphabet="ab./\\-_ .~gitGIT:", min_size=1, max_size=8), min_size=1, max_size=4
).map("/".join)


@given(path=REL)
def test_candidates_stay_in_their_places_for_any_checked_path(path):
    """Every path apply reads is a lock field joined under one of the places: a checked
    relative path (what the lock parser lets through) never climbs out of the snapshot."""
    try:
        path = check_relpath(path)
    except ValueError:
        return
    m = model(path, SHA, blob="b" * 40)
    where = Elsewhere(hf_cache=Path("/c"), ollama_dirs=(Path("/o"),), peers=(Path("/p"),))
    got = list(where.candidates(m, m.files[0]))
    peer = "the store /p"  # a peer is named as messages name it (modes.store_name)
    roots = {peer: "/p/objects/", HF_CACHE: "/c/models--acme--tiny/", OLLAMA: "/o/blobs/"}
    for place, p in got:
        assert os.path.normpath(p).startswith(roots[place]), (place, p)
    snap = [p for place, p in got if "/snapshots/" in p]
    assert snap == [f"/c/models--acme--tiny/snapshots/{'c' * 40}/{path}"]
    assert [place for place, _ in got] == [peer, HF_CACHE, HF_CACHE, HF_CACHE, OLLAMA]


def test_where_names_the_first_place_holding_the_locked_size(tmp_path):
    m = model("w.bin", SHA)
    blob = tmp_path / "hf" / "models--acme--tiny" / "blobs" / SHA
    ollama = tmp_path / "ollama" / "blobs" / f"sha256-{SHA}"
    for p in (blob, ollama):
        p.parent.mkdir(parents=True)
    where = Elsewhere(hf_cache=tmp_path / "hf", ollama_dirs=(tmp_path / "ollama",))
    assert where.where(m, m.files[0]) == ""
    ollama.write_bytes(b"abc")
    assert where.where(m, m.files[0]) == OLLAMA
    blob.write_bytes(b"abcd")  # another size: not a candidate for plan
    assert where.where(m, m.files[0]) == OLLAMA
    blob.write_bytes(b"xyz")
    assert where.where(m, m.files[0]) == HF_CACHE


@pytest.mark.parametrize("hf", [False, True])
def test_no_hf_link_means_no_hf_cache_lookup(hf):
    m = model("w.bin", SHA)
    if not hf:
        m = LockedModel(**{**m.__dict__, "hf": None})
    got = [place for place, _ in Elsewhere(hf_cache=Path("/c")).candidates(m, m.files[0])]
    assert got == ([HF_CACHE] * 2 if hf else [])
