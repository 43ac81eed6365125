"""LFS pointers and endpoints as git-lfs reads them: property tests, and the official
`git lfs pointer --check` as the oracle for the edge cases."""

from __future__ import annotations

import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconcile.sources.git_lfs import MalformedPointer, Pointer, lfs_endpoint, parse_pointer

HEX = "0123456789abcdef"
OID = "4d7a214614ab2935c943f9e0ff69d22eadbb8f32b1258daaa5e2ca24d17e2393"


def canonical(oid: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {size}\n".encode()


@given(st.text(HEX, min_size=64, max_size=64), st.integers(0, 10**15),
       st.sampled_from(["\n", "\r\n"]), st.booleans())
def test_canonical_pointers_parse_with_any_line_ending(oid, size, eol, final):
    data = canonical(oid, size).decode().replace("\n", eol)
    if not final:
        data = data[: -len(eol)]
    assert parse_pointer(data.encode()) == Pointer(oid, size)


@given(st.binary(max_size=1100))
def test_any_bytes_are_a_pointer_a_plain_file_or_refused_by_name(data):
    try:
        got = parse_pointer(data)
    except MalformedPointer as e:
        assert str(e)
        return
    assert got is None or (len(got.oid) == 64 and got.size >= 0)


@given(st.binary(min_size=1, max_size=200))
def test_bytes_after_a_pointer_shape_never_crash(tail):
    head = b"version https://git-lfs.github.com/spec/v1\n"
    try:
        parse_pointer(head + tail)
    except MalformedPointer:
        pass


CASES = {
    "canonical": canonical(OID, 12),
    "crlf": canonical(OID, 12).replace(b"\n", b"\r\n"),
    "no final newline": canonical(OID, 12)[:-1],
    "ext line": (b"version https://git-lfs.github.com/spec/v1\next-0-foo sha256:" + OID.encode()
                 + b"\noid sha256:" + OID.encode() + b"\nsize 12\n"),
    "legacy version": canonical(OID, 12).replace(b"git-lfs.github.com", b"hawser.github.com"),
    "size before oid": (b"version https://git-lfs.github.com/spec/v1\nsize 12\noid sha256:"
                        + OID.encode() + b"\n"),
    "uppercase hex": canonical(OID.upper(), 12),
    "unknown key": canonical(OID, 12) + b"zzz 1\n",
    "short oid": canonical(OID[:60], 12),
    "too big": (b"version https://git-lfs.github.com/spec/v1\n"
                + b"".join(b"ext-%d-%s sha256:%s\n" % (i, b"n" * 20, OID.encode())
                           for i in range(10))
                + b"oid sha256:" + OID.encode() + b"\nsize 12\n"),
    "a text file": b"version 2 of the notes\n",
    "1030 bytes": canonical(OID, 12) + b"x" * (1030 - len(canonical(OID, 12))),
}


@pytest.mark.skipif(shutil.which("git-lfs") is None, reason="needs git-lfs (apt-get install"
                    " git-lfs)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_pointer_or_not_as_git_lfs_itself_decides(name):
    data = CASES[name]
    official = subprocess.run(["git", "lfs", "pointer", "--check", "--stdin"], input=data,
                              capture_output=True).returncode
    try:
        ours = parse_pointer(data) is not None
    except MalformedPointer:
        ours = False
    assert ours == (official == 0), (name, official)


@pytest.mark.parametrize(("url", "endpoint"), [
    ("https://h/org/repo", "https://h/org/repo.git/info/lfs"),
    ("https://h/org/repo.git", "https://h/org/repo.git/info/lfs"),
    ("https://h/org/repo/", "https://h/org/repo.git/info/lfs"),
    ("http://h:8080/a/b/c", "http://h:8080/a/b/c.git/info/lfs"),
])
def test_the_endpoint_is_derived_as_git_lfs_derives_it(url, endpoint):
    assert lfs_endpoint(url) == endpoint


@settings(max_examples=50)
@given(st.lists(st.text("abcdefghijklmnopqrstuvwxyz0123456789-_", min_size=1, max_size=12),
                min_size=1, max_size=4), st.booleans(), st.booleans())
def test_endpoint_has_one_git_suffix_and_ends_in_info_lfs(parts, dotgit, slash):
    url = "https://h/" + "/".join(parts) + (".git" if dotgit else "") + ("/" if slash else "")
    got = lfs_endpoint(url)
    assert got.endswith(".git/info/lfs") and ".git.git" not in got and "//info" not in got
