#!/usr/bin/env bash
# The main job. Starts the local broker, ensures the topics, runs what the pipeline has today,
# and stops everything it started, on success, failure or Ctrl-C.
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

"$HG" topics ensure || exit 1
exec_demo=("$HG" demo "$@")
if "$HG" demo --help >/dev/null 2>&1; then
  "${exec_demo[@]}"
else
  echo "The end-to-end demo (four stages + simulated fleet) is not built yet; see README 'Status'."
  "$HG" fleet simulate --hosts 6 --tamper secure_boot_off=1 --tamper forged_log=1
fi
