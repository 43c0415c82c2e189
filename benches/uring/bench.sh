#!/usr/bin/env bash
# Measure relay CPU per transaction, tokio/epoll vs io_uring (see README.md).
# Run as root (PostgreSQL runs as the postgres user via runuser).
#   RUNS=3 DURATION=8 bash benches/uring/bench.sh
# Optional: PIN=1 (see below), RATE=N (pgbench -R N, fixed offered load), MODES="epoll uring".
# Prints one TSV row per run and leaves raw output in $OUT.
set -euo pipefail

RUNS=${RUNS:-3}
DURATION=${DURATION:-8}
CLIENTS=${CLIENTS:-32}
PGBIN=/usr/lib/postgresql/15/bin
HERE=$(cd "$(dirname "$0")" && pwd)
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/pgcell-uring-target}
RELAY=$CARGO_TARGET_DIR/release/pgcell-uring-relay
OUT=${OUT:-/var/tmp/pgcell-uring-results}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

(cd "$HERE" && cargo build --release -j1 -q)
rm -rf "$OUT"; mkdir -p "$OUT"

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
MODES=${MODES:-"epoll uring uring-defer"}
# PIN=1: relays on CPU 1, PostgreSQL and pgbench on CPU 0, so the relay does
# not share a core with its own load generator and 32 busy backends.
if [ "${PIN:-0}" = 1 ]; then ON_LOAD="taskset -c 0"; ON_RELAY="taskset -c 1"; else ON_LOAD=""; ON_RELAY=""; fi
PGPORT=$(free_port)

# Throwaway cluster: trust auth, fsync off, loopback only.
PGDATA=$(mktemp -d /var/tmp/pgcell-uring-pg.XXXXXX)
chown postgres:postgres "$PGDATA"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA/data" -m fast stop >/dev/null 2>&1 || true
    rm -rf "$PGDATA"
}
trap cleanup EXIT
runuser -u postgres -- "$PGBIN/initdb" -D "$PGDATA/data" -U postgres --auth=trust >"$OUT/initdb.log"
$ON_LOAD runuser -u postgres -- "$PGBIN/pg_ctl" -D "$PGDATA/data" -l "$PGDATA/pg.log" -w start \
    -o "-c listen_addresses=127.0.0.1 -p $PGPORT -c unix_socket_directories=$PGDATA -c fsync=off -c max_connections=100" >/dev/null
pgbench -i -s 10 -q -h 127.0.0.1 -p "$PGPORT" -U postgres postgres >"$OUT/init.log" 2>&1

# One relay per mode, all running for the whole session; an idle one uses no CPU.
declare -A PORT PID
for m in $MODES; do
    PORT[$m]=$(free_port)
    $ON_RELAY "$RELAY" "$m" "${PORT[$m]}" "127.0.0.1:$PGPORT" >"$OUT/relay-$m.log" 2>&1 & PID[$m]=$!; PIDS+=(${PID[$m]})
done
sleep 0.5

# utime+stime (clock ticks) of a process, fields 14 and 15 of /proc/PID/stat
# (the comm field has no spaces here).
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
# Precise on-CPU time in ns (scheduler accounting) of the relay's only thread:
# a cross-check of the tick-sampled utime/stime split above.
ns() { awk '{print $1}' "/proc/$1/schedstat"; }

bench() { # mode port pid run
    local mode=$1 port=$2 pid=$3 run=$4 u0 s0 u1 s1 n0 n1
    local log="$OUT/$mode-$run.log"
    # open fds before the run: 3 + listener (+ ring) means no leaked connections
    ls -l "/proc/$pid/fd" >"$OUT/$mode-$run.fds"
    read -r u0 s0 < <(cpu "$pid"); n0=$(ns "$pid")
    $ON_LOAD pgbench -n -S -M simple -c "$CLIENTS" -j 2 -T "$DURATION" ${RATE:+-R "$RATE"} -h 127.0.0.1 -p "$port" -U postgres postgres >"$log" 2>&1
    read -r u1 s1 < <(cpu "$pid"); n1=$(ns "$pid")
    local tx tps load
    tx=$(awk -F': ' '/actually processed/{print $2}' "$log" | cut -d/ -f1)
    tps=$(awk '/^tps/{print $3; exit}' "$log")
    load=$(cut -d' ' -f1 /proc/loadavg)
    ls "/proc/$pid/task" >"$OUT/$mode-$run.threads"  # io_uring workers would show up here
    awk -v m="$mode" -v r="$run" -v tx="$tx" -v tps="$tps" -v du=$((u1-u0)) -v ds=$((s1-s0)) -v t="$TICK_US" -v l="$load" -v dn=$((n1-n0)) \
        'BEGIN { u=du*t/tx; s=ds*t/tx; printf "%s\t%s\t%.0f\t%d\t%.1f\t%.1f\t%.1f\t%.1f\t%.2f\t%s\n", m, r, tps, tx, u, s, u+s, dn/1e3/tx, (du+ds)*t/1e6, l }'
}

echo -e "mode\trun\ttps\ttx\tuser_us_tx\tsys_us_tx\ttotal_us_tx\tsched_us_tx\trelay_cpu_s\tload1" | tee "$OUT/runs.tsv"
bench direct "$PGPORT" $$ 0 >/dev/null  # warm-up straight to PostgreSQL (caches), not reported
for run in $(seq 1 "$RUNS"); do  # interleaved: epoll, uring, ..., epoll, uring, ...
    for m in $MODES; do
        bench "$m" "${PORT[$m]}" "${PID[$m]}" "$run" | tee -a "$OUT/runs.tsv"
    done
done

# Syscall counts: one short (3 s) run per mode under strace -c.
if command -v strace >/dev/null; then
    for mode in $MODES; do
        port=${PORT[$mode]}; pid=${PID[$mode]}
        strace -c -f -p "$pid" -o "$OUT/strace-$mode.txt" & SPID=$!
        sleep 1
        $ON_LOAD pgbench -n -S -M simple -c "$CLIENTS" -j 2 -T 3 -h 127.0.0.1 -p "$port" -U postgres postgres >"$OUT/strace-$mode-pgbench.log" 2>&1
        kill -INT "$SPID"; wait "$SPID" || true
    done
fi
for m in $MODES; do kill -0 "${PID[$m]}" || echo "relay $m died, see $OUT/relay-$m.log"; done
echo "results in $OUT"
