//! The admin console: database `pgcell` on the data port, for the users in
//! `[[admin.users]]`. SHOW output, PAUSE/RESUME, RELOAD, errors that leave
//! the console usable, refused logins, and the pool gauges on `/metrics`.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::harness::*;

const ADMIN_PASSWORD: &str = "console-secret";

/// A transaction-mode tenant `shop` (the `app` user) plus an admin user.
fn console_config(cluster: &pgcell::Cluster, extra_tenants: &str) -> String {
    config_text(
        "",
        "allow",
        &format!(
            "{}[tenants.pool]\nmode = \"transaction\"\nsize = 2\nacquire_timeout = \"10s\"\n[[tenants.users]]\nname = \"app\"\npassword_file = \"{{pw}}\"\n{extra_tenants}\n[[admin.users]]\nname = \"admin\"\npassword_file = \"{{adminpw}}\"\n",
            tenant("shop", cluster, "")
        ),
    )
}

fn admin_config(proxy: &Proxy, user: &str, password: &str) -> tokio_postgres::Config {
    let mut c = proxy.pg_config(user);
    c.dbname("pgcell").password(password);
    c
}

/// Rows of a simple query as `|`-joined lines, and the column names.
async fn rows(client: &Client, sql: &str) -> (Vec<String>, Vec<String>) {
    let mut columns = Vec::new();
    let mut out = Vec::new();
    for m in client.simple_query(sql).await.unwrap() {
        if let SimpleQueryMessage::Row(row) = m {
            columns = row.columns().iter().map(|c| c.name().to_owned()).collect();
            out.push(
                (0..row.len())
                    .map(|i| row.get(i).unwrap_or("").to_owned())
                    .collect::<Vec<_>>()
                    .join("|"),
            );
        }
    }
    (columns, out)
}

/// The `shop` row of SHOW POOLS.
async fn shop_pool(admin: &Client) -> String {
    let (_, pools) = rows(admin, "show pools").await;
    pools
        .into_iter()
        .find(|r| r.starts_with("shop|"))
        .unwrap_or_default()
}

/// Waits (briefly) for the `shop` row of SHOW POOLS to read `want`: a
/// client sees its answer a moment before pgcell hands the backend back.
async fn shop_pool_becomes(admin: &Client, want: &str) {
    eventually(
        Duration::from_secs(2),
        &format!("shop pool {want}"),
        || async {
            let row = shop_pool(admin).await;
            if row == want {
                Ok(())
            } else {
                Err(row)
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_console_shows_pauses_and_reloads() {
    let a = cluster("cluster-console");
    let proxy = Proxy::start_with_files(
        &console_config(&a, ""),
        &[("pw", APP_PASSWORD), ("adminpw", ADMIN_PASSWORD)],
    )
    .await;
    let port = proxy.addr.port();

    let (app, _c) = connect(&proxy.pg_config("app.shop")).await.unwrap();
    app.simple_query("select 1").await.unwrap();

    // psql, as an operator would use it.
    let stdout = psql_with(
        &format!("host=127.0.0.1 port={port} user=admin dbname=pgcell sslmode=require"),
        "SHOW POOLS;",
        ADMIN_PASSWORD,
    )
    .unwrap_or_else(|stderr| panic!("{stderr}"));
    // One backend, idle between the client's transactions.
    assert_eq!(stdout, "shop|app|app|transaction|2|1|1|0|0|no");

    let (admin, _ac) = connect(&admin_config(&proxy, "admin", ADMIN_PASSWORD))
        .await
        .unwrap();
    let (columns, _) = rows(&admin, "SHOW POOLS").await;
    assert_eq!(
        columns,
        [
            "tenant", "database", "user", "mode", "size", "open", "idle", "in_use", "waiting",
            "paused"
        ]
    );

    // SHOW CLIENTS lists the client; inside a transaction it is active and
    // SHOW SERVERS shows its backend in use by it.
    let (_, clients) = rows(&admin, "show clients").await;
    assert_eq!(clients.len(), 1, "{clients:?}");
    let fields: Vec<&str> = clients[0].split('|').collect();
    assert_eq!(&fields[1..4], ["shop", "app", "app"]);
    assert!(fields[4].starts_with("127.0.0.1:"), "{fields:?}");
    assert_eq!(fields[5], "no");
    assert_eq!(fields[6], "idle");
    let client_id = fields[0].to_owned();
    app.simple_query("begin").await.unwrap();
    let (_, clients) = rows(&admin, "show clients").await;
    assert!(clients[0].contains("|active|"), "{clients:?}");
    let (_, servers) = rows(&admin, "show servers").await;
    assert_eq!(servers.len(), 1, "{servers:?}");
    assert!(
        servers[0].contains(&format!("|in use|{client_id}|")),
        "{servers:?}"
    );
    assert_eq!(
        shop_pool(&admin).await,
        "shop|app|app|transaction|2|1|0|1|0|no"
    );
    app.simple_query("commit").await.unwrap();

    // Gauges on /metrics carry the same figures.
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "pgcell_pool_size", &[("tenant", "shop")]),
        Some(2.0)
    );
    assert_eq!(
        metric(&m, "pgcell_pool_backends_open", &[("tenant", "shop")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "pgcell_pool_backends_idle", &[("tenant", "shop")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "pgcell_pool_backends_in_use", &[("tenant", "shop")]),
        Some(0.0)
    );
    assert_eq!(
        metric(&m, "pgcell_pool_paused", &[("tenant", "shop")]),
        Some(0.0)
    );

    // PAUSE: a new transaction waits; RESUME lets it run.
    admin.simple_query("PAUSE shop;").await.unwrap();
    let waiting = tokio::spawn(async move { app.simple_query("select 2").await.map(|_| app) });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!waiting.is_finished(), "a paused pool handed out a backend");
    assert_eq!(
        shop_pool(&admin).await,
        "shop|app|app|transaction|2|1|1|0|1|yes"
    );
    let (_, clients) = rows(&admin, "show clients").await;
    assert!(clients[0].contains("|waiting|"), "{clients:?}");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "pgcell_pool_paused", &[("tenant", "shop")]),
        Some(1.0)
    );
    admin.simple_query("resume shop").await.unwrap();
    let app = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("resumed transaction runs")
        .unwrap()
        .unwrap();
    shop_pool_becomes(&admin, "shop|app|app|transaction|2|1|1|0|0|no").await;

    // SHOW STATS reads the same registry as /metrics.
    let (_, stats) = rows(&admin, "show stats").await;
    let shop: Vec<&str> = stats
        .iter()
        .find(|r| r.starts_with("shop|"))
        .expect("shop stats")
        .split('|')
        .collect();
    assert!(shop[1].parse::<u64>().unwrap() >= 3, "{shop:?}");
    assert!(shop[2].parse::<u64>().unwrap() > 0, "{shop:?}");
    assert!(shop[3].parse::<u64>().unwrap() > 0, "{shop:?}");
    let m = proxy.metrics().await;
    assert_eq!(
        metric(&m, "pgcell_transactions_total", &[("tenant", "shop")]),
        Some(shop[1].parse::<f64>().unwrap())
    );

    // Unknown commands and the extended protocol get errors; the console
    // stays usable.
    let err = admin.simple_query("show databases").await.unwrap_err();
    assert_eq!(code_of(&err), "42601");
    let err = admin.simple_query("PAUSE nosuch").await.unwrap_err();
    assert_eq!(code_of(&err), "42704");
    let err = admin.query("show pools", &[]).await.unwrap_err();
    assert_eq!(code_of(&err), "0A000");
    let (_, tenants) = rows(&admin, "show tenants").await;
    assert_eq!(
        tenants,
        [format!("shop|scram|transaction|1|1|no|{}", a.addr())]
    );

    // RELOAD applies a new config file, as SIGHUP does.
    let text = console_config(&a, &tenant("extra", &a, ""));
    let pw = proxy.dir.path().join("pw");
    let adminpw = proxy.dir.path().join("adminpw");
    std::fs::write(&pw, APP_PASSWORD).unwrap();
    std::fs::write(&adminpw, ADMIN_PASSWORD).unwrap();
    let text = text
        .replace("{pw}", &pw.display().to_string())
        .replace("{adminpw}", &adminpw.display().to_string());
    write(&proxy.config_path(), &text);
    admin.simple_query("RELOAD").await.unwrap();
    let (_, tenants) = rows(&admin, "show tenants").await;
    assert_eq!(tenants.len(), 2, "{tenants:?}");
    assert!(
        tenants[1].starts_with("extra|passthrough|none|0|0|no|"),
        "{tenants:?}"
    );
    // A broken file is refused and the running configuration stays.
    write(&proxy.config_path(), "[listen]\naddr = 5\n");
    let err = admin.simple_query("reload").await.unwrap_err();
    assert_eq!(code_of(&err), "22023");
    assert_eq!(rows(&admin, "show tenants").await.1.len(), 2);
    app.simple_query("select 3").await.unwrap();

    // Only admin users get in, with the right password.
    let err = connect(&admin_config(&proxy, "app", APP_PASSWORD))
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&err), "28P01");
    let err = connect(&admin_config(&proxy, "admin", "wrong"))
        .await
        .err()
        .unwrap();
    assert_eq!(code_of(&err), "28P01");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_admin_users_pgcell_is_an_ordinary_database_name() {
    let a = cluster("cluster-console-off");
    let proxy = Proxy::start(&config_text("", "allow", &tenant("plain", &a, ""))).await;
    let mut cfg = proxy.pg_config("app");
    cfg.dbname("pgcell");
    let err = connect(&cfg).await.err().unwrap();
    // No tenant named: the front door's usual answer.
    assert_eq!(code_of(&err), "08004");
    proxy.stop().await;
}
