#!/usr/bin/env bash
# Runs `npm test` (or the command given as arguments) with two CPU-burning processes beside it, one per
# core of a 2-core machine, to check that the suite's waits hold on a loaded machine. The hogs are
# killed when this script exits, however it exits.
#
#   scripts/test-under-load.sh            # npm test beside two hogs
#   scripts/test-under-load.sh npx vitest run test/multinode.test.ts
set -euo pipefail
cd "$(dirname "$0")/.."

hogs=()
stop_hogs() {
  for pid in "${hogs[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${hogs[@]}"; do wait "$pid" 2>/dev/null || true; done
}
trap stop_hogs EXIT
trap 'exit 130' INT TERM

for _ in 1 2; do
  node -e 'for (;;) {}' &
  hogs+=("$!")
done
echo "test-under-load: CPU hogs ${hogs[*]} running" >&2

if [ "$#" -gt 0 ]; then
  "$@"
else
  npm test
fi
