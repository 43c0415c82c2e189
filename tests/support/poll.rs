//! Waiting for a condition with a bounded deadline, instead of sleeping a
//! fixed time before an assertion.

use std::fmt::Debug;
use std::future::Future;
use std::time::{Duration, Instant};

/// How long [`poll`] waits between two checks.
pub const INTERVAL: Duration = Duration::from_millis(50);

/// What a check returns: `true`, `Some(value)` or `Ok(value)` when the
/// condition holds; `false`, `None` or `Err(what was seen instead)` when
/// it does not yet.
pub trait Outcome {
    /// What the condition yields when it holds.
    type Value;
    /// `Ok` when the condition holds, else what was seen (if anything).
    fn outcome(self) -> Result<Self::Value, Option<String>>;
}

impl Outcome for bool {
    type Value = ();
    fn outcome(self) -> Result<(), Option<String>> {
        if self {
            Ok(())
        } else {
            Err(None)
        }
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn outcome(self) -> Result<T, Option<String>> {
        self.ok_or(None)
    }
}

impl<T, E: Debug> Outcome for Result<T, E> {
    type Value = T;
    fn outcome(self) -> Result<T, Option<String>> {
        self.map_err(|e| Some(format!("{e:?}")))
    }
}

/// Runs `check` every [`INTERVAL`] until its condition holds or `within`
/// passes; `Err` carries the last thing seen.
pub async fn poll<F, Fut>(
    within: Duration,
    mut check: F,
) -> Result<<Fut::Output as Outcome>::Value, Option<String>>
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    let deadline = Instant::now() + within;
    loop {
        let seen = match check().await.outcome() {
            Ok(value) => return Ok(value),
            Err(seen) => seen,
        };
        if Instant::now() >= deadline {
            return Err(seen);
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// [`poll`], failing the test with `what` (and the last thing seen) when
/// the condition does not hold within `within`.
pub async fn eventually<F, Fut>(
    within: Duration,
    what: &str,
    check: F,
) -> <Fut::Output as Outcome>::Value
where
    F: FnMut() -> Fut,
    Fut: Future,
    Fut::Output: Outcome,
{
    match poll(within, check).await {
        Ok(value) => value,
        Err(None) => panic!("not within {within:?}: {what}"),
        Err(Some(seen)) => panic!("not within {within:?}: {what} (last: {seen})"),
    }
}
