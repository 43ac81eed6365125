"""Signed models end to end: a publisher signs with the real `model_signing` CLI and
pushes to the (stand-in) Hub; `lock` verifies against models.toml's key and records the
signer; a tampered, extended or shortened repo, the wrong key, or a lock edited in a pull
request installs nothing; `reconcile sign` writes what `model_signing verify` accepts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reconcile.lockfile import read_lock
from tests.integration.conftest import FILES

pytestmark = pytest.mark.integration


def _ms(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "model_signing", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    probe = subprocess.run([sys.executable, "-m", "model_signing", "--help"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the model_signing CLI does not run (pip install model-signing pyopenssl)")
    d = tmp_path_factory.mktemp("keys")
    out = {}
    for name in ("publisher", "other"):
        subprocess.run(["openssl", "ecparam", "-name", "prime256v1", "-genkey", "-noout",
                        "-out", d / f"{name}.key"], check=True)
        subprocess.run(["openssl", "ec", "-in", d / f"{name}.key", "-pubout", "-out",
                        d / f"{name}.pem"], check=True, capture_output=True)
        out[name] = d / f"{name}.key"
        out[f"{name}.pub"] = d / f"{name}.pem"
    return out


def _publish(hub, tmp: Path, key: Path, files: dict[str, bytes], repo: str = "acme/signed",
             after_signing: dict[str, bytes | None] | None = None) -> None:
    """The publisher's side: the files in a directory, signed by model_signing, pushed
    (then changed, for the tampering cases)."""
    model = tmp / f"publish-{len(hub.repos)}"
    for path, data in files.items():
        (model / path).parent.mkdir(parents=True, exist_ok=True)
        (model / path).write_bytes(data)
    r = _ms("sign", "key", model, "--private_key", key, "--signature", model / "model.sig")
    assert r.returncode == 0, r.stdout + r.stderr
    pushed = {**files, "model.sig": (model / "model.sig").read_bytes()}
    for path, data in (after_signing or {}).items():
        if data is None:
            pushed.pop(path)
        else:
            pushed[path] = data
    hub.repo(repo).commit(pushed)


MODEL = """\
[models.signed]
source.huggingface = {{ repo = "{repo}" }}
signature = {{ file = "model.sig", publicKey = "{key}" }}
validation = {{ requireSignature = true }}
"""


def test_lock_verifies_and_records_the_signer(project, hf_env, hub, keys, tmp_path):
    _publish(hub, tmp_path, keys["publisher"], FILES)
    project.write(MODEL.format(repo="acme/signed", key=keys["publisher.pub"]))
    r = project.run("lock")
    assert r.code == 0, r.err
    m = read_lock(project.lock).models["signed"]
    from reconcile.signing import key_hint

    assert m.signed_by == "key:" + key_hint(keys["publisher.pub"].read_bytes())
    assert f'signedBy = "{m.signed_by}"' in project.lock.read_text()
    r = project.run("apply")
    assert r.code == 0, r.err

    # the installed tree passes the reference verifier too (it re-hashes every byte)
    tree = Path(project.run("path", "signed").out.strip())
    r = _ms("verify", "key", tree, "--signature", tree / "model.sig", "--public_key",
            keys["publisher.pub"], "--allow_symlinks")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("case,change,words", [
    ("tampered", {"config.json": b'{"model_type": "evil"}'}, "digest differs: config.json"),
    ("extra", {"extra.py": b"import os\n"}, "extra (in the model, not signed): extra.py"),
    ("missing", {"sub/readme.txt": None}, "missing (signed, not in the model): sub/readme.txt"),
])
def test_a_changed_repo_is_refused_naming_the_files(project, hf_env, hub, keys, tmp_path,
                                                    case, change, words):
    _publish(hub, tmp_path, keys["publisher"], FILES, repo=f"acme/{case}", after_signing=change)
    project.write(MODEL.format(repo=f"acme/{case}", key=keys["publisher.pub"]))
    r = project.run("apply")
    assert r.code == 1 and words in r.err, r.err
    assert "models.signed: model.sig" in r.err and "Traceback" not in r.err
    assert not project.lock.exists()
    assert not (project.cache / "models--acme--" f"{case}").exists()


def test_wrong_key_and_unsigned_models(project, hf_env, hub, keys, tmp_path):
    _publish(hub, tmp_path, keys["other"], FILES)
    project.write(MODEL.format(repo="acme/signed", key=keys["publisher.pub"]))
    r = project.run("lock")
    assert r.code == 1 and "signed by another key" in r.err
    assert not project.lock.exists()

    project.write('[models.plain]\nsource.huggingface = { repo = "acme/tiny" }\n'
                  'validation = { requireSignature = true }\n')
    r = project.run("lock")
    assert r.code == 2 and "models.plain.validation.requireSignature" in r.err
    project.write(MODEL.format(repo="acme/tiny", key=keys["publisher.pub"]))
    r = project.run("lock")
    assert r.code == 1 and "model.sig is not among the model's files" in r.err


def test_a_lock_edited_in_a_pull_request_installs_nothing(project, hf_env, hub, keys,
                                                          tmp_path):
    """Someone swaps a file's sha256 in models.lock (and fixes the model hash so the lock
    is self-consistent): apply checks the signature against the lock first, and stops."""
    _publish(hub, tmp_path, keys["publisher"], FILES)
    evil = b'{"model_type": "bert", "auto_map": {"AutoModel": "evil.Model"}}'
    project.write(MODEL.format(repo="acme/signed", key=keys["publisher.pub"]))
    assert project.run("lock").code == 0
    import hashlib

    from reconcile import treehash
    from reconcile.lockfile import Lock, LockedFile, write_lock

    lock = read_lock(project.lock)
    m = lock.models["signed"]
    files = tuple(LockedFile(**{**f.__dict__, "sha256": hashlib.sha256(evil).hexdigest(),
                                "size": len(evil)}) if f.path == "config.json" else f
                  for f in m.files)
    forged = m.__class__(**{**m.__dict__, "files": files,
                            "hash": treehash.tree_hash(f.entry() for f in files)})
    write_lock(project.lock, Lock({"signed": forged}))
    r = project.run("apply", "--locked")
    assert r.code == 1 and "digest differs: config.json" in r.err, r.err  # not a later
    assert not list((project.store / "models").glob("*"))  # sha256 mismatch: checked first
    assert not (project.cache / "models--acme--signed").exists()


def test_reconcile_sign_is_accepted_by_model_signing(project, hf_env, hub, keys, tmp_path):
    project.write('[models.tiny]\nsource.huggingface = { repo = "acme/tiny" }\n')
    assert project.run("apply").code == 0
    sig = tmp_path / "ours.sig"
    r = project.run("sign", "tiny", "--private-key", str(keys["publisher"]), "-o", str(sig))
    assert r.code == 0, r.err
    tree = Path(project.run("path", "tiny").out.strip())
    r = _ms("verify", "key", tree, "--signature", sig, "--public_key", keys["publisher.pub"],
            "--allow_symlinks")
    assert r.returncode == 0, r.stdout + r.stderr
    r = _ms("verify", "key", tree, "--signature", sig, "--public_key", keys["other.pub"],
            "--allow_symlinks")
    assert r.returncode != 0

    # a directory: hashed, the signature file inside it left out
    d = tmp_path / "mine"
    d.mkdir()
    (d / "weights.bin").write_bytes(b"w" * 1000)
    (d / "config.json").write_bytes(b"{}")
    r = project.run("sign", str(d), "--private-key", str(keys["publisher"]), "-o",
                    str(d / "model.sig"))
    assert r.code == 0, r.err
    r = _ms("verify", "key", d, "--signature", d / "model.sig", "--public_key",
            keys["publisher.pub"])
    assert r.returncode == 0, r.stdout + r.stderr


# --- a git repository with in-tree links (source.git-lfs on the test forge) ----------------


@pytest.fixture(scope="module")
def forge(tmp_path_factory):
    import shutil

    pytest.importorskip("giftless")
    if shutil.which("git") is None:
        pytest.skip("needs git")
    from tests.servers import git_forge

    with git_forge(tmp_path_factory.mktemp("forge") / "srv") as f:
        yield f


def _push_tree(forge, name: str, tree: Path, home: Path) -> None:
    """``tree`` as it is (links included) committed and pushed by the real git."""
    from tests.servers import git_env

    env = git_env(home)

    def git(*args: str | Path) -> None:
        subprocess.run(["git", *map(str, args)], cwd=tree, env=env, check=True,
                       capture_output=True)

    subprocess.run(["git", "init", "-q", "--bare", "-b", "main",
                    forge.root / f"repos/org/{name}.git"], env=env, check=True)
    git("init", "-q", "-b", "main")
    git("add", "-A")
    git("commit", "-qm", "publish")
    git("push", "-q", forge.url(f"org/{name}"), "main")


GIT_MODEL = """\
[models.linked]
source.git-lfs = {{ url = "{url}", rev = "main" }}
signature = {{ file = "model.sig", publicKey = "{key}" }}
validation = {{ requireSignature = true, preset = "none" }}  # FILES' weights are stand-ins
"""


def test_a_git_model_with_links_signed_by_model_signing_locks_and_verifies_back(
        project, forge, keys, tmp_path):
    """Both ways with links: the publisher signs with `model_signing --allow_symlinks`,
    reconcile locks and installs it; `reconcile sign` of the lock is accepted by
    `model_signing verify --allow_symlinks` on the installed tree."""
    tree = tmp_path / "linked"
    tree.mkdir()
    for path, data in FILES.items():
        (tree / path).parent.mkdir(parents=True, exist_ok=True)
        (tree / path).write_bytes(data)
    (tree / "config-alias.json").symlink_to("config.json")
    r = _ms("sign", "key", tree, "--private_key", keys["publisher"], "--allow_symlinks",
            "--signature", tree / "model.sig")
    assert r.returncode == 0, r.stdout + r.stderr
    _push_tree(forge, "linked", tree, tmp_path / "home")
    project.write(GIT_MODEL.format(url=forge.url("org/linked"), key=keys["publisher.pub"]))
    r = project.run("apply")
    assert r.code == 0, r.err
    assert any(f.type == "l" for f in read_lock(project.lock).models["linked"].files)

    from reconcile.store import Store

    installed = Store(project.store).model_path(read_lock(project.lock).models["linked"])
    assert (installed / "config-alias.json").is_symlink()
    r = _ms("verify", "key", installed, "--signature", installed / "model.sig",
            "--public_key", keys["publisher.pub"], "--allow_symlinks")
    assert r.returncode == 0, r.stdout + r.stderr
    ours = tmp_path / "ours.sig"
    r2 = project.run("sign", "linked", "--private-key", str(keys["other"]), "-o", str(ours))
    assert r2.code == 0, r2.err
    r = _ms("verify", "key", installed, "--signature", ours, "--public_key", keys["other.pub"],
            "--allow_symlinks", "--ignore-paths", installed / "model.sig")
    assert r.returncode == 0, r.stdout + r.stderr


def test_an_unsigned_link_into_github_locks_nothing(project, forge, keys, tmp_path):
    """The review's repository: signed config.json + pytorch_model.bin, then unsigned
    weights under .github/ and a link to them where transformers looks first."""
    tree = tmp_path / "evil"
    tree.mkdir()
    (tree / "config.json").write_bytes(b'{"model_type": "bert"}')
    (tree / "pytorch_model.bin").write_bytes(b"signed weights")
    r = _ms("sign", "key", tree, "--private_key", keys["publisher"],
            "--signature", tree / "model.sig")
    assert r.returncode == 0, r.stdout + r.stderr
    (tree / ".github").mkdir()
    (tree / ".github" / "w.safetensors").write_bytes(b"unsigned weights")
    (tree / "model.safetensors").symlink_to(".github/w.safetensors")
    _push_tree(forge, "evil", tree, tmp_path / "home")
    project.write(GIT_MODEL.format(url=forge.url("org/evil"), key=keys["publisher.pub"]))
    r = project.run("apply")
    assert r.code == 1 and "model.safetensors is a symbolic link" in r.err, r.err
    assert "Traceback" not in r.err and not project.lock.exists()


def test_files_a_signature_ignores_are_vouched_for_by_the_source(project, hf_env, hub, keys,
                                                                 tmp_path):
    """A signature with `ignore` says nothing of the files it leaves out: a lock edited to
    give one of them another object of the store (hash recomputed) passes the signature,
    so the source is asked at the pin, and refuses it by name (#31 case 2)."""
    _publish(hub, tmp_path, keys["publisher"], FILES)
    project.write(MODEL.format(repo="acme/signed", key=keys["publisher.pub"]).replace(
        'publicKey', 'ignore = ["sub/deeper/notes.md"], publicKey'))
    assert project.run("apply").code == 0, "the store now holds config.json's object"
    from reconcile import treehash
    from reconcile.lockfile import Lock, LockedFile, write_lock

    lock = read_lock(project.lock)
    m = lock.models["signed"]
    config = next(f for f in m.files if f.path == "config.json")
    files = tuple(LockedFile(**{**f.__dict__, "sha256": config.sha256, "size": config.size})
                  if f.path == "sub/deeper/notes.md" else f for f in m.files)
    forged = m.__class__(**{**m.__dict__, "files": files,
                            "hash": treehash.tree_hash(f.entry() for f in files)})
    write_lock(project.lock, Lock({"signed": forged}))
    r = project.run("apply", "--locked")
    assert r.code == 1 and "does not match what the source serves" in r.err, r.err
    assert "sub/deeper/notes.md" in r.err
    assert not (project.store / "models" / forged.store_id).exists()
