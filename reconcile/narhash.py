"""Nix's NAR hash (`nix hash path`), without Nix: serialise the tree as a NAR, hash it.

A NAR string is its u64 little-endian length, the bytes, then zero padding to 8.
Files stream in 4 MiB reads through one reusable buffer, so memory stays constant
and hashing runs at the OpenSSL limit.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

NIX32 = "0123456789abcdfghijklmnpqrsvwxyz"
_BUF = 4 << 20


def _str(b: bytes) -> bytes:
    return struct.pack("<Q", len(b)) + b + b"\0" * (-len(b) % 8)


def nar_dump(path: str | os.PathLike[str]) -> Iterator[bytes | memoryview]:
    """The NAR serialisation of ``path``, as chunks (file bodies streamed)."""
    yield _str(b"nix-archive-1")
    yield from _node(os.fsencode(path))


def _node(p: bytes) -> Iterator[bytes | memoryview]:
    st = os.lstat(p)
    if stat.S_ISLNK(st.st_mode):
        yield _str(b"(") + _str(b"type") + _str(b"symlink") + _str(b"target") + _str(
            os.readlink(p)) + _str(b")")
    elif stat.S_ISREG(st.st_mode):
        head = _str(b"(") + _str(b"type") + _str(b"regular")
        if st.st_mode & 0o100:
            head += _str(b"executable") + _str(b"")
        yield head + _str(b"contents") + struct.pack("<Q", st.st_size)
        buf = bytearray(_BUF)
        view = memoryview(buf)
        total = 0
        with open(p, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
                yield view[:n]
        if total != st.st_size:
            raise OSError(f"{os.fsdecode(p)} changed size while hashing")
        yield b"\0" * (-st.st_size % 8) + _str(b")")
    elif stat.S_ISDIR(st.st_mode):
        yield _str(b"(") + _str(b"type") + _str(b"directory")
        for name in sorted(os.listdir(p)):
            yield _str(b"entry") + _str(b"(") + _str(b"name") + _str(name) + _str(b"node")
            yield from _node(os.path.join(p, name))
            yield _str(b")")
        yield _str(b")")
    else:
        raise ValueError(f"{os.fsdecode(p)}: NAR cannot hold special files")


def nar_hash(path: str | os.PathLike[str], algo: str = "sha256") -> bytes:
    h = hashlib.new(algo)
    for chunk in nar_dump(path):
        h.update(chunk)
    return h.digest()


def hash_file(path: str | os.PathLike[str], algo: str = "sha256") -> bytes:
    """Flat hash of one file (what `nix-hash --flat` prints)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, algo).digest()


def nix_base32(digest: bytes) -> str:
    """Nix's base32: its own alphabet, least significant bits first."""
    n = (len(digest) * 8 - 1) // 5 + 1
    out = []
    for i in range(n - 1, -1, -1):
        b = i * 5
        j, k = divmod(b, 8)
        c = digest[j] >> k
        if j + 1 < len(digest):
            c |= digest[j + 1] << (8 - k)
        out.append(NIX32[c & 0x1F])
    return "".join(out)


def format_hash(digest: bytes, algo: str = "sha256", fmt: str = "sri") -> str:
    if fmt == "sri":
        return f"{algo}-{base64.b64encode(digest).decode()}"
    if fmt == "base32":
        return nix_base32(digest)
    if fmt == "base16":
        return digest.hex()
    raise ValueError(f"unknown hash format {fmt!r}")


def parse_sri(value: str) -> tuple[str, bytes]:
    algo, sep, b64 = value.partition("-")
    sizes = {"sha256": 32, "sha512": 64}
    if not sep or algo not in sizes:
        raise ValueError(f"{value!r}: expected 'sha256-<base64>' or 'sha512-<base64>'")
    try:
        digest = base64.b64decode(b64, validate=True)
    except ValueError:
        raise ValueError(f"{value!r}: not valid base64") from None
    if len(digest) != sizes[algo]:
        raise ValueError(f"{value!r}: a {algo} digest is {sizes[algo]} bytes, got {len(digest)}")
    return algo, digest


def path_exists(p: Path) -> bool:
    return os.path.lexists(p)
