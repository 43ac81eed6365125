"""The bytes the pickle VM reads: an absolute offset, small look-ahead, skipping unread.

Apart from the VM because it knows nothing of pickles: it is how a file of any size,
a zip member or a decompressing stream is read in constant memory.
"""

from __future__ import annotations

import os
from typing import Any

from .values import _Malformed


class _Reader:
    """Bytes with an absolute offset, small look-ahead, and skipping without reading.

    Reads go through an internal buffer of at most ~64 KiB plus the largest single
    argument we keep (1 MiB), so memory stays constant whatever the file size.
    """

    CHUNK = 1 << 16

    def __init__(self, f: Any, base: int = 0, end: int | None = None) -> None:
        self.f = f
        self.buf = b""
        self.i = 0
        self.base = base  # offset of buf[0]
        self.end = end  # absolute offset of EOF when the source is seekable, for skip()

    def tell(self) -> int:
        return self.base + self.i

    def _raw(self, n: int) -> bytes:
        try:
            return self.f.read(n)
        except _Malformed:
            raise
        except Exception as e:  # zlib/bz2/lzma errors, caps, OSError: the stream ends here
            raise _Malformed(f"reading failed ({type(e).__name__}: {e})") from e

    def _fill(self, n: int) -> bool:
        if len(self.buf) - self.i >= n:
            return True
        parts = [self.buf[self.i :]]
        self.base += self.i
        self.i = 0
        have = len(parts[0])
        while have < n:
            chunk = self._raw(max(n - have, self.CHUNK))
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        self.buf = b"".join(parts)
        return have >= n

    def at_eof(self) -> bool:
        return not self._fill(1)

    def byte(self) -> int:
        if self.i >= len(self.buf) and not self._fill(1):
            return -1
        b = self.buf[self.i]
        self.i += 1
        return b

    def take(self, n: int) -> bytes:
        if not self._fill(n):
            raise _Malformed("pickle data was truncated")
        out = self.buf[self.i : self.i + n]
        self.i += n
        return out

    def skip(self, n: int) -> None:
        avail = len(self.buf) - self.i
        if n <= avail:
            self.i += n
            return
        n -= avail
        self.base += len(self.buf)
        self.buf, self.i = b"", 0
        if self.end is not None:  # seekable: jump
            if self.base + n > self.end:
                self.base = self.end
                raise _Malformed("data was truncated")
            self.f.seek(n, os.SEEK_CUR)
            self.base += n
            return
        while n:
            got = len(self._raw(min(n, 1 << 20)))
            if not got:
                raise _Malformed("data was truncated")
            self.base += got
            n -= got

    def line(self, cap: int = 1 << 16) -> bytes | None:
        """Up to the newline (excluded); None if longer than cap (then skipped)."""
        j = self.buf.find(b"\n", self.i)
        if j >= 0:
            out = self.buf[self.i : j]
            self.i = j + 1
            return out
        kept: list[bytes] | None = [self.buf[self.i :]]
        size = len(self.buf) - self.i
        self.base += len(self.buf)
        self.buf, self.i = b"", 0
        while True:
            chunk = self._raw(self.CHUNK)
            if not chunk:
                raise _Malformed("pickle data was truncated (no newline)")
            j = chunk.find(b"\n")
            part = chunk if j < 0 else chunk[:j]
            size += len(part)
            if kept is not None:
                kept.append(part)
                if size > cap:
                    kept = None
            if j >= 0:
                self.buf, self.i = chunk, j + 1
                return None if kept is None else b"".join(kept)
            self.base += len(chunk)
