"""models.toml → a checked, typed Manifest.

Reading is strict on purpose: an unknown key is far more often a typo than a
feature, so it is refused with a did-you-mean, with the file, line and dotted key.
The option names are the seed's camelCase ones. One declarative description
(``MODEL_SPEC`` + each source's ``OPTIONS``) drives both this checker and the JSON
Schema in ``schemas/``, so the two cannot drift.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .netconfig import AuthConfig, NetworkConfig
from .sourcetypes import source_types
from .units import parse_size

MANIFEST_NAME = "models.toml"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")
SRI_RE = re.compile(r"^(sha256|sha512)-[A-Za-z0-9+/]+={0,2}$")
HOST_RE = re.compile(r"(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
                     r"(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*")
ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
ON_FAILURE = ("abort", "warn", "skip")
PRESETS = ("strict", "standard", "minimal", "none", "paranoid")
_SRI_LEN = {"sha256": 32, "sha512": 64}
_SPEC_WORDS = {"str": "a string", "bool": "true or false", "strlist": "a list of strings"}


# --- the option tree ---------------------------------------------------------------
# A spec is a type name ("str", "bool", "int", "number", "size", "sri", "name",
# "str|int", "strlist", "any-table", "validator-list", "enum:a|b"), a dict of sub-specs,
# or a list of alternatives (a table where one is given, else the first that fits).

NETWORK_SPEC: dict[str, Any] = {
    "timeout": {"connect": "number", "read": "number"},
    "retry": {"maxAttempts": "int", "baseDelay": "number", "maxDelay": "number"},
    "bandwidth": {"limit": "size"},
    "proxy": "str",
    "caBundle": "str",
}
AUTH_SPEC: dict[str, Any] = {"tokenEnvVar": "str", "tokenFile": "str", "usernameEnvVar": "str",
                             "passwordEnvVar": "str", "passwordFile": "str",
                             # registries: token services on other hosts that may get the
                             # credentials (WWW-Authenticate's realm)
                             "tokenRealms": "hostlist"}
VALIDATION_SPEC: dict[str, Any] = {
    "enable": "bool",
    "skipDefaults": "bool",
    "validators": "validator-list",
    "onFailure": "enum:" + "|".join(ON_FAILURE),
    "timeout": "number",
    "preset": "enum:" + "|".join(PRESETS),
    "requireSignature": "bool",
}
INTEGRATION_SPEC: dict[str, Any] = {
    "huggingface": {"enable": "bool", "org": "name", "model": "name", "refs": "reflist"},
    "ollama": {"enable": "bool", "modelsDir": "str", "name": "str", "template": "str",
               "system": "str", "parameters": "any-table", "license": ["str", "strlist"]},
    "directory": {"path": "str"},
    "lmstudio": ["bool", {"enable": "bool", "publisher": "str", "model": "str",
                          "modelsDir": "str"}],
}
SIGNATURE_SPEC: dict[str, Any] = {
    "file": "str", "publicKey": "str", "certificateChain": "strlist", "ignore": "strlist",
    "identity": "str", "issuer": "str",  # Sigstore keyless: refused with the reason
}
MODEL_SPEC: dict[str, Any] = {
    "name": "name",
    "source": "source",
    "hash": "sri",
    "signature": SIGNATURE_SPEC,
    "validation": VALIDATION_SPEC,
    "integration": INTEGRATION_SPEC,
    "network": NETWORK_SPEC,
    "auth": AUTH_SPEC,
    "meta": "any-table",
}
CACHE_SPEC: dict[str, Any] = {
    "url": "str",
    "push": "bool",
    # an S3 cache: as source.s3 takes them (credentials from AWS's own chain)
    "endpoint": "str", "region": "str", "profile": "str", "anonymous": "bool",
    "addressingStyle": "enum:auto|path|virtual",
    "auth": AUTH_SPEC,  # an OCI registry cache
    "network": NETWORK_SPEC,
}
VALIDATOR_SPEC: dict[str, Any] = {
    "name": "str",
    "description": "str",
    "command": "str",
    "timeout": "number",
    "onFailure": "enum:" + "|".join(ON_FAILURE),
    "buildInputs": "strlist",
    "env": "envnames",  # variables let through to the command, by name (see runner.ENV_ALLOWED)
}


# --- the model of the world ----------------------------------------------------------
# (NetworkConfig and AuthConfig are part of it, kept in netconfig.py for the network code)


@dataclass(frozen=True)
class HFIntegration:
    enable: bool = True
    org: str | None = None
    model: str | None = None
    refs: tuple[str, ...] = ()


@dataclass(frozen=True)
class OllamaIntegration:
    """Install the model where the ollama program finds it: a source.ollama model as
    pulled, or any model whose lock has one GGUF, under ``name`` with models.toml's
    Modelfile texts (see ollama_manifest: what they become)."""

    enable: bool = False
    models_dir: str | None = None  # None: $OLLAMA_MODELS, else ~/.ollama/models
    name: str | None = None  # <host>/<namespace>/<model>/<tag>; None for source.ollama
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    license: tuple[str, ...] = ()


@dataclass(frozen=True)
class LMStudioIntegration:
    """`integration.lmstudio`: the model's GGUFs under LM Studio's models folder, at
    ``<publisher>/<model>/`` (None: from the lock's HF repo, see targets.lmstudio)."""

    publisher: str | None = None
    model: str | None = None
    models_dir: str | None = None  # None: LM Studio's own setting (targets.lmstudio)


@dataclass(frozen=True)
class DirectoryIntegration:
    """`integration.directory = { path = "models/bert" }`: the model's files as links in
    a folder of the project. ``rel`` as models.toml gives it (checked: relative, no
    ``..``), ``path`` that folder joined to models.toml's directory."""

    rel: str
    path: str


@dataclass(frozen=True)
class ValidationConfig:
    enable: bool = True
    skip_defaults: bool = False
    validators: tuple[Any, ...] = ()
    on_failure: str | None = None
    timeout: float | None = None
    preset: str | None = None
    require_signature: bool = False


@dataclass(frozen=True)
class SignatureConfig:
    """`signature = { file, publicKey | certificateChain, ignore }`: an OpenSSF
    model-signing signature among the model's files, checked at lock and at apply."""

    file: str = "model.sig"
    public_key: str | None = None  # a PEM file, absolute (resolved from models.toml)
    certificate_chain: tuple[str, ...] = ()  # trusted certificates, PEM files
    ignore: tuple[str, ...] = ()  # globs left out of the comparison, both sides


@dataclass(frozen=True)
class ModelDecl:
    """One `[models.<key>]` table, with shared source defaults already merged in."""

    key: str
    name: str
    source_type: str
    source: dict[str, Any]
    hash: str | None = None
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    integration: HFIntegration = field(default_factory=HFIntegration)
    ollama: OllamaIntegration = field(default_factory=OllamaIntegration)
    # where in the project the model's files appear (None: nowhere); not in the
    # fingerprint: it decides where links go, never which bytes are locked
    directory: DirectoryIntegration | None = None
    lmstudio: LMStudioIntegration | None = None  # None: not shown to LM Studio
    network: NetworkConfig = field(default_factory=NetworkConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    meta: dict[str, Any] = field(default_factory=dict)
    signature: SignatureConfig | None = None

    def fingerprint(self) -> str:
        """A digest of what decides the lock's content; comments and layout don't count.

        Network, auth, validation and meta change how or whether a model is fetched,
        never which bytes it is, so editing them does not make the lock stale.
        """
        decl = {
            "name": self.name,
            "source": {self.source_type: self.source},
            "hash": self.hash,
            "integration": {
                "enable": self.integration.enable,
                "org": self.integration.org,
                "model": self.integration.model,
                "refs": list(self.integration.refs),
            },
        }
        if self.ollama.enable and self.source_type == "ollama":
            # only then: every existing lock's fingerprints stay valid; a GGUF shown to
            # ollama is, like a directory, where bytes go, not which
            decl["ollama"] = True
        if self.signature is not None:  # who must have signed decides what may be locked
            sig = self.signature
            decl["signature"] = {"file": sig.file, "publicKey": sig.public_key,
                                 "certificateChain": list(sig.certificate_chain),
                                 "ignore": list(sig.ignore)}
        blob = json.dumps(decl, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "sha256:" + hashlib.sha256(blob.encode()).hexdigest()


# a team cache that does not answer is given up on quickly: the sources are the fallback
CACHE_NETWORK = NetworkConfig(connect_timeout=5.0, max_attempts=2, base_delay=0.2,
                              max_delay=1.0)


@dataclass(frozen=True)
class CacheConfig:
    """`[cache]`: the team cache (see remote.py); ``url`` s3://, oci://, file:// or a path."""

    url: str
    push: bool = True
    s3: dict[str, Any] = field(default_factory=dict)  # endpoint, region, profile …
    auth: AuthConfig = field(default_factory=AuthConfig)
    network: NetworkConfig = CACHE_NETWORK


@dataclass(frozen=True)
class Manifest:
    path: Path
    models: dict[str, ModelDecl]
    validators: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: CacheConfig | None = None


# --- reading -------------------------------------------------------------------------


def load_manifest(path: Path) -> Manifest:
    """Read and check a models.toml; every problem is a ConfigError with file/line/key."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            "not found", file=str(path), hint="create one with `reconcile init`"
        ) from None
    except OSError as e:
        raise ConfigError(f"cannot read: {e.strerror}", file=str(path)) from None
    return parse_manifest(raw, path)


def parse_manifest(raw: bytes | str, path: Path = Path(MANIFEST_NAME)) -> Manifest:
    if isinstance(raw, bytes):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            line = raw[: e.start].count(b"\n") + 1
            raise ConfigError(
                f"is not valid UTF-8 (byte {e.start}); TOML files must be UTF-8",
                file=str(path),
                line=line,
                hint="re-save the file as UTF-8",
            ) from None
    else:
        text = raw
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"\(at line (\d+)", str(e))
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(e))
        key = None
        if twice := re.match(r"Cannot declare \((.*)\) twice", msg):  # tomllib's own words
            parts = re.findall(r"'((?:[^'\\]|\\.)*)'", twice.group(1))
            key = ".".join(parts) or None
            msg = "declared twice"
        raise ConfigError(
            msg if key else f"invalid TOML: {msg}", file=str(path), key=key,
            line=int(m.group(1)) if m else None,
            hint="each table or key may appear once; merge the two" if key else None,
        ) from None
    return _Checker(path, text).manifest(doc)


def check_sri(value: str) -> str | None:
    """None when value is a well-formed sha256/sha512 SRI hash, else what is wrong."""
    import base64
    import binascii

    m = SRI_RE.match(value)
    if not m:
        return "expected an SRI hash such as 'sha256-<base64>'"
    algo, b64 = value.split("-", 1)
    try:
        digest = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        return "the part after 'sha256-' is not valid base64"
    if len(digest) != _SRI_LEN[algo]:
        return f"a {algo} digest is {_SRI_LEN[algo]} bytes, this one is {len(digest)}"
    return None


class _Checker:
    """Walks the parsed TOML against the spec, collecting the first error per key."""

    def __init__(self, path: Path, text: str) -> None:
        self.path = path
        self.lines = text.splitlines()

    # -- error helpers
    def fail(self, key: str, message: str, hint: str | None = None) -> ConfigError:
        return ConfigError(
            message, file=str(self.path), key=key, line=self._line_of(key), hint=hint
        )

    def _line_of(self, dotted: str) -> int | None:
        """Best effort: the line that sets the last segment of a dotted key."""
        parts = dotted.split(".")
        last = re.escape(parts[-1])
        header = None
        if len(parts) >= 2 and parts[0] == "models":
            header = re.compile(rf'^\s*\[+\s*models\.("?){re.escape(parts[1])}\1(\s*\]|\.)')
        # `key =`, or a dotted key going on (`sourc.mock = …`, the typo of `source`)
        pat = re.compile(rf'(^|[{{,.\s])"?{last}"?\s*(=|\.\s*["\w-])')
        start = 0
        if header:
            for i, line in enumerate(self.lines):
                if header.match(line) or re.match(
                    rf'^\s*models\.("?){re.escape(parts[1])}\1\s*[.=]', line
                ):
                    start = i
                    break
        for i in range(start, len(self.lines)):
            if pat.search(self.lines[i]):
                return i + 1
        if header and start:
            return start + 1
        return None

    # -- generic walk
    def table(self, value: Any, spec: dict[str, Any], where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, f"expected a table, got {_kind(value)}")
        for k, v in value.items():
            if k not in spec:
                raise self.unknown(where, k, spec)
            self.value(v, spec[k], f"{where}.{k}" if where else k)
        return value

    def unknown(self, where: str, k: str, spec: dict[str, Any]) -> ConfigError:
        if where.endswith(".auth") and k == "token":
            return self.fail(
                f"{where}.token",
                "a literal token does not belong in models.toml (it would be committed and"
                " shared); its value was not read further",
                hint="put the token in an environment variable and set"
                " auth.tokenEnvVar = \"NAME\", or in a file and set auth.tokenFile",
            )
        close = difflib.get_close_matches(k, list(spec), n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'?" if close else f"known keys: {', '.join(sorted(spec))}"
        return self.fail(f"{where}.{k}" if where else k, "unknown key", hint=hint)

    def value(self, v: Any, spec: Any, where: str) -> None:
        if isinstance(spec, dict):
            self.table(v, spec, where)
            return
        if isinstance(spec, list):
            self.either(v, spec, where)
            return
        if spec == "str":
            self.expect(isinstance(v, str), where, "a string", v)
        elif spec == "bool":
            self.expect(isinstance(v, bool), where, "true or false", v)
        elif spec == "int":
            self.expect(isinstance(v, int) and not isinstance(v, bool) and v >= 0,
                        where, "a non-negative integer", v)
        elif spec == "number":
            self.expect(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0,
                        where, "a non-negative number", v)
        elif spec == "strlist":
            self.expect(isinstance(v, list) and all(isinstance(x, str) for x in v),
                        where, "a list of strings", v)
        elif spec == "hostlist":
            self.expect(isinstance(v, list) and all(isinstance(x, str) for x in v),
                        where, "a list of host names", v)
            for i, host in enumerate(v):
                if not HOST_RE.fullmatch(host):
                    raise self.fail(f"{where}[{i}]", f"{host[:100]!r} is not a host name",
                                    hint='a host alone, as the realm URL names it, e.g.'
                                    ' "auth.example.com" (no scheme, port or path)')
        elif spec == "envnames":
            self.expect(isinstance(v, list) and all(isinstance(x, str) for x in v),
                        where, "a list of environment variable names", v)
            for i, name in enumerate(v):
                if not ENV_NAME_RE.fullmatch(name):
                    raise self.fail(f"{where}[{i}]", f"{name!r} is not an environment variable"
                                    " name", hint="letters, digits and _, not starting with a"
                                    " digit, e.g. CUDA_VISIBLE_DEVICES")
        elif spec == "str|int":  # a version: "3" or 3
            self.expect(isinstance(v, str) or (isinstance(v, int) and not isinstance(v, bool)
                                                and v >= 0), where, "a string or a number", v)
        elif spec == "reflist":
            from .lockfile import check_ref

            self.expect(isinstance(v, list) and all(isinstance(x, str) for x in v),
                        where, "a list of ref names", v)
            for i, ref in enumerate(v):
                try:
                    check_ref(ref)
                except ValueError as e:
                    raise self.fail(f"{where}[{i}]", str(e),
                                    hint="a ref is a branch or tag name such as 'main' or"
                                    " 'v1.0'") from None
        elif spec == "list":
            self.expect(isinstance(v, list), where, "a list", v)
        elif spec == "any-table":
            self.expect(isinstance(v, dict), where, "a table", v)
        elif spec == "size":
            try:
                parse_size(v, where)
            except ValueError as e:
                raise self.fail(where, str(e).split(": ", 1)[1]) from None
        elif spec == "name":
            self.expect(isinstance(v, str), where, "a string", v)
            if not NAME_RE.match(v):
                raise self.fail(
                    where,
                    f"{v!r} is not a safe name: use letters, digits, '.', '_', '+', '-'"
                    " (no '/', '..', spaces or control characters; at most 128)",
                )
        elif spec == "sri":
            self.expect(isinstance(v, str), where, "an SRI hash string", v)
            if problem := check_sri(v):
                raise self.fail(where, f"malformed hash {v!r}: {problem}")
        elif spec.startswith("enum:"):
            allowed = spec[5:].split("|")
            if v not in allowed:
                close = difflib.get_close_matches(str(v), allowed, n=1)
                raise self.fail(
                    where,
                    f"expected one of {', '.join(allowed)}; got {v!r}",
                    hint=f"did you mean '{close[0]}'?" if close else None,
                )
        elif spec == "validator-list":
            self.expect(isinstance(v, list), where, "a list of validator names or tables", v)
            for i, item in enumerate(v):
                ok = isinstance(item, str) or (isinstance(item, dict) and len(item) >= 1)
                self.expect(ok, f"{where}[{i}]", "a validator name or { name = arg }", item)
        elif spec == "source":
            pass  # checked by source_decl, which knows the source types
        else:  # pragma: no cover - a bug in the spec itself
            raise AssertionError(spec)

    def either(self, v: Any, specs: list[Any], where: str) -> None:
        """The table alternative for a table; else the first scalar one that fits."""
        tables = [t for t in specs if isinstance(t, dict)]
        if isinstance(v, dict) and tables:
            self.table(v, tables[0], where)
            return
        for spec in (t for t in specs if not isinstance(t, dict)):
            try:
                self.value(v, spec, where)
                return
            except ConfigError:
                continue
        self.expect(False, where, " or ".join(_SPEC_WORDS.get(str(t), "a table")
                                              for t in specs), v)

    def expect(self, ok: bool, where: str, what: str, v: Any) -> None:
        if not ok:
            raise self.fail(where, f"expected {what}, got {_kind(v)}")

    # -- the document
    def manifest(self, doc: dict[str, Any]) -> Manifest:
        registry = source_types()
        top = {"models": "any-table", "sources": "any-table", "validators": "any-table",
               "cache": CACHE_SPEC}
        self.table(doc, top, "")
        shared = self.shared_sources(doc.get("sources", {}), registry)
        validators = {}
        for vname, vdecl in doc.get("validators", {}).items():
            self.value(vname, "name", f"validators.{vname}")
            self.table(vdecl, VALIDATOR_SPEC, f"validators.{vname}")
            if "command" not in vdecl:
                raise self.fail(f"validators.{vname}.command", "a custom validator needs a command")
            validators[vname] = dict(vdecl)
        self.customs = validators
        models = {}
        for key, mdecl in doc.get("models", {}).items():
            models[key] = self.model(key, mdecl, shared, registry)
        self.distinct_directories(models)
        cache = self.cache(doc["cache"]) if "cache" in doc else None
        return Manifest(self.path, models, validators, cache)

    def cache(self, d: dict[str, Any]) -> CacheConfig:
        if "url" not in d:
            raise self.fail("cache.url", "the team cache needs a url",
                            hint='e.g. url = "s3://team-models/cache" or "oci://ghcr.io/org/models"')
        try:
            url = check_cache_url(d["url"])
        except ValueError as e:
            raise self.fail("cache.url", str(e)) from None
        if "://" not in url and not Path(url).expanduser().is_absolute():
            url = str(self.path.parent / url)  # relative to models.toml, like every path
        self.auth_combination("cache", d.get("auth", {}))
        s3 = {k: d[k] for k in ("endpoint", "region", "profile", "anonymous", "addressingStyle")
              if k in d}
        if s3 and not url.startswith("s3://"):
            raise self.fail(f"cache.{next(iter(s3))}", "applies to an s3:// cache only")
        return CacheConfig(url=url, push=d.get("push", True), s3=s3,
                           auth=_auth(d.get("auth", {})),
                           network=_network(d["network"], self.path.parent) if "network" in d
                           else CACHE_NETWORK)

    def shared_sources(self, decl: dict[str, Any], registry: Any) -> dict[str, dict[str, Any]]:
        shared: dict[str, dict[str, Any]] = {}
        for stype, named in decl.items():
            where = f"sources.{stype}"
            source_cls = registry.get(stype)
            if source_cls is None:
                raise self.unknown_source(where, stype, registry)
            if not isinstance(named, dict):
                raise self.fail(where, f"expected a table of named defaults, got {_kind(named)}")
            spec = {**source_cls.OPTIONS, "auth": AUTH_SPEC, "network": NETWORK_SPEC}
            for name, opts in named.items():
                self.table(opts, spec, f"{where}.{name}")
                shared[f"{stype}.{name}"] = dict(opts)
        return shared

    def auth_combination(self, where: str, auth: dict[str, Any]) -> None:
        token = [k for k in ("tokenEnvVar", "tokenFile") if k in auth]
        basic = [k for k in ("usernameEnvVar", "passwordEnvVar", "passwordFile") if k in auth]
        if len(token) > 1:
            raise self.fail(f"{where}.auth", "give tokenEnvVar or tokenFile, not both")
        if token and basic:
            raise self.fail(f"{where}.auth", f"a token ({token[0]}) and basic auth"
                            f" ({basic[0]}) at once", hint="use one way of signing in")
        if basic and "usernameEnvVar" not in basic:
            raise self.fail(f"{where}.auth", "basic auth needs usernameEnvVar",
                            hint='e.g. auth = { usernameEnvVar = "REGISTRY_USER",'
                            ' passwordEnvVar = "REGISTRY_PASSWORD" }')
        if "usernameEnvVar" in basic and not {"passwordEnvVar", "passwordFile"} & set(basic):
            raise self.fail(f"{where}.auth", "basic auth needs passwordEnvVar or passwordFile")
        if {"passwordEnvVar", "passwordFile"} <= set(basic):
            raise self.fail(f"{where}.auth", "give passwordEnvVar or passwordFile, not both")

    def validator_refs(self, where: str, validation: dict[str, Any]) -> None:
        """Each validator a model names exists and gets an argument it can use: a typo
        found after a 10 GB download is a typo found too late."""
        from .validation.builtin import BUILTINS, check_arg, split_ref

        customs = self.customs
        for i, item in enumerate(validation.get("validators", [])):
            at = f"{where}.validation.validators[{i}]"
            try:
                name, arg = split_ref(item)
            except ValueError as e:
                raise self.fail(at, str(e)) from None
            if name in BUILTINS:
                if problem := check_arg(name, arg):
                    raise self.fail(at, f"{name}: {problem}")
            elif name not in customs:
                close = difflib.get_close_matches(name, [*BUILTINS, *customs], n=1)
                raise self.fail(at, f"unknown validator '{name}'",
                                hint=f"did you mean '{close[0]}'?" if close else
                                "declare it as [validators.NAME] with a command, or use one of: "
                                + ", ".join(BUILTINS))

    def ollama(self, where: str, stype: str, d: dict[str, Any]) -> OllamaIntegration:
        """On by default for source.ollama (its manifest, as pulled); for any other
        source on when the table is given, for the lock's one GGUF (checked at lock and
        plan: the files are not known here), under ``name``."""
        at = f"{where}.integration.ollama"
        enable = d.get("enable", stype == "ollama" or bool(d))
        models_dir = self.local_dir(d.get("modelsDir"))
        if stype == "ollama":
            if given := sorted(set(d) & {"name", "template", "system", "parameters",
                                         "license"}):
                raise self.fail(f"{at}.{given[0]}", "a source.ollama model is installed as"
                                " the registry serves it (its own name, template, params)",
                                hint="leave it out, or declare the GGUF from another source")
            return OllamaIntegration(enable=bool(enable), models_dir=models_dir)
        if not enable:
            return OllamaIntegration()
        if "name" not in d:
            raise self.fail(f"{at}.name", "required for a GGUF from source." + stype,
                            hint='the name `ollama run` takes, e.g. name = "mymodel:q4"')
        return OllamaIntegration(True, models_dir, **self.ollama_texts(at, d))

    def ollama_texts(self, at: str, d: dict[str, Any]) -> dict[str, Any]:
        """name, template, system, parameters, license, checked as ollama takes them."""
        from .ollama_manifest import check_parameters, check_template, ollama_name

        try:
            lic = d.get("license", ())
            return {"name": ollama_name(d["name"]),
                    "template": check_template(d["template"]) if "template" in d else None,
                    "system": d.get("system"),
                    "parameters": check_parameters(d.get("parameters", {})),
                    "license": (lic,) if isinstance(lic, str) else tuple(lic)}
        except ConfigError as e:
            sub = (e.key or "").removeprefix("ollama.")
            raise self.fail(f"{at}.{sub}", e.reason, hint=e.hint) from None

    def local_dir(self, value: str | None) -> str | None:
        """A directory models.toml names: ``~`` expanded, relative to models.toml."""
        if value is None:
            return None
        p = Path(value).expanduser()
        return str(p if p.is_absolute() else self.path.parent / p)

    def lmstudio(self, where: str, d: Any) -> LMStudioIntegration | None:
        """``true`` or a table; names checked as `lms import` checks folder names."""
        from .paths import check_folder_name

        if d is None or d is False or (isinstance(d, dict) and d.get("enable") is False):
            return None
        d = d if isinstance(d, dict) else {}
        for key in ("publisher", "model"):
            if key in d and (why := check_folder_name(d[key])):
                raise self.fail(f"{where}.integration.lmstudio.{key}", why,
                                hint='a folder name such as "acme" or "tiny-GGUF"')
        return LMStudioIntegration(d.get("publisher"), d.get("model"),
                                   self.local_dir(d.get("modelsDir")))

    def directory(self, where: str, d: dict[str, Any] | None) -> DirectoryIntegration | None:
        """A folder inside the project: relative to models.toml, never absolute and
        never out of it with ``..`` (models.toml comes in pull requests too)."""
        from .paths import check_relpath

        if d is None:
            return None
        at = f"{where}.integration.directory.path"
        if "path" not in d:
            raise self.fail(at, "the directory target needs a path",
                            hint='e.g. integration.directory = { path = "models/bert" }')
        try:
            rel = check_relpath(d["path"])
        except ValueError as e:
            raise self.fail(at, f"{e} (a folder inside the project, relative to"
                            f" {self.path.name})", hint='e.g. path = "models/bert"') from None
        return DirectoryIntegration(rel, os.path.abspath(self.path.parent / rel))

    def distinct_directories(self, models: dict[str, ModelDecl]) -> None:
        """Two models in one folder (or one inside the other's) would overwrite each
        other's files at every apply."""
        seen: dict[str, str] = {}
        for key, decl in models.items():
            if decl.directory is None:
                continue
            for other, rel in seen.items():
                a, b = decl.directory.rel + "/", rel + "/"
                if a.startswith(b) or b.startswith(a):
                    raise self.fail(f"models.{key}.integration.directory.path",
                                    f"{decl.directory.rel!r} overlaps models.{other}'s"
                                    f" directory {rel!r}", hint="give each model a folder"
                                    " of its own")
            seen[key] = decl.directory.rel

    def unknown_source(self, where: str, stype: str, registry: Any) -> ConfigError:
        planned = set(registry.planned())
        if stype in planned:
            return self.fail(
                where,
                f"source type '{stype}' is not available in this version of reconcile",
                hint=f"available now: {', '.join(sorted(registry.names()))}",
            )
        close = difflib.get_close_matches(stype, [*registry.names(), *planned], n=1)
        return self.fail(
            where,
            f"unknown source type '{stype}'",
            hint=f"did you mean '{close[0]}'?" if close else
            f"known types: {', '.join(sorted(registry.names()))}",
        )

    def model(self, key: str, decl: Any, shared: dict[str, Any], registry: Any) -> ModelDecl:
        where = f"models.{key}"
        if not NAME_RE.match(key):
            raise self.fail(where, f"model key {key!r} is not a safe name (letters, digits, . _ + -)")
        self.table(decl, MODEL_SPEC, where)
        if "source" not in decl:
            raise self.fail(where, "missing source", hint='add e.g. source.huggingface = { repo = "org/model" }')
        src = decl["source"]
        if not isinstance(src, dict) or not src:
            raise self.fail(f"{where}.source", "expected a table with one source type")
        if len(src) > 1:
            raise self.fail(
                f"{where}.source",
                f"declares {len(src)} source types ({', '.join(src)}); a model has exactly one",
            )
        ((stype, opts),) = src.items()
        swhere = f"{where}.source.{stype}"
        source_cls = registry.get(stype)
        if source_cls is None:
            raise self.unknown_source(swhere, stype, registry)
        if not isinstance(opts, dict):
            opts = source_cls.shorthand(opts) if hasattr(source_cls, "shorthand") else opts
            if not isinstance(opts, dict):
                raise self.fail(swhere, f"expected a table, got {_kind(opts)}")
        self.table(opts, {**source_cls.OPTIONS, "use": "str"}, swhere)
        opts = dict(opts)
        auth_defaults: dict[str, Any] = {}
        net_defaults: dict[str, Any] = {}
        if "use" in opts:
            ref = f"{stype}.{opts.pop('use')}"
            if ref not in shared:
                names = [k.split(".", 1)[1] for k in shared if k.startswith(stype + ".")]
                raise self.fail(
                    f"{swhere}.use",
                    f"no shared defaults [sources.{ref}]",
                    hint=f"defined: {', '.join(names)}" if names else f"add a [sources.{ref}] table",
                )
            base = dict(shared[ref])
            auth_defaults = base.pop("auth", {})
            net_defaults = base.pop("network", {})
            opts = {**base, **opts}
        try:
            opts = source_cls.check_options(opts)
        except ValueError as e:
            sub, _, msg = str(e).partition(": ")
            raise self.fail(f"{swhere}.{sub}" if msg else swhere, msg or str(e)) from None
        own = getattr(source_cls, "own_credentials", None)
        if own and (auth_defaults or "auth" in decl):
            raise self.fail(f"{where}.auth", f"source.{stype} does not read auth from"
                            " models.toml", hint=own)
        hash_ = decl.get("hash")
        self.validator_refs(where, decl.get("validation", {}))
        signature = self.signature(where, decl)
        self.auth_combination(where, {**auth_defaults, **decl.get("auth", {})})
        return ModelDecl(
            key=key,
            name=decl.get("name", key),
            source_type=stype,
            source=opts,
            hash=hash_,
            validation=_validation(decl.get("validation", {})),
            integration=_integration(decl.get("integration", {}),
                                     getattr(source_cls, "hf_cache", True)),
            ollama=self.ollama(where, stype, decl.get("integration", {}).get("ollama", {})),
            directory=self.directory(where, decl.get("integration", {}).get("directory")),
            lmstudio=self.lmstudio(where, decl.get("integration", {}).get("lmstudio")),
            network=_network({**net_defaults, **decl.get("network", {})},
                             self.path.parent),
            auth=_auth({**auth_defaults, **decl.get("auth", {})}),
            meta=dict(decl.get("meta", {})),
            signature=signature,
        )

    def signature(self, where: str, decl: dict[str, Any]) -> SignatureConfig | None:
        """The signature table, its paths relative to models.toml; and requireSignature
        kept: a model that must be signed and declares no signature is refused here."""
        from .paths import check_relpath

        d = decl.get("signature")
        if d is None:
            if decl.get("validation", {}).get("requireSignature"):
                raise self.fail(f"{where}.validation.requireSignature", "this model must be"
                                " signed, and declares no signature",
                                hint='add signature = { file = "model.sig", publicKey ='
                                ' "keys/publisher.pem" }')
            return None
        at = f"{where}.signature"
        if "identity" in d or "issuer" in d:
            raise self.fail(f"{at}.{'identity' if 'identity' in d else 'issuer'}",
                            "keyless (Sigstore) signatures are not verified by reconcile: they"
                            " need the Rekor transparency log and a TUF trust root online",
                            hint="ask the publisher for a key or certificate signature"
                            " (publicKey or certificateChain), or run `model_signing verify"
                            " sigstore` on the installed snapshot")
        if ("publicKey" in d) == ("certificateChain" in d):
            raise self.fail(at, "give publicKey (a PEM public key) or certificateChain (PEM"
                            " certificates), exactly one")
        try:
            file = check_relpath(d.get("file", "model.sig"))
        except ValueError as e:
            raise self.fail(f"{at}.file", str(e)) from None

        def local(p: str) -> str:
            path = Path(p).expanduser()
            return str(path if path.is_absolute() else self.path.parent / path)

        chain = d.get("certificateChain", [])
        if "certificateChain" in d and not chain:
            raise self.fail(f"{at}.certificateChain", "name at least one trusted certificate")
        return SignatureConfig(file=file,
                               public_key=local(d["publicKey"]) if "publicKey" in d else None,
                               certificate_chain=tuple(local(c) for c in chain),
                               ignore=tuple(d.get("ignore", ())))


def check_cache_url(url: str) -> str:
    """Refuse a cache URL reconcile cannot use; raise ValueError naming the forms."""
    parts = urlsplit(url)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ValueError(f"{url!r}: expected s3://bucket/prefix")
    elif parts.scheme in ("oci", "oci+http"):
        if not parts.netloc or not parts.path.strip("/"):
            raise ValueError(f"{url!r}: expected oci://registry/repository")
        if not re.fullmatch(r"[a-z0-9]+(?:[._/-][a-z0-9]+)*", parts.path.strip("/")):
            raise ValueError(f"{url!r}: registry repository names are lowercase")
    elif parts.scheme not in ("", "file"):
        raise ValueError(f"{url!r}: expected s3://bucket/prefix, oci://registry/repository,"
                         " file:///path or a directory")
    return url


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int | float):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


def _network(d: dict[str, Any], base: Path | None = None) -> NetworkConfig:
    t, r = d.get("timeout", {}), d.get("retry", {})
    limit = d.get("bandwidth", {}).get("limit")
    ca = d.get("caBundle")
    if ca is not None:  # relative to models.toml, like every path in it
        ca = str((base or Path(".")) / Path(ca).expanduser())
    return NetworkConfig(
        connect_timeout=float(t.get("connect", 30)),
        read_timeout=float(t.get("read", 300)),
        max_attempts=max(1, int(r.get("maxAttempts", 3))),
        base_delay=float(r.get("baseDelay", 2)),
        bandwidth_limit=parse_size(limit) if limit is not None else None,
        proxy=d.get("proxy"),
        max_delay=float(r.get("maxDelay", 60)),
        ca_bundle=ca,
    )


def _auth(d: dict[str, Any]) -> AuthConfig:
    return AuthConfig(token_env_var=d.get("tokenEnvVar"), token_file=d.get("tokenFile"),
                      username_env_var=d.get("usernameEnvVar"),
                      password_env_var=d.get("passwordEnvVar"),
                      password_file=d.get("passwordFile"),
                      token_realms=tuple(h.lower() for h in d.get("tokenRealms", ())))


def _integration(d: dict[str, Any], default: bool = True) -> HFIntegration:
    hf = d.get("huggingface", {})
    return HFIntegration(
        enable=hf.get("enable", default),
        org=hf.get("org"),
        model=hf.get("model"),
        refs=tuple(hf.get("refs", ())),
    )


def _validation(d: dict[str, Any]) -> ValidationConfig:
    return ValidationConfig(
        enable=d.get("enable", True),
        skip_defaults=d.get("skipDefaults", False),
        validators=tuple(d.get("validators", ())),
        on_failure=d.get("onFailure"),
        timeout=d.get("timeout"),
        preset=d.get("preset"),
        require_signature=d.get("requireSignature", False),
    )


def manifest_from_dict(doc: dict[str, Any], path: Path = Path("<python>")) -> Manifest:
    """The same checks for a Python dict shaped like models.toml (the library API)."""
    return _Checker(path, "").manifest(doc)
