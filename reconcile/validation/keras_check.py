"""Keras models: the config names what gets imported and called when the model loads.

A ``.keras`` file is a zip whose ``config.json`` describes every layer as
``{"module", "class_name", "config"}``; a legacy ``.h5`` model keeps the same JSON
in its ``model_config`` attribute. Loading resolves those names and calls them:
``Lambda`` layers carry marshalled Python bytecode (CVE-2024-3660), configs have
named arbitrary callables (CVE-2025-1550) or Keras' own helpers that switch safe
mode off or write files (CVE-2025-8747, CVE-2025-9906), and ``.h5`` ignores
``safe_mode`` altogether (CVE-2025-9905). Following security.md §3.6 this flags
Lambda layers, serialized functions, and any module outside Keras' own layer
namespaces. Weights-only ``.h5`` files (transformers' ``tf_model.h5``) carry no
config and pass.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
HDF5_SEARCH = 16 << 20  # Keras writes model_config before any weight
MAX_CONFIG = 64 << 20
KERAS_MODULES = ("keras", "keras_hub", "keras_nlp", "keras_cv")
# Keras' own helpers that a config has used as gadgets
GADGET_MODULES = ("keras.config", "keras.utils", "keras.saving", "keras.src.utils",
                  "keras.src.saving", "keras.src.export")
FUNCTION_CLASSES = ("__lambda__", "function")
_KERAS_OBJECT = re.compile(r'\{"(?:class_name|module)"\s*:')
MAX_OBJECTS = 10_000


def config_findings(doc: Any) -> list[str]:
    """What in a Keras model config would import or run code when the model loads."""
    out: list[str] = []
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        cls, module, config = node.get("class_name"), node.get("module"), node.get("config")
        name = config.get("name") if isinstance(config, dict) else None
        if cls == "Lambda":
            out.append(f"Lambda layer {name or '?'!r}: runs serialized Python code when loaded")
        elif cls in FUNCTION_CLASSES:
            out.append(f"serialized Python function ({cls}): called when loaded")
        if isinstance(module, str) and not _keras_module(module):
            out.append(f"{cls or '?'} from module {module!r}: imported and called when loaded")
        if "safe_mode" in node:
            out.append("the config sets safe_mode")
        stack.extend(node.values())
    return list(dict.fromkeys(out))


def _keras_module(module: str) -> bool:
    if any(module == g or module.startswith(g + ".") for g in GADGET_MODULES):
        return False
    return any(module == k or module.startswith(k + ".") for k in KERAS_MODULES)


def check_keras_zip(path: Path, rel: str) -> list[str]:
    try:
        with zipfile.ZipFile(path) as z:
            if not {"config.json", "metadata.json"} <= set(z.namelist()):
                return []  # a zip, but not a Keras model
            info = z.getinfo("config.json")
            if info.file_size > MAX_CONFIG:
                return [f"{rel}: Keras config.json of {info.file_size} bytes"]
            doc = json.loads(z.read(info))
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        return [f"{rel}: Keras archive whose config cannot be read ({e})"]
    return [f"{rel}: {f}" for f in config_findings(doc)]


def check_keras_h5(path: Path, rel: str) -> list[str]:
    """A legacy HDF5 Keras model: read its config JSON without an HDF5 library.

    Every JSON object in the file that starts like a Keras object is decoded where it
    lies, nested ones too: a decoy or a damaged outer config cannot hide a Lambda layer
    further in. If the file says it holds a model_config and none decodes, it is refused.
    """
    with open(path, "rb") as f:
        head = f.read(HDF5_SEARCH)
    if not head.startswith(HDF5_MAGIC) or b"model_config" not in head:
        return []  # not HDF5, or weights only
    text = head.decode("latin-1")  # one char per byte: offsets stay put
    decoder, out, decoded = json.JSONDecoder(), [], 0
    for m in _KERAS_OBJECT.finditer(text):
        try:
            doc, _ = decoder.raw_decode(text, m.start())
        except ValueError:
            continue
        decoded += 1
        out.extend(config_findings(doc))
        if decoded >= MAX_OBJECTS:
            break
    if not decoded:
        return [f"{rel}: legacy Keras HDF5 model whose config cannot be read; such files"
                " ignore safe_mode, so it is refused"]
    return [f"{rel}: {f}" for f in dict.fromkeys(out)]
