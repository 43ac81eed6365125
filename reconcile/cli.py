"""The command line: parse, call the library, print. Nothing else lives here.

Exit codes: 0 success, 1 the operation failed (network, mismatch, stale, drift,
corruption, validation), 2 invalid input (usage, models.toml, models.lock).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ReconcileError, UsageError


def _jobs(value: str) -> int:
    """--jobs: a whole number from 1 to 256."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {value!r}") from None
    if not 1 <= n <= 256:
        raise argparse.ArgumentTypeError(f"must be between 1 and 256, got {n}")
    return n


MANIFEST_HELP = ("path to models.toml (default: $RECONCILE_MANIFEST, else models.toml in this"
                 " directory or the nearest parent up to the repository root)")


Commands = argparse._SubParsersAction  # what add_subparsers returns


def _parser() -> argparse.ArgumentParser:
    """The whole command line: the options every command takes, then the commands, in
    the order `reconcile --help` lists them (each group its own function)."""
    from . import __version__

    p = argparse.ArgumentParser(
        prog="reconcile",
        description="Declare models in models.toml, pin them in models.lock, converge the"
        " store and the Hugging Face cache to it.",
        allow_abbrev=False,
    )
    p.add_argument("--version", action="version", version=f"reconcile {__version__}")
    p.add_argument("-f", "--manifest", default=None, help=MANIFEST_HELP)
    _add_modes(p, None)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)
    for add_commands in (_manifest_commands, _lock_command, _plan_command, _apply_command,
                         _sharing_commands, _installed_commands, _tool_commands):
        add_commands(sub)
    return p


def _add_keys(s: argparse.ArgumentParser) -> None:
    """The models a command is limited to, by key; none means all."""
    s.add_argument("keys", nargs="*", metavar="KEY", help="only these models (default: all)")


def _add_jobs(s: argparse.ArgumentParser, default: int, help: str) -> None:
    s.add_argument("--jobs", "-j", type=_jobs, default=default, help=help)


def _manifest_commands(sub: Commands) -> None:
    """Commands that write or read models.toml alone: init, add, remove, check."""
    s = sub.add_parser("init", help="write a starter models.toml")
    s.add_argument("--force", action="store_true", help="overwrite an existing models.toml")

    s = sub.add_parser("add", help="declare a model in models.toml and lock it")
    s.add_argument("source", metavar="SOURCE",
                   help="org/name, hf://org/name[@rev], https://huggingface.co/org/name, any"
                   " https:// file URL, s3://bucket/prefix/, ollama:name[:tag],"
                   " oci://registry/repo:tag, models:/name/version, git+https://host/repo@rev")
    s.add_argument("--name", metavar="KEY", help="the model's key (default: from SOURCE)")
    s.add_argument("--files", nargs="+", action="extend", metavar="GLOB",
                   help="only these files of a Hugging Face repo")
    s.add_argument("--revision", metavar="REV", help="branch, tag or commit (or ollama tag)")
    s.add_argument("--no-lock", action="store_true", help="only edit models.toml")

    s = sub.add_parser("remove", help="take a model out of models.toml and models.lock")
    s.add_argument("key", metavar="KEY", help="the model's key in models.toml")

    s = sub.add_parser("check", help="check models.toml files without locking (offline)")
    s.add_argument("files", nargs="*", metavar="FILE",
                   help="models.toml files (default: this project's)")


def _lock_command(sub: Commands) -> None:
    s = sub.add_parser("lock", help="resolve models.toml into models.lock")
    s.add_argument("--check", action="store_true",
                   help="exit 1 if models.lock is out of date (offline, fast)")
    s.add_argument("files", nargs="*", metavar="FILE",
                   help="with --check: the models.toml or models.lock files whose"
                   " directories' manifests to check (a monorepo's pre-commit hook)")
    s.add_argument("--upgrade", nargs="?", const="*", action="append", metavar="KEY",
                   help="re-resolve every model, or only KEY (repeatable)")
    s.add_argument("--offline", action="store_true",
                   help="never touch the network (fails if anything needs resolving)")
    _add_jobs(s, 4, "models resolved at once (1-256, default 4)")
    s.add_argument("--key", action="store_true",
                   help="print models.lock's CI cache key (its model hashes only) and exit;"
                   " offline, writes nothing")
    s.add_argument("--only", nargs="+", action="extend", metavar="KEY",
                   help="with --key: the key of these models only")


def _plan_command(sub: Commands) -> None:
    s = sub.add_parser("plan", help="show what apply would do")
    s.add_argument("--exit-code", action="store_true",
                   help="exit 0 when converged, 1 when changes are pending")
    s.add_argument("--prune", action="store_true",
                   help="also show what apply --prune would unlink")
    s.add_argument("--locked", action="store_true",
                   help="plan against models.lock as it is; fail if it is out of date")
    s.add_argument("--offline", action="store_true",
                   help="never touch the network while resolving a stale lock")
    s.add_argument("--revalidate", action="store_true",
                   help="plan validation again even for models validated before")


def _apply_command(sub: Commands) -> None:
    s = sub.add_parser("apply", help="converge the store and HF cache to models.lock")
    _add_jobs(s, 8, "downloads and validations at once (1-256, default 8; writing"
              " the store and HF cache runs in order)")
    s.add_argument("--offline", action="store_true",
                   help="never touch the network: fail if an object is not in the store")
    s.add_argument("--prune", action="store_true",
                   help="unlink models this project linked that are no longer locked")
    s.add_argument("--locked", action="store_true",
                   help="refuse to run if models.lock is out of date instead of locking")
    s.add_argument("--revalidate", action="store_true",
                   help="run the validators again on models validated before")
    s.add_argument("--progress", choices=["auto", "bars", "plain", "json", "none"],
                   default=os.environ.get("RECONCILE_PROGRESS") or "auto",
                   help="bars on a terminal, plain lines in a log (auto, the default),"
                   " NDJSON events on stderr (json), or nothing; also RECONCILE_PROGRESS")
    s.add_argument("--color", choices=["auto", "never", "always"], default="auto",
                   help="colour in progress bars (auto honours NO_COLOR)")


def _sharing_commands(sub: Commands) -> None:
    """Models to and from other machines: the team cache, an archive, a signature."""
    s = sub.add_parser("push", help="upload installed models to the team cache")
    _add_keys(s)
    _add_jobs(s, 4, "uploads at once (default 4)")
    s.add_argument("--verify", action="store_true",
                   help="read every object the cache holds whole and replace a corrupt one")

    s = sub.add_parser("pull", help="fill the store from the team cache only")
    _add_keys(s)
    _add_jobs(s, 4, "downloads at once (default 4)")

    s = sub.add_parser("export", help="write locked models' objects to one archive")
    _add_keys(s)
    s.add_argument("-o", "--output", required=True, metavar="FILE",
                   help="the archive (a tar stream; '-' for stdout)")

    s = sub.add_parser("import", help="verify an exported archive into the store")
    s.add_argument("file", metavar="FILE", help="the archive ('-' for stdin)")

    s = sub.add_parser("sign", help="write a model_signing signature for a directory or"
                       " a locked model")
    s.add_argument("target", metavar="PATH|KEY",
                   help="a model directory (its files hashed), or a locked model's key (the"
                   " lock's sha256 used: nothing is read again)")
    s.add_argument("--private-key", required=True, metavar="PEM",
                   help="an EC private key (P-256, P-384 or P-521), PEM")
    s.add_argument("--password-env", metavar="VAR",
                   help="the environment variable holding the key's password")
    s.add_argument("--output", "-o", default="model.sig", metavar="FILE",
                   help="where to write the signature (default: model.sig)")


def _installed_commands(sub: Commands) -> None:
    """What is installed, and where: status, verify, gc, path, env."""
    s = sub.add_parser("status", help="show each model's state")
    s.add_argument("--json", action="store_true", help="one JSON array on stdout")
    s.add_argument("--exit-code", action="store_true",
                   help="exit 1 when a model is not installed and linked (0 otherwise)")

    s = sub.add_parser("verify", help="re-hash installed models")
    _add_keys(s)
    s.add_argument("--repair", action="store_true",
                   help="delete what is corrupt and fetch it again")

    s = sub.add_parser("gc", help="delete store entries no registered lockfile needs")
    s.add_argument("--dry-run", action="store_true", help="list what would go, delete nothing")

    s = sub.add_parser("path", help="print a model's snapshot path (getModelPath)")
    s.add_argument("key", help="the model's key in models.toml")

    sub.add_parser("env", help="print shell exports for using the HF cache offline")


def _tool_commands(sub: Commands) -> None:
    """Commands about a path or the system rather than models.toml's models: hash,
    systemd, completion, validate."""
    s = sub.add_parser("hash", help="print the model hash (or the NAR hash) of a path")
    s.add_argument("path", help="a file or directory")
    s.add_argument("--nar", action="store_true", help="Nix NAR hash, as `nix hash path`")
    s.add_argument("--type", default="sha256", choices=["sha256", "sha512"],
                   help="the NAR hash's algorithm (default sha256)")
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--base32", action="store_const", dest="fmt", const="base32",
                     help="Nix's base32 (with --nar)")
    fmt.add_argument("--base16", action="store_const", dest="fmt", const="base16",
                     help="hexadecimal (with --nar)")
    fmt.add_argument("--sri", action="store_const", dest="fmt", const="sri",
                     help="SRI, the default")

    s = sub.add_parser("systemd", help="print systemd units that apply --system or --user")
    s.add_argument("--unit", choices=["service", "timer"],
                   help="print only this unit (default: every unit, each headed by its path)")

    s = sub.add_parser("completion", help="print a shell completion script")
    s.add_argument("shell", choices=["bash", "zsh", "fish", "keys"],
                   help="the shell (keys: the model keys of models.toml, for the scripts)")

    s = sub.add_parser("validate", help="run validators on a directory or a locked model")
    s.add_argument("target", metavar="PATH|KEY", help="a directory, or a locked model's key")
    s.add_argument("--preset", choices=["strict", "standard", "minimal", "none", "paranoid"],
                   help="run this preset's validators")
    s.add_argument("--validator", action="append", default=[], metavar="NAME[:ARG]",
                   help="run this validator (repeatable)")
    s.add_argument("--continue-on-error", action="store_true",
                   help="run every validator even after one failed")
    s.add_argument("--json", action="store_true", help="the outcomes as JSON on stdout")


class _SubParser(argparse.ArgumentParser):
    """Every subcommand takes -f/--manifest too (`reconcile apply -f x.toml`), and no
    abbreviated option: `apply --prun` is an error, not a prune."""

    def __init__(self, **kw: Any) -> None:
        kw["allow_abbrev"] = False
        super().__init__(**kw)
        self.add_argument("-f", "--manifest", default=argparse.SUPPRESS, help=MANIFEST_HELP)
        _add_modes(self, argparse.SUPPRESS)


MODE_HELP = {
    "system": "the machine's models: /etc/reconcile/models.toml into /var/lib/reconcile,"
              " shared by group 'reconcile', readable by every user",
    "user": "your own models: ~/.config/reconcile/models.toml into your store and HF cache,"
            " reusing the system store's objects",
}


def _add_modes(p: argparse.ArgumentParser, default: Any) -> None:
    g = p.add_mutually_exclusive_group()
    for name, text in MODE_HELP.items():
        g.add_argument(f"--{name}", dest="mode", action="store_const", const=name,
                       default=default, help=text)
    p.add_argument("--cache", metavar="URL", default=default,
                   help="the team cache (s3://…, oci://…, a directory; 'off': none), over"
                   " models.toml's [cache] url and $RECONCILE_CACHE")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    if not args.command:
        parser.print_help()
        return 2
    from .interrupt import install

    install()
    try:
        with _scoped_environment():
            _enter_mode(args)
            try:
                code = COMMANDS[args.command](args) or 0
            finally:
                _close_workspaces()
        sys.stdout.flush()  # a closed pipe shows here, where it is handled, not at exit
        return code
    except ReconcileError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # `reconcile status --json | head -1`: end quietly, like cat
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # so the exit flush cannot fail again
        return 141  # 128 + SIGPIPE, what a shell reports for a program killed by it
    except KeyboardInterrupt:
        print(f"interrupted{_kept_partials()}", file=sys.stderr)
        from .interrupt import CANCEL

        if CANCEL.is_set() and argv is None:  # a real run: no thread stuck on a silent
            sys.stdout.flush()  # socket may keep the process alive; partials and locks
            sys.stderr.flush()  # are on disk or released by the kernel
            os._exit(130)
        return 130
    except OSError as e:  # disk full, permissions … outside the places that translate them
        if os.environ.get("RECONCILE_DEBUG"):
            raise
        print(f"error: {e.strerror or e}{f': {e.filename}' if e.filename else ''}",
              file=sys.stderr)
        return 1
    except Exception as e:  # a bug of ours: one line, and how to get the whole story
        if os.environ.get("RECONCILE_DEBUG"):
            raise
        print(f"error: internal error: {type(e).__name__}: {e}\n  hint: run again with"
              " RECONCILE_DEBUG=1 for the traceback, and report it", file=sys.stderr)
        return 1


WRITES = {"lock", "apply", "gc", "verify", "add", "remove", "pull", "import"}


@contextlib.contextmanager
def _scoped_environment() -> Any:
    """--cache and the modes set variables (and --system the umask) for this command and
    the validators it starts; put back afterwards, for callers of main() in-process."""
    from .fsutil import set_umask, umask

    names = ("RECONCILE_CACHE", "RECONCILE_STORE", "HF_HUB_CACHE", "RECONCILE_PEER_STORES")
    saved, mask = {n: os.environ.get(n) for n in names}, umask()
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if umask() != mask:
            set_umask(mask)


def _enter_mode(args: argparse.Namespace) -> None:
    """--system / --user: the mode's manifest (unless -f names one), store and HF cache."""
    args.mode_info = None
    if getattr(args, "cache", None):
        os.environ["RECONCILE_CACHE"] = args.cache
    if not getattr(args, "mode", None):
        return
    from . import modes

    mode = modes.system_mode() if args.mode == "system" else modes.user_mode()
    # verify only reads unless it repairs: everyone may check the system's models
    writes = args.command in WRITES and not (args.command == "verify" and not args.repair)
    manifest = modes.activate(mode, writes=writes)
    if not args.manifest:
        args.manifest = str(manifest)
    args.mode_info = mode
    if args.command in ("lock", "add", "remove"):
        modes.check_writable(mode, Path(args.manifest).with_name("models.lock"))


def _kept_partials() -> str:
    """'; N partial downloads are kept …' when there are some, else nothing: the line
    after Ctrl-C says only what is true."""
    from . import settings

    try:
        n = sum(1 for p in (settings.store_dir() / "tmp").iterdir()
                if p.name.endswith((".part", ".ranges")) and p.stat().st_size)
    except OSError:
        n = 0
    if not n:
        return ""
    return f"; {n} partial download{'s' if n > 1 else ''} kept, resumed by the next run"


_OPENED: list[Any] = []  # the command's workspaces: closed when it ends


def _close_workspaces() -> None:
    while _OPENED:
        try:
            _OPENED.pop().close()
        except Exception:  # closing must not hide how the command ended
            pass


def _ws(args: argparse.Namespace) -> Any:
    from .workspace import Workspace

    ws = Workspace(manifest_path(args))
    _OPENED.append(ws)
    return ws


def manifest_path(args: argparse.Namespace) -> Path:
    """-f, else $RECONCILE_MANIFEST, else models.toml here or in the nearest parent,
    stopping at the repository root (a directory with .git) or the filesystem root, as
    uv, cargo and git look for theirs. Not found: ./models.toml (the error says so)."""
    if args.manifest:
        return Path(args.manifest)
    if env := os.environ.get("RECONCILE_MANIFEST"):
        return Path(env)
    here = Path.cwd()
    for d in (here, *here.parents):
        if (d / "models.toml").is_file():
            return Path("models.toml") if d == here else d / "models.toml"
        if (d / ".git").exists():
            break
    return Path("models.toml")


def cmd_init(args: argparse.Namespace) -> int:
    from .integration import starter_manifest_text

    path = Path(args.manifest or os.environ.get("RECONCILE_MANIFEST") or "models.toml")
    if path.exists() and not args.force:
        raise UsageError(f"{path} already exists", hint="use --force to overwrite it")
    path.write_text(starter_manifest_text(), "utf-8")
    print(f"wrote {path}; next: `reconcile lock` then `reconcile apply`")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    from . import settings
    from .edit import declaration

    decl = declaration(args.source, name=args.name, files=args.files, revision=args.revision,
                       hf_endpoint=settings.hf_endpoint(),
                       mlflow_uri=settings.env_value("MLFLOW_TRACKING_URI"),
                       s3_endpoint=settings.env_value("AWS_ENDPOINT_URL_S3")
                       or settings.env_value("AWS_ENDPOINT_URL"))
    ws = _ws(args)
    report = ws.add(decl, lock=not args.no_lock)
    print(f"added models.{decl.key} ({decl.source_type}) to {ws.manifest_path}")
    if report is not None:
        m = report.lock.models[decl.key]
        print(f"locked {decl.key} in {ws.lock_path}: {len(m.files)} files, {m.hash};"
              " next: `reconcile apply`")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    ws = _ws(args)
    had = ws.remove(args.key)
    print(f"removed models.{args.key} from {ws.manifest_path}"
          + (f" and {ws.lock_path}" if had else "")
          + "; `reconcile apply --prune` unlinks it from the HF cache")
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    """Each file parsed and checked as lock would; all problems, one line each."""
    from .config import load_manifest

    paths = [Path(f) for f in args.files] or [manifest_path(args)]
    bad = 0
    for path in paths:
        try:
            m = load_manifest(path)
        except ReconcileError as e:
            print(f"error: {e}", file=sys.stderr)
            bad += 1
            continue
        print(f"{path}: {len(m.models)} models, valid")
    return 2 if bad else 0


def _manifests_of(files: list[str]) -> list[Path]:
    """The models.toml beside each given models.toml or models.lock, each once, in the
    order given: pre-commit passes both files of a directory, and a monorepo has many."""
    seen: dict[Path, None] = {}
    for f in files:
        seen.setdefault(Path(f).parent / "models.toml", None)
    return list(seen)


def _check_lock(ws: Any, fix: str) -> int:
    """`lock --check` for one workspace: 0 up to date, 1 stale (each model named)."""
    stale = ws.stale()
    if not stale:
        print(f"{ws.lock_path} is up to date")
        return 0
    for key, why in sorted(stale.items()):
        print(f"{why}: {key}")
    print(f"{ws.lock_path} is out of date; run `{fix}`", file=sys.stderr)
    return 1


def _check_locks(files: list[str]) -> int:
    """`lock --check FILE…`: every manifest named, each checked even after one failed;
    the worst exit code (2 for a manifest that does not load, 1 for a stale lock)."""
    from .workspace import Workspace

    worst = 0
    for manifest in _manifests_of(files):
        try:
            ws = Workspace(manifest)
            _OPENED.append(ws)
            here = manifest.parent == Path(".")
            code = _check_lock(ws, "reconcile lock" if here else f"reconcile -f {manifest} lock")
        except ReconcileError as e:
            print(f"error: {e}", file=sys.stderr)
            code = e.exit_code
        worst = max(worst, code)
    return worst


def cmd_lock(args: argparse.Namespace) -> int:
    if args.only and not args.key:
        raise UsageError("lock: --only goes with --key", hint="`reconcile lock --key --only KEY`")
    if args.files and not args.check:
        raise UsageError("FILE arguments go with `lock --check`",
                         hint="`reconcile -f DIR/models.toml lock` locks another manifest")
    if args.check and args.files:
        return _check_locks(args.files)
    ws = _ws(args)
    if args.key:
        print(ws.ci_key(args.only))
        return 0
    if args.check:
        return _check_lock(ws, "reconcile lock")
    upgrade: Any = False
    if args.upgrade:
        upgrade = True if "*" in args.upgrade else list(args.upgrade)
    report = ws.lock(upgrade=upgrade, offline=args.offline, jobs=args.jobs)
    verb = "wrote" if report.written else "unchanged"
    print(f"{verb} {ws.lock_path}: {len(report.resolved)} resolved, {len(report.kept)} kept,"
          f" {len(report.removed)} removed")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from .plan import render

    ws = _ws(args)
    lock, changes = ws.preview_lock(locked=args.locked, offline=args.offline)
    if changes:
        print(f"{ws.lock_path} would change (apply locks first):")
        for symbol, key, what in changes:
            print(f"  {symbol} {key}: {what}")
        print()
    plan = ws.plan(lock, prune=args.prune, revalidate=args.revalidate)
    if changes and plan.empty:  # "No changes" would contradict the lines above
        print(f"The store and HF cache match already: apply only writes {ws.lock_path}.")
    else:
        print(render(plan))
    return pending_exit(args.exit_code, bool(changes or not plan.empty))


def pending_exit(asked: bool, pending: bool) -> int:
    """The one rule of `status` and `plan`: pending work is not a failure (0), unless
    --exit-code asks scripts to be told (1), as Terraform's -detailed-exitcode and
    `git diff --exit-code` do. A failure (a model that failed validation) is 1 anyway."""
    return 1 if asked and pending else 0


def cmd_apply(args: argparse.Namespace) -> int:
    mode = args.progress
    if mode == "auto":
        mode = "bars" if sys.stderr.isatty() else "plain"
    if mode != "json":
        return _apply(args, mode)
    from . import ui

    sink = ui.JsonProgress()
    try:
        return _apply(args, mode, sink)
    except ReconcileError as e:  # an event, not an `error:` line among the events
        sink.emit("error", message=e.message, hint=e.hint, exit_code=e.exit_code)
        return e.exit_code


def _peers_name() -> str:
    """The stores objects were copied from, as one phrase ("the system store")."""
    from . import settings
    from .modes import store_name

    names = sorted({store_name(p) for p in settings.peer_stores()})
    return names[0] if len(names) == 1 else "other stores on this machine"


def _failures(report: Any) -> list[dict[str, Any]]:
    """Each failed action for programs: the model and file, not an object id."""
    out = []
    for a, err in report.failures:
        msg = str(err) if isinstance(err, ReconcileError) else f"{type(err).__name__}: {err}"
        out.append({"model": a.model.key if a.model else None,
                    "file": a.file.path if a.file else None, "action": a.kind, "message": msg})
    return out


def _apply(args: argparse.Namespace, mode: str, sink: Any = None) -> int:
    """apply with bars, lines, nothing, or ``sink`` (NDJSON): then every word meant for
    stderr is an event, so a program reading it meets nothing but JSON."""
    from . import ui
    from .apply import failure_message
    from .plan import human

    ws = _ws(args)
    if args.mode_info is not None and not args.locked and ws.stale():
        from .modes import check_writable

        check_writable(args.mode_info, ws.lock_path)  # apply would lock first
    run = dict(jobs=args.jobs, offline=args.offline, prune=args.prune, locked=args.locked,
               revalidate=args.revalidate)
    if mode == "bars":
        with ui.RichProgress(color=args.color) as bars:
            report = ws.apply(**run, progress=bars)
    else:
        if sink is None and mode == "plain":
            sink = ui.LineProgress()
        report = ws.apply(**run, progress=sink)
    json_mode = isinstance(sink, ui.JsonProgress)
    if json_mode:
        sink.emit("summary", ok=report.ok, done=report.done, bytes=report.bytes_fetched,
                  failures=_failures(report))
    for w in report.warnings:
        if json_mode:
            sink.emit("warning", message=w)
        else:
            print(f"warning: {w}", file=sys.stderr)
    if report.ok and args.mode_info is not None:
        from .modes import write_profile

        if said := write_profile(args.mode_info):
            print(said)
    if not report.ok:
        if json_mode:
            sink.emit("error", message=failure_message(report), hint=None, exit_code=1)
        else:
            print(f"error: {failure_message(report)}", file=sys.stderr)
        return 1
    d = report.done
    if not d:
        print(f"Nothing to do: {len(report.plan.lock.models)} models up to date.")
    else:
        cached = f", {report.cache_hits} from the team cache" if report.cache_hits else ""
        copied = f" {d['copied']} copied from {_peers_name()}," if d.get("copied") else ""
        print(f"Applied: {d.get('fetch', 0)} fetched ({human(report.bytes_fetched)}{cached}),"
              f"{copied} {d.get('assemble', 0)} assembled, {d.get('validate', 0)} validated,"
              f" {d.get('link', 0)} linked, {d.get('unlink', 0)} unlinked.")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .plan import human

    ws = _ws(args)
    r = ws.push(args.keys or None, jobs=args.jobs, verify=args.verify)
    print(f"pushed to {ws.remote.url}: {r.uploaded} objects uploaded ({human(r.bytes_sent)}),"
          f" {r.present} already there, {r.models} model entries written")
    if r.replaced:
        print(f"replaced a corrupt copy of {', '.join(sorted(r.replaced))}")
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from .plan import human

    ws = _ws(args)
    n, size = ws.pull(args.keys or None, jobs=args.jobs)
    for w in ws.remote.warnings:
        print(f"warning: {w}", file=sys.stderr)
    print(f"pulled {n} objects ({human(size)}) from {ws.remote.url}; next: `reconcile apply"
          " --offline`")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .bundle import export
    from .plan import human

    ws = _ws(args)
    models = ws.selected_models(args.keys or None)
    n, size = export(models, ws.store, args.output)
    print(f"exported {len(models)} models, {n} objects ({human(size)}) to {args.output}",
          file=sys.stderr if args.output == "-" else sys.stdout)
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from . import settings
    from .bundle import import_archive
    from .plan import human
    from .store import Store

    store = Store(settings.store_dir()).ensure()
    r = import_archive(args.file, store)
    print(f"imported {r.objects} objects ({human(r.bytes)}), {r.present} already in the store,"
          f" for {', '.join(r.models) or 'no models'}; next: `reconcile apply --offline`")
    return 0


def _dir_entries(target: Path, skip: set[str]) -> list[Any]:
    """A directory's entries as the lock would record them (links with their target),
    so that `sign DIR` and `sign KEY` sign the same way."""
    from .lockfile import LockedFile
    from .treehash import scan_tree

    out = []
    for e in scan_tree(target):
        if e.path in skip:
            continue
        target_of = os.readlink(target / e.path) if e.type == "l" else None
        out.append(LockedFile(e.path, e.size, e.sha256 if e.type == "f" else "",
                              type=e.type, target=target_of))
    return out


def cmd_sign(args: argparse.Namespace) -> int:
    from .fsutil import atomic_write_text
    from .signing import sign_entries

    target = Path(args.target)
    out = Path(args.output)
    if target.is_dir():
        entries = _dir_entries(target, {os.path.relpath(out.resolve(), target.resolve())})
        name = target.resolve().name
    else:
        ws = _ws(args)
        m = ws.model(args.target)
        decl = ws.manifest.models.get(m.key)
        own = decl.signature.file if decl and decl.signature else "model.sig"
        entries = [f for f in m.files if f.path != own]
        name = m.name
    try:
        key = Path(args.private_key).read_bytes()
    except OSError as e:
        raise UsageError(f"--private-key: cannot read {args.private_key}: {e.strerror}") from None
    password = None
    if args.password_env:
        from . import settings

        value = settings.env_value(args.password_env)
        if value is None:
            raise UsageError(f"--password-env: {args.password_env} is not set")
        password = value.encode()
    try:
        bundle = sign_entries(entries, private_key_pem=key, password=password, model_name=name)
    except ValueError as e:
        raise UsageError(f"{args.target}: {e}") from None
    atomic_write_text(out, bundle.decode())
    signed = sum(e.type != "d" for e in entries)
    print(f"signed {signed} files and links of {name} into {out}")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    rows = _ws(args).status()
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        for r in rows:
            where = r.get("hf_repo_id", "")
            print(f"{r['state']:<9} {r['key']:<24} {r.get('hash') or '-':<52} {where}")
            if r.get("validation"):
                print(f"          failed validation: {r['validation']}")
            for c in r.get("conflicts", []):
                print(f"          conflict: {c}")
            for w in r.get("warnings", []):
                print(f"          warning: {w}")
    if any(r["state"] == "invalid" for r in rows):
        return 1  # failed validation: apply cannot fix it, a person must look
    return pending_exit(args.exit_code, any(r["state"] != "ok" for r in rows))


def cmd_verify(args: argparse.Namespace) -> int:
    r = _ws(args).verify(args.keys, repair=args.repair)
    for key, paths in sorted(r.corrupt.items()):
        print(f"corrupt: {key}: {', '.join(paths)}" + (" (repaired)" if args.repair else ""))
    if not r.corrupt:
        none = " (none installed)" if not r.checked else ""
        print(f"verified {len(r.checked)} of {r.selected} locked models{none}")
    return 1 if r.corrupt and not args.repair else 0


def cmd_gc(args: argparse.Namespace) -> int:
    from .plan import human

    r = _ws(args).gc(dry_run=args.dry_run)
    verb = "would delete" if args.dry_run else "deleted"
    print(f"{verb} {len(r.models)} model trees, {len(r.objects)} objects ({human(r.bytes)}),"
          f" {len(r.partials)} partial files")
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    print(_ws(args).path(args.key))
    return 0


def cmd_env(args: argparse.Namespace) -> int:
    import shlex

    from . import settings

    print(f"export HF_HUB_CACHE={shlex.quote(str(settings.hf_hub_cache()))}")
    print("export HF_HUB_OFFLINE=1")
    return 0


def cmd_hash(args: argparse.Namespace) -> int:
    path = Path(args.path)
    if not os.path.lexists(path):
        raise UsageError(f"{path}: no such file or directory")
    if args.nar:
        from .narhash import format_hash, nar_hash

        print(format_hash(nar_hash(path, args.type), args.type, args.fmt or "sri"))
        return 0
    from .treehash import hash_path

    if args.type != "sha256" or (args.fmt and args.fmt != "sri"):
        raise UsageError("the model hash is always an SRI sha256; --type/--base* apply to --nar")
    print(hash_path(path))
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .validation.runner import report

    outcomes = _ws(args).validate(args.target, preset=args.preset, validators=args.validator,
                                  continue_on_error=args.continue_on_error)
    failed = [o for o in outcomes if o.status != "pass" and o.on_failure == "abort"]
    if args.json:
        from dataclasses import asdict

        print(json.dumps([asdict(o) for o in outcomes], indent=2))
    else:
        for o in outcomes:
            print(f"{o.status:<8} {o.validator}" + (f" ({o.on_failure})" if o.status != "pass" else ""))
        if failed:
            print(report(args.target, failed), file=sys.stderr)
    return 1 if failed else 0


def cmd_systemd(args: argparse.Namespace) -> int:
    import shutil

    from . import modes

    if args.mode_info is None:
        raise UsageError("systemd: say which models: `reconcile systemd --system` (a service"
                         " and a daily timer) or `reconcile systemd --user` (at login)")
    exe = shutil.which("reconcile")
    units = modes.systemd_units(args.mode_info, [exe] if exe else
                                [sys.executable, "-m", "reconcile"])
    if args.unit:
        name = f"reconcile.{args.unit}"
        if name not in units:
            raise UsageError(f"--user has no {args.unit} unit; the service starts at login")
        print(units[name], end="")
        return 0
    where = modes.unit_dir(args.mode_info)
    print("\n".join(f"# {where}/{name}\n{text}" for name, text in units.items()), end="")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    if args.shell == "keys":  # called by the scripts on every <TAB>: quiet and fast
        try:
            from .config import load_manifest

            print("\n".join(load_manifest(manifest_path(args)).models))
        except ReconcileError:
            pass
        return 0
    from .completion import script

    print(script(args.shell, _parser()))
    return 0


COMMANDS = {
    "init": cmd_init,
    "add": cmd_add,
    "remove": cmd_remove,
    "check": cmd_check,
    "lock": cmd_lock,
    "plan": cmd_plan,
    "apply": cmd_apply,
    "push": cmd_push,
    "pull": cmd_pull,
    "export": cmd_export,
    "import": cmd_import,
    "sign": cmd_sign,
    "status": cmd_status,
    "verify": cmd_verify,
    "gc": cmd_gc,
    "path": cmd_path,
    "env": cmd_env,
    "hash": cmd_hash,
    "validate": cmd_validate,
    "systemd": cmd_systemd,
    "completion": cmd_completion,
}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
