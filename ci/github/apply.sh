#!/usr/bin/env bash
# action.yml: apply models.lock into the restored store and HF cache (the team cache first
# when one is given, the sources last), prune what the lock no longer names, and hand the
# HF cache to the job's later steps, offline. Writes cache-hit to $GITHUB_OUTPUT and
# HF_HUB_CACHE, RECONCILE_STORE and HF_HUB_OFFLINE=1 to $GITHUB_ENV.
set -euo pipefail

export RECONCILE_STORE="$MODELS/store" HF_HUB_CACHE="$MODELS/huggingface/hub"
unset HF_HUB_OFFLINE # set by an earlier use of this action; this step is the one that fetches

case "${HIT:-}" in
  true) echo "reconcile: the cache holds this lock's models" ;;
  false) echo "reconcile: the cache holds another lock's models; fetching the difference" ;;
  *) echo "reconcile: no cache yet; fetching every model" ;;
esac
args=(apply --locked --prune --progress plain -f "$INPUT_MANIFEST")
if [ -n "${INPUT_CACHE:-}" ]; then args+=(--cache "$INPUT_CACHE"); fi
"$RECONCILE" "${args[@]}"

{
  echo "HF_HUB_CACHE=$HF_HUB_CACHE"
  echo "RECONCILE_STORE=$RECONCILE_STORE"
  echo "HF_HUB_OFFLINE=1"
} >>"$GITHUB_ENV"
echo "cache-hit=$([ "${HIT:-}" = true ] && echo true || echo false)" >>"$GITHUB_OUTPUT"
