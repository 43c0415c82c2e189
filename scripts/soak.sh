#!/usr/bin/env bash
# Soak run, on demand (not in CI): pgbench through pgcell with a new
# connection per transaction, the backend restarted every third round, for
# SECONDS seconds (default 600). Prints pgcell's RSS and open file
# descriptors per round and at start/end; fails on any failed transaction,
# RSS growth over 32 MiB or fd growth over 8.
#
#   scripts/soak.sh            # 10 minutes
#   scripts/soak.sh 180        # 3 minutes
#   PGCELL_SOAK_ROUND_SECS=30 scripts/soak.sh 1800
set -euo pipefail
cd "$(dirname "$0")/.."
export PGCELL_SOAK_SECS="${1:-${PGCELL_SOAK_SECS:-600}}"
exec cargo test --test hardening -- --ignored --exact soak::soak --nocapture
