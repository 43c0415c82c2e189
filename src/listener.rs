//! The accept loop: one task per client connection, until shutdown.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::server::{Control, Shared};

/// Accepts connections and spawns a session for each until a
/// [`Control::Shutdown`] (or every handle is gone). Returns the sessions
/// still running.
pub async fn accept_loop(
    listener: &TcpListener,
    shared: &Arc<Shared>,
    control: &mut mpsc::UnboundedReceiver<Control>,
) -> JoinSet<()> {
    let mut sessions = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, peer)) => {
                    sessions.spawn(crate::session::serve(shared.clone(), tcp, peer));
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = sessions.join_next(), if !sessions.is_empty() => {}
            command = control.recv() => match command {
                Some(Control::Reload) => match shared.reload() {
                    Ok(()) => tracing::info!("configuration and certificate reloaded"),
                    Err(e) => tracing::error!(error = %e, "reload failed; keeping the running configuration"),
                },
                Some(Control::Shutdown) | None => {
                    tracing::info!("shutdown requested");
                    return sessions;
                }
            },
        }
    }
}
