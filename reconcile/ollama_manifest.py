"""An ollama model made from one GGUF: the config blob, the text layers and the manifest,
as bytes, so any GGUF in the store (from a Hugging Face repo, S3, a URL, Git LFS) can be
shown to ollama without a second copy: its blob is the store object, hard-linked.

Layout and encoding follow ollama v0.33.0-rc2 (commit fb30760), read in
``server/create.go`` (``createModel``, ``setTemplate``/``setSystem``/``setLicense``/
``setParameters``, ``createConfigLayer``), ``manifest/manifest.go`` (``WriteManifest``),
``manifest/layer.go``, ``types/model/config.go`` (``ConfigV2``), ``server/images.go``
(``GetModel``, which reads it back) and ``fs/ggml`` (where the config's facts come from):

    manifest  {"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.
              manifest.v2+json","config":{…},"layers":[…]} as Go's json.Encoder writes
              it (compact, struct order, ``<>&`` escaped, a final newline)
    config    application/vnd.docker.container.image.v1+json: model_format "gguf",
              model_family/model_families from general.architecture, model_type the
              parameter count as ``format.HumanNumber`` writes it ("8.0B", "8B"
              for exactly 8e9, "494.03M"), file_type the quantization, architecture "amd64" and
              os "linux" (ollama writes these two constants whatever the machine)
    layers    the model first, then template, system, licence(s), params, in
              ``createModel``'s order

Choices that are not a copy of ``ollama create``:

- ``rootfs`` (``{"type":"layers","diff_ids":[each layer's digest]}``) is written as
  ollama wrote it up to v0.32.6 and as every model on registry.ollama.ai has it;
  v0.32.7 stopped writing it (nothing read it). Older ollama decodes it, newer ignores it.
- The template. ollama's TEMPLATE layer is a Go template; a GGUF carries a Jinja one
  (``tokenizer.chat_template``). ``ollama create`` does not convert it: it matches it
  against its own table of ~25 known templates by Levenshtein distance
  (``template.Named``, ``template/index.json``) and writes the nearest one's Go text.
  That table is ollama's data, not ours to copy, and a conversion would be a guess. So
  without ``template`` in models.toml no template layer is written: since v0.30
  (llama-server for every GGML model) ``GetModel`` then sets ``HasChatTemplate`` from the
  GGUF and the chat is rendered by llama.cpp from the GGUF's own Jinja template
  (``selectedTemplateSource`` = "gguf_chat_template"); older versions fell back to
  ``{{ .Prompt }}``. A Jinja text given as ``template`` is refused for that reason.
- ``file_type`` 0 is "F32" (ollama's ``KV.FileType`` maps 0 to "unknown"), and a
  missing one "unknown"; renderer/parser, which ``createModel`` sets for three
  architectures (gemma4, laguna, nemotron_h), are left out: the GGUF's template serves.
- A licence: models.toml's texts, else the GGUF's ``general.license`` identifier (so
  ``ollama show --license`` says "apache-2.0" rather than nothing).
- params: Go writes a whole float without ".0" (``1`` for ``1.0``); Python keeps it.
  ollama decodes both to the same float64.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError, LockError
from .gguf import GGUFHeader
from .ollama_names import ollama_name

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_TYPE = "application/vnd.docker.container.image.v1+json"
MODEL = "application/vnd.ollama.image.model"
TEMPLATE = "application/vnd.ollama.image.template"
SYSTEM = "application/vnd.ollama.image.system"
PARAMS = "application/vnd.ollama.image.params"
LICENSE = "application/vnd.ollama.image.license"
HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Settings:
    """What models.toml adds to a GGUF: ollama's Modelfile TEMPLATE (a Go template),
    SYSTEM, PARAMETER (``num_ctx``, ``stop`` …) and LICENSE texts."""

    template: str | None = None
    system: str | None = None
    parameters: Mapping[str, Any] = field(default_factory=dict)
    license: tuple[str, ...] = ()


@dataclass(frozen=True)
class Blob:
    """One blob the manifest names; ``data`` is None for the GGUF (a store object)."""

    media_type: str
    sha256: str
    size: int
    data: bytes | None = None

    def descriptor(self) -> dict[str, Any]:
        return {"mediaType": self.media_type, "digest": "sha256:" + self.sha256,
                "size": self.size}


def blob(media_type: str, data: bytes) -> Blob:
    return Blob(media_type, hashlib.sha256(data).hexdigest(), len(data), data)


@dataclass(frozen=True)
class Image:
    """An ollama model: its manifest's bytes, the config, the layers (the model first)."""

    manifest: bytes
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def digest(self) -> str:
        """What ollama calls the model's digest (``ollama list`` shows 12 hex of it)."""
        return "sha256:" + hashlib.sha256(self.manifest).hexdigest()

    def small_blobs(self) -> dict[str, bytes]:
        """sha256 -> bytes of every blob to write beside the GGUF's hard link."""
        return {b.sha256: b.data for b in (self.config, *self.layers) if b.data is not None}


def go_json(value: Any, *, sort_keys: bool = False) -> bytes:
    """As Go's ``json.NewEncoder(w).Encode`` writes: compact, UTF-8, HTML characters and
    U+2028/9 escaped, a newline after. Equal inputs give equal bytes."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=sort_keys,
                      allow_nan=False)
    for char, escape in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(char, escape)  # only ever inside strings: not JSON syntax
    return (text + "\n").encode()


def human_number(n: int) -> str:
    """ollama's ``format.HumanNumber``: the parameter count as ``ollama show`` prints it."""
    for unit, scale, decimals in (("B", 10**9, 1), ("M", 10**6, 2)):
        if n >= scale:
            number = n / scale
            return f"{number:.0f}{unit}" if number == math.floor(number) else \
                f"{number:.{decimals}f}{unit}"
    return f"{n / 1000:.0f}K" if n >= 1000 else str(n)


def config_blob(header: GGUFHeader, layers: list[Blob]) -> Blob:
    """The config ``createModel`` writes for a model with one GGUF layer."""
    arch = header.architecture or "unknown"  # ollama's KV.Architecture default
    config = {"model_format": "gguf", "model_family": arch, "model_families": [arch],
              "model_type": human_number(header.parameter_count or 0),
              "file_type": header.quantization or "unknown",
              "architecture": "amd64", "os": "linux",
              "rootfs": {"type": "layers", "diff_ids": ["sha256:" + b.sha256 for b in layers]}}
    return blob(CONFIG_TYPE, go_json(config))


def compose(gguf_sha256: str, gguf_size: int, header: GGUFHeader,
            settings: Settings = Settings()) -> Image:
    """The ollama model for one GGUF (its sha256 and size from the lock, its header read
    from the store object) and models.toml's settings. Pure: writes nothing."""
    if not isinstance(gguf_sha256, str) or not HEX64.fullmatch(gguf_sha256) \
            or not isinstance(gguf_size, int) or isinstance(gguf_size, bool) or gguf_size < 0:
        raise LockError(f"the GGUF's sha256/size {gguf_sha256!r}/{gguf_size!r} are not a"
                        " lowercase 64-hex digest and a size",
                        hint="regenerate models.lock with `reconcile lock`")
    layers = [Blob(MODEL, gguf_sha256, gguf_size), *text_layers(header, settings)]
    config = config_blob(header, layers)
    doc = {"schemaVersion": 2, "mediaType": MANIFEST_TYPE, "config": config.descriptor(),
           "layers": [b.descriptor() for b in layers]}
    return Image(go_json(doc), config, tuple(layers))


def text_layers(header: GGUFHeader, settings: Settings) -> list[Blob]:
    """Template, system, licences, params: each only when there is something to say."""
    out = []
    if settings.template:
        out.append(blob(TEMPLATE, check_template(settings.template).encode()))
    if settings.system:
        out.append(blob(SYSTEM, _text("system", settings.system).encode()))
    licences = settings.license or ((header.license,) if header.license else ())
    out += [blob(LICENSE, _text("license", t).encode()) for t in licences if t]
    if settings.parameters:
        out.append(blob(PARAMS, go_json(check_parameters(settings.parameters),
                                        sort_keys=True)))
    return out


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"expected text, got {type(value).__name__}", key=key)
    return value


def check_template(text: Any) -> str:
    """A Go template as ollama's TEMPLATE takes it; a Jinja chat template is refused,
    since ollama would fail to parse it at ``ollama run``."""
    text = _text("template", text)
    if "{%" in text or re.search(r"\{\{[^}]*\[['\"]", text):
        raise ConfigError("this is a Jinja chat template; ollama's template is a Go template"
                          " ({{ .Prompt }}, {{ range .Messages }} …)", key="template",
                          hint="leave template unset: ollama then uses the GGUF's own chat"
                          " template")
    if text.count("{{") != text.count("}}"):
        raise ConfigError("unbalanced {{ and }}", key="template",
                          hint="see ollama's docs/template.md for the syntax")
    return text


SCALAR = (str, int, float, bool)


def check_parameters(params: Mapping[str, Any]) -> dict[str, Any]:
    """ollama's options (``num_ctx = 8192``, ``stop = ["<|im_end|>"]``): text, numbers,
    booleans, or lists of those; anything else (a table, a date, NaN) is refused."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        items = value if isinstance(value, list) else [value]
        if not isinstance(key, str) or not key or not all(
                isinstance(v, SCALAR) and not (isinstance(v, float) and not math.isfinite(v))
                for v in items):
            raise ConfigError("expected text, a number, true/false, or a list of those",
                              key=f"parameters.{key}")
        out[key] = value
    return out


def manifest_path(models_dir: Path, name: str) -> Path:
    """Where ollama reads the manifest of ``name`` (``manifest.ParseNamedManifest``)."""
    return models_dir / "manifests" / ollama_name(name)


def only_gguf(key: str, paths: Sequence[str]) -> str:
    """The one ``*.gguf`` among a model's locked files: an ollama model is one GGUF (a
    repo of several quantizations, or a model and its vision projector, needs ``files``
    to pick one). LockError naming the model and the GGUFs otherwise."""
    ggufs = sorted(p for p in paths if p.lower().endswith(".gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    found = f"{len(ggufs)}: {', '.join(ggufs[:10])}{' …' if len(ggufs) > 10 else ''}" \
        if ggufs else "none"
    raise LockError(f"models.{key}: integration.ollama needs exactly one GGUF file; the"
                    f" locked files have {found}",
                    hint='narrow the source\'s files to one, e.g. files = ["*Q4_K_M.gguf"],'
                    " then `reconcile lock`")
