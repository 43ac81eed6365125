"""Run a model's validators before it is linked, and remember the results.

Which validators apply = the preset (model's, else RECONCILE_VALIDATION, else
standard) unless ``skipDefaults``, plus the model's own list. Results are cached per
(model hash, fingerprint of the validator set): an unchanged model under unchanged
validators is never scanned twice; ``--revalidate`` forgets that.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .. import settings
from ..config import Manifest, ModelDecl
from ..errors import ConfigError, ValidationFailed
from ..fsutil import atomic_write_text
from ..lockfile import LockedModel
from ..store import Store
from .builtin import BUILTINS, split_ref

VERSION = "1"  # bump when a built-in's behaviour changes: cached results then expire
#: All of the user's environment a validator command gets (besides $src and the names its
#: own ``env`` lists): an allow-list, since a secret's name cannot be guessed (GH_PAT,
#: DATABASE_URL, a proxy URL with a password, SSH_AUTH_SOCK …) and validators run beside
#: files that may be hostile.
ENV_ALLOWED = ("PATH", "HOME", "LANG", "LANGUAGE", "TMPDIR", "TERM", "TZ")
ENV_ALLOWED_PREFIXES = ("LC_",)


@dataclass(frozen=True)
class Validator:
    """A built-in (``check``) or a shell command run with $src set to the tree."""

    name: str
    description: str = ""
    command: str | None = None
    arg: Any = None
    timeout: float = 300.0
    on_failure: str = "abort"
    build_inputs: tuple[str, ...] = ()
    env: tuple[str, ...] = ()  # the user's variables let through to the command, by name

    def fingerprint(self) -> str:
        d = {"v": VERSION, "name": self.name, "command": self.command, "arg": self.arg,
             "onFailure": self.on_failure, "buildInputs": list(self.build_inputs)}
        if self.env:  # only then, so that existing results stay valid
            d["env"] = sorted(self.env)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()


@dataclass
class Outcome:
    validator: str
    status: str  # pass | fail | error | timeout
    on_failure: str
    findings: list[str] = field(default_factory=list)
    output: str = ""
    seconds: float = 0.0


def mk_validator(name: str, command: str, description: str = "", timeout: float = 300,
                 on_failure: str = "abort", build_inputs: list[str] | tuple[str, ...] = (),
                 env: list[str] | tuple[str, ...] = ()) -> Validator:
    """The seed's mkValidator."""
    if on_failure not in ("abort", "warn", "skip"):
        raise ConfigError(f"validator {name}: onFailure must be abort, warn or skip")
    return Validator(name, description, command, None, float(timeout), on_failure,
                     tuple(build_inputs), tuple(env))


PRESETS: dict[str, dict[str, Any]] = {
    # exactly what each preset runs, and what a failure does
    "none": {"validators": [], "onFailure": "skip"},
    "minimal": {"validators": ["modelscan"], "onFailure": "warn"},
    "standard": {"validators": ["modelscan", "validConfigJson", "validFormats"],
                 "onFailure": "abort"},
    "strict": {"validators": ["modelscan", "validConfigJson", "validFormats", "safetensorsOnly",
                              "noPythonCode", "noSymlinks"], "onFailure": "abort"},
    "paranoid": {"validators": [{"modelscan": "strict"}, "validConfigJson", "validFormats",
                                "safetensorsOnly",
                                "noPythonCode", "noSymlinks", "noPickleFiles", "licenseCheck"],
                 "onFailure": "abort"},
}


def parse_ref(item: Any, customs: dict[str, dict[str, Any]], where: str = "validators"
              ) -> Validator:
    """'name', 'name:arg', { name = arg } or a Validator → Validator."""
    if isinstance(item, Validator):
        return item
    try:
        name, arg = split_ref(item)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if name in BUILTINS:
        _check, desc, takes_arg = BUILTINS[name]
        if takes_arg and arg is None:
            raise ConfigError(f"{where}: validator {name} needs an argument, e.g. {{ {name} = … }}")
        return Validator(name, desc, None, arg)
    if name in customs:
        c = customs[name]
        return mk_validator(name, c["command"], c.get("description", ""), c.get("timeout", 300),
                            c.get("onFailure", "abort"), c.get("buildInputs", ()),
                            c.get("env", ()))
    import difflib

    close = difflib.get_close_matches(name, [*BUILTINS, *customs], n=1)
    raise ConfigError(f"{where}: unknown validator '{name}'",
                      hint=f"did you mean '{close[0]}'?" if close else
                      "declare it as [validators.NAME] with a command")


def validators_for(decl: ModelDecl | None, customs: dict[str, dict[str, Any]],
                   preset: str | None = None) -> list[Validator]:
    v = decl.validation if decl else None
    if v is not None and not v.enable:
        return []
    name = preset or (v.preset if v else None) or settings.validation_preset() or "standard"
    if name not in PRESETS:
        raise ConfigError(f"RECONCILE_VALIDATION={name!r} is not a preset",
                          hint=f"use one of {', '.join(PRESETS)}")
    base = PRESETS[name]
    items = [] if (v and v.skip_defaults) else list(base["validators"])
    items += list(v.validators if v else ())
    where = f"models.{decl.key}.validation.validators" if decl else "validators"
    out: dict[str, Validator] = {}
    for item in items:
        val = parse_ref(item, customs, where)
        on_failure = (v.on_failure if v and v.on_failure else None) or (
            val.on_failure if val.command else base["onFailure"])
        timeout = float(v.timeout) if v and v.timeout else val.timeout
        out[val.name] = Validator(val.name, val.description, val.command, val.arg, timeout,
                                  on_failure, val.build_inputs, val.env)
    return list(out.values())


def scrubbed_env(src: Path, hidden: frozenset[str] = frozenset(),
                 allow: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment for validator commands: PATH, HOME, the locale (LANG, LC_*), TMPDIR,
    TERM and TZ, the names the validator's ``env`` lets through (``allow``), and ``src``;
    nothing else. ``hidden`` (auth.tokenEnvVar, usernameEnvVar, passwordEnvVar of any
    model) never passes, even when listed: models.toml says those hold a secret."""
    env = {k: v for k, v in os.environ.items()
           if (k in ENV_ALLOWED or k.startswith(ENV_ALLOWED_PREFIXES) or k in allow)
           and k not in hidden}
    env["src"] = str(src)
    return env


def secret_vars(manifest: Manifest | None) -> frozenset[str]:
    """Every variable any model of ``manifest`` reads a secret from."""
    if manifest is None:
        return frozenset()
    return frozenset(v for m in manifest.models.values() for v in m.auth.env_vars())


def run_validator(val: Validator, root: Path, hidden: frozenset[str] = frozenset()) -> Outcome:
    start = time.monotonic()
    if val.command is None:
        check = BUILTINS[val.name][0]
        try:
            findings = check(root, val.arg)
        except (OSError, ValueError) as e:
            return Outcome(val.name, "error", val.on_failure, [f"{type(e).__name__}: {e}"],
                           seconds=time.monotonic() - start)
        return Outcome(val.name, "fail" if findings else "pass", val.on_failure, findings,
                       seconds=time.monotonic() - start)
    missing = [p for p in val.build_inputs if shutil.which(p) is None]
    if missing:
        return Outcome(val.name, "error", val.on_failure,
                       [f"needs {', '.join(missing)} on PATH (buildInputs)"])
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(["bash", "-c", val.command], cwd=root, env=scrubbed_env(root, hidden, val.env),
                                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            code = proc.wait(timeout=val.timeout)
            status = "pass" if code == 0 else "fail"
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the whole group: no orphan keeps running
            proc.wait()
            code, status = None, "timeout"
        out.seek(0)
        output = out.read(64 * 1024).decode("utf-8", "replace")
    findings = [] if status == "pass" else [
        f"command exited {code}" if code is not None else f"timed out after {val.timeout:g}s"]
    return Outcome(val.name, status, val.on_failure, findings, output,
                   time.monotonic() - start)


class Runner:
    def __init__(self, store: Store, manifest: Manifest | None, *, revalidate: bool = False,
                 preset: str | None = None) -> None:
        self.store = store
        self.manifest = manifest
        self.revalidate = revalidate
        self.preset = preset
        self._validators: dict[str, list[Validator]] = {}

    def validators(self, model: LockedModel) -> list[Validator]:
        if model.key not in self._validators:
            decl = self.manifest.models.get(model.key) if self.manifest else None
            customs = self.manifest.validators if self.manifest else {}
            self._validators[model.key] = validators_for(decl, customs, self.preset)
        return self._validators[model.key]

    def _record_path(self, model: LockedModel) -> Path:
        fp = hashlib.sha256("".join(v.fingerprint() for v in self.validators(model)).encode())
        digest = model.store_id.split("-", 1)[0]
        return self.store.state / "validation" / digest / f"{fp.hexdigest()[:32]}.json"

    def _failed_path(self, model: LockedModel) -> Path:
        return self._record_path(model).with_suffix(".failed.json")

    def needs(self, model: LockedModel) -> bool:
        if not self.validators(model):
            return False
        return self.revalidate or not self._record_path(model).exists()

    def verdict(self, model: LockedModel) -> tuple[str, str]:
        """("ok", ""), ("invalid", what failed) or ("unvalidated", ""), for this model
        under this project's validators: what `path` and `status` hand out depends on it."""
        if not self.validators(model) or self._record_path(model).exists():
            return "ok", ""
        try:
            return "invalid", json.loads(self._failed_path(model).read_text())["summary"]
        except (OSError, ValueError, KeyError):
            return "unvalidated", ""

    def recorded(self, model: LockedModel) -> list[Outcome]:
        try:
            data = json.loads(self._record_path(model).read_text())
        except (FileNotFoundError, ValueError):
            return []
        return [Outcome(**o) for o in data["outcomes"]]

    def recorded_warnings(self, model: LockedModel) -> list[str]:
        return [f"{o.validator}: {f}" for o in self.recorded(model)
                if o.status != "pass" and o.on_failure == "warn" for f in o.findings]

    def forget(self, hashes: set[str]) -> None:
        from ..lockfile import LockedModel as _M

        for h in hashes:
            digest = _M("", "", "", "", h, {}, ()).store_id.split("-", 1)[0]
            shutil.rmtree(self.store.state / "validation" / digest, ignore_errors=True)

    def check_tree(self, model: LockedModel, root: Path) -> list[Outcome]:
        hidden = secret_vars(self.manifest)
        return [run_validator(v, root, hidden) for v in self.validators(model)]

    def run(self, model: LockedModel) -> list[str]:
        """Validate the store tree (published or pending); raise ValidationFailed on abort
        (remembered, so `path` and `status` can say why), return warnings."""
        outcomes = self.check_tree(model, self.store.tree_path(model))
        aborts = [o for o in outcomes if o.status != "pass" and o.on_failure == "abort"]
        if aborts:
            summary = ", ".join(f"{o.validator} ({o.status}: {o.findings[0]})" if o.findings
                                else f"{o.validator} ({o.status})" for o in aborts)
            atomic_write_text(self._failed_path(model), json.dumps(
                {"model": model.key, "hash": model.hash, "summary": summary,
                 "outcomes": [asdict(o) for o in aborts]}, indent=1))
            raise ValidationFailed(report(model.key, aborts),
                                   hint="the model was not linked; fix the source, change"
                                   " validation.onFailure, or pick another preset")
        atomic_write_text(self._record_path(model), json.dumps(
            {"model": model.key, "hash": model.hash, "outcomes": [asdict(o) for o in outcomes]},
            indent=1))
        self._failed_path(model).unlink(missing_ok=True)
        return [f"{model.key}: {o.validator}: {f}" for o in outcomes
                if o.status != "pass" and o.on_failure == "warn" for f in o.findings]


def report(key: str, outcomes: list[Outcome]) -> str:
    lines = [f"model '{key}' failed validation:"]
    for o in outcomes:
        lines.append(f"  {o.validator} ({o.status}):")
        lines.extend(f"    - {f}" for f in o.findings[:20])
        if len(o.findings) > 20:
            lines.append(f"    … and {len(o.findings) - 20} more")
        if o.output.strip():
            lines.extend(f"    | {line}" for line in o.output.strip().splitlines()[-10:])
    return "\n".join(lines)
