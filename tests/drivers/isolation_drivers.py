"""Client state through a pgcell transaction pool of ONE backend, compared
with PostgreSQL itself, with real drivers.

Usage: isolation_drivers.py DIRECT_DSN PGCELL_DSN

PGCELL_DSN must name a transaction pool of one backend, so consecutive
clients of one startup profile share that backend. Role `r1` must exist and
be granted to the login user. Each scenario runs on DIRECT_DSN, then on
PGCELL_DSN, and records what its clients see as a list of observations; the
two lists must be equal. The direct list is also checked against what
PostgreSQL documents (so a scenario cannot pass by failing the same way on
both sides); pgcell's answers are never written down, only compared.

Every scenario (and every variant of one) connects with an
`application_name` of its own: pgcell gives a client only backends of its
startup profile, so each variant starts on a fresh backend, and leftovers of
one variant cannot show up in the next; the clients of one variant share
the profile, hence the one backend. Observing clients are always new
connections. Exits non-zero, printing both lists, when they differ.
"""

import asyncio
import sys

import asyncpg
import psycopg

DIRECT = sys.argv[1]
PGCELL = sys.argv[2]
# Each step (connect, query) gets this long; a hang shows as `<timeout>`.
STEP_TIMEOUT = 10.0


def describe(e):
    """An exception as an observation: its SQLSTATE when it has one."""
    state = getattr(e, "sqlstate", None)
    if state:
        return f"error {state} ({type(e).__name__})"
    return f"error {type(e).__name__}: {e}"


class Log:
    """The observations of one scenario run, in order, labelled."""

    def __init__(self):
        self.items = []

    def add(self, label, value):
        assert label not in dict(self.items), f"label {label!r} used twice"
        self.items.append((label, value))

    async def step(self, label, aw, quiet=False):
        """Awaits `aw`, recording its value (just "ok" when `quiet`: a
        connection, a prepared statement), its error or a timeout."""
        try:
            value = await asyncio.wait_for(aw, STEP_TIMEOUT)
        except asyncio.TimeoutError:
            self.add(label, "<timeout>")
            return None
        except Exception as e:  # noqa: BLE001 -- the error is the observation
            self.add(label, describe(e))
            return None
        self.add(label, "ok" if quiet else repr(value))
        return value

    def lines(self):
        return [f"{label}: {value}" for label, value in self.items]

    def get(self, label):
        return dict(self.items).get(label)


# --- connections ----------------------------------------------------------


async def apg(dsn, app):
    return await asyncpg.connect(
        dsn, timeout=STEP_TIMEOUT, server_settings={"application_name": app}
    )


async def pg3(dsn, app, **kw):
    return await psycopg.AsyncConnection.connect(
        dsn, connect_timeout=int(STEP_TIMEOUT), application_name=app, **kw
    )


async def pg3_row(conn, sql, params=None):
    cur = await conn.execute(sql, params)
    row = await cur.fetchone()
    return tuple(row) if row is not None else None


async def pg3_row_none(conn, sql):
    """Runs a statement that returns no rows; its status message."""
    cur = await conn.execute(sql)
    return cur.statusmessage


async def close(conn):
    if conn is None:
        return
    try:
        await asyncio.wait_for(conn.close(), STEP_TIMEOUT)
    except Exception:  # noqa: BLE001 -- a close that fails shows elsewhere
        pass


# --- 1. psycopg 3, prepare_threshold=0: SET ROLE, then a new client --------


async def s1_set_role(dsn, log, app, autocommit):
    """A sets role r1 (a named prepared statement, since
    prepare_threshold=0) and leaves; a new client asks who it is."""
    a = await log.step(
        "A connects",
        pg3(dsn, app, prepare_threshold=0, autocommit=autocommit),
        quiet=True,
    )
    if a is None:
        return
    try:
        await log.step("A: SET ROLE r1", pg3_row_none(a, "SET ROLE r1"))
        if not autocommit:
            await log.step("A: commit", a.commit())
        await log.step(
            "A: current_user, session_user",
            pg3_row(a, "select current_user::text, session_user::text"),
        )
        if not autocommit:
            await log.step("A: commit after read", a.commit())
    finally:
        await close(a)
    b = await log.step("B connects", pg3(dsn, app, autocommit=True), quiet=True)
    try:
        if b is not None:
            await log.step(
                "B: current_user, session_user",
                pg3_row(b, "select current_user::text, session_user::text"),
            )
    finally:
        await close(b)


def s1_check(log):
    return [
        expect(log, "A: current_user, session_user", repr(("r1", "app"))),
        expect(log, "B: current_user, session_user", repr(("app", "app"))),
    ]


# --- 2. asyncpg: a SET prepared once, run again from the statement cache ----

S2_SETTINGS = [
    # (name, the SET, how to read it, its value after the SET)
    ("work_mem", "SET work_mem = '77MB'", "show work_mem", "77MB"),
    (
        "search_path",
        "SET search_path = leak_schema, public",
        "show search_path",
        "leak_schema, public",
    ),
    ("role", "SET ROLE r1", "select current_user::text", "r1"),
]


async def s2_own_steps(log, a, who, set_sql, read_sql):
    """A's SET through fetch() (Parse, then Bind/Execute), a reset by simple
    query, then the same fetch() again: Bind/Execute of the cached
    statement only. A reads the setting back after each step."""
    await log.step(f"{who}: fetch({set_sql!r})", a.fetch(set_sql))
    await log.step(f"{who}: {read_sql} after the SET", a.fetchval(read_sql))
    await log.step(f"{who}: execute('RESET ROLE; RESET ALL')", a.execute("RESET ROLE; RESET ALL"))
    await log.step(f"{who}: {read_sql} after the reset", a.fetchval(read_sql))
    await log.step(f"{who}: fetch({set_sql!r}) again (cached)", a.fetch(set_sql))
    await log.step(f"{who}: {read_sql} after the cached SET", a.fetchval(read_sql))


async def s2_after_leaving(dsn, log, app, setting):
    """A does its steps and disconnects; then a new client reads."""
    _, set_sql, read_sql, _ = setting
    a = await log.step("A connects", apg(dsn, app), quiet=True)
    if a is None:
        return
    try:
        await s2_own_steps(log, a, "A", set_sql, read_sql)
    finally:
        await close(a)
    b = await log.step("B connects after A left", apg(dsn, app), quiet=True)
    try:
        if b is not None:
            await log.step(f"B: {read_sql}", b.fetchval(read_sql))
    finally:
        await close(b)


async def s2_while_idle(dsn, log, app, setting):
    """A does its steps and stays connected, idle; a new client reads, then
    changes a setting of its own (so its transaction is reset) and leaves;
    then A reads its own setting again."""
    _, set_sql, read_sql, _ = setting
    a = await log.step("A connects", apg(dsn, app), quiet=True)
    if a is None:
        return
    try:
        await s2_own_steps(log, a, "A", set_sql, read_sql)
        b = await log.step("B connects while A is idle", apg(dsn, app), quiet=True)
        try:
            if b is not None:
                await log.step(f"B: {read_sql}", b.fetchval(read_sql))
                await log.step(
                    "B: execute(\"SET statement_timeout = '5s'\")",
                    b.execute("SET statement_timeout = '5s'"),
                )
        finally:
            await close(b)
        await log.step(f"A: {read_sql} after B left", a.fetchval(read_sql))
    finally:
        await close(a)


def s2_check(setting):
    name, _, read_sql, value = setting

    def check(log):
        problems = [
            expect(log, f"A: {read_sql} after the SET", repr(value)),
            expect(log, f"A: {read_sql} after the cached SET", repr(value)),
            differ(log, f"A: {read_sql} after the reset", repr(value)),
            differ(log, f"B: {read_sql}", repr(value)),
        ]
        if log.get(f"A: {read_sql} after B left") is not None:
            problems.append(expect(log, f"A: {read_sql} after B left", repr(value)))
        return problems

    return check


# --- 3. psycopg 3, prepare_threshold=5: set_config then read, 9 times -------


async def s3_set_config(dsn, log, app):
    """Past psycopg's prepare threshold both statements run as Bind/Execute
    of named statements: the set_config text is no longer on the wire."""
    a = await log.step("A connects", pg3(dsn, app, autocommit=True), quiet=True)
    if a is None:
        return
    try:
        for i in range(1, 10):
            await log.step(
                f"A: set_config #{i}",
                pg3_row(a, "SELECT set_config('myapp.tenant', %s, false)", (f"tenant-{i}",)),
            )
            await log.step(
                f"A: current_setting #{i}",
                pg3_row(a, "SELECT current_setting('myapp.tenant', true)"),
            )
        b = await log.step(
            "B connects while A is idle", pg3(dsn, app, autocommit=True), quiet=True
        )
        try:
            if b is not None:
                # nullif: a placeholder's name outlives a reset (pooling.md,
                # "Limits"); only its value must not cross clients.
                await log.step(
                    "B: myapp.tenant",
                    pg3_row(b, "SELECT nullif(current_setting('myapp.tenant', true), '')"),
                )
        finally:
            await close(b)
        await log.step(
            "A: current_setting after B",
            pg3_row(a, "SELECT current_setting('myapp.tenant', true)"),
        )
    finally:
        await close(a)
    c = await log.step("C connects after A left", pg3(dsn, app, autocommit=True), quiet=True)
    try:
        if c is not None:
            await log.step(
                "C: myapp.tenant",
                pg3_row(c, "SELECT nullif(current_setting('myapp.tenant', true), '')"),
            )
    finally:
        await close(c)


def s3_check(log):
    problems = []
    for i in range(1, 10):
        value = repr((f"tenant-{i}",))
        problems.append(expect(log, f"A: set_config #{i}", value))
        problems.append(expect(log, f"A: current_setting #{i}", value))
    problems.append(expect(log, "A: current_setting after B", repr(("tenant-9",))))
    problems.append(expect(log, "B: myapp.tenant", repr((None,))))
    problems.append(expect(log, "C: myapp.tenant", repr((None,))))
    return problems


# --- 4. asyncpg: a prepared statement after DISCARD ALL / DEALLOCATE ALL ----


async def s4_discard(dsn, log, app, variant):
    """`prepare()`, then the statement that drops every prepared statement,
    then the prepared statement again: PostgreSQL answers 26000."""
    a = await log.step("A connects", apg(dsn, app), quiet=True)
    if a is None:
        return
    try:
        st = await log.step(
            "A: prepare('SELECT $1::int*2')", a.prepare("SELECT $1::int*2"), quiet=True
        )
        if st is None:
            return
        if variant == "used before":
            await log.step("A: st.fetchval(1)", st.fetchval(1))
        if variant == "another query between":
            await log.step("A: fetchval('select 1')", a.fetchval("select 1"))
        if variant in ("DISCARD ALL", "used before", "another query between"):
            await log.step("A: execute('DISCARD ALL')", a.execute("DISCARD ALL"))
        elif variant == "DEALLOCATE ALL":
            await log.step("A: execute('DEALLOCATE ALL')", a.execute("DEALLOCATE ALL"))
        elif variant == "fetch DISCARD ALL":
            await log.step("A: fetch('DISCARD ALL')", a.fetch("DISCARD ALL"))
        elif variant == "fetch DEALLOCATE ALL":
            await log.step("A: fetch('DEALLOCATE ALL')", a.fetch("DEALLOCATE ALL"))
        elif variant == "DEALLOCATE ALL in a transaction":
            await log.step(
                "A: execute('DEALLOCATE ALL') in a transaction", in_tx(a, "DEALLOCATE ALL")
            )
        elif variant == "DEALLOCATE ALL and the statement in a transaction":
            await log.step(
                "A: DEALLOCATE ALL, st.fetchval(21) in a transaction",
                in_tx(a, "DEALLOCATE ALL", st),
            )
        else:
            raise AssertionError(variant)
        await log.step("A: st.fetchval(21)", st.fetchval(21))
    finally:
        await close(a)


async def in_tx(conn, sql, st=None):
    async with conn.transaction():
        await conn.execute(sql)
        if st is not None:
            return await st.fetchval(21)
    return "committed"


S4_VARIANTS = [
    "DISCARD ALL",
    "used before",
    "another query between",
    "fetch DISCARD ALL",
    "DEALLOCATE ALL",
    "fetch DEALLOCATE ALL",
    "DEALLOCATE ALL in a transaction",
    "DEALLOCATE ALL and the statement in a transaction",
]

INVALID_NAME = "error 26000 (InvalidSQLStatementNameError)"


def s4_check(variant):
    def check(log):
        problems = [expect(log, "A: st.fetchval(21)", INVALID_NAME)]
        if variant == "DEALLOCATE ALL and the statement in a transaction":
            problems.append(
                expect(log, "A: DEALLOCATE ALL, st.fetchval(21) in a transaction", INVALID_NAME)
            )
        if variant == "used before":
            problems.append(expect(log, "A: st.fetchval(1)", "2"))
        return problems

    return check


# --- the comparison -------------------------------------------------------


def expect(log, label, value):
    got = log.get(label)
    if got != value:
        return f"direct {label!r} is {got!r}, PostgreSQL's answer is {value!r}"
    return None


def differ(log, label, value):
    got = log.get(label)
    if got is None or got == value:
        return f"direct {label!r} is {got!r}, PostgreSQL's answer is not {value!r}"
    return None


def scenarios():
    """(name, run(dsn, log, app), check(direct log) -> problems)."""
    out = [
        (
            "1 psycopg prepare_threshold=0, autocommit: SET ROLE r1, then a new client",
            lambda dsn, log, app: s1_set_role(dsn, log, app, True),
            s1_check,
        ),
        (
            "1 psycopg prepare_threshold=0, committed: SET ROLE r1, then a new client",
            lambda dsn, log, app: s1_set_role(dsn, log, app, False),
            s1_check,
        ),
    ]
    for setting in S2_SETTINGS:
        out.append(
            (
                f"2 asyncpg cached {setting[0]} SET, then a new client after A left",
                lambda dsn, log, app, s=setting: s2_after_leaving(dsn, log, app, s),
                s2_check(setting),
            )
        )
        out.append(
            (
                f"2 asyncpg cached {setting[0]} SET, then a new client while A is idle",
                lambda dsn, log, app, s=setting: s2_while_idle(dsn, log, app, s),
                s2_check(setting),
            )
        )
    out.append(
        (
            "3 psycopg prepare_threshold=5: set_config and current_setting 9 times",
            s3_set_config,
            s3_check,
        )
    )
    for variant in S4_VARIANTS:
        out.append(
            (
                f"4 asyncpg prepare, {variant}, then the statement",
                lambda dsn, log, app, v=variant: s4_discard(dsn, log, app, v),
                s4_check(variant),
            )
        )
    return out


async def run(run_one, dsn, app):
    log = Log()
    try:
        await asyncio.wait_for(run_one(dsn, log, app), 20 * STEP_TIMEOUT)
    except Exception as e:  # noqa: BLE001 -- recorded, then compared
        log.add("the scenario itself", describe(e))
    return log


def side_by_side(direct, pgcell):
    width = max([len(s) for s in direct] + [len("direct")])
    rows = [f"    {'direct':<{width}} | through pgcell"]
    for i in range(max(len(direct), len(pgcell))):
        d = direct[i] if i < len(direct) else ""
        p = pgcell[i] if i < len(pgcell) else ""
        mark = "  " if d == p else "!!"
        rows.append(f" {mark} {d:<{width}} | {p}")
    return "\n".join(rows)


async def main():
    print(
        f"asyncpg {asyncpg.__version__}, psycopg {psycopg.__version__}, "
        f"libpq {psycopg.pq.version()} ({psycopg.pq.__impl__})"
    )
    failed = []
    for n, (name, run_one, check) in enumerate(scenarios()):
        app = f"isolation-{n}"
        direct = await run(run_one, DIRECT, app)
        through = await run(run_one, PGCELL, app)
        problems = [p for p in check(direct) if p]
        same = direct.lines() == through.lines()
        if same and not problems:
            print(f"ok    {name}")
            continue
        failed.append(name)
        print(f"FAIL  {name}")
        for p in problems:
            print(f"    the direct run is not PostgreSQL's documented answer: {p}")
        if not same:
            print(side_by_side(direct.lines(), through.lines()))
        else:
            print("\n".join("    " + s for s in direct.lines()))
    if failed:
        print(f"\n{len(failed)} scenario(s) differ:", file=sys.stderr)
        for name in failed:
            print(f"  {name}", file=sys.stderr)
        sys.exit(1)
    print("isolation: ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
