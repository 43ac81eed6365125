"""What a file is, from its first bytes: the detectors the scanner and the header checks share.

Nothing here imports a validator, so ``formats`` (header checks) and ``pickle_scan``
(the scanner) both use it without importing each other.
"""

from __future__ import annotations

import struct
from typing import IO

NPY_MAGIC = b"\x93NUMPY"


def compressed_kind(head: bytes) -> str | None:
    """The whole-file compressions joblib writes, by magic bytes."""
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh") and head[3:4].isdigit():
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x5d\x00\x00"):
        return "lzma"  # lzma "alone" format, joblib's compress=('lzma', n)
    if head.startswith(b"\x04\x22\x4d\x18"):
        return "lz4"
    if len(head) >= 2 and head[0] == 0x78 and (head[0] << 8 | head[1]) % 31 == 0:
        return "zlib"
    return None


def zip_like(f: IO[bytes], size: int, head: bytes) -> bool:
    """A zip as Python's zipfile finds it: from the end-of-central-directory record.

    ``PK`` at offset 0 is not required (data may be prepended: zipfile fixes offsets up,
    and modelscan skipping such files was a bypass), but the record must point back at a
    central directory, so random bytes that happen to contain ``PK\\x05\\x06`` in the
    last 64 KiB are not taken for a zip.
    """
    if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
        return True
    if size < 22:
        return False
    tail_len = min(size, 65536 + 22)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    i = tail.rfind(b"PK\x05\x06")
    while i >= 0:
        rec = tail[i : i + 22]
        if len(rec) == 22:
            _sig, _d, _cd, _n, total, cd_size, _off, _clen = struct.unpack("<4sHHHHIIH", rec)
            p = size - tail_len + i
            if total == 0 and cd_size == 0:
                return True
            if cd_size <= p:
                f.seek(p - cd_size)
                if f.read(4) == b"PK\x01\x02":
                    return True
            if p >= 20:
                f.seek(p - 20)
                if f.read(4) == b"PK\x06\x07":  # zip64 locator
                    return True
        i = tail.rfind(b"PK\x05\x06", 0, i)
    return False


def safetensors_head(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:].lstrip(b" ")[:1] == b"{"
