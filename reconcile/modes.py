"""System-wide and per-user model management (the seed's NixOS and Home Manager modules).

`--system`: one manifest for the machine (/etc/reconcile/models.toml), applied by root or
a member of the `reconcile` group into /var/lib/reconcile: setgid directories so every
member's files share the group, objects read-only and world-readable, an HF cache every
user can load from, and a /etc/profile.d snippet that points login shells at it.

`--user`: the user's own manifest (~/.config/reconcile/models.toml) applied into the
user's store and HF cache, taking objects the system store already holds instead of
downloading them again.

A mode only chooses paths and permissions; the work is the same Workspace as always.
"""

from __future__ import annotations

import grp
import os
import pwd
import shlex
from dataclasses import dataclass
from pathlib import Path

from . import settings
from .errors import ReconcileError

SYSTEM_DIR = "/var/lib/reconcile"
SYSTEM_MANIFEST = "/etc/reconcile/models.toml"
SYSTEM_PROFILE = "/etc/profile.d/reconcile.sh"
SYSTEM_GROUP = "reconcile"


class PermissionProblem(ReconcileError):
    """A mode's directories are not writable for this user; says who may write them."""


@dataclass(frozen=True)
class Mode:
    name: str  # "system" | "user"
    manifest: Path
    store: Path
    hf_cache: Path
    group: str | None = None  # system: the group that may apply
    peers: tuple[Path, ...] = ()  # stores whose objects are taken before any download
    profile: Path | None = None  # system: the login-shell snippet


def _system_dir() -> Path:
    return Path(os.environ.get("RECONCILE_SYSTEM_DIR") or SYSTEM_DIR)


# the variables that move the system paths; a systemd unit carries those that are set
SYSTEM_VARIABLES = ("RECONCILE_SYSTEM_DIR", "RECONCILE_SYSTEM_MANIFEST",
                    "RECONCILE_SYSTEM_PROFILE", "RECONCILE_SYSTEM_GROUP")


def _profile_path() -> Path | None:
    """The login-shell snippet: /etc/profile.d/reconcile.sh for the standard layout, or
    where RECONCILE_SYSTEM_PROFILE says. With the system directory relocated and no
    RECONCILE_SYSTEM_PROFILE, none: a machine-wide HF_HUB_CACHE pointing at a relocated
    (often experimental) store is not something to do to every login shell unasked."""
    if asked := os.environ.get("RECONCILE_SYSTEM_PROFILE"):
        return Path(asked)
    return Path(SYSTEM_PROFILE) if _same(_system_dir(), Path(SYSTEM_DIR)) else None


def system_mode() -> Mode:
    """Paths of the machine's models; each can be moved by an environment variable (for
    another layout, and for tests)."""
    root = _system_dir()
    group = os.environ.get("RECONCILE_SYSTEM_GROUP") or SYSTEM_GROUP
    try:
        grp.getgrnam(group)
    except KeyError:
        group = None  # no such group: root alone applies; everyone still reads
    return Mode("system",
                manifest=Path(os.environ.get("RECONCILE_SYSTEM_MANIFEST") or SYSTEM_MANIFEST),
                store=root / "store", hf_cache=root / "huggingface" / "hub", group=group,
                profile=_profile_path())


def user_manifest() -> Path:
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(config) / "reconcile" / "models.toml"


def user_mode() -> Mode:
    """The user's own paths. HF_HUB_CACHE pointing at the system cache (the profile
    snippet does that for users without a manifest of their own) is not the user's
    cache: then $HF_HOME/hub is."""
    system = system_mode()
    cache = settings.hf_hub_cache()
    if _same(cache, system.hf_cache):
        cache = settings.hf_home() / "hub"
    peers = (system.store,) if os.access(system.store / "objects", os.R_OK | os.X_OK) else ()
    return Mode("user", manifest=user_manifest(), store=settings.store_dir(), hf_cache=cache,
                peers=tuple(p for p in peers if not _same(p, settings.store_dir())))


def store_name(path: Path) -> str:
    """How messages name a store objects are copied from: --user's peer is the system
    store; RECONCILE_PEER_STORES may name any other."""
    return "the system store" if _same(path, system_mode().store) else f"the store {path}"


def _same(a: Path, b: Path) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def activate(mode: Mode, *, writes: bool) -> Path:
    """Point this process (and the validators it starts) at the mode's paths; returns the
    manifest to use. For a command that ``writes``, the system directories are prepared
    (root) or checked (everyone else) first, so a permission problem is one sentence
    saying who may write, not an EACCES from deep inside a fetch."""
    os.environ["RECONCILE_STORE"] = str(mode.store)
    os.environ["HF_HUB_CACHE"] = str(mode.hf_cache)
    if mode.peers:
        os.environ["RECONCILE_PEER_STORES"] = os.pathsep.join(map(str, mode.peers))
    if mode.name == "system":
        from .fsutil import set_umask

        set_umask(0o002)  # group members write; everyone else reads
        if writes:
            _prepare_system(mode)
    return mode.manifest


def _prepare_system(mode: Mode) -> None:
    root = mode.store.parent
    gid = grp.getgrnam(mode.group).gr_gid if mode.group else -1
    for d in (root, mode.store, mode.hf_cache.parent, mode.hf_cache):
        if os.geteuid() == 0:
            d.mkdir(mode=0o2775 if mode.group else 0o755, parents=True, exist_ok=True)
            st = d.stat()
            if mode.group and st.st_gid != gid:
                os.chown(d, -1, gid)
            wanted = (0o2775 if mode.group else 0o755)
            if st.st_mode & 0o7777 != wanted:
                os.chmod(d, wanted)
        elif not os.access(d, os.W_OK | os.X_OK):
            raise _permission(mode, d)


def _permission(mode: Mode, path: Path) -> PermissionProblem:
    user = pwd.getpwuid(os.geteuid()).pw_name
    who = (f"root and members of group '{mode.group}'" if mode.group else "root")
    hint = "run it with sudo"
    if mode.group:
        hint += (f", or have an administrator add you to the group (`usermod -aG"
                 f" {mode.group} {user}`, then log in again)")
    hint += "; `reconcile --user apply` installs models of your own"
    exists = "" if path.exists() else " (it does not exist yet: root creates it)"
    return PermissionProblem(f"{path}: the system models are written by {who}, and you"
                             f" ({user}) may only read them{exists}", hint=hint)


def _in_group(group: str | None) -> bool:
    if not group:
        return False
    try:
        return grp.getgrnam(group).gr_gid in (os.getegid(), *os.getgroups())
    except KeyError:
        return False


def check_writable(mode: Mode, path: Path) -> None:
    """Raise the explained permission error for ``path`` (models.lock, say) when this
    user cannot write it in system mode. A member of the group applies a locked manifest
    but does not lock it: /etc is root's, so the fix is root's command, not the group."""
    target = path if path.exists() else path.parent
    if mode.name != "system" or os.access(target, os.W_OK):
        return
    if _in_group(mode.group):
        user = pwd.getpwuid(os.geteuid()).pw_name
        raise PermissionProblem(
            f"{path}: the system's models.lock is root's; members of group '{mode.group}'"
            f" (you, {user}, are one) apply what root locked, but do not lock",
            hint="`sudo reconcile --system lock`, then `reconcile --system apply --locked`")
    raise _permission(mode, target)


def profile_snippet(mode: Mode) -> str:
    """/etc/profile.d/reconcile.sh: login shells find the system's models. A user who set
    HF_HUB_CACHE, or keeps a manifest of their own (--user mode), is left alone."""
    cache = shlex.quote(str(mode.hf_cache))
    return (
        "# Written by `reconcile --system apply`: the models of "
        f"{mode.manifest}.\n"
        "# Sets HF_HUB_CACHE only for users who chose no cache and keep no"
        " ~/.config/reconcile/models.toml.\n"
        'if [ -z "${HF_HUB_CACHE:-}" ] && [ ! -e "${XDG_CONFIG_HOME:-$HOME/.config}'
        '/reconcile/models.toml" ]; then\n'
        f"  HF_HUB_CACHE={cache}\n"
        "  export HF_HUB_CACHE\n"
        "fi\n")


def write_profile(mode: Mode) -> str | None:
    """Install the snippet when root (the service runs as root); others skip it. Returns
    the line to tell the user: what was written where, or why nothing was."""
    from .fsutil import atomic_write_text

    if mode.name != "system" or os.geteuid() != 0:
        return None
    if mode.profile is None:
        return (f"not writing {SYSTEM_PROFILE}: the system paths are relocated"
                f" (RECONCILE_SYSTEM_DIR={_system_dir()}); set RECONCILE_SYSTEM_PROFILE to"
                " the file that should point login shells at them")
    mode.profile.parent.mkdir(parents=True, exist_ok=True)
    if atomic_write_text(mode.profile, profile_snippet(mode)):
        os.chmod(mode.profile, 0o644)
    return (f"wrote {mode.profile}: login shells get HF_HUB_CACHE={mode.hf_cache} (unless"
            " they set their own or keep a --user manifest)")


def _unit_quote(value: str, always: bool = False) -> str:
    """One word of a unit file: systemd's double quotes, with % doubled (a specifier)."""
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    quote = always or any(c in value for c in ' "\\\'')
    return f'"{escaped}"' if quote else escaped


def _environment_lines() -> str:
    """Environment= for each RECONCILE_SYSTEM_* set here: the unit then applies the same
    relocated manifest into the same relocated store as this command."""
    return "".join(f"Environment={_unit_quote(f'{name}={os.environ[name]}', always=True)}\n"
                   for name in SYSTEM_VARIABLES if os.environ.get(name))


def systemd_units(mode: Mode, exe: list[str]) -> dict[str, str]:
    """unit file name → text: a oneshot service that applies the mode's manifest, and a
    timer that runs it daily (and soon after boot) for the system; for a user, the
    service starts at login, as Home Manager's activation links models."""
    cmd = shlex.join([*exe, f"--{mode.name}", "apply", "--progress", "plain"])
    if mode.name == "system":
        writable = " ".join(_unit_quote(p) for p in sorted(
            {str(mode.store.parent), str(mode.manifest.parent),
             str(mode.profile.parent if mode.profile else "")} - {""}))
        service = (
            "[Unit]\n"
            f"Description=Install the models of {mode.manifest} (reconcile)\n"
            "Documentation=https://github.com/reconcile-models/reconcile\n"
            "Wants=network-online.target\n"
            "After=network-online.target\n"
            f"ConditionPathExists={mode.manifest}\n\n"
            "[Service]\n"
            "Type=oneshot\n"
            f"{_environment_lines()}"
            f"ExecStart={cmd}\n"
            "UMask=0002\n"
            "Nice=10\n"
            "IOSchedulingClass=idle\n"
            "NoNewPrivileges=yes\n"
            "PrivateTmp=yes\n"
            "ProtectSystem=strict\n"
            f"ReadWritePaths={writable}\n"
            "ProtectHome=read-only\n\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n")
        timer = (
            "[Unit]\n"
            f"Description=Apply {mode.manifest} daily (reconcile)\n\n"
            "[Timer]\n"
            "OnBootSec=5min\n"
            "OnCalendar=daily\n"
            "RandomizedDelaySec=1h\n"
            "Persistent=true\n\n"
            "[Install]\n"
            "WantedBy=timers.target\n")
        return {"reconcile.service": service, "reconcile.timer": timer}
    service = (
        "[Unit]\n"
        f"Description=Install my models of {mode.manifest} (reconcile)\n"
        f"ConditionPathExists={mode.manifest}\n\n"
        "[Service]\n"
        "Type=oneshot\n"
        f"ExecStart={cmd}\n"
        "Nice=10\n\n"
        "[Install]\n"
        "WantedBy=default.target\n")
    return {"reconcile.service": service}


def unit_dir(mode: Mode) -> str:
    return ("/etc/systemd/system" if mode.name == "system"
            else "~/.config/systemd/user")
