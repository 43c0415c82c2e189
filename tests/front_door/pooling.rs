//! pgcell authenticates clients and pools backends: SCRAM and -PLUS,
//! backend login with a password or with the recovered ClientKey, session
//! and transaction pools, parameter restore, cancel, exhaustion.

use std::time::{Duration, Instant};

use crate::harness::*;

/// A pooled tenant on `cluster` whose `app` user logs in with a password
/// file; `pool` is the [tenants.pool] body.
pub(crate) fn pooled_tenant(id: &str, cluster: &pgcell::Cluster, pool: &str) -> String {
    format!(
        "{}[tenants.pool]\n{pool}\n[[tenants.users]]\nname = \"app\"\npassword_file = \"{{pw}}\"\n",
        tenant(id, cluster, "")
    )
}

/// A pgcell serving one pooled tenant `id` on `cluster`.
pub(crate) async fn pooled_proxy(id: &str, cluster: &pgcell::Cluster, pool: &str) -> Proxy {
    Proxy::start_with_files(
        &config_text("", "allow", &pooled_tenant(id, cluster, pool)),
        &[("pw", APP_PASSWORD)],
    )
    .await
}

pub(crate) fn processed(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|v| v.split('/').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_through_transaction_and_session_pools() {
    let a = cluster("cluster-pool");
    init_pgbench(&a);
    let text = config_text(
        "",
        "allow",
        &(pooled_tenant(
            "tx",
            &a,
            "mode = \"transaction\"\nsize = 3\nacquire_timeout = \"60s\"",
        ) + &pooled_tenant("sess", &a, "mode = \"session\"\nsize = 10")),
    );
    let proxy = Proxy::start_with_files(&text, &[("pw", APP_PASSWORD)]).await;
    let port = proxy.addr.port();
    for mode in ["simple", "extended"] {
        // 8 clients share 3 backends.
        let (ok, out) = pgbench(
            port,
            "app.tx",
            &["-c", "8", "-j", "2", "-t", "100", "-S", "-M", mode],
        );
        assert!(ok, "{mode}: {out}");
        assert_eq!(processed(&out), 800, "{mode}: {out}");
        assert!(!out.contains("aborted"), "{mode}: {out}");
    }
    // TPC-B-like (multi-statement transactions) through 3 backends.
    let (ok, out) = pgbench(
        port,
        "app.tx",
        &["-c", "6", "-j", "2", "-t", "20", "-M", "extended"],
    );
    assert!(ok && processed(&out) == 120, "{out}");
    let (ok, out) = pgbench(port, "app.sess", &["-c", "4", "-j", "2", "-t", "100", "-S"]);
    assert!(ok && processed(&out) == 400, "{out}");
    // The transaction pool never opened more than its size.
    let backends = a
        .psql("postgres", "select count(*) from pg_stat_activity where usename = 'app' and application_name = 'pgcell' and backend_type = 'client backend'")
        .unwrap();
    assert!(backends.parse::<u32>().unwrap() <= 13, "{backends}");
    let m = proxy.metrics().await;
    assert!(metric(&m, "pgcell_transactions_total", &[("tenant", "tx")]).unwrap() > 100.0);
    assert!(
        metric(
            &m,
            "pgcell_transaction_duration_seconds_count",
            &[("tenant", "tx")]
        )
        .unwrap()
            > 100.0
    );
    assert!(metric(&m, "pgcell_queries_total", &[("tenant", "tx")]).unwrap() > 100.0);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_plus_and_failed_logins() {
    let a = cluster("cluster-scram");
    let proxy = pooled_proxy("acme", &a, "mode = \"transaction\"\nsize = 2").await;
    let port = proxy.addr.port();
    // pgcell terminates TLS, so it offers SCRAM-SHA-256-PLUS itself.
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=app.acme dbname=app sslmode=require channel_binding=require"),
        "select current_user",
    )
    .unwrap();
    assert_eq!(out, "app");
    // Plain SCRAM over plaintext.
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-scram");

    // Wrong password and unknown user: the same answer after the same wait.
    let mut wrong = proxy.pg_config("app.acme");
    wrong.password("nope");
    let started = Instant::now();
    let err = connect(&wrong).await.err().unwrap();
    let wrong_wait = started.elapsed();
    assert_eq!(code_of(&err), "28P01");
    let mut unknown = proxy.pg_config("ghost.acme");
    unknown.password("nope");
    let started = Instant::now();
    let err2 = connect(&unknown).await.err().unwrap();
    let unknown_wait = started.elapsed();
    assert_eq!(code_of(&err2), "28P01");
    assert_eq!(
        err.as_db_error()
            .unwrap()
            .message()
            .replace("\"app\"", "\"X\""),
        err2.as_db_error()
            .unwrap()
            .message()
            .replace("\"ghost\"", "\"X\"")
    );
    assert!(wrong_wait >= Duration::from_millis(500) && unknown_wait >= Duration::from_millis(500));
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "pgcell_auth_failures_total",
            &[("tenant", "acme"), ("reason", "invalid_password")]
        )
        .unwrap()
            >= 2.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_scram_secret_logs_in_with_the_recovered_client_key() {
    let a = cluster("cluster-secret");
    let secret = a
        .psql(
            "postgres",
            "select rolpassword from pg_authid where rolname = 'app'",
        )
        .unwrap();
    assert!(secret.starts_with("SCRAM-SHA-256$"));
    let tenant_text = format!(
        "{}[tenants.pool]\nmode = \"transaction\"\nsize = 1\n[[tenants.users]]\nname = \"app\"\nscram_secret = \"{secret}\"\n",
        tenant("acme", &a, "")
    );
    let proxy = Proxy::start(&config_text("", "allow", &tenant_text)).await;
    // No password anywhere in pgcell: the backend login uses the ClientKey
    // from this client's proof.
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-secret");
    // A second client reuses the pool without a new backend login.
    let (client2, _c2) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    client2.simple_query("select 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn settings_follow_the_client_across_backends() {
    let a = cluster("cluster-params");
    let proxy = pooled_proxy("acme", &a, "mode = \"transaction\"\nsize = 1").await;
    let mut cfg_a = proxy.pg_config("app.acme");
    cfg_a.application_name("client-a");
    cfg_a.options("-c search_path=alpha,public");
    let mut cfg_b = proxy.pg_config("app.acme");
    cfg_b.application_name("client-b");
    let (ca, _x) = connect(&cfg_a).await.unwrap();
    let (cb, _y) = connect(&cfg_b).await.unwrap();
    for _ in 0..3 {
        // One backend serves both, in turn.
        assert_eq!(show(&ca, "show application_name").await, "client-a");
        assert_eq!(show(&cb, "show application_name").await, "client-b");
        assert_eq!(show(&ca, "show search_path").await, "alpha,public");
    }
    // A SET the backend reports (TimeZone) follows client A.
    ca.simple_query("set timezone = 'Asia/Tokyo'")
        .await
        .unwrap();
    assert_ne!(show(&cb, "show timezone").await, "Asia/Tokyo");
    assert_eq!(show(&ca, "show timezone").await, "Asia/Tokyo");
    // Backends log in with their client's startup parameters (so RESET
    // returns to them): with a pool of one, clients of different startup
    // parameters take turns on a backend opened for each, never two at
    // once.
    let backends = a
        .psql(
            "postgres",
            "select count(*) from pg_stat_activity where usename = 'app'",
        )
        .unwrap();
    let backends: u32 = backends.parse().unwrap();
    assert!(backends <= 1, "pool size 1: {backends} backends");
    proxy.stop().await;
}

/// `SET TRANSACTION` leaves `transaction_isolation`'s source at
/// `session` on the backend after the transaction, and `RESET ALL` does
/// not clear it: the next client's settings read-back must not take it
/// for that client's own (found by review: every later transaction of
/// the next client failed with 25001).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_clients_set_transaction_is_not_the_next_clients_setting() {
    let a = cluster("cluster-set-transaction");
    let proxy = pooled_proxy("acme", &a, "mode = \"transaction\"\nsize = 1").await;
    let (x, _x) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    x.batch_execute(
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY; SELECT 1; COMMIT",
    )
    .await
    .unwrap();
    let (y, _y) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    y.batch_execute("SET default_transaction_isolation = 'repeatable read'")
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            show(&y, "show transaction_isolation").await,
            "repeatable read"
        );
        assert_eq!(show(&y, "show transaction_read_only").await, "off");
        y.batch_execute("CREATE TEMP TABLE IF NOT EXISTS never (v int); DISCARD TEMP")
            .await
            .unwrap();
    }
    proxy.stop().await;
}

async fn show(c: &tokio_postgres::Client, q: &str) -> String {
    c.query_one(q, &[]).await.unwrap().get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausted_pool_times_out_and_cancel_hits_only_the_running_query() {
    let a = cluster("cluster-exhaust");
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"500ms\"",
    )
    .await;
    let (holder, _h) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let (waiter, _w) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    holder.simple_query("begin").await.unwrap();
    let started = Instant::now();
    let err = waiter.simple_query("select 1").await.unwrap_err();
    assert_eq!(code_of(&err), "53300");
    assert!(started.elapsed() < Duration::from_secs(3));
    // The statement failed, not the session: extended protocol too.
    let err = waiter
        .query_one("select $1::int", &[&1i32])
        .await
        .unwrap_err();
    assert_eq!(code_of(&err), "53300");
    holder.simple_query("commit").await.unwrap();
    let row = waiter.query_one("select $1::int", &[&7i32]).await.unwrap();
    assert_eq!(row.get::<_, i32>(0), 7);

    // Cancel in transaction mode: reaches the backend running the query.
    let (sleeper, _s) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let token = sleeper.cancel_token();
    let mut task = tokio::spawn(async move { sleeper.simple_query("select pg_sleep(30)").await });
    let err = cancel_until_done(&mut task, || {
        let token = token.clone();
        async move { token.cancel_query(tokio_postgres::NoTls).await.unwrap() }
    })
    .await
    .unwrap_err();
    assert_eq!(code_of(&err), "57014");
    // An idle client's cancel does nothing; the next query runs.
    let (idle, _i) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    idle.cancel_token()
        .cancel_query(tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    idle.simple_query("select 1").await.unwrap();
    holder.simple_query("select 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prepared_statements_survive_backend_switches() {
    let a = cluster("cluster-prepared");
    init_pgbench(&a);
    let proxy = Proxy::start_with_files(
        &config_text(
            "",
            "allow",
            // A generous acquire_timeout: under a loaded test run slow
            // transactions must not turn into pool timeouts.
            &pooled_tenant(
                "tx",
                &a,
                "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"60s\"",
            ),
        ),
        &[("pw", APP_PASSWORD)],
    )
    .await;
    let port = proxy.addr.port();
    // pgbench -M prepared: named statements parsed once per connection,
    // bound on whichever of the 2 backends each transaction gets.
    let (ok, out) = pgbench(
        port,
        "app.tx",
        &["-c", "8", "-j", "2", "-t", "100", "-S", "-M", "prepared"],
    );
    assert!(ok, "{out}");
    assert_eq!(processed(&out), 800, "{out}");
    assert!(!out.contains("aborted") && !out.contains("ERROR"), "{out}");
    let (ok, out) = pgbench(
        port,
        "app.tx",
        // One thread per client: pgbench prepares synchronously, so a
        // thread that serves two clients can block in PREPARE for a backend
        // held by its own other client, mid-transaction (docs/pooling.md).
        &["-c", "4", "-j", "4", "-t", "20", "-M", "prepared"],
    );
    assert!(ok && processed(&out) == 80, "{out}");

    // tokio-postgres: statements prepared once, executed many times while
    // the clients take turns on the two backends.
    let mut clients = Vec::new();
    for _ in 0..6 {
        let (c, conn) = connect(&proxy.pg_config("app.tx")).await.unwrap();
        let stmt = c
            .prepare("select $1::int + 1, pg_backend_pid()")
            .await
            .unwrap();
        clients.push((c, conn, stmt));
    }
    // A holder in an open transaction pins one backend, so the clients run
    // on the other; without it they take the backend the holder just gave
    // back. Every round therefore moves them, and their statements must be
    // re-created where they are missing.
    let (holder, _h) = connect(&proxy.pg_config("app.tx")).await.unwrap();
    let mut pids = std::collections::HashSet::new();
    for round in 0..6 {
        let hold = round % 2 == 0;
        if hold {
            holder.simple_query("begin").await.unwrap();
        }
        for (c, _, stmt) in &clients {
            let row = c.query_one(stmt, &[&round]).await.unwrap();
            assert_eq!(row.get::<_, i32>(0), round + 1);
            pids.insert(row.get::<_, i32>(1));
        }
        if hold {
            holder.simple_query("commit").await.unwrap();
        }
    }
    assert_eq!(pids.len(), 2, "the clients never changed backend: {pids:?}");
    // Dropping a statement closes it; preparing again works on any backend.
    let (c, _conn, stmt) = clients.pop().unwrap();
    drop(stmt);
    let again = c.prepare("select 41 + 1").await.unwrap();
    for _ in 0..3 {
        assert_eq!(c.query_one(&again, &[]).await.unwrap().get::<_, i32>(0), 42);
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abandoned_transactions_never_return_dirty_and_session_state_is_visible() {
    let a = cluster("cluster-dirty");
    a.psql("app", "create table t (a int); alter table t owner to app")
        .unwrap();
    let proxy = Proxy::start_with_files(
        &config_text(
            "",
            "allow",
            &(pooled_tenant("acme", &a, "mode = \"transaction\"\nsize = 1")
                + &pooled_tenant(
                    "pin",
                    &a,
                    "mode = \"transaction\"\nsize = 2\npin_session_state = true",
                )),
        ),
        &[("pw", APP_PASSWORD)],
    )
    .await;
    // A client leaves mid-transaction: its backend is closed, not reused.
    let (quitter, conn) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    quitter
        .simple_query("begin; insert into t values (1)")
        .await
        .unwrap();
    let quitter_pid: i32 = quitter
        .query_one("select pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    drop(quitter);
    let _ = conn.await;
    let (next, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let row = next
        .query_one("select pg_backend_pid(), (select count(*) from t)", &[])
        .await
        .unwrap();
    assert_ne!(
        row.get::<_, i32>(0),
        quitter_pid,
        "the dirty backend was reused"
    );
    assert_eq!(
        row.get::<_, i64>(1),
        0,
        "the abandoned insert was committed"
    );
    let in_transaction = next
        .simple_query("select now() = statement_timestamp()")
        .await
        .unwrap();
    let same = in_transaction.iter().any(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0) == Some("t"),
        _ => false,
    });
    assert!(same, "still inside someone else's transaction");

    // Session state in transaction mode is counted, and its backend is
    // closed: the next client gets another one, listening to nothing.
    let rows = next
        .simple_query("listen chan; select pg_backend_pid()")
        .await
        .unwrap();
    let listener_pid: i32 = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).and_then(|v| v.parse().ok()),
            _ => None,
        })
        .unwrap();
    let (after, _a) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let row = after
        .query_one(
            "select pg_backend_pid(), (select count(*) from pg_listening_channels())",
            &[],
        )
        .await
        .unwrap();
    assert_ne!(
        row.get::<_, i32>(0),
        listener_pid,
        "the LISTEN backend was reused"
    );
    assert_eq!(row.get::<_, i64>(1), 0);
    let a = &a;
    eventually(
        Duration::from_secs(5),
        "the LISTEN backend closes",
        || async move {
            let n = a
                .psql(
                    "postgres",
                    &format!("select count(*) from pg_stat_activity where pid = {listener_pid}"),
                )
                .unwrap();
            (n == "0").then_some(()).ok_or(n)
        },
    )
    .await;
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "pgcell_session_state_statements_total",
            &[("tenant", "acme"), ("kind", "listen")]
        )
        .unwrap()
            >= 1.0
    );
    // ...and with pin_session_state the client keeps its backend.
    let (pinned, _p) = connect(&proxy.pg_config("app.pin")).await.unwrap();
    pinned
        .simple_query("create temp table scratch (a int)")
        .await
        .unwrap();
    let (other, _o) = connect(&proxy.pg_config("app.pin")).await.unwrap();
    for _ in 0..5 {
        // `other` takes whatever backend is free while `pinned` works:
        // without pinning that would be scratch's backend, and the insert
        // would run elsewhere and fail.
        other.simple_query("begin").await.unwrap();
        pinned
            .simple_query("insert into scratch values (1)")
            .await
            .unwrap();
        other.simple_query("commit").await.unwrap();
    }
    let n: i64 = pinned
        .query_one("select count(*) from scratch", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 5);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_recovers_after_a_backend_restart() {
    let a = cluster("cluster-restart");
    let proxy = pooled_proxy("acme", &a, "mode = \"transaction\"\nsize = 2").await;
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let a = tokio::task::spawn_blocking(move || {
        let mut a = a;
        a.stop("fast").unwrap();
        a
    })
    .await
    .unwrap();
    // Down: a new transaction fails fast with 08006, not a hang.
    let started = Instant::now();
    let err = client.simple_query("select 1").await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        code_of(&err) == "08006" || code_of(&err).starts_with("57P"),
        "{err}"
    );
    // pgcell authenticates new clients itself; their first query fails.
    let (late, _l) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let err = late.simple_query("select 1").await.unwrap_err();
    assert_eq!(code_of(&err), "08006", "{err}");
    // Back up: the pool opens fresh backends.
    let a = tokio::task::spawn_blocking(move || {
        let mut a = a;
        a.restart().unwrap();
        a
    })
    .await
    .unwrap();
    let (fresh, _f) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    assert_eq!(cluster_name(&fresh).await, "cluster-restart");
    drop(a);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backends_a_restart_terminated_are_not_handed_out() {
    let a = cluster("cluster-idle-restart");
    let proxy = pooled_proxy("acme", &a, "mode = \"transaction\"\nsize = 2").await;
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    // Two backends in the pool, both idle.
    let (other, _o) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    client.batch_execute("begin").await.unwrap();
    other.simple_query("select 1").await.unwrap();
    client.batch_execute("commit").await.unwrap();
    let before: u32 = cluster_pid(&client).await;
    // A fast restart sends every idle backend 57P01 and closes it; the
    // pool must drop them, not hand one to the next transaction.
    let a = tokio::task::spawn_blocking(move || {
        let mut a = a;
        a.stop("fast").unwrap();
        a.restart().unwrap();
        a
    })
    .await
    .unwrap();
    for c in [&client, &other, &client] {
        let pid = cluster_pid(c).await;
        assert_ne!(pid, before);
    }
    drop(a);
    proxy.stop().await;
}

async fn cluster_pid(client: &tokio_postgres::Client) -> u32 {
    let row = client
        .query_one("select pg_backend_pid()::int4", &[])
        .await
        .expect("a fresh backend answers");
    row.get::<_, i32>(0) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_resizes_pools_and_closes_removed_tenants_after_their_transaction() {
    let a = cluster("cluster-reload-pool");
    let pool = "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"500ms\"";
    let text = config_text(
        "",
        "allow",
        &(pooled_tenant("acme", &a, pool) + &pooled_tenant("gone", &a, pool)),
    );
    let proxy = Proxy::start_with_files(&text, &[("pw", APP_PASSWORD)]).await;
    let (c1, _k1) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let (c2, _k2) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    c1.simple_query("begin").await.unwrap();
    assert_eq!(
        code_of(&c2.simple_query("select 1").await.unwrap_err()),
        "53300"
    );
    c1.simple_query("commit").await.unwrap();

    let (idle_gone, idle_conn) = connect(&proxy.pg_config("app.gone")).await.unwrap();
    idle_gone.simple_query("select 1").await.unwrap();
    let (busy_gone, busy_conn) = connect(&proxy.pg_config("app.gone")).await.unwrap();
    busy_gone.simple_query("begin").await.unwrap();

    // Reload: acme's pool grows to 2, gone disappears. The running config
    // file has `{pw}` already replaced, so edit it in place.
    let path = proxy.config_path();
    let current = std::fs::read_to_string(&path).unwrap();
    let pw_line = current
        .lines()
        .find(|l| l.starts_with("password_file"))
        .unwrap()
        .to_owned();
    let grown = config_text(
        "",
        "allow",
        &pooled_tenant(
            "acme",
            &a,
            "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"500ms\"",
        ),
    )
    .replace("password_file = \"{pw}\"", &pw_line);
    write(&path, &grown);
    proxy.reload_and_wait().await;

    // Both acme clients now fit at once, on the new pool.
    c1.simple_query("begin").await.unwrap();
    c2.simple_query("select 1").await.unwrap();
    c1.simple_query("commit").await.unwrap();

    // The idle client of the removed tenant is told and closed.
    let end = tokio::time::timeout(Duration::from_secs(5), idle_conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code_of(&end.expect_err("closed with an error")), "57P01");
    drop(idle_gone);
    // The busy one finishes its transaction first.
    busy_gone.simple_query("select 1").await.unwrap();
    busy_gone.simple_query("commit").await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), busy_conn)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(code_of(&end.expect_err("closed with an error")), "57P01");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn min_idle_backends_are_kept_open() {
    let a = cluster("cluster-min-idle");
    let proxy = pooled_proxy("acme", &a, "mode = \"transaction\"\nsize = 4\nmin_idle = 3").await;
    // The first login teaches the pool how to log in; upkeep (every 5 s)
    // then opens backends up to min_idle.
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    client.simple_query("select 1").await.unwrap();
    let count = || {
        a.psql(
            "postgres",
            "select count(*) from pg_stat_activity where usename = 'app'",
        )
        .unwrap()
        .parse::<u32>()
        .unwrap()
    };
    let mut open = 0;
    for _ in 0..40 {
        open = count();
        if open >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!((3..=4).contains(&open), "{open} backends");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn md5_copy_session_pgbench_and_pool_client_limit() {
    let a = cluster("cluster-misc");
    init_pgbench(&a);
    a.psql(
        "app",
        "create table c (a int, b text); alter table c owner to app",
    )
    .unwrap();
    let text = config_text(
        "",
        "allow",
        &(pooled_tenant("md", &a, "mode = \"transaction\"\nsize = 2")
            .replace("[tenants.pool]", "auth = \"md5\"\n[tenants.pool]")
            + &pooled_tenant(
                "tx",
                &a,
                "mode = \"transaction\"\nsize = 1\nmax_client_connections = 2",
            )
            + &pooled_tenant("sess", &a, "mode = \"session\"\nsize = 4")),
    );
    let proxy = Proxy::start_with_files(&text, &[("pw", APP_PASSWORD)]).await;
    let port = proxy.addr.port();

    // MD5 only where the tenant opts in; psql (libpq) answers it.
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=app.md dbname=app sslmode=disable"),
        "select 'md5 ok'",
    )
    .unwrap();
    assert_eq!(out, "md5 ok");
    let mut wrong = proxy.pg_config("app.md");
    wrong.password("nope");
    assert_eq!(code_of(&connect(&wrong).await.err().unwrap()), "28P01");

    // COPY in and out through a transaction pool of one backend.
    let (c, _k) = connect(&proxy.pg_config("app.tx")).await.unwrap();
    let sink = c.copy_in("copy c from stdin").await.unwrap();
    {
        use futures_util::SinkExt;
        let mut sink = std::pin::pin!(sink);
        for i in 0..1000 {
            sink.send(bytes::Bytes::from(format!("{i}\tline {i}\n")))
                .await
                .unwrap();
        }
        assert_eq!(sink.finish().await.unwrap(), 1000);
    }
    let (other, _o) = connect(&proxy.pg_config("app.tx")).await.unwrap();
    let n: i64 = other
        .query_one("select count(*) from c", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1000);
    let stream = c
        .copy_out("copy (select * from c order by a) to stdout")
        .await
        .unwrap();
    let chunks: Vec<bytes::Bytes> = {
        use futures_util::TryStreamExt;
        stream.try_collect().await.unwrap()
    };
    let text: Vec<u8> = chunks.concat();
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 1000);
    other.simple_query("select 1").await.unwrap();

    // pool.max_client_connections = 2: a third client of the pool is refused.
    let err = connect(&proxy.pg_config("app.tx")).await.err().unwrap();
    assert_eq!(code_of(&err), "53300");
    drop(other);

    // Session mode with the extended and prepared protocols.
    for mode in ["extended", "prepared"] {
        let (ok, out) = pgbench(
            port,
            "app.sess",
            &["-c", "4", "-j", "2", "-t", "50", "-S", "-M", mode],
        );
        assert!(ok && processed(&out) == 200, "{mode}: {out}");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_cancels_never_hit_the_next_client_on_a_handed_on_backend() {
    let a = cluster("cluster-race");
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"10s\"",
    )
    .await;
    // A runs short queries while its cancel key is fired continuously; B
    // runs slower ones on the same single backend whenever A lets go. A
    // cancel meant for A that lands after the hand-over would cancel B.
    let (ca, _ka) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let (cb, _kb) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let token = ca.cancel_token();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let firing = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut sent = 0u32;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = token.cancel_query(tokio_postgres::NoTls).await;
                sent += 1;
                // Each cancel costs PostgreSQL a process: keep the rate
                // modest so parallel tests are not starved.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
            sent
        })
    };
    let a_task = tokio::spawn(async move {
        let mut cancelled = 0;
        for _ in 0..150 {
            if let Err(e) = ca.simple_query("select pg_sleep(0.002)").await {
                assert_eq!(code_of(&e), "57014", "{e}");
                cancelled += 1;
            }
        }
        cancelled
    });
    let mut b_ok = 0;
    for _ in 0..40 {
        cb.simple_query("select pg_sleep(0.01)")
            .await
            .expect("B is never cancelled");
        b_ok += 1;
    }
    let a_cancelled = a_task.await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let sent = firing.await.unwrap();
    assert_eq!(b_ok, 40);
    assert!(sent > 10, "only {sent} cancels sent");
    // The cancels did reach A's queries (the test exercises the race).
    assert!(a_cancelled > 0, "no cancel ever hit A");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_pipelines_complete() {
    let a = cluster("cluster-pipeline");
    let proxy = pooled_proxy("acme", &a, "mode = \"transaction\"\nsize = 1").await;
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let stmt = client.prepare("select $1::text").await.unwrap();
    // tokio-postgres pipelines concurrent queries on one connection: about
    // 8 MB of requests and 8 MB of answers, far beyond socket buffers.
    let payload = "x".repeat(4096);
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&payload];
    let queries = (0..2000).map(|_| client.query_one(&stmt, &params));
    let rows = tokio::time::timeout(
        Duration::from_secs(60),
        futures_util::future::join_all(queries),
    )
    .await
    .expect("the pipeline completes");
    assert_eq!(rows.len(), 2000);
    for row in rows {
        assert_eq!(row.unwrap().get::<_, String>(0).len(), 4096);
    }
    proxy.stop().await;
}

/// A setting a client made that no longer applies when pgcell replays it
/// on the client's next backend (its role was dropped meanwhile): the
/// statement fails with PostgreSQL's error (an ERROR, the session goes
/// on without that setting and keeps the others), no backend is counted
/// as lost, and the backend — reset after the attempt — serves the next
/// client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_setting_that_no_longer_applies_is_the_clients_error() {
    let a = cluster("cluster-restore-refused");
    a.psql("postgres", "CREATE ROLE gone_role; GRANT gone_role TO app")
        .unwrap();
    // A tenant of its own: the metrics registry is shared by the tests.
    let proxy = pooled_proxy(
        "refused",
        &a,
        "mode = \"transaction\"\nsize = 1\nacquire_timeout = \"2s\"",
    )
    .await;
    let (ca, task_a) = connect(&proxy.pg_config("app.refused")).await.unwrap();
    let (cb, _b) = connect(&proxy.pg_config("app.refused")).await.unwrap();
    ca.simple_query("SET ROLE gone_role; SET work_mem = '7MB'")
        .await
        .unwrap();
    assert_eq!(show(&ca, "SELECT current_user::text").await, "gone_role");
    let pid: i32 = cb
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    a.psql("postgres", "DROP ROLE gone_role").unwrap();

    let err = ca.simple_query("SELECT 1").await.unwrap_err();
    let db = err.as_db_error().expect("an ErrorResponse");
    // PostgreSQL's own answer to that role.
    let direct = a
        .psql("postgres", "SET ROLE gone_role")
        .unwrap_err()
        .to_string();
    assert!(direct.contains("gone_role"), "{direct}");
    assert!(db.message().contains("gone_role"), "{db:?}");
    assert_eq!(db.severity(), "ERROR");
    // The session goes on, without the role, with its other settings.
    assert!(!ca.is_closed());
    assert_eq!(show(&ca, "SELECT current_user::text").await, "app");
    assert_eq!(show(&ca, "SHOW work_mem").await, "7MB");
    drop(task_a);

    let again: i32 = cb
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, pid, "the backend was closed");
    let metrics = proxy.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "pgcell_backend_lost_total",
            &[("tenant", "refused")]
        )
        .unwrap_or(0.0),
        0.0,
        "{metrics}"
    );
    proxy.stop().await;
}

/// `pool.max_prepared_statements` bounds the statements pgcell keeps on a
/// backend: beyond it the least recently used is closed, and prepared
/// again, unseen by the client, when the client uses it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_prepared_statements_bounds_each_backend() {
    let a = cluster("cluster-max-prepared");
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"transaction\"\nsize = 1\nmax_prepared_statements = 2",
    )
    .await;
    let (c, _task) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let statements = [
        c.prepare("SELECT 1::int").await.unwrap(),
        c.prepare("SELECT 2::int").await.unwrap(),
        c.prepare("SELECT 3::int").await.unwrap(),
    ];
    for round in 0..3 {
        for (i, s) in statements.iter().enumerate() {
            let v: i32 = c.query_one(s, &[]).await.unwrap().get(0);
            assert_eq!(v, i as i32 + 1, "round {round}");
        }
        let rows = c
            .simple_query("SELECT count(*) FROM pg_prepared_statements")
            .await
            .unwrap();
        let kept = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .unwrap();
        assert_eq!(kept, "2", "round {round}");
    }
    proxy.stop().await;
}

/// Session mode: a client beyond a full pool waits in line at login (a
/// session-mode client owns its backend from login to the end), is served
/// when another client leaves, and past `acquire_timeout` is refused as
/// PostgreSQL refuses a connection over its limit: `FATAL 53300` before
/// any `ReadyForQuery`, then the close. Never a session that looks
/// established and then dies on its first statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_session_pool_queues_at_login_and_refuses_after_acquire_timeout() {
    let a = cluster("cluster-queue");
    let proxy = pooled_proxy(
        "acme",
        &a,
        "mode = \"session\"\nsize = 1\nacquire_timeout = \"2s\"",
    )
    .await;
    let config = proxy.pg_config("app.acme");
    let (holder, _h) = connect(&config).await.unwrap();
    holder.simple_query("select 1").await.unwrap();

    // In line: the login completes once the holder leaves.
    let started = Instant::now();
    let mut waiting = tokio::spawn({
        let config = config.clone();
        async move { connect(&config).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(700), &mut waiting).await;
    assert!(
        early.is_err(),
        "the client beyond the pool got its login answered without a backend"
    );
    drop(holder);
    let (waiter, _w) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("served once the holder left")
        .unwrap()
        .unwrap();
    assert!(started.elapsed() >= Duration::from_millis(700));
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served before the timeout"
    );
    assert_eq!(cluster_name(&waiter).await, "cluster-queue");

    // Past acquire_timeout: exactly the documented refusal.
    let started = Instant::now();
    let Err(err) = connect(&config).await else {
        panic!("a client waiting past acquire_timeout was let in");
    };
    let waited = started.elapsed();
    let db = err.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "53300");
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.message(), "no server connection free within 2000 ms");
    assert!(
        waited >= Duration::from_secs(2) && waited < Duration::from_secs(5),
        "{waited:?}"
    );

    // pgcell goes on serving: the client in the pool, and the next one in
    // line once it leaves.
    waiter.simple_query("select 1").await.unwrap();
    drop(waiter);
    let (next, _n) = connect(&config).await.unwrap();
    assert_eq!(cluster_name(&next).await, "cluster-queue");
    proxy.stop().await;
}
