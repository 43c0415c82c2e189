//! Routing follows PgcellTenants, Secrets and EndpointSlices.

use serde_json::json;

use crate::apiserver::{secret, slice, tenant, ApiServer, Kind, Ready};
use crate::*;

const UNKNOWN_TENANT: &str = "08004";
const BACKEND_UNAVAILABLE: &str = "08006";
const AUTH_FAILED: &str = "28P01";

fn hosts(cluster: &pgcell::Cluster) -> serde_json::Value {
    json!({"hosts": [cluster.addr().to_string()]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_are_added_changed_and_deleted() {
    let _serial = serial().await;
    let (a, b) = (cluster("kube-a"), cluster("kube-b"));
    let api = ApiServer::start().await;
    let filed = format!(
        "[[tenants]]\nid = \"filed\"\nbackends = [\"{}\"]\n",
        a.addr()
    );
    let proxy = Proxy::start(&config_text(&api.url(), "", &filed)).await;
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Err(UNKNOWN_TENANT))
        .await;

    // Added.
    api.apply(
        Kind::Tenant,
        NS,
        tenant("acme", json!({"backends": hosts(&a)})),
    );
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Ok("kube-a"))
        .await;
    proxy.wait_metric("pgcell_discovery_tenants", 1.0).await;

    // Changed: the backends move to the other cluster.
    api.apply(
        Kind::Tenant,
        NS,
        tenant("acme", json!({"backends": hosts(&b)})),
    );
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Ok("kube-b"))
        .await;

    // An id that the config file has: reported, and the file's wins.
    api.apply(
        Kind::Tenant,
        NS,
        tenant("clash", json!({"tenantId": "filed", "backends": hosts(&b)})),
    );
    proxy
        .wait_metric("pgcell_discovery_tenant_clashes", 1.0)
        .await;
    assert_eq!(
        proxy.answer("app.filed", APP_PASSWORD).await.as_deref(),
        Ok("kube-a")
    );

    // An invalid object is left out without taking the others along.
    api.apply(
        Kind::Tenant,
        NS,
        tenant(
            "broken",
            json!({"backends": hosts(&a), "allowedCidrs": ["10.0.0.0/33"]}),
        ),
    );
    api.apply(
        Kind::Tenant,
        NS,
        tenant("gamma", json!({"backends": hosts(&a)})),
    );
    proxy
        .wait_answer("app.gamma", APP_PASSWORD, Ok("kube-a"))
        .await;
    assert_eq!(
        proxy.answer("app.broken", APP_PASSWORD).await,
        Err(UNKNOWN_TENANT.to_owned())
    );
    assert_eq!(
        proxy.answer("app.acme", APP_PASSWORD).await.as_deref(),
        Ok("kube-b")
    );

    // Deleted.
    api.delete(Kind::Tenant, NS, "acme");
    api.delete(Kind::Tenant, NS, "clash");
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Err(UNKNOWN_TENANT))
        .await;
    proxy
        .wait_metric("pgcell_discovery_tenant_clashes", 0.0)
        .await;
    assert_eq!(
        proxy.answer("app.gamma", APP_PASSWORD).await.as_deref(),
        Ok("kube-a")
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_credentials_authenticate_and_follow_changes() {
    let _serial = serial().await;
    let a = cluster("kube-secret");
    let api = ApiServer::start().await;
    let proxy = Proxy::start(&config_text(&api.url(), "", "")).await;
    api.apply(
        Kind::Secret,
        NS,
        secret("acme-users", &[("app", APP_PASSWORD)]),
    );
    api.apply(
        Kind::Tenant,
        NS,
        tenant(
            "acme",
            json!({
                "backends": hosts(&a),
                "auth": "scram",
                "pool": {"mode": "transaction", "size": 2},
                "users": [{"name": "app", "secretRef": {"name": "acme-users", "key": "app"}}],
            }),
        ),
    );
    // pgcell authenticates the client with the Secret's password and logs
    // in to the backend with it.
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Ok("kube-secret"))
        .await;
    assert_eq!(
        proxy.answer("app.acme", "wrong").await,
        Err(AUTH_FAILED.to_owned())
    );

    // The password is rotated; the Secret now holds the role's SCRAM
    // verifier, as PostgreSQL stores it.
    a.psql("postgres", "ALTER ROLE app PASSWORD 'rotated-secret'")
        .unwrap();
    let verifier = a
        .psql(
            "postgres",
            "SELECT rolpassword FROM pg_authid WHERE rolname = 'app'",
        )
        .unwrap();
    assert!(verifier.starts_with("SCRAM-SHA-256$"), "{verifier}");
    api.apply(
        Kind::Secret,
        NS,
        secret("acme-users", &[("app", &verifier)]),
    );
    proxy
        .wait_answer("app.acme", "rotated-secret", Ok("kube-secret"))
        .await;
    assert_eq!(
        proxy.answer("app.acme", APP_PASSWORD).await,
        Err(AUTH_FAILED.to_owned())
    );

    // A Secret that goes away takes the tenant with it (reported), and
    // coming back restores it.
    api.delete(Kind::Secret, NS, "acme-users");
    proxy
        .wait_answer("app.acme", "rotated-secret", Err(UNKNOWN_TENANT))
        .await;
    api.apply(
        Kind::Secret,
        NS,
        secret("acme-users", &[("app", &verifier)]),
    );
    proxy
        .wait_answer("app.acme", "rotated-secret", Ok("kube-secret"))
        .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_that_are_not_ready_get_no_new_connections() {
    let _serial = serial().await;
    let (a, b) = (cluster("kube-ep-a"), cluster("kube-ep-b"));
    let api = ApiServer::start().await;
    let proxy = Proxy::start(&config_text(&api.url(), "", "")).await;
    // Two slices of Service "db" (both clusters listen on 127.0.0.1, so
    // each slice carries its own port number under the name "postgres").
    let set = |ready_a: Ready, ready_b: Ready| {
        api.apply(
            Kind::Slice,
            NS,
            slice(
                "db-a",
                "db",
                "postgres",
                a.port(),
                &[("127.0.0.1", ready_a)],
            ),
        );
        api.apply(
            Kind::Slice,
            NS,
            slice(
                "db-b",
                "db",
                "postgres",
                b.port(),
                &[("127.0.0.1", ready_b)],
            ),
        );
    };
    set(Ready::Yes, Ready::No);
    api.apply(
        Kind::Tenant,
        NS,
        tenant(
            "svc",
            json!({"backends": {"service": {"name": "db", "port": "postgres"}}}),
        ),
    );
    proxy
        .wait_answer("app.svc", APP_PASSWORD, Ok("kube-ep-a"))
        .await;

    // A failover: A terminates, B becomes ready (ready unset counts).
    set(Ready::Terminating, Ready::Unset);
    proxy
        .wait_answer("app.svc", APP_PASSWORD, Ok("kube-ep-b"))
        .await;
    for _ in 0..5 {
        assert_eq!(
            proxy.answer("app.svc", APP_PASSWORD).await.as_deref(),
            Ok("kube-ep-b")
        );
    }

    // No ready endpoint: still the tenant, but its database is unavailable.
    set(Ready::No, Ready::Terminating);
    proxy
        .wait_answer("app.svc", APP_PASSWORD, Err(BACKEND_UNAVAILABLE))
        .await;

    // A Service in another namespace, its port given by number.
    api.apply(
        Kind::Slice,
        "other",
        slice("far-1", "far", "", a.port(), &[("127.0.0.1", Ready::Yes)]),
    );
    api.apply(
        Kind::Tenant,
        NS,
        tenant(
            "far",
            json!({"backends": {"service": {"name": "far", "namespace": "other", "port": a.port()}}}),
        ),
    );
    proxy
        .wait_answer("app.far", APP_PASSWORD, Ok("kube-ep-a"))
        .await;
    api.delete(Kind::Slice, "other", "far-1");
    proxy
        .wait_answer("app.far", APP_PASSWORD, Err(BACKEND_UNAVAILABLE))
        .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_watches_recover() {
    let _serial = serial().await;
    let (a, b) = (cluster("kube-w-a"), cluster("kube-w-b"));
    let api = ApiServer::start().await;
    let proxy = Proxy::start(&config_text(&api.url(), "", "")).await;
    api.apply(
        Kind::Tenant,
        NS,
        tenant("acme", json!({"backends": hosts(&a)})),
    );
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Ok("kube-w-a"))
        .await;

    // The server drops every watch stream: the watchers resume from their
    // last resourceVersion, and a change made meanwhile is not lost.
    let watches = api.watches(Kind::Tenant);
    api.break_watches();
    api.apply(
        Kind::Tenant,
        NS,
        tenant("acme", json!({"backends": hosts(&b)})),
    );
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Ok("kube-w-b"))
        .await;
    eventually(WITHIN, "the tenant watch is reopened", || async {
        (api.watches(Kind::Tenant) > watches).then_some(())
    })
    .await;

    // 410 Gone on the next watch: the watcher lists again, and later
    // changes are still followed.
    let lists = api.lists(Kind::Tenant);
    api.expire_next_watch(Kind::Tenant);
    api.break_watches();
    eventually(WITHIN, "a re-list after 410 Gone", || async {
        (api.lists(Kind::Tenant) > lists).then_some(())
    })
    .await;
    api.apply(
        Kind::Tenant,
        NS,
        tenant("acme", json!({"backends": hosts(&a)})),
    );
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Ok("kube-w-a"))
        .await;
    api.delete(Kind::Tenant, NS, "acme");
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Err(UNKNOWN_TENANT))
        .await;
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_api_leaves_the_file_config_working() {
    let _serial = serial().await;
    let a = cluster("kube-down");
    // Nothing listens here.
    let port = pgcell::free_port().unwrap();
    let filed = format!(
        "[[tenants]]\nid = \"filed\"\nbackends = [\"{}\"]\n",
        a.addr()
    );
    let proxy = Proxy::start(&config_text(
        &format!("http://127.0.0.1:{port}"),
        "",
        &filed,
    ))
    .await;
    for _ in 0..3 {
        assert_eq!(
            proxy.answer("app.filed", APP_PASSWORD).await.as_deref(),
            Ok("kube-down")
        );
    }
    proxy.stop().await;
}

/// A pooled tenant on `cluster` whose user `app` takes its password from
/// Secret `secret`.
fn pooled(cluster: &pgcell::Cluster, secret: &str) -> serde_json::Value {
    json!({
        "backends": hosts(cluster),
        "auth": "scram",
        "pool": {"mode": "transaction", "size": 2},
        "users": [{"name": "app", "secretRef": {"name": secret, "key": "app"}}],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_secrets_tenants_reference_are_read() {
    let _serial = serial().await;
    let a = cluster("kube-rbac");
    let api = ApiServer::start().await;
    // RBAC as deploy/kubernetes grants it: list and watch of the Secrets
    // the tenants name (`resourceNames`), nothing else in the namespace.
    api.grant_secrets(&["acme-users"]);
    api.apply(
        Kind::Secret,
        NS,
        secret("acme-users", &[("app", APP_PASSWORD)]),
    );
    api.apply(
        Kind::Secret,
        NS,
        secret("unrelated", &[("tls.key", "not for pgcell")]),
    );
    let proxy = Proxy::start(&config_text(&api.url(), "", "")).await;
    api.apply(Kind::Tenant, NS, tenant("acme", pooled(&a, "acme-users")));
    proxy
        .wait_answer("app.acme", APP_PASSWORD, Ok("kube-rbac"))
        .await;
    assert_eq!(api.forbidden(Kind::Secret), 0, "pgcell asked for more");

    // A tenant naming a Secret pgcell may not read is left out alone: it
    // does not hold back the others for long.
    api.apply(
        Kind::Secret,
        NS,
        secret("beta-users", &[("app", APP_PASSWORD)]),
    );
    api.apply(Kind::Tenant, NS, tenant("beta", pooled(&a, "beta-users")));
    eventually(WITHIN, "the beta-users watch is refused", || async {
        (api.forbidden(Kind::Secret) > 0).then_some(())
    })
    .await;
    api.apply(
        Kind::Tenant,
        NS,
        tenant("gamma", json!({"backends": hosts(&a)})),
    );
    proxy
        .wait_answer("app.gamma", APP_PASSWORD, Ok("kube-rbac"))
        .await;
    assert_eq!(
        proxy.answer("app.beta", APP_PASSWORD).await,
        Err(UNKNOWN_TENANT.to_owned())
    );
    assert_eq!(
        proxy.answer("app.acme", APP_PASSWORD).await.as_deref(),
        Ok("kube-rbac")
    );

    // The operator grants it: the watch's retry succeeds.
    api.grant_secrets(&["acme-users", "beta-users"]);
    proxy
        .wait_answer("app.beta", APP_PASSWORD, Ok("kube-rbac"))
        .await;

    // The unrelated Secret, changed meanwhile, never reached pgcell.
    api.apply(
        Kind::Secret,
        NS,
        secret("unrelated", &[("tls.key", "rotated")]),
    );
    tokio::time::sleep(2 * pgcell::DISCOVERY_DEBOUNCE).await;
    let served = api.served(Kind::Secret);
    assert_eq!(
        served,
        ["acme-users", "beta-users"]
            .map(str::to_owned)
            .into_iter()
            .collect(),
        "Secrets sent to pgcell"
    );
    proxy.stop().await;
}
