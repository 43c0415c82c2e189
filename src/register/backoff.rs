//! Capped exponential backoff with jitter for ELBv2 retries.
//!
//! Many replicas of one cell restart together (a rollout, a node drain) and
//! share the account's ELBv2 request quota: the jitter spreads their
//! retries, the cap keeps a long throttling spell from stretching the waits
//! past what an operator would tolerate.

use std::time::Duration;

/// The first retry's upper bound.
pub(crate) const BASE: Duration = Duration::from_millis(200);
/// No wait is longer than this.
pub(crate) const CAP: Duration = Duration::from_secs(20);

/// Retry delays for one operation.
#[derive(Debug, Default)]
pub(crate) struct Backoff {
    attempt: u32,
}

impl Backoff {
    /// A fresh sequence.
    pub(crate) fn new() -> Backoff {
        Backoff::default()
    }

    /// The wait before the next retry.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let random = getrandom::u64().unwrap_or(u64::from(self.attempt));
        let d = delay(self.attempt, random);
        self.attempt = self.attempt.saturating_add(1);
        d
    }

    /// Failed attempts so far.
    #[cfg(test)]
    fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// "Equal jitter": half of `min(CAP, BASE·2^attempt)` fixed, the other
/// half drawn from `random`, so a retry never comes immediately and never
/// waits longer than the cap.
pub(crate) fn delay(attempt: u32, random: u64) -> Duration {
    let ceiling = BASE
        .checked_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX))
        .unwrap_or(CAP)
        .min(CAP);
    let half = ceiling / 2;
    let span = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    let jitter = if span == 0 { 0 } else { random % (span + 1) };
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_then_caps() {
        assert_eq!(delay(0, 0), Duration::from_millis(100));
        assert_eq!(
            delay(0, u64::MAX),
            Duration::from_millis(100 + u64::MAX % 101)
        );
        assert_eq!(delay(1, 0), Duration::from_millis(200));
        assert_eq!(delay(3, 0), Duration::from_millis(800));
        assert_eq!(delay(10, 0), CAP / 2);
        assert_eq!(delay(1000, 0), CAP / 2);
        for attempt in [0, 1, 5, 7, 8, 31, 32, 200] {
            for random in [0, 1, 99, 12345, u64::MAX] {
                let d = delay(attempt, random);
                assert!(d <= CAP, "{attempt} {random} {d:?}");
                assert!(d >= BASE / 2, "{attempt} {random} {d:?}");
            }
        }
    }

    #[test]
    fn jitter_spreads() {
        let a = delay(4, 0);
        let b = delay(4, 1_000);
        assert!(b > a);
        assert!(b <= BASE * 16);
    }

    #[test]
    fn sequence_counts_attempts() {
        let mut b = Backoff::new();
        let first = b.next_delay();
        assert!(first <= BASE);
        for _ in 0..20 {
            assert!(b.next_delay() <= CAP);
        }
        assert_eq!(b.attempts(), 21);
    }
}
