"""What the CLI says, and how it ends (#33, "CLI and output"): messages that are true and
name the right place, one exit-code rule for status and plan, NDJSON that is only NDJSON,
completion that knows values and files, a starter models.toml for the user's project."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tomllib

import pytest

from reconcile.schema import models_schema
from tests.servers import RangeServer

TWO = """
[models.tiny]
source.mock = { org = "acme", model = "tiny", files = ["config.json", "model.safetensors"] }
[models.other]
source.mock = { org = "acme", model = "other", files = ["config.json"] }
"""


# --- init: a starter for the user's project ------------------------------------------------

def test_init_writes_a_starter_for_the_users_project(project):
    """No `#:schema ./schemas/…` (a path only reconcile's own repository has), no words
    about the seed or a fresh clone; the schema it names is the one reconcile ships."""
    assert project.run("init").code == 0
    text = project.manifest.read_text()
    first = text.splitlines()[0]
    assert first == f"#:schema {models_schema()['$id']}", first
    assert "./schemas" not in text and "seed" not in text and "fresh clone" not in text
    assert "test-minimal" not in text and "source.mock" not in text  # no fake models
    tomllib.loads(text)
    assert project.run("check").code == 0
    assert project.run("init").code == 2  # never overwrites without --force


# --- messages that name the right place ------------------------------------------------------

def test_a_typo_of_source_names_its_line_like_every_other_error(project):
    project.write('\n[models.tiny]\nsourc.mock = { org = "a", model = "b", files = [] }\n')
    r = project.run("check")
    assert r.code == 2 and "models.toml:3: models.tiny.sourc: unknown key" in r.err, r.err


def test_an_empty_lock_is_called_empty_not_version_none(project):
    project.write(TWO)
    project.lock.write_text("")
    for command in (["plan"], ["status"]):
        r = project.run(*command)
        assert r.code == 2, r.err
        assert "None" not in r.err and "is empty" in r.err, r.err
        assert "reconcile lock" in r.err


def test_add_with_credentials_in_a_new_directory_names_no_line_of_a_file(project):
    """In a directory without models.toml, `add` refuses a URL with a password without
    pointing at `models.toml:2` (a file that does not exist), and shows no password."""
    r = project.run("add", "http://user:s3cret@127.0.0.1:9/x.bin")
    assert r.code == 2
    assert "models.toml:" not in r.err and "s3cret" not in r.err, r.err
    assert "http://user:s3cret" not in r.err and "credentials" in r.err
    assert not project.manifest.exists()


# --- verify, plan, status: say what is true, one exit-code rule -----------------------------

def test_verify_says_how_many_installed_models_it_checked(project):
    project.write(TWO)
    assert project.run("lock").code == 0
    r = project.run("verify")
    assert r.code == 0
    assert "all installed models verified" not in r.out
    assert "verified 0 of 2 locked models (none installed)" in r.out, r.out
    assert project.run("apply").code == 0
    assert "verified 2 of 2 locked models" in project.run("verify").out


def test_plan_without_a_lock_does_not_say_no_changes_after_listing_new_models(project):
    project.write(TWO)
    assert project.run("apply").code == 0
    project.lock.unlink()
    r = project.run("plan")
    assert "+ tiny: new" in r.out
    assert "No changes" not in r.out, r.out
    assert f"apply only writes {project.lock}." in r.out


def test_status_and_plan_share_one_exit_code_rule(project):
    """Pending work is not a failure: both exit 0, and 1 with --exit-code. A model that
    failed validation is a failure: status exits 1 for it with or without the flag."""
    project.write(TWO)
    for command in ("status", "plan"):
        assert project.run(command).code == 0, command
        assert project.run(command, "--exit-code").code == 1, command
    assert project.run("apply").code == 0
    for command in ("status", "plan"):
        assert project.run(command, "--exit-code").code == 0, command


# --- --progress json: only NDJSON on stderr -------------------------------------------------

def _events(err: str) -> list[dict]:
    """Every stderr line is one JSON object (a stray `error:` line fails here)."""
    return [json.loads(line) for line in err.splitlines()]


def test_progress_json_file_events_name_model_and_file(project):
    project.write(TWO)
    r = project.sh("apply", "--progress", "json")
    assert r.code == 0, r.err
    starts = [e for e in _events(r.err) if e["event"] == "start"]
    assert {(e["model"], e["file"]) for e in starts} == {
        ("tiny", "config.json"), ("tiny", "model.safetensors"), ("other", "config.json")}
    done = [e for e in _events(r.err) if e["event"] == "done"]
    assert {(e["model"], e["file"]) for e in done} == {(e["model"], e["file"]) for e in starts}


def test_progress_json_failures_and_errors_are_events_naming_model_and_file(project):
    data = os.urandom(1000)
    srv = RangeServer({"/w.bin": data})
    with srv as url:
        project.write(TWO + f'[models.w]\nsource.url = {{ url = "{url}/w.bin", sha256 ='
                      f' "{hashlib.sha256(data).hexdigest()}" }}\nvalidation.preset = "none"\n'
                      'network.retry = { maxAttempts = 1 }\n')
        assert project.run("lock").code == 0
        del srv.files["/w.bin"]  # gone from the server since it was locked
        r = project.sh("apply", "--progress", "json")
    assert r.code == 1
    events = _events(r.err)  # no `error:` or `not installed` line in between
    summary = next(e for e in events if e["event"] == "summary")
    (failure,) = summary["failures"]
    assert failure["model"] == "w" and failure["file"] == "w.bin", failure
    assert failure["action"] == "fetch" and "404" in failure["message"], failure
    assert events[-1]["event"] == "error" and events[-1]["exit_code"] == 1
    assert "not installed: w" in events[-1]["message"]
    # an error before anything runs (a stale lock with --locked) is one event too
    project.write(TWO)
    r = project.sh("apply", "--progress", "json", "--locked")
    assert r.code == 1
    (event,) = _events(r.err)
    assert event["event"] == "error" and "out of date" in event["message"]
    assert event["hint"].startswith("run `reconcile lock`"), event


# --- --user: what came from the system store says so ----------------------------------------

def test_objects_copied_from_the_system_store_are_not_called_fetched(project, tmp_path,
                                                                     monkeypatch):
    """plan names where each fetch comes from; the log and the summary say "copied from
    the system store", not "fetched" (nothing crossed the network)."""
    system = tmp_path / "system"
    monkeypatch.setenv("RECONCILE_SYSTEM_DIR", str(system))
    monkeypatch.setenv("RECONCILE_STORE", str(system / "store"))
    project.write(TWO)
    assert project.run("apply").code == 0
    monkeypatch.setenv("RECONCILE_STORE", str(tmp_path / "mine"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "my-hub"))
    monkeypatch.setenv("RECONCILE_PEER_STORES", str(system / "store"))
    r = project.run("plan")
    assert "config.json  (" in r.out and "for tiny from the system store" in r.out, r.out
    r = project.sh("apply", "--progress", "plain")
    assert r.code == 0, r.err
    assert "copied model.safetensors from the system store (168 B)" in r.err, r.err
    assert "\nfetched " not in "\n" + r.err, r.err
    assert "Applied: 0 fetched (0 B), 3 copied from the system store," in r.out, r.out
    assert "fetching 3 files" in r.err


def test_sizes_are_one_unit_and_one_file_is_singular(project):
    project.write('[models.one]\nsource.mock = { files = [{ path = "w.bin", size = 3145728 }] }\n'
                  'validation.preset = "none"\n')
    r = project.sh("apply", "--progress", "plain")
    assert r.code == 0, r.err
    assert "fetching 1 file (3.0 MiB)" in r.err, r.err
    from reconcile.ui import RichProgress

    bars = RichProgress(color="never")
    columns = [type(c).__name__ for c in bars.progress.columns]
    assert "TransferSpeedColumn" not in columns  # rich's MB/s
    download = next(c for c in bars.progress.columns if type(c).__name__ == "DownloadColumn")
    assert download.binary_units  # MiB, as the lines and the summary say


# --- completion: values, files, keys for remove ---------------------------------------------

def _bash_complete(project, *words: str) -> list[str]:
    import subprocess
    import sys

    script = project.sh("completion", "bash").out
    line = " ".join(f'"{w}"' for w in words)
    code = (f'reconcile() {{ {sys.executable} -m reconcile "$@"; }}\n{script}\n'
            f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _reconcile;"
            ' printf "%s\\n" "${COMPREPLY[@]}"')
    r = subprocess.run(["bash", "-c", code], capture_output=True, text=True, cwd=project.dir)
    return r.stdout.split()


def test_bash_completion_knows_values_files_and_keys_for_remove(project):
    project.write(TWO)
    (project.dir / "team.toml").write_text("")
    assert _bash_complete(project, "reconcile", "remove", "ti") == ["tiny"]
    assert _bash_complete(project, "reconcile", "apply", "--progress", "") == [
        "auto", "bars", "plain", "json", "none"]
    assert _bash_complete(project, "reconcile", "apply", "--color", "n") == ["never"]
    # the word after --cache is its value, not the command: apply's options follow
    assert _bash_complete(project, "reconcile", "--cache", "off", "apply", "--pr") == [
        "--progress", "--prune"]
    assert _bash_complete(project, "reconcile", "-f", "te") == ["team.toml"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="needs fish")
def test_fish_completion_knows_values_and_files(project, tmp_path):
    import subprocess

    fish = tmp_path / "c.fish"
    fish.write_text(project.sh("completion", "fish").out)
    (project.dir / "team.toml").write_text("")
    r = subprocess.run(["fish", "-c", f"source {fish}; complete -C 'reconcile apply --progress ';"
                        " complete -C 'reconcile --manifest te'"],
                       capture_output=True, text=True, cwd=project.dir,
                       env={**os.environ, "HOME": str(tmp_path)})
    got = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert got == ["auto", "bars", "json", "none", "plain", "team.toml"], r.stdout + r.stderr
