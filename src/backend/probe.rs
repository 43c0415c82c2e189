//! The replication probe: what each of a tenant's servers says about
//! itself (in recovery or not, its WAL position, how long ago it replayed
//! a transaction), turned into roles, lag and exclusions for the tenant's
//! [`Topology`] (docs/replicas.md).

use std::sync::Arc;
use std::time::Instant;

use super::connect::Targets;
use super::server::{BackendLogin, OpenSettings, ServerConn, StartupProfile};
use super::topology::{Role, ServerState, Target, Topology};
use crate::config::ReplicationConfig;

/// One query, one round trip: (name, value) rows. The WAL position is the
/// primary's insert position (past every commit made, also an
/// asynchronous one not yet written: `synchronous_commit = off`), or the
/// replica's replayed one, in bytes. The timeline (hex) is the one the
/// primary writes (its WAL file name's first part) or the one the
/// replica's WAL receiver streams; the latter only when the probe user
/// may read `pg_stat_wal_receiver` (`pg_read_all_stats` or `pg_monitor`),
/// else empty. Whether a replica's WAL receiver runs at all (it streams
/// from some primary) every user may see.
pub(crate) const PROBE_QUERY: &str = "SELECT 'recovery', pg_catalog.pg_is_in_recovery()::text \
UNION ALL SELECT 'lsn', (CASE WHEN pg_catalog.pg_is_in_recovery() \
THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_insert_lsn() END \
OPERATOR(pg_catalog.-) '0/0'::pg_catalog.pg_lsn)::text \
UNION ALL SELECT 'replay_age', coalesce(pg_catalog.date_part('epoch', pg_catalog.now() \
OPERATOR(pg_catalog.-) pg_catalog.pg_last_xact_replay_timestamp())::text, '') \
UNION ALL SELECT 'timeline', coalesce(CASE WHEN pg_catalog.pg_is_in_recovery() \
THEN (SELECT pg_catalog.to_hex(received_tli) FROM pg_catalog.pg_stat_wal_receiver) \
ELSE pg_catalog.substr(pg_catalog.pg_walfile_name(pg_catalog.pg_current_wal_insert_lsn()), 1, 8) END, '') \
UNION ALL SELECT 'streaming', (SELECT pg_catalog.count(*) FROM pg_catalog.pg_stat_wal_receiver)::text";

/// What one server answered.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Answer {
    /// It answered the probe.
    Up {
        /// In recovery.
        recovery: bool,
        /// WAL position in bytes.
        lsn: Option<u64>,
        /// Seconds since it replayed a transaction.
        replay_age: Option<f64>,
        /// The timeline it writes (a primary) or streams (a replica).
        timeline: Option<u32>,
        /// A replica's WAL receiver runs (it streams from a primary).
        streaming: Option<bool>,
    },
    /// It could not be reached, refused the login, or failed the query.
    Down(String),
}

/// Reads the probe's rows.
pub(crate) fn answer_of(rows: &[(String, String)]) -> Answer {
    let get = |name: &str| {
        rows.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    match get("recovery") {
        Some(r) => Answer::Up {
            recovery: r == "true",
            lsn: get("lsn")
                .and_then(|v| v.parse::<f64>().ok())
                .map(|v| v as u64),
            replay_age: get("replay_age").and_then(|v| v.parse().ok()),
            timeline: get("timeline").and_then(|v| u32::from_str_radix(v, 16).ok()),
            streaming: get("streaming").map(|v| v != "0"),
        },
        None => Answer::Down("the probe query returned no rows".into()),
    }
}

/// How an exclusion for a replica off the primary's history starts.
const DIVERGED: &str = "diverged";

/// Turns one round's answers into server states: roles, lag against the
/// primary that answered, exclusions (a replica excluded for lag comes
/// back only once under half the limit, so it does not flap).
pub(crate) fn judge(
    answers: &[Answer],
    previous: &[ServerState],
    config: &ReplicationConfig,
    now: Instant,
    named: Option<usize>,
) -> Vec<ServerState> {
    let primary = primary_of(answers, named);
    let (primary_lsn, primary_timeline) = match primary.map(|i| &answers[i]) {
        Some(Answer::Up { lsn, timeline, .. }) => (*lsn, *timeline),
        _ => (None, None),
    };
    answers
        .iter()
        .enumerate()
        .map(|(i, answer)| {
            let was = previous.get(i).cloned().unwrap_or_default();
            let mut state = ServerState {
                probed_at: Some(now),
                ..ServerState::default()
            };
            match answer {
                Answer::Down(why) => {
                    state.excluded = Some(format!("unreachable: {why}"));
                    // What was last measured stays known (below).
                    state.lag_bytes = was.lag_bytes;
                }
                Answer::Up {
                    recovery: false, ..
                } => state.role = Role::Primary,
                Answer::Up {
                    recovery: true,
                    lsn,
                    replay_age,
                    timeline,
                    streaming,
                } => {
                    state.role = Role::Replica;
                    state.replay_lsn = *lsn;
                    // While a primary answers, a replica that streams from
                    // none is frozen at a point that may not be on the
                    // primary's history (the old primary's last writes,
                    // after a failover to the replica that was behind).
                    // While none answers (a failover under way), replicas
                    // serve what they have.
                    if primary_lsn.is_some() && *streaming == Some(false) {
                        state.excluded = Some(format!(
                            "{DIVERGED}: streams from no primary while one answers"
                        ));
                        return state;
                    }
                    // Streaming another timeline than the primary writes:
                    // it follows an old or another primary.
                    if let (Some(ours), Some(theirs)) = (primary_timeline, *timeline) {
                        if ours != theirs {
                            state.excluded = Some(format!(
                                "{DIVERGED}: streams timeline {theirs}, the primary writes timeline {ours}"
                            ));
                            state.other_timeline = true;
                            return state;
                        }
                    }
                    // A replica past the primary's position has WAL the
                    // primary never wrote: it follows another timeline (an
                    // old primary's, after a failover). Excluded until it
                    // replays again (re-synced); a healthy replica that
                    // only looked ahead because the primary was read a
                    // moment earlier moves on by the next round.
                    let ahead = matches!((primary_lsn, lsn), (Some(p), Some(r)) if *r > p);
                    let was_diverged = was
                        .excluded
                        .as_deref()
                        .is_some_and(|e| e.starts_with(DIVERGED));
                    if ahead || (was_diverged && was.replay_lsn == *lsn) {
                        state.excluded = Some(format!(
                            "{DIVERGED}: replayed past the primary's WAL position (another timeline)"
                        ));
                        return state;
                    }
                    // When this round cannot measure the lag (the primary
                    // did not answer: a slow probe under load), the last
                    // measured lag stands, also across a round in which
                    // the replica itself did not answer; otherwise a
                    // lagging replica flapped back (found by loaded test
                    // runs, twice).
                    state.lag_bytes = match (primary_lsn, lsn) {
                        (Some(p), Some(r)) => Some(p.saturating_sub(*r)),
                        _ => was.lag_bytes,
                    };
                    // Caught up: no lag, however long the primary idled.
                    state.lag_seconds = match state.lag_bytes {
                        Some(0) => Some(0.0),
                        _ => *replay_age,
                    };
                    let was_lagging = was
                        .excluded
                        .as_deref()
                        .is_some_and(|e| e.starts_with("lag"));
                    // Hysteresis: back only under half the limit.
                    let scale = if was_lagging { 0.5 } else { 1.0 };
                    let max_bytes = config.max_replica_lag_bytes as f64 * scale;
                    if let Some(bytes) = state.lag_bytes.filter(|b| *b as f64 > max_bytes) {
                        state.excluded = Some(format!("lag of {bytes} bytes"));
                    } else if let (Some(max), Some(secs)) =
                        (config.max_replica_lag, state.lag_seconds)
                    {
                        if secs > max.as_secs_f64() * scale {
                            state.excluded = Some(format!("lag of {secs:.1} s"));
                        }
                    }
                }
            }
            state
        })
        .collect()
}

/// The primary whose position replicas are measured against: the one the
/// operator named, when it answered as a primary; else the one that did
/// (of two, the furthest: a split brain refuses writes anyway).
fn primary_of(answers: &[Answer], named: Option<usize>) -> Option<usize> {
    let is_primary = |a: &Answer| {
        matches!(
            a,
            Answer::Up {
                recovery: false,
                ..
            }
        )
    };
    if let Some(i) = named.filter(|&i| answers.get(i).is_some_and(is_primary)) {
        return Some(i);
    }
    answers
        .iter()
        .enumerate()
        .filter(|(_, a)| is_primary(a))
        .max_by_key(|(_, a)| match a {
            Answer::Up { lsn, .. } => *lsn,
            Answer::Down(_) => None,
        })
        .map(|(i, _)| i)
}

/// Probes one server on `conn` (opened first when there is none); the
/// connection comes back when it is still good.
pub(crate) async fn probe_server(
    targets: Targets<'_>,
    server: usize,
    conn: Option<ServerConn>,
    login: &(String, BackendLogin),
    config: &ReplicationConfig,
    open: &OpenSettings,
) -> (Option<ServerConn>, Answer) {
    let attempt = async {
        let mut conn = match conn {
            Some(conn) => conn,
            None => {
                let profile = Arc::new(StartupProfile {
                    params: vec![("application_name".into(), "pgcell-probe".into())],
                });
                ServerConn::open_server(
                    targets,
                    server,
                    &config.probe_database,
                    &login.0,
                    &login.1,
                    &profile,
                    open,
                )
                .await
                .map_err(|e| e.to_string())?
            }
        };
        let rows = conn
            .run_own(PROBE_QUERY)
            .await
            .map_err(|e| format!("probe query failed: {e:?}"))?;
        Ok::<_, String>((conn, answer_of(&rows)))
    };
    match tokio::time::timeout(config.probe_timeout, attempt).await {
        Ok(Ok((conn, answer))) => (Some(conn), answer),
        Ok(Err(why)) => (None, Answer::Down(why)),
        Err(_) => (
            None,
            Answer::Down(format!("no answer within {:?}", config.probe_timeout)),
        ),
    }
}

/// One probe round over every server of a tenant, at once; `conns` holds
/// the probe's connections between rounds (one slot per server).
pub(crate) async fn probe_round(
    topology: &Topology,
    targets: Targets<'_>,
    conns: &mut Vec<Option<ServerConn>>,
    login: &(String, BackendLogin),
    config: &ReplicationConfig,
    open: &OpenSettings,
) {
    let n = topology.servers().len();
    conns.resize_with(n, || None);
    // Before any question goes out: a primary position read in this round
    // is at or past every commit made before it.
    let started = Instant::now();
    let targets = Targets {
        target: Target::Primary,
        ..targets
    };
    let rounds = (0..n).map(|i| {
        let conn = conns[i].take();
        probe_server(targets, i, conn, login, config, open)
    });
    let results = join_all(rounds).await;
    let mut answers = Vec::with_capacity(n);
    for (i, (conn, answer)) in results.into_iter().enumerate() {
        conns[i] = conn;
        answers.push(answer);
    }
    let previous: Vec<ServerState> = (0..n).map(|i| topology.state(i)).collect();
    let states = judge(
        &answers,
        &previous,
        config,
        Instant::now(),
        topology.named_primary(),
    );
    let primaries = answers
        .iter()
        .filter(|a| {
            matches!(
                a,
                Answer::Up {
                    recovery: false,
                    ..
                }
            )
        })
        .count();
    let round_lsn = match primary_of(&answers, topology.named_primary()).map(|i| &answers[i]) {
        Some(Answer::Up { lsn, .. }) => *lsn,
        _ => None,
    };
    // Replicas' positions first, so that a round is never recorded
    // against replica positions older than it.
    topology.probed(states);
    // Read-your-writes counts a round only with one primary (or the
    // named one): in a split brain without a name, reads stay on it.
    if primaries == 1 || topology.named_primary().is_some() {
        if let Some(lsn) = round_lsn {
            topology.record_round(started, lsn);
        }
    }
}

/// Runs `futures` at once on this task and returns their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<std::pin::Pin<Box<F>>> = futures.map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pending.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(out) => done[i] = Some(out),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn up(recovery: bool, lsn: u64) -> Answer {
        Answer::Up {
            recovery,
            lsn: Some(lsn),
            replay_age: Some(100.0),
            timeline: None,
            streaming: None,
        }
    }

    #[test]
    fn lag_is_measured_against_the_primary_and_excludes_with_hysteresis() {
        let config = ReplicationConfig {
            max_replica_lag_bytes: 1000,
            ..ReplicationConfig::default()
        };
        let now = Instant::now();
        let states = judge(
            &[
                up(false, 10_000),
                up(true, 10_000),
                up(true, 8_000),
                Answer::Down("refused".into()),
            ],
            &[],
            &config,
            now,
            None,
        );
        assert_eq!(states[0].role, Role::Primary);
        assert_eq!(
            (states[1].lag_bytes, states[1].lag_seconds),
            (Some(0), Some(0.0))
        );
        assert!(states[1].excluded.is_none());
        assert_eq!(states[2].excluded.as_deref(), Some("lag of 2000 bytes"));
        assert!(states[3].excluded.as_deref().unwrap().contains("refused"));
        assert_eq!(states[3].role, Role::Unknown);
        // 700 bytes behind: under the limit, but not under half of it.
        let again = judge(
            &[up(false, 10_700), up(true, 10_700), up(true, 10_000)],
            &states,
            &config,
            now,
            None,
        );
        assert!(again[2].excluded.is_some(), "flapped back at 700 of 1000");
        let back = judge(
            &[up(false, 10_700), up(true, 10_700), up(true, 10_300)],
            &again,
            &config,
            now,
            None,
        );
        assert!(back[2].excluded.is_none());
        // A round in which the primary did not answer keeps a lagging
        // replica out.
        let lagging = judge(
            &[up(false, 20_000), up(true, 10_000)],
            &[],
            &config,
            now,
            None,
        );
        assert!(lagging[1].excluded.is_some());
        let blind = judge(
            &[Answer::Down("timeout".into()), up(true, 10_000)],
            &lagging,
            &config,
            now,
            None,
        );
        assert_eq!(blind[1].excluded, lagging[1].excluded);
        // Nor a round in which the replica did not answer, followed by one
        // in which the primary did not.
        let gone = judge(
            &[up(false, 20_000), Answer::Down("timeout".into())],
            &lagging,
            &config,
            now,
            None,
        );
        let back_blind = judge(
            &[Answer::Down("timeout".into()), up(true, 10_000)],
            &gone,
            &config,
            now,
            None,
        );
        assert!(
            back_blind[1]
                .excluded
                .as_deref()
                .is_some_and(|e| e.starts_with("lag")),
            "{:?}",
            back_blind[1].excluded
        );
    }

    #[test]
    fn a_replica_ahead_of_the_primary_is_excluded_until_it_replays_again() {
        let config = ReplicationConfig::default();
        let now = Instant::now();
        // After a failover to the replica that was behind: the other one
        // holds the old primary's WAL, past the new primary's position.
        let states = judge(
            &[up(false, 5_000), up(true, 9_000)],
            &[],
            &config,
            now,
            None,
        );
        assert!(states[1].excluded.as_deref().unwrap().starts_with(DIVERGED));
        assert_eq!(states[1].lag_bytes, None);
        // The new primary passes it; it has not moved: still excluded.
        let later = judge(
            &[up(false, 20_000), up(true, 9_000)],
            &states,
            &config,
            now,
            None,
        );
        assert!(later[1].excluded.as_deref().unwrap().starts_with(DIVERGED));
        // Re-synced, it replays again: back.
        let back = judge(
            &[up(false, 20_000), up(true, 19_990)],
            &later,
            &config,
            now,
            None,
        );
        assert!(back[1].excluded.is_none(), "{:?}", back[1].excluded);
    }

    #[test]
    fn a_replica_on_another_timeline_than_the_named_primary_is_excluded() {
        let config = ReplicationConfig::default();
        let now = Instant::now();
        let on = |recovery, lsn, timeline| Answer::Up {
            recovery,
            lsn: Some(lsn),
            replay_age: None,
            timeline: Some(timeline),
            streaming: Some(true),
        };
        // A split brain the operator settled by naming server 1 (timeline
        // 2); server 2 still streams the other primary (timeline 1) and
        // is past the named one's position, and keeps moving.
        let answers = [on(false, 9_000, 1), on(false, 5_000, 2), on(true, 8_000, 1)];
        let states = judge(&answers, &[], &config, now, Some(1));
        let why = states[2].excluded.as_deref().unwrap();
        assert!(
            why.contains("timeline 1") && why.contains("timeline 2"),
            "{why}"
        );
        assert!(states[2].other_timeline);
        let moved = [on(false, 9_500, 1), on(false, 5_100, 2), on(true, 9_400, 1)];
        assert!(judge(&moved, &states, &config, now, Some(1))[2]
            .excluded
            .is_some());
        // On the primary's timeline and behind it: fine.
        let ok = judge(
            &[on(false, 9_000, 2), on(true, 8_900, 2)],
            &[],
            &config,
            now,
            None,
        );
        assert!(ok[1].excluded.is_none());
        // Streaming from nothing while a primary answers: out; while none
        // answers (a failover under way): it serves what it has.
        let frozen = Answer::Up {
            recovery: true,
            lsn: Some(8_900),
            replay_age: None,
            timeline: None,
            streaming: Some(false),
        };
        let out = judge(
            &[on(false, 9_000, 2), frozen.clone()],
            &[],
            &config,
            now,
            None,
        );
        assert!(out[1]
            .excluded
            .as_deref()
            .unwrap()
            .contains("streams from no primary"));
        let outage = judge(
            &[Answer::Down("gone".into()), frozen],
            &[],
            &config,
            now,
            None,
        );
        assert!(outage[1].excluded.is_none());
        // Unknown timeline (no right to read it): the position rules only.
        let blind = judge(
            &[on(false, 9_000, 2), up(true, 8_900)],
            &[],
            &config,
            now,
            None,
        );
        assert!(blind[1].excluded.is_none());
    }

    #[test]
    fn rows_are_read_whatever_they_hold() {
        let rows = |v: &[(&str, &str)]| -> Vec<(String, String)> {
            v.iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect()
        };
        assert_eq!(
            answer_of(&rows(&[
                ("recovery", "true"),
                ("lsn", "123"),
                ("replay_age", "")
            ])),
            Answer::Up {
                recovery: true,
                lsn: Some(123),
                replay_age: None,
                timeline: None,
                streaming: None
            }
        );
        assert!(matches!(answer_of(&rows(&[])), Answer::Down(_)));
        assert!(matches!(
            answer_of(&rows(&[("recovery", "false"), ("lsn", "x")])),
            Answer::Up { lsn: None, .. }
        ));
    }
}
