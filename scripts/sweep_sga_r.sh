#!/usr/bin/env bash
# Sweep SGA's smoothing rate r on a benchmark (default: synthetic with the embedded model).
# Records go to results/sweeps/sga-r/ with their own LEADERBOARD.md; target and retain rows are
# evaluated once and reused. Usage: scripts/sweep_sga_r.sh [extra harness run arguments]
set -euo pipefail
out=${SWEEP_RESULTS:-results/sweeps/sga-r}
for r in 0 -0.2 -0.4 -0.6 -0.8 -1 -2; do
  harness run --methods sga --benchmark synthetic --set "sga.r=$r" --results-dir "$out" --no-save-models "$@"
done
