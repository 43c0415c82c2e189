"""psycopg 3's cancel_safe() over TLS, through pgcell.

Usage: psycopg_cancel.py DSN [DSN ...]

Each DSN must ask for TLS (sslmode=require). With libpq 17 or newer,
cancel_safe() sends its CancelRequest inside TLS on a new connection and
reports any error of that connection (libpq's "cancellation failed: SSL
error: unexpected eof while reading" when the server closes without
close_notify). For each DSN: a running query is cancelled (57014), the
cancel itself reports no error, and the session goes on; then the same
with the async connection's cancellation (task cancelled mid-query).
Exits non-zero on any failure.
"""

import asyncio
import sys
import threading
import time

import psycopg
from psycopg import errors


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def cancel_sync(dsn):
    with psycopg.connect(dsn, autocommit=True) as conn:
        check(conn.pgconn.ssl_in_use, f"{dsn}: not over TLS")
        failures = []

        def later():
            time.sleep(0.5)
            try:
                conn.cancel_safe(timeout=5)
            except Exception as e:  # the point of the test
                failures.append(repr(e))

        t = threading.Thread(target=later)
        t.start()
        try:
            conn.execute("SELECT pg_sleep(10)")
            raise AssertionError(f"{dsn}: the query was not cancelled")
        except errors.QueryCanceled:
            pass
        t.join()
        check(not failures, f"{dsn}: cancel_safe() failed: {failures}")
        check(conn.execute("SELECT 41 + 1").fetchone()[0] == 42, "session after cancel")


async def cancel_async(dsn):
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        check(conn.pgconn.ssl_in_use, f"{dsn}: not over TLS")
        task = asyncio.create_task(conn.execute("SELECT pg_sleep(10)"))
        await asyncio.sleep(0.5)
        task.cancel()
        started = time.monotonic()
        try:
            await task
            raise AssertionError(f"{dsn}: the async query was not cancelled")
        except (asyncio.CancelledError, errors.QueryCanceled):
            pass
        check(time.monotonic() - started < 5, "async cancel took too long")
        cur = await conn.execute("SELECT 7")
        check((await cur.fetchone())[0] == 7, "async session after cancel")


def main():
    version = psycopg.pq.version()
    print("libpq", version, psycopg.pq.__impl__)
    check(version >= 170000, f"libpq {version}: cancel_safe() would not use the TLS cancel")
    for dsn in sys.argv[1:]:
        cancel_sync(dsn)
        asyncio.run(cancel_async(dsn))
        print("ok", dsn.split("@")[-1])


if __name__ == "__main__":
    main()
