"""asyncpg through a pgcell transaction pool smaller than its client count.

Usage: asyncpg_check.py DSN [CONNECTIONS]

Every connection keeps asyncpg's default statement cache, so each query is
a named prepared statement (`__asyncpg_stmt_N__`) that must survive the
connection being moved between backends. Exits non-zero on any failure.
"""

import asyncio
import os
import sys

import asyncpg

DSN = sys.argv[1]
CONNECTIONS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
ROUNDS = 40
DEADLINE = 50.0


def check(cond, what):
    if not cond:
        raise AssertionError(what)


async def setup():
    conn = await asyncpg.connect(DSN, timeout=10)
    await conn.execute("drop table if exists apg_items")
    await conn.execute(
        "create table apg_items (w int not null, i int not null, note text)"
    )
    await conn.execute("drop type if exists apg_mood")
    await conn.execute("create type apg_mood as enum ('sad', 'ok', 'happy')")
    await conn.close()


async def worker(w, pids):
    # A small cache on some connections makes asyncpg close evicted
    # statements (protocol Close) while others keep all of theirs.
    # statement_cache_size=0 (the setting advised for PgBouncer) makes
    # asyncpg parse unnamed statements in one round trip and bind them in
    # the next, which may run on another backend.
    cache = 0 if w % 3 == 0 else (4 if w % 2 else 100)
    conn = await asyncpg.connect(DSN, timeout=10, statement_cache_size=cache)
    try:
        # 1. The statement cache: the same texts again and again.
        for i in range(ROUNDS):
            row = await conn.fetchrow("select $1::int + $2::int as s, pg_backend_pid() as pid", i, w)
            check(row["s"] == i + w, f"w{w}: sum {row['s']} != {i + w}")
            pids.add((w, row["pid"]))
            v = await conn.fetchval("select $1::text || '-' || $2::text", f"w{w}", str(i))
            check(v == f"w{w}-{i}", f"w{w}: concat {v!r}")
            # Several distinct texts, more than the small cache holds.
            n = i % 7
            v = await conn.fetchval(f"select $1::int * {n + 1}", i)
            check(v == i * (n + 1), f"w{w}: mult {v}")
            await asyncio.sleep(0)

        # 2. An explicit prepared statement used many times.
        stmt = await conn.prepare("select $1::int * 2 as v, $2::text as t, pg_backend_pid() as pid")
        for i in range(ROUNDS):
            rows = await stmt.fetch(i, str(i))
            check(len(rows) == 1 and rows[0]["v"] == 2 * i and rows[0]["t"] == str(i),
                  f"w{w}: prepared fetch {rows}")
            pids.add((w, rows[0]["pid"]))
            check(await stmt.fetchval(i, "x") == 2 * i, f"w{w}: prepared fetchval")
            await asyncio.sleep(0)
        series = await conn.prepare("select g from generate_series(1, $1::int) g")
        check([r["g"] for r in await series.fetch(5)] == [1, 2, 3, 4, 5], f"w{w}: series")

        # 3. A user-defined type: asyncpg introspects it with its own
        # prepared statements.
        mood = await conn.fetchval("select $1::apg_mood", "happy")
        check(mood == "happy", f"w{w}: enum {mood!r}")
        moods = await conn.fetchval("select $1::apg_mood[]", ["sad", "ok"])
        check(moods == ["sad", "ok"], f"w{w}: enum array {moods!r}")

        # 4. executemany (pipelined Bind/Execute, one Sync).
        await conn.executemany(
            "insert into apg_items (w, i, note) values ($1, $2, $3)",
            [(w, i, f"n{i}") for i in range(100)],
        )
        count = await conn.fetchval("select count(*) from apg_items where w = $1", w)
        check(count == 100, f"w{w}: executemany count {count}")

        # 5. A transaction block: one backend throughout.
        async with conn.transaction():
            tx_pid = await conn.fetchval("select pg_backend_pid()")
            for i in range(100, 110):
                await conn.execute("insert into apg_items (w, i) values ($1, $2)", w, i)
                check(await conn.fetchval("select pg_backend_pid()") == tx_pid,
                      f"w{w}: backend changed inside a transaction")
            rows = await stmt.fetch(7, "tx")
            check(rows[0]["v"] == 14 and rows[0]["pid"] == tx_pid, f"w{w}: stmt in tx")
            # A cursor (named portal, fetched in chunks) inside it.
            got = [r["g"] async for r in conn.cursor("select g from generate_series(1, $1::int) g", 250, prefetch=50)]
            check(got == list(range(1, 251)), f"w{w}: cursor")
        count = await conn.fetchval("select count(*) from apg_items where w = $1", w)
        check(count == 110, f"w{w}: committed count {count}")

        # 6. An error inside a transaction, then more queries.
        try:
            async with conn.transaction():
                await conn.execute("insert into apg_items (w, i) values ($1, $2)", w, 999)
                await conn.fetchval("select 1 / $1::int", 0)
            raise AssertionError(f"w{w}: division by zero did not fail")
        except asyncpg.DivisionByZeroError:
            pass
        count = await conn.fetchval("select count(*) from apg_items where w = $1", w)
        check(count == 110, f"w{w}: rolled-back insert visible ({count})")

        # The same by hand: the failed transaction refuses statements until
        # the rollback.
        tr = conn.transaction()
        await tr.start()
        try:
            await stmt.fetch(1, "a")
            try:
                await conn.fetchval("select 1 / $1::int", 0)
                raise AssertionError(f"w{w}: division by zero did not fail")
            except asyncpg.DivisionByZeroError:
                pass
            try:
                await stmt.fetch(2, "b")
                raise AssertionError(f"w{w}: statement ran in a failed transaction")
            except asyncpg.InFailedSQLTransactionError:
                pass
        finally:
            await tr.rollback()
        check(conn.is_in_transaction() is False, f"w{w}: still in a transaction")

        # 7. An error outside a transaction from a prepared statement.
        div = await conn.prepare("select 10 / $1::int")
        for d in (5, 0, 2, 0, 1):
            try:
                v = await div.fetchval(d)
                check(d != 0 and v == 10 // d, f"w{w}: div {d} -> {v}")
            except asyncpg.DivisionByZeroError:
                check(d == 0, f"w{w}: unexpected division error for {d}")

        # 8. Everything still works after the errors.
        for i in range(ROUNDS):
            rows = await stmt.fetch(i, "after")
            check(rows[0]["v"] == 2 * i, f"w{w}: after errors {rows}")
            pids.add((w, rows[0]["pid"]))
            v = await conn.fetchval("select $1::int + $2::int", i, 1)
            check(v == i + 1, f"w{w}: cached after errors {v}")
            await asyncio.sleep(0)
    finally:
        await conn.close(timeout=10)


async def main():
    await asyncio.wait_for(setup(), 20)
    pids = set()
    results = await asyncio.wait_for(
        asyncio.gather(*(worker(w, pids) for w in range(CONNECTIONS)), return_exceptions=True),
        DEADLINE,
    )
    failed = [(w, r) for w, r in enumerate(results) if isinstance(r, BaseException)]
    for w, r in failed:
        print(f"worker {w} failed: {type(r).__name__}: {r}", file=sys.stderr)
    backends = {pid for _, pid in pids}
    switched = sum(1 for w in range(CONNECTIONS) if len({p for x, p in pids if x == w}) > 1)
    print(f"asyncpg {asyncpg.__version__}: {CONNECTIONS} connections, "
          f"{len(backends)} backends, {switched} connections moved between backends")
    if failed:
        sys.exit(1)
    # Run against PostgreSQL itself first (the baseline: what the script
    # checks is PostgreSQL's behaviour), where no connection can move.
    if os.environ.get("PGCELL_DRIVER_BASELINE") != "1":
        check(switched > 0, "no connection ever changed backend: the test proved nothing")
    conn = await asyncpg.connect(DSN, timeout=10)
    total = await conn.fetchval("select count(*) from apg_items")
    await conn.close()
    check(total == 110 * CONNECTIONS, f"total rows {total}")
    print("asyncpg: ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # noqa: BLE001
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
