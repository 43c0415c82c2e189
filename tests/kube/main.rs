//! Tenants, backends and peers from Kubernetes: pgcell's real
//! `kube::Client` against a fake API server (`apiserver.rs`), real
//! PostgreSQL clusters behind it, real clients in front.
//!
//! The tests run one at a time ([`serial`]): the metrics recorder is one
//! per process, and the clash and peer gauges are checked by value.

// A test binary has no public API: its support modules' `pub` is for
// the test modules beside them.
#![allow(unreachable_pub, missing_docs)]
#![cfg(feature = "kube")]

mod apiserver;
mod crd;
mod discovery;
mod peers;

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

pub use support::{cancel_until_done, cluster, code_of, eventually, metric, Proxy, APP_PASSWORD};

/// Namespace the tests' pgcells watch.
pub const NS: &str = "cell";

/// How long discovery may take to catch up with the API server.
pub const WITHIN: Duration = Duration::from_secs(15);

static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Held for the whole of a test.
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    SERIAL.lock().await
}

/// A config watching `api` in [`NS`] (TLS off), with `rest` appended.
pub fn config_text(api: &str, kubernetes_extra: &str, rest: &str) -> String {
    support::config_text(
        "",
        "disable",
        &format!(
            "[kubernetes]\nmode = \"on\"\napi_url = \"{api}\"\nnamespace = \"{NS}\"\n{kubernetes_extra}\n\n{rest}"
        ),
    )
}

impl Proxy {
    /// Connects as `user` and asks for `cluster_name`: the cluster that
    /// answered, or the SQLSTATE of the failure.
    pub async fn answer(&self, user: &str, password: &str) -> Result<String, String> {
        let (client, _conn) = support::connect(&self.pg_config_as(user, password))
            .await
            .map_err(|e| code_of(&e))?;
        let row = client
            .query_one("select current_setting('cluster_name')", &[])
            .await
            .map_err(|e| code_of(&e))?;
        Ok(row.get(0))
    }

    /// Waits until connecting as `user` gives `want`.
    pub async fn wait_answer(&self, user: &str, password: &str, want: Result<&str, &str>) {
        let want = want.map(str::to_owned).map_err(str::to_owned);
        eventually(WITHIN, &format!("{user}: wanted {want:?}"), || async {
            let got = self.answer(user, password).await;
            if got == want {
                Ok(())
            } else {
                Err(got)
            }
        })
        .await;
    }

    /// Waits until the metric `name` (no labels) reads `want`.
    pub async fn wait_metric(&self, name: &str, want: f64) {
        eventually(WITHIN, &format!("{name}: wanted {want}"), || async {
            let got = metric(&self.metrics().await, name, &[]);
            if got == Some(want) {
                Ok(())
            } else {
                Err(got)
            }
        })
        .await;
    }
}
