#!/bin/sh
# Dev Container Feature "reconcile": install the reconcile CLI into its own venv, prepare the
# mount point of the shared model volume, and install the post-create script that runs
# `reconcile apply --locked`. Options arrive as VERSION, SOURCE and STORE; the devcontainer
# CLI also passes _REMOTE_USER (and _CONTAINER_USER).
#
# Safe to run again (idempotent). RECONCILE_FEATURE_PREFIX (default /usr/local) moves every
# system path (venv, command link, post-create script; the tests set it so they never write
# to /usr/local); RECONCILE_FEATURE_PYTHON picks the interpreter (default: a python3 >= 3.11).
set -eu

VERSION="${VERSION:-latest}"
SOURCE="${SOURCE:-}"
STORE="${STORE:-/var/cache/reconcile}"
PREFIX="${RECONCILE_FEATURE_PREFIX:-/usr/local}"
VENV="$PREFIX/lib/reconcile/venv"
BIN="$PREFIX/bin/reconcile"
SHARE="$PREFIX/share/reconcile"
POST_CREATE="$SHARE/post-create.sh"

say() { printf 'reconcile feature: %s\n' "$*"; }
die() { printf 'reconcile feature: error: %s\n' "$*" >&2; exit 1; }
# single-quote a value for the generated shell script
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }

# --- the remote user owns the volume's mount point -----------------------------------------
# Docker copies the image directory's ownership and mode into a fresh named volume, so the
# directory made here decides who can write to the volume the first time it is created.
REMOTE_USER="${_REMOTE_USER:-${_CONTAINER_USER:-root}}"
if id "$REMOTE_USER" >/dev/null 2>&1; then
  OWNER="$(id -u "$REMOTE_USER"):$(id -g "$REMOTE_USER")"
else
  OWNER=""
  say "user '$REMOTE_USER' does not exist (yet): $STORE will be world-writable"
fi

# --- a Python >= 3.11 with venv ------------------------------------------------------------
python_ok() {
  "$1" -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 11))' >/dev/null 2>&1
}
PYTHON="${RECONCILE_FEATURE_PYTHON:-}"
if [ -z "$PYTHON" ]; then
  for candidate in "$(command -v python3 || true)" /usr/local/python/current/bin/python3 \
      /usr/local/bin/python3 /usr/bin/python3; do
    if [ -n "$candidate" ] && [ -x "$candidate" ] && python_ok "$candidate"; then
      PYTHON="$candidate"
      break
    fi
  done
fi
if [ -z "$PYTHON" ] || ! python_ok "$PYTHON"; then
  die "reconcile needs Python >= 3.11 with the venv module; use a Python image \
(mcr.microsoft.com/devcontainers/python:3.11) or add ghcr.io/devcontainers/features/python"
fi

# --- the venv ------------------------------------------------------------------------------
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c '' >/dev/null 2>&1; then
  say "reusing the venv $VENV"
else
  say "creating the venv $VENV with $PYTHON"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
pip_install() {
  "$VENV/bin/python" -m pip install --no-input --no-cache-dir --disable-pip-version-check "$@"
}

if [ "$SOURCE" = workspace ]; then
  MODE=workspace
  say "source=workspace: the post-create script installs reconcile from the workspace (pip install -e)"
  # the post-create script runs as the remote user and installs into this venv
  if [ -n "$OWNER" ]; then chown -R "$OWNER" "$VENV"; fi
else
  MODE=package
  if [ -n "$SOURCE" ]; then
    REQUIREMENT="$SOURCE"
    if [ "$VERSION" != latest ]; then say "source is set: ignoring version=$VERSION"; fi
  elif [ "$VERSION" = latest ]; then
    REQUIREMENT=reconcile
  else
    REQUIREMENT="reconcile==$VERSION"
  fi
  say "pip install $REQUIREMENT into $VENV"
  pip_install "$REQUIREMENT"
  # the name "reconcile" is not ours on every index: make sure this is the model tool
  if ! "$VENV/bin/reconcile" env 2>/dev/null | grep -q '^export HF_HUB_CACHE='; then
    die "'$REQUIREMENT' did not install the reconcile model CLI (no working \`reconcile env\`); \
set the feature's source option to a requirement, path or URL of reconcile"
  fi
  say "installed $("$VENV/bin/reconcile" --version)"
fi

mkdir -p "$(dirname "$BIN")"
ln -sfn "$VENV/bin/reconcile" "$BIN"
say "linked $BIN -> $VENV/bin/reconcile"

# --- the volume's mount point: store/ and huggingface/hub, as containerEnv says ------------
mkdir -p "$STORE/store" "$STORE/huggingface/hub"
if [ -n "$OWNER" ]; then
  chown -R "$OWNER" "$STORE"
  chmod 0775 "$STORE" "$STORE/store" "$STORE/huggingface" "$STORE/huggingface/hub"
else
  chmod 0777 "$STORE" "$STORE/store" "$STORE/huggingface" "$STORE/huggingface/hub"
fi
say "prepared $STORE for ${REMOTE_USER}"

# --- the post-create script (the feature's postCreateCommand) ------------------------------
mkdir -p "$SHARE"
{
  echo '#!/bin/sh'
  echo '# Written by the reconcile Dev Container Feature; its postCreateCommand. Runs in the'
  echo '# workspace folder as the remote user: installs the models models.lock pins.'
  echo 'set -eu'
  echo "VENV=$(quote "$VENV")"
  echo "MODE=$(quote "$MODE")"
  cat <<'EOF'
RECONCILE="$VENV/bin/reconcile"
say() { printf 'reconcile post-create: %s\n' "$*"; }
fail() { printf 'reconcile post-create: error: %s\n' "$*" >&2; exit 1; }

if [ "$MODE" = workspace ]; then
  [ -f pyproject.toml ] || fail "source=workspace, but $PWD has no pyproject.toml"
  say "installing reconcile from $PWD: pip install -e ."
  "$VENV/bin/python" -m pip install --no-input --disable-pip-version-check -q -e . \
    || fail "pip install -e $PWD failed"
fi
if [ -z "${RECONCILE_MANIFEST:-}" ] && [ ! -f models.toml ]; then
  say "no models.toml in $PWD (and RECONCILE_MANIFEST unset): nothing to apply"
  exit 0
fi
for dir in "${RECONCILE_STORE:-}" "${HF_HUB_CACHE:-}"; do
  [ -n "$dir" ] || continue
  mkdir -p "$dir" 2>/dev/null || true
  [ -w "$dir" ] || fail "$dir is not writable by $(id -un); the volume was probably created \
by a container with another user: sudo chown -R $(id -un) $dir"
done
say "store ${RECONCILE_STORE:-(default)}, Hugging Face cache ${HF_HUB_CACHE:-(default)}"
say "running: HF_HUB_OFFLINE=0 $RECONCILE apply --locked"
status=0
HF_HUB_OFFLINE=0 "$RECONCILE" apply --locked || status=$?
if [ "$status" -ne 0 ]; then
  printf 'reconcile post-create: error: %s\n' "\`reconcile apply --locked\` failed (exit $status); \
if models.lock is out of date, run \`reconcile lock\` and commit models.lock" >&2
  exit "$status"
fi
say "done: the models models.lock pins are installed"
EOF
} >"$POST_CREATE.tmp"
chmod 0755 "$POST_CREATE.tmp"
mv -f "$POST_CREATE.tmp" "$POST_CREATE"
say "wrote $POST_CREATE (the postCreateCommand)"
