//! One rule for a release on probation, services and policies alike.
//!
//! After a swap, the new code is watched for [`PROBATION`] with the old code kept beside it. If
//! its outcomes (a service's requests, a policy's decisions) fail at least
//! [`ROLLBACK_MIN_FAILURES`] times and more often than they succeed within that time, it is
//! rolled back. Pure: time comes in as `now`, so the rule is tested without waiting.

use std::time::Duration;

use tokio::time::Instant;

/// How long a swapped-in release is watched.
pub(crate) const PROBATION: Duration = Duration::from_secs(3);
/// A release needs at least this many failures in probation to be rolled back.
pub(crate) const ROLLBACK_MIN_FAILURES: u64 = 5;

/// Where a swap stands, as the admin API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum SwapState {
    /// Watched; the old release is kept for a rollback.
    Probation,
    /// Probation passed; the old release is freed.
    Serving,
    /// Failed its probation; the old release serves again.
    RolledBack,
}

/// What the rule says of a release on probation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Still watched.
    Watching,
    /// Probation is over and it held.
    Passed,
    /// Roll it back, for this reason.
    RollBack(String),
}

/// The start of one release's probation.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Probation {
    since: Instant,
}

impl Probation {
    pub(crate) fn start(now: Instant) -> Self {
        Self { since: now }
    }

    /// Judges `failed` and `succeeded` outcomes (of `what`: "requests", "decisions") at `now`.
    pub(crate) fn judge(&self, failed: u64, succeeded: u64, what: &str, now: Instant) -> Verdict {
        let elapsed = now.saturating_duration_since(self.since);
        if failed >= ROLLBACK_MIN_FAILURES && failed > succeeded {
            return Verdict::RollBack(format!(
                "{failed} of its first {} {what} failed within {elapsed:?} of the swap",
                failed + succeeded
            ));
        }
        if elapsed >= PROBATION {
            return Verdict::Passed;
        }
        Verdict::Watching
    }

    /// Whether probation is over at `now` (whatever the outcomes).
    pub(crate) fn over(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= PROBATION
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_failures_that_are_most_outcomes_roll_back_and_probation_ends_at_three_seconds() {
        let start = Instant::now();
        let probation = Probation::start(start);
        let at = |ms| start + Duration::from_millis(ms);
        assert_eq!(
            probation.judge(4, 0, "requests", at(100)),
            Verdict::Watching
        );
        assert_eq!(
            probation.judge(5, 5, "requests", at(100)),
            Verdict::Watching
        );
        assert_eq!(
            probation.judge(5, 4, "decisions", at(250)),
            Verdict::RollBack("5 of its first 9 decisions failed within 250ms of the swap".into())
        );
        assert_eq!(
            probation.judge(2, 1, "requests", at(2999)),
            Verdict::Watching
        );
        assert_eq!(probation.judge(2, 1, "requests", at(3000)), Verdict::Passed);
        assert!(!probation.over(at(2999)) && probation.over(at(3000)));
    }

    #[test]
    fn swap_states_are_kebab_case_in_json() {
        let json = serde_json::to_string(&[
            SwapState::Probation,
            SwapState::Serving,
            SwapState::RolledBack,
        ])
        .unwrap_or_default();
        assert_eq!(json, r#"["probation","serving","rolled-back"]"#);
    }
}
