"""`reconcile hash --nar` equals `nix hash path` / `nix-hash` on generated trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import string
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile.narhash import format_hash, nar_hash, nix_base32, parse_sri

NIX = shutil.which("nix")
needs_nix = pytest.mark.skipif(NIX is None, reason="needs nix-bin (CI installs it)")


def nix_hash_path(p: Path, algo: str = "sha256") -> str:
    return subprocess.run([NIX, "--extra-experimental-features", "nix-command", "hash", "path",
                           "--type", algo, str(p)], capture_output=True, text=True,
                          check=True).stdout.strip()


names = st.text(alphabet=string.ascii_letters + string.digits + "._- éü✓", min_size=1,
                max_size=10).filter(lambda s: s not in (".", ".."))
node = st.deferred(lambda: st.one_of(
    st.tuples(st.just("f"), st.binary(max_size=300), st.booleans()),
    st.tuples(st.just("l"), names, st.just(False)),
    st.tuples(st.just("d"), st.dictionaries(names, node, max_size=4), st.just(False)),
))


def write(p: Path, n) -> None:
    kind, data, x = n
    if kind == "f":
        p.write_bytes(data)
        os.chmod(p, 0o755 if x else 0o644)
    elif kind == "l":
        os.symlink(data, p)
    else:
        p.mkdir()
        for name, child in data.items():
            write(p / name, child)


@needs_nix
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.dictionaries(names, node, max_size=5), st.sampled_from(["sha256", "sha512"]))
def test_nar_hash_equals_nix_hash_path(tmp_path_factory, tree, algo):
    root = tmp_path_factory.mktemp("nar") / "root"
    write(root, ("d", tree, False))
    assert format_hash(nar_hash(root, algo), algo, "sri") == nix_hash_path(root, algo)


@needs_nix
@given(st.binary(max_size=2000), st.booleans())
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_single_file_and_base32_match_nix_hash(tmp_path_factory, data, executable):
    p = tmp_path_factory.mktemp("f") / "file"
    p.write_bytes(data)
    os.chmod(p, 0o755 if executable else 0o644)
    assert format_hash(nar_hash(p), "sha256", "sri") == nix_hash_path(p)
    b32 = subprocess.run(["nix-hash", "--type", "sha256", "--base32", str(p)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert format_hash(nar_hash(p), "sha256", "base32") == b32


@needs_nix
def test_cli_formats(tmp_path):
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "a").write_bytes(b"abc")
    p = str(tmp_path / "t")
    run = lambda *a: subprocess.run([sys.executable, "-m", "reconcile", "hash", "--nar", *a, p],
                                    capture_output=True, text=True).stdout.strip()
    assert run() == nix_hash_path(tmp_path / "t")
    nixh = lambda *a: subprocess.run(["nix-hash", *a, p], capture_output=True, text=True).stdout.strip()
    assert run("--base32") == nixh("--type", "sha256", "--base32")
    assert run("--base16") == nixh("--type", "sha256")
    assert run("--type", "sha512", "--base16") == nixh("--type", "sha512")


def test_nix_base32_known_vector():
    # sha256("") in nix base32, as printed by `nix-hash --type sha256 --flat --base32 /dev/null`
    import hashlib

    assert nix_base32(hashlib.sha256(b"").digest()) == \
        "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73"


@given(st.binary(min_size=32, max_size=32))
def test_sri_round_trip(digest):
    assert parse_sri(format_hash(digest)) == ("sha256", digest)


@pytest.mark.parametrize("bad", ["sha256", "md5-AAAA", "sha256-!!", "sha256-AAAA"])
def test_parse_sri_refuses_malformed(bad):
    with pytest.raises(ValueError):
        parse_sri(bad)
