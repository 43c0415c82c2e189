"""Randomised, seeded client-state programs through a pgcell transaction
pool of ONE backend, compared with PostgreSQL itself, with real drivers.

Usage: isolation_random.py DIRECT_DSN PGCELL_DSN [SEEDS] [--shrink]
                           [--no-pipeline] [--do-custom]

SEEDS is `N` (seeds 0 to N-1, the default is 12), `A-B` (A to B
inclusive) or `A,B,C`. PGCELL_DSN must name a transaction pool of one
backend; role `r1` must exist and be granted to the login user, and schema
`s1` (owned by the login user) must exist in the database.

Each seed makes a program (from `random.Random(seed)` only, before anything
runs) of three clients, each asyncpg (statement cache on: `fetch` and
calls with arguments run named statements, again from the cache) or
psycopg 3 in autocommit with `prepare_threshold=0` or the default 5 (so
the same statements run prepared, again from psycopg's cache), and about
25 steps. A step is one client's action: a `SET` of a setting, `SET ROLE`,
`RESET ROLE`, `RESET ALL`, `SET SESSION AUTHORIZATION`, `set_config` with
parameters, `DISCARD ALL`, `DEALLOCATE ALL`, asyncpg's `reset()`, a `DO`
block, a psycopg pipeline (one Sync for several statements, maybe one
failing), a transaction block (committed or rolled back, maybe with an error
part-way, savepoints), a multi-statement simple query with comments,
strings and dollar quotes hiding `;` and key words, or an earlier
parameterised statement of the client again (from the driver's cache).
After every step each of the three clients reads what it sees of its own
session (the OBSERVE row, and the parameters its driver was told of), and
a new client (the acting client's driver, so the acting client's startup
profile and backend) does the same and leaves.

The program runs on DIRECT_DSN, then on PGCELL_DSN. pgcell gives a client
only backends of its exact startup parameters: every client of a seed, of
either driver, sends the same ones (`Client.connect`), so all share the one
backend, and each seed has a startup `timezone` of its own, so it starts
on a fresh backend and leftovers of one seed cannot show up in the next.
Every observation and every step's result (rows, tags, SQLSTATEs) must be
equal on both sides; the direct run must also show PostgreSQL's documented
answer that a new connection sees the defaults. On a difference the script
prints the seed, the program and both lists, and exits non-zero; with
--shrink it also looks for a shorter program (fewer steps) that still
differs.

--no-pipeline leaves psycopg pipelines out of the programs; --do-custom
puts in a custom setting set inside a `DO` body (see DO_CUSTOM_SQL).
"""

import asyncio
import os
import random
import sys

import asyncpg
import psycopg
from psycopg.pq import TransactionStatus

# One driver call (connect, query, close) gets this long; a hang shows as
# `<timeout>` and ends the run of that seed (the rest would only wait on
# the one backend).
CALL_TIMEOUT = 5.0
STEPS = 25

# What a client sees of its own session. nullif: a custom setting's name
# outlives a reset on a shared backend, so another client reads '' where a
# new connection reads NULL (docs/pooling.md, "Limits"); only its value
# must not cross clients.
OBSERVE = (
    "SELECT current_user::text, session_user::text,"
    " current_setting('work_mem'), current_setting('search_path'),"
    " current_setting('statement_timeout'),"
    " nullif(current_setting('myapp.tenant', true), ''),"
    " current_setting('TimeZone'), current_setting('application_name'),"
    " current_setting('DateStyle'), current_schema()::text"
)
# Parameters the backend reports (ParameterStatus): what the driver was told.
REPORTED = (
    "TimeZone",
    "application_name",
    "DateStyle",
    "session_authorization",
    "is_superuser",
    "client_encoding",
)

# Settings: (how `SET` spells each value, the value as set_config takes it).
SETTINGS = {
    "work_mem": [("'64kB'", "64kB"), ("'1MB'", "1MB"), ("'8MB'", "8MB"), ("'77MB'", "77MB")],
    "search_path": [
        ("s1", "s1"),
        ("s1, public", "s1, public"),
        ('"$user", s1', '"$user", s1'),
        ("public", "public"),
        ("''", ""),
    ],
    # Never small enough to fire.
    "statement_timeout": [("'30s'", "30s"), ("'1min'", "1min"), ("45000", "45000"), ("0", "0")],
    "TimeZone": [("'UTC'", "UTC"), ("'Europe/Paris'", "Europe/Paris"), ("'America/New_York'", "America/New_York")],
    "application_name": [("'app-x'", "app-x"), ("'app;y'", "app;y")],
    "DateStyle": [("'ISO, DMY'", "ISO, DMY"), ("'SQL, MDY'", "SQL, MDY"), ("German", "German")],
    "myapp.tenant": [("'t1'", "t1"), ("'t2'", "t2"), ("'a;b'", "a;b"), ("'it''s'", "it's")],
}
# set_config with the setting's name as a parameter: not for custom
# settings, whose names pgcell learns from the statement text only (a
# documented limit: "set_config with a non-literal name", docs/pooling.md
# "Limits"); PostgreSQL's own settings are read back from pg_settings.
REAL_SETTINGS = [n for n in SETTINGS if "." not in n]

KINDS = ["asyncpg", "psycopg pt=0", "psycopg pt=5"]


def describe(e):
    """An exception as an observation: its SQLSTATE when it has one."""
    state = getattr(e, "sqlstate", None)
    if state:
        return f"error {state} ({type(e).__name__})"
    return f"error {type(e).__name__}: {e}"


# --- the program -----------------------------------------------------------
#
# A call is (how, sql, params, choices): how is "simple" (simple query
# protocol: asyncpg `execute()` without arguments, psycopg `prepare=False`
# without parameters), "cached" (asyncpg `fetch()`, psycopg `execute()`
# left to its prepare threshold; always so with parameters) or "reset"
# (asyncpg `reset()`). `choices` are the parameter lists the statement
# takes, so a repeat can run it again with other values. SQL with
# parameters is written with $1, $2 (psycopg gets %s).


def call(how, sql, params=(), choices=None):
    return (how, sql, tuple(params), tuple(choices or ()))


def any_how(rng):
    return rng.choice(["simple", "cached"])


def set_sql(rng, local=False):
    name = rng.choice(list(SETTINGS))
    lit, _ = rng.choice(SETTINGS[name])
    scope = "LOCAL " if local else rng.choice(["", "", "SESSION "])
    return f"SET {scope}{name} {rng.choice(['=', 'TO'])} {lit}"


def reset_one_sql(rng):
    name = rng.choice(list(SETTINGS))
    return rng.choice([f"RESET {name}", f"SET {name} TO DEFAULT"])


def set_config_call(rng, local=False):
    flag = "true" if local else "false"
    shape = rng.randrange(3)
    if shape == 0:
        choices = [(v,) for _, v in SETTINGS["myapp.tenant"]]
        sql = f"SELECT set_config('myapp.tenant', $1, {flag})"
    elif shape == 1:
        name = rng.choice(REAL_SETTINGS)
        choices = [(v,) for _, v in SETTINGS[name]]
        sql = f"SELECT set_config('{name}', $1, {flag})"
    else:
        choices = [(n, v) for n in REAL_SETTINGS for _, v in SETTINGS[n]]
        sql = f"SELECT set_config($1, $2, {flag})"
    return call("cached", sql, rng.choice(choices), choices)


ROLE_SQL = ["SET ROLE r1", "SET ROLE r1", "SET ROLE app", "SET ROLE NONE", "RESET ROLE"]
AUTH_SQL = [
    "SET SESSION AUTHORIZATION app",
    "SET SESSION AUTHORIZATION DEFAULT",
    "RESET SESSION AUTHORIZATION",
    # Only a superuser may become another role: 42501.
    "SET SESSION AUTHORIZATION r1",
]
DO_SQL = [
    "DO $$BEGIN PERFORM set_config('work_mem', '3MB', false); END$$",
    "DO $$BEGIN EXECUTE 'SET search_path = s1'; END$$",
    "DO $d$BEGIN EXECUTE 'SET statement_timeout = ''50s'''; END$d$",
    "DO $$BEGIN SET ROLE r1; END$$",
]
# A custom setting set inside a `DO` body, its name a plain literal there:
# left out unless --do-custom. pgcell learns custom setting names from the
# statement text, not from inside dollar-quoted bodies, so the client
# loses the value at its next transaction (it never reaches another
# client). docs/pooling.md "Limits" lists custom settings set "inside a
# function, `DO` or `CALL` with a computed name"; this name is not
# computed, so whether the row covers it is for the docs to say.
DO_CUSTOM_SQL = "DO $$BEGIN PERFORM set_config('myapp.tenant', 'from-do', false); END$$"
# Statements of a multi-statement query that change nothing, but hide `;`
# and key words in strings, dollar quotes, quoted names and comments.
NOISE = [
    "SELECT $$ ; SET ROLE r1; $$",
    "SELECT $q$ ; RESET ALL ; $q$ AS hidden",
    "/* ; SET work_mem = '99MB' ; */ SELECT 1",
    "/* nested /* ; DISCARD ALL */ ; SET ROLE r1 */ SELECT 2",
    "SELECT 'a;b' -- ; SET ROLE r1\n",
    "SELECT E'it\\'s ; SET search_path = s1'",
    'SELECT 1 AS ";SET ROLE r1;"',
    "SELECT 'DISCARD ALL; RESET ROLE'",
]


def effect_sql(rng):
    """One statement of a multi-statement query that changes something."""
    r = rng.randrange(10)
    if r < 4:
        sql = set_sql(rng)
    elif r == 4:
        sql = rng.choice(ROLE_SQL)
    elif r == 5:
        sql = rng.choice(["RESET ALL", reset_one_sql(rng), "SET LOCAL work_mem = '2MB'"])
    elif r == 6:
        _, v = rng.choice(SETTINGS["myapp.tenant"])
        sql = "SELECT set_config('myapp.tenant', '{}', false)".format(v.replace("'", "''"))
    elif r == 7:
        sql = rng.choice(["SELECT 1/0", "DISCARD ALL", "DEALLOCATE ALL"])
    elif r == 8:
        sql = rng.choice(AUTH_SQL[:2])
    else:
        sql = OBSERVE
    # Sometimes behind a comment holding a `;`.
    return rng.choice(["", "", "/* x; y */ ", "-- c;\n"]) + sql


def multi_call(rng):
    parts = []
    for _ in range(rng.randint(2, 4)):
        parts.append(rng.choice(NOISE) if rng.random() < 0.35 else effect_sql(rng))
    wrap = rng.randrange(5)
    if wrap == 0:
        parts = ["BEGIN"] + parts + [rng.choice(["COMMIT", "ROLLBACK"])]
    elif wrap == 1:
        # Left open: the runner rolls back after the step.
        parts = ["BEGIN"] + parts
    return call("simple", "; ".join(parts))


def tx_calls(rng):
    calls = [call(any_how(rng), rng.choice(["BEGIN", "START TRANSACTION", "BEGIN ISOLATION LEVEL REPEATABLE READ"]))]
    savepoint = False
    for _ in range(rng.randint(1, 4)):
        r = rng.randrange(12)
        if r < 3:
            calls.append(call(any_how(rng), set_sql(rng, local=rng.random() < 0.4)))
        elif r == 3:
            calls.append(set_config_call(rng, local=rng.random() < 0.5))
        elif r == 4:
            calls.append(call(any_how(rng), rng.choice(ROLE_SQL + ["SET LOCAL ROLE r1"])))
        elif r == 5:
            calls.append(call(any_how(rng), rng.choice(["RESET ALL", reset_one_sql(rng)])))
        elif r == 6:
            calls.append(call(any_how(rng), "SELECT 1/0"))
        elif r == 7:
            calls.append(call(any_how(rng), OBSERVE))
        elif r == 8 or (r == 9 and not savepoint):
            calls.append(call(any_how(rng), "SAVEPOINT sp"))
            savepoint = True
        elif r == 9:
            calls.append(call(any_how(rng), rng.choice(["ROLLBACK TO SAVEPOINT sp", "RELEASE SAVEPOINT sp"])))
            savepoint = False
        elif r == 10:
            # 25001 inside a transaction block; DEALLOCATE ALL runs.
            calls.append(call(any_how(rng), rng.choice(["DISCARD ALL", "DEALLOCATE ALL"])))
        else:
            calls.append(call(any_how(rng), rng.choice(AUTH_SQL[:2])))
    calls.append(call(any_how(rng), rng.choice(["COMMIT", "COMMIT", "ROLLBACK", "END"])))
    return calls


def pipeline_call(rng):
    """Statements in one psycopg pipeline: one Sync at its end, so they
    are one implicit transaction, and an error undoes them all. The error
    (`SELECT 1/0`) is only ever the last statement: psycopg raises an error
    as soon as it has read it, maybe before it sent the statements after
    it, so what it sent and what each cursor holds would depend on timing.
    """
    stmts = []
    for _ in range(rng.randint(1, 4)):
        r = rng.randrange(6)
        if r < 2:
            stmts.append((set_sql(rng), ()))
        elif r == 2:
            _, sql, params, _ = set_config_call(rng)
            stmts.append((sql, params))
        elif r == 3:
            stmts.append((OBSERVE, ()))
        elif r == 4:
            stmts.append((rng.choice(["RESET ALL", reset_one_sql(rng)]), ()))
        else:
            stmts.append((rng.choice(ROLE_SQL), ()))
    if rng.random() < 0.3:
        stmts.append(("SELECT 1/0", ()))
    return call("pipeline", tuple(stmts))


def make_program(seed, steps=STEPS, do_custom=False, pipelines=True):
    """(kinds of the three clients, [(client, [calls], fresh_first)]), from
    the seed only."""
    rng = random.Random(seed)
    kinds = [rng.choice(KINDS) for _ in range(3)]
    program = []
    for _ in range(steps):
        c = rng.randrange(3)
        kind = kinds[c]
        r = rng.randrange(100)
        if r < 16:
            calls = [call(any_how(rng), set_sql(rng))]
        elif r < 20:
            calls = [call(any_how(rng), reset_one_sql(rng))]
        elif r < 27:
            calls = [call(any_how(rng), rng.choice(ROLE_SQL))]
        elif r < 32:
            calls = [call(any_how(rng), "RESET ALL")]
        elif r < 36:
            calls = [call(any_how(rng), rng.choice(AUTH_SQL))]
        elif r < 46:
            calls = [set_config_call(rng)]
        elif r < 50:
            calls = [call(any_how(rng), "DISCARD ALL")]
        elif r < 54:
            calls = [call(any_how(rng), "DEALLOCATE ALL")]
        elif r < 56:
            calls = [call(any_how(rng), rng.choice(DO_SQL + ([DO_CUSTOM_SQL] if do_custom else [])))]
        elif r < 58 and kind == "asyncpg":
            calls = [call("reset", "<asyncpg Connection.reset()>")]
        elif r < 62 and kind != "asyncpg" and pipelines:
            calls = [pipeline_call(rng)]
        elif r < 72:
            calls = tx_calls(rng)
        elif r < 84:
            calls = [multi_call(rng)]
        else:
            # An earlier parameterised (or cached) statement of this client
            # again, so it runs from the driver's cache; other values.
            earlier = [
                x
                for cc, cs, _ in program
                if cc == c
                for x in cs
                if x[0] == "cached" and (x[2] or rng.random() < 0.3)
            ]
            if earlier:
                how, sql, _, choices = rng.choice(earlier)
                params = rng.choice(choices) if choices else ()
                calls = [call(how, sql, params, choices)]
            else:
                calls = [set_config_call(rng)]
        # Where the new client looks: before or after the three clients.
        fresh_first = rng.random() < 0.5
        program.append((c, calls, fresh_first))
    return kinds, program


def show_program(kinds, program):
    lines = [f"  clients: " + ", ".join(f"c{i} {k}" for i, k in enumerate(kinds))]
    for i, (c, calls, fresh_first) in enumerate(program):
        for j, (how, sql, params, _) in enumerate(calls):
            head = f"  step {i:2} c{c}" if j == 0 else " " * (len(f"  step {i:2} c{c}"))
            if how == "pipeline":
                sql = "; ".join(q + (f" {list(p)!r}" if p else "") for q, p in sql)
            p = f" {list(params)!r}" if params else ""
            lines.append(f"{head} [{how}] {sql!r}{p}")
    return "\n".join(lines)


# --- the clients ----------------------------------------------------------


class Client:
    def __init__(self, kind):
        self.kind = kind
        self.conn = None

    async def connect(self, dsn, tz):
        """Connects with the startup parameters `client_encoding='utf-8'`
        (quotes included) and `timezone=tz`, in that order, whatever the
        driver: pgcell gives a client only backends of its exact startup
        parameters, so asyncpg and psycopg clients share the one backend.
        asyncpg always sends its `client_encoding` first, then
        `server_settings`; libpq sends `application_name` (so none here)
        before `client_encoding`, then `timezone` from PGTZ (set by
        `run_program`)."""
        if self.kind == "asyncpg":
            self.conn = await asyncpg.connect(
                dsn, timeout=CALL_TIMEOUT, server_settings={"timezone": tz}
            )
        else:
            assert os.environ.get("PGTZ") == tz
            self.conn = await psycopg.AsyncConnection.connect(
                dsn,
                connect_timeout=int(CALL_TIMEOUT),
                client_encoding="'utf-8'",
                autocommit=True,
                prepare_threshold=0 if self.kind == "psycopg pt=0" else 5,
            )

    async def run(self, how, sql, params):
        try:
            return await self._run(how, sql, params)
        except asyncpg.exceptions.InvalidSQLStatementNameError:
            # After a DISCARD ALL or DEALLOCATE ALL asyncpg's cache names
            # statements the server no longer has: 26000 each time. Drop
            # the cache (as reset_type_codec and the like do) so the next
            # call prepares again; the 26000 itself is the observation.
            self.conn._drop_local_statement_cache()
            raise

    async def _run(self, how, sql, params):
        conn = self.conn
        if self.kind == "asyncpg":
            if how == "reset":
                await conn.reset()
                return "reset"
            if how == "simple":
                assert not params
                return await conn.execute(sql)
            return [tuple(r) for r in await conn.fetch(sql, *params)]
        if how == "reset":
            raise AssertionError("reset is asyncpg's")
        if how == "pipeline":
            return await self._pipeline(sql)
        if params:
            sql = sql.replace("$1", "%s").replace("$2", "%s")
        cur = await conn.execute(
            sql, params or None, prepare=False if how == "simple" else None
        )
        out = []
        if cur.pgresult is not None:
            while True:
                rows = await cur.fetchall() if cur.description else None
                out.append((cur.statusmessage, rows))
                if not cur.nextset():
                    break
        return out

    async def _pipeline(self, stmts):
        conn = self.conn
        curs, out = [], []
        try:
            async with conn.pipeline():
                for sql, params in stmts:
                    if params:
                        sql = sql.replace("$1", "%s").replace("$2", "%s")
                    curs.append(await conn.execute(sql, params or None))
        except Exception as e:  # noqa: BLE001 -- the error is the observation
            out.append(describe(e))
        for cur in curs:
            try:
                rows = await cur.fetchall() if cur.description else None
                out.append((cur.statusmessage, rows))
            except Exception as e:  # noqa: BLE001
                out.append(describe(e))
        return out

    def in_transaction(self):
        if self.kind == "asyncpg":
            return self.conn.is_in_transaction()
        return self.conn.info.transaction_status != TransactionStatus.IDLE

    def reported(self):
        if self.kind == "asyncpg":
            s = self.conn.get_settings()
            return tuple(getattr(s, n, None) for n in REPORTED)
        return tuple(self.conn.info.parameter_status(n) for n in REPORTED)

    async def observe(self):
        try:
            rows = await self._run("cached", OBSERVE, ())
        except asyncpg.exceptions.InvalidSQLStatementNameError as e:
            # Its cached statement was discarded (see `run`): record that,
            # then read with a new one.
            self.conn._drop_local_statement_cache()
            first = describe(e)
            rows = await self._run("cached", OBSERVE, ())
            return (first, row_of(rows), self.reported())
        return (row_of(rows), self.reported())

    async def close(self):
        if self.conn is not None:
            try:
                await asyncio.wait_for(self.conn.close(), CALL_TIMEOUT)
            except Exception:  # noqa: BLE001 -- a close that fails shows elsewhere
                pass


def row_of(rows):
    """The OBSERVE row out of either driver's answer."""
    if rows and isinstance(rows[0], tuple) and len(rows[0]) == 2 and isinstance(rows[0][1], list):
        rows = rows[0][1]  # psycopg: [(status, rows)]
    return tuple(rows[0]) if rows else None


class Abort(Exception):
    pass


class Run:
    """The observations of one run of a program, in order, labelled."""

    def __init__(self):
        self.items = []
        self.fresh = []  # (label, row) of every new client
        self.initial = []  # (label, row) of the three clients before step 0

    def add(self, label, value):
        self.items.append((label, value))

    async def do(self, label, aw):
        try:
            value = await asyncio.wait_for(aw, CALL_TIMEOUT)
        except asyncio.TimeoutError:
            self.add(label, "<timeout>")
            raise Abort() from None
        except Exception as e:  # noqa: BLE001 -- the error is the observation
            self.add(label, describe(e))
            return e
        self.add(label, repr(value))
        return value

    def lines(self):
        return [f"{label}: {value}" for label, value in self.items]


async def observe_all(run, clients, label):
    for k, cl in enumerate(clients):
        value = await run.do(f"{label} c{k} sees", cl.observe())
        if label == "start" and isinstance(value, tuple):
            run.initial.append((f"start c{k}", value[0]))


async def observe_fresh(run, dsn, tz, kind, label):
    cl = Client(kind)
    try:
        if isinstance(await run.do(f"{label} new {kind} connects", cl.connect(dsn, tz)), Exception):
            return
        value = await run.do(f"{label} new {kind} sees", cl.observe())
        if isinstance(value, tuple):
            run.fresh.append((f"{label} new {kind}", value[0]))
    finally:
        await cl.close()


def startup_tz(tag):
    """A POSIX time zone (UTC, named after `tag`) as the startup `timezone`
    of one run: each seed (and each shrinking try) has a startup profile of
    its own, so it starts on a fresh backend and leftovers of one seed
    cannot show up in the next; both sides of a seed use the same."""
    return f"PG{tag.upper()}+0"


def letters(n):
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = chr(ord("a") + r) + out
        if n == 0:
            return out


async def run_program(dsn, tz, kinds, program):
    run = Run()
    clients = [Client(k) for k in kinds]
    os.environ["PGTZ"] = tz
    try:
        for k, cl in enumerate(clients):
            if isinstance(await run.do(f"c{k} connects", cl.connect(dsn, tz)), Exception):
                return run
        await observe_all(run, clients, "start")
        for i, (c, calls, fresh_first) in enumerate(program):
            cl = clients[c]
            for j, (how, sql, params, _) in enumerate(calls):
                await run.do(f"step {i} c{c}.{j}", cl.run(how, sql, params))
            if cl.in_transaction():
                # A multi-statement query that began a transaction and did
                # not end it (or a failure to end one): end it, or the
                # others would wait for the one backend.
                await run.do(f"step {i} c{c} left in a transaction: ROLLBACK", cl.run("simple", "ROLLBACK", ()))
            if fresh_first:
                await observe_fresh(run, dsn, tz, kinds[c], f"step {i}")
            await observe_all(run, clients, f"step {i}")
            if not fresh_first:
                await observe_fresh(run, dsn, tz, kinds[c], f"step {i}")
    except Abort:
        run.add("the run", "stopped after a timeout")
    except Exception as e:  # noqa: BLE001 -- recorded, then compared
        run.add("the run itself", describe(e))
    finally:
        for cl in clients:
            await cl.close()
    return run


def direct_problems(run):
    """PostgreSQL's documented answer: a new connection sees the defaults,
    which are what each client saw before its first step."""
    problems = []
    if not run.initial:
        return ["no client observed its session before the first step"]
    defaults = run.initial[0][1]
    for label, row in run.initial + run.fresh:
        if row != defaults:
            problems.append(f"{label} sees {row!r}, not the defaults {defaults!r}")
    if len(run.fresh) == 0:
        problems.append("no new client observed anything")
    return problems


def side_by_side(direct, pgcell):
    width = min(max([len(s) for s in direct] + [len("direct")]), 110)
    rows = [f"    {'direct':<{width}} | through pgcell"]
    for i in range(max(len(direct), len(pgcell))):
        d = direct[i] if i < len(direct) else ""
        p = pgcell[i] if i < len(pgcell) else ""
        mark = "  " if d == p else "!!"
        rows.append(f" {mark} {d:<{width}} | {p}")
    return "\n".join(rows)


async def compare(direct_dsn, pgcell_dsn, tag, kinds, program):
    tz = startup_tz(tag)
    direct = await run_program(direct_dsn, tz, kinds, program)
    through = await run_program(pgcell_dsn, tz, kinds, program)
    return direct, through


def first_difference_step(direct, through):
    """The step of the first differing line, or None."""
    for (ld, vd), (lp, vp) in zip(direct.items, through.items):
        if (ld, vd) != (lp, vp):
            for label in (ld, lp):
                if label.startswith("step "):
                    return int(label.split()[1])
            return None
    return None


async def shrink(direct_dsn, pgcell_dsn, seed, kinds, program, differs_at):
    """Fewer steps that still differ: cut after the first differing step,
    then drop steps one at a time (each try on fresh backends)."""
    tries = 0

    async def differs(prog):
        nonlocal tries
        tries += 1
        d, t = await compare(direct_dsn, pgcell_dsn, f"t{letters(seed)}x{letters(tries)}", kinds, prog)
        return d.lines() != t.lines()

    if differs_at is not None:
        cut = program[: differs_at + 1]
        if await differs(cut):
            program = cut
    i = len(program) - 1
    while i >= 0:
        candidate = program[:i] + program[i + 1 :]
        if candidate and await differs(candidate):
            program = candidate
        i -= 1
    return program


def parse_seeds(spec):
    if "-" in spec:
        a, b = spec.split("-", 1)
        return list(range(int(a), int(b) + 1))
    if "," in spec:
        return [int(s) for s in spec.split(",") if s]
    return list(range(int(spec)))


async def main(argv):
    shrink_on = "--shrink" in argv
    do_custom = "--do-custom" in argv
    pipelines = "--no-pipeline" not in argv
    args = [a for a in argv if not a.startswith("--")]
    direct_dsn, pgcell_dsn = args[0], args[1]
    seeds = parse_seeds(args[2] if len(args) > 2 else "12")
    print(
        f"asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__}, "
        f"libpq {psycopg.pq.version()} ({psycopg.pq.__impl__}); "
        f"seeds {seeds[0]}..{seeds[-1]} ({len(seeds)})"
    )
    failed = []
    for seed in seeds:
        kinds, program = make_program(seed, do_custom=do_custom, pipelines=pipelines)
        direct, through = await compare(direct_dsn, pgcell_dsn, f"s{letters(seed)}", kinds, program)
        problems = direct_problems(direct)
        same = direct.lines() == through.lines()
        if same and not problems:
            print(f"ok    seed {seed} ({', '.join(kinds)}; {len(direct.items)} observations)")
            continue
        failed.append(seed)
        print(f"FAIL  seed {seed}")
        print("  the program:")
        print(show_program(kinds, program))
        for p in problems:
            print(f"  the direct run is not PostgreSQL's documented answer: {p}")
        if not same:
            print(side_by_side(direct.lines(), through.lines()))
            if shrink_on:
                small = await shrink(
                    direct_dsn, pgcell_dsn, seed, kinds, program,
                    first_difference_step(direct, through),
                )
                d, t = await compare(direct_dsn, pgcell_dsn, f"u{letters(seed)}", kinds, small)
                print(f"  a shorter program that differs ({len(small)} steps):")
                print(show_program(kinds, small))
                print(side_by_side(d.lines(), t.lines()))
            else:
                flags = " ".join(a for a in argv if a.startswith("--"))
                print(f"  (run this script with SEEDS {seed}-{seed} {flags} --shrink for a shorter program)")
        else:
            print("\n".join("    " + s for s in direct.lines()))
    if failed:
        print(f"\n{len(failed)} of {len(seeds)} seed(s) differ: {failed}", file=sys.stderr)
        sys.exit(1)
    print(f"isolation_random: ok, {len(seeds)} seeds")


if __name__ == "__main__":
    try:
        asyncio.run(main(sys.argv[1:]))
    except SystemExit:
        raise
    except Exception as e:  # noqa: BLE001
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
