//! The session's loop: it moves bytes between the client and its backend
//! and asks `session::engine` everything else — where the backend stands
//! in the protocol (so when it may go back to the pool), whether the
//! transaction may have changed the session, what a backend must run
//! before it serves this client. Between transactions it waits for the
//! client, a reload or a stop; the session's ends (a lost backend, a
//! shutdown) are told here.

use std::sync::Arc;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::checkout::{acquire, acquire_fresh};
use super::session::Session;
use crate::backend::server::OpenError;
use crate::backend::ConnectError;
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::AcquireError;
use crate::protocol::framing::{split_message, Message};
use crate::protocol::messages;
use crate::protocol::{ClientError, Severity, SqlState};
use crate::session::buffers::{
    read_idle, recycle, reserve_read, reuse, shrink, write_draining, IDLE_READ_CHUNK,
    SERVER_READ_CHUNK,
};
use crate::session::error::SessionError;
use crate::sql::Dialect;
use crate::stream::ReadReady;

/// The SQL texts of what `msg` begins, up to the backend's next
/// `ReadyForQuery`: a `Query`'s text, or the texts of the `Parse`s (and
/// any `Query`) of the pipeline `msg` opens, read ahead in `following` up
/// to its `Sync`. `None` when they cannot all be read now: the pipeline's
/// end has not arrived, or it binds a statement parsed before it.
pub(super) fn pipeline_texts<'m>(msg: &'m Message, following: &'m [u8]) -> Option<Vec<&'m [u8]>> {
    fn parse_text(body: &[u8]) -> Option<(&[u8], &[u8])> {
        let end = body.iter().position(|&b| b == 0)?;
        let rest = &body[end + 1..];
        let text_end = rest.iter().position(|&b| b == 0)?;
        Some((&body[..end], &rest[..text_end]))
    }
    match msg.tag {
        b'Q' => return Some(vec![msg.body.strip_suffix(&[0]).unwrap_or(&msg.body)]),
        b'P' => {}
        _ => return None,
    }
    let (first_name, first_text) = parse_text(&msg.body)?;
    let mut parsed = vec![first_name];
    let mut texts = vec![first_text];
    let mut pos = 0;
    loop {
        let (tag, len) = match crate::protocol::framing::peek_message(&following[pos..], usize::MAX)
        {
            Ok(crate::protocol::framing::Peeked::Complete { tag, len }) => (tag, len),
            _ => return None,
        };
        let body = &following[pos + crate::protocol::framing::HEADER_LEN..pos + len];
        match tag {
            b'S' => return Some(texts),
            b'P' => {
                let (name, text) = parse_text(body)?;
                parsed.push(name);
                texts.push(text);
            }
            b'Q' => texts.push(body.strip_suffix(&[0]).unwrap_or(body)),
            b'B' => {
                // Portal, then statement name: it must be one parsed here.
                let portal_end = body.iter().position(|&b| b == 0)?;
                let rest = &body[portal_end + 1..];
                let name = &rest[..rest.iter().position(|&b| b == 0)?];
                if !parsed.contains(&name) {
                    return None;
                }
            }
            b'D' | b'E' | b'C' | b'H' => {}
            _ => return None,
        }
        pos += len;
    }
}

impl Session<'_> {
    pub(super) async fn run<C>(&mut self, client: &mut C) -> Result<(), SessionError>
    where
        C: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        if self.pool.mode == PoolMode::Session && self.lease.is_none() {
            let lease = acquire(&self.pool, &self.profile, self.listed).await?;
            // A new session: nothing to replay, so it cannot fail.
            self.checkout(lease, client).await?;
        }
        // Allocated as needed and given back between transactions.
        let mut from_client = BytesMut::new();
        let mut from_server = BytesMut::new();
        let mut to_server = BytesMut::new();
        let mut to_client = BytesMut::new();
        loop {
            if !from_client.is_empty() {
                reuse(&mut to_server);
            }
            // Forward every complete client message.
            let mut terminated = false;
            while let Some(msg) =
                split_message(&mut from_client, self.shared.settings.max_message_size)
                    .map_err(|e| SessionError::ClientProtocol(e.to_string()))?
            {
                if msg.tag == b'X' {
                    terminated = true;
                    break;
                }
                self.take_client_message(client, msg, &mut to_server, &from_client)
                    .await?;
            }
            if !to_server.is_empty() {
                let Some(lease) = self.lease.as_mut() else {
                    return Err(SessionError::BackendLost);
                };
                self.bytes.from_client += to_server.len() as u64;
                // Read while writing: a big pipeline whose answers fill the
                // socket buffers would otherwise block both sides for good.
                if write_draining(&mut lease.conn.stream, &to_server, &mut from_server)
                    .await
                    .is_err()
                {
                    return self.backend_lost();
                }
                to_server.clear();
                if !from_server.is_empty() {
                    self.deliver(
                        client,
                        &mut from_server,
                        &mut to_client,
                        from_client.is_empty(),
                    )
                    .await?;
                }
            }
            if terminated {
                return Ok(());
            }

            let Some(lease) = self.lease.as_mut() else {
                // Idle in transaction mode: only the client moves, or a
                // reload that may have removed the tenant.
                // Idle between transactions: hold no buffer at all (a
                // plaintext client is waited for by readiness; a TLS one
                // gets its read buffer back to the idle size).
                for buf in [&mut from_server, &mut to_server, &mut to_client] {
                    recycle(buf);
                }
                if client.waits_without_buffer() {
                    recycle(&mut from_client);
                } else {
                    shrink(&mut from_client, IDLE_READ_CHUNK);
                }
                enum Woken {
                    Read(std::io::Result<usize>),
                    Reloaded,
                    Stopping,
                }
                // A stop that came before this wait.
                if self.shared.idle_events().stopping {
                    return self.leave_for_shutdown();
                }
                let next = read_idle(client, &mut from_client);
                // Biased: no random pick per wait; a client that sends is
                // served, and a reload is followed before its next
                // transaction anyway.
                let woken = tokio::select! {
                    biased;
                    read = next => Woken::Read(read),
                    events = self.idle_event() => if events.stopping {
                        Woken::Stopping
                    } else {
                        Woken::Reloaded
                    },
                };
                match woken {
                    Woken::Read(Ok(0)) => return Ok(()),
                    Woken::Read(Ok(_)) => continue,
                    Woken::Read(Err(e)) => return Err(SessionError::ClientIo(e)),
                    Woken::Reloaded => {
                        self.follow_reload()?;
                        continue;
                    }
                    Woken::Stopping => return self.leave_for_shutdown(),
                }
            };
            reserve_read(&mut from_client, IDLE_READ_CHUNK);
            reserve_read(&mut from_server, SERVER_READ_CHUNK);
            // Biased, the backend first: no random pick per message, and a
            // client that pipelines waits in its socket while the backend
            // answers.
            tokio::select! {
                biased;
                read = lease.conn.stream.read_buf(&mut from_server) => match read {
                    Ok(0) | Err(_) => return self.backend_lost(),
                    Ok(_) => {
                        self.deliver(client, &mut from_server, &mut to_client, from_client.is_empty())
                            .await?;
                    }
                },
                read = client.read_buf(&mut from_client) => match read {
                    Ok(0) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(SessionError::ClientIo(e)),
                },
            }
        }
    }

    /// Takes one client message: answers it here (a pipeline pgcell
    /// failed, a `DEALLOCATE` between transactions) or appends it to
    /// `to_server`, checking a backend out first when it has none.
    async fn take_client_message<C>(
        &mut self,
        client: &mut C,
        msg: Message,
        to_server: &mut BytesMut,
        following: &[u8],
    ) -> Result<(), SessionError>
    where
        C: AsyncRead + AsyncWrite + ReadReady + Unpin,
    {
        if self.pool.mode == PoolMode::Session {
            self.held_server_fits()?;
        }
        if self.checkout.skipping_to_sync() {
            // The rest of a pipeline whose backend never came.
            if msg.tag == b'S' {
                self.checkout.skip_to_sync(false);
                self.answer_ready(client).await?;
            }
            return Ok(());
        }
        // SQL that would drop other clients' statements off a shared
        // backend is answered here, when nothing is in flight.
        if self.pool.mode == PoolMode::Transaction
            && msg.tag == b'Q'
            && self.checkout.position().quiet()
        {
            let status = self.checkout.position().status();
            if let Some(tag) = self
                .statements
                .answer_locally(&msg.body, status, Dialect::default())
            {
                let mut out = BytesMut::new();
                let mut body = tag.as_bytes().to_vec();
                body.push(0);
                messages::tagged(&mut out, b'C', &body);
                messages::tagged(&mut out, b'Z', &[status]);
                client
                    .write_all(&out)
                    .await
                    .map_err(SessionError::ClientIo)?;
                return Ok(());
            }
        }
        if self.lease.is_none() && msg.tag == b'H' {
            // A Flush with no backend has nothing to flush and draws no
            // reply: taking a backend for it would keep that backend
            // until the client sends again (psycopg writes its pipeline's
            // Sync and Flush apart, so the Flush may come after the
            // checkin).
            return Ok(());
        }
        if self.lease.is_none() {
            self.follow_reload()?;
            let fresh_after = self.choose_pool(&msg, following);
            let mut acquired =
                acquire_fresh(&self.pool, &self.profile, self.listed, fresh_after).await;
            if !Arc::ptr_eq(&self.pool, &self.home) {
                if let Err(SessionError::Acquire(AcquireError::Open(
                    OpenError::Refused { .. } | OpenError::Connect(ConnectError::NoServer(_)),
                ))) = &acquired
                {
                    // A read-only transaction no replica would take (a
                    // replica refused this client's login: a role default
                    // a standby cannot run, such as serializable; or none
                    // is fit): it runs on the primary, as it would have
                    // without read-only routing (found by review).
                    self.pool = self.home.clone();
                    acquired = acquire_fresh(&self.pool, &self.profile, self.listed, None).await;
                }
            }
            let lease = match acquired {
                Ok(lease) => lease,
                Err(SessionError::Acquire(
                    e @ (AcquireError::Timeout(_)
                    | AcquireError::Open(OpenError::Connect(ConnectError::NoServer(_)))),
                )) => {
                    // The statement fails, the session goes on: like
                    // PostgreSQL after an error, skip to the Sync. (No
                    // server fits now: a split brain, no replica fit, a
                    // failover longer than acquire_timeout.)
                    self.refuse_statement(client, &e).await?;
                    match msg.tag {
                        b'Q' | b'F' => self.answer_ready(client).await?,
                        b'S' => self.answer_ready(client).await?,
                        _ => self.checkout.skip_to_sync(true),
                    }
                    return Ok(());
                }
                Err(e) => return Err(e),
            };
            if !self.checkout(lease, client).await? {
                // The client's session could not be replayed: this
                // statement fails (the client has the error), like one
                // that found no backend.
                match msg.tag {
                    b'Q' | b'F' | b'S' => self.answer_ready(client).await?,
                    _ => self.checkout.skip_to_sync(true),
                }
                return Ok(());
            }
        }
        self.count_client_message(&msg);
        let mut judged = self.judge(&msg);
        let refused;
        let msg = if judged.foreign_statement && self.pool.mode == PoolMode::Transaction {
            // Another client's statement: the backend refuses what
            // replaces it, as it would a name that does not exist.
            refused = crate::session::prepared::refuse_foreign(&msg);
            judged = crate::sql::Verdict::default();
            &refused
        } else {
            &msg
        };
        let executes = match (self.pool.mode, self.lease.as_mut()) {
            (PoolMode::Transaction, Some(lease)) => self
                .statements
                .forward(
                    msg,
                    judged,
                    &mut lease.conn.prepared,
                    &mut self.checkout,
                    to_server,
                )
                .map_err(SessionError::from)?,
            _ => {
                messages::tagged(to_server, msg.tag, &msg.body);
                self.checkout.sent(msg.tag);
                // A session's backend is its own: what it parses counts
                // as run (read back when it leaves).
                judged
            }
        };
        self.executed(executes);
        Ok(())
    }

    /// Waits for a reload this session has not followed, or for the
    /// server to start stopping.
    fn idle_event(&self) -> impl std::future::Future<Output = crate::state::IdleEvents> + '_ {
        std::future::poll_fn(|cx| {
            // Registered before reading: a change after the read wakes it.
            self.listed.idle_wake.register(cx.waker());
            let events = self.shared.idle_events();
            if events.stopping || events.reloads != self.seen_reload {
                std::task::Poll::Ready(events)
            } else {
                std::task::Poll::Pending
            }
        })
    }

    /// Tells the client its statement failed for want of a backend.
    async fn refuse_statement<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
        error: &AcquireError,
    ) -> Result<(), SessionError> {
        let refusal = match error {
            AcquireError::Timeout(wait) => {
                crate::session::error::pool_timeout(*wait, Severity::Error)
            }
            AcquireError::Open(OpenError::Connect(ConnectError::NoServer(e))) => {
                tracing::warn!(error = %e, "statement refused: no server fits");
                ClientError::statement(SqlState::CANNOT_CONNECT_NOW, e.client_message())
            }
            other => {
                tracing::warn!(error = %other, "statement refused: no backend");
                ClientError::statement(
                    SqlState::CANNOT_CONNECT_NOW,
                    "could not connect to the database server",
                )
            }
        };
        refusal.send(client).await.map_err(SessionError::ClientIo)
    }

    /// `ReadyForQuery` for a statement pgcell answered itself (no backend).
    async fn answer_ready<C: AsyncWrite + Unpin>(
        &mut self,
        client: &mut C,
    ) -> Result<(), SessionError> {
        let mut out = BytesMut::new();
        messages::tagged(&mut out, b'Z', b"I");
        client
            .write_all(&out)
            .await
            .map_err(SessionError::ClientIo)?;
        client.flush().await.map_err(SessionError::ClientIo)
    }

    /// Ends the session between transactions because the server is
    /// stopping: the client gets `57P01` (written by the caller's error
    /// report) and `finish` returns the backend.
    pub(super) fn leave_for_shutdown(&mut self) -> Result<(), SessionError> {
        metrics::counter!(m::SHUTDOWN_CLOSED, "how" => "at_transaction_boundary").increment(1);
        Err(SessionError::ShuttingDown)
    }

    /// The backend closed or failed: the session ends, and the client
    /// gets one error (none when the backend's own FATAL already reached
    /// it, as on a direct connection).
    fn backend_lost(&mut self) -> Result<(), SessionError> {
        self.lease = None;
        self.cancel_key.detach();
        metrics::counter!(m::BACKEND_LOST, "tenant" => self.tenant.clone()).increment(1);
        if self.checkout.fatal() {
            // Its own FATAL reached the client already.
            return Err(SessionError::Reported(Box::new(SessionError::BackendLost)));
        }
        Err(SessionError::BackendLost)
    }
}
