#!/usr/bin/env bash
# Runs the whole test suite against a real local Kafka broker and real swtpm instances.
# Starts the broker it needs and stops it afterwards, whatever the outcome.
set -uo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
HG="$VENV/bin/hostgate"
export HOSTGATE_HOME=${HOSTGATE_HOME:-$PWD/.hostgate}
export HOSTGATE_CORPUS=${HOSTGATE_CORPUS:-../shared/corpus}

started_here=0
if ! "$HG" kafka status --quiet; then
  "$HG" kafka up || { echo "error: the local Kafka broker did not start; see: $HG kafka logs" >&2; exit 1; }
  started_here=1
fi
cleanup() { [[ $started_here -eq 1 ]] && "$HG" kafka down; }
trap cleanup EXIT INT TERM

export HOSTGATE_BOOTSTRAP=$("$HG" kafka status --address)

"$VENV/bin/ruff" check services tests bench || exit 1
"$VENV/bin/mypy" || exit 1

"$VENV/bin/pytest" "$@"
rc=$?
if [[ $rc -eq 5 ]]; then
  echo "error: pytest collected no tests" >&2
  exit 1
fi
exit $rc
