#!/usr/bin/env bash
# The main job: starts the local broker (unless one is running), runs `hostgate demo` (topics,
# the four stages, a simulated fleet, the final table and reports), and stops what it started,
# on success, failure or Ctrl-C. Extra arguments go to `hostgate demo` (see its --help).
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
HG="$VENV/bin/hostgate"
export HOSTGATE_HOME=${HOSTGATE_HOME:-$PWD/.hostgate}

started_here=0
if ! "$HG" kafka status --quiet; then
  "$HG" kafka up || exit 1
  started_here=1
fi
cleanup() { [[ $started_here -eq 1 ]] && "$HG" kafka down; }
trap cleanup EXIT INT TERM

export HOSTGATE_BOOTSTRAP=$("$HG" kafka status --address)
"$HG" demo "$@"
