#!/usr/bin/env bash
# PostgreSQL's own regression suite through pgcell, in one command; see
# scripts/pg_regress.py (the implementation) and docs/regression.md.
#
#   scripts/pg_regress.sh PGCELL_BINARY [--schedule full|subset] [--modes direct,passthrough,session,transaction]
exec python3 "$(dirname "$0")/pg_regress.py" "$@"
