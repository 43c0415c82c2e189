#!/usr/bin/env python3
"""pgcell over a primary and two streaming replicas: read scaling and failover.

    python3 benches/replicas.py --binary target/release/pgcell [--seconds 15]

What it measures (docs/replicas.md, docs/benchmarks.md "Replicas"):
  1. read scaling: `pgbench -S` through pgcell to the primary (tenant `acme`)
     and to the replicas (its read-only alias `acme-ro`), same clients, same
     pool size, rounds interleaved;
  2. failover: the TPC-B-like script through pgcell (transaction mode) and
     through PgBouncer 1.25.2 (pointed at the primary's address, as it must
     be), while the primary is stopped and a replica promoted 300 ms later:
     transactions that failed, clients pgbench lost, and the time from the
     promotion until writes succeed again (from pgbench's per-transaction
     log). Each proxy gets a fresh replication set.

Everything listens on 127.0.0.1; every process started is stopped by pid.
"""

import argparse
import builtins
import importlib.util
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
spec = importlib.util.spec_from_file_location("load", os.path.join(HERE, "load", "run.py"))
load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(load)
log, run, free_port, wait_port = load.log, load.run, load.free_port, load.wait_port
PASSWORD = "bench-password"


class Replication:
    """A primary and `n` replicas (`pg_basebackup -R`), stopped by pid."""

    def __init__(self, dir, n):
        self.dir = dir
        self.bin = load.pg_bin_dir()
        self.nodes = []  # (name, data, port)
        os.makedirs(dir, exist_ok=True)
        primary = self._init("primary")
        for i in range(n):
            self._replica(f"replica{i + 1}", primary)

    def _ctl(self, data, *args):
        return run(load.as_postgres() + [os.path.join(self.bin, "pg_ctl"), "-D", data, *args],
                   check=False)

    def _init(self, name):
        data = os.path.join(self.dir, name)
        port = free_port()
        load.chown_postgres(self.dir)
        run(load.as_postgres() + [os.path.join(self.bin, "initdb"), "-D", data, "-U", "postgres",
                                  "-A", "trust", "-E", "UTF8"])
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
            f.write(f"listen_addresses = '127.0.0.1'\nport = {port}\n"
                    f"unix_socket_directories = '{self.dir}'\nmax_connections = 200\n"
                    "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                    "shared_buffers = 256MB\nlog_min_messages = warning\n")
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nlocal replication all trust\n"
                    "host all all 127.0.0.1/32 scram-sha-256\n")
        load.chown_postgres(self.dir)
        self._ctl(data, "-l", os.path.join(self.dir, f"{name}.log"), "-w", "start")
        self.nodes.append((name, data, port))
        self.psql(port, f"create role app login password '{PASSWORD}'")
        self.psql(port, "create database app owner app")
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        run(["pgbench", "-i", "-q", "-s", "10", "-h", "127.0.0.1", "-p", str(port), "-U", "app",
             "app"], env=env)
        return (name, data, port)

    def _replica(self, name, primary):
        data = os.path.join(self.dir, name)
        port = free_port()
        run(load.as_postgres() + [os.path.join(self.bin, "pg_basebackup"), "-h", self.dir,
                                  "-p", str(primary[2]), "-U", "postgres", "-D", data, "-R",
                                  "-X", "stream", "-c", "fast"])
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
            f.write(f"port = {port}\n")
        load.chown_postgres(self.dir)
        self._ctl(data, "-l", os.path.join(self.dir, f"{name}.log"), "-w", "start")
        self.nodes.append((name, data, port))

    def psql(self, port, sql, db="postgres"):
        return run(load.as_postgres() + [os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t",
                                         "-h", self.dir, "-p", str(port), "-U", "postgres",
                                         "-d", db, "-c", sql]).stdout.strip()

    def port(self, name):
        return next(p for n, _, p in self.nodes if n == name)

    def data(self, name):
        return next(d for n, d, _ in self.nodes if n == name)

    def stop(self, name, mode="fast"):
        self._ctl(self.data(name), "-m", mode, "-w", "stop")

    def promote(self, name):
        self._ctl(self.data(name), "-w", "promote")

    def stop_all(self):
        for name, data, _ in self.nodes:
            self._ctl(data, "-m", "immediate", "-w", "stop")


def start_pgcell(binary, dir, rep, pool):
    port, admin = free_port(), free_port()
    servers = ", ".join(f'"127.0.0.1:{p}"' for _, _, p in rep.nodes)
    with open(os.path.join(dir, "pw"), "w") as f:
        f.write(PASSWORD + "\n")
    config = f"""
[listen]
addr = "127.0.0.1:{port}"
admin_addr = "127.0.0.1:{admin}"
[tls]
mode = "disable"
[routing]
sources = ["options", "user"]
[[tenants]]
id = "acme"
backends = [{servers}]
[tenants.pool]
mode = "transaction"
size = {pool}
acquire_timeout = "10s"
[tenants.replication]
probe_user = "app"
probe_interval = "200ms"
probe_timeout = "1s"
[[tenants.users]]
name = "app"
password_file = "pw"
"""
    path = os.path.join(dir, "pgcell.toml")
    with open(path, "w") as f:
        f.write(config)
    proc = subprocess.Popen([binary, "--config", path], stdout=open(os.path.join(dir, "pgcell.log"), "w"),
                            stderr=subprocess.STDOUT)
    wait_port(port)
    time.sleep(1.0)  # a probe round or more: roles known
    return proc, port


def start_pgbouncer(dir, primary_port, pool):
    d = os.path.join(dir, "pgbouncer")
    os.makedirs(d, exist_ok=True)
    port = free_port()
    with open(os.path.join(d, "userlist.txt"), "w") as f:
        f.write(f'"app" "{PASSWORD}"\n')
    with open(os.path.join(d, "pgbouncer.ini"), "w") as f:
        f.write(f"""[databases]
app = host=127.0.0.1 port={primary_port} dbname=app
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = {pool}
max_client_conn = 1000
; bounded waits, so that the run ends while the primary is gone
query_wait_timeout = 5
server_connect_timeout = 2
server_tls_sslmode = disable
logfile = {d}/pgbouncer.log
""")
    load.chown_postgres(d)
    proc = subprocess.Popen(load.as_postgres() + [load.pgbouncer_path(), os.path.join(d, "pgbouncer.ini")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc, port


def pgbench(port, user, args, env=None):
    env = {**os.environ, "PGPASSWORD": PASSWORD, **(env or {})}
    return run(["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-n", *args, "app"],
               check=False, env=env)


def tps(out):
    for line in out.splitlines():
        if line.startswith("tps = "):
            return float(line.split()[2])
    return 0.0


def read_scaling(binary, work, seconds, rounds):
    dir = os.path.join(work, "scaling")
    rep = Replication(dir, 2)
    proc, port = start_pgcell(binary, dir, rep, 20)
    results = {"acme": [], "acme-ro": []}
    try:
        for r in range(rounds):
            for tenant in results:
                out = pgbench(port, f"app.{tenant}", ["-S", "-c", "16", "-j", "2", "-T", str(seconds)])
                results[tenant].append(tps(out.stdout))
                log(f"round {r + 1} {tenant}: {results[tenant][-1]:.0f} tps")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        rep.stop_all()
    return results


def failover(proxy, binary, work, seconds):
    dir = os.path.join(work, f"failover-{proxy}")
    rep = Replication(dir, 1)
    primary, replica = rep.port("primary"), rep.port("replica1")
    if proxy == "pgcell":
        proc, port = start_pgcell(binary, dir, rep, 8)
        user = "app.acme"
    else:
        proc, port = start_pgbouncer(dir, primary, 8)
        user = "app"
    logdir = os.path.join(dir, "log")
    os.makedirs(logdir)
    try:
        # Throttled (-R): clients spend most of their time between
        # transactions, as application connections do, so the failover
        # shows what happens to idle clients as well as busy ones.
        bench = subprocess.Popen(
            ["pgbench", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-n", "-c", "8", "-j", "2",
             "-R", "400", "-T", str(seconds), "-l", "--log-prefix", os.path.join(logdir, "tx"), "app"],
            env={**os.environ, "PGPASSWORD": PASSWORD}, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, cwd=logdir)
        time.sleep(seconds / 3)
        log(f"{proxy}: stopping the primary")
        rep.stop("primary")
        time.sleep(0.3)
        rep.promote("replica1")
        promoted = time.time()
        log(f"{proxy}: replica promoted")
        try:
            out, err = bench.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            bench.kill()
            out, err = bench.communicate()
            err += "\npgbench did not finish in time; killed"

    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        rep.stop_all()
    # Per-transaction log lines: client tx_no time script_no time_epoch time_us ...
    ok_after = []
    for name in os.listdir(logdir):
        with open(os.path.join(logdir, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 6 and parts[2] not in ("failed", "skipped"):
                    end = int(parts[4]) + int(parts[5]) / 1e6
                    if end > promoted:
                        ok_after.append(end)
    aborted = sum(1 for l in err.splitlines() if l.startswith("pgbench: error: client") and "aborted" in l)
    if os.environ.get("PGCELL_DEBUG"):
        print(err[-3000:])
        print("promoted", promoted)
        for name in sorted(os.listdir(logdir)):
            lines = open(os.path.join(logdir, name)).read().splitlines()
            print(name, len(lines), lines[:1], lines[-1:])
    processed = 0
    for line in out.splitlines():
        if line.startswith("number of transactions actually processed"):
            processed = int(line.split(":")[1].split("/")[0])
    first = min(ok_after) - promoted if ok_after else None
    return {
        "proxy": proxy,
        "processed": processed,
        "clients_lost": aborted,
        "writes_back_s": first,
        "transactions_after_promotion": len(ok_after),
        "errors": [l for l in err.splitlines() if "error" in l.lower() or "aborted" in l][:5],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--binary", required=True)
    p.add_argument("--seconds", type=int, default=15)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--write", action="store_true", help="write docs/benchmarks/replicas.md")
    p.add_argument("--note", help="a sentence for the report's header (what else ran)")
    args = p.parse_args()
    load.ensure_tools(False)
    load.PGBOUNCER = load.ensure_pgbouncer(None)
    work = tempfile.mkdtemp(prefix="pgcell-replicas-")
    load.chown_postgres(work)
    try:
        scaling = read_scaling(os.path.abspath(args.binary), work, args.seconds, args.rounds)
        results = [failover(proxy, os.path.abspath(args.binary), work, 15)
                   for proxy in ("pgcell", "pgbouncer")]
    finally:
        if not os.environ.get("PGCELL_KEEP"):
            shutil.rmtree(work, ignore_errors=True)
    primary = statistics.median(scaling["acme"])
    replicas = statistics.median(scaling["acme-ro"])
    report = []
    print_ = builtins.print

    def print(*a):  # noqa: A001 - the report is what is printed
        line = " ".join(str(x) for x in a)
        report.append(line)
        print_(line)

    version = run([os.path.abspath(args.binary), "--version"], check=False).stdout.strip()
    pgbouncer = (run([load.pgbouncer_path(), "--version"], check=False).stdout.splitlines() or ["PgBouncer"])[0]
    print("# Replicas: read scaling and failover\n")
    print(f"Generated by `python3 benches/replicas.py --binary {args.binary} --seconds {args.seconds} "
          f"--rounds {args.rounds}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
          f"({version}; {pgbouncer}); "
          "do not edit by hand. Primary and replicas are PostgreSQL 15 clusters on this same "
          "2-core machine (streaming replication, `pg_basebackup -R`), so read scaling here "
          "measures the routing and the spread, not extra hardware." + (f" {args.note}" if args.note else ""))
    print("\n## Read scaling (pgbench -S -c 16 -j 2, through pgcell, medians of "
          f"{args.rounds} rounds of {args.seconds} s)\n")
    print("| target | TPS per round | median |")
    print("|---|---|---|")
    for name, label in (("acme", "primary (tenant `acme`)"), ("acme-ro", "two replicas (`acme-ro`)")):
        print(f"| {label} | {', '.join(f'{x:.0f}' for x in scaling[name])} | {statistics.median(scaling[name]):.0f} |")
    print(f"\nreplicas / primary: {replicas / primary:.2f}x\n")
    print("## Failover (TPC-B-like, -c 8 -j 2 -R 400 -T 15; primary stopped at 5 s, replica promoted 0.3 s later)\n")
    print("| proxy | transactions | clients lost | first write after promotion | transactions after promotion |")
    print("|---|---|---|---|---|")
    for r in results:
        back = f"{r['writes_back_s']:.2f} s" if r["writes_back_s"] is not None else "never (within the run)"
        print(f"| {r['proxy']} | {r['processed']} | {r['clients_lost']} | {back} | {r['transactions_after_promotion']} |")
    print("\nClients lost are pgbench clients that were inside a transaction when the primary "
          "stopped (`57P01` from its fast shutdown, as on a direct connection); the others, idle "
          "in pgcell between transactions, went on on the promoted server. PgBouncer points at "
          "the primary's address and keeps failing until it is reconfigured.")
    for r in results:
        if r["errors"]:
            print(f"\n{r['proxy']} errors (first lines):\n" + "\n".join(f"    {e}" for e in r["errors"]))
    if args.write:
        out = os.path.join(load.ROOT, "docs", "benchmarks", "replicas.md")
        with open(out, "w") as f:
            f.write("\n".join(report) + "\n")
        print_(f"wrote {out}")


if __name__ == "__main__":
    main()
