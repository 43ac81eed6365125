"""reconcile.narhash equals Nix itself: `nix hash path`, `nix-hash`, `nix-store --dump`.

The oracle tests generate random trees (nested and empty directories, empty and
executable files, every permission pattern Nix distinguishes, relative, absolute
and dangling symlinks, Unicode, non-UTF-8 and odd names) and compare with the
real Nix binaries; they are skipped when Nix is not installed (CI installs
Debian's nix-bin). The format/parse tests need no Nix: their vectors were
printed by nix 2.8 and are pinned here.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.errors import ReconcileError
from reconcile.narhash import (
    format_hash,
    hash_file,
    nar_dump,
    nar_hash,
    nix_base32,
    parse_sri,
)

NIX = shutil.which("nix")
NIX_HASH = shutil.which("nix-hash")
NIX_STORE = shutil.which("nix-store")
needs_nix = pytest.mark.skipif(
    not (NIX and NIX_HASH and NIX_STORE),
    reason="the Nix CLI (nix, nix-hash, nix-store) is not on PATH; CI installs nix-bin",
)
ORACLE = settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def nix_hash_path(p: Path | bytes, algo: str = "sha256") -> str:
    """`nix hash path` (SRI) of p."""
    assert NIX is not None
    out = subprocess.run(
        [NIX, "--extra-experimental-features", "nix-command", "hash", "path", "--type", algo, p],
        capture_output=True,
        check=True,
    )
    return out.stdout.decode().strip()


def nix_hash_b32(p: Path | bytes, algo: str = "sha256", *flags: str) -> str:
    """`nix-hash --type algo --base32 [flags] p`."""
    assert NIX_HASH is not None
    out = subprocess.run(
        [NIX_HASH, "--type", algo, "--base32", *flags, p], capture_output=True, check=True
    )
    return out.stdout.decode().strip()


def nix_dump(p: Path | bytes) -> bytes:
    assert NIX_STORE is not None
    return subprocess.run([NIX_STORE, "--dump", p], capture_output=True, check=True).stdout


# --- random trees -----------------------------------------------------------------

# names as bytes: anything but '/' and NUL, so non-UTF-8 names are generated too
_odd_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="/\0"),
    min_size=1,
    max_size=12,
).map(os.fsencode)
_raw_bytes = st.binary(min_size=1, max_size=12).filter(lambda b: b"/" not in b and b"\0" not in b)
_fixed = st.sampled_from(
    [b"a", b"A", b"B", b"a.txt", b"-rf", b" sp ace", b"new\nline", b"\xff\xfe", b"caf\xc3\xa9"]
)
names = st.one_of(_fixed, _odd_text, _raw_bytes).filter(lambda b: b not in (b".", b".."))
# the permission patterns that matter: Nix looks at the owner's x bit only
modes = st.sampled_from([0o644, 0o755, 0o600, 0o700, 0o654, 0o645, 0o744, 0o100, 0o444])
link_targets = st.one_of(
    names,  # a sibling that may or may not exist (dangling)
    st.sampled_from([b"../x", b"/nonexistent/abs", b".", b"..", b"sub/./deep/", b"\xe2\x9c\x93"]),
)
files = st.tuples(
    st.just("f"),
    st.one_of(st.binary(max_size=64), st.binary(min_size=500, max_size=3000)),
    modes,
)
links = st.tuples(st.just("l"), link_targets, st.just(0))
nodes = st.recursive(
    st.one_of(files, links),
    lambda children: st.tuples(
        st.just("d"), st.dictionaries(names, children, max_size=5), st.just(0)
    ),
    max_leaves=25,
)
trees = st.tuples(st.just("d"), st.dictionaries(names, nodes, max_size=6), st.just(0))


def build(p: bytes, node: tuple) -> None:
    """Create ``node`` at path ``p`` (bytes, so any name works)."""
    kind, data, mode = node
    if kind == "f":
        with open(p, "wb") as f:
            f.write(data)
        os.chmod(p, mode)
    elif kind == "l":
        os.symlink(data, p)
    else:
        os.mkdir(p)
        for name, child in data.items():
            build(os.path.join(p, name), child)


@needs_nix
@ORACLE
@given(tree=trees, algo=st.sampled_from(["sha256", "sha512"]))
def test_tree_hash_equals_nix_hash_path(tree: tuple, algo: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = os.path.join(os.fsencode(tmp), b"root")
        build(root, tree)
        assert format_hash(nar_hash(root, algo), algo, "sri") == nix_hash_path(root, algo)
        assert format_hash(nar_hash(root, algo), algo, "base32") == nix_hash_b32(root, algo)
        assert b"".join(nar_dump(root)) == nix_dump(root)


@needs_nix
@ORACLE
@given(node=st.one_of(files, links), algo=st.sampled_from(["sha256", "sha512"]))
def test_single_file_or_symlink_equals_nix(node: tuple, algo: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(os.fsencode(tmp), b"top")
        build(p, node)
        digest = nar_hash(p, algo)
        assert format_hash(digest, algo, "sri") == nix_hash_path(p, algo)
        assert format_hash(digest, algo, "base32") == nix_hash_b32(p, algo)
        if node[0] == "f":
            flat = hash_file(p, algo)
            assert flat == hashlib.new(algo, node[1]).digest()
            assert format_hash(flat, algo, "base32") == nix_hash_b32(p, algo, "--flat")


@needs_nix
def test_large_files_cross_every_buffer_boundary(tmp_path: Path) -> None:
    """Bodies bigger than the read buffer and the coalescing threshold, odd sizes."""
    root = tmp_path / "big"
    root.mkdir()
    rnd = os.urandom(1 << 20)
    for i, size in enumerate([(2 << 20) - 1, 2 << 20, (5 << 20) + 3, (256 << 10) + 1]):
        (root / f"f{i}").write_bytes((rnd * 6)[:size])
    for i in range(300):  # many small files: the coalesced header buffer is flushed
        (root / f"s{i:03}").write_bytes(rnd[: i * 37])
    assert format_hash(nar_hash(root)) == nix_hash_path(root)
    assert format_hash(hash_file(root / "f2"), "sha256", "base32") == nix_hash_b32(
        root / "f2", "sha256", "--flat"
    )


@needs_nix
def test_deep_tree_needs_no_recursion(tmp_path: Path) -> None:
    # Python's default limit: some imports (keras) raise it, and a tree deeper than
    # the raised limit would outgrow PATH_MAX
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    depth = 1000 + 200
    deep = tmp_path / "deep"
    dirs = [str(deep)]
    for _ in range(depth):  # os.makedirs itself recurses
        dirs.append(dirs[-1] + "/d")
    try:
        for d in dirs:
            os.mkdir(d)
        assert format_hash(nar_hash(deep)) == nix_hash_path(deep)
    finally:  # shutil.rmtree (and so pytest's tmp_path cleanup) recurses too
        sys.setrecursionlimit(limit)
        for d in reversed(dirs):
            if os.path.isdir(d):
                os.rmdir(d)


@needs_nix
def test_cli_prints_what_nix_prints(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a").write_bytes(b"abc")
    p = str(tmp_path / "t")

    def run(*a: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "reconcile", "hash", "--nar", *a, p],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()

    assert run() == nix_hash_path(tmp_path / "t")
    assert run("--base32") == nix_hash_b32(tmp_path / "t")


# --- no Nix needed --------------------------------------------------------------------


def test_known_nar_vectors(tmp_path: Path) -> None:
    """Printed by nix 2.8 (`nix hash path`, `nix-hash --base32`) for a file 'hello\\n'."""
    p = tmp_path / "hello"
    p.write_bytes(b"hello\n")
    p.chmod(0o644)
    assert format_hash(nar_hash(p)) == "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
    assert (
        format_hash(nar_hash(p), "sha256", "base32")
        == "04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw"
    )
    # group/other x bits do not count (Nix tests S_IXUSR only); the owner's does
    p.chmod(0o655)
    assert format_hash(nar_hash(p)) == "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="
    p.chmod(0o755)
    assert format_hash(nar_hash(p)) != "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="


def test_nar_dump_layout(tmp_path: Path) -> None:
    """The exact bytes of a tiny NAR, written out by hand from the format."""

    def s(b: bytes) -> bytes:
        return len(b).to_bytes(8, "little") + b + b"\0" * (-len(b) % 8)

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_bytes(b"hi")
    (tmp_path / "d" / "x").chmod(0o755)
    os.symlink("x", tmp_path / "d" / "l")
    tokens = (
        b"nix-archive-1 ( type directory"
        b" entry ( name l node ( type symlink target x ) )"
        b" entry ( name x node ( type regular executable <empty> contents hi ) )"
        b" )"
    ).split()
    want = b"".join(s(b"" if t == b"<empty>" else t) for t in tokens)
    assert b"".join(nar_dump(tmp_path / "d")) == want
    assert nar_hash(tmp_path / "d") == hashlib.sha256(want).digest()


def test_nix_base32_known_vectors() -> None:
    # `nix-hash --type sha256 --flat --base32 /dev/null` (sha256 of b"")
    assert (
        nix_base32(hashlib.sha256(b"").digest())
        == "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"
    )
    # `nix-hash --type sha256 --to-base32 000102…1f`
    assert nix_base32(bytes(range(32))) == "07qy3lf1n6hr30bic58l2c91240g1q6hq2qa1440f1h50h1h4080"
    # `nix-hash --type sha512 --to-base32 000102…3f`
    assert nix_base32(bytes(range(64))) == (
        "0zkwg9w7cx3jf1p6qsk8crj64q2ybid5hmjla984wk2a91348hj"
        "07qy3lf1n6hr30bic58l2c91240g1q6hq2qa1440f1h50h1h4080"
    )
    assert len(nix_base32(bytes(20))) == 32 and len(nix_base32(bytes(16))) == 26


@needs_nix
@settings(max_examples=15, deadline=None)
@given(digest=st.binary(min_size=32, max_size=32))
def test_nix_base32_equals_nix_to_base32(digest: bytes) -> None:
    assert NIX_HASH is not None
    out = subprocess.run(
        [NIX_HASH, "--type", "sha256", "--to-base32", digest.hex()],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert nix_base32(digest) == out


@given(
    algo_digest=st.sampled_from([("sha256", 32), ("sha512", 64)]).flatmap(
        lambda a: st.tuples(st.just(a[0]), st.binary(min_size=a[1], max_size=a[1]))
    )
)
def test_sri_round_trip(algo_digest: tuple[str, bytes]) -> None:
    algo, digest = algo_digest
    sri = format_hash(digest, algo, "sri")
    assert sri.startswith(f"{algo}-")
    assert parse_sri(sri) == (algo, digest)
    assert format_hash(digest, algo, "base16") == digest.hex()


def test_format_hash_matches_hashlib() -> None:
    d = hashlib.sha256(b"abc").digest()
    assert format_hash(d) == "sha256-" + base64.b64encode(d).decode()
    assert format_hash(d, "sha256", "base16") == hashlib.sha256(b"abc").hexdigest()
    with pytest.raises(ValueError, match="format"):
        format_hash(d, "sha256", "hex")
    with pytest.raises(ValueError, match="32 bytes"):
        format_hash(d[:31], "sha256", "sri")
    with pytest.raises(ValueError, match="unsupported hash type"):
        format_hash(d, "blake3", "sri")


_GOOD = format_hash(bytes(32))


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("", "not an SRI hash"),
        ("sha256", "not an SRI hash"),
        ("md5-" + base64.b64encode(bytes(16)).decode(), "not an SRI hash"),
        ("SHA256-" + _GOOD[7:], "not an SRI hash"),
        ("sha256:" + _GOOD[7:], "not an SRI hash"),
        ("sha256-!!!!", "not valid base64"),
        ("sha256-" + _GOOD[7:-1], "not valid base64"),  # padding missing
        ("sha256-é" + _GOOD[8:], "not valid base64"),
        (" " + _GOOD, "not an SRI hash"),
        (_GOOD + " ", "not valid base64"),
        ("sha256-AAAA", "32 bytes"),
        ("sha512-" + _GOOD[7:], "64 bytes"),
        ("sha256-" + _GOOD[7:-2] + "B=", "canonical"),  # unused bits set
    ],
)
def test_parse_sri_refuses_malformed(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_sri(bad)


def test_special_files_and_unknown_algorithms_are_refused(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(ReconcileError, match="FIFO"):
        nar_hash(tmp_path)
    with pytest.raises(ValueError, match="unsupported hash type"):
        nar_hash(tmp_path, "sha3_256")
    with pytest.raises(FileNotFoundError):
        nar_hash(tmp_path / "missing")


def test_parallel_hashing_and_interleaved_dumps_do_not_share_buffers(tmp_path: Path) -> None:
    """Buffers are per thread (nar_hash) and per generator (nar_dump)."""
    paths = []
    for i in range(8):
        p = tmp_path / f"f{i}"
        p.write_bytes(os.urandom((3 << 20) + i))
        paths.append(p)
    want = [nar_hash(p) for p in paths]
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(nar_hash, paths)) == want
        assert list(pool.map(hash_file, paths)) == [
            hashlib.sha256(p.read_bytes()).digest() for p in paths
        ]
    a, b = nar_dump(paths[0]), nar_dump(paths[1])
    ha, hb = hashlib.sha256(), hashlib.sha256()
    for ca, cb in zip(a, b, strict=False):
        ha.update(ca)
        hb.update(cb)
        nar_hash(paths[2])  # uses this thread's buffer in between
    for ca in a:
        ha.update(ca)
    for cb in b:
        hb.update(cb)
    assert (ha.digest(), hb.digest()) == (want[0], want[1])
