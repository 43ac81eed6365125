"""Read an ollama models directory the way ollama does, for tests of what reconcile
writes there. Independent of reconcile's own code (it is the oracle): each step cites
the ollama function it follows, read at v0.33.0-rc2 (commit fb30760).

Stricter than ollama in one place: ollama hashes a blob only when it pulls it; here
every blob's size *and* sha256 are checked, since a test wants to know the bytes are
the ones the manifest promises. The GGUF's chat template is read with llama.cpp's own
reader (the ``gguf`` package), as ``GetModel`` reads it with ollama's ``fs/gguf``.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# types/model/name.go: DefaultName
DEFAULTS = {"host": "registry.ollama.ai", "namespace": "library", "tag": "latest"}
# manifest/paths.go: BlobsPath accepts only these digests
DIGEST = re.compile(r"^sha256[:-][0-9a-fA-F]{64}$")
PREFIX = "application/vnd.ollama.image."


class OllamaWouldFail(AssertionError):
    """Something ``ollama run`` or ``ollama list`` would trip over."""


def parse_name(name: str) -> tuple[str, str, str, str]:
    """types/model/name.go: ParseNameBare, then Merge with DefaultName (no digests)."""
    host = namespace = tag = None
    s = name
    if s.rfind(":") > s.rfind("/"):  # "/" is illegal in a tag, so a host port stays
        s, _, tag = s.rpartition(":")
    rest, slash, model = s.rpartition("/")
    if slash:
        host, slash, namespace = rest.rpartition("/")
        if slash:
            host = host.split("://", 1)[-1]  # a scheme is not part of the path
        else:
            host, namespace = None, rest
    return (host or DEFAULTS["host"], namespace or DEFAULTS["namespace"], model,
            tag or DEFAULTS["tag"])


@dataclass
class OllamaModel:
    """What server/images.go: GetModel builds, plus the manifest it came from."""

    name: str  # host/namespace/model/tag, the manifest's path under manifests/
    digest: str  # sha256 hex of the manifest file: ollama's model digest
    manifest: dict[str, Any]
    config: dict[str, Any]
    model_path: Path | None = None
    template: str | None = None
    system: str | None = None
    options: dict[str, Any] | None = None
    messages: list[Any] | None = None
    licenses: list[str] = field(default_factory=list)
    projectors: list[Path] = field(default_factory=list)
    adapters: list[Path] = field(default_factory=list)
    chat_template: str | None = None  # the GGUF's tokenizer.chat_template


def blob_path(models: Path, descriptor: dict[str, Any]) -> Path:
    """manifest/paths.go: BlobsPath, with the size and sha256 checked besides."""
    digest = descriptor.get("digest", "")
    if not DIGEST.match(digest):
        raise OllamaWouldFail(f"invalid digest format: {digest!r}")
    path = models / "blobs" / digest.replace(":", "-")
    if not path.is_file():
        raise OllamaWouldFail(f"{path} is missing: `ollama run` fails to open it")
    data = path.read_bytes()
    if len(data) != descriptor.get("size") or hashlib.sha256(data).hexdigest() != digest[7:]:
        raise OllamaWouldFail(f"{path} does not hold the bytes its manifest names")
    return path


def read_manifest(models: Path, name: str) -> tuple[str, bytes, dict[str, Any]]:
    """manifest/manifest.go: ParseNamedManifest (path from Name.Filepath, digest = the
    sha256 of the file as read)."""
    parts = parse_name(name)
    path = models / "manifests" / Path(*parts)
    if not path.is_file():
        raise OllamaWouldFail(f"model {name!r} not found ({path})")
    data = path.read_bytes()
    return "/".join(parts), data, json.loads(data)


def read_model(models: Path, name: str) -> OllamaModel:
    """server/images.go: GetModel — the config, then every layer by media type."""
    full, data, doc = read_manifest(models, name)
    if doc.get("schemaVersion") != 2:
        raise OllamaWouldFail(f"{full}: schemaVersion {doc.get('schemaVersion')!r}")
    config = {}
    if (doc.get("config") or {}).get("digest"):
        config = json.loads(blob_path(models, doc["config"]).read_bytes())
    m = OllamaModel(full, hashlib.sha256(data).hexdigest(), doc, config)
    for layer in doc.get("layers") or []:
        _layer(models, m, layer)
    return m


def _layer(models: Path, m: OllamaModel, layer: dict[str, Any]) -> None:
    path = blob_path(models, layer)
    kind = str(layer.get("mediaType", "")).removeprefix(PREFIX)
    if kind == "model":
        m.model_path = path
        if m.config.get("model_format", "gguf") in ("", "gguf"):  # Model.isGGUF
            m.chat_template = gguf_chat_template(path)
    elif kind in ("template", "prompt"):
        m.template = path.read_text()
    elif kind == "system":
        m.system = path.read_text()
    elif kind == "params":
        m.options = json.loads(path.read_bytes())
    elif kind == "messages":
        m.messages = json.loads(path.read_bytes())
    elif kind == "license":
        m.licenses.append(path.read_text())
    elif kind == "projector":
        m.projectors.append(path)
    elif kind == "adapter":
        m.adapters.append(path)


def gguf_chat_template(path: Path) -> str | None:
    """GetModel: gguf.Open(filename).KeyValue("tokenizer.chat_template")."""
    import gguf

    field_ = gguf.GGUFReader(path).get_field("tokenizer.chat_template")
    return None if field_ is None else str(field_.contents())


def list_models(models: Path) -> dict[str, str]:
    """manifest/manifest.go: Manifests — the glob manifests/*/*/*/*; name -> digest."""
    out = {}
    for path in sorted((models / "manifests").glob("*/*/*/*")):
        if path.is_file():
            name = path.relative_to(models / "manifests").as_posix()
            out[name] = read_model(models, _as_name(name)).digest
    return out


def _as_name(filepath: str) -> str:
    host, namespace, model, tag = filepath.split("/")
    return f"{host}/{namespace}/{model}:{tag}"
