"""psycopg 3 through a pgcell transaction pool smaller than its client count.

Usage: psycopg_check.py DSN DSN_ONE_BACKEND [CONNECTIONS]

`prepare_threshold=0` makes psycopg prepare every statement server-side
under its own names (`_pg3_N`), which must survive the connection being
moved between backends. DSN_ONE_BACKEND is a pool of size 1, where every
client shares one backend, for the checks that need that for certain.
Exits non-zero on any failure.
"""

import asyncio
import os
import sys

import psycopg
from psycopg import errors

DSN = sys.argv[1]
DSN_ONE = sys.argv[2]
CONNECTIONS = int(sys.argv[3]) if len(sys.argv) > 3 else 8
ROUNDS = 40
DEADLINE = 50.0
STAGE = {}


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def connect(dsn, **kw):
    return await psycopg.AsyncConnection.connect(
        dsn, prepare_threshold=0, connect_timeout=10, **kw
    )


async def setup():
    async with await connect(DSN, autocommit=True) as conn:
        await conn.execute("drop table if exists pg3_items")
        await conn.execute("create table pg3_items (w int not null, i int not null, note text)")


async def worker(w, pids):
    conn = await connect(DSN, autocommit=True)
    if w % 2:
        # psycopg closes statements evicted from its cache (protocol Close
        # with libpq >= 17).
        conn.prepared_max = 3
    try:
        STAGE[w] = "1 prepared statements"
        for i in range(ROUNDS):
            cur = await conn.execute("select %s::int + %s::int, pg_backend_pid()", (i, w))
            s, pid = await cur.fetchone()
            check(s == i + w, f"w{w}: sum {s}")
            pids.add((w, pid))
            n = i % 6
            cur = await conn.execute(f"select %s::int * {n + 1}", (i,))
            check((await cur.fetchone())[0] == i * (n + 1), f"w{w}: mult")
            await asyncio.sleep(0)

        STAGE[w] = "2 executemany"
        async with conn.cursor() as cur:
            await cur.executemany(
                "insert into pg3_items (w, i, note) values (%s, %s, %s)",
                [(w, i, f"n{i}") for i in range(100)],
            )
            await cur.execute("select count(*) from pg3_items where w = %s", (w,))
            check((await cur.fetchone())[0] == 100, f"w{w}: executemany count")

        STAGE[w] = "3 pipeline"
        async with conn.pipeline():
            curs = []
            for i in range(10):
                c = conn.cursor()
                await c.execute("select %s::int * 3, pg_backend_pid()", (i,))
                curs.append(c)
        for i, c in enumerate(curs):
            v, pid = await c.fetchone()
            check(v == 3 * i, f"w{w}: pipeline {v}")
            pids.add((w, pid))

        STAGE[w] = "4 transaction block"
        async with conn.transaction():
            cur = await conn.execute("select pg_backend_pid()")
            tx_pid = (await cur.fetchone())[0]
            for i in range(100, 110):
                await conn.execute("insert into pg3_items (w, i) values (%s, %s)", (w, i))
                cur = await conn.execute("select pg_backend_pid()")
                check((await cur.fetchone())[0] == tx_pid, f"w{w}: backend changed in a transaction")
        cur = await conn.execute("select count(*) from pg3_items where w = %s", (w,))
        check((await cur.fetchone())[0] == 110, f"w{w}: committed count")

        # psycopg follows the ROLLBACK with DEALLOCATE ALL.
        STAGE[w] = "5 error inside a transaction, then more queries"
        try:
            async with conn.transaction():
                await conn.execute("insert into pg3_items (w, i) values (%s, %s)", (w, 999))
                await conn.execute("select 1 / %s::int", (0,))
            raise AssertionError(f"w{w}: division by zero did not fail")
        except errors.DivisionByZero:
            pass
        for i in range(ROUNDS):
            cur = await conn.execute("select %s::int + %s::int, pg_backend_pid()", (i, 1))
            s, pid = await cur.fetchone()
            check(s == i + 1, f"w{w}: after error {s}")
            pids.add((w, pid))
            await asyncio.sleep(0)
        cur = await conn.execute("select count(*) from pg3_items where w = %s", (w,))
        check((await cur.fetchone())[0] == 110, f"w{w}: rolled-back insert visible")
    finally:
        await conn.close()

    STAGE[w] = "6 implicit transactions, commit and rollback"
    async with await connect(DSN) as conn:
        for i in range(10):
            await conn.execute("insert into pg3_items (w, i) values (%s, %s)", (w, 200 + i))
            if i % 2:
                await conn.commit()
            else:
                await conn.rollback()
            cur = await conn.execute("select %s::int", (i,))
            check((await cur.fetchone())[0] == i, f"w{w}: after commit/rollback")
            await conn.commit()
        cur = await conn.execute("select count(*) from pg3_items where w = %s and i >= 200", (w,))
        check((await cur.fetchone())[0] == 5, f"w{w}: commit/rollback count")
        await conn.commit()


async def one_backend():
    """Two clients on one backend: one's rollback (and so psycopg's
    DEALLOCATE ALL) must not take the other's statements away."""
    b = await connect(DSN_ONE, autocommit=True)
    a = await connect(DSN_ONE, autocommit=True)
    try:
        cur = await b.execute("select %s::int + 1", (1,))
        check((await cur.fetchone())[0] == 2, "one: first run")
        cur = await a.execute("select %s::int + 2", (1,))
        check((await cur.fetchone())[0] == 3, "one: a")
        try:
            async with a.transaction():
                await a.execute("select 1 / %s::int", (0,))
        except errors.DivisionByZero:
            pass
        for i in range(5):
            cur = await b.execute("select %s::int + 1", (i,))
            check((await cur.fetchone())[0] == i + 1, "one: b after a's rollback")
            cur = await a.execute("select %s::int + 2", (i,))
            check((await cur.fetchone())[0] == i + 2, "one: a after its rollback")
    finally:
        await a.close()
        await b.close()


async def main():
    print(f"psycopg {psycopg.__version__}, libpq {psycopg.pq.version()} ({psycopg.pq.__impl__})")
    await asyncio.wait_for(setup(), 20)
    pids = set()
    results = await asyncio.wait_for(
        asyncio.gather(*(worker(w, pids) for w in range(CONNECTIONS)), return_exceptions=True),
        DEADLINE,
    )
    failed = [(f"worker {w} (stage {STAGE.get(w)})", r) for w, r in enumerate(results) if isinstance(r, BaseException)]
    try:
        await asyncio.wait_for(one_backend(), 20)
    except BaseException as e:  # noqa: BLE001
        failed.append(("one backend", e))
    for who, r in failed:
        print(f"{who} failed: {type(r).__name__}: {r}", file=sys.stderr)
    backends = {pid for _, pid in pids}
    switched = sum(1 for w in range(CONNECTIONS) if len({p for x, p in pids if x == w}) > 1)
    print(f"psycopg: {CONNECTIONS} connections, {len(backends)} backends, "
          f"{switched} connections moved between backends")
    if failed:
        sys.exit(1)
    # Run against PostgreSQL itself first (the baseline: what the script
    # checks is PostgreSQL's behaviour), where no connection can move.
    if os.environ.get("PGCELL_DRIVER_BASELINE") != "1":
        check(switched > 0, "no connection ever changed backend: the test proved nothing")
    print("psycopg: ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
