"""`source.ollama`: a model from the Ollama registry (or any registry ollama pulls from),
pinned to its manifest digest.

    name     [host/][namespace/]model[:tag], parsed as ollama parses it (defaults:
             registry.ollama.ai, library, latest); ``registry`` sets host and scheme
    lock     one manifest GET: its digest (sha256 of the bytes) is the pin, and every
             layer and the config are files of the model, their digests their sha256;
             the manifest's bytes go into the store, nothing else is downloaded
    apply    blobs by digest through the shared engine (a 307 to storage carries no
             credential; Range resumes), each checked against its digest

The model tree names each layer by what it is (``model.gguf``, ``template``,
``params.json``, ``license`` …) and keeps ``manifest.json``, the exact bytes, so
``integration.ollama`` can install it where the ollama program looks.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

from ..errors import NotFound, SourceError
from ..ollama_names import parse_name
from .base import RemoteFile, Resolution
from .distribution import DIGEST, Manifest, Registry, RegistrySource, descriptor_file

OLLAMA = "application/vnd.ollama.image."
# what each layer is called in the model tree (a second one of a kind gets -2, -3 …)
NAMES = {"model": "model.gguf", "projector": "projector.gguf", "adapter": "adapter.gguf",
         "template": "template", "prompt": "template", "system": "system",
         "params": "params.json", "messages": "messages.json", "license": "license",
         "draft": "draft.gguf"}
MANIFEST_FILE = "manifest.json"


def layer_paths(manifest: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(path in the model tree, descriptor) for the config and every layer."""
    out, seen = [], {}
    config = manifest.get("config")
    if isinstance(config, dict):
        out.append(("config.json", config))
    layers = manifest.get("layers")
    if not isinstance(layers, list) or not layers:
        raise SourceError("the manifest lists no layers")
    for layer in layers:
        if not isinstance(layer, dict):
            raise SourceError("a manifest layer is not an object")
        media = str(layer.get("mediaType", ""))
        kind = media[len(OLLAMA):] if media.startswith(OLLAMA) else ""
        name = NAMES.get(kind)
        if name is None:  # tensors, configs, future kinds: by digest, as ollama stores them
            digest = str(layer.get("digest", ""))
            name = "blobs/" + digest.replace(":", "-")
        else:
            seen[name] = seen.get(name, 0) + 1
            if seen[name] > 1:
                stem, dot, ext = name.partition(".")
                name = f"{stem}-{seen[name]}{dot}{ext}"
        out.append((name, layer))
    return out


class OllamaSource(RegistrySource):
    type = "ollama"
    OPTIONS: dict[str, Any] = {"model": "str", "tag": "str", "registry": "str"}
    hf_cache = False  # transformers cannot read it; integration.ollama installs it instead

    @classmethod
    def check_options(cls, opts: dict[str, Any]) -> dict[str, Any]:
        if not opts.get("model"):
            raise ValueError('model: required, e.g. model = "llama3.2" (tag = "1b")')
        parsed = parse_name(opts["model"], opts.get("tag"), opts.get("registry"))
        return {"model": f"{parsed['namespace']}/{parsed['model']}", "tag": parsed["tag"],
                "registry": parsed["registry"]}

    @classmethod
    def check_pin(cls, pin: dict[str, Any], options: dict[str, Any]) -> None:
        super().check_pin(pin, options)
        if not DIGEST.match(str(pin.get("digest", ""))):
            raise ValueError(f"digest: {pin.get('digest')!r} is not sha256:<64 hex>")

    def __init__(self, decl: Any, context: Any) -> None:
        super().__init__(decl, context)
        self._registry: Registry | None = None
        self._lock = threading.Lock()

    @property
    def registry(self) -> Registry:  # type: ignore[override]
        if self._registry is None:
            # registries want lowercase repository names; ollama compares names that way
            self._registry = Registry(self.options["registry"], self.options["model"].lower(),
                                      self.decl.network, self.credentials)
        return self._registry

    @property
    def where(self) -> str:
        return f"{urlsplit(self.options['registry']).netloc}/{self.options['model']}" \
               f":{self.options['tag']}"

    def resolve(self) -> Resolution:
        return self._resolution(self.registry.manifest(self.options["tag"]))

    def _resolution(self, manifest: Any) -> Resolution:
        files = self.files_of(manifest)
        self._keep(manifest)  # apply needs no request for it
        pin = {"registry": self.options["registry"], "model": self.options["model"],
               "tag": self.options["tag"], "digest": manifest.digest}
        return Resolution(pin=pin, files=files, ollama=self.ollama_name(pin))

    def resolve_pinned(self, pin: dict[str, Any], files: Any = ()) -> Resolution:
        return self._resolution(self.registry.manifest(pin["digest"]))  # served by digest

    @staticmethod
    def ollama_name(pin: dict[str, Any]) -> str:
        """Where ollama looks for it: manifests/<host>/<namespace>/<model>/<tag>."""
        return f"{urlsplit(str(pin['registry'])).netloc}/{pin['model']}/{pin['tag']}"

    def files_of(self, manifest: Manifest) -> list[RemoteFile]:
        doc = manifest.json()
        try:
            files = [descriptor_file(p, d, self.where) for p, d in layer_paths(doc)]
        except SourceError as e:
            raise SourceError(f"{self.where}: {e.message}") from None
        return [RemoteFile(MANIFEST_FILE, len(manifest.data), manifest.digest[7:]), *files]

    def _keep(self, manifest: Manifest) -> None:
        """The manifest's bytes into the store, named with the lock's group commit."""
        store = self.context.store
        if store.claim_object(manifest.digest[7:]):
            store.stage_object(manifest.data, manifest.digest[7:])

    def default_hf_name(self) -> tuple[str, str]:
        ns, model = self.options["model"].split("/")
        return (ns, f"{model}-{self.options['tag']}")

    def open(self, pin, file, start=0, end=None) -> Iterator[bytes]:
        if file.path == MANIFEST_FILE:
            data = self._manifest_bytes(pin)
            yield data[start:end]
            return
        yield from self.blob(file, start, end)

    def _manifest_bytes(self, pin: dict[str, Any]) -> bytes:
        """By digest; a registry that serves manifests only by tag (ollama's) is asked by
        tag and must still give the pinned bytes."""
        try:
            return self.registry.manifest(pin["digest"]).data
        except NotFound:
            got = self.registry.manifest(pin["tag"])
            if got.digest != pin["digest"]:
                raise NotFound(f"{self.where}: the tag now names {got.digest[:19]}…, not the"
                               f" locked {pin['digest'][:19]}…, and the registry does not"
                               " serve manifests by digest",
                               hint="run `reconcile lock --upgrade` to take the new version"
                               ) from None
            return got.data


SOURCE = OllamaSource
