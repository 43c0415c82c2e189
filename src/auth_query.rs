//! `auth_query`: SCRAM secrets of users not listed in `[[tenants.users]]`,
//! fetched from the tenant's backend and cached.
//!
//! pgcell opens a short-lived backend connection as the configured auth
//! user, runs the configured query with the client's user name as the
//! text parameter `$1` (extended protocol: `Parse`/`Bind`/`Execute`/`Sync`,
//! never SQL interpolation) and reads the one text column of the one row.
//! A NULL, no row, or a value that is not a SCRAM-SHA-256 secret (an md5
//! hash, a plaintext password) means "no such user": the client then fails
//! against the mock secret like any unknown user.
//!
//! Answers, "no such user" included, are cached per (tenant, user) for
//! `cache_ttl`; a failed login drops the cached answer so the next attempt
//! asks again (a changed password or a new role takes effect then). The
//! cache holds at most [`MAX_CACHED_SECRETS`] users per tenant.
//!
//! Spec: <https://www.postgresql.org/docs/current/protocol-flow.html#PROTOCOL-FLOW-EXT-QUERY>
//! and <https://www.postgresql.org/docs/current/protocol-message-formats.html>.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::auth::secret::{ScramSecret, SecretError};
use crate::backend::server::{BackendLogin, OpenError, ServerConn};
use crate::backend::Targets;
use crate::config::AuthQueryConfig;
use crate::metrics as m;
use crate::protocol::framing::{read_message, FramingError};
use crate::protocol::{messages, SqlState};

/// Most users whose answer one tenant's cache holds.
pub(crate) const MAX_CACHED_SECRETS: usize = 10_000;
/// Fetches one tenant runs at once: a burst of logins (or of guessed user
/// names) does not turn into a burst of backend connections.
const MAX_CONCURRENT_FETCHES: usize = 4;
/// Longest backend message accepted in reply to the query; a secret is a
/// few hundred bytes.
const MAX_REPLY_MESSAGE_LEN: usize = 64 * 1024;

/// Timeouts for the auth user's backend connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FetchSettings {
    /// TCP (and TLS) connect, per address.
    pub connect_timeout: Duration,
    /// Backend login, and separately the query.
    pub login_timeout: Duration,
    /// TCP keepalive.
    pub keepalive: Duration,
}

/// One tenant's `auth_query`: configuration, cache and fetch limit. Lives
/// on the tenant (`tenant::Tenant`), so a reload starts with an empty
/// cache.
pub(crate) struct AuthQuery {
    /// The tenant it serves (for metrics and logs).
    tenant: String,
    config: AuthQueryConfig,
    settings: FetchSettings,
    cache: SecretCache,
    fetches: Semaphore,
}

/// What a lookup found.
#[derive(Debug)]
pub(crate) struct Lookup {
    /// The user's secret; none for a user the backend does not know (or
    /// knows without a SCRAM secret).
    pub secret: Option<ScramSecret>,
    /// The answer came from the cache, so it may be stale: a failed login
    /// should [`AuthQuery::invalidate`] it.
    pub cached: bool,
}

/// Why a secret could not be fetched. Never the user's fault: the client
/// is told only that its credentials could not be verified.
#[derive(Debug, Error)]
pub(crate) enum AuthQueryError {
    /// The auth user could not log in (backend down, wrong password, ...).
    #[error("auth user login: {0}")]
    Open(#[from] OpenError),
    /// The backend rejected the query.
    #[error("auth query failed with SQLSTATE {code}: {message}")]
    Query {
        /// SQLSTATE.
        code: SqlState,
        /// The backend's message.
        message: String,
    },
    /// The reply was not the one text column of at most one row.
    #[error("auth query: {0}")]
    Shape(String),
    /// The connection broke during the query.
    #[error("auth query: {0}")]
    Io(#[from] FramingError),
    /// The query took longer than `backend.auth_timeout`.
    #[error("auth query timed out")]
    Timeout,
}

impl AuthQueryError {
    /// Metric label.
    pub(crate) fn reason(&self) -> &'static str {
        match self {
            AuthQueryError::Open(OpenError::Connect(_)) => "connect",
            AuthQueryError::Open(OpenError::Refused { .. }) => "login_refused",
            AuthQueryError::Open(OpenError::Timeout) | AuthQueryError::Timeout => "timeout",
            AuthQueryError::Open(_) => "login",
            AuthQueryError::Query { .. } => "query",
            AuthQueryError::Shape(_) => "reply",
            AuthQueryError::Io(_) => "io",
        }
    }
}

impl AuthQuery {
    /// A tenant's `auth_query` with an empty cache.
    pub(crate) fn new(tenant: &str, config: AuthQueryConfig, settings: FetchSettings) -> AuthQuery {
        AuthQuery {
            tenant: tenant.to_owned(),
            cache: SecretCache::new(config.cache_ttl, MAX_CACHED_SECRETS),
            config,
            settings,
            fetches: Semaphore::new(MAX_CONCURRENT_FETCHES),
        }
    }

    /// The secret of `user`, from the cache or from the tenant's backends
    /// (in `database` unless the configuration names one). A fetch error
    /// is logged and counted here. Not cancel safe only in that a dropped
    /// fetch is not cached.
    pub(crate) async fn lookup(
        &self,
        backends: Targets<'_>,
        database: &str,
        user: &str,
    ) -> Result<Lookup, AuthQueryError> {
        // The query runs in the client's database unless one is configured,
        // and each database may answer differently (another `get_auth`
        // function): cache per database then.
        let key = self.cache_key(database, user);
        if let Some(secret) = self.cached(&key) {
            return Ok(secret);
        }
        // The semaphore is never closed; without a permit the fetch just
        // runs unthrottled.
        let _permit = self.fetches.acquire().await.ok();
        // Another login of the same user may have fetched meanwhile.
        if let Some(secret) = self.cached(&key) {
            return Ok(secret);
        }
        metrics::counter!(m::AUTH_QUERY_CACHE_MISSES, "tenant" => self.tenant.clone()).increment(1);
        match self.fetch(backends, database, user).await {
            Ok(secret) => {
                self.cache.insert(&key, secret.clone());
                Ok(Lookup {
                    secret,
                    cached: false,
                })
            }
            Err(e) => {
                metrics::counter!(m::AUTH_QUERY_ERRORS, "tenant" => self.tenant.clone(), "reason" => e.reason())
                    .increment(1);
                tracing::warn!(
                    tenant = %self.tenant,
                    user,
                    auth_user = %self.config.user,
                    reason = e.reason(),
                    error = %e,
                    "auth_query could not fetch a secret"
                );
                Err(e)
            }
        }
    }

    /// Forgets what is cached for `user` of `database` (after a failed
    /// login).
    pub(crate) fn invalidate(&self, database: &str, user: &str) {
        self.cache.invalidate(&self.cache_key(database, user));
    }

    fn cache_key(&self, database: &str, user: &str) -> String {
        match &self.config.database {
            Some(_) => user.to_owned(),
            None => format!("{database}\0{user}"),
        }
    }

    fn cached(&self, user: &str) -> Option<Lookup> {
        let secret = self.cache.get(user)?;
        metrics::counter!(m::AUTH_QUERY_CACHE_HITS, "tenant" => self.tenant.clone()).increment(1);
        Some(Lookup {
            secret,
            cached: true,
        })
    }

    async fn fetch(
        &self,
        backends: Targets<'_>,
        database: &str,
        user: &str,
    ) -> Result<Option<ScramSecret>, AuthQueryError> {
        let database = self.config.database.as_deref().unwrap_or(database);
        let login = BackendLogin::Password(self.config.password.clone());
        let mut conn = ServerConn::open(
            backends,
            database,
            &self.config.user,
            &login,
            // Its own connection, named so in pg_stat_activity.
            &std::sync::Arc::new(crate::backend::server::StartupProfile {
                params: vec![("application_name".to_owned(), "pgcell".to_owned())],
            }),
            &crate::backend::server::OpenSettings {
                connect_timeout: self.settings.connect_timeout,
                login_timeout: self.settings.login_timeout,
                keepalive: self.settings.keepalive,
            },
        )
        .await?;
        let value = tokio::time::timeout(
            self.settings.login_timeout,
            run_query(&mut conn.stream, &self.config.query, user),
        )
        .await
        .map_err(|_| AuthQueryError::Timeout)??;
        // Terminate, so the backend logs a clean disconnect; the answer is
        // in hand whatever happens now.
        let _ = conn.stream.write_all(&TERMINATE).await;
        let _ = conn.stream.shutdown().await;
        Ok(value.and_then(|v| parse_secret(&self.tenant, user, &v)))
    }
}

/// A SCRAM secret, or none (with the reason logged) for anything else.
fn parse_secret(tenant: &str, user: &str, value: &str) -> Option<ScramSecret> {
    match ScramSecret::parse(value) {
        Ok(secret) => Some(secret),
        Err(SecretError::NotScram) => {
            tracing::warn!(
                tenant,
                user,
                "auth_query returned a secret that is not SCRAM-SHA-256 (md5 or plaintext?); the user cannot log in through pgcell"
            );
            None
        }
        Err(e) => {
            tracing::warn!(tenant, user, error = %e, "auth_query returned a malformed secret");
            None
        }
    }
}

/// `Terminate`.
const TERMINATE: [u8; 5] = [b'X', 0, 0, 0, 4];

/// Runs `query` with `user` as its text parameter `$1` on an idle backend
/// and reads to `ReadyForQuery`. Returns the one column of the one row, or
/// none for a NULL or no row. Not cancel safe.
async fn run_query<S>(
    stream: &mut S,
    query: &str,
    user: &str,
) -> Result<Option<String>, AuthQueryError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::new();
    write_query(&mut out, query, user);
    stream.write_all(&out).await.map_err(FramingError::from)?;
    stream.flush().await.map_err(FramingError::from)?;

    let mut value = None;
    let mut rows = 0usize;
    let mut error = None;
    loop {
        let msg = read_message(stream, MAX_REPLY_MESSAGE_LEN).await?;
        match msg.tag {
            b'D' => {
                rows += 1;
                if rows == 1 {
                    value = data_row_value(&msg.body)?;
                }
            }
            // The first error wins; the backend then skips to Sync.
            b'E' if error.is_none() => {
                error = Some(AuthQueryError::Query {
                    code: messages::error_code(&msg.body),
                    message: messages::error_message(&msg.body),
                });
            }
            b'Z' => break,
            // ParseComplete, BindComplete, CommandComplete, NoData,
            // EmptyQueryResponse, and what may come at any time: notices,
            // parameter changes, notifications.
            b'1' | b'2' | b'C' | b'n' | b'I' | b'E' | b'N' | b'S' | b'A' => {}
            tag => {
                return Err(AuthQueryError::Shape(format!(
                    "unexpected message type {:?}",
                    char::from(tag)
                )))
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    if rows > 1 {
        return Err(AuthQueryError::Shape(format!(
            "query returned {rows} rows for one user; it must return at most one"
        )));
    }
    Ok(value)
}

/// `Parse`, `Bind`, `Execute`, `Sync` for `query` with the text parameter
/// `user`; unnamed statement and portal, all results as text.
fn write_query(out: &mut BytesMut, query: &str, user: &str) {
    // Parse: statement name, query, one parameter of unspecified type (the
    // backend infers it: `name` for `rolname = $1`, `text` for a function).
    let mut body = Vec::with_capacity(query.len() + 8);
    body.push(0);
    body.extend_from_slice(query.as_bytes());
    body.push(0);
    body.put_i16(1);
    body.put_i32(0);
    messages::tagged(out, b'P', &body);

    // Bind: portal, statement, no parameter format codes (all text), the
    // parameter, no result format codes (all text).
    let mut body = Vec::with_capacity(user.len() + 16);
    body.push(0);
    body.push(0);
    body.put_i16(0);
    body.put_i16(1);
    // User names arrive NUL-terminated in a StartupMessage of bounded
    // length, so they always fit.
    body.put_i32(i32::try_from(user.len()).unwrap_or(i32::MAX));
    body.extend_from_slice(user.as_bytes());
    body.put_i16(0);
    messages::tagged(out, b'B', &body);

    // Execute: unnamed portal, no row limit.
    messages::tagged(out, b'E', &[0, 0, 0, 0, 0]);
    messages::tagged(out, b'S', &[]);
}

/// The value of a one-column `DataRow`: none for NULL.
fn data_row_value(body: &[u8]) -> Result<Option<String>, AuthQueryError> {
    let columns = crate::protocol::messages::data_row(body)
        .ok_or_else(|| AuthQueryError::Shape("malformed DataRow".to_owned()))?;
    match columns.as_slice() {
        [value] => Ok(value.map(|v| String::from_utf8_lossy(v).into_owned())),
        _ => Err(AuthQueryError::Shape(format!(
            "query returned {} columns; it must return one (the secret)",
            columns.len()
        ))),
    }
}

/// Answers per user, each kept for a TTL, at most `capacity` of them.
pub(crate) struct SecretCache {
    ttl: Duration,
    capacity: usize,
    entries: Mutex<HashMap<String, CacheEntry>>,
}

struct CacheEntry {
    /// None: the backend knows no SCRAM secret for the user.
    secret: Option<ScramSecret>,
    expires: Instant,
}

impl SecretCache {
    /// An empty cache.
    pub(crate) fn new(ttl: Duration, capacity: usize) -> SecretCache {
        SecretCache {
            ttl,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The cached answer for `user`, if there is a fresh one: `Some(None)`
    /// is a cached "no such user".
    pub(crate) fn get(&self, user: &str) -> Option<Option<ScramSecret>> {
        self.get_at(user, Instant::now())
    }

    /// Caches `secret` as the answer for `user`.
    pub(crate) fn insert(&self, user: &str, secret: Option<ScramSecret>) {
        self.insert_at(user, secret, Instant::now());
    }

    /// Forgets the answer for `user`.
    pub(crate) fn invalidate(&self, user: &str) {
        self.lock().remove(user);
    }

    /// Users cached (fresh or not yet cleaned up).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }

    fn get_at(&self, user: &str, now: Instant) -> Option<Option<ScramSecret>> {
        let mut entries = self.lock();
        match entries.get(user) {
            Some(e) if e.expires > now => Some(e.secret.clone()),
            Some(_) => {
                entries.remove(user);
                None
            }
            None => None,
        }
    }

    fn insert_at(&self, user: &str, secret: Option<ScramSecret>, now: Instant) {
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(user) {
            entries.retain(|_, e| e.expires > now);
            // Still full of fresh answers: the one closest to expiry (the
            // oldest, all having the same TTL) goes.
            if entries.len() >= self.capacity {
                let oldest = entries
                    .iter()
                    .min_by_key(|(_, e)| e.expires)
                    .map(|(u, _)| u.clone());
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        if self.capacity > 0 {
            entries.insert(
                user.to_owned(),
                CacheEntry {
                    secret,
                    expires: now + self.ttl,
                },
            );
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        // Every critical section leaves the map consistent.
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn secret(password: &str) -> ScramSecret {
        ScramSecret::from_password(password, b"0123456789abcdef", 4096)
    }

    #[test]
    fn cache_answers_until_the_ttl_expires() {
        let cache = SecretCache::new(Duration::from_secs(60), 10);
        let t0 = Instant::now();
        cache.insert_at("app", Some(secret("a")), t0);
        cache.insert_at("ghost", None, t0);
        let later = t0 + Duration::from_secs(59);
        assert_eq!(cache.get_at("app", later), Some(Some(secret("a"))));
        assert_eq!(cache.get_at("ghost", later), Some(None));
        assert_eq!(cache.get_at("other", later), None);
        let expired = t0 + Duration::from_secs(60);
        assert_eq!(cache.get_at("app", expired), None);
        assert_eq!(cache.get_at("ghost", expired), None);
        assert!(cache.len() == 0, "expired entries are dropped when seen");
    }

    #[test]
    fn invalidate_forgets_one_user() {
        let cache = SecretCache::new(Duration::from_secs(60), 10);
        cache.insert("app", Some(secret("old")));
        cache.insert("other", Some(secret("x")));
        cache.invalidate("app");
        assert_eq!(cache.get("app"), None);
        assert_eq!(cache.get("other"), Some(Some(secret("x"))));
        cache.insert("app", Some(secret("new")));
        assert_eq!(cache.get("app"), Some(Some(secret("new"))));
    }

    #[test]
    fn cache_is_bounded_expired_first_then_oldest() {
        let cache = SecretCache::new(Duration::from_secs(60), 3);
        let t0 = Instant::now();
        cache.insert_at("a", None, t0);
        cache.insert_at("b", None, t0 + Duration::from_secs(10));
        cache.insert_at("c", None, t0 + Duration::from_secs(20));
        // Full of fresh entries: the oldest goes.
        let t1 = t0 + Duration::from_secs(30);
        cache.insert_at("d", None, t1);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_at("a", t1), None);
        assert_eq!(cache.get_at("b", t1), Some(None));
        // Replacing a cached user evicts nobody.
        cache.insert_at("b", Some(secret("b")), t1);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_at("c", t1), Some(None));
        // Expired entries make room before any fresh one is evicted: b
        // (now t1 + 60) and d stay, c (t0 + 80) has expired.
        let t2 = t0 + Duration::from_secs(85);
        cache.insert_at("e", None, t2);
        assert_eq!(cache.len(), 3);
        assert_eq!(cache.get_at("b", t2), Some(Some(secret("b"))));
        assert_eq!(cache.get_at("d", t2), Some(None));
        assert_eq!(cache.get_at("e", t2), Some(None));
    }

    #[test]
    fn default_bound_holds_under_many_users() {
        let cache = SecretCache::new(Duration::from_secs(60), MAX_CACHED_SECRETS);
        for i in 0..MAX_CACHED_SECRETS + 50 {
            cache.insert(&format!("user{i}"), None);
        }
        assert_eq!(cache.len(), MAX_CACHED_SECRETS);
    }

    fn backend_message(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut out = BytesMut::new();
        messages::tagged(&mut out, tag, body);
        out.to_vec()
    }

    fn data_row(value: Option<&[u8]>) -> Vec<u8> {
        let mut body = 1i16.to_be_bytes().to_vec();
        match value {
            Some(v) => {
                body.extend_from_slice(&(v.len() as i32).to_be_bytes());
                body.extend_from_slice(v);
            }
            None => body.extend_from_slice(&(-1i32).to_be_bytes()),
        }
        backend_message(b'D', &body)
    }

    /// Runs the query against a scripted backend that answers `reply`;
    /// returns the result and the bytes the backend received.
    async fn scripted(reply: Vec<u8>) -> (Result<Option<String>, AuthQueryError>, Vec<u8>) {
        let (mut ours, mut theirs) = tokio::io::duplex(64 * 1024);
        let backend = tokio::spawn(async move {
            let mut got = vec![0u8; 4096];
            // Parse..Sync arrive in one write.
            let n = theirs.read(&mut got).await.unwrap();
            got.truncate(n);
            theirs.write_all(&reply).await.unwrap();
            got
        });
        let result = run_query(&mut ours, "SELECT pgcell.get_auth($1)", "o'brien").await;
        (result, backend.await.unwrap())
    }

    fn ok_reply(rows: &[Vec<u8>]) -> Vec<u8> {
        let mut reply = backend_message(b'1', &[]);
        reply.extend(backend_message(b'2', &[]));
        for row in rows {
            reply.extend_from_slice(row);
        }
        reply.extend(backend_message(b'C', b"SELECT 1\0"));
        reply.extend(backend_message(b'Z', b"I"));
        reply
    }

    #[tokio::test]
    async fn sends_the_user_as_a_parameter_and_reads_the_column() {
        let stored = secret("pw").to_string();
        let (result, sent) = scripted(ok_reply(&[data_row(Some(stored.as_bytes()))])).await;
        assert_eq!(result.unwrap(), Some(stored));
        let mut expected = BytesMut::new();
        write_query(&mut expected, "SELECT pgcell.get_auth($1)", "o'brien");
        assert_eq!(sent, expected.to_vec());
        // The user name travels as a length-prefixed parameter, never
        // inside the SQL text.
        let tags: Vec<u8> = {
            let mut tags = Vec::new();
            let mut rest = &sent[..];
            while rest.len() >= 5 {
                tags.push(rest[0]);
                let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                rest = &rest[1 + len..];
            }
            tags
        };
        assert_eq!(tags, b"PBES");
        let bind_param = [&7i32.to_be_bytes()[..], b"o'brien"].concat();
        assert!(sent.windows(bind_param.len()).any(|w| w == bind_param));
    }

    #[tokio::test]
    async fn null_and_no_row_are_no_secret() {
        let (result, _) = scripted(ok_reply(&[data_row(None)])).await;
        assert_eq!(result.unwrap(), None);
        let (result, _) = scripted(ok_reply(&[])).await;
        assert_eq!(result.unwrap(), None);
    }

    #[tokio::test]
    async fn errors_and_wrong_shapes_are_errors() {
        let mut reply = backend_message(
            b'E',
            b"SERROR\0C42883\0Mfunction pgcell.get_auth(unknown) does not exist\0\0",
        );
        reply.extend(backend_message(b'Z', b"I"));
        let (result, _) = scripted(reply).await;
        match result {
            Err(AuthQueryError::Query { code, message }) => {
                assert_eq!(code.code(), "42883");
                assert!(message.contains("does not exist"));
            }
            other => panic!("{other:?}"),
        }
        let (result, _) = scripted(ok_reply(&[data_row(Some(b"a")), data_row(Some(b"b"))])).await;
        assert!(
            matches!(result, Err(AuthQueryError::Shape(_))),
            "{result:?}"
        );
        let mut two_columns = 2i16.to_be_bytes().to_vec();
        two_columns.extend_from_slice(&(-1i32).to_be_bytes());
        two_columns.extend_from_slice(&(-1i32).to_be_bytes());
        let (result, _) = scripted(ok_reply(&[backend_message(b'D', &two_columns)])).await;
        assert!(
            matches!(result, Err(AuthQueryError::Shape(_))),
            "{result:?}"
        );
        let (result, _) = scripted(ok_reply(&[backend_message(
            b'D',
            &[0, 1, 0, 0, 0, 9, b'x'],
        )]))
        .await;
        assert!(
            matches!(result, Err(AuthQueryError::Shape(_))),
            "{result:?}"
        );
        // The backend hanging up mid-reply.
        let (result, _) = scripted(backend_message(b'1', &[])).await;
        assert!(matches!(result, Err(AuthQueryError::Io(_))), "{result:?}");
    }
}
