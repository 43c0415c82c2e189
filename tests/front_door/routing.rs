//! Each routing source lands on the right cluster; conflicts, unknown and
//! missing tenants get 08004 with a hint; policy refusals get 28000/53300.

use crate::harness::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_lands_on_its_tenants_cluster() {
    let a = cluster("cluster-a");
    let b = cluster("cluster-b");
    let text = config_text(
        "",
        "allow",
        &(tenant("alpha", &a, "") + &tenant("beta", &b, "")),
    );
    let proxy = Proxy::start(&text).await;

    // options=tenant=ID, plaintext, tokio-postgres.
    let mut cfg = proxy.pg_config("app");
    cfg.options("-c statement_timeout=5s tenant=alpha");
    let (client, _conn) = connect(&cfg).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-a");
    // The tenant token left `options`; the rest reached the backend.
    let timeout: String = client
        .query_one("show statement_timeout", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(timeout, "5s");

    // endpoint=ID alias.
    let mut cfg = proxy.pg_config("app");
    cfg.options("endpoint=beta");
    let (client, _conn) = connect(&cfg).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-b");

    // USER.TENANT, rewritten to USER for the backend.
    let (client, _conn) = connect(&proxy.pg_config("app.beta")).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-b");
    assert_eq!(current_user(&client).await, "app");

    // SNI over TLS, tokio-postgres on a pgcell TLS stream.
    let tls = proxy.tls_stream("alpha.pg.test").await;
    let client = connect_over(&proxy.pg_config("app"), tls).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-a");

    // psql (libpq): TLS + options, and TLS + SNI via hostaddr.
    let port = proxy.addr.port();
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=app dbname=app options='tenant=beta' sslmode=require"),
        "select current_setting('cluster_name') || ' ' || (select ssl::text from pg_stat_ssl where pid = pg_backend_pid())",
    )
    .unwrap();
    // TLS ends at pgcell: the backend connection is plaintext here.
    assert_eq!(out, "cluster-b false");
    let out = psql(
        &format!(
            "host=alpha.pg.test hostaddr=127.0.0.1 port={port} user=app dbname=app sslmode=require"
        ),
        "select current_setting('cluster_name')",
    )
    .unwrap();
    assert_eq!(out, "cluster-a");
    // libpq's default channel_binding=prefer works: SCRAM-SHA-256-PLUS is
    // not offered through pgcell.
    let out = psql(
        &format!("host=127.0.0.1 port={port} user=app.alpha dbname=app sslmode=verify-ca sslrootcert={} channel_binding=prefer",
            proxy.dir.path().join("ca.crt").display()),
        "select 1",
    )
    .unwrap();
    assert_eq!(out, "1");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_unknown_and_missing_tenants_are_refused_clearly() {
    let a = cluster("cluster-c");
    let text = config_text(
        "",
        "allow",
        &(tenant("alpha", &a, "") + &tenant("secret-tenant", &a, "")),
    );
    let proxy = Proxy::start(&text).await;
    let port = proxy.addr.port();

    // Two sources, two tenants.
    let mut cfg = proxy.pg_config("app.alpha");
    cfg.options("tenant=secret-tenant");
    let err = connect(&cfg).await.err().unwrap();
    assert_eq!(code_of(&err), "08004");

    // Unknown tenant: says how to name one, names no configured tenant.
    let err = psql(
        &format!("host=127.0.0.1 port={port} user=app dbname=app options='tenant=nosuch' sslmode=disable"),
        "select 1",
    )
    .unwrap_err();
    assert!(err.contains("unknown tenant \"nosuch\""), "{err}");
    assert!(err.contains("options=tenant=<tenant>"), "{err}");
    assert!(
        !err.contains("secret-tenant") && !err.contains("alpha"),
        "{err}"
    );

    // Missing tenant.
    let err = connect(&proxy.pg_config("app")).await.err().unwrap();
    assert_eq!(code_of(&err), "08004");
    let db = err.as_db_error().unwrap();
    assert_eq!(db.message(), "no tenant specified");
    assert!(db.hint().unwrap().contains("<tenant>.pg.test"));

    // Same tenant from two sources is fine.
    let tls = proxy.tls_stream("alpha.pg.test").await;
    let client = connect_over(&proxy.pg_config("app.alpha"), tls)
        .await
        .unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-c");

    let m = proxy.metrics().await;
    for reason in ["tenant_conflict", "unknown_tenant", "missing_tenant"] {
        assert!(
            metric(&m, "pgcell_client_rejections_total", &[("reason", reason)]).unwrap_or(0.0)
                >= 1.0,
            "no {reason} rejection in metrics"
        );
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_policy_runs_before_authentication() {
    let a = cluster("cluster-d");
    let text = config_text(
        "",
        "allow",
        &(tenant("tls-only", &a, "require_tls = true")
            + &tenant("small", &a, "max_client_connections = 1")
            + &tenant("office", &a, "allowed_cidrs = [\"10.0.0.0/8\"]")),
    );
    let proxy = Proxy::start(&text).await;

    // require_tls: plaintext refused with 28000, before any password.
    let mut cfg = proxy.pg_config("app.tls-only");
    cfg.password("wrong password: never asked for");
    let err = connect(&cfg).await.err().unwrap();
    assert_eq!(code_of(&err), "28000");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "connection not authorized"
    );
    // Over TLS it works.
    let tls = proxy.tls_stream("tls-only.pg.test").await;
    let client = connect_over(&proxy.pg_config("app"), tls).await.unwrap();
    client.simple_query("select 1").await.unwrap();

    // Client address outside allowed_cidrs (127.0.0.1 here).
    let err = connect(&proxy.pg_config("app.office")).await.err().unwrap();
    assert_eq!(code_of(&err), "28000");

    // max_client_connections = 1: the second client gets 53300; once the
    // first leaves, a new one gets in.
    let (first, conn) = connect(&proxy.pg_config("app.small")).await.unwrap();
    let err = connect(&proxy.pg_config("app.small")).await.err().unwrap();
    assert_eq!(code_of(&err), "53300");
    drop(first);
    let _ = conn.await;
    eventually(
        std::time::Duration::from_secs(3),
        "the slot is released",
        || async { connect(&proxy.pg_config("app.small")).await.is_ok() },
    )
    .await;

    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "pgcell_client_rejections_total",
            &[("reason", "tls_required"), ("tenant", "tls-only")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &m,
            "pgcell_client_rejections_total",
            &[("reason", "cidr_not_allowed"), ("tenant", "office")]
        )
        .unwrap()
            >= 1.0
    );
    assert!(
        metric(
            &m,
            "pgcell_client_rejections_total",
            &[("reason", "tenant_connection_limit"), ("tenant", "small")]
        )
        .unwrap()
            >= 1.0
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_is_the_backends_answer() {
    let a = cluster("cluster-e");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("alpha", &a, ""))).await;
    let mut cfg = proxy.pg_config("app.alpha");
    cfg.password("not the password");
    let err = connect(&cfg).await.err().unwrap();
    assert_eq!(code_of(&err), "28P01");
    // And the proxy keeps serving.
    let (client, _c) = connect(&proxy.pg_config("app.alpha")).await.unwrap();
    assert_eq!(cluster_name(&client).await, "cluster-e");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_client_limit_gets_53300() {
    let a = cluster("cluster-global");
    let proxy = Proxy::start(&config_text(
        "max_client_connections = 1",
        "allow",
        &tenant("alpha", &a, ""),
    ))
    .await;
    let (first, _c) = connect(&proxy.pg_config("app.alpha")).await.unwrap();
    let err = connect(&proxy.pg_config("app.alpha")).await.err().unwrap();
    assert_eq!(code_of(&err), "53300");
    assert_eq!(
        err.as_db_error().unwrap().message(),
        "sorry, too many clients already"
    );
    first.simple_query("select 1").await.unwrap();
    let m = proxy.metrics().await;
    assert!(
        metric(
            &m,
            "pgcell_client_rejections_total",
            &[("reason", "global_connection_limit"), ("tenant", "")]
        )
        .unwrap()
            >= 1.0
    );
    drop(first);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_connections_are_refused() {
    let a = cluster("cluster-repl");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("alpha", &a, ""))).await;
    let port = proxy.addr.port();
    let err = psql(
        &format!("host=127.0.0.1 port={port} user=app.alpha dbname=app replication=database sslmode=disable"),
        "IDENTIFY_SYSTEM",
    )
    .unwrap_err();
    assert!(
        err.contains("replication connections are not accepted"),
        "{err}"
    );
    proxy.stop().await;
}

/// Every form of `options` PostgreSQL accepts names the tenant, and the
/// token leaves `options` in each: the backend then applies exactly what
/// direct PostgreSQL applies to the same `options` without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_tenant_in_every_postgres_form() {
    let a = cluster("cluster-opts");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("acme", &a, ""))).await;
    let rest = r"-cwork_mem=5MB --search-path=a,\ b -c application_name=opt\ test";
    let settings = "select current_setting('work_mem'), current_setting('search_path'), \
                    current_setting('application_name')";
    let rows = |client: tokio_postgres::Client| async move {
        let row = client.query_one(settings, &[]).await.unwrap();
        (0..3).map(|i| row.get::<_, String>(i)).collect::<Vec<_>>()
    };
    let mut direct = tokio_postgres::Config::new();
    direct
        .host("127.0.0.1")
        .port(a.port())
        .user("app")
        .password(APP_PASSWORD)
        .dbname("app")
        .options(rest);
    let (client, _c) = connect(&direct).await.unwrap();
    let want = rows(client).await;
    assert_eq!(want, ["5MB", "a, b", "opt test"]);

    for form in [
        "-ctenant=acme",
        "--tenant=acme",
        "-c tenant=acme",
        r"--tenant=ac\me",
        "-c endpoint=acme",
    ] {
        for options in [format!("{form} {rest}"), format!("{rest} {form}")] {
            let mut cfg = proxy.pg_config("app");
            cfg.options(&options);
            let (client, _c) = connect(&cfg)
                .await
                .unwrap_or_else(|e| panic!("{options}: {e}"));
            assert_eq!(rows(client).await, want, "{options}");
        }
    }
    proxy.stop().await;
}
