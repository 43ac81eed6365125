"""``sniff``: the one word a validator needs about a file, decided from its bytes.

Names lie (a pickle called ``model.safetensors`` is still a pickle, and transformers
picks its loader by file name), so every validator asks ``sniff`` first. It sits above
both the header detectors (``magic``) and the scanner (``pickle_scan``), which do not
import each other.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from .magic import NPY_MAGIC, compressed_kind, safetensors_head, zip_like


def sniff(path: Path) -> str:
    """pickle | zip | numpy | safetensors | gguf | tar | compressed | other.

    A pickle wins over the header-based kinds: a file that an unpickler starting at byte
    0 would run (import or call something, or that parses as pickles to its end) is a
    pickle whatever else it also is, because ``torch.load`` reads every file that does
    not start with a zip local header as a pickle. (The full scanner looks at every
    kind a file can be at once; this answer is for validators that need one word.)
    """
    from .pickle_scan import looks_like_pickle

    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(512)
            if head.startswith(NPY_MAGIC):
                return "numpy"
            if head.startswith(b"PK") and zip_like(f, size, head):
                return "zip"
            if not head.startswith(b"PK") and looks_like_pickle(Path(path)):
                return "pickle"
            if head.startswith(b"GGUF"):
                return "gguf"
            if safetensors_head(head, size):
                return "safetensors"
            if zip_like(f, size, head):
                return "zip"
    except (OSError, ValueError, struct.error):
        return "other"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if compressed_kind(head) is not None:
        return "compressed"
    return "other"
