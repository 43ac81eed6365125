"""What the CLI says, and how it ends (#33, "CLI and output"): messages that are true and
name the right place, one exit-code rule for status and plan, NDJSON that is only NDJSON,
completion that knows values and files, a starter models.toml for the user's project."""

from __future__ import annotations

import tomllib

from reconcile.schema import models_schema

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
