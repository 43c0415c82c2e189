//! A tenant's primary and streaming replicas behind one front door, with
//! real replication: replicas made with `pg_basebackup -R`, replay paused
//! with `pg_wal_replay_pause()`, a failover with `pg_ctl promote`
//! (docs/replicas.md).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use pgcell::Cluster;

use crate::harness::*;

/// A pooled tenant `id` over `servers` (in that order) with `replication`
/// keys, its user `app` also the probe's.
fn replicated_tenant(id: &str, servers: &[&Cluster], pool: &str, replication: &str) -> String {
    let backends: Vec<String> = servers
        .iter()
        .map(|c| format!("\"{}\"", c.addr()))
        .collect();
    format!(
        "[[tenants]]\nid = \"{id}\"\nbackends = [{}]\n[tenants.pool]\n{pool}\n\
         [tenants.replication]\nprobe_user = \"app\"\nprobe_interval = \"200ms\"\nprobe_timeout = \"1s\"\n{replication}\n\
         [[tenants.users]]\nname = \"app\"\npassword_file = \"{{pw}}\"\n",
        backends.join(", ")
    )
}

async fn proxy_for(tenants: &str) -> Proxy {
    proxy(tenants).await
}

async fn proxy(tenants: &str) -> Proxy {
    let admin = "[[admin.users]]\nname = \"admin\"\npassword_file = \"{pw}\"\n";
    Proxy::start_with_files(
        &config_text(
            "",
            "allow",
            &format!("[backend]\nzone = \"zone-a\"\n{tenants}{admin}"),
        ),
        &[("pw", APP_PASSWORD)],
    )
    .await
}

/// `SHOW REPLICATION` on the admin console: (tenant, server, role,
/// excluded, split_brain) per row.
async fn show_replication(proxy: &Proxy) -> Vec<(String, String, String, String, String)> {
    let mut config = proxy.pg_config("admin");
    config.dbname("pgcell");
    let (client, _c) = connect(&config).await.unwrap();
    let mut out = Vec::new();
    for m in client.simple_query("SHOW REPLICATION").await.unwrap() {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            let get = |name: &str| row.get(name).unwrap_or("").to_owned();
            out.push((
                get("tenant"),
                get("server"),
                get("role"),
                get("excluded"),
                get("split_brain"),
            ));
        }
    }
    out
}

/// The port of the server a new connection's transaction runs on, and
/// whether it is in recovery.
async fn served_by(config: &tokio_postgres::Config) -> Result<(u16, bool), String> {
    let (client, _conn) = connect(config).await.map_err(|e| code_of(&e))?;
    let row = client
        .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
        .await
        .map_err(|e| code_of(&e))?;
    Ok((row.get::<_, i32>(0) as u16, row.get(1)))
}

/// Waits until the probe has seen every server's role.
async fn roles_known(proxy: &Proxy, tenant: &str, servers: &[(&Cluster, f64)]) {
    eventually(
        Duration::from_secs(10),
        "the probe sees every role",
        || async {
            let text = proxy.metrics().await;
            let known = servers.iter().all(|(c, role)| {
                metric(
                    &text,
                    "pgcell_server_role",
                    &[("tenant", tenant), ("server", &c.addr().to_string())],
                ) == Some(*role)
            });
            if known {
                Ok(())
            } else {
                Err(text
                    .lines()
                    .filter(|l| l.starts_with("pgcell_server") || l.starts_with("pgcell_split"))
                    .collect::<Vec<_>>()
                    .join("\n"))
            }
        },
    )
    .await;
}

/// Waits until the metrics say `server` of `tenant` is excluded
/// (or not), within `secs`.
async fn excluded_becomes(
    proxy: &Proxy,
    tenant: &str,
    server: &str,
    excluded: bool,
    secs: u64,
    what: &str,
) {
    let want = if excluded { 1.0 } else { 0.0 };
    eventually(Duration::from_secs(secs), what, || async {
        metric(
            &proxy.metrics().await,
            "pgcell_server_excluded",
            &[("tenant", tenant), ("server", server)],
        ) == Some(want)
    })
    .await;
}

fn replica(primary: &Cluster, name: &str) -> Cluster {
    Cluster::replica_of(primary, name).expect("pg_basebackup replica")
}

/// Waits until `replica` has replayed everything `primary` wrote so far.
async fn caught_up(primary: &Cluster, replica: &Cluster) {
    let lsn = primary
        .psql("postgres", "SELECT pg_current_wal_lsn()")
        .unwrap();
    eventually(
        Duration::from_secs(10),
        "the replica catches up",
        || async {
            replica
                .psql(
                    "postgres",
                    &format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'"),
                )
                .map(|v| v == "t")
                .unwrap_or(false)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_find_the_primary_and_reads_spread_over_fresh_replicas() {
    let p = cluster("repl-primary");
    p.psql("app", "CREATE TABLE t (v int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let r1 = replica(&p, "repl-r1");
    let r2 = replica(&p, "repl-r2");
    // A standby listed first: writes must still find the primary.
    let pool = "mode = \"transaction\"\nsize = 4\nacquire_timeout = \"5s\"";
    // `zoned`: the same servers, r2 in pgcell's zone (zone-a).
    let zones = format!(
        "[tenants.replication.zones]\n\"{}\" = \"zone-b\"\n\"{}\" = \"zone-a\"\n",
        r1.addr(),
        r2.addr()
    );
    let proxy = proxy(
        &(replicated_tenant(
            "acme",
            &[&r1, &p, &r2],
            pool,
            "max_replica_lag_bytes = 200000",
        ) + &replicated_tenant("zoned", &[&r1, &p, &r2], pool, &zones)),
    )
    .await;
    for tenant in ["acme", "zoned"] {
        roles_known(&proxy, tenant, &[(&p, 1.0), (&r1, 0.0), (&r2, 0.0)]).await;
    }

    // Writes: always the primary, never a server in recovery.
    let writer = proxy.pg_config("app.acme");
    let (client, _c) = connect(&writer).await.unwrap();
    for i in 0..20 {
        client
            .execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
        let row = client
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, i32>(0) as u16, row.get::<_, bool>(1)),
            (p.port(), false)
        );
    }

    // Reads, in every form a client can ask: spread over both replicas,
    // none to the primary. Four clients hold a transaction open each, so
    // the pool opens four backends.
    let mut alias = proxy.pg_config("app.acme-ro");
    alias.options("");
    let mut read_only = proxy.pg_config("app.acme");
    read_only.options("-c target_session_attrs=read-only");
    let mut standby = proxy.pg_config("app.acme");
    standby.options("-c TARGET_SESSION_ATTRS=standby");
    for config in [&alias, &read_only, &standby] {
        let mut held = Vec::new();
        let mut ports = BTreeSet::new();
        for _ in 0..4 {
            let (client, conn) = connect(config).await.unwrap();
            client.batch_execute("BEGIN").await.unwrap();
            let row = client
                .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
                .await
                .unwrap();
            assert!(
                row.get::<_, bool>(1),
                "a read-only client reached the primary"
            );
            ports.insert(row.get::<_, i32>(0) as u16);
            held.push((client, conn));
        }
        assert_eq!(
            ports,
            BTreeSet::from([r1.port(), r2.port()]),
            "reads not spread over both replicas"
        );
        for (client, _) in &held {
            client.batch_execute("COMMIT").await.unwrap();
        }
    }
    // Replicas in pgcell's own zone first: all four reads on r2.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (client, conn) = connect(&proxy.pg_config("app.zoned-ro")).await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(port as u16, r2.port(), "a read left pgcell's zone");
        held.push((client, conn));
    }
    drop(held);
    // The tenant's own name with target_session_attrs=read-write, and a
    // bad value, as libpq names them.
    let mut rw = proxy.pg_config("app.acme");
    rw.options("-c target_session_attrs=read-write");
    assert_eq!(served_by(&rw).await.unwrap(), (p.port(), false));
    let mut bad = proxy.pg_config("app.acme");
    bad.options("-c target_session_attrs=sometimes");
    assert_eq!(served_by(&bad).await.unwrap_err(), "22023");

    // A replica whose replay is paused falls behind past
    // max_replica_lag_bytes: it gets no new reads, and comes back once it
    // has caught up.
    r1.psql("postgres", "SELECT pg_wal_replay_pause()").unwrap();
    p.psql("app", "INSERT INTO t SELECT generate_series(1, 20000)")
        .unwrap();
    let r1_label = r1.addr().to_string();
    excluded_becomes(
        &proxy,
        "acme",
        &r1_label,
        true,
        10,
        "the lagging replica is excluded",
    )
    .await;
    // The other replica also fell behind for a moment (the insert is
    // 1 MB of WAL): reads need it back.
    caught_up(&p, &r2).await;
    let r2_label = r2.addr().to_string();
    excluded_becomes(
        &proxy,
        "acme",
        &r2_label,
        false,
        10,
        "the replica that caught up is back",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let (client, conn) = connect(&read_only).await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        if port as u16 != r2.port() {
            panic!(
                "a lagging replica got a read (port {port}); pgcell's view: {:?}",
                show_replication(&proxy).await
            );
        }
        held.push((client, conn));
    }
    for (client, _) in &held {
        client.batch_execute("COMMIT").await.unwrap();
    }
    drop(held);
    r1.psql("postgres", "SELECT pg_wal_replay_resume()")
        .unwrap();
    caught_up(&p, &r1).await;
    excluded_becomes(&proxy, "acme", &r1_label, false, 10, "the replica is back").await;

    // A stopped replica: excluded within the probe interval and timeout;
    // reads go on on the other one.
    let mut r2 = r2;
    let stopped_at = Instant::now();
    r2.stop("immediate").unwrap();
    let r2_label = r2.addr().to_string();
    excluded_becomes(
        &proxy,
        "acme",
        &r2_label,
        true,
        5,
        "the stopped replica is excluded",
    )
    .await;
    let excluded_after = stopped_at.elapsed();
    assert!(
        excluded_after < Duration::from_millis(200 + 1000 + 500),
        "excluded after {excluded_after:?}"
    );
    for _ in 0..4 {
        assert_eq!(served_by(&read_only).await.unwrap(), (r1.port(), true));
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_keeps_idle_clients_and_writes_follow_the_new_primary() {
    let mut p = cluster("failover-primary");
    p.psql("app", "CREATE TABLE t (v int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let r = replica(&p, "failover-replica");
    let proxy = proxy(
        &(replicated_tenant(
            "acme",
            &[&p, &r],
            "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"10s\"",
            "",
        ) + &replicated_tenant(
            "sess",
            &[&p, &r],
            "mode = \"session\"\nsize = 2\nacquire_timeout = \"10s\"",
            "",
        )),
    )
    .await;
    for tenant in ["acme", "sess"] {
        roles_known(&proxy, tenant, &[(&p, 1.0), (&r, 0.0)]).await;
    }
    // A session-mode client owns its backend on the primary.
    let (session, session_conn) = connect(&proxy.pg_config("app.sess")).await.unwrap();
    session.batch_execute("SELECT 1").await.unwrap();
    // Idle transaction-mode clients, connected before the failover.
    let mut idle = Vec::new();
    for _ in 0..3 {
        let (client, conn) = connect(&proxy.pg_config("app.acme")).await.unwrap();
        client
            .execute("INSERT INTO t VALUES (1)", &[])
            .await
            .unwrap();
        idle.push((client, conn));
    }
    // A transaction-mode client inside a transaction.
    let (in_txn, in_txn_conn) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    in_txn
        .batch_execute("BEGIN; INSERT INTO t VALUES (9)")
        .await
        .unwrap();
    caught_up(&p, &r).await;

    // The primary goes; the replica is promoted a moment later.
    p.stop("fast").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.promote().unwrap();
    let promoted = Instant::now();
    // Every idle client's next transaction runs on the new primary, on
    // the connection it had.
    for (client, conn) in &idle {
        assert!(!conn.is_finished(), "an idle client lost its connection");
        client
            .execute("INSERT INTO t VALUES (2)", &[])
            .await
            .unwrap();
        let row = client
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, i32>(0) as u16, row.get::<_, bool>(1)),
            (r.port(), false)
        );
    }
    let writes_back = promoted.elapsed();
    // The client that was inside a transaction lost it as on a direct
    // connection: PostgreSQL's 57P01 (or the lost connection), then the
    // connection closes.
    let error = in_txn.batch_execute("COMMIT").await.unwrap_err();
    assert!(
        ["57P01", "08006"].contains(&code_of(&error).as_str()) || error.is_closed(),
        "{error:?}"
    );
    eventually(
        Duration::from_secs(5),
        "the client in a transaction is closed",
        || async { in_txn_conn.is_finished() },
    )
    .await;
    assert!(
        writes_back < Duration::from_secs(2),
        "writes succeeded {writes_back:?} after the promotion"
    );
    // The session-mode client lost its backend: one error, then its
    // connection is closed; a new connection reaches the new primary.
    let error = session.batch_execute("SELECT 1").await.unwrap_err();
    assert!(
        ["57P01", "08006"].contains(&code_of(&error).as_str()) || error.is_closed(),
        "{error:?}"
    );
    eventually(
        Duration::from_secs(5),
        "the session-mode client is closed",
        || async { session_conn.is_finished() },
    )
    .await;
    assert_eq!(
        served_by(&proxy.pg_config("app.sess")).await.unwrap(),
        (r.port(), false)
    );

    // The old primary comes back as a standby: it gets no writes.
    p.restart_as_standby_of(&r).unwrap();
    assert_eq!(
        p.psql("postgres", "SELECT pg_is_in_recovery()").unwrap(),
        "t"
    );
    roles_known(&proxy, "acme", &[(&p, 0.0), (&r, 1.0)]).await;
    for _ in 0..10 {
        assert_eq!(
            served_by(&proxy.pg_config("app.acme")).await.unwrap(),
            (r.port(), false)
        );
    }
    for (client, _) in &idle {
        client
            .execute("INSERT INTO t VALUES (3)", &[])
            .await
            .unwrap();
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_primaries_refuse_writes_unless_the_operator_names_one() {
    let p = cluster("split-primary");
    let r = replica(&p, "split-replica");
    let tenants = replicated_tenant(
        "acme",
        &[&p, &r],
        "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"2s\"",
        "",
    ) + &replicated_tenant(
        "named",
        &[&p, &r],
        "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"2s\"",
        &format!("primary = \"{}\"", p.addr()),
    ) + &replicated_tenant(
        "sess",
        &[&p, &r],
        "mode = \"session\"\nsize = 2\nacquire_timeout = \"2s\"",
        "",
    ) + &replicated_tenant("pt", &[&p, &r], "", "").replacen(
        "[tenants.pool]\n\n",
        "auth = \"passthrough\"\n",
        1,
    );
    let proxy = proxy(&tenants).await;
    for tenant in ["acme", "named", "sess", "pt"] {
        roles_known(&proxy, tenant, &[(&p, 1.0), (&r, 0.0)]).await;
    }
    // A client connected before: it keeps its connection, its statements
    // fail with a clear error while the split lasts.
    let (before, conn) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    before.batch_execute("SELECT 1").await.unwrap();
    let (session, session_conn) = connect(&proxy.pg_config("app.sess")).await.unwrap();
    session.batch_execute("SELECT 1").await.unwrap();
    let (passthrough, passthrough_conn) = connect(&proxy.pg_config("app.pt")).await.unwrap();
    passthrough.batch_execute("SELECT 1").await.unwrap();
    // Promoted while the primary still runs: two primaries.
    r.promote().unwrap();
    eventually(
        Duration::from_secs(10),
        "the split brain is seen",
        || async {
            metric(
                &proxy.metrics().await,
                "pgcell_split_brain",
                &[("tenant", "acme")],
            ) == Some(1.0)
        },
    )
    .await;
    let shown = show_replication(&proxy).await;
    for server in [p.addr().to_string(), r.addr().to_string()] {
        assert!(
            shown.contains(&(
                "acme".into(),
                server.clone(),
                "primary".into(),
                String::new(),
                "yes".into()
            )),
            "{shown:?}"
        );
        assert!(shown
            .iter()
            .any(|row| row.0 == "named" && row.1 == server && row.4 == "no"));
    }
    // A session-mode client holding a backend on one of the two: ended
    // between transactions with 57P01, not left writing (found by review).
    let error = session.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code_of(&error), "57P01", "{error}");
    eventually(
        Duration::from_secs(5),
        "the session-mode client is closed",
        || async { session_conn.is_finished() },
    )
    .await;
    // A passthrough client too: its relay ends at the transaction boundary
    // with 57P01 (second review: it kept writing to the old primary).
    match passthrough.batch_execute("SELECT 1").await {
        Err(e) => assert!(code_of(&e) == "57P01" || e.is_closed(), "{e:?}"),
        Ok(()) => panic!("a passthrough client wrote on through a split brain"),
    }
    eventually(
        Duration::from_secs(5),
        "the passthrough client is closed",
        || async { passthrough_conn.is_finished() },
    )
    .await;
    let error = before.batch_execute("SELECT 1").await.unwrap_err();
    assert_eq!(code_of(&error), "57P03", "{error}");
    let message = error.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("two servers report"), "{message}");
    assert!(!conn.is_finished(), "the client lost its connection");
    assert_eq!(
        served_by(&proxy.pg_config("app.acme")).await.unwrap_err(),
        "57P03"
    );
    // The tenant whose operator named the primary writes there.
    assert_eq!(
        served_by(&proxy.pg_config("app.named")).await.unwrap(),
        (p.port(), false)
    );
    // Naming the primary by a reload ends the refusal at once (found by
    // review: the pools kept the old topology).
    let path = proxy.config_path();
    let text = std::fs::read_to_string(&path).unwrap().replacen(
        "[tenants.replication]\n",
        &format!("[tenants.replication]\nprimary = \"{}\"\n", r.addr()),
        1,
    );
    std::fs::write(&path, text).unwrap();
    proxy.reload_and_wait().await;
    assert_eq!(
        served_by(&proxy.pg_config("app.acme")).await.unwrap(),
        (r.port(), false)
    );
    before.batch_execute("SELECT 1").await.unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_transactions_go_to_replicas_that_have_the_clients_writes() {
    let p = cluster("rotx-primary");
    p.psql("app", "CREATE TABLE t (v int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let r = replica(&p, "rotx-replica");
    // The replica applies WAL 300 ms late: close behind, never caught up
    // at once.
    r.psql(
        "postgres",
        "ALTER SYSTEM SET recovery_min_apply_delay = '300ms'",
    )
    .unwrap();
    r.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let proxy = proxy(&replicated_tenant(
        "acme",
        &[&p, &r],
        "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"5s\"",
        "read_only_transactions = true",
    ))
    .await;
    roles_known(&proxy, "acme", &[(&p, 1.0), (&r, 0.0)]).await;
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    let where_am_i = "SELECT inet_server_port(), pg_is_in_recovery()";
    let server = |rows: Vec<tokio_postgres::SimpleQueryMessage>| -> (u16, bool) {
        rows.into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0).unwrap().parse().unwrap(),
                    row.get(1) == Some("t"),
                )),
                _ => None,
            })
            .unwrap()
    };
    // Nothing written yet: BEGIN READ ONLY goes to the replica, a plain
    // transaction to the primary.
    let ro = client
        .simple_query(&format!("BEGIN READ ONLY; {where_am_i}; COMMIT"))
        .await
        .unwrap();
    assert_eq!(server(ro), (r.port(), true));
    assert_eq!(
        server(client.simple_query(where_am_i).await.unwrap()),
        (p.port(), false)
    );

    // Read-your-writes: every read-only transaction right after a write
    // sees it; while the replica has not replayed the write the read runs
    // on the primary, afterwards on the replica.
    let mut on_replica = 0;
    for i in 0..1000 {
        client
            .execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
        if i % 200 == 199 {
            // Long enough for the replica to replay it and a probe to see.
            tokio::time::sleep(Duration::from_millis(1200)).await;
        }
        let rows = client
            .simple_query("BEGIN READ ONLY; SELECT max(v), inet_server_port() FROM t; COMMIT")
            .await
            .unwrap();
        let (max, port) = rows
            .into_iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                    row.get(0).unwrap().parse::<i32>().unwrap(),
                    row.get(1).unwrap().parse::<u16>().unwrap(),
                )),
                _ => None,
            })
            .unwrap();
        assert_eq!(max, i, "a read-only transaction missed the client's write");
        if port == r.port() {
            on_replica += 1;
        }
    }
    assert!(
        on_replica >= 5,
        "reads never reached the replica ({on_replica})"
    );

    // Everything up to the next ReadyForQuery must be one read-only
    // transaction: a write after its COMMIT in the same Query stays on the
    // primary (found by review).
    client
        .batch_execute("BEGIN READ ONLY; COMMIT; INSERT INTO t VALUES (-1)")
        .await
        .unwrap();
    client
        .batch_execute("BEGIN READ ONLY; ROLLBACK; BEGIN; INSERT INTO t VALUES (-2); COMMIT")
        .await
        .unwrap();

    // Asynchronous commits (a commit record not yet written when the
    // probe reads the primary's position) are still seen (found by
    // review: the write position lagged the commit).
    p.psql("postgres", "ALTER SYSTEM SET wal_writer_delay = '3s'")
        .unwrap();
    p.psql("postgres", "SELECT pg_reload_conf()").unwrap();
    let mut async_commits = proxy.pg_config("app.acme");
    async_commits.options("-c synchronous_commit=off");
    let (lazy, _l) = connect(&async_commits).await.unwrap();
    for i in 2000..2005 {
        lazy.execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(700)).await;
        let seen: i64 = lazy
            .query_one("SELECT count(*) FROM t WHERE v = $1", &[&i])
            .await
            .map(|r| r.get(0))
            .unwrap_or(-1);
        let rows = lazy
            .simple_query(&format!(
                "BEGIN READ ONLY; SELECT count(*) FROM t WHERE v = {i}; COMMIT"
            ))
            .await
            .unwrap();
        let count = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(seen, 1);
        assert_eq!(
            count.as_deref(),
            Some("1"),
            "an asynchronous commit was not seen"
        );
    }
    p.psql("postgres", "ALTER SYSTEM RESET wal_writer_delay")
        .unwrap();
    p.psql("postgres", "SELECT pg_reload_conf()").unwrap();

    // A session whose transactions default to read only: every
    // transaction goes to the replica (once it has the writes), until the
    // client says otherwise.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    client
        .batch_execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        server(client.simple_query(where_am_i).await.unwrap()),
        (r.port(), true)
    );
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();
    assert_eq!(
        server(client.simple_query(where_am_i).await.unwrap()),
        (p.port(), false)
    );
    // BEGIN READ WRITE in a read-only session: the primary.
    client
        .batch_execute("SET default_transaction_read_only = on")
        .await
        .unwrap();
    let rw = client
        .simple_query(&format!("BEGIN READ WRITE; {where_am_i}; COMMIT"))
        .await
        .unwrap();
    assert_eq!(server(rw), (p.port(), false));
    client
        .batch_execute("SET default_transaction_read_only = off")
        .await
        .unwrap();

    // Found by review: each of these is valid on a dedicated connection to
    // the primary, and must still work with read-only routing on.
    // The last of repeated startup values wins, the startup parameter over
    // `options`, as PostgreSQL applies them.
    let mut repeated = proxy.pg_config("app.acme");
    repeated.options("-c default_transaction_read_only=on -c default-transaction-read-only=off");
    let (c, _c) = connect(&repeated).await.unwrap();
    c.batch_execute("INSERT INTO t VALUES (-3)").await.unwrap();
    // A quoted setting name changes the access mode as a bare one does.
    client
        .batch_execute("BEGIN READ ONLY; SET \"transaction_read_only\" = off; INSERT INTO t VALUES (-4); COMMIT")
        .await
        .unwrap();
    // What a read-only transaction may do on a primary but not on a
    // standby: NOTIFY, an xid, serializable.
    for sql in [
        "BEGIN READ ONLY; NOTIFY chan, 'x'; COMMIT",
        "BEGIN READ ONLY; SELECT pg_current_xact_id(); COMMIT",
        "BEGIN ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE; SELECT 1; COMMIT",
    ] {
        client
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let mut serializable = proxy.pg_config("app.acme");
    serializable.options("-c default_transaction_isolation=serializable");
    let (c, conn) = connect(&serializable).await.unwrap();
    c.batch_execute("BEGIN READ ONLY; SELECT 1; COMMIT")
        .await
        .unwrap();
    assert!(!conn.is_finished());
    // A role default a standby cannot run makes the replica refuse the
    // login: the read-only transaction runs on the primary instead of the
    // client losing its connection (second review); a client that asked
    // for a replica gets the standby's own refusal, as directly.
    p.psql(
        "postgres",
        "ALTER ROLE app IN DATABASE app SET default_transaction_isolation = 'serializable'",
    )
    .unwrap();
    eventually(
        Duration::from_secs(10),
        "the replica has the role's setting",
        || async {
            r.psql(
                "postgres",
                "SELECT count(*) FROM pg_db_role_setting WHERE setconfig::text LIKE '%serializable%'",
            )
            .is_ok_and(|n| n == "1")
        },
    )
    .await;
    // Fresh pools: backends log in again, with the role's new default.
    proxy.stop().await;
    let proxy = proxy_for(&replicated_tenant(
        "acme",
        &[&p, &r],
        "mode = \"transaction\"\nsize = 2\nacquire_timeout = \"5s\"",
        "read_only_transactions = true",
    ))
    .await;
    roles_known(&proxy, "acme", &[(&p, 1.0), (&r, 0.0)]).await;
    let mut ro_session = proxy.pg_config("app.acme");
    ro_session.options("-c default_transaction_read_only=on");
    let (c, conn) = connect(&ro_session).await.unwrap();
    assert_eq!(
        server(c.simple_query(where_am_i).await.unwrap()),
        (p.port(), false)
    );
    assert!(!conn.is_finished());
    assert_eq!(
        served_by(&proxy.pg_config("app.acme-ro"))
            .await
            .unwrap_err(),
        "0A000"
    );
    p.psql(
        "postgres",
        "ALTER ROLE app IN DATABASE app RESET default_transaction_isolation",
    )
    .unwrap();
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_clients_leave_a_promoted_replica_for_a_fit_one() {
    let p = cluster("promo-primary");
    let r1 = replica(&p, "promo-r1");
    let r2 = replica(&p, "promo-r2");
    let proxy = proxy(
        &(replicated_tenant(
            "acme",
            &[&p, &r1, &r2],
            "mode = \"transaction\"\nsize = 4\nacquire_timeout = \"5s\"",
            "",
        ) + &replicated_tenant(
            "sess",
            &[&p, &r1, &r2],
            "mode = \"session\"\nsize = 8\nacquire_timeout = \"5s\"",
            "",
        ) + &replicated_tenant("pt", &[&p, &r1, &r2], "", "").replacen(
            "[tenants.pool]\n\n",
            "auth = \"passthrough\"\n",
            1,
        )),
    )
    .await;
    for tenant in ["acme", "sess", "pt"] {
        roles_known(&proxy, tenant, &[(&p, 1.0), (&r1, 0.0), (&r2, 0.0)]).await;
    }
    // `standby` clients holding a server of their own (session mode,
    // passthrough), spread over both replicas.
    let mut holders = Vec::new();
    for tenant in ["sess", "pt"] {
        for _ in 0..4 {
            let mut config = proxy.pg_config(&format!("app.{tenant}"));
            config.options("-c target_session_attrs=standby");
            let (client, conn) = connect(&config).await.unwrap();
            let port: i32 = client
                .query_one("SELECT inet_server_port()", &[])
                .await
                .unwrap()
                .get(0);
            holders.push((tenant, port as u16, client, conn));
        }
    }
    assert!(holders.iter().any(|h| h.1 == r1.port()), "none on r1");
    // Read-only clients leave idle backends on both replicas.
    let ro = proxy.pg_config("app.acme-ro");
    let mut held = Vec::new();
    let mut ports = BTreeSet::new();
    for _ in 0..4 {
        let (client, conn) = connect(&ro).await.unwrap();
        client.batch_execute("BEGIN").await.unwrap();
        let port: i32 = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .unwrap()
            .get(0);
        ports.insert(port as u16);
        held.push((client, conn));
    }
    assert_eq!(ports, BTreeSet::from([r1.port(), r2.port()]));
    for (client, _) in &held {
        client.batch_execute("COMMIT").await.unwrap();
    }
    // r1 is promoted: the read-only clients, old and new, go to r2, the
    // replica still fit, not to the promoted server (found by review).
    r1.promote().unwrap();
    roles_known(&proxy, "acme", &[(&r1, 1.0), (&r2, 0.0)]).await;
    for (client, _) in &held {
        let row = client
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await
            .unwrap();
        assert_eq!(
            (row.get::<_, i32>(0) as u16, row.get::<_, bool>(1)),
            (r2.port(), true),
            "a read-only client stayed on the promoted server"
        );
    }
    for _ in 0..4 {
        assert_eq!(served_by(&ro).await.unwrap(), (r2.port(), true));
    }
    // The standby clients held on r1 are ended (third review: they stayed
    // on the promoted server for good); those on r2 go on.
    for (tenant, port, client, conn) in &holders {
        let result = client
            .query_one("SELECT inet_server_port(), pg_is_in_recovery()", &[])
            .await;
        if *port == r1.port() {
            match result {
                Err(e) => assert!(code_of(&e) == "57P01" || e.is_closed(), "{tenant}: {e:?}"),
                Ok(row) => panic!(
                    "{tenant}: a standby client ran on the promoted server (recovery {})",
                    row.get::<_, bool>(1)
                ),
            }
            eventually(Duration::from_secs(5), "the client is closed", || async {
                conn.is_finished()
            })
            .await;
        } else {
            let row = result.unwrap();
            assert_eq!(
                (row.get::<_, i32>(0) as u16, row.get::<_, bool>(1)),
                (r2.port(), true)
            );
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_on_the_old_timeline_gets_no_reads_after_a_failover() {
    let mut p = cluster("tl-primary");
    p.psql("app", "CREATE TABLE t (v int); ALTER TABLE t OWNER TO app")
        .unwrap();
    let mut r1 = replica(&p, "tl-r1");
    let r2 = replica(&p, "tl-r2");
    caught_up(&p, &r1).await;
    let proxy = proxy(&replicated_tenant(
        "acme",
        &[&p, &r1, &r2],
        "mode = \"transaction\"\nsize = 4\nacquire_timeout = \"10s\"",
        "read_only_transactions = true",
    ))
    .await;
    roles_known(&proxy, "acme", &[(&p, 1.0), (&r1, 0.0), (&r2, 0.0)]).await;
    // r1 stops; the primary writes on and r2 replays it; then the primary
    // goes and r1, the one behind, is promoted. r2 now holds WAL the new
    // primary never had, at a position past the new primary's.
    // One row: the new primary's own promotion writes more WAL than that,
    // so r2 is soon behind it by position while still off its history
    // (found by the second review: the position rule alone missed it).
    r1.stop("fast").unwrap();
    p.psql("app", "INSERT INTO t VALUES (-1)").unwrap();
    caught_up(&p, &r2).await;
    p.stop("fast").unwrap();
    r1.restart().unwrap();
    r1.promote().unwrap();
    let r2_label = r2.addr().to_string();
    excluded_becomes(
        &proxy,
        "acme",
        &r2_label,
        true,
        10,
        "the diverged replica is excluded",
    )
    .await;
    let shown = show_replication(&proxy).await;
    assert!(
        shown
            .iter()
            .any(|row| row.1 == r2_label && row.3.starts_with("diverged")),
        "{shown:?}"
    );
    // Read-your-writes holds, and no read sees rows the new primary does
    // not have (found by review).
    let (client, _c) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    for i in 0..5 {
        client
            .execute("INSERT INTO t VALUES ($1)", &[&i])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let rows = client
            .simple_query(&format!(
                "BEGIN READ ONLY; SELECT count(*) FILTER (WHERE v = {i}), count(*) FILTER (WHERE v < 0) FROM t; COMMIT"
            ))
            .await
            .unwrap();
        let counts = rows.iter().find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some((
                row.get(0).unwrap().to_owned(),
                row.get(1).unwrap().to_owned(),
            )),
            _ => None,
        });
        assert_eq!(counts, Some(("1".into(), "0".into())), "read {i}");
    }
    for _ in 0..4 {
        let (port, _) = served_by(&proxy.pg_config("app.acme-ro")).await.unwrap();
        assert_ne!(port, r2.port(), "a read reached the diverged replica");
    }
    proxy.stop().await;
}

/// What a pgbench run through a failover did: from its per-transaction
/// log and its output.
struct PgbenchRun {
    /// When each transaction ended (microseconds since the epoch).
    ended_us: Vec<u128>,
    /// Clients pgbench gave up on, and why.
    aborted: Vec<String>,
    /// Every error line.
    errors: Vec<String>,
}

/// Runs pgbench's TPC-B-like script through `port` as `user` for
/// `seconds`, throttled to `rate` transactions a second, so clients sit
/// idle between transactions as an application's do.
fn pgbench_logged(port: u16, user: &str, seconds: u32, rate: u32) -> PgbenchRun {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("tx");
    let (_, out) = pgbench_with(
        port,
        user,
        &[
            "-c",
            "4",
            "-j",
            "2",
            "-R",
            &rate.to_string(),
            "-T",
            &seconds.to_string(),
            "-l",
            &format!("--log-prefix={}", prefix.display()),
        ],
        &[],
    );
    let mut ended_us = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            // client_id transaction_no time script_no time_epoch time_us
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 || f[2] == "failed" || f[2] == "skipped" {
                continue;
            }
            ended_us
                .push(f[4].parse::<u128>().unwrap() * 1_000_000 + f[5].parse::<u128>().unwrap());
        }
    }
    let errors: Vec<String> = out
        .lines()
        .filter(|l| l.contains("error") || l.contains("FATAL") || l.contains("ERROR"))
        .map(str::to_owned)
        .collect();
    // "client N script 0 aborted in command …", not pgbench's summary.
    let aborted = errors
        .iter()
        .filter(|l| l.contains("client") && l.contains("aborted"))
        .cloned()
        .collect();
    PgbenchRun {
        ended_us,
        aborted,
        errors,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_through_a_failover() {
    let mut p = cluster("bench-failover-primary");
    init_pgbench(&p);
    let r = replica(&p, "bench-failover-replica");
    caught_up(&p, &r).await;
    let proxy = proxy(&replicated_tenant(
        "acme",
        &[&p, &r],
        "mode = \"transaction\"\nsize = 4\nacquire_timeout = \"10s\"",
        "",
    ))
    .await;
    roles_known(&proxy, "acme", &[(&p, 1.0), (&r, 0.0)]).await;

    // The failover happens 3 s into a 9 s run.
    let port = proxy.addr.port();
    let bench = tokio::task::spawn_blocking(move || pgbench_logged(port, "app.acme", 9, 40));
    // A writer that is idle between its transactions measures when writes
    // succeed again.
    let (writer, _w) = connect(&proxy.pg_config("app.acme")).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    p.stop("fast").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    r.promote().unwrap();
    let promoted = Instant::now();
    let promoted_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros();
    let mut writes_back = None;
    while promoted.elapsed() < Duration::from_secs(5) {
        match writer
            .query_one(
                "UPDATE pgbench_branches SET bbalance = bbalance WHERE bid = 1 \
                 RETURNING inet_server_port(), pg_is_in_recovery()",
                &[],
            )
            .await
        {
            Ok(row) => {
                assert_eq!(
                    (row.get::<_, i32>(0) as u16, row.get::<_, bool>(1)),
                    (r.port(), false),
                    "a write landed off the new primary"
                );
                writes_back = Some(promoted.elapsed());
                break;
            }
            Err(e) => {
                // Never a server in recovery (25006), never a lost
                // connection for an idle client.
                assert_ne!(code_of(&e), "25006", "{e}");
                assert!(!e.is_closed(), "the idle writer lost its connection");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    let writes_back = writes_back.expect("writes never succeeded after the promotion");
    let run = bench.await.unwrap();
    let run_after = run.ended_us.iter().filter(|&&t| t > promoted_us).count();
    eprintln!(
        "pgbench through a failover: {} transactions, {} after the promotion, {} clients lost, \
         writes back {writes_back:?} after the promotion; errors: {:?}",
        run.ended_us.len(),
        run_after,
        run.aborted.len(),
        run.errors
    );
    assert!(
        writes_back < Duration::from_secs(2),
        "writes succeeded {writes_back:?} after the promotion"
    );
    // No write reached a server in recovery.
    assert!(
        !run.errors
            .iter()
            .any(|l| l.contains("read-only transaction")),
        "{:?}",
        run.errors
    );
    // A client is lost only when it was inside a transaction when the
    // primary stopped, with PostgreSQL's own words; the idle ones went on.
    assert!(
        run.aborted.len() < 4,
        "every client was lost: {:?}",
        run.aborted
    );
    for line in &run.aborted {
        assert!(
            line.contains("terminating connection due to administrator command")
                || line.contains("server connection lost")
                || line.contains("server closed the connection unexpectedly")
                // pgbench's words for a connection that closed under a
                // statement (a transaction cut short by the stop).
                || line.contains("perhaps the backend died while processing"),
            "a client was lost for another reason: {line}"
        );
    }
    assert!(
        run_after > 40,
        "few transactions after the promotion: {run_after}"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passthrough_login_never_reaches_a_server_in_recovery() {
    let mut p = cluster("pt-failover-primary");
    let r = replica(&p, "pt-failover-replica");
    // The probe looks once, at start: what a failover looks like before
    // the next probe round.
    let tenant = replicated_tenant("pt", &[&p, &r], "", "")
        .replacen("[tenants.pool]\n\n", "auth = \"passthrough\"\n", 1)
        .replacen("probe_interval = \"200ms\"", "probe_interval = \"1h\"", 1);
    let proxy = proxy(&tenant).await;
    roles_known(&proxy, "pt", &[(&p, 1.0), (&r, 0.0)]).await;
    assert_eq!(
        served_by(&proxy.pg_config("app.pt")).await.unwrap(),
        (p.port(), false)
    );
    // The old primary comes back as a standby of the promoted replica;
    // pgcell's picture still has it as the primary.
    p.stop("fast").unwrap();
    r.promote().unwrap();
    p.restart_as_standby_of(&r).unwrap();
    // The login that finds the stale primary in recovery is refused with
    // a clear error before the client can write anything.
    let error = connect(&proxy.pg_config("app.pt")).await.unwrap_err();
    assert_eq!(code_of(&error), "57P03", "{error}");
    let message = error.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("changed role"), "{message}");
    // The next login goes to the promoted server, and keeps going there.
    for _ in 0..3 {
        assert_eq!(
            served_by(&proxy.pg_config("app.pt")).await.unwrap(),
            (r.port(), false)
        );
    }
    // A read-only client is still served by the standby.
    let mut ro = proxy.pg_config("app.pt");
    ro.options("-c target_session_attrs=standby");
    assert_eq!(served_by(&ro).await.unwrap(), (p.port(), true));
    proxy.stop().await;
}
