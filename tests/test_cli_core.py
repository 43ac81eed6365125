"""End to end through the CLI with the mock source: lock → plan → apply → status …"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock

MINIMAL = """
[models.tiny]
source.mock = { org = "acme", model = "tiny", files = ["config.json", "model.safetensors", "sub/notes.txt"] }
"""


def test_apply_installs_links_and_second_apply_does_nothing(project):
    project.write(MINIMAL)
    r = project.run("apply")
    assert r.code == 0, r.err
    assert "3 fetched" in r.out and "1 linked" in r.out
    snap = project.run("path", "tiny").out.strip()
    assert snap.startswith(str(project.cache / "models--acme--tiny" / "snapshots"))
    assert json.loads((project.cache / "models--acme--tiny" / "snapshots").joinpath(
        os.listdir(project.cache / "models--acme--tiny" / "snapshots")[0], "config.json"
    ).read_text())["model_type"] == "bert"
    again = project.run("apply")
    assert again.code == 0 and "Nothing to do" in again.out
    plan = project.run("plan", "--exit-code")
    assert plan.code == 0 and "No changes" in plan.out


def test_apply_locks_first_and_locked_refuses_stale(project):
    project.write(MINIMAL)
    assert not project.lock.exists()
    r = project.run("apply", "--locked")
    assert r.code == 1 and "out of date" in r.err and "tiny (new)" in r.err
    assert project.run("apply").code == 0
    assert "tiny" in read_lock(project.lock).models


def test_status_json_reports_ok_only_when_installed_and_linked(project):
    project.write(MINIMAL)
    project.run("lock")
    rows = json.loads(project.run("status", "--json").out)
    assert rows[0]["key"] == "tiny" and rows[0]["state"] == "missing"
    project.run("apply")
    rows = json.loads(project.run("status", "--json").out)
    (row,) = rows
    assert row["state"] == "ok"
    assert row["hf_repo_id"] == "acme/tiny" and len(row["hf_revision"]) == 40
    assert row["hash"].startswith("sha256-") and os.path.isdir(row["store_path"])
    # break the link: status must no longer say ok, and plan shows a relink
    snap = project.cache / "models--acme--tiny" / "snapshots" / row["hf_revision"]
    (snap / "config.json").unlink()
    assert json.loads(project.run("status", "--json").out)[0]["state"] == "unlinked"
    plan = project.run("plan", "--exit-code")
    assert plan.code == 1 and "~ relink" in plan.out
    assert project.run("apply").code == 0
    assert json.loads(project.run("status", "--json").out)[0]["state"] == "ok"


def test_lock_check_names_new_stale_and_removed(project):
    project.write(MINIMAL + '\n[models.other]\nsource.mock = { model = "o", files = ["a.bin"] }\n')
    assert project.run("lock").code == 0
    assert project.run("lock", "--check").code == 0
    # comment and formatting edits do not make the lock stale
    text = project.manifest.read_text()
    project.manifest.write_text("# a comment\n" + text.replace(" = ", "=") + "\n\n")
    assert project.run("lock", "--check").code == 0
    project.write(MINIMAL.replace("tiny\", files", "tiny2\", files")
                  + '\n[models.new]\nsource.mock = { files = [] }\n')
    r = project.run("lock", "--check")
    assert r.code == 1
    assert "stale: tiny" in r.out and "new: new" in r.out and "removed: other" in r.out


def test_unchanged_models_keep_pins_and_upgrade_reresolves(project, monkeypatch):
    project.write(MINIMAL)
    project.run("lock")
    before = project.lock.read_text()
    assert project.run("lock").code == 0
    assert project.lock.read_text() == before
    r = project.run("lock", "--upgrade", "tiny")
    assert r.code == 0 and "1 resolved" in r.out
    r = project.run("lock", "--upgrade", "nope")
    assert r.code == 2 and "nope" in r.err


def test_declared_hash_mismatch_is_an_error_showing_both_and_installs_nothing(project):
    project.write(MINIMAL + 'hash = "sha256-' + "A" * 43 + '="\n')
    r = project.run("apply")
    assert r.code == 1
    assert "declared: sha256-AAAA" in r.err and "resolved: sha256-" in r.err
    assert not (project.cache / "models--acme--tiny").exists()
    assert not project.lock.exists()


def test_declared_hash_that_matches_is_accepted(project):
    project.write(MINIMAL)
    project.run("lock")
    h = read_lock(project.lock).models["tiny"].hash
    project.write(MINIMAL + f'hash = "{h}"\n')
    assert project.run("apply").code == 0


def test_lock_is_sorted_deterministic_and_diff_friendly(project):
    project.write('[models.b]\nsource.mock = { files = ["z.bin", "a.bin"] }\n'
                  '[models.a]\nsource.mock = { model = "m", files = ["c.json"] }\n')
    project.run("lock")
    text = project.lock.read_text()
    assert text.index("[models.a]") < text.index("[models.b]")
    assert text.index('path = "a.bin"') < text.index('path = "z.bin"')
    doc = tomllib.loads(text)
    assert doc["version"] == 1
    # one line per file
    assert sum(1 for line in text.splitlines() if line.strip().startswith("{ path")) == 3
    project.lock.unlink()
    project.run("lock")
    assert project.lock.read_text() == text


def test_corrupt_lock_is_exit_2_with_a_hint(project):
    project.write(MINIMAL)
    project.lock.write_text("version = 1\n[models.tiny]\nname = 3\n")
    r = project.sh("apply")
    assert r.code == 2 and "reconcile lock" in r.err and "Traceback" not in r.err


def test_verify_detects_corruption_and_repair_fixes_it(project):
    project.write(MINIMAL)
    project.run("apply")
    assert project.run("verify").code == 0
    store_path = json.loads(project.run("status", "--json").out)[0]["store_path"]
    target = os.path.join(store_path, "sub", "notes.txt")
    os.chmod(target, 0o644)
    with open(target, "r+b") as f:
        f.write(b"X")
    r = project.run("verify")
    assert r.code == 1 and "tiny" in r.out and "sub/notes.txt" in r.out
    r = project.run("verify", "--repair")
    assert r.code == 0
    assert project.run("verify").code == 0


def test_gc_keeps_what_registered_locks_need(project):
    project.write(MINIMAL + '\n[models.extra]\nsource.mock = { model = "x", files = ["x.bin"] }\n')
    project.run("apply")
    project.write(MINIMAL)
    project.run("lock")
    dry = project.run("gc", "--dry-run")
    assert "would delete 1 model trees, 1 objects" in dry.out
    r = project.run("gc")
    assert r.code == 0 and "deleted 1 model trees" in r.out
    assert project.run("verify").code == 0
    assert project.run("apply").out.startswith("Nothing to do")


def test_gc_drops_the_lock_files_of_earlier_versions_only(project):
    project.write(MINIMAL)
    assert project.run("apply").code == 0
    locks = project.store / "locks"
    for old in ("obj-1234.lock", "model-tiny.lock", "objects.claims"):  # a file per name
        (locks / old).touch()
    kept = {p.name for p in locks.iterdir()} - {"obj-1234.lock", "model-tiny.lock",
                                                  "objects.claims"}
    assert project.run("gc", "--dry-run").code == 0 and (locks / "obj-1234.lock").exists()
    assert project.run("gc").code == 0
    assert {p.name for p in locks.iterdir()} == kept and "names.locks" in kept
    assert project.run("apply").out.startswith("Nothing to do")


def test_prune_unlinks_only_what_this_project_linked(project):
    project.write(MINIMAL + '\n[models.extra]\nsource.mock = { model = "x", files = ["x.bin"] }\n')
    project.run("apply")
    foreign = project.cache / "models--someone--else" / "refs"
    foreign.mkdir(parents=True)
    (foreign / "main").write_text("0" * 40)
    project.write(MINIMAL)
    plan = project.run("plan", "--prune")
    assert "- unlink   extra" in plan.out
    assert project.run("apply", "--prune").code == 0
    assert not (project.cache / "models--test--x").exists()
    assert (project.cache / "models--acme--tiny").exists()
    assert (foreign / "main").read_text() == "0" * 40


def test_env_prints_exports(project):
    r = project.run("env")
    assert f"export HF_HUB_CACHE={project.cache}" in r.out and "HF_HUB_OFFLINE=1" in r.out


def test_init_writes_a_starter_that_applies(project):
    assert project.run("init").code == 0
    assert "reconcile add" in project.manifest.read_text()
    assert project.run("init").code == 2
    r = project.run("apply")
    assert r.code == 0 and "0 models up to date" in r.out


@pytest.mark.parametrize("args", [["bogus"], ["apply", "--jobs", "x"], ["path"]])
def test_usage_errors_exit_2(project, args):
    assert project.sh(*args).code == 2


def test_two_models_claiming_one_ref_with_different_commits_is_an_error(project):
    project.write('[models.a]\nsource.mock = { org = "o", model = "same", files = ["a.bin"] }\n'
                  '[models.b]\nsource.mock = { org = "o", model = "same", files = ["b.bin"] }\n')
    r = project.run("lock")
    assert r.code == 2 and "'a' and 'b' both claim ref 'main'" in r.err
    project.write('[models.a]\nsource.mock = { org = "o", model = "same", files = ["a.bin"] }\n'
                  '[models.b]\nsource.mock = { org = "o", model = "same", files = ["b.bin"] }\n'
                  'integration.huggingface.refs = ["b"]\n')
    assert project.run("apply").code == 0
    refs = project.cache / "models--o--same" / "refs"
    assert (refs / "main").read_text() != (refs / "b").read_text()


def test_apply_never_touches_files_it_did_not_create(project):
    project.write(MINIMAL)
    repo = project.cache / "models--acme--tiny"
    mine = repo / "snapshots" / "0123456789012345678901234567890123456789"
    mine.mkdir(parents=True)
    (mine / "user-file.txt").write_text("keep me")
    (repo / "refs").mkdir()
    (repo / "refs" / "dev").write_text("0123456789012345678901234567890123456789")
    assert project.run("apply").code == 0
    project.write(MINIMAL.replace('"sub/notes.txt"', ""))
    assert project.run("apply", "--prune").code == 0
    assert (mine / "user-file.txt").read_text() == "keep me"
    assert (repo / "refs" / "dev").read_text() == "0123456789012345678901234567890123456789"


def test_hash_command_matches_the_lock(project):
    project.write(MINIMAL)
    project.run("apply")
    row = json.loads(project.run("status", "--json").out)[0]
    assert project.run("hash", row["store_path"]).out.strip() == row["hash"]
    assert project.run("hash", "/nonexistent").code == 2


def test_progress_bars_only_on_a_terminal(project, tmp_path):
    """Under a pseudo-terminal rich draws bars; piped output is one summary line."""
    import shutil
    import subprocess
    import sys

    project.write('[models.big]\nsource.mock = { files = [{ path = "w.bin", size = 8388608 }] }\n'
                  'network = { bandwidth = { limit = "16M" } }\n')
    piped = project.sh("apply")
    assert piped.code == 0 and piped.out.count("\n") == 1 and "\x1b[" not in piped.out + piped.err
    if shutil.which("script") is None:
        pytest.skip("needs util-linux script for a pseudo-terminal")
    from reconcile.store import remove_tree

    remove_tree(project.store)  # fetch again, this time watched
    cmd = f"{sys.executable} -m reconcile -f {project.manifest} apply"
    r = subprocess.run(["script", "-qec", cmd, "/dev/null"], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0
    assert "\x1b[" in r.stdout and "w.bin" in r.stdout  # a live bar named after the file
    import re

    colour = re.compile(r"\x1b\[[0-9;]*(3[0-8]|9[0-7])[0-9;]*m")  # a foreground colour
    assert colour.search(r.stdout)
    for how in ({"NO_COLOR": "1"}, {"RECONCILE_COLOR_FLAG": "--color never"}):
        remove_tree(project.store)
        flag = how.get("RECONCILE_COLOR_FLAG", "")
        r = subprocess.run(["script", "-qec", f"{cmd} {flag}", "/dev/null"], capture_output=True,
                           text=True, timeout=60, env={**os.environ, **how})
        assert r.returncode == 0 and "w.bin" in r.stdout
        assert not colour.search(r.stdout), how


def test_store_copies_when_hard_links_cannot_cross_filesystems(project, monkeypatch):
    import errno

    from reconcile import store as store_mod

    def no_link(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(store_mod.os, "link", no_link)
    project.write(MINIMAL)
    assert project.run("apply").code == 0
    row = json.loads(project.run("status", "--json").out)[0]
    assert row["state"] == "ok"
    cfg = os.path.join(row["store_path"], "config.json")
    assert os.stat(cfg).st_nlink == 1  # a copy, not a link
    assert project.run("verify").code == 0


def test_models_toml_is_found_in_a_parent_up_to_the_repository_root(project):
    import subprocess
    import sys

    project.write(MINIMAL)
    (project.dir / ".git").mkdir()
    deep = project.dir / "src" / "pkg"
    deep.mkdir(parents=True)
    run = [sys.executable, "-m", "reconcile"]
    r = subprocess.run([*run, "lock"], cwd=deep, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert project.lock.exists() and not (deep / "models.lock").exists()
    nested = deep / "models.toml"  # the nearest one wins
    nested.write_text("")
    r = subprocess.run([*run, "lock"], cwd=deep, capture_output=True, text=True)
    assert r.returncode == 0 and (deep / "models.lock").exists()
    (project.dir / "sub-repo" / ".git").mkdir(parents=True)  # the search stops at a repo root
    r = subprocess.run([*run, "lock", "--check"], cwd=project.dir / "sub-repo",
                       capture_output=True, text=True)
    assert r.returncode == 2 and "models.toml: not found" in r.stderr


def test_flags_are_strict_and_documented(project):
    project.write(MINIMAL)
    assert project.run("lock", "-f", str(project.manifest)).code == 0  # -f after the command
    assert project.run("apply", "--prun").code == 2  # no abbreviations
    for bad in (["--jobs", "0"], ["-j", "-3"], ["-j", "many"], ["-j", "257"]):
        r = project.run("apply", *bad)
        assert r.code == 2 and "--jobs" in r.err, bad
    assert not project.store.exists() or not any((project.store / "objects").rglob("*.*"))
    from reconcile import __version__
    from reconcile.cli import _parser

    with pytest.raises(SystemExit):
        _parser().parse_args(["--version"])
    assert __version__ in project.capsys.readouterr().out
    parser = _parser()
    subs = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for name, sub in [("reconcile", parser), *subs.choices.items()]:
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, (name, action.option_strings)


def test_a_closed_pipe_ends_quietly_with_the_shell_status(project):
    import subprocess
    import sys

    project.write(MINIMAL)
    assert project.run("apply").code == 0
    p = subprocess.Popen([sys.executable, "-m", "reconcile", "-f", str(project.manifest),
                          "status", "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before a byte was written (`| head -0`)
    err = p.stderr.read().decode()
    assert p.wait(timeout=30) == 141
    assert err == "", err


def test_a_table_declared_twice_names_its_key(project):
    project.write(MINIMAL + '\n[models.tiny]\nname = "again"\n')
    r = project.run("lock")
    assert r.code == 2 and "models.tiny: declared twice" in r.err
    assert "Cannot declare" not in r.err


def test_plan_shows_what_apply_will_do_when_the_lock_is_stale_or_missing(project):
    """plan resolves in memory (writes no lock) and shows the lock's changes, then the
    same actions apply will run; --locked plans against the lock as it is."""
    project.write(MINIMAL)
    r = project.run("plan", "--exit-code")
    assert r.code == 1, r.err
    assert "+ tiny: new: mock" in r.out and "+ fetch    config.json" in r.out
    assert not project.lock.exists()
    assert project.run("apply").code == 0
    assert project.run("plan", "--exit-code").code == 0
    project.write(MINIMAL.replace('"sub/notes.txt"]', '"sub/notes.txt", "LICENSE"]'))
    before = project.lock.read_text()
    r = project.run("plan", "--exit-code")
    assert r.code == 1 and "~ tiny:" in r.out and "+ fetch    LICENSE" in r.out
    assert "No changes" not in r.out and project.lock.read_text() == before
    applied = project.run("apply")
    assert "1 fetched" in applied.out  # exactly what plan announced
    r = project.run("plan", "--locked")
    assert r.code == 0 and "No changes" in r.out
    project.write(MINIMAL)
    r = project.run("plan", "--locked")
    assert r.code == 1 and "out of date" in r.err


def test_narrowing_files_removes_what_the_lock_no_longer_lists(project):
    """A narrowed `files` glob must not leave the old files in the snapshot: the next
    apply removes what reconcile created for the earlier version, and plan shows it."""
    project.write(MINIMAL)
    assert project.run("apply").code == 0
    snap = Path(project.run("path", "tiny").out.strip())
    assert (snap / "sub" / "notes.txt").exists()
    project.write(MINIMAL.replace(', "sub/notes.txt"]', "]"))
    assert project.run("lock").code == 0
    r = project.run("plan")
    assert "- unlink   tiny (earlier version)" in r.out, r.out
    assert project.run("apply").code == 0
    snap = Path(project.run("path", "tiny").out.strip())
    assert not (snap / "sub").exists()
    assert (snap / "config.json").exists() and (snap / "model.safetensors").exists()
    assert project.run("status", "--exit-code").code == 0
    assert "unlink" not in project.run("plan").out


def test_progress_json_is_ndjson_with_stable_events(project):
    project.write('[models.big]\nsource.mock = { files = ["config.json", { path = "w.bin",'
                  ' size = 3145728 }] }\nvalidation.preset = "none"\n')
    r = project.sh("apply", "--progress", "json")
    assert r.code == 0, r.err
    events = [json.loads(line) for line in r.err.splitlines()]  # every line parses
    kinds = [e["event"] for e in events]
    assert kinds[0] == "plan" and kinds[-1] == "summary"
    assert events[0]["fetch"] == 2 and events[0]["bytes"] > 3_000_000
    files = {e["file"] for e in events if e["event"] == "start"}
    assert files == {"config.json", "w.bin"}
    assert {e["file"] for e in events if e["event"] == "done"} == files
    assert all(e["done"] <= e["total"] for e in events if e["event"] == "bytes")
    assert events[-1]["ok"] is True and all("t" in e for e in events)
    assert "Applied:" in r.out  # the human summary stays on stdout


def test_a_log_gets_a_line_per_file_without_terminal_codes(project):
    project.write(MINIMAL)
    r = project.sh("apply")  # stderr is a pipe: plain lines
    assert r.code == 0
    assert "fetched config.json" in r.err and "\x1b[" not in r.err
    project.write(MINIMAL + '[models.two]\nsource.mock = { org = "acme", model = "two",'
                  ' files = ["config.json"] }\n')
    quiet = project.sh("apply", "--progress", "none")
    assert quiet.code == 0 and "1 fetched" in quiet.out and quiet.err == ""


def test_thousands_of_small_files_are_one_line_per_model(project):
    files = ", ".join(f'"d/f{i:04d}.bin"' for i in range(300))
    project.write(MINIMAL + f'[models.many]\nsource.mock = {{ model = "many", files = [{files}] }}\n')
    r = project.sh("apply")
    assert r.code == 0, r.err
    assert "fetched many: 300 small files" in r.err and "f0001.bin" not in r.err
    # in a plan this big, a model of a few files is one line too
    assert "fetched tiny: 3 small files" in r.err and "fetched config.json" not in r.err


def test_hundreds_of_models_of_few_files_are_one_line_per_model(project):
    project.write("".join(f'[models.m{i:03d}]\nsource.mock = {{ model = "m{i:03d}", files ='
                          ' ["config.json", "a.bin", "b.bin"] }\n' for i in range(80)))
    r = project.sh("apply")
    assert r.code == 0, r.err
    lines = [ln for ln in r.err.splitlines() if ln.startswith("fetched ")]
    assert len(lines) == 80 and "fetched m007: 3 small files" in r.err, lines[:5]
    assert "fetched config.json" not in r.err


def test_bash_completion_knows_commands_options_and_model_keys(project):
    import shutil
    import subprocess
    import sys

    project.write(MINIMAL + '[models.tokenizer]\nsource.mock = { files = ["a.json"] }\n')
    script = project.sh("completion", "bash").out
    reconcile = f"{sys.executable} -m reconcile"

    def complete(*words: str) -> list[str]:
        line = " ".join(f'"{w}"' for w in words)
        code = (f"reconcile() {{ {reconcile} \"$@\"; }}\n{script}\n"
                f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _reconcile;"
                ' printf "%s\\n" "${COMPREPLY[@]}"')
        r = subprocess.run(["bash", "-c", code], capture_output=True, text=True,
                           cwd=project.dir)
        return r.stdout.split()

    assert shutil.which("bash")
    assert complete("reconcile", "ap") == ["apply"]
    assert complete("reconcile", "apply", "--pr") == ["--progress", "--prune"]
    assert complete("reconcile", "path", "t") == ["tiny", "tokenizer"]
    assert complete("reconcile", "-f", str(project.manifest), "verify", "to") == ["tokenizer"]



@pytest.mark.skipif(__import__("shutil").which("zsh") is None or
                    __import__("shutil").which("fish") is None, reason="needs zsh and fish")
def test_zsh_and_fish_completion_run_in_the_real_shells(project, tmp_path):
    import subprocess
    import sys

    project.write(MINIMAL + '[models.tokenizer]\nsource.mock = { files = ["a.json"] }\n')
    shim = tmp_path / "bin"
    shim.mkdir()
    (shim / "reconcile").write_text(f'#!/bin/sh\nexec {sys.executable} -m reconcile "$@"\n')
    (shim / "reconcile").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}:{os.environ['PATH']}", "HOME": str(tmp_path)}
    fish = tmp_path / "c.fish"
    fish.write_text(project.sh("completion", "fish").out)
    r = subprocess.run(["fish", "-c", f"source {fish}; complete -C 'reconcile ap';"
                        " complete -C 'reconcile path t'; complete -C 'reconcile apply --pr'"],
                       capture_output=True, text=True, cwd=project.dir, env=env)
    got = [line.split("\t")[0] for line in r.stdout.splitlines()]
    assert got == ["apply", "tiny", "tokenizer", "--progress", "--prune"], r.stdout + r.stderr
    zsh = tmp_path / "c.zsh"
    zsh.write_text(project.sh("completion", "zsh").out)
    # bashcompinit runs the function under `emulate sh`, as here
    code = (f"source {zsh}; emulate sh -c 'COMP_WORDS=(reconcile path t); COMP_CWORD=2;"
            ' _reconcile; printf "%s\\n" "${COMPREPLY[@]}"\'')
    r = subprocess.run(["zsh", "-f", "-c", code], capture_output=True, text=True,
                       cwd=project.dir, env=env)
    # zsh's compgen leaves prefix matching to compadd, which shows only these:
    assert [w for w in r.stdout.split() if w.startswith("t")] == ["tiny", "tokenizer"], r.stdout
    assert "--manifest" in r.stdout.split() and "apply" not in r.stdout.split()


def test_a_bad_manifest_writes_nothing(project):
    """A typo in models.toml is found before anything touches the disk: no store, no HF
    cache, no lock."""
    project.write('''
        [models.tiny]
        sourc.mock = { org = "test", model = "tiny", files = ["config.json"] }
    ''')
    for command in (["apply"], ["lock"], ["plan"], ["apply", "--offline"]):
        r = project.run(*command)
        assert r.code == 2, (command, r.err)
        assert not project.store.exists(), command
        assert not project.cache.exists(), command
        assert not project.lock.exists(), command
