#!/usr/bin/env python3
"""PostgreSQL's own regression suite (pg_regress) through pgcell.

Runs the sql/expected files of the installed PostgreSQL minor version
three (or four) times, each on a fresh throwaway cluster:

  direct       pg_regress -> PostgreSQL                    (the baseline)
  passthrough  pg_regress -> pgcell passthrough tenant     -> PostgreSQL
  session      pg_regress -> pgcell session-mode pool      -> PostgreSQL
  transaction  pg_regress -> pgcell transaction pool (size --txn-pool-size,
               smaller than the schedule's parallelism)    -> PostgreSQL

and prints, per test, which fail directly and which fail only through
pgcell. Exit status 1 when a test fails through pgcell (passthrough or
session mode) but passes directly and is not in the allowlist
(scripts/pg_regress.allow: `test mode reason` per line); transaction mode's
failures are recorded, never fatal. Status 2 for a setup error.

  scripts/pg_regress.sh /var/tmp/pgcell-ci-target/debug/pgcell
  scripts/pg_regress.sh PGCELL --schedule full --modes direct,passthrough,session,transaction

Cached under /var/tmp/pgcell-regress (PGCELL_REGRESS_CACHE): the source
tarball of the installed version (Debian's postgresql-MAJOR orig tarball),
its src/test/regress and contrib/spi, and regress.so/autoinc.so/refint.so
built with gcc against postgresql-server-dev-MAJOR (apt-get installed when
the headers are missing). Results (pg_regress output, per-test diffs,
summary.txt/summary.json, pgcell and PostgreSQL logs) go to
--results (default: CACHE/results/<schedule>-<time>, `latest` links to it).

Runs as root (clusters and pg_regress run as the `postgres` system user,
since the server reads the suite's data files and writes its results) or
as a user that can run initdb itself.
"""

import argparse
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.environ.get("PGCELL_REGRESS_CACHE", "/var/tmp/pgcell-regress")
PASSWORD = "pgcell-regress-superuser"
SUPERUSER = "postgres"
ALL_MODES = ["direct", "passthrough", "session", "transaction"]
FATAL_MODES = {"passthrough", "session"}
TENANT = {"passthrough": "pass", "session": "sess", "transaction": "txn"}

# The subset: setup, the settings-sensitive tests (startup DateStyle,
# TimeZone and IntervalStyle from PGDATESTYLE/PGTZ/PGOPTIONS; RESET, SET
# LOCAL, set_config) and the session-state ones (prepared statements,
# cursors, transactions and savepoints, temp tables, advisory locks, COPY,
# plpgsql). One list per parallel group, in schedule order.
SUBSET = [
    ["test_setup"],
    ["date", "time", "timetz", "timestamp", "timestamptz", "interval"],
    ["horology"],
    ["create_index"],
    ["guc", "prepare", "transactions", "portals", "temp", "advisory_lock", "sequence", "copyselect"],
    ["plpgsql"],
]

RESULT_RE = re.compile(
    r"^(?:test\s+|\s+)(\S+)\s+\.\.\.\s+(ok|FAILED|failed \(ignored\))"
)

children = []  # (description, Popen) of every process we started
clusters = []  # Cluster objects still running
work_dirs = []  # removed at exit


def log(msg):
    print(msg, flush=True)


def die(msg):
    print(f"pg_regress.py: {msg}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def run(cmd, **kw):
    kw.setdefault("check", True)
    return subprocess.run(cmd, **kw)


def is_root():
    return os.geteuid() == 0


def as_pg(cmd):
    """Runs cmd as the postgres system user when we are root."""
    return ["runuser", "-u", "postgres", "--"] + cmd if is_root() else cmd


def chown_pg(path):
    if is_root():
        pw = pwd.getpwnam("postgres")
        for root, dirs, files in os.walk(path):
            os.chown(root, pw.pw_uid, pw.pw_gid)
            for f in files:
                os.chown(os.path.join(root, f), pw.pw_uid, pw.pw_gid)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc, what, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            die(f"{what} exited with status {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    die(f"{what} does not accept connections on port {port} after {timeout}s")


def stop(proc, what, timeout=15):
    """Stops one process we started, by its pid: SIGTERM, then SIGKILL."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        log(f"  {what} (pid {proc.pid}) did not stop in {timeout}s: SIGKILL")
        proc.kill()
        proc.wait()


def stop_group(proc, what, timeout=10):
    """Stops a process started with start_new_session and its children."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


# ---------------------------------------------------------------------------
# PostgreSQL: version, sources, libraries


def pg_version():
    out = run(["psql", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"\(PostgreSQL\) (\d+)\.(\d+)", out)
    if not m:
        die(f"cannot read the PostgreSQL version from `psql --version`: {out!r}")
    major, minor = m.group(1), m.group(2)
    bindir = os.environ.get("PG_BINDIR", f"/usr/lib/postgresql/{major}/bin")
    if not os.path.isfile(os.path.join(bindir, "initdb")):
        die(f"initdb not found in {bindir} (set PG_BINDIR)")
    return major, f"{major}.{minor}", bindir


def pg_regress_binary(major):
    path = f"/usr/lib/postgresql/{major}/lib/pgxs/src/test/regress/pg_regress"
    if not os.path.isfile(path):
        die(f"{path} missing (package postgresql-server-dev-{major} or postgresql-{major})")
    return path


def source_versions(major, version):
    """The installed version first, then every other version of the same
    major that apt knows (a security update's sources are not in Debian's
    main pool: an older minor's suite is the next best)."""
    versions = [version]
    r = run(["apt-cache", "policy", f"postgresql-{major}"], check=False,
            capture_output=True, text=True)
    for m in re.finditer(r"^\s+(?:\*\*\* )?(\d+\.\d+)-\S+ \d+", r.stdout or "", re.M):
        if m.group(1) not in versions:
            versions.append(m.group(1))
    return versions


def fetch_sources(major, version):
    """Tarball (cached), then src/test/regress and contrib/spi from it."""
    os.makedirs(CACHE, exist_ok=True)
    for candidate in source_versions(major, version):
        name = f"postgresql-{major}_{candidate}.orig.tar.bz2"
        tarball = os.path.join(CACHE, name)
        if os.path.isfile(tarball):
            break
        url = f"http://deb.debian.org/debian/pool/main/p/postgresql-{major}/{name}"
        log(f"fetching {url}")
        tmp = tarball + ".part"
        try:
            with urllib.request.urlopen(url, timeout=120) as r, open(tmp, "wb") as f:
                shutil.copyfileobj(r, f)
        except urllib.error.HTTPError as e:
            log(f"  {e.code}: not there")
            continue
        os.rename(tmp, tarball)
        break
    else:
        die(f"no sources of PostgreSQL {major} found for {version}")
    if candidate != version:
        log(f"warning: PostgreSQL {version} runs the regression suite of {candidate} "
            "(its sources are not in Debian's pool); both sides of every comparison use it")
    version = candidate
    src = os.path.join(CACHE, f"postgresql-{version}")
    regress = os.path.join(src, "src/test/regress")
    if not os.path.isfile(os.path.join(regress, "parallel_schedule")):
        log(f"extracting src/test/regress and contrib/spi from {name}")
        run(["tar", "xjf", tarball, "-C", CACHE,
             f"postgresql-{version}/src/test/regress",
             f"postgresql-{version}/contrib/spi"])
    return src


def ensure_headers(major):
    inc = f"/usr/include/postgresql/{major}/server"
    if not os.path.isfile(os.path.join(inc, "postgres.h")):
        log(f"server headers missing: apt-get install postgresql-server-dev-{major}")
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        r = run(["apt-get", "install", "-y", "-q", f"postgresql-server-dev-{major}"],
                env=env, check=False)
        if r.returncode != 0:
            run(["apt-get", "update", "-q"], env=env)
            run(["apt-get", "install", "-y", "-q", f"postgresql-server-dev-{major}"], env=env)
    return inc


def build_libs(src, major, inc):
    """regress.so, autoinc.so, refint.so (what the suite loads), with gcc."""
    lib = os.path.join(src, "lib")
    os.makedirs(lib, exist_ok=True)
    # (source, extra flags): contrib/spi's Makefile builds refint with
    # REFINT_VERBOSE, whose NOTICEs the triggers test expects.
    sources = {
        "regress": ("src/test/regress/regress.c", []),
        "autoinc": ("contrib/spi/autoinc.c", []),
        "refint": ("contrib/spi/refint.c", ["-DREFINT_VERBOSE"]),
    }
    for name, (c, flags) in sources.items():
        c = os.path.join(src, c)
        so = os.path.join(lib, name + ".so")
        cmd = ["gcc", "-O1", "-fPIC", "-shared", "-Wno-unused", "-I", inc,
               "-I", "/usr/include/postgresql"] + flags + [c, "-o", so]
        stamp = so + ".cmd"
        if (os.path.isfile(so) and os.path.getmtime(so) >= os.path.getmtime(c)
                and os.path.isfile(stamp) and open(stamp).read() == " ".join(cmd)):
            continue
        log(f"building {so}")
        run(cmd)
        with open(stamp, "w") as f:
            f.write(" ".join(cmd))
    return lib


# ---------------------------------------------------------------------------
# Throwaway cluster


class Cluster:
    def __init__(self, base, bindir, name):
        self.base = base
        self.bindir = bindir
        self.data = os.path.join(base, "data")
        self.sock = os.path.join(base, "sock")
        self.log = os.path.join(base, "postgres.log")
        os.makedirs(self.sock, exist_ok=True)
        pwfile = os.path.join(base, "pwfile")
        with open(pwfile, "w") as f:
            f.write(PASSWORD)
        chown_pg(base)
        run(as_pg([os.path.join(bindir, "initdb"), "-N", "-D", self.data, "-U", SUPERUSER,
                   "--auth-local=trust", "--auth-host=scram-sha-256", "--pwfile", pwfile,
                   "-E", "UTF8", "--locale=C"]), stdout=subprocess.DEVNULL)
        with open(os.path.join(self.data, "postgresql.conf"), "a") as f:
            f.write(
                "\n# pgcell regression cluster\n"
                f"listen_addresses = '127.0.0.1'\nunix_socket_directories = '{self.sock}'\n"
                f"cluster_name = '{name}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\nmax_prepared_transactions = 0\n"
                "password_encryption = 'scram-sha-256'\n"
            )
        self.port = None
        for _ in range(5):
            self.port = free_port()
            with open(os.path.join(self.data, "postgresql.auto.conf"), "w") as f:
                f.write(f"port = {self.port}\n")
            chown_pg(self.data)
            r = run(as_pg([os.path.join(bindir, "pg_ctl"), "-D", self.data, "-l", self.log,
                           "-w", "-t", "60", "start"]), check=False,
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode == 0:
                clusters.append(self)
                return
        die(f"PostgreSQL did not start; see {self.log}")

    def postmaster_pid(self):
        try:
            with open(os.path.join(self.data, "postmaster.pid")) as f:
                return int(f.readline())
        except (OSError, ValueError):
            return None

    def stop(self):
        if self not in clusters:
            return
        clusters.remove(self)
        pid = self.postmaster_pid()
        r = run(as_pg([os.path.join(self.bindir, "pg_ctl"), "-D", self.data, "-m", "fast",
                       "-w", "-t", "30", "stop"]), check=False,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if r.returncode != 0 and pid:
            try:
                os.kill(pid, signal.SIGQUIT)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------
# pgcell


def pgcell_config(path, port, pg_port, txn_pool_size):
    backends = f'backends = ["127.0.0.1:{pg_port}"]'
    text = f"""# pgcell for PostgreSQL's regression suite (scripts/pg_regress.py)
[listen]
addr = "127.0.0.1:{port}"
startup_timeout = "30s"

[routing]
sources = ["options", "user"]

[shutdown]
propagation = "100ms"
grace = "2s"

[log]
level = "warn"

[[tenants]]
id = "pass"
{backends}

[[tenants]]
id = "sess"
{backends}
[tenants.pool]
mode = "session"
size = 40
acquire_timeout = "60s"
[[tenants.users]]
name = "{SUPERUSER}"
password_env = "PGCELL_REGRESS_PASSWORD"

[[tenants]]
id = "txn"
{backends}
[tenants.pool]
mode = "transaction"
size = {txn_pool_size}
acquire_timeout = "120s"
[[tenants.users]]
name = "{SUPERUSER}"
password_env = "PGCELL_REGRESS_PASSWORD"
"""
    with open(path, "w") as f:
        f.write(text)


def start_pgcell(binary, config, logfile):
    env = dict(os.environ, PGCELL_REGRESS_PASSWORD=PASSWORD)
    r = run([binary, "check", "--config", config], env=env, check=False,
            capture_output=True, text=True)
    if r.returncode != 0:
        die(f"pgcell check failed:\n{r.stdout}{r.stderr}")
    out = open(logfile, "ab")
    proc = subprocess.Popen([binary, "run", "--config", config], env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    children.append(("pgcell", proc))
    return proc


# ---------------------------------------------------------------------------
# pg_regress


def write_schedule(path, schedule, regress_dir, tests=None):
    if tests:
        with open(path, "w") as f:
            for t in tests:
                f.write(f"test: {t}\n")
        return len(tests)
    if schedule == "full":
        shutil.copy(os.path.join(regress_dir, "parallel_schedule"), path)
        return sum(len(l.split()) - 1 for l in open(path) if l.startswith("test:"))
    with open(path, "w") as f:
        for group in SUBSET:
            f.write("test: " + " ".join(group) + "\n")
    return sum(len(g) for g in SUBSET)


def run_pg_regress(pg_regress, bindir, mode, port, regress_dir, lib, schedule_file, outdir, timeout):
    os.makedirs(outdir, exist_ok=True)
    chown_pg(outdir)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": "/tmp",
        "LANG": "C",
        "PGPASSWORD": PASSWORD,
        "PGCONNECT_TIMEOUT": "30",
        "PGSSLMODE": "disable",
    }
    if mode != "direct":
        env["PGOPTIONS"] = f"-c tenant={TENANT[mode]}"
    cmd = as_pg(["env"] + [f"{k}={v}" for k, v in env.items()] + [
        pg_regress,
        f"--inputdir={regress_dir}",
        f"--outputdir={outdir}",
        f"--dlpath={lib}",
        f"--bindir={bindir}",
        "--host=127.0.0.1",
        f"--port={port}",
        f"--user={SUPERUSER}",
        "--dbname=regression",
        f"--schedule={schedule_file}",
    ])
    start = time.time()
    with open(os.path.join(outdir, "pg_regress.stdout"), "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env={"PATH": env["PATH"]})
        children.append(("pg_regress", proc))
        try:
            proc.wait(timeout=timeout)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
            stop_group(proc, "pg_regress")
    elapsed = time.time() - start
    text = open(os.path.join(outdir, "pg_regress.stdout")).read()
    results = {}
    for line in text.splitlines():
        m = RESULT_RE.match(line)
        if m:
            results[m.group(1)] = "ok" if m.group(2) == "ok" else "failed"
    split_diffs(outdir)
    return {"results": results, "seconds": round(elapsed, 1), "timed_out": timed_out,
            "status": proc.returncode}


def split_diffs(outdir):
    """regression.diffs -> diffs/<test>.diff, one per failed test."""
    path = os.path.join(outdir, "regression.diffs")
    if not os.path.isfile(path):
        return
    diffs = os.path.join(outdir, "diffs")
    os.makedirs(diffs, exist_ok=True)
    current = None
    with open(path, errors="replace") as f:
        for line in f:
            m = re.match(r"^diff .*/results/(\S+)\.out$", line.rstrip("\n"))
            if m:
                if current:
                    current.close()
                current = open(os.path.join(diffs, m.group(1) + ".diff"), "w")
            if current:
                current.write(line)
    if current:
        current.close()


# ---------------------------------------------------------------------------
# Comparison


def load_allow(path):
    allow = {}
    if not os.path.isfile(path):
        return allow
    for n, line in enumerate(open(path), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(None, 2)
        if len(parts) < 3 or parts[1] not in ALL_MODES:
            die(f"{path}:{n}: expected `test mode reason`, got {line!r}")
        allow[(parts[0], parts[1])] = parts[2]
    return allow


def compare(runs, allow):
    """Per mode: failed directly, failed only through pgcell (allowed or not)."""
    base = runs.get("direct")
    summary = {}
    for mode, r in runs.items():
        failed = sorted(t for t, s in r["results"].items() if s != "ok")
        entry = {"ran": len(r["results"]), "failed": failed, "seconds": r["seconds"],
                 "timed_out": r["timed_out"]}
        if mode != "direct" and base is not None:
            only = [t for t in failed if base["results"].get(t) == "ok"]
            missing = sorted(t for t in base["results"] if t not in r["results"])
            entry["only_through_pgcell"] = only
            entry["allowed"] = {t: allow[(t, mode)] for t in only if (t, mode) in allow}
            entry["unexpected"] = [t for t in only if (t, mode) not in allow]
            entry["not_run"] = missing
            entry["stale_allow"] = sorted(t for (t, m) in allow if m == mode
                                          and r["results"].get(t) == "ok")
        summary[mode] = entry
    return summary


def report(summary, results_dir):
    lines = []
    for mode, e in summary.items():
        lines.append(f"{mode}: {e['ran']} tests run, {len(e['failed'])} failed"
                     f" ({e['seconds']} s{', TIMED OUT' if e['timed_out'] else ''})")
        if mode == "direct":
            for t in e["failed"]:
                lines.append(f"    baseline failure: {t}  ({results_dir}/direct/diffs/{t}.diff)")
            continue
        lines.append(f"    failed only through pgcell: {len(e['only_through_pgcell'])}"
                     f" ({len(e['allowed'])} allowed, {len(e['unexpected'])} not allowed)")
        for t in e["only_through_pgcell"]:
            why = e["allowed"].get(t)
            tag = (f"allowed: {why}" if why else
                   "NOT ALLOWED" if mode in FATAL_MODES else "recorded")
            lines.append(f"    {t:24} {tag}  ({results_dir}/{mode}/diffs/{t}.diff)")
        for t in e["not_run"]:
            lines.append(f"    {t:24} did not run (ran directly)")
        for t in e["stale_allow"]:
            lines.append(f"    {t:24} passes now: its allowlist entry can go")
    text = "\n".join(lines) + "\n"
    print(text, end="")
    with open(os.path.join(results_dir, "summary.txt"), "w") as f:
        f.write(text)
    with open(os.path.join(results_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)


# ---------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("pgcell", help="pgcell binary (copied before use)")
    ap.add_argument("--schedule", choices=["full", "subset"], default="subset")
    ap.add_argument("--modes", default="direct,passthrough,session",
                    help="comma-separated, from " + ",".join(ALL_MODES)
                    + " (direct is always run: it is the baseline)")
    ap.add_argument("--tests", help="comma-separated tests run one after another instead of"
                    " a schedule (test_setup first when they need it), to look at a few")
    ap.add_argument("--txn-pool-size", type=int, default=4)
    ap.add_argument("--allow", default=os.path.join(REPO, "scripts/pg_regress.allow"))
    ap.add_argument("--results", help="results folder (default CACHE/results/<schedule>-<time>)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per pg_regress run")
    args = ap.parse_args()

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in ALL_MODES:
            die(f"unknown mode {m!r} (modes: {', '.join(ALL_MODES)})")
    if "direct" not in modes:
        modes.insert(0, "direct")
    modes = [m for m in ALL_MODES if m in modes]
    allow = load_allow(args.allow)
    if not os.access(args.pgcell, os.X_OK):
        die(f"{args.pgcell}: not an executable pgcell binary")

    major, version, bindir = pg_version()
    pg_regress = pg_regress_binary(major)
    src = fetch_sources(major, version)
    inc = ensure_headers(major)
    lib = build_libs(src, major, inc)
    regress_dir = os.path.join(src, "src/test/regress")

    tests = [t for t in (args.tests or "").split(",") if t]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results_dir = os.path.abspath(args.results or os.path.join(CACHE, "results", f"{'tests' if tests else args.schedule}-{stamp}"))
    os.makedirs(results_dir, exist_ok=True)
    if not args.results:
        latest = os.path.join(CACHE, "results", "latest")
        if os.path.islink(latest):
            os.unlink(latest)
        os.symlink(results_dir, latest)
    work = tempfile.mkdtemp(prefix="run-", dir=CACHE)
    work_dirs.append(work)
    binary = os.path.join(work, "pgcell")
    shutil.copy(args.pgcell, binary)
    schedule_file = os.path.join(work, "schedule")
    n = write_schedule(schedule_file, args.schedule, regress_dir, tests)
    chown_pg(work)
    log(f"PostgreSQL {version}, pg_regress {pg_regress}, {'--tests' if tests else args.schedule} schedule ({n} tests),"
        f" modes {', '.join(modes)}; results in {results_dir}")

    runs = {}
    for mode in modes:
        log(f"== {mode}")
        cluster = Cluster(os.path.join(work, f"cluster-{mode}"), bindir, f"regress-{mode}")
        port = cluster.port
        pgcell = None
        if mode != "direct":
            port = free_port()
            config = os.path.join(work, f"pgcell-{mode}.toml")
            pgcell_config(config, port, cluster.port, args.txn_pool_size)
            pgcell = start_pgcell(binary, config, os.path.join(results_dir, f"pgcell-{mode}.log"))
            wait_port(port, pgcell, "pgcell")
        try:
            runs[mode] = run_pg_regress(pg_regress, bindir, mode, port, regress_dir, lib, schedule_file,
                                        os.path.join(results_dir, mode), args.timeout)
        finally:
            if pgcell is not None:
                stop(pgcell, "pgcell")
            cluster.stop()
            shutil.copy(cluster.log, os.path.join(results_dir, f"postgres-{mode}.log"))
        r = runs[mode]
        nfail = sum(1 for s in r["results"].values() if s != "ok")
        log(f"   {len(r['results'])} tests, {nfail} failed, {r['seconds']} s"
            f"{' (timed out)' if r['timed_out'] else ''}")
        if not r["results"]:
            log(f"   no test ran; see {results_dir}/{mode}/pg_regress.stdout")

    summary = compare(runs, allow)
    report(summary, results_dir)
    shutil.rmtree(work, ignore_errors=True)

    bad = [(m, t) for m, e in summary.items() if m in FATAL_MODES
           for t in e.get("unexpected", []) + e.get("not_run", [])]
    if not runs["direct"]["results"]:
        die("the direct run ran no test: setup problem")
    if bad:
        log("FAIL: through pgcell but not directly (not in the allowlist): "
            + ", ".join(f"{t} ({m})" for m, t in bad))
        return 1
    log("OK: passthrough and session mode match direct PostgreSQL (allowlist applied)")
    return 0


def cleanup():
    for what, proc in reversed(children):
        try:
            if what == "pg_regress":
                stop_group(proc, what)
            else:
                stop(proc, what)
        except Exception as e:  # keep stopping the others
            print(f"stopping {what} (pid {proc.pid}): {e}", file=sys.stderr)
    for c in list(clusters):
        c.stop()
    for w in work_dirs:
        shutil.rmtree(w, ignore_errors=True)


if __name__ == "__main__":
    def on_signal(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    try:
        status = main()
    except KeyboardInterrupt:
        status = 130
    finally:
        cleanup()
    sys.exit(status)
