"""A GitHub Actions runner for one composite action, as far as action.yml needs one.

The `run:` steps are executed as the runner executes them: `bash --noprofile --norc -eo
pipefail` on a script file, in the workspace, with the step's env, GITHUB_OUTPUT (a fresh
file per step, read back as the step's outputs), GITHUB_ENV (read back into the env of
every later step), GITHUB_ACTION_PATH, RUNNER_OS and RUNNER_TEMP. `${{ }}` expressions and
`if:` conditions are evaluated for the forms action.yml uses (context lookups, `== '…'`,
`!= '…'`); anything else raises, so the action cannot drift out of what this checks.

actions/cache itself (a Node action talking to GitHub's cache service) cannot run here:
its restore and save are emulated with a directory holding one tar archive per key, as
actions/cache keeps one (tar keeps hard links and symlinks, as its does). Restore: an exact
key gives cache-hit 'true', a restore-keys prefix match (newest first) 'false', a miss ''.
Save: a key that exists is not overwritten (GitHub's caches are immutable).

    runner = Runner(action_dir, workspace, home, caches)
    result = runner.run({"manifest": "models.toml"}, env={...})
    result.outputs["cache-hit"], result.ran, result.env  # the action's outputs, steps, GITHUB_ENV
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

_EXPR = re.compile(r"\$\{\{\s*(.*?)\s*\}\}")
_PATH = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)+")
_COMPARE = re.compile(r"(.+?)\s*(==|!=)\s*'([^']*)'")


class StepFailed(AssertionError):
    def __init__(self, step: str, code: int, output: str) -> None:
        super().__init__(f"step {step} exited {code}:\n{output}")
        self.step, self.code, self.output = step, code, output


@dataclass
class Result:
    outputs: dict[str, str]
    ran: list[str]  # the ids of the steps that ran (not skipped by their if:)
    env: dict[str, str]  # what the action wrote to GITHUB_ENV
    log: str  # every step's stdout and stderr, in order
    steps: dict[str, dict[str, Any]] = field(default_factory=dict)


class Runner:
    def __init__(self, action_dir: Path, workspace: Path, home: Path, caches: Path) -> None:
        self.action_dir, self.workspace, self.home, self.caches = (
            action_dir,
            workspace,
            home,
            caches,
        )
        self.action = yaml.safe_load((action_dir / "action.yml").read_text())

    # --- expressions ---------------------------------------------------------------
    @staticmethod
    def lookup(path: str, ctx: dict[str, Any]) -> str:
        if not _PATH.fullmatch(path):
            raise NotImplementedError(f"expression {path!r}: only context lookups are emulated")
        value: Any = ctx
        for part in path.split("."):
            value = value.get(part, "") if isinstance(value, dict) else ""
        return "" if value is None else str(value)

    def condition(self, expr: str, ctx: dict[str, Any]) -> bool:
        expr = _EXPR.sub(lambda m: m.group(1), expr.strip())
        m = _COMPARE.fullmatch(expr)
        if not m:
            raise NotImplementedError(f"if: {expr!r}: only == and != against a string")
        return (self.lookup(m.group(1), ctx) == m.group(3)) == (m.group(2) == "==")

    def expand(self, text: Any, ctx: dict[str, Any]) -> str:
        return _EXPR.sub(lambda m: self.lookup(m.group(1), ctx), str(text))

    # --- the run -------------------------------------------------------------------
    def run(self, inputs: dict[str, str], env: dict[str, str]) -> Result:
        declared = self.action.get("inputs", {})
        if unknown := set(inputs) - set(declared):
            raise ValueError(f"inputs {sorted(unknown)} are not declared in action.yml")
        temp = self.home / "runner-temp"
        temp.mkdir(parents=True, exist_ok=True)
        ctx: dict[str, Any] = {
            "inputs": {k: str(inputs.get(k, v.get("default", ""))) for k, v in declared.items()},
            "steps": {},
            # action_repository: empty, as for `uses: ./` (this checkout, not a published ref)
            "github": {
                "action_path": str(self.action_dir),
                "action_repository": "",
                "workspace": str(self.workspace),
            },
            "runner": {"os": "Linux", "temp": str(temp)},
        }
        runner_env = {
            **env,
            "HOME": str(self.home),
            "GITHUB_ACTION_PATH": str(self.action_dir),
            "GITHUB_WORKSPACE": str(self.workspace),
            "RUNNER_OS": "Linux",
            "RUNNER_TEMP": str(temp),
            "CI": "true",
            "GITHUB_ACTIONS": "true",
        }
        github_env = temp / "github_env"
        github_env.write_text("")
        ran, log = [], []
        for i, step in enumerate(self.action["runs"]["steps"]):
            sid = step.get("id", f"step{i}")
            if "if" in step and not self.condition(str(step["if"]), ctx):
                continue
            ran.append(sid)
            if "uses" in step:
                with_ = {k: self.expand(v, ctx) for k, v in step.get("with", {}).items()}
                outputs, text = self._uses(step["uses"], with_)
            else:
                step_env = {
                    **runner_env,
                    **_read_env(github_env),
                    **{k: self.expand(v, ctx) for k, v in step.get("env", {}).items()},
                    "GITHUB_ENV": str(github_env),
                }
                outputs, text = self._run(sid, step, step_env, temp)
            log.append(f"--- {sid}\n{text}")
            ctx["steps"][sid] = {"outputs": outputs, "outcome": "success"}
        outputs = {
            k: self.expand(v["value"], ctx) for k, v in self.action.get("outputs", {}).items()
        }
        return Result(outputs, ran, _read_env(github_env), "\n".join(log), ctx["steps"])

    def _run(
        self, sid: str, step: dict[str, Any], env: dict[str, str], temp: Path
    ) -> tuple[dict[str, str], str]:
        if step.get("shell") != "bash":
            raise NotImplementedError(f"step {sid}: only shell: bash is emulated")
        script, out_file = temp / f"{sid}.sh", temp / f"{sid}.output"
        script.write_text(step["run"])
        out_file.write_text("")
        p = subprocess.run(
            ["bash", "--noprofile", "--norc", "-eo", "pipefail", str(script)],
            cwd=self.workspace,
            env={**env, "GITHUB_OUTPUT": str(out_file)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=900,
        )
        if p.returncode:
            raise StepFailed(sid, p.returncode, p.stdout)
        return _read_env(out_file), p.stdout

    # --- actions/cache, emulated -------------------------------------------------------
    def _uses(self, uses: str, with_: dict[str, str]) -> tuple[dict[str, str], str]:
        name = uses.split("@", 1)[0]
        paths = [self._path(p) for p in with_["path"].splitlines() if p.strip()]
        if name == "actions/cache/restore":
            return self._restore(with_["key"], with_.get("restore-keys", ""), paths)
        if name == "actions/cache/save":
            return self._save(with_["key"], paths)
        raise NotImplementedError(f"uses: {uses} is not emulated")

    def _path(self, p: str) -> Path:
        p = p.strip()
        return Path(p.replace("~", str(self.home), 1) if p.startswith("~") else p)

    def archive(self, key: str, paths: list[Path]) -> Path:
        """Where the entry for ``key`` of these paths is kept. Like actions/cache's cache
        version, the paths are part of the name: an entry saved from other paths is never
        restored (a venv restored elsewhere would not run)."""
        version = hashlib.sha256("\n".join(map(str, paths)).encode()).hexdigest()[:12]
        return self.caches / version / re.sub(r"[^A-Za-z0-9._-]", "_", key) / "cache.tar"

    def _restore(self, key: str, restore_keys: str, paths: list[Path]) -> tuple[dict, str]:
        found, hit = None, ""
        if self.archive(key, paths).is_file():
            found, hit = self.archive(key, paths), "true"
        else:
            for prefix in filter(None, (k.strip() for k in restore_keys.splitlines())):
                entries = self.archive(key, paths).parent.parent.glob("*/cache.tar")
                candidates = sorted(
                    (a for a in entries if a.parent.name.startswith(prefix)),
                    key=lambda a: a.stat().st_mtime_ns,
                    reverse=True,
                )
                if candidates:
                    found, hit = candidates[0], "false"
                    break
        if found is None:
            return {}, f"Cache not found for input keys: {key}"
        with tarfile.open(found) as tar:
            tar.extractall("/", filter="tar")
        return {"cache-hit": hit, "cache-matched-key": found.parent.name}, (
            f"Cache restored from key: {found.parent.name}"
        )

    def _save(self, key: str, paths: list[Path]) -> tuple[dict, str]:
        archive = self.archive(key, paths)
        if archive.exists():
            return {}, f"Failed to save: cache entry {key} already exists"
        archive.parent.mkdir(parents=True)
        with tarfile.open(archive, "w") as tar:
            for p in paths:
                tar.add(p, arcname=str(p).lstrip("/"))
        os.utime(archive, ns=(time.time_ns(), time.time_ns()))
        return {}, f"Cache saved with key: {key}"


def _read_env(path: Path) -> dict[str, str]:
    """A GITHUB_ENV / GITHUB_OUTPUT file: name=value lines and name<<DELIM heredocs."""
    out: dict[str, str] = {}
    lines = iter(path.read_text().splitlines())
    for line in lines:
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delim = line.split("<<", 1)
            body = []
            for more in lines:
                if more == delim:
                    break
                body.append(more)
            out[name] = "\n".join(body)
        elif "=" in line:
            name, value = line.split("=", 1)
            out[name] = value
    return out
