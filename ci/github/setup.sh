#!/usr/bin/env bash
# action.yml's first step: where the models and reconcile's own venv live, what to install
# into it, and the key of the venv's cache (the OS, the Python, and what is installed: a
# version, a requirement, or the digest of a source tree, so an edited checkout is not
# served the venv of its previous state). Writes path, venv, spec and venv-key to
# $GITHUB_OUTPUT.
set -euo pipefail

# a digest of a reconcile source tree: pyproject.toml and the package, by content
tree_digest() {
  (cd "$1" && find pyproject.toml reconcile -type f ! -name '*.pyc' -print0 2>/dev/null \
    | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)
}

models="${INPUT_PATH/#\~/$HOME}"
case "$models" in /*) ;; *) models="$PWD/$models" ;; esac
venv="$HOME/.cache/reconcile-action/venv"

if ! pyid=$("$INPUT_PYTHON" -c 'import sys; assert sys.version_info >= (3, 11)
print(sys.version.split()[0], sys.executable)' 2>/dev/null); then
  echo "::error title=reconcile::input python ($INPUT_PYTHON) is not Python 3.11 or newer;" \
    "set up one first (actions/setup-python) or name it in the action's python input"
  exit 1
fi

if [ -n "$INPUT_SOURCE" ]; then
  spec="$INPUT_SOURCE" what="source $INPUT_SOURCE"
  if [ -d "$INPUT_SOURCE" ]; then what="$what $(tree_digest "$INPUT_SOURCE")"; fi
elif [ -n "$INPUT_VERSION" ]; then
  # a ref of the action's own repository: PyPI's "reconcile" is someone else's project
  if [ -z "${ACTION_REPOSITORY:-}" ] || [[ ! "$INPUT_VERSION" =~ ^[A-Za-z0-9][A-Za-z0-9._/-]*$ ]]; then
    echo "::error title=reconcile::input version ($INPUT_VERSION) is a tag or commit of the" \
      "action's repository, for an action used as <owner>/reconcile@<ref>; otherwise name" \
      "a pip requirement in the source input"
    exit 1
  fi
  spec="git+${GITHUB_SERVER_URL:-https://github.com}/$ACTION_REPOSITORY@$INPUT_VERSION"
  what="version $INPUT_VERSION of $ACTION_REPOSITORY"
else
  spec="$GITHUB_ACTION_PATH" what="action $(tree_digest "$GITHUB_ACTION_PATH")"
fi
digest=$(printf '%s\n' "$what" "$pyid" | sha256sum | cut -c1-16)

mkdir -p "$models"
{
  echo "path=$models"
  echo "venv=$venv"
  echo "spec=$spec"
  echo "venv-key=reconcile-venv-$RUNNER_OS-$digest"
} >>"$GITHUB_OUTPUT"
echo "reconcile: models in $models; reconcile from $what (Python $pyid)"
