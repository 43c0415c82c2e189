#!/usr/bin/env python3
"""pgcell load harness: direct PostgreSQL vs PgBouncer vs pgcell, with pgbench.

One command (see README.md, "Benchmarks"):

    python3 benches/load/run.py            # full run, writes docs/benchmarks.md + charts
    python3 benches/load/run.py --smoke    # seconds; checks the harness works (CI)

What it does:
  1. builds pgcell (release unless --binary says otherwise), builds the
     reference PgBouncer (the newest release, 1.25.2, with the project's
     `build-pgbouncer.sh`; `--pgbouncer PATH` picks another binary) and a
     virtualenv with matplotlib and asyncpg when missing;
  2. starts a PostgreSQL cluster tuned for the box, PgBouncer and pgcell, both
     pooling into it with the same pool size, mode and SCRAM secrets;
  3. runs the matrix with pgbench, rounds interleaved (every target of a case
     in turn, round after round) so drift hits all equally; measures TPS,
     average and p99 latency (pgbench's sampled per-transaction log), the
     proxy's own CPU per transaction (user and kernel time from /proc before
     and after) and its RSS, and pgcell's ratios to PgBouncer within each
     round;
  4. opens thousands of idle clients (plaintext and TLS) to measure RSS per
     client;
  5. writes a Markdown report with the machine, the versions and the exact
     commands, a JSON file with every raw run, and PNG charts.

Everything listens on 127.0.0.1 and everything started is stopped at the end,
by pid.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import platform
import pwd
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VENV = os.environ.get("PGCELL_BENCH_VENV", "/var/tmp/pgcell-bench-venv")
POOL_SIZE = 20
PASSWORD = "bench-password"
IDLE_ITERATIONS = 16  # SCRAM iterations of the idle-client role (see report)

# ---------------------------------------------------------------- utilities


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run(cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, text=True, capture_output=True, **kw)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=20.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


def pg_bin_dir():
    for d in sorted(os.listdir("/usr/lib/postgresql"), reverse=True) if os.path.isdir("/usr/lib/postgresql") else []:
        p = os.path.join("/usr/lib/postgresql", d, "bin")
        if os.path.exists(os.path.join(p, "initdb")):
            return p
    initdb = shutil.which("initdb")
    if initdb:
        return os.path.dirname(initdb)
    raise RuntimeError("PostgreSQL server binaries (initdb) not found")


def as_postgres():
    """Command prefix running as the postgres user when we are root."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def chown_postgres(path):
    if os.geteuid() == 0:
        pw = pwd.getpwnam("postgres")
        for dirpath, dirnames, filenames in os.walk(path):
            os.chown(dirpath, pw.pw_uid, pw.pw_gid)
            for f in filenames:
                os.chown(os.path.join(dirpath, f), pw.pw_uid, pw.pw_gid)


def cpu_times(pid):
    """(utime, stime) of a process, in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    return sum(cpu_times(pid))


def rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def scram_secret(password, iterations, salt=None):
    salt = salt or os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    stored = hashlib.sha256(client_key).digest()
    server = hmac.new(salted, b"Server Key", hashlib.sha256).digest()
    b64 = lambda b: base64.b64encode(b).decode()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


# The reference PgBouncer: built from the release tarball by the project's
# script (idempotent; prints the binary's path). The script lives outside the
# repository, beside it; PGCELL_PGBOUNCER_BUILD names it elsewhere.
BUILD_PGBOUNCER = [
    os.environ.get("PGCELL_PGBOUNCER_BUILD", ""),
    os.path.join(ROOT, "..", "shared", "anchors", "build-pgbouncer.sh"),
    "/work/shared/anchors/build-pgbouncer.sh",
]
PGBOUNCER = None  # set by ensure_tools


def ensure_pgbouncer(explicit):
    """Path of the PgBouncer to compare with: `explicit`, else 1.25.2 built
    by the anchors script, else Debian's package (1.18: no prepared
    statements in transaction mode), installed when missing."""
    if explicit:
        return explicit
    for script in BUILD_PGBOUNCER:
        if script and os.path.exists(script):
            log(f"PgBouncer reference: {script}")
            p = subprocess.run(["bash", script], capture_output=True, text=True)
            if p.returncode == 0 and p.stdout.strip():
                return p.stdout.strip().splitlines()[-1]
            log(f"building PgBouncer failed, falling back to Debian's: {p.stderr[-500:]}")
            break
    if not shutil.which("pgbouncer") and not os.path.exists("/usr/sbin/pgbouncer"):
        log("installing pgbouncer (apt)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "pgbouncer"], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        # The packages start their own services; we run our own instances.
        subprocess.run(["service", "pgbouncer", "stop"], check=False, capture_output=True)
        subprocess.run(["service", "haproxy", "stop"], check=False, capture_output=True)
    return shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


def pgbouncer_version(path):
    """(major, minor) of a PgBouncer binary, (0, 0) when unreadable."""
    out = run([path, "--version"], check=False).stdout
    m = re.search(r"PgBouncer (\d+)\.(\d+)", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def ensure_tools(need_venv):
    missing = []
    if not shutil.which("pgbench"):
        missing.append("postgresql-client")
    if not shutil.which("haproxy"):
        # The passthrough reference: a plain TCP proxy (Debian's).
        missing.append("haproxy")
    if missing:
        log(f"installing {' '.join(missing)} (apt)")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], check=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        # The packages start their own services; we run our own instances.
        subprocess.run(["service", "pgbouncer", "stop"], check=False, capture_output=True)
        subprocess.run(["service", "haproxy", "stop"], check=False, capture_output=True)
    if need_venv:
        py = os.path.join(VENV, "bin", "python")
        if not os.path.exists(py):
            log(f"creating virtualenv {VENV}")
            subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
        probe = subprocess.run([py, "-c", "import asyncpg, matplotlib"], capture_output=True)
        if probe.returncode != 0:
            log("installing asyncpg and matplotlib into the virtualenv")
            subprocess.run([py, "-m", "pip", "install", "-q", "asyncpg", "matplotlib"], check=True)


def pgbouncer_path():
    return PGBOUNCER or shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"


# ------------------------------------------------------------------ servers


class Servers:
    """PostgreSQL, PgBouncer and pgcell, started in `dir`, stopped by pid."""

    def __init__(self, dir, binary, tls_cert, tls_key):
        self.dir = dir
        self.binary = binary
        self.cert = tls_cert
        self.key = tls_key
        self.bin = pg_bin_dir()
        self.pg_port = free_port()
        self.bouncer_port = free_port()
        # HAProxy: TCP mode to PostgreSQL, and TLS terminated (direct TLS,
        # ALPN postgresql); the wrapper (not measured) lets pgbench, whose
        # libpq 15 cannot start TLS directly, reach both TLS terminators.
        self.haproxy_port, self.haproxy_tls_port = free_port(), free_port()
        self.wrap_haproxy_port, self.wrap_pgcell_port = free_port(), free_port()
        self.cells = {}  # name -> (port, pid)
        self.procs = []

    # PostgreSQL ----------------------------------------------------------
    def start_postgres(self, scale):
        data = os.path.join(self.dir, "pg")
        os.makedirs(data)
        pwfile = os.path.join(self.dir, "pgpw")
        with open(pwfile, "w") as f:
            f.write("postgres-password\n")
        chown_postgres(self.dir)
        run(as_postgres() + [os.path.join(self.bin, "initdb"), "-D", data, "-U", "postgres",
                             "-A", "scram-sha-256", "--pwfile", pwfile, "-E", "UTF8"])
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.pg_port),
            "unix_socket_directories": f"'{self.dir}'",
            "max_connections": "400",
            "shared_buffers": "512MB",
            # The proxies are measured, not the disk: no fsync waits.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_wal_size": "4GB",
            "checkpoint_timeout": "30min",
            "log_min_messages": "warning",
            # TLS too, for the direct TLS cases (same certificate).
            "ssl": "on",
            "ssl_cert_file": "'server.crt'",
            "ssl_key_file": "'server.key'",
        }
        shutil.copy(self.cert, os.path.join(data, "server.crt"))
        shutil.copy(self.key, os.path.join(data, "server.key"))
        os.chmod(os.path.join(data, "server.key"), 0o600)
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as f:
            for k, v in conf.items():
                f.write(f"{k} = {v}\n")
        # The local socket is trusted for setup; TCP needs SCRAM.
        with open(os.path.join(data, "pg_hba.conf"), "w") as f:
            f.write("local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n")
        chown_postgres(self.dir)
        run(as_postgres() + [os.path.join(self.bin, "pg_ctl"), "-D", data, "-l",
                             os.path.join(self.dir, "pg.log"), "-w", "start"])
        self.pg_data = data
        self.psql("create role app login password '%s'" % PASSWORD)
        self.idle_secret = scram_secret(PASSWORD, IDLE_ITERATIONS)
        self.psql("create role idle login password '%s'" % self.idle_secret)
        self.psql("create database app owner app")
        self.app_secret = self.psql("select rolpassword from pg_authid where rolname = 'app'").strip()
        log(f"pgbench -i -s {scale}")
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        run(["pgbench", "-i", "-q", "-s", str(scale), "-h", "127.0.0.1", "-p", str(self.pg_port),
             "-U", "app", "app"], env=env)
        self.psql("vacuum analyze", db="app")

    def psql(self, sql, db="postgres"):
        return run(as_postgres() + [os.path.join(self.bin, "psql"), "-X", "-q", "-A", "-t",
                                    "-h", self.dir, "-p", str(self.pg_port), "-U", "postgres",
                                    "-d", db, "-v", "ON_ERROR_STOP=1", "-c", sql]).stdout

    def stop_postgres(self):
        run(as_postgres() + [os.path.join(self.bin, "pg_ctl"), "-D", self.pg_data, "-m", "fast",
                             "-w", "stop"], check=False)

    # PgBouncer -----------------------------------------------------------
    def start_pgbouncer(self):
        d = os.path.join(self.dir, "pgbouncer")
        os.makedirs(d)
        with open(os.path.join(d, "userlist.txt"), "w") as f:
            # SCRAM secrets, not passwords: PgBouncer then logs in to the
            # server with the client's proof (no PBKDF2 per login).
            f.write(f'"app" "{self.app_secret}"\n"idle" "{self.idle_secret}"\n')
        shutil.copy(self.cert, os.path.join(d, "server.crt"))
        shutil.copy(self.key, os.path.join(d, "server.key"))
        # Prepared statements in transaction mode: 1.21 and later, with the
        # same per-backend cache size as pgcell's default.
        prepared = "max_prepared_statements = 1000\n" if pgbouncer_version(pgbouncer_path()) >= (1, 21) else ""
        ini = f"""[databases]
app = host=127.0.0.1 port={self.pg_port} dbname=app pool_mode=transaction
app_session = host=127.0.0.1 port={self.pg_port} dbname=app pool_mode=session

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.bouncer_port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {d}/userlist.txt
pool_mode = transaction
default_pool_size = {POOL_SIZE}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 12000
max_db_connections = 0
client_tls_sslmode = allow
client_tls_cert_file = {d}/server.crt
client_tls_key_file = {d}/server.key
; Plaintext to PostgreSQL, as pgcell's `backend_tls` default (1.25 prefers TLS).
server_tls_sslmode = disable
log_connections = 0
log_disconnections = 0
log_pooler_errors = 1
stats_period = 60
logfile = {d}/pgbouncer.log
pidfile = {d}/pgbouncer.pid
{prepared}"""
        with open(os.path.join(d, "pgbouncer.ini"), "w") as f:
            f.write(ini)
        chown_postgres(d)
        # As root, PgBouncer drops to postgres itself (-u) and keeps this
        # process's descriptor limit; runuser would reset it to 1024.
        user = ["-u", "postgres"] if os.geteuid() == 0 else []
        p = subprocess.Popen([pgbouncer_path(), *user, os.path.join(d, "pgbouncer.ini")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.procs.append(p)
        wait_port(self.bouncer_port)
        pidfile = os.path.join(d, "pgbouncer.pid")
        deadline = time.time() + 10
        while not os.path.exists(pidfile) and time.time() < deadline:
            time.sleep(0.05)
        with open(pidfile) as f:
            self.bouncer_pid = int(f.read().strip())

    # HAProxy ------------------------------------------------------------
    def start_haproxy(self):
        """The measured HAProxy (one thread, as PgBouncer and `pgcell`), and
        the TLS wrapper in front of both TLS terminators. Call after
        start_pgcell("pgcell", ...)."""
        d = os.path.join(self.dir, "haproxy")
        os.makedirs(d, exist_ok=True)
        pem = os.path.join(d, "server.pem")
        with open(pem, "w") as f:
            f.write(open(self.cert).read() + open(self.key).read())
        common = """defaults
    mode tcp
    timeout connect 10s
    timeout client 1h
    timeout server 1h
"""
        measured = f"""global
    nbthread 1
    maxconn 4000
{common}
frontend pg
    bind 127.0.0.1:{self.haproxy_port}
    default_backend pg
frontend pgtls
    bind 127.0.0.1:{self.haproxy_tls_port} ssl crt {pem} alpn postgresql
    default_backend pg
backend pg
    server pg 127.0.0.1:{self.pg_port}
"""
        pgcell_port = self.cells["pgcell"][0]
        wrapper = f"""global
    maxconn 4000
{common}
frontend to_haproxy
    bind 127.0.0.1:{self.wrap_haproxy_port}
    default_backend haproxy_tls
frontend to_pgcell
    bind 127.0.0.1:{self.wrap_pgcell_port}
    default_backend pgcell_tls
backend haproxy_tls
    server h 127.0.0.1:{self.haproxy_tls_port} ssl verify none alpn postgresql
backend pgcell_tls
    server c 127.0.0.1:{pgcell_port} ssl verify none alpn postgresql
"""
        pids = []
        for name, text, port in [("measured", measured, self.haproxy_port),
                                 ("wrapper", wrapper, self.wrap_haproxy_port)]:
            cfg = os.path.join(d, f"{name}.cfg")
            with open(cfg, "w") as f:
                f.write(text)
            p = subprocess.Popen(["haproxy", "-db", "-f", cfg], stdout=subprocess.DEVNULL,
                                 stderr=open(os.path.join(d, f"{name}.log"), "w"))
            self.procs.append(p)
            wait_port(port)
            pids.append(p.pid)
        self.haproxy_pid = pids[0]

    # pgcell --------------------------------------------------------------
    def start_pgcell(self, name, workers):
        """`workers`: worker threads of the multi-threaded runtime (None: one
        per CPU), or "current_thread" for the one-thread runtime."""
        if workers == "current_thread":
            runtime = '[runtime]\nflavor = "current_thread"'
        elif workers:
            runtime = f"[runtime]\nworker_threads = {workers}"
        else:
            runtime = ""
        d = os.path.join(self.dir, name)
        os.makedirs(d)
        port, admin = free_port(), free_port()
        toml = f"""[listen]
addr = "127.0.0.1:{port}"
admin_addr = "127.0.0.1:{admin}"
max_client_connections = 12000

[tls]
cert = "{self.cert}"
key = "{self.key}"
mode = "allow"

[routing]
sources = ["user"]

[log]
level = "warn"

[shutdown]
propagation = "100ms"
grace = "2s"

[kubernetes]
mode = "off"
{runtime}

[[tenants]]
id = "bench"
backends = ["127.0.0.1:{self.pg_port}"]
max_client_connections = 12000
[tenants.pool]
mode = "transaction"
size = {POOL_SIZE}
max_client_connections = 12000
# PgBouncer's query_wait_timeout default: clients queue, they are not refused.
acquire_timeout = "120s"
[[tenants.users]]
name = "app"
scram_secret = "{self.app_secret}"
[[tenants.users]]
name = "idle"
scram_secret = "{self.idle_secret}"

# Passthrough: the backend authenticates each client; one backend each.
[[tenants]]
id = "benchpt"
backends = ["127.0.0.1:{self.pg_port}"]
auth = "passthrough"
max_client_connections = 12000

[[tenants]]
id = "benchsess"
backends = ["127.0.0.1:{self.pg_port}"]
[tenants.pool]
mode = "session"
size = {POOL_SIZE}
acquire_timeout = "120s"
[[tenants.users]]
name = "app"
scram_secret = "{self.app_secret}"
"""
        path = os.path.join(d, "pgcell.toml")
        with open(path, "w") as f:
            f.write(toml)
        check = run([self.binary, "check", "--config", path], check=False)
        if check.returncode != 0:
            raise RuntimeError(f"pgcell config invalid:\n{check.stdout}{check.stderr}")
        p = subprocess.Popen([self.binary, "run", "--config", path],
                             stdout=subprocess.DEVNULL, stderr=open(os.path.join(d, "pgcell.log"), "w"))
        self.procs.append(p)
        self.cells[name] = (port, p.pid)
        wait_port(port)

    def restart_proxies(self, workers):
        """Stops PgBouncer and the pgcells and starts them again, fresh."""
        os.kill(self.bouncer_pid, signal.SIGTERM)
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs = []
        for name in list(self.cells):
            shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)
        shutil.rmtree(os.path.join(self.dir, "pgbouncer"), ignore_errors=True)
        self.cells = {}
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", self.bouncer_port), timeout=0.2):
                    time.sleep(0.1)
            except OSError:
                break
        self.start_pgbouncer()
        self.start_pgcell("pgcell", workers)
        self.start_pgcell("pgcell-2t", None)
        self.start_pgcell("pgcell-4t", 4)
        self.start_pgcell("pgcell-ct", "current_thread")
        self.start_haproxy()

    def stop(self):
        if getattr(self, "bouncer_pid", None):
            try:
                os.kill(self.bouncer_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in reversed(self.procs):
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        if getattr(self, "pg_data", None):
            self.stop_postgres()

    # Targets -------------------------------------------------------------
    def target(self, name, session=False):
        """(port, user, dbname, pid of the proxy or None)."""
        if name == "direct":
            return self.pg_port, "app", "app", None
        if name == "pgbouncer":
            return self.bouncer_port, "app", "app_session" if session else "app", self.bouncer_pid
        if name == "haproxy":
            return self.haproxy_port, "app", "app", self.haproxy_pid
        if name == "haproxy-tls":
            return self.wrap_haproxy_port, "app", "app", self.haproxy_pid
        if name == "pgcell-pt":
            port, pid = self.cells["pgcell"]
            return port, "app.benchpt", "app", pid
        if name == "pgcell-pt-tls":
            return self.wrap_pgcell_port, "app.benchpt", "app", self.cells["pgcell"][1]
        if name in self.cells:
            port, pid = self.cells[name]
            return port, "app.benchsess" if session else "app.bench", "app", pid
        raise ValueError(name)


# -------------------------------------------------------------------- cases

# Each case: name, pgbench args, clients, whether session pooling, TLS,
# whether it is a connection storm, the targets it runs on.
def cases(args):
    c = args.clients_high
    all3 = ["direct", "pgbouncer", "pgcell"]
    all4 = all3 + ["pgcell-2t"]
    return [
        # pgcell-ct: the one-thread (current_thread) runtime, for comparison.
        dict(name="txn -S simple 32", bench=["-S", "-M", "simple"], clients=32,
             targets=all4 + ["pgcell-4t", "pgcell-ct"]),
        dict(name="txn -S extended 32", bench=["-S", "-M", "extended"], clients=32, targets=all3),
        dict(name="txn -S prepared 32", bench=["-S", "-M", "prepared"], clients=32, targets=all3 + ["pgcell-ct"]),
        dict(name=f"txn -S simple {c}", bench=["-S", "-M", "simple"], clients=c, targets=all4),
        dict(name=f"txn -S extended {c}", bench=["-S", "-M", "extended"], clients=c, targets=all3),
        dict(name=f"txn -S prepared {c}", bench=["-S", "-M", "prepared"], clients=c, targets=all3),
        dict(name="txn TPC-B 32", bench=["-M", "simple"], clients=32, targets=all3),
        # Session mode: fewer clients than the pool (20), so each gets its own
        # backend; beyond it pgcell queues clients at login (pooling.md).
        dict(name="session -S simple 16", bench=["-S", "-M", "simple"], clients=16, session=True, targets=all3),
        # Single-client figures swing by 2x on a VM: at least 5 rounds.
        dict(name="single client -S", bench=["-S", "-M", "simple"], clients=1, targets=all4, min_rounds=5),
        dict(name="TLS txn -S simple 32", bench=["-S", "-M", "simple"], clients=32, tls=True, targets=all4),
        dict(name="storm -C plaintext", bench=["-S", "-M", "simple", "-C"], clients=8, storm=True, targets=all3),
        dict(name="storm -C TLS", bench=["-S", "-M", "simple", "-C"], clients=8, storm=True, tls=True, targets=all4),
    ] + passthrough_cases(32, 8, 1_000_000)


def passthrough_cases(clients, storm_clients, copy_rows):
    """Passthrough tenants (one backend per client) against a plain TCP
    proxy, HAProxy. TLS cases go through the wrapper to HAProxy's TLS
    terminator and to pgcell's (direct TLS, ALPN postgresql)."""
    plain = ["direct", "haproxy", "pgcell-pt"]
    tls = ["haproxy-tls", "pgcell-pt-tls"]
    return [
        dict(name=f"passthrough -S simple {clients}", bench=["-S", "-M", "simple"], clients=clients, targets=plain),
        dict(name=f"passthrough TLS -S simple {clients}", bench=["-S", "-M", "simple"], clients=clients, targets=tls),
        dict(name="passthrough storm -C plaintext", bench=["-S", "-M", "simple", "-C"], clients=storm_clients,
             storm=True, targets=plain),
        dict(name="passthrough storm -C TLS", bench=["-S", "-M", "simple", "-C"], clients=storm_clients,
             storm=True, targets=tls),
        # `rows` lines of 1,001 bytes: 1,000,000 is about 1 GB.
        dict(name=f"passthrough COPY {copy_rows * 1001 // 1_000_000} MB", copy_rows=copy_rows, clients=1,
             targets=plain + tls),
    ]


def smoke_cases():
    all3 = ["direct", "pgbouncer", "pgcell"]
    return [
        dict(name="txn -S simple 4", bench=["-S", "-M", "simple"], clients=4, targets=all3),
        dict(name="txn -S prepared 4", bench=["-S", "-M", "prepared"], clients=4, targets=all3),
        dict(name="storm -C TLS", bench=["-S", "-M", "simple", "-C"], clients=2, storm=True, tls=True, targets=all3),
    ] + passthrough_cases(4, 2, 10_000)


def parse_pgbench(out):
    r = {}
    m = re.search(r"number of transactions actually processed: (\d+)", out)
    r["transactions"] = int(m.group(1)) if m else 0
    m = re.search(r"number of failed transactions: (\d+)", out)
    r["failed"] = int(m.group(1)) if m else 0
    m = re.search(r"latency average = ([\d.]+) ms", out)
    r["latency_avg_ms"] = float(m.group(1)) if m else None
    m = re.search(r"tps = ([\d.]+) \((?:without initial connection time|excluding connections establishing|including connections establishing)\)", out)
    if not m:
        m = re.search(r"tps = ([\d.]+)", out)
    r["tps"] = float(m.group(1)) if m else 0.0
    r["aborted"] = len(re.findall(r"aborted in command", out))
    return r


def p99_from_logs(prefix_dir):
    """p99 latency (ms) from pgbench's per-transaction logs (column 3, µs)."""
    lat = []
    for name in os.listdir(prefix_dir):
        with open(os.path.join(prefix_dir, name)) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    try:
                        lat.append(int(parts[2]))
                    except ValueError:
                        pass
    if not lat:
        return None
    lat.sort()
    return lat[min(len(lat) - 1, int(len(lat) * 0.99))] / 1000.0


def run_case(servers, case, target, duration, sampling, workdir, perf_dir=None):
    port, user, db, pid = servers.target(target, case.get("session", False))
    clients = case["clients"]
    threads = min(clients, 2) if clients < 64 else 4
    logdir = tempfile.mkdtemp(prefix="pgbench-log-", dir=workdir)
    cmd = ["pgbench", "-n", "-h", "127.0.0.1", "-p", str(port), "-U", user,
           "-c", str(clients), "-j", str(threads), "-T", str(duration), *case["bench"]]
    if not case.get("storm"):
        cmd += ["-l", "--sampling-rate", str(sampling), "--log-prefix", os.path.join(logdir, "tx")]
    cmd.append(db)
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "require" if case.get("tls") else "disable",
           "PGCONNECT_TIMEOUT": "10"}
    perf = None
    if perf_dir and pid and target.startswith("pgcell"):
        slug = re.sub(r"[^a-z0-9]+", "-", case["name"].lower()).strip("-")
        perf = subprocess.Popen(["perf", "record", "-F", "499", "-g", "--call-graph", "dwarf,16384",
                                 "-p", str(pid), "-o", os.path.join(perf_dir, f"{slug}.perf.data")],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    cpu0 = cpu_times(pid) if pid else None
    t0 = time.time()
    p = subprocess.run(cmd, text=True, capture_output=True, env=env, cwd=logdir,
                       timeout=duration * 4 + 60)
    if perf:
        perf.send_signal(signal.SIGINT)
        perf.wait(timeout=120)
    wall = time.time() - t0
    cpu1 = cpu_times(pid) if pid else None
    out = p.stdout + p.stderr
    r = parse_pgbench(out)
    r.update(case=case["name"], target=target, clients=clients, exit=p.returncode, wall_s=round(wall, 2),
             command=" ".join(cmd))
    r["p99_ms"] = None if case.get("storm") else p99_from_logs(logdir)
    shutil.rmtree(logdir, ignore_errors=True)
    if pid:
        user, kernel = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        n = r["transactions"]
        r["proxy_cpu_s"] = round(user + kernel, 3)
        r["proxy_cpu_us_per_tx"] = round((user + kernel) * 1e6 / n, 2) if n else None
        r["proxy_user_us_per_tx"] = round(user * 1e6 / n, 2) if n else None
        r["proxy_sys_us_per_tx"] = round(kernel * 1e6 / n, 2) if n else None
        r["proxy_rss_mb"] = round(rss_mb(pid), 1)
    if p.returncode != 0:
        r["error"] = "\n".join(l for l in out.splitlines() if "error" in l.lower() or "abort" in l.lower())[:2000]
    return r


def run_copy(servers, case, target, workdir):
    """One `COPY ... TO STDOUT` of `copy_rows` lines through `target`, read
    by psql as fast as it can: MB/s (in the `tps` field, so the tables
    compare it) and the proxy's CPU per MB."""
    port, user, db, pid = servers.target(target)
    rows = case["copy_rows"]
    sql = f"COPY (SELECT repeat('x', 1000) FROM generate_series(1, {rows})) TO STDOUT"
    cmd = ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", user, "-d", db,
           "-v", "ON_ERROR_STOP=1", "-c", sql]
    env = {**os.environ, "PGPASSWORD": PASSWORD, "PGSSLMODE": "disable", "PGCONNECT_TIMEOUT": "10"}
    cpu0 = cpu_times(pid) if pid else None
    t0 = time.time()
    p = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                       cwd=workdir, timeout=600)
    wall = time.time() - t0
    cpu1 = cpu_times(pid) if pid else None
    mb = rows * 1001 / 1e6
    r = dict(case=case["name"], target=target, clients=1, exit=p.returncode, wall_s=round(wall, 2),
             transactions=1 if p.returncode == 0 else 0, tps=round(mb / wall, 1), command=" ".join(cmd))
    if pid:
        user_s, kernel = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
        r["proxy_cpu_s"] = round(user_s + kernel, 3)
        r["proxy_cpu_us_per_tx"] = round((user_s + kernel) * 1e6 / mb, 1)
        r["proxy_user_us_per_tx"] = round(user_s * 1e6 / mb, 1)
        r["proxy_sys_us_per_tx"] = round(kernel * 1e6 / mb, 1)
        r["proxy_rss_mb"] = round(rss_mb(pid), 1)
    if p.returncode != 0:
        r["error"] = p.stderr[-2000:]
    return r


IDLE_CLIENT = r"""
import asyncio, ssl, sys, time
import asyncpg
port, user, n, tls, hold = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1", float(sys.argv[5])
async def main():
    ctx = None
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    sem = asyncio.Semaphore(200)
    conns = []
    failed = 0
    async def one():
        nonlocal failed
        async with sem:
            for attempt in range(3):
                try:
                    c = await asyncpg.connect(host="127.0.0.1", port=port, user=user, password=sys.argv[6],
                                              database="app", ssl=ctx if tls else False, timeout=60,
                                              statement_cache_size=0)
                    conns.append(c)
                    return
                except Exception as e:
                    last = e
                    await asyncio.sleep(0.2)
            failed += 1
            print("connect failed:", repr(last), file=sys.stderr)
    await asyncio.gather(*(one() for _ in range(n)))
    print(f"OPEN {len(conns)} FAILED {failed}", flush=True)
    await asyncio.sleep(hold)
    print("CLOSING", flush=True)
    await asyncio.gather(*(c.close(timeout=10) for c in conns), return_exceptions=True)
asyncio.run(main())
"""


def run_idle(servers, target, n, tls, workdir):
    port, _, _, pid = servers.target(target)
    script = os.path.join(workdir, "idle_client.py")
    with open(script, "w") as f:
        f.write(IDLE_CLIENT)
    user = "idle.bench" if target == "pgcell" else "idle"
    base = rss_mb(pid)
    cpu0 = cpu_seconds(pid)
    p = subprocess.Popen([os.path.join(VENV, "bin", "python"), script, str(port), user, str(n),
                          "1" if tls else "0", "6", PASSWORD],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened = None
    peak = base
    deadline = time.time() + 600
    line = ""
    while time.time() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith("OPEN"):
            opened = line.split()
            time.sleep(3)
            peak = rss_mb(pid)
        if line.startswith("CLOSING"):
            break
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
    cpu1 = cpu_seconds(pid)
    n_open = int(opened[1]) if opened else 0
    n_failed = int(opened[3]) if opened else n
    return dict(case=f"{n} idle clients {'TLS' if tls else 'plaintext'}", target=target, clients=n,
                opened=n_open, failed=n_failed, proxy_rss_base_mb=round(base, 1), proxy_rss_mb=round(peak, 1),
                rss_kb_per_client=round((peak - base) * 1024 / n_open, 1) if n_open else None,
                login_cpu_us=round((cpu1 - cpu0) * 1e6 / n_open, 1) if n_open else None,
                error=err.strip()[-1500:] if n_failed else None)


# ------------------------------------------------------------------- report


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def summarize(results):
    """{case: {target: {...medians...}}} in case order."""
    out = {}
    for r in results:
        out.setdefault(r["case"], {}).setdefault(r["target"], []).append(r)
    summary = {}
    for case, targets in out.items():
        summary[case] = {}
        for target, runs in targets.items():
            tps = [r.get("tps") for r in runs if r.get("tps") is not None]
            summary[case][target] = dict(
                runs=len(runs),
                tps_median=median(tps),
                tps_min=min(tps) if tps else None,
                tps_max=max(tps) if tps else None,
                lat_avg_ms=median([r.get("latency_avg_ms") for r in runs]),
                p99_ms=median([r.get("p99_ms") for r in runs]),
                cpu_us_per_tx=median([r.get("proxy_cpu_us_per_tx") for r in runs]),
                user_us_per_tx=median([r.get("proxy_user_us_per_tx") for r in runs]),
                sys_us_per_tx=median([r.get("proxy_sys_us_per_tx") for r in runs]),
                rss_mb=median([r.get("proxy_rss_mb") for r in runs]),
                errors=sum(1 for r in runs if r.get("exit", 0) != 0 or r.get("failed") or r.get("aborted")),
                rss_kb_per_client=median([r.get("rss_kb_per_client") for r in runs]),
                login_cpu_us=median([r.get("login_cpu_us") for r in runs]),
            )
    return summary


def round_ratios(results, case, a, b, key):
    """a/b of `key` within each round of `case`: (median, min, max) or None."""
    by_round = {}
    for r in results:
        if r.get("case") == case and r.get(key) is not None:
            by_round.setdefault(r["round"], {})[r["target"]] = r[key]
    xs = [v[a] / v[b] for v in by_round.values() if v.get(a) and v.get(b)]
    return (statistics.median(xs), min(xs), max(xs)) if xs else None


def spread(rr, nd=2):
    return "–" if rr is None else f"{rr[0]:.{nd}f}× ({rr[1]:.{nd}f}–{rr[2]:.{nd}f})"


def fmt(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def targets_table(summary, cases_order):
    lines = ["| case | target | TPS median (min–max) | latency avg ms | p99 ms | proxy CPU µs/tx (user + kernel) | proxy RSS MB | runs with errors |",
             "|---|---|---|---|---|---|---|---|"]
    for case in cases_order:
        if case not in summary or "idle" in case:
            continue
        for target in ["direct", "pgbouncer", "pgcell", "pgcell-2t", "pgcell-4t", "pgcell-ct", "haproxy", "pgcell-pt",
                       "haproxy-tls", "pgcell-pt-tls"]:
            s = summary[case].get(target)
            if not s:
                continue
            lines.append(f"| {case} | {target} | {fmt(s['tps_median'])} ({fmt(s['tps_min'])}–{fmt(s['tps_max'])}) | "
                         f"{fmt(s['lat_avg_ms'], 3)} | {fmt(s['p99_ms'], 3)} | {fmt(s['cpu_us_per_tx'], 2)} "
                         f"({fmt(s.get('user_us_per_tx'), 2)} + {fmt(s.get('sys_us_per_tx'), 2)}) | "
                         f"{fmt(s['rss_mb'], 1)} | {s['errors']}/{s['runs']} |")
    return "\n".join(lines)


def ratio(a, b):
    return a / b if a and b else None


def targets_check(summary, results, high):
    """The performance targets, each with the measured figures (pgcell's
    ratio to PgBouncer within each round: median and min–max) and met/missed."""
    rows = []

    def get(case, target, key):
        return summary.get(case, {}).get(target, {}).get(key)

    def ok(rr, test):
        return rr is not None and test(rr[0])

    for mode in ["simple", "extended", "prepared"]:
        case = f"txn -S {mode} 32"
        if case not in summary:
            continue
        cpu = round_ratios(results, case, "pgcell", "pgbouncer", "proxy_cpu_us_per_tx")
        tps = round_ratios(results, case, "pgcell", "pgbouncer", "tps")
        c1, c2 = get(case, "pgcell", "cpu_us_per_tx"), get(case, "pgbouncer", "cpu_us_per_tx")
        user = round_ratios(results, case, "pgcell", "pgbouncer", "proxy_user_us_per_tx")
        u, k = get(case, "pgcell", "user_us_per_tx"), get(case, "pgcell", "sys_us_per_tx")
        bu, bk = get(case, "pgbouncer", "user_us_per_tx"), get(case, "pgbouncer", "sys_us_per_tx")
        rows.append((f"{case}: user CPU/tx ≤ PgBouncer's",
                     f"pgcell {fmt(u, 2)} user + {fmt(k, 2)} kernel µs; PgBouncer {fmt(bu, 2)} + {fmt(bk, 2)}; "
                     f"user {spread(user)}", ok(user, lambda x: x <= 1.0)))
        rows.append((f"{case}: CPU/tx ≤ 0.95× PgBouncer's", f"{fmt(c1, 2)} vs {fmt(c2, 2)} µs; {spread(cpu)}",
                     ok(cpu, lambda x: x <= 0.95)))
        rows.append((f"{case}: TPS ≥ 1.0× PgBouncer's", spread(tps), ok(tps, lambda x: x >= 1.0)))
    case = "TLS txn -S simple 32"
    if case in summary:
        cpu = round_ratios(results, case, "pgcell", "pgbouncer", "proxy_cpu_us_per_tx")
        c1, c2 = get(case, "pgcell", "cpu_us_per_tx"), get(case, "pgbouncer", "cpu_us_per_tx")
        rows.append((f"{case}: CPU/tx ≤ 0.9× PgBouncer's", f"{fmt(c1, 2)} vs {fmt(c2, 2)} µs; {spread(cpu)}",
                     ok(cpu, lambda x: x <= 0.9)))
    if "txn TPC-B 32" in summary:
        tps = round_ratios(results, "txn TPC-B 32", "pgcell", "pgbouncer", "tps")
        rows.append(("txn TPC-B 32: TPS ≥ 1.0× PgBouncer's", spread(tps), ok(tps, lambda x: x >= 1.0)))
    errs = get("txn -S prepared 32", "pgcell", "errors")
    if errs is not None:
        rows.append(("txn -S prepared 32: pgcell zero errors", f"{errs} runs with errors", errs == 0))
    case = "single client -S"
    if case in summary:
        added = {t: [] for t in ["pgbouncer", "pgcell"]}
        by_round = {}
        for r in results:
            if r.get("case") == case and r.get("latency_avg_ms") is not None:
                by_round.setdefault(r["round"], {})[r["target"]] = r["latency_avg_ms"]
        for v in by_round.values():
            for t in added:
                if "direct" in v and t in v:
                    added[t].append((v[t] - v["direct"]) * 1000)
        if added["pgcell"] and added["pgbouncer"]:
            c, b = statistics.median(added["pgcell"]), statistics.median(added["pgbouncer"])
            rows.append(("single client: added latency ≤ PgBouncer's",
                         f"pgcell +{c:.0f} µs ({min(added['pgcell']):.0f}–{max(added['pgcell']):.0f}), "
                         f"PgBouncer +{b:.0f} µs ({min(added['pgbouncer']):.0f}–{max(added['pgbouncer']):.0f})",
                         c <= b))
    for kind, limit in [("plaintext", 2.5), ("TLS", 8.0)]:
        for case in summary:
            if case.endswith(f"idle clients {kind}"):
                kb, bkb = get(case, "pgcell", "rss_kb_per_client"), get(case, "pgbouncer", "rss_kb_per_client")
                rows.append((f"{case}: ≤ {limit} KiB per client", f"pgcell {fmt(kb, 2)} KiB, PgBouncer {fmt(bkb, 2)} KiB",
                             kb is not None and kb <= limit))
    for case, limit in [("storm -C plaintext", 1.0), ("storm -C TLS", 0.6)]:
        if case not in summary:
            continue
        rr = round_ratios(results, case, "pgcell", "pgbouncer", "proxy_cpu_us_per_tx")
        c1, c2 = get(case, "pgcell", "cpu_us_per_tx"), get(case, "pgbouncer", "cpu_us_per_tx")
        rows.append((f"{case}: CPU/connection ≤ {limit}× PgBouncer's", f"{fmt(c1, 0)} vs {fmt(c2, 0)} µs; {spread(rr)}",
                     ok(rr, lambda x: x <= limit)))
    for case in summary:
        if "pgcell-ct" in summary[case]:
            cpu = round_ratios(results, case, "pgcell-ct", "pgbouncer", "proxy_cpu_us_per_tx")
            tps = round_ratios(results, case, "pgcell-ct", "pgbouncer", "tps")
            rows.append((f"{case}, current_thread runtime (for comparison): CPU/tx ≤ 0.95×, TPS ≥ 1.0× PgBouncer's",
                         f"CPU {spread(cpu)}; TPS {spread(tps)}",
                         ok(cpu, lambda x: x <= 0.95) and ok(tps, lambda x: x >= 1.0)))
    for case in summary:
        if "pgcell-2t" in summary[case] and "storm" not in case and "single" not in case:
            rr = round_ratios(results, case, "pgcell-2t", "pgcell", "proxy_cpu_us_per_tx")
            rows.append((f"{case}: two workers' CPU/tx ≤ 1.05× one worker's", spread(rr), ok(rr, lambda x: x <= 1.05)))
        if "pgcell-4t" in summary[case]:
            rr = round_ratios(results, case, "pgcell-4t", "pgcell", "proxy_cpu_us_per_tx")
            rows.append((f"{case}: four workers' (on 2 cores) CPU/tx ≤ 1.05× one worker's", spread(rr),
                         ok(rr, lambda x: x <= 1.05)))
    for mode in ["simple", "extended", "prepared"]:
        lo, hi = get(f"txn -S {mode} 32", "pgcell", "tps_median"), get(f"txn -S {mode} {high}", "pgcell", "tps_median")
        r = ratio(hi, lo)
        if r is not None:
            rows.append((f"{high} clients -M {mode}: pgcell TPS ≥ 0.9× its 32-client figure", f"{fmt(r, 2)}×", r >= 0.9))
    # Passthrough against HAProxy (issue 22's targets).
    for case in summary:
        if not case.startswith("passthrough"):
            continue
        tls = "TLS" in case
        a, b = ("pgcell-pt-tls", "haproxy-tls") if tls else ("pgcell-pt", "haproxy")
        if "COPY" in case:
            for a, b in [("pgcell-pt", "haproxy"), ("pgcell-pt-tls", "haproxy-tls")]:
                rr = round_ratios(results, case, a, b, "tps")
                if rr:
                    rows.append((f"{case}: {a} MB/s ≥ {b}'s", spread(rr), ok(rr, lambda x: x >= 1.0)))
            continue
        rr = round_ratios(results, case, a, b, "proxy_cpu_us_per_tx")
        limit = 0.8 if tls else 1.0
        what = "connection" if "storm" in case else "transaction"
        rows.append((f"{case}: pgcell CPU per {what} ≤ {limit}× HAProxy's", spread(rr),
                     ok(rr, lambda x, limit=limit: x <= limit)))
    lines = ["| target | measured: median (min–max over rounds) | met |", "|---|---|---|"]
    for name, measured, met in rows:
        lines.append(f"| {name} | {measured} | {'yes' if met else '**no**'} |")
    return "\n".join(lines)


def capacity(summary):
    """Transactions per second one core of proxy CPU carries, and a 4- and
    8-core node, from the measured CPU per transaction (PgBouncer is one
    thread: one process per core, as `so_reuseport` deployments run it)."""
    lines = ["| case | proxy | CPU µs/tx | tx/s per core | 4-core node | 8-core node |", "|---|---|---|---|---|---|"]
    for case in ["txn -S simple 32", "txn -S prepared 32", "txn TPC-B 32", "TLS txn -S simple 32"]:
        for target, label in [("pgbouncer", "PgBouncer (1 process per core)"), ("pgcell", "pgcell, 1 worker"),
                              ("pgcell-2t", "pgcell, 2 workers"), ("pgcell-4t", "pgcell, 4 workers"),
                              ("pgcell-ct", "pgcell, current_thread")]:
            c = summary.get(case, {}).get(target, {}).get("cpu_us_per_tx")
            if not c:
                continue
            per_core = 1e6 / c
            lines.append(f"| {case} | {label} | {c:.2f} | {per_core:,.0f} | {4 * per_core:,.0f} | {8 * per_core:,.0f} |")
    return "\n".join(lines)


def charts(summary, cases_order, outdir):
    py = os.path.join(VENV, "bin", "python")
    data = json.dumps({"summary": summary, "order": cases_order})
    script = r"""
import json, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
d = json.loads(sys.stdin.read())
s, order, out = d["summary"], d["order"], sys.argv[1]
targets = ["direct", "pgbouncer", "pgcell", "pgcell-2t", "pgcell-4t", "pgcell-ct"]
colors = {"direct": "#888888", "pgbouncer": "#4c72b0", "pgcell": "#dd8452", "pgcell-2t": "#f0b27a", "pgcell-4t": "#e8c39e",
          "pgcell-ct": "#c44e52"}
def bars(cases, key, ylabel, title, path):
    cases = [c for c in cases if c in s]
    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(cases)), 4.5))
    w = 0.16
    for i, t in enumerate(targets):
        vals = [s[c].get(t, {}).get(key) or 0 for c in cases]
        ax.bar([x + (i - 2) * w for x in range(len(cases))], vals, w, label=t, color=colors[t])
    ax.set_xticks(range(len(cases)))
    ax.set_xticklabels(cases, rotation=25, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
tps_cases = [c for c in order if "idle" not in c and "storm" not in c]
bars(tps_cases, "tps_median", "TPS (median)", "TPS by case and client count", out + "/tps.png")
bars([c for c in order if "idle" not in c], "cpu_us_per_tx", "proxy CPU µs per transaction (storms: per connection)",
     "Proxy CPU per transaction", out + "/cpu.png")
"""
    p = subprocess.run([py, "-c", script, outdir], input=data, text=True, capture_output=True)
    if p.returncode != 0:
        log(f"charts failed: {p.stderr[-500:]}")


def versions(binary):
    def first(cmd):
        try:
            return run(cmd, check=False).stdout.strip().splitlines()[0]
        except Exception as e:  # noqa: BLE001 - report, don't fail
            return f"({e})"
    rev = first(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"])
    return {
        "pgcell": f"{first([binary, '--version'])} (git {rev})",
        "PostgreSQL": first([os.path.join(pg_bin_dir(), "postgres"), "--version"]),
        "PgBouncer": first([pgbouncer_path(), "--version"]),
        "pgbench": first(["pgbench", "--version"]),
    }


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {mem:.0f} GiB RAM, {platform.system()} {platform.release()}"


# --------------------------------------------------------------------- main



def write_report(args, results, ver, started, machine_desc, command, write_json=False):
    """benchmarks.md, the charts and (after a run) results.json, from the
    runs in `results`."""
    summary = summarize(results)
    order = list(dict.fromkeys(r["case"] for r in results))
    rerendered = ""
    if command is None:
        # A results.json from before the command was stored: the options
        # that shape the run, as they were given.
        a = vars(args)
        command = " ".join(f"--{k.replace('_', '-')} {a[k]}" for k in ["binary", "rounds", "duration", "idle", "scale"]
                           if a.get(k) is not None)
    if not write_json:
        rerendered = (f" (report written again from `results.json` on "
                      f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
                      f"`--report-from`, after a change to the targets)")
    os.makedirs(os.path.join(args.out, "benchmarks"), exist_ok=True)
    if write_json:
        with open(os.path.join(args.out, "benchmarks", "results.json"), "w") as f:
            json.dump({"started": started.isoformat(), "machine": machine_desc, "versions": ver,
                       "args": vars(args), "command": command, "results": results}, f, indent=1)
    charts(summary, order, os.path.join(args.out, "benchmarks"))
    idle_lines = ["| case | target | clients open | proxy RSS MB (before → with clients) | KiB per client | proxy CPU µs per login |",
                  "|---|---|---|---|---|---|"]
    for r in results:
        if "opened" in r:
            idle_lines.append(f"| {r['case']} | {r['target']} | {r['opened']} | {r['proxy_rss_base_mb']} → {r['proxy_rss_mb']} | "
                              f"{fmt(r['rss_kb_per_client'], 1)} | {fmt(r['login_cpu_us'], 0)} |")
    example = next((r["command"] for r in results if "command" in r and r["target"] == "pgcell"), "")
    md = f"""# Benchmarks

Generated by `python3 benches/load/run.py {command}` on {started.strftime('%Y-%m-%d %H:%M UTC')}{rerendered};
raw runs in [`benchmarks/results.json`](benchmarks/results.json). Do not edit by hand: rerun the harness.

- Machine: {machine_desc}; pgbench, PostgreSQL and the proxy share it.
- Versions: {'; '.join(f'{k}: {v}' for k, v in ver.items())}.
- PostgreSQL: scale {args.scale}, `fsync=off`, `synchronous_commit=off`, `full_page_writes=off`,
  `shared_buffers=512MB` (the proxies are measured, not the disk).
- Both proxies: pool size {POOL_SIZE} per (database, user), transaction mode (session mode for the
  session case), SCRAM with the role's stored secret (PgBouncer's `auth_file` holds the SCRAM secret,
  pgcell's `scram_secret`; neither pays a PBKDF2 per login), clients queue for a backend up to
  120 s (PgBouncer's `query_wait_timeout`; pgcell `pool.acquire_timeout = "120s"`), connection logging off (pgcell
  `log.level = "warn"`), TLS with the same P-256 certificate, prepared statements in transaction mode
  with 1,000 per backend (PgBouncer `max_prepared_statements`, pgcell's default).
- Each case ran {args.rounds} rounds of {args.duration} s (the single-client case at least 5), targets
  interleaved within each round (direct, PgBouncer, pgcell, pgcell-2t, then the next case, …); figures
  are medians over rounds.
- `pgcell` runs with `[runtime] worker_threads = {args.pgcell_workers}`: on this box PostgreSQL and pgbench
  need the cores too, and it is the CPU budget of single-threaded PgBouncer. `pgcell-2t` is the same
  binary with the default runtime (one worker per CPU, {os.cpu_count()} here), shown where it matters;
  `pgcell-4t` the same with `worker_threads = 4` on the same {os.cpu_count()} CPUs (the scheduler's
  overhead when workers outnumber cores), on the 32-client simple case;
  `pgcell-ct` the same binary with `[runtime] flavor = "current_thread"` (one thread, no work-stealing
  scheduler), on the 32-client simple and prepared cases.
- `-j` is 2 below 64 clients and 4 above. Latency p99 from pgbench's per-transaction log sampled at
  20% (`-l --sampling-rate 0.2`). Proxy CPU is utime+stime of the proxy process from
  `/proc/PID/stat` before and after the run (shown as user + kernel), divided by the transactions (for `-C` storms each
  transaction is a new connection, so it is CPU per connection, login included).
- Example command: `{example}`
- Idle clients: on freshly started proxy processes (one per measurement), an asyncpg script opens
  the connections (200 at a time), holds them, and the proxy's RSS is read after 3 s; the idle role's SCRAM secret uses {IDLE_ITERATIONS} iterations so that
  10,000 client-side logins take seconds, not minutes (the proxies verify a proof either way; no
  PBKDF2 runs in them).

## Results

{targets_table(summary, order)}

![TPS by case](benchmarks/tps.png)

![Proxy CPU per transaction](benchmarks/cpu.png)

### Idle clients

{chr(10).join(idle_lines)}

## Targets

pgcell (one worker thread) against PgBouncer, each ratio taken within a round (same minute, same
machine state), then the median and the range over rounds.

{targets_check(summary, results, args.clients_high)}

## Capacity per core

Proxy CPU only: what one core spent on the proxy carries, and what 4 and 8 such cores would, when
PostgreSQL is elsewhere and is not the limit. Computed from the CPU per transaction above.

{capacity(summary)}
"""
    with open(os.path.join(args.out, "benchmarks.md"), "w") as f:
        f.write(md)
    log(f"wrote {os.path.join(args.out, 'benchmarks.md')}")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="seconds-long run checking the harness (CI)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per pgbench run")
    ap.add_argument("--clients-high", type=int, default=256)
    ap.add_argument("--idle", type=int, default=10000, help="idle clients (0 to skip)")
    ap.add_argument("--scale", type=int, default=10)
    ap.add_argument("--cases", help="comma-separated substrings selecting cases")
    ap.add_argument("--binary", help="pgcell binary (default: build release)")
    ap.add_argument("--pgbouncer", help="PgBouncer binary (default: 1.25.2 from build-pgbouncer.sh)")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs"), help="where benchmarks.md and charts go")
    ap.add_argument("--pgcell-workers", type=int, default=1,
                    help="[runtime] worker_threads of the 'pgcell' target (default 1: the CPU budget of "
                         "single-threaded PgBouncer on a box shared with PostgreSQL and pgbench); the "
                         "'pgcell-2t' target runs with the default, one thread per CPU")
    ap.add_argument("--perf-dir", help="record a perf profile of pgcell during its runs into this folder")
    ap.add_argument("--hold", type=int, metavar="SECONDS",
                    help="start the servers, print how to reach them, keep them up this long, stop")
    ap.add_argument("--no-report", action="store_true", help="print the runs, write no report (exploration)")
    ap.add_argument("--report-from", metavar="RESULTS_JSON",
                    help="write the report again from a stored results.json (no runs): after a change to the "
                         "report or its targets")
    args = ap.parse_args()
    if args.report_from:
        with open(args.report_from) as f:
            stored = json.load(f)
        out = args.out
        args = argparse.Namespace(**stored["args"])
        args.out = out
        started = datetime.datetime.fromisoformat(stored["started"])
        write_report(args, stored["results"], stored["versions"], started, stored.get("machine"),
                     stored.get("command"))
        return

    # Stopped early (Ctrl-C, SIGTERM, or SIGINT to a background run, which
    # a shell starts with SIGINT ignored): still stop every server started.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.smoke:
        args.rounds, args.duration, args.idle, args.scale = 1, 2, 50, 1
    ensure_tools(need_venv=True)
    global PGBOUNCER
    PGBOUNCER = ensure_pgbouncer(args.pgbouncer)
    # 10,000 clients need more than the default 1,024 descriptors (inherited
    # by the servers started below).
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))

    binary = args.binary
    if not binary:
        log("cargo build --release")
        subprocess.run(["cargo", "build", "--release", "--locked", "--bin", "pgcell"], cwd=ROOT, check=True)
        target_dir = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
        binary = os.path.join(target_dir, "release", "pgcell")
    binary = os.path.abspath(binary)

    work = tempfile.mkdtemp(prefix="pgcell-bench-")
    os.chmod(work, 0o755)
    cert, key = os.path.join(work, "server.crt"), os.path.join(work, "server.key")
    run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=bench.pg.localhost"])
    os.chmod(key, 0o644)
    servers = Servers(work, binary, cert, key)
    results = []
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        servers.start_postgres(args.scale)
        servers.start_pgbouncer()
        servers.start_pgcell("pgcell", args.pgcell_workers)
        servers.start_pgcell("pgcell-2t", None)
        servers.start_pgcell("pgcell-4t", 4)
        servers.start_pgcell("pgcell-ct", "current_thread")
        servers.start_haproxy()
        if args.hold:
            info = {t: servers.target(t) for t in ["direct", "pgbouncer", "pgcell", "pgcell-2t", "pgcell-4t", "pgcell-ct",
                                                   "haproxy", "haproxy-tls", "pgcell-pt", "pgcell-pt-tls"]}
            print(json.dumps({"password": PASSWORD, "targets": info}), flush=True)
            log(f"holding for {args.hold} s (Ctrl-C stops)")
            try:
                time.sleep(args.hold)
            except KeyboardInterrupt:
                pass
            return
        case_list = smoke_cases() if args.smoke else cases(args)
        if args.cases:
            keys = [k.strip() for k in args.cases.split(",")]
            case_list = [c for c in case_list if any(k in c["name"] for k in keys)]
        sampling = 0.2
        total_rounds = max([args.rounds] + [c.get("min_rounds", 0) for c in case_list])
        for rnd in range(1, total_rounds + 1):
            for case in case_list:
                if rnd > max(args.rounds, case.get("min_rounds", 0)):
                    continue
                for target in case["targets"]:
                    if "copy_rows" in case:
                        r = run_copy(servers, case, target, work)
                    else:
                        r = run_case(servers, case, target, args.duration, sampling, work, args.perf_dir)
                    r["round"] = rnd
                    results.append(r)
                    log(f"round {rnd} {case['name']:<24} {target:<9} tps={fmt(r['tps'])} "
                        f"cpu/tx={fmt(r.get('proxy_cpu_us_per_tx'), 1)}µs exit={r['exit']}"
                        + (f" ERROR {r.get('error', '')[:200]}" if r['exit'] else ""))
        if args.idle:
            for rnd in range(1, (1 if args.smoke else 2) + 1):
                for tls in [False, True]:
                    # Fresh proxy processes for every measurement: after the
                    # load cases, or after the previous idle round, their
                    # heaps are grown (allocators keep freed memory), which
                    # would hide what idle clients cost.
                    servers.restart_proxies(args.pgcell_workers)
                    for target in ["pgbouncer", "pgcell"]:
                        r = run_idle(servers, target, args.idle, tls, work)
                        r["round"] = rnd
                        results.append(r)
                        log(f"idle {r['case']} {target}: opened {r['opened']} rss {r['proxy_rss_base_mb']}→"
                            f"{r['proxy_rss_mb']} MB ({fmt(r['rss_kb_per_client'], 1)} KiB/client)")
    finally:
        servers.stop()

    ver = versions(binary)
    summary = summarize(results)
    order = list(dict.fromkeys(r["case"] for r in results))
    problems = [r for r in results
                if (r.get("exit", 0) != 0 and "prepared" not in r["case"])
                or (r.get("target") == "pgcell" and (r.get("exit", 0) != 0 or r.get("failed")))
                or (r.get("transactions") == 0 and "opened" not in r)
                or ("opened" in r and r["opened"] == 0)]
    if args.no_report:
        print(targets_table(summary, order))
        shutil.rmtree(work, ignore_errors=True)
        return
    if args.smoke:
        for r in results:
            print(json.dumps(r))
        if problems:
            log(f"smoke FAILED: {len(problems)} bad runs")
            sys.exit(1)
        log("smoke ok")
        shutil.rmtree(work, ignore_errors=True)
        return

    write_report(args, results, ver, started, machine(), " ".join(sys.argv[1:]), write_json=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
