//! A client served from a pool: pgcell authenticates it, answers its
//! startup from what a backend of its startup profile reported, and lends
//! it a backend per session or per transaction.
//!
//! This file logs the client in and sets the session up ([`serve`]); the
//! session's loop is in [`run`], where its next transaction runs in
//! [`routing`], checkout and checkin in [`checkout`], the relay of a
//! leased backend in [`follow`], the client's state ([`Session`]) in
//! [`session`].

mod checkout;
mod follow;
mod routing;
mod run;
mod session;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::client_auth::{self, ClientAuthError};
use super::engine::{Checkout, ClientSession, CustomSettings};
use super::error::SessionError;
use super::prepared::ClientStatements;
use super::relay::RelayBytes;
use crate::backend::server::OpenSettings;
use crate::clients::ClientEntry;
use crate::config::PoolMode;
use crate::metrics as m;
use crate::pool::{PoolKey, Release};
use crate::protocol::messages;
use crate::protocol::startup::StartupMessage;
use crate::route::Route;
use crate::state::Shared;
use crate::stream::ReadReady;
use crate::tenant::ClientInfo;
use checkout::acquire;
use session::Session;

/// Startup parameters that are not session settings.
const NOT_SETTINGS: &[&str] = &["user", "database", "replication"];

/// Serves a pooled client to the end. `startup` is already rewritten for
/// the backend (tenant tokens removed).
pub(crate) async fn serve<C>(
    shared: &Shared,
    client: &mut C,
    startup: &StartupMessage,
    route: &Route,
    info: &ClientInfo,
    bytes: &mut RelayBytes,
    listed: &ClientEntry,
) -> Result<(), SessionError>
where
    C: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    // Boxed: logging in and setting up is done once, and its state would
    // otherwise stay in every idle client's task.
    let mut session = Box::pin(open(shared, client, startup, route, info, bytes, listed)).await?;
    let result = session.run(client).await;
    session.finish().await;
    result
}

/// Logs the client in, answers its startup and sets up its session.
async fn open<'a, C>(
    shared: &'a Shared,
    client: &mut C,
    startup: &StartupMessage,
    route: &Route,
    info: &ClientInfo,
    bytes: &'a mut RelayBytes,
    listed: &'a ClientEntry,
) -> Result<Session<'a>, SessionError>
where
    C: AsyncRead + AsyncWrite + ReadReady + Unpin,
{
    let tenant = &route.tenant;
    let user = startup.get("user").unwrap_or_default().to_owned();
    let database = startup.get("database").unwrap_or(&user).to_owned();

    // Taken before the (possibly slow) login, so a reload during it is
    // followed afterwards.
    let seen_reload = shared.reloads();
    // The end of the authentication exchange and the startup answer, in
    // one write when no backend must be waited for.
    let mut answer = BytesMut::new();
    // The exchange is bounded like a backend's authentication_timeout, so
    // clients that stall mid-exchange cannot hold connection slots.
    // Boxed: the exchange's state is only needed once, and inline it
    // would stay in every idle client's task.
    let login = match Box::pin(tokio::time::timeout(
        shared.settings.auth_timeout,
        client_auth::authenticate(
            client,
            tenant,
            &user,
            &database,
            info,
            &shared.mock_key,
            &mut answer,
        ),
    ))
    .await
    .unwrap_or(Err(ClientAuthError::Timeout))
    {
        Ok(login) => login,
        Err(e) => {
            metrics::counter!(m::AUTH_FAILURES, "tenant" => tenant.id().to_owned(), "reason" => e.reason())
                .increment(1);
            if matches!(e, ClientAuthError::Failed(_)) {
                tokio::time::sleep(client_auth::AUTH_FAILURE_DELAY).await;
            }
            return Err(SessionError::ClientAuth(e));
        }
    };

    let open = OpenSettings {
        connect_timeout: shared.settings.connect_timeout,
        login_timeout: shared.settings.auth_timeout,
        keepalive: shared.settings.tcp_keepalive,
    };
    let key = PoolKey {
        tenant: tenant.id().to_owned(),
        database,
        user: user.clone(),
        target: route.target,
    };
    // The tenant as configured now (a reload may have run during login):
    // an older copy must never replace a newer pool.
    // A refusal from here on comes after the login, as it did when the
    // login's end was sent at once.
    let Some(current) = shared.routes.load().tenant(tenant.id()) else {
        return Err(refuse_after_login(client, &answer, SessionError::TenantRemoved).await);
    };
    let pool = shared.pools.get(key, &current, open);
    let Some(pool_slot) = pool.admit_client() else {
        return Err(refuse_after_login(client, &answer, SessionError::PoolFull).await);
    };
    // The latest verified login wins: an auth_query user's secret, and so
    // the ClientKey, changes with its password.
    pool.replace_login(login.clone());

    // The client's backends log in with its startup parameters (its
    // RESET values): clients that sent the same share backends.
    let profile = pool.share_profile(
        startup
            .params
            .iter()
            .filter(|(name, _)| !NOT_SETTINGS.contains(&name.as_str()))
            .cloned()
            .collect(),
    );
    // The startup answer is what such a backend reported at login: the
    // first client of a profile waits for one backend to log in. In
    // session mode every client waits for its backend here, before its
    // login completes: it owns that backend to the end, so a full pool
    // queues clients at login (bounded by `acquire_timeout`) and one that
    // waits in vain is refused as PostgreSQL refuses a connection over
    // its limit (FATAL 53300, no ReadyForQuery), instead of seeing a
    // session that dies on its first statement.
    let mut first_lease = None;
    let server_params = match pool.startup_parameters(&profile) {
        Some(p) if pool.mode == PoolMode::Transaction => p,
        known => {
            // The client learns that it is logged in before it waits.
            client
                .write_all(&answer)
                .await
                .map_err(SessionError::ClientIo)?;
            answer.clear();
            let lease = acquire(&pool, &profile, listed).await?;
            let params = known.unwrap_or_else(|| {
                let mut encoded = BytesMut::new();
                messages::parameter_statuses(&mut encoded, &lease.conn.params);
                encoded.freeze()
            });
            first_lease = Some(lease);
            params
        }
    };

    let cancel_key = match shared.cancel.try_issue_idle(info.vpce_id.as_deref()) {
        Ok(key) => key,
        Err(e) => return Err(refuse_after_login(client, &answer, SessionError::Random(e)).await),
    };
    let mut out = answer;
    out.extend_from_slice(&server_params);
    messages::backend_key_data(&mut out, cancel_key.key());
    messages::tagged(&mut out, b'Z', b"I");
    client
        .write_all(&out)
        .await
        .map_err(SessionError::ClientIo)?;
    client.flush().await.map_err(SessionError::ClientIo)?;

    let mut session = Session {
        shared,
        open,
        login,
        seen_reload,
        pool: pool.clone(),
        home: pool.clone(),
        route_read_only: pool.mode == PoolMode::Transaction
            && route.target == crate::backend::Target::Primary
            && tenant.config.replication.read_only_transactions,
        last_write: None,
        topology_seen: pool.topology().changes(),
        _pool_slot: pool_slot,
        cancel_key,
        startup_pg_temp: super::engine::startup_searches_pg_temp(&profile.params),
        profile,
        session: ClientSession::default(),
        custom: CustomSettings::default(),
        checkout: Checkout::default(),
        lease: None,
        bytes,
        tenant: tenant.id().to_owned(),
        statements: ClientStatements::default(),
        checked_out_at: std::time::Instant::now(),
        listed,
    };
    if let Some(lease) = first_lease {
        if pool.mode == PoolMode::Session {
            session.attach(lease);
        } else {
            pool.release(lease, Release::Reuse);
        }
    }
    Ok(session)
}

/// Sends the login's end still held in `answer` (the client is logged in)
/// and returns `error`, which the caller reports after it.
async fn refuse_after_login<C: AsyncWrite + Unpin>(
    client: &mut C,
    answer: &[u8],
    error: SessionError,
) -> SessionError {
    let _ = client.write_all(answer).await;
    error
}
