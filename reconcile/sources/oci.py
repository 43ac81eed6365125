"""`source.oci`: a model packaged as an OCI artifact, pinned to its manifest digest.

    ref      [http(s)://]registry/repository[:tag | @sha256:…] (https unless said)
    formats  CNCF ModelPack (file paths from ``org.cncf.model.filepath``; raw, tar,
             tar+gzip and tar+zstd layers; a raw layer's mode from its file metadata),
             KitOps ModelKits (a Kitfile config, raw and tar layers) and Docker model
             artifacts (``application/vnd.docker.ai.*``).
             Anything else is refused, naming the media types found.
    lock     the manifest (by the registry protocol of ``distribution``); a raw
             layer's digest is its file's sha256, so nothing is downloaded for it; a
             tar layer is downloaded once, unpacked with the project's safe
             extraction (no escaping paths or links, no devices), and each member
             becomes a file whose per-file pin names its layer
    apply    raw layers by digest through the shared engine; a member of a tar layer
             from that layer (fetched into the store, checked, unpacked once)
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..errors import SourceError
from ..paths import check_relpath
from .base import RemoteFile, Resolution, Unpacked
from .distribution import DIGEST, Manifest, Registry, RegistrySource, descriptor_file

REF = re.compile(r"^(?:(?P<scheme>https?)://)?(?P<host>[A-Za-z0-9.-]+(?::[0-9]{1,5})?)/"
                 r"(?P<repo>[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*)"
                 r"(?::(?P<tag>[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}))?"
                 r"(?:@(?P<digest>sha256:[0-9a-f]{64}))?$")
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MODELPACK_LAYER = re.compile(r"^application/vnd\.cncf\.model\.[a-z.]+\.v1\."
                             r"(?P<form>raw|tar|tar\+gzip|tar\+zstd)$")
KITOPS_CONFIG = "application/vnd.kitops.modelkit.config.v1+json"
# `kit pack` writes raw layers now (kitops pkg/lib/constants/mediatype/kitops.go), tar before
KITOPS_LAYER = re.compile(r"^application/vnd\.kitops\.modelkit\.[a-z]+\.v1\."
                          r"(?P<form>raw|tar|tar\+gzip|tar\+zstd)$")
DOCKER_AI = "application/vnd.docker.ai."
FILEPATH = "org.cncf.model.filepath"
FILE_METADATA = "org.cncf.model.file.metadata+json"
TITLE = "org.opencontainers.image.title"
# Docker model layers without a name: what they are called in the model tree
DOCKER_NAMES = {"gguf": "model.gguf", "gguf.v3": "model.gguf", "safetensors": "model.safetensors",
                "license": "LICENSE", "mmproj": "mmproj.gguf", "dduf": "model.dduf",
                "chat.template.jinja": "template.jinja"}
INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")


def parse_ref(ref: str) -> dict[str, str]:
    m = REF.match(ref.strip())
    if not m:
        raise ValueError(f"ref: {ref!r} is not registry/repository[:tag|@sha256:…] (repository"
                         " names are lowercase), e.g. \"ghcr.io/org/bert:v1\"")
    host = m.group("host")
    if "." not in host and ":" not in host and host != "localhost":
        raise ValueError(f"ref: {ref!r} names no registry host (e.g. ghcr.io/{host}/…)")
    return {"registry": f"{m.group('scheme') or 'https'}://{host}", "repository": m.group("repo"),
            "reference": m.group("digest") or m.group("tag") or "latest",
            "tag": m.group("tag") or ""}


class OciSource(RegistrySource):
    type = "oci"
    OPTIONS: dict[str, Any] = {"ref": "str"}

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        if not opts.get("ref"):
            raise ValueError('ref: required, e.g. ref = "ghcr.io/org/bert:v1"')
        parse_ref(opts["ref"])
        return {"ref": opts["ref"].strip()}

    @classmethod
    def check_pin(cls, pin: dict[str, Any], options: dict[str, Any]) -> None:
        super().check_pin(pin, options)
        if not DIGEST.match(str(pin.get("digest", ""))):
            raise ValueError(f"digest: {pin.get('digest')!r} is not sha256:<64 hex>")
        ref = parse_ref(options["ref"])
        if DIGEST.match(ref["reference"]) and pin["digest"] != ref["reference"]:
            raise ValueError(f"digest: {pin['digest']} is not the digest models.toml names")

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        self.ref = parse_ref(self.options["ref"])
        self.registry = Registry(self.ref["registry"], self.ref["repository"],
                                 decl.network, self.credentials)
        self._unpacked = Unpacked(context.store)

    @property
    def where(self) -> str:
        return self.options["ref"]

    # --- lock -------------------------------------------------------------------------

    def resolve(self) -> Resolution:
        manifest = self.registry.manifest(self.ref["reference"])
        manifest = self._single(manifest)
        doc = manifest.json()
        kind = artifact_kind(doc, self.where)
        files: list[RemoteFile] = []
        for layer in doc.get("layers") or []:
            if not isinstance(layer, dict):
                raise SourceError(f"{self.where}: a manifest layer is not an object")
            try:
                form = layer_form(kind, layer)
            except SourceError as e:
                raise SourceError(f"{self.where}: {e.message}") from None
            if form == "raw":
                f = descriptor_file(self._raw_path(kind, layer, files), layer, self.where)
                files.append(replace(f, executable=raw_executable(layer)))
            else:
                files.extend(self._members(layer))
        seen: set[str] = set()
        for f in files:
            if f.path in seen:
                raise SourceError(f"{self.where}: two layers give the file {f.path}")
            seen.add(f.path)
        if not files:
            raise SourceError(f"{self.where}: the artifact has no files")
        return Resolution(pin={"ref": self.options["ref"], "digest": manifest.digest,
                               "format": kind}, files=files)

    def resolve_pinned(self, pin: dict[str, Any], files: Any = ()) -> Resolution:
        saved = self.ref
        self.ref = {**saved, "reference": pin["digest"]}
        try:
            return self.resolve()
        finally:
            self.ref = saved

    def _single(self, manifest: Manifest) -> Manifest:
        """An index with one manifest is that manifest; several are a choice for the user."""
        doc = manifest.json()
        if doc.get("mediaType") not in INDEX_TYPES and manifest.media_type not in INDEX_TYPES:
            return manifest
        entries = [m for m in doc.get("manifests") or [] if isinstance(m, dict)]
        if len(entries) != 1 or not DIGEST.match(str(entries[0].get("digest", ""))):
            raise SourceError(f"{self.where}: an index of {len(entries)} manifests; give the"
                              " one you want as ref = \"…@sha256:…\"")
        return self.registry.manifest(entries[0]["digest"])

    def _raw_path(self, kind: str, layer: dict[str, Any], files: list[RemoteFile]) -> str:
        notes = layer.get("annotations") or {}
        name = notes.get(FILEPATH) or notes.get(TITLE)
        if not name and kind == "docker":
            media = str(layer.get("mediaType", ""))[len(DOCKER_AI):]
            name = DOCKER_NAMES.get(media)
            taken = {f.path for f in files}
            if name in taken:
                stem, dot, ext = name.partition(".")
                n = 2
                while f"{stem}-{n}{dot}{ext}" in taken:
                    n += 1
                name = f"{stem}-{n}{dot}{ext}"
        if not name:
            raise SourceError(f"{self.where}: layer {str(layer.get('digest'))[:19]}… has no"
                              f" file path ({FILEPATH} annotation)")
        try:
            return check_relpath(str(name))
        except ValueError as e:
            raise SourceError(f"{self.where}: layer file path refused: {e}") from None

    def _members(self, layer: dict[str, Any]) -> list[RemoteFile]:
        """The files a tar layer unpacks to, each pinned to that layer."""
        blob = descriptor_file("layer", layer, self.where)
        return self._unpacked.files(self._unpack(blob), {"layer": "sha256:" + blob.sha256,
                                                         "layerSize": blob.size})

    def _unpack(self, blob: RemoteFile) -> Path:
        """The layer in the store (fetched and checked once), unpacked safely, once."""
        from ..lockfile import LockedFile
        from ..transfer import fetch

        store = self.context.store
        if blob.sha256 not in self._unpacked.dirs and not store.has_object(blob.sha256):
            fetch(self, {}, LockedFile(f"layer-{blob.sha256[:12]}", blob.size or 0, blob.sha256),
                  store, self.decl.network)
        return self._unpacked.root(blob.sha256, f"{self.where} layer {blob.sha256[:12]}")

    # --- apply ------------------------------------------------------------------------

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        layer = (file.pin or {}).get("layer")
        if layer is None:  # a raw layer, or a whole layer being fetched to unpack
            yield from self.blob(file, start, end)
            return
        from ..transfer import iter_file

        if not DIGEST.match(str(layer)) or not isinstance(file.pin.get("layerSize"), int):
            raise SourceError(f"{self.where}: {file.path}: its layer pin is not a digest")
        root = self._unpack(RemoteFile("layer", file.pin["layerSize"], layer[7:]))
        yield from iter_file(root / file.path, start, end)

    def close(self) -> None:
        super().close()
        self._unpacked.close()


def artifact_kind(doc: dict[str, Any], where: str) -> str:
    """modelpack | kitops | docker; anything else is refused with what was found."""
    config = (doc.get("config") or {}).get("mediaType", "")
    artifact = doc.get("artifactType", "")
    if artifact == MODELPACK_ARTIFACT or config == MODELPACK_CONFIG:
        return "modelpack"
    if config == KITOPS_CONFIG:
        return "kitops"
    if str(config).startswith(DOCKER_AI):
        return "docker"
    layers = sorted({str(layer.get("mediaType", "?")) for layer in doc.get("layers") or []
                     if isinstance(layer, dict)})
    found = ", ".join(x for x in [f"artifactType {artifact}" if artifact else "",
                                  f"config {config or '?'}", f"layers {', '.join(layers)}"] if x)
    raise SourceError(f"{where}: not a model artifact reconcile knows ({found})",
                      hint="source.oci reads CNCF ModelPack, KitOps ModelKits and Docker model"
                      " artifacts; use source.ollama for ollama models")


def raw_executable(layer: dict[str, Any]) -> bool:
    """A raw layer's file mode, from ModelPack's file metadata annotation (``"mode":
    493`` is 0755): a script packed raw keeps its executable bit as a tar member does.
    An annotation that is not that JSON says nothing (the file lands read-only)."""
    text = (layer.get("annotations") or {}).get(FILE_METADATA)
    try:
        mode = json.loads(text).get("mode") if isinstance(text, str) else None
    except (ValueError, AttributeError):
        return False
    return isinstance(mode, int) and not isinstance(mode, bool) and bool(mode & 0o111)


def layer_form(kind: str, layer: dict[str, Any]) -> str:
    """raw | tar (gzip and zstd are recognised by their bytes when unpacking)."""
    media = str(layer.get("mediaType", ""))
    if kind == "modelpack":
        m = MODELPACK_LAYER.match(media)
        if m:
            return "raw" if m.group("form") == "raw" else "tar"
    elif kind == "kitops":
        m = KITOPS_LAYER.match(media)
        if m:
            return "raw" if m.group("form") == "raw" else "tar"
    elif kind == "docker" and media.startswith(DOCKER_AI):
        return "tar" if media.endswith(".tar") else "raw"
    raise SourceError(f"layer media type {media[:120]!r} is not one a {kind} artifact has")


SOURCE = OciSource
