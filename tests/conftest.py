"""Shared fixtures: every test gets its own store, HF cache and project directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from reconcile.cli import main

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Result:
    code: int
    out: str
    err: str


@dataclass
class Project:
    dir: Path
    store: Path
    cache: Path
    capsys: pytest.CaptureFixture[str]
    # True: run() uses this project's store and HF cache, not the environment's (another
    # machine, in the same test)
    own_store: bool = False

    @property
    def manifest(self) -> Path:
        return self.dir / "models.toml"

    @property
    def lock(self) -> Path:
        return self.dir / "models.lock"

    def write(self, text: str) -> Path:
        self.manifest.write_text(textwrap.dedent(text))
        return self.manifest

    def run(self, *args: str) -> Result:
        """The CLI in-process (fast); output captured."""
        self.capsys.readouterr()
        saved = {k: os.environ.get(k) for k in ("RECONCILE_STORE", "HF_HUB_CACHE")}
        if self.own_store:
            os.environ.update(RECONCILE_STORE=str(self.store), HF_HUB_CACHE=str(self.cache))
        try:
            code = main(["-f", str(self.manifest), *args])
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        cap = self.capsys.readouterr()
        return Result(code, cap.out, cap.err)

    def spawn(self, *args: str, **kw) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-m", "reconcile", "-f", str(self.manifest), *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy(), **kw,
        )

    def sh(self, *args: str, timeout: float = 120) -> Result:
        """The CLI as a separate process: real exit codes, real stderr."""
        p = self.spawn(*args)
        out, err = p.communicate(timeout=timeout)
        return Result(p.returncode, out, err)


# --- honest CI: a missing peer is a failure, not a skip ---------------------------------
# .ci/run sets RECONCILE_REQUIRE_PEERS=1: then a test that would skip because a real peer
# (nginx, tinyproxy, nix, olah, git-lfs, torch, onnx, keras, script …) is missing fails
# instead, so CI cannot go green without ever talking to them. Skips that say "not
# applicable here:" (a filesystem without O_DIRECT, say) are about the machine, not a
# missing peer: they stay skips only for the tests RECONCILE_ALLOWED_SKIPS names (.ci/run
# keeps that list, short), so a test that must run in CI (the --system test as root) cannot
# quietly skip there. Without RECONCILE_REQUIRE_PEERS, developers may run what they have.
NOT_APPLICABLE = "not applicable here:"


def _require_peers() -> bool:
    return os.environ.get("RECONCILE_REQUIRE_PEERS", "") not in ("", "0")


def _allowed_to_skip(nodeid: str) -> bool:
    """Named in RECONCILE_ALLOWED_SKIPS (whitespace-separated `file::test` ids; a
    parametrized test is named without its parameters)."""
    allowed = os.environ.get("RECONCILE_ALLOWED_SKIPS", "").split()
    return nodeid.split("[", 1)[0] in allowed


def _skip_reason(rep) -> str:
    longrepr = rep.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def _missing_peer(rep) -> str | None:
    if not (_require_peers() and rep.skipped) or hasattr(rep, "wasxfail"):
        return None
    reason = _skip_reason(rep)
    if NOT_APPLICABLE not in reason:
        return reason
    if _allowed_to_skip(rep.nodeid):
        return None
    return f"{reason} (not in RECONCILE_ALLOWED_SKIPS, the list in .ci/run)"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if (reason := _missing_peer(rep)) is not None:
        rep.outcome = "failed"
        rep.longrepr = f"missing peer with RECONCILE_REQUIRE_PEERS=1: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    if (reason := _missing_peer(rep)) is not None:  # a module-level importorskip
        rep.outcome = "failed"
        rep.longrepr = f"missing peer with RECONCILE_REQUIRE_PEERS=1: {reason}"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> Project:
    d = tmp_path / "proj"
    d.mkdir()
    store, cache = tmp_path / "store", tmp_path / "hub"
    monkeypatch.setenv("RECONCILE_STORE", str(store))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("RECONCILE_VALIDATION", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.chdir(d)
    return Project(d, store, cache, capsys)
