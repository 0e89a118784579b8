//! The one retry policy: exponential backoff with full jitter and a cap, honouring
//! `Retry-After`. It decides nothing about *what* is retryable: the error says so through
//! [`Retryable`] (for FHIR requests: transport errors, timeouts, 408, 429, 5xx and cut bodies).
//! It does not time out a single attempt; the HTTP client's timeout does that.
//!
//! After the attempt numbered `n` (from 0) fails, the policy sleeps a uniformly random time in
//! `[0, min(max_delay, base_delay · 2ⁿ)]` ("full jitter", which spreads out clients that failed
//! together), in whole milliseconds. When the server sent `Retry-After`, the sleep is at least
//! that long, but never longer than [`RetryPolicy::max_retry_after`] (120 s by default): a
//! server asking for an hour gets asked again after two minutes, and the caller sees the
//! error if it still refuses when the attempts are spent.

use std::future::Future;
use std::time::Duration;

use rand::RngExt;
use tracing::{debug, warn};

/// Retries made by every policy in the process, for the service's `/metrics`: a process-wide
/// count is what an operator watches, and it costs one relaxed add per retry.
pub(crate) static RETRIES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// What a retry loop needs to know about an error.
pub trait Retryable {
    /// Whether sending the same request again may succeed.
    fn is_retryable(&self) -> bool;
    /// How long the server asked to wait (`Retry-After`).
    fn retry_after(&self) -> Option<Duration> {
        None
    }
    /// The HTTP status, for the log line.
    fn status(&self) -> Option<u16> {
        None
    }
}

/// How often and how patiently to retry. See the module docs for the delays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (0 counts as 1).
    pub max_attempts: u32,
    /// The ceiling of the first backoff; it doubles with every attempt.
    pub base_delay: Duration,
    /// The cap of the backoff ceiling.
    pub max_delay: Duration,
    /// The longest `Retry-After` honoured; longer requests are cut to this.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    /// 5 attempts, 500 ms base, 30 s cap, `Retry-After` honoured up to 120 s.
    fn default() -> Self {
        Self {
            max_attempts: 5,
            base_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(120),
        }
    }
}

impl RetryPolicy {
    /// A policy that tries once and never retries.
    pub fn never() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// The upper bound of the backoff after attempt `attempt` (from 0) failed:
    /// `min(max_delay, base_delay · 2^attempt)`.
    fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
        self.base_delay
            .checked_mul(factor)
            .unwrap_or(Duration::MAX)
            .min(self.max_delay)
    }

    /// The sleep after attempt `attempt` (from 0) failed, given the server's `Retry-After`.
    pub(crate) fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling_ms = u64::try_from(self.ceiling(attempt).as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(rand::rng().random_range(0..=ceiling_ms));
        match retry_after {
            Some(asked) => jitter.max(asked.min(self.max_retry_after)),
            None => jitter,
        }
    }

    /// Runs `op` until it succeeds, fails with an error that is not retryable, or the attempts
    /// are spent; returns the last result. Each retry is logged at WARN.
    pub(crate) async fn run<T, E, F, Fut>(&self, mut op: F) -> Result<T, E>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
        E: Retryable + std::fmt::Display,
    {
        let max_attempts = self.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            let err = match op().await {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            if !err.is_retryable() {
                return Err(err);
            }
            if attempt + 1 >= max_attempts {
                debug!(
                    attempts = attempt + 1,
                    status = err.status(),
                    "retries spent"
                );
                return Err(err);
            }
            let delay = self.delay(attempt, err.retry_after());
            let text = err.to_string();
            warn!(
                attempt = attempt + 1,
                max_attempts,
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                status = err.status(),
                retry_after_s = err.retry_after().map(|d| d.as_secs()),
                error = text.lines().next().unwrap_or_default(),
                "request failed, retrying"
            );
            RETRIES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use reqwest::{Method, StatusCode, Url};
    use tokio::time::Instant;

    use super::*;
    use crate::fhir::FhirError;

    fn status(code: u16, retry_after: Option<Duration>) -> FhirError {
        FhirError::Status {
            method: Method::GET,
            status: StatusCode::from_u16(code).expect("a valid status"),
            url: Url::parse("http://127.0.0.1:1/Patient")
                .expect("a valid URL")
                .into(),
            outcome: None,
            retry_after,
        }
    }

    /// Runs `policy` over an operation that fails with `fail(n)` for attempt `n` (from 0) until
    /// `fail` returns `None`; returns the result and the sleeps between attempts.
    async fn record(
        policy: &RetryPolicy,
        fail: impl Fn(usize) -> Option<FhirError>,
    ) -> (Result<usize, FhirError>, Vec<Duration>) {
        let stamps = Arc::new(Mutex::new(Vec::new()));
        let result = policy
            .run(|| {
                let mut s = stamps.lock().expect("not poisoned");
                s.push(Instant::now());
                let n = s.len() - 1;
                let outcome = fail(n).map_or(Ok(n), Err);
                async move { outcome }
            })
            .await;
        let stamps = stamps.lock().expect("not poisoned");
        let gaps = stamps.windows(2).map(|w| w[1] - w[0]).collect();
        (result, gaps)
    }

    fn policy(max_attempts: u32, base_ms: u64, cap_ms: u64) -> RetryPolicy {
        RetryPolicy {
            max_attempts,
            base_delay: Duration::from_millis(base_ms),
            max_delay: Duration::from_millis(cap_ms),
            max_retry_after: Duration::from_secs(120),
        }
    }

    #[test]
    fn ceiling_doubles_up_to_the_cap_without_overflow() {
        let p = policy(10, 100, 1_000);
        let ceilings: Vec<u64> = (0..6).map(|n| p.ceiling(n).as_millis() as u64).collect();
        assert_eq!(ceilings, [100, 200, 400, 800, 1_000, 1_000]);
        assert_eq!(p.ceiling(40), Duration::from_millis(1_000));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_millis(1_000));
    }

    #[tokio::test(start_paused = true)]
    async fn full_jitter_stays_within_the_doubling_ceiling() {
        let p = policy(6, 100, 60_000);
        let mut below_half = 0;
        for _ in 0..50 {
            let (result, gaps) = record(&p, |_| Some(status(503, None))).await;
            assert_eq!(
                result.expect_err("always 503").status(),
                Some(StatusCode::SERVICE_UNAVAILABLE)
            );
            assert_eq!(gaps.len(), 5, "six attempts, five sleeps");
            for (n, gap) in gaps.iter().enumerate() {
                let ceiling = p.ceiling(n as u32);
                assert!(*gap <= ceiling, "sleep {n} was {gap:?}, above {ceiling:?}");
                if *gap < ceiling / 2 {
                    below_half += 1;
                }
            }
        }
        // Full jitter, not "ceiling plus a little": about half of 250 sleeps fall below half the
        // ceiling. Fewer than 50 would mean the delays are not spread over [0, ceiling].
        assert!(
            below_half > 50,
            "only {below_half} of 250 sleeps below half the ceiling"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_cap_bounds_every_sleep() {
        let p = policy(12, 1_000, 2_000);
        let (result, gaps) = record(&p, |_| Some(status(500, None))).await;
        assert!(result.is_err());
        assert_eq!(gaps.len(), 11);
        assert!(
            gaps.iter().all(|g| *g <= Duration::from_secs(2)),
            "{gaps:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_a_floor_and_is_capped() {
        let p = policy(3, 10, 50);
        let (result, gaps) = record(&p, |n| {
            (n < 1).then(|| status(429, Some(Duration::from_secs(3))))
        })
        .await;
        assert_eq!(result.expect("succeeds on the second attempt"), 1);
        assert_eq!(gaps, [Duration::from_secs(3)]);

        // An hour is cut to max_retry_after.
        let (_, gaps) = record(&p, |n| {
            (n < 1).then(|| status(503, Some(Duration::from_secs(3_600))))
        })
        .await;
        assert_eq!(gaps, [Duration::from_secs(120)]);

        // A Retry-After shorter than the drawn backoff leaves the backoff in charge.
        let slow = policy(2, 60_000, 60_000);
        let (_, gaps) = record(&slow, |n| {
            (n < 1).then(|| status(429, Some(Duration::ZERO)))
        })
        .await;
        assert!(gaps[0] <= Duration::from_secs(60));
    }

    #[tokio::test(start_paused = true)]
    async fn client_errors_are_not_retried() {
        let p = policy(5, 10, 100);
        for code in [400, 401, 403, 404, 409, 422] {
            let (result, gaps) = record(&p, |_| Some(status(code, None))).await;
            assert_eq!(
                result.expect_err("fails").status().map(|s| s.as_u16()),
                Some(code)
            );
            assert!(gaps.is_empty(), "{code} was retried");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error() {
        let p = policy(3, 10, 100);
        let codes = [500, 502, 504, 503];
        let (result, gaps) = record(&p, |n| Some(status(codes[n], None))).await;
        assert_eq!(gaps.len(), 2);
        assert_eq!(
            result.expect_err("fails").status(),
            Some(StatusCode::GATEWAY_TIMEOUT)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retries_until_success_and_zero_attempts_means_one() {
        let p = policy(5, 10, 100);
        let (result, gaps) = record(&p, |n| (n < 3).then(|| status(408, None))).await;
        assert_eq!(result.expect("succeeds on the fourth attempt"), 3);
        assert_eq!(gaps.len(), 3);

        let (result, gaps) = record(&policy(0, 10, 100), |_| Some(status(503, None))).await;
        assert!(result.is_err());
        assert!(gaps.is_empty());
    }
}
