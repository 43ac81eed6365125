"""System-wide and per-user modes with real unix users: root applies the machine's models,
a member of the group applies too, another user only reads them (and is told why not
more), and that user's own --user apply takes the system store's objects instead of
downloading them.

The other users' commands run in a forked child that drops to their uid and gid (the
interpreter may live under /root, which they cannot enter, so nothing is exec'd: the
modules are imported by the parent before the fork)."""

from __future__ import annotations

import io
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import traceback
import uuid
from pathlib import Path

import pytest

from reconcile.cli import main
from tests.integration.conftest import FILES

pytestmark = pytest.mark.integration

MANIFEST = """\
[models.tiny]
source.huggingface = { repo = "acme/tiny", files = ["config.json", "model.safetensors"] }
validation = { preset = "none" }
"""
SECOND = """
[models.gpt]
source.huggingface = { repo = "gpt2x" }
validation = { preset = "none" }
"""


def _need_root() -> None:
    if os.geteuid() != 0 or not shutil.which("useradd"):
        pytest.skip("not applicable here: creating two unix users needs root and useradd;"
                    " the system/user mode test did NOT run")


@pytest.fixture
def machine(tmp_path, monkeypatch, hub):
    """A group, a member and a non-member, and the system paths under a directory every
    user may enter (pytest's own tmp dirs are 0700)."""
    _need_root()
    from huggingface_hub import snapshot_download  # noqa: F401 - before the children fork

    import reconcile.apply
    import reconcile.modes  # noqa: F401

    tag = uuid.uuid4().hex[:6]
    group, member, other = f"rcg{tag}", f"rcm{tag}", f"rco{tag}"
    base = Path(tempfile.mkdtemp(prefix="reconcile-modes-", dir="/tmp"))
    base.chmod(0o755)
    made: list[list[str]] = []
    try:
        subprocess.run(["groupadd", group], check=True)
        made.append(["groupdel", group])
        for user, extra in ((member, ["-G", group]), (other, [])):
            home = base / user
            subprocess.run(["useradd", "-M", "-N", "-d", str(home), "-s", "/bin/sh", *extra,
                            user], check=True)
            made.insert(0, ["userdel", user])
            home.mkdir()
            pw = pwd.getpwnam(user)
            os.chown(home, pw.pw_uid, pw.pw_gid)
        (base / "etc").mkdir()
        monkeypatch.setenv("RECONCILE_SYSTEM_DIR", str(base / "var-lib-reconcile"))
        monkeypatch.setenv("RECONCILE_SYSTEM_MANIFEST", str(base / "etc" / "models.toml"))
        monkeypatch.setenv("RECONCILE_SYSTEM_PROFILE", str(base / "etc" / "profile.d" / "r.sh"))
        monkeypatch.setenv("RECONCILE_SYSTEM_GROUP", group)
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for var in ("RECONCILE_STORE", "HF_HUB_CACHE", "HF_HOME", "RECONCILE_PEER_STORES",
                    "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_CACHE_HOME", "RECONCILE_MANIFEST"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HOME", str(base / "root-home"))
        monkeypatch.chdir(base)
        yield {"base": base, "group": group, "member": member, "other": other}
    finally:
        from reconcile.fsutil import set_umask

        set_umask(0o022)  # --system set 0002 in this process
        for cmd in made:
            subprocess.run(cmd, capture_output=True)
        shutil.rmtree(base, ignore_errors=True)


def as_user(user: str, argv: list[str] | None = None, code: str | None = None,
            env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run reconcile's CLI (or a Python snippet) as ``user``, in a forked child."""
    pw = pwd.getpwnam(user)
    groups = os.getgrouplist(user, pw.pw_gid)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            rc = 99
            try:
                os.dup2(out.fileno(), 1)
                os.dup2(err.fileno(), 2)
                sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
                sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True)
                os.setgroups(groups)
                os.setgid(pw.pw_gid)
                os.setuid(pw.pw_uid)
                os.umask(0o022)
                keep = {k: v for k, v in os.environ.items() if k.startswith(("RECONCILE_SYSTEM",
                        "HF_ENDPOINT", "PATH", "SSL_", "HF_HUB_DISABLE"))}
                os.environ.clear()
                os.environ.update(keep, HOME=pw.pw_dir, USER=user, **(env or {}))
                os.chdir(pw.pw_dir)
                if code is not None:
                    exec(code, {"__name__": "__child__"})
                    rc = 0
                else:
                    rc = main(argv or [])
            except SystemExit as e:
                rc = int(e.code or 0)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(rc)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return os.waitstatus_to_exitcode(status), out.read().decode(), err.read().decode()


def test_system_store_shared_by_a_group_read_by_everyone(machine, hub, capsys):
    base, group = machine["base"], machine["group"]
    system = base / "var-lib-reconcile"
    (base / "etc" / "models.toml").write_text(MANIFEST)

    # root applies the machine's models, and says it wrote the login-shell snippet
    capsys.readouterr()
    assert main(["--system", "apply", "--progress", "none"]) == 0, capsys.readouterr().err
    said = capsys.readouterr().out
    assert f"wrote {base / 'etc' / 'profile.d' / 'r.sh'}" in said
    assert f"HF_HUB_CACHE={system / 'huggingface' / 'hub'}" in said
    import grp

    gid = grp.getgrnam(group).gr_gid
    for d in (system, system / "store", system / "huggingface" / "hub"):
        st = d.stat()
        assert st.st_gid == gid and st.st_mode & stat.S_ISGID and st.st_mode & 0o020, d
    objects = list((system / "store" / "objects" / "sha256").iterdir())
    assert objects and all(p.stat().st_mode & 0o777 == 0o444 for p in objects)
    assert all(p.stat().st_gid == gid for p in objects)  # inherited from the setgid parent
    profile = (base / "etc" / "profile.d" / "r.sh").read_text()
    assert str(system / "huggingface" / "hub") in profile

    # another user: the profile snippet points the login shell at the system cache, and
    # the official client loads the model from it offline
    other = machine["other"]
    read = (
        "import subprocess, os\n"
        f"cache = subprocess.run(['sh', '-c', '. {base}/etc/profile.d/r.sh; echo $HF_HUB_CACHE'],"
        " capture_output=True, text=True).stdout.strip()\n"
        "from huggingface_hub import snapshot_download\n"
        "p = snapshot_download('acme/tiny', cache_dir=cache, local_files_only=True)\n"
        "print(cache); print(open(os.path.join(p, 'config.json')).read())\n")
    rc, out, err = as_user(other, code=read)
    assert rc == 0, err
    assert out.splitlines()[0] == str(system / "huggingface" / "hub")
    assert out.split("\n", 1)[1].strip() == FILES["config.json"].decode()

    # … verifies what is installed (verify only reads) …
    rc, out, err = as_user(other, ["--system", "verify"])
    assert rc == 0, err
    # … but may not write, and is told who may
    for argv in (["--system", "apply"], ["--system", "lock"], ["--system", "gc"]):
        rc, out, err = as_user(other, argv)
        assert rc == 1, (argv, err)
        assert "may only read them" in err and f"members of group '{group}'" in err, err
        assert f"usermod -aG {group} {other}" in err and "Traceback" not in err

    # the group's member applies a model root locked: its files join the group
    (base / "etc" / "models.toml").write_text(MANIFEST + SECOND)
    assert main(["--system", "lock"]) == 0
    rc, out, err = as_user(machine["member"], ["--system", "apply", "--locked",
                                              "--progress", "none"])
    assert rc == 0, err
    member_uid = pwd.getpwnam(machine["member"]).pw_uid
    (tree,) = (system / "store" / "models").glob("*-gpt")  # assembled by the member
    repo = system / "huggingface" / "hub" / "models--gpt2x"  # linked by the member
    for p in (tree, repo, repo / "refs" / "main"):
        st = p.stat()
        assert (st.st_uid, st.st_gid) == (member_uid, gid) and st.st_mode & 0o004, p
    rc, out, err = as_user(other, code=(
        "from huggingface_hub import snapshot_download\n"
        f"print(snapshot_download('gpt2x', cache_dir={str(repo.parent)!r},"
        " local_files_only=True))\n"))
    assert rc == 0, err
    # … but cannot write /etc's models.lock: that is root's, and said so (not "join the
    # group" to someone in it), for lock and for an apply that would lock first
    (base / "etc" / "models.toml").write_text(MANIFEST)
    for argv in (["--system", "lock"], ["--system", "apply"]):
        rc, out, err = as_user(machine["member"], argv)
        assert rc == 1, err
        assert "models.lock is root's" in err and "sudo reconcile --system lock" in err, err
        assert "usermod" not in err and "may only read" not in err, err


def test_relocated_system_paths_leave_etc_profile_alone(machine, hub, capsys):
    """RECONCILE_SYSTEM_DIR elsewhere: no machine-wide HF_HUB_CACHE in /etc/profile.d unless
    RECONCILE_SYSTEM_PROFILE asks for one; apply says it skipped it."""
    base = machine["base"]
    real = Path("/etc/profile.d/reconcile.sh")
    existed = real.exists()
    os.environ.pop("RECONCILE_SYSTEM_PROFILE")  # monkeypatch restores it
    (base / "etc" / "models.toml").write_text(MANIFEST)
    try:
        capsys.readouterr()
        assert main(["--system", "apply", "--progress", "none"]) == 0
        out = capsys.readouterr().out
        assert real.exists() == existed
        assert "RECONCILE_SYSTEM_PROFILE" in out and f"wrote {real}" not in out
    finally:
        if real.exists() and not existed:
            real.unlink()


def test_user_mode_reuses_the_system_store(machine, hub, capsys):
    base, other = machine["base"], machine["other"]
    (base / "etc" / "models.toml").write_text(MANIFEST)
    assert main(["--system", "apply", "--progress", "none"]) == 0, capsys.readouterr().err

    # the user declares the same model in their own manifest and commits the same lock
    home = base / other
    conf = home / ".config" / "reconcile"
    conf.mkdir(parents=True)
    (conf / "models.toml").write_text(MANIFEST)
    shutil.copy(base / "etc" / "models.lock", conf / "models.lock")
    pw = pwd.getpwnam(other)
    for p in (home / ".config", conf, conf / "models.toml", conf / "models.lock"):
        os.chown(p, pw.pw_uid, pw.pw_gid)

    hub.fault("*", "status", code=503, count=10_000)  # the Hub is down from here on
    before = len(hub.log)
    rc, out, err = as_user(other, ["--user", "apply", "--locked", "--progress", "none"])
    assert rc == 0, err
    assert len(hub.log) == before  # every object came from the system store
    assert "0 fetched" in out
    cache = home / ".cache" / "huggingface" / "hub"
    rc, out, err = as_user(other, code=(
        "from huggingface_hub import snapshot_download\n"
        f"p = snapshot_download('acme/tiny', cache_dir={str(cache)!r}, local_files_only=True)\n"
        "print(open(p + '/config.json').read())\n"))
    assert rc == 0 and out.strip() == FILES["config.json"].decode(), err
    store = home / ".local" / "share" / "reconcile" / "objects" / "sha256"
    assert all(p.stat().st_uid == pw.pw_uid for p in store.iterdir())  # the user's own copies

    # a peer object that does not match its name is not taken: the Hub is asked (and is down)
    victim = next((base / "var-lib-reconcile" / "store" / "objects" / "sha256").iterdir())
    shutil.rmtree(home / ".local")
    shutil.rmtree(cache)  # its blobs are good copies, which apply would take (#34)
    victim.chmod(0o644)
    victim.write_bytes(b"tampered")
    rc, out, err = as_user(other, ["--user", "apply", "--locked", "--progress", "none"])
    assert rc == 1 and "503" in err


def test_systemd_units_pass_systemd_analyze(tmp_path):
    if not shutil.which("systemd-analyze"):
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    for mode, names in (("system", ["reconcile.service", "reconcile.timer"]),
                        ("user", ["reconcile.service"])):
        d = tmp_path / mode
        d.mkdir()
        for name in names:
            kind = name.split(".")[1]
            r = subprocess.run([sys.executable, "-m", "reconcile", f"--{mode}", "systemd",
                                "--unit", kind], capture_output=True, text=True)
            assert r.returncode == 0, r.stderr
            (d / name).write_text(r.stdout)
            if kind == "service":
                assert f"--{mode} apply" in r.stdout
        v = subprocess.run(["systemd-analyze", "verify", "--man=no",
                            *(str(d / n) for n in names)], capture_output=True, text=True)
        assert v.returncode == 0 and not v.stderr.strip(), v.stderr
    # relocated system paths travel in the unit: apply there, and may write there
    env = {**os.environ, "RECONCILE_SYSTEM_DIR": "/srv/models dir",
           "RECONCILE_SYSTEM_MANIFEST": "/srv/etc/models.toml"}
    r = subprocess.run([sys.executable, "-m", "reconcile", "--system", "systemd", "--unit",
                        "service"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert 'Environment="RECONCILE_SYSTEM_DIR=/srv/models dir"' in r.stdout
    assert 'Environment="RECONCILE_SYSTEM_MANIFEST=/srv/etc/models.toml"' in r.stdout
    assert "ReadWritePaths=/etc/profile.d" not in r.stdout
    assert '"/srv/models dir"' in r.stdout.split("ReadWritePaths=")[1].splitlines()[0]
    (tmp_path / "system" / "reconcile.service").write_text(r.stdout)
    v = subprocess.run(["systemd-analyze", "verify", "--man=no",
                        str(tmp_path / "system" / "reconcile.service")],
                       capture_output=True, text=True)
    assert v.returncode == 0 and not v.stderr.strip(), v.stderr
    r = subprocess.run([sys.executable, "-m", "reconcile", "--user", "systemd", "--unit", "timer"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no timer unit" in r.stderr
