//! `[tenants.auth_query]`: pgcell fetches users' SCRAM secrets from the
//! tenant's backend through an unprivileged auth role and a
//! `SECURITY DEFINER` function (the way operators set it up), caches them,
//! refreshes them on failure, and logs in to the backend with the ClientKey
//! recovered from the client's proof: no password of `app` in pgcell.

use std::time::{Duration, Instant};

use crate::harness::*;

const AUTH_PASSWORD: &str = "auth-secret";

/// The auth role and the function it may call, in database `app`.
fn create_auth_role(cluster: &pgcell::Cluster) {
    cluster
        .psql(
            "postgres",
            &format!("CREATE ROLE pgcell_auth LOGIN PASSWORD '{AUTH_PASSWORD}'"),
        )
        .unwrap();
    cluster
        .psql(
            "app",
            "CREATE FUNCTION public.get_auth(u text) RETURNS text \
             LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog \
             AS $$ SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = u $$",
        )
        .unwrap();
    cluster
        .psql(
            "app",
            "REVOKE ALL ON FUNCTION public.get_auth(text) FROM PUBLIC; \
             GRANT EXECUTE ON FUNCTION public.get_auth(text) TO pgcell_auth",
        )
        .unwrap();
}

/// A transaction-pooled tenant whose users all come from auth_query.
fn auth_query_tenant(id: &str, cluster: &pgcell::Cluster, pw_file: &str, query: &str) -> String {
    format!(
        "{}[tenants.pool]\nmode = \"transaction\"\nsize = 2\n\
         [tenants.auth_query]\nuser = \"pgcell_auth\"\npassword_file = \"{{{pw_file}}}\"\nquery = \"{query}\"\n",
        tenant(id, cluster, "")
    )
}

fn login_as(proxy: &Proxy, user: &str, password: &str) -> tokio_postgres::Config {
    let mut c = proxy.pg_config(user);
    c.password(password);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_come_from_the_backend_and_refresh_on_failure() {
    let a = cluster("cluster-authq");
    create_auth_role(&a);
    let text = config_text(
        "",
        "allow",
        &(auth_query_tenant("aq", &a, "pw", "SELECT public.get_auth($1)")
            + &auth_query_tenant("aqbadauth", &a, "badpw", "SELECT public.get_auth($1)")
            + &auth_query_tenant("aqnofunc", &a, "pw", "SELECT public.no_such_function($1)")),
    );
    let proxy = Proxy::start_with_files(
        &text,
        &[("pw", AUTH_PASSWORD), ("badpw", "not-the-password")],
    )
    .await;

    // `app` is in no [[tenants.users]]: its secret comes from the backend,
    // and the backend login uses the ClientKey from this client's proof.
    let (client, _c) = connect(&proxy.pg_config("app.aq")).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-authq");
    assert_eq!(current_user(&client).await, "app");
    // SCRAM-SHA-256-PLUS over TLS works the same way.
    let out = psql(
        &format!(
            "host=127.0.0.1 port={} user=app.aq dbname=app sslmode=require channel_binding=require",
            proxy.addr.port()
        ),
        "select 1",
    )
    .unwrap();
    assert_eq!(out, "1");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(
            &m,
            "pgcell_auth_query_cache_misses_total",
            &[("tenant", "aq")]
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        metric(
            &m,
            "pgcell_auth_query_cache_hits_total",
            &[("tenant", "aq")]
        )
        .unwrap()
            >= 1.0
    );

    // Wrong password and unknown user: the same answer after the same wait.
    let started = Instant::now();
    let wrong = connect(&login_as(&proxy, "app.aq", "nope"))
        .await
        .err()
        .unwrap();
    let wrong_wait = started.elapsed();
    let started = Instant::now();
    let unknown = connect(&login_as(&proxy, "ghost.aq", "nope"))
        .await
        .err()
        .unwrap();
    let unknown_wait = started.elapsed();
    assert_eq!(code_of(&wrong), "28P01");
    assert_eq!(code_of(&unknown), "28P01");
    assert_eq!(
        wrong
            .as_db_error()
            .unwrap()
            .message()
            .replace("\"app\"", "\"X\""),
        unknown
            .as_db_error()
            .unwrap()
            .message()
            .replace("\"ghost\"", "\"X\"")
    );
    assert!(wrong_wait >= Duration::from_millis(500));
    assert!(unknown_wait >= Duration::from_millis(500));
    // A role without a SCRAM secret (md5) is as unknown as no role.
    a.psql(
        "postgres",
        "SET password_encryption = 'md5'; CREATE ROLE legacy LOGIN PASSWORD 'legacy-pw'",
    )
    .unwrap();
    let legacy = connect(&login_as(&proxy, "legacy.aq", "legacy-pw"))
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&legacy), "28P01");

    // Cache the current secret, then change the password in the cluster.
    let (_warm, _w) = connect(&proxy.pg_config("app.aq")).await.unwrap();
    a.psql("postgres", "ALTER ROLE app PASSWORD 'changed-secret'")
        .unwrap();
    // The cached secret is stale: the new password fails once, which drops
    // the entry; the next attempt fetches the new secret.
    let stale = connect(&login_as(&proxy, "app.aq", "changed-secret"))
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&stale), "28P01");
    let (fresh, _f) = connect(&login_as(&proxy, "app.aq", "changed-secret"))
        .await
        .unwrap();
    // A backend opened after the change logs in with the new ClientKey:
    // one client holds a backend in a transaction, the other needs a
    // second one.
    let (other, _o) = connect(&login_as(&proxy, "app.aq", "changed-secret"))
        .await
        .unwrap();
    fresh.simple_query("begin").await.unwrap();
    fresh.simple_query("select 1").await.unwrap();
    other.simple_query("begin").await.unwrap();
    let pids: Vec<i32> = vec![
        fresh
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0),
        other
            .query_one("select pg_backend_pid()", &[])
            .await
            .unwrap()
            .get(0),
    ];
    assert_ne!(pids[0], pids[1]);
    fresh.simple_query("commit").await.unwrap();
    other.simple_query("commit").await.unwrap();
    // And the old password no longer gets in.
    let old = connect(&proxy.pg_config("app.aq")).await.err().unwrap();
    assert_eq!(code_of(&old), "28P01");

    // The auth role cannot log in, or the query fails: the client's
    // password may be right, so not 28P01 but 08006; the reason is
    // logged and counted.
    for (tenant, reason) in [("aqbadauth", "login_refused"), ("aqnofunc", "query")] {
        let err = connect(&login_as(
            &proxy,
            &format!("app.{tenant}"),
            "changed-secret",
        ))
        .await
        .err()
        .unwrap();
        assert_eq!(code_of(&err), "08006", "{tenant}: {err}");
        assert_eq!(
            err.as_db_error().unwrap().message(),
            "could not verify credentials"
        );
        let m = proxy.metrics().await;
        assert_eq!(
            metric(
                &m,
                "pgcell_auth_query_errors_total",
                &[("tenant", tenant), ("reason", reason)]
            ),
            Some(1.0),
            "{tenant}: {m}"
        );
        assert!(
            metric(
                &m,
                "pgcell_auth_failures_total",
                &[("tenant", tenant), ("reason", "auth_query")]
            )
            .unwrap()
                >= 1.0
        );
    }
    proxy.stop().await;
}
