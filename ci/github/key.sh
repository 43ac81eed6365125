#!/usr/bin/env bash
# action.yml: refuse a stale models.lock with an annotation on the lock (the run would
# otherwise download models nobody locked), then the lock's cache key: `reconcile lock
# --key`, the models' hashes only, so every branch with the same models shares the entry.
# Writes key, cache-key and restore-key to $GITHUB_OUTPUT.
set -euo pipefail

# one workflow-command line: %, CR and LF escaped as the runner expects
annotate() {
  local file=$1 title=$2 message=$3
  message=${message//'%'/'%25'}
  message=${message//$'\r'/'%0D'}
  message=${message//$'\n'/'%0A'}
  echo "::error file=$file,title=$title::$message"
}

lock="$(dirname "$INPUT_MANIFEST")/models.lock"
lock="${lock#./}"
status=0
out=$("$RECONCILE" lock --check -f "$INPUT_MANIFEST" 2>&1) || status=$?
echo "$out"
if [ "$status" -eq 1 ]; then
  changed=$(sed -n 's/^[a-z -]*: \([A-Za-z0-9._+-]*\)$/\1/p' <<<"$out" | paste -sd, - | sed 's/,/, /g')
  annotate "$lock" "models.lock is out of date" \
    "$lock does not match $INPUT_MANIFEST${changed:+ (changed: $changed)}: run \`reconcile lock\` and commit $lock"
  exit 1
elif [ "$status" -ne 0 ]; then
  annotate "$INPUT_MANIFEST" "reconcile" "$out"
  exit "$status"
fi

key=$("$RECONCILE" lock --key -f "$INPUT_MANIFEST")
{
  echo "key=$key"
  echo "cache-key=reconcile-models-$RUNNER_OS-$key"
  echo "restore-key=reconcile-models-$RUNNER_OS-"
} >>"$GITHUB_OUTPUT"
echo "reconcile: cache key reconcile-models-$RUNNER_OS-$key"
