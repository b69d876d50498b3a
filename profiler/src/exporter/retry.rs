//! Which gRPC failures are worth retrying, and how long to wait.
//!
//! Follows the OTLP specification: CANCELLED, DEADLINE_EXCEEDED, ABORTED,
//! OUT_OF_RANGE, UNAVAILABLE and DATA_LOSS are retryable; RESOURCE_EXHAUSTED
//! only when the server says when to come back (`google.rpc.RetryInfo` in
//! the status details); everything else is permanent. A server's
//! `RetryInfo` delay is honoured as given.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::StatusExt;

use super::config::RetryPolicy;

/// A server-given delay longer than this is taken as this.
const MAX_SERVER_DELAY: Duration = Duration::from_secs(600);

/// What to do after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again; `Some` when the server said how long to wait.
    Retry(Option<Duration>),
    /// Drop the batch.
    Permanent,
}

/// Classifies a failed export.
pub fn classify(status: &Status) -> Verdict {
    let server_delay = status
        .get_details_retry_info()
        .and_then(|info| info.retry_delay)
        .map(|d| d.min(MAX_SERVER_DELAY));
    match status.code() {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Verdict::Retry(server_delay),
        Code::ResourceExhausted if server_delay.is_some() => Verdict::Retry(server_delay),
        _ => Verdict::Permanent,
    }
}

/// The wait before attempt `attempts + 1` (after `attempts` failures, at
/// least one): `initial * multiplier^(attempts-1)` capped at the maximum,
/// then jittered into its upper half so that agents restarted together do
/// not retry in step. A server-given delay is used as is.
pub fn backoff(policy: &RetryPolicy, attempts: u32, server_delay: Option<Duration>) -> Duration {
    if let Some(delay) = server_delay {
        return delay;
    }
    let exponent = attempts.saturating_sub(1).min(64) as i32;
    let nominal = policy.initial_backoff.as_secs_f64() * policy.multiplier.max(1.0).powi(exponent);
    let capped = nominal.min(policy.max_backoff.as_secs_f64()).max(0.0);
    Duration::from_secs_f64(capped * (0.5 + 0.5 * fastrand::f64()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn retryable_codes() {
        assert_eq!(classify(&Status::unavailable("down")), Verdict::Retry(None));
        assert_eq!(
            classify(&Status::deadline_exceeded("slow")),
            Verdict::Retry(None)
        );
        assert_eq!(
            classify(&Status::resource_exhausted("full")),
            Verdict::Permanent
        );
        assert_eq!(
            classify(&Status::invalid_argument("bad")),
            Verdict::Permanent
        );
        assert_eq!(
            classify(&Status::unauthenticated("who")),
            Verdict::Permanent
        );
        let with_info = Status::with_error_details(
            Code::ResourceExhausted,
            "slow down",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        );
        assert_eq!(
            classify(&with_info),
            Verdict::Retry(Some(Duration::from_millis(1500)))
        );
    }

    #[test]
    fn backoff_grows_with_jitter_and_a_cap() {
        let policy = RetryPolicy {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            multiplier: 2.0,
        };
        for _ in 0..50 {
            let first = backoff(&policy, 1, None);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let third = backoff(&policy, 3, None);
            assert!(third >= Duration::from_millis(200) && third <= Duration::from_millis(400));
            let late = backoff(&policy, 40, None);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
        assert_eq!(
            backoff(&policy, 1, Some(Duration::from_secs(7))),
            Duration::from_secs(7)
        );
    }
}
