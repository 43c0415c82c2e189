//! The admin HTTP port: `/metrics` (Prometheus text), `/livez`, `/readyz`,
//! and `POST /drain` (the same drain as SIGTERM, for a `preStop` hook or
//! an operator).

use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use tokio::net::TcpListener;

use crate::lifecycle::State;
use crate::state::Shared;

/// The admin routes.
pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/livez", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/drain", post(drain))
        .with_state(shared)
}

/// Serves the admin routes until the process stops.
pub(crate) async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let mut state = shared.lifecycle.subscribe();
    let app = router(shared);
    let stopped = async move {
        let _ = state.wait_for(|s| *s == State::Stopped).await;
    };
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(stopped)
        .await
    {
        tracing::error!(error = %e, "admin server failed");
    }
}

async fn metrics(
    AxumState(shared): AxumState<Arc<Shared>>,
) -> (StatusCode, [(&'static str, &'static str); 1], String) {
    crate::session::console::publish_pool_gauges(&shared);
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        crate::metrics::render(),
    )
}

async fn readyz(AxumState(shared): AxumState<Arc<Shared>>) -> (StatusCode, String) {
    let state = shared.lifecycle.state();
    let code = if state == State::Ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let mut body = format!("{}\n", state.name());
    if shared.registration.enabled() {
        body.push_str(&format!("target {}\n", shared.registration.state()));
    }
    (code, body)
}

/// Starts the drain; repeating it changes nothing (a second SIGTERM, not a
/// second POST, cuts the waits short).
async fn drain(AxumState(shared): AxumState<Arc<Shared>>) -> (StatusCode, String) {
    if shared.start_drain() {
        tracing::info!("drain requested on the admin port");
        (StatusCode::ACCEPTED, "draining\n".into())
    } else {
        (
            StatusCode::OK,
            format!("already {}\n", shared.lifecycle.state().name()),
        )
    }
}
