"""models.lock arrives in pull requests: nothing it says may reach outside the store and
the HF cache, and a lock whose files do not give its hash is refused (exit 2, naming the
model and the field, never a traceback)."""

from __future__ import annotations

import os
import re
import subprocess
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconcile import treehash
from reconcile.lockfile import LockedFile, check_model, dumps, parse_lock, read_lock

MANIFEST = """
[models.m]
source.mock = { org = "acme", model = "tiny", files = ["config.json", "model.safetensors", "sub/a.txt"] }
validation.preset = "none"
"""


def snapshot(root: Path, skip: tuple[Path, ...]) -> dict[str, tuple]:
    """Every path under root (outside ``skip``) with its kind, size and link target."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(dirpath, d) not in skip]
        for name in dirs + files:
            p = Path(dirpath, name)
            st_ = p.lstat()
            out[str(p)] = (st_.st_mode, st_.st_size,
                           os.readlink(p) if p.is_symlink() else None)
    return out


def locked(project) -> str:
    project.write(MANIFEST)
    assert project.run("lock").code == 0
    return project.lock.read_text()


def rewrite(text: str, edit, *, rehash: bool = True) -> str:
    """Apply ``edit`` to the lock's files of model m; recompute its hash unless told not to
    (so that the check under test is the field check, not the hash check)."""
    lock = parse_lock(text.encode())
    m = lock.models["m"]
    files = tuple(edit(list(m.files)))
    new_hash = treehash.tree_hash(f.entry() for f in files) if rehash else m.hash
    lock.models["m"] = type(m)(**{**m.__dict__, "files": files, "hash": new_hash})
    return dumps(lock)


def raw_replace(text: str, old: str, new: str) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


@pytest.mark.parametrize("evil", ["../../../../evil.json", "/tmp/evil.json", "sub/../../x",
                                  "a\\b", "./x", ".git/config", "sub/.GIT/hooks/pre-commit"])
def test_a_path_outside_the_model_is_refused_and_nothing_is_written(project, tmp_path, evil):
    text = locked(project)
    text = raw_replace(text, 'path = "config.json"', f'path = "{evil}"'.replace("\\", "\\\\"))
    project.lock.write_text(text)
    before = snapshot(tmp_path, (project.store,))
    for args in (("apply",), ("lock", "--check"), ("status",), ("plan",)):
        r = project.run(*args)
        assert r.code == 2, (args, r.out, r.err)
        assert "models.m.files[0].path" in r.err and "Traceback" not in r.err
    assert snapshot(tmp_path, (project.store,)) == before
    assert not Path("/tmp/evil.json").exists()


def test_a_symlink_entry_must_stay_inside_the_model(project, tmp_path):
    text = locked(project)
    for target in ("../../../../../etc/passwd", "/etc/passwd", "sub/../../x"):
        evil = rewrite(text, lambda fs, t=target: [*fs, LockedFile("link", type="l", target=t)])
        project.lock.write_text(evil)
        r = project.run("apply")
        assert r.code == 2 and "models.m.files[" in r.err and "outside the model" in r.err
    inside = rewrite(text, lambda fs: [*fs, LockedFile("sub/link", type="l", target="../config.json")])
    check_model(parse_lock(inside.encode()).models["m"])  # a link inside the tree is fine


def test_nothing_may_be_placed_below_a_symlink(project):
    """A link to a directory inside the tree, then a file through it, would let a second
    link's relative target escape: refused whatever the targets say."""
    text = locked(project)
    evil = rewrite(text, lambda fs: [*fs, LockedFile("d", type="l", target="sub"),
                                     LockedFile("d/x", 1, "0" * 64)])
    project.lock.write_text(evil)
    r = project.run("apply")
    assert r.code == 2 and "lies below 'd'" in r.err


def test_a_file_list_that_does_not_give_the_hash_is_refused(project):
    text = locked(project)
    sneaky = rewrite(text, lambda fs: [LockedFile(f.path, f.size, "ab" * 32) if f.path ==
                                       "config.json" else f for f in fs], rehash=False)
    project.lock.write_text(sneaky)
    r = project.run("apply")
    assert r.code == 2 and "models.m.hash" in r.err and "file list was edited" in r.err
    assert not any((project.store / "objects" / "sha256").glob("abab*"))


@pytest.mark.parametrize("old,new,field", [
    ('hash = "sha256-', 'hash = "nothex', "models.m.hash"),
    ('sha256 = "', 'sha256 = "../../', "sha256"),
    ('fingerprint = "sha256:', 'fingerprint = "x', "models.m.fingerprint"),
    ('name = "m"', 'name = "../m"', "models.m.name"),
    ('commit = "', 'commit = "../', "models.m.hf.commit"),
    ('refs = ["main"]', 'refs = ["../../../ESCAPED"]', "models.m.hf.refs"),
    ('refs = ["main"]', 'refs = "main"', "models.m.hf.refs"),
    ('repo = "acme/tiny"', 'repo = "../../acme"', "models.m.hf.repo"),
    ('size = ', 'size = -', "size"),
])
def test_every_field_that_names_a_place_is_checked(project, old, new, field):
    text = locked(project)
    project.lock.write_text(raw_replace(text, old, new))
    r = project.sh("status")  # a real process: a traceback would show here
    assert r.code == 2, r.err
    assert field in r.err and "Traceback" not in r.err
    assert r.err.startswith("error: ") and "hint:" in r.err


def test_a_pin_that_disagrees_with_models_toml_is_refused(project):
    """The pin says where bytes come from: a PR must not redirect them."""
    text = locked(project)
    project.lock.write_text(raw_replace(text, 'org = "acme"', 'org = "evil"'))
    r = project.run("apply")
    assert r.code == 2 and "models.m.pin.org" in r.err and "models.toml declares" in r.err


def test_unknown_exceptions_are_one_line_with_the_debug_hint(project, monkeypatch):
    project.write(MANIFEST)
    from reconcile import workspace

    def boom(*a, **k):
        raise RuntimeError("something unforeseen")

    monkeypatch.setattr(workspace.Workspace, "status", boom)
    r = project.run("status")
    assert r.code == 1
    assert r.err.strip().splitlines()[0] == "error: internal error: RuntimeError: something unforeseen"
    assert "RECONCILE_DEBUG=1" in r.err
    monkeypatch.setenv("RECONCILE_DEBUG", "1")
    with pytest.raises(RuntimeError):
        project.run("status")


# --- hostile locks, generated ----------------------------------------------------------

HOSTILE = ["..", "../x", "../../../../../tmp/pwned", "/tmp/pwned", "a/../../b", "a//b", ".",
           "", "x\x00y", "x\ny", "C:/x", "a\\..\\b", "~/x", "$(touch PWNED)", "sub", "sub/a.txt",
           "config.json/x", "ab" * 32, "AB" * 32, "0" * 40, "refs/../../x", "main.lock"]
FIELDS = ["path", "target", "sha256", "blob", "oid", "repo", "commit", "refs", "name", "type"]


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.sampled_from(FIELDS), st.sampled_from(HOSTILE),
                          st.integers(0, 2)), min_size=1, max_size=3),
       st.booleans())
def test_hostile_locks_never_touch_anything_outside_the_store_and_cache(
        project, tmp_path_factory, edits, rehash):
    """Whatever a lock says, apply and prune create, change or delete nothing outside the
    store and the HF cache: a hostile field is refused, a harmless one just works."""
    base = tmp_path_factory.mktemp("hostile")
    proj = base / "proj"
    proj.mkdir()
    store, cache = base / "store", base / "hub"
    os.environ["RECONCILE_STORE"], os.environ["HF_HUB_CACHE"] = str(store), str(cache)
    (proj / "models.toml").write_text(MANIFEST)
    (base / "bystander").write_text("keep me")
    from reconcile.cli import main

    assert main(["-f", str(proj / "models.toml"), "lock"]) == 0
    doc = tomllib.loads((proj / "models.lock").read_text())
    m = doc["models"]["m"]
    m["files"].append({"path": "lnk", "type": "l", "target": "config.json"})
    for field, value, index in edits:
        f = m["files"][index % len(m["files"])]
        if field in ("repo", "commit"):
            m["hf"][field] = value
        elif field == "refs":
            m["hf"]["refs"] = [value]
        elif field == "name":
            m["name"] = value
        else:
            f[field] = value
    if rehash:
        try:
            files = [LockedFile(path=f["path"], size=f.get("size", 0), sha256=f.get("sha256", ""),
                                type=f.get("type", "f"), target=f.get("target"))
                     for f in m["files"]]
            m["hash"] = treehash.tree_hash(x.entry() for x in files)
        except (TypeError, ValueError):
            pass
    import tomlkit

    (proj / "models.lock").write_text(tomlkit.dumps(doc))
    before = snapshot(base, (store, cache))
    code = main(["-f", str(proj / "models.toml"), "apply", "--locked"])
    assert code in (0, 1, 2)
    (proj / "models.toml").write_text("")
    main(["-f", str(proj / "models.toml"), "apply", "--prune"])
    after = snapshot(base, (store, cache))
    for ours in ("models.lock", "models.toml"):  # the test's own edits
        after.pop(str(proj / ours), None)
        before.pop(str(proj / ours), None)
    assert after == before
    assert not Path("/tmp/pwned").exists() and not Path("PWNED").exists()
    if code == 0:  # accepted: then every path it made is one the checks allow
        lock = read_lock(proj / "models.lock")
        assert lock is None or all(re.fullmatch(r"[0-9a-f]{64}", f.sha256)
                                   for mm in lock.models.values() for f in mm.regular_files())


def test_mk_link_script_quotes_every_word_from_the_lock(project, tmp_path):
    """A ref git itself allows can still be shell: the script must write it literally."""
    import reconcile
    from reconcile.lockfile import HFLink

    project.write(MANIFEST)
    assert project.run("apply").code == 0
    m = reconcile.fetch_model({"name": "m", "source": {"mock": {
        "org": "acme", "model": "tiny", "files": ["config.json"]}},
        "validation": {"preset": "none"}})
    evil_ref = "$(touch${IFS}PWNED)"
    m.locked = type(m.locked)(**{**m.locked.__dict__, "hf": HFLink(
        m.locked.hf.repo_id, "model", m.locked.hf.commit, (evil_ref,))})
    script = reconcile.integration.mk_link_script(m, cache_dir=str(tmp_path / "other"))
    subprocess.run(["sh", "-c", script], check=True, cwd=tmp_path)
    assert not (tmp_path / "PWNED").exists()
    ref = tmp_path / "other" / m.locked.hf.folder / "refs" / evil_ref
    assert ref.read_text() == m.locked.hf.commit


@given(st.text(alphabet="ab./@{}~^:?*[\\ -_lck\x01$", min_size=1, max_size=10))
def test_the_schema_and_the_checker_agree_on_ref_names(ref):
    from reconcile.lockfile import check_ref
    from reconcile.schema import REF_PATTERN

    try:
        check_ref(ref)
        ok = True
    except ValueError:
        ok = False
    assert ok == bool(re.match(REF_PATTERN, ref))
    if ok:  # and an accepted ref is a path that stays below refs/
        assert not ref.startswith("/") and ".." not in ref.split("/")


@pytest.mark.parametrize("ref", ["../../../../ESCAPED", "/abs", "a b", "x.lock", "$(touch X)"])
def test_refs_in_models_toml_are_checked_when_it_is_read(project, ref):
    project.write(MANIFEST + f'integration.huggingface.refs = ["{ref}"]\n')
    for args in (("apply",), ("lock", "--check")):
        r = project.run(*args)
        assert r.code == 2 and "models.m.integration.huggingface.refs[0]" in r.err, r.err
    assert not (project.cache.parent / "ESCAPED").exists()
