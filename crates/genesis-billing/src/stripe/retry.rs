//! When to retry a Stripe call and how long to wait: a pure function, so the policy is table-tested.

use std::time::Duration;

use super::error::StripeError;

/// Attempts and backoff for Stripe calls.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Total attempts including the first (default 3: waits of about 1 s, then 2 s).
    pub max_attempts: u32,
    pub base_delay: Duration,
    /// Upper bound for one wait, including a server's `Retry-After`.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
        }
    }
}

/// What to do after a failed attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Wait this long, then try again; `reason` labels the retry metric.
    Retry {
        after: Duration,
        reason: &'static str,
    },
    Stop,
}

/// Why a failure is worth retrying, or `None` when it is not.
///
/// `Stripe-Should-Retry` wins over everything, as in Stripe's own SDKs; otherwise connection errors,
/// timeouts, 409 (idempotency key in use), 429 and 5xx are transient and other 4xx are final. A replayed
/// response is final too: the caller must look the object up instead (SPEC §1.1 step 6).
pub fn retry_reason(err: &StripeError) -> Option<&'static str> {
    match err {
        StripeError::Connection(_) => Some("connection"),
        StripeError::Timeout => Some("timeout"),
        StripeError::Decode(_) => None,
        // A response Stripe stored under the idempotency key comes back identically on every retry.
        StripeError::Api(e) if e.replayed => None,
        StripeError::Api(e) => match (e.should_retry, e.status) {
            (Some(false), _) => None,
            (Some(true), _) => Some("should_retry"),
            (None, 409) => Some("conflict"),
            (None, 429) => Some("rate_limited"),
            (None, s) if s >= 500 => Some("server_error"),
            (None, _) => None,
        },
    }
}

/// Decides after attempt number `attempt` (1-based) failed with `err`.
///
/// `jitter` is a number in `[0, 1)` supplied by the caller, which keeps this function pure.
pub fn decide(err: &StripeError, attempt: u32, policy: &RetryPolicy, jitter: f64) -> Decision {
    let Some(reason) = retry_reason(err) else {
        return Decision::Stop;
    };
    if attempt >= policy.max_attempts {
        return Decision::Stop;
    }
    let after = match err {
        StripeError::Api(e) if e.retry_after.is_some() => e.retry_after.unwrap_or_default(),
        _ => {
            let exp = policy
                .base_delay
                .saturating_mul(1u32 << (attempt - 1).min(16));
            // ±25 % around the exponential step so a fleet of callers does not retry in lockstep.
            exp.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0))
        }
    };
    Decision::Retry {
        after: after.min(policy.max_delay),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn replayed(status: u16) -> StripeError {
        match api(status, None, None) {
            StripeError::Api(mut e) => {
                e.replayed = true;
                StripeError::Api(e)
            }
            other => other,
        }
    }

    fn api(status: u16, should_retry: Option<bool>, retry_after: Option<u64>) -> StripeError {
        StripeError::Api(Box::new(crate::stripe::error::ApiError {
            status,
            kind: "api_error".into(),
            code: None,
            decline_code: None,
            message: String::new(),
            param: None,
            request_id: None,
            should_retry,
            retry_after: retry_after.map(Duration::from_secs),
            replayed: false,
        }))
    }

    #[test]
    fn the_policy_table_holds() {
        let policy = RetryPolicy::default();
        let s = Duration::from_secs;
        #[rustfmt::skip]
        let table: Vec<(StripeError, u32, Decision)> = vec![
            (StripeError::Connection("reset".into()), 1, Decision::Retry { after: s(1), reason: "connection" }),
            (StripeError::Timeout, 2, Decision::Retry { after: s(2), reason: "timeout" }),
            (StripeError::Timeout, 3, Decision::Stop),
            (api(409, None, None), 1, Decision::Retry { after: s(1), reason: "conflict" }),
            (api(429, None, None), 1, Decision::Retry { after: s(1), reason: "rate_limited" }),
            (api(500, None, None), 1, Decision::Retry { after: s(1), reason: "server_error" }),
            (api(503, None, None), 2, Decision::Retry { after: s(2), reason: "server_error" }),
            (api(500, Some(false), None), 1, Decision::Stop),
            (api(400, Some(true), None), 1, Decision::Retry { after: s(1), reason: "should_retry" }),
            (api(400, None, None), 1, Decision::Stop),
            (api(402, None, None), 1, Decision::Stop),
            (api(404, None, None), 1, Decision::Stop),
            (api(429, None, Some(7)), 1, Decision::Retry { after: s(7), reason: "rate_limited" }),
            (api(429, None, Some(600)), 1, Decision::Retry { after: s(30), reason: "rate_limited" }),
            (StripeError::Decode("x".into()), 1, Decision::Stop),
            (replayed(500), 1, Decision::Stop),
        ];
        for (err, attempt, want) in table {
            assert_eq!(
                decide(&err, attempt, &policy, 0.5),
                want,
                "{err:?} attempt {attempt}"
            );
        }
    }

    #[test]
    fn jitter_spreads_the_wait_by_a_quarter_either_way() {
        let policy = RetryPolicy::default();
        let err = StripeError::Timeout;
        let low = decide(&err, 1, &policy, 0.0);
        let high = decide(&err, 1, &policy, 0.999_999);
        assert_eq!(
            low,
            Decision::Retry {
                after: Duration::from_millis(750),
                reason: "timeout"
            }
        );
        match high {
            Decision::Retry { after, .. } => {
                assert!(after > Duration::from_millis(1249) && after <= Duration::from_millis(1250))
            }
            Decision::Stop => panic!("expected a retry"),
        }
    }

    #[test]
    fn more_attempts_double_the_wait() {
        let policy = RetryPolicy {
            max_attempts: 4,
            ..RetryPolicy::default()
        };
        let waits: Vec<_> = (1..4)
            .map(|n| decide(&StripeError::Timeout, n, &policy, 0.5))
            .collect();
        let s = Duration::from_secs;
        assert_eq!(
            waits,
            vec![
                Decision::Retry {
                    after: s(1),
                    reason: "timeout"
                },
                Decision::Retry {
                    after: s(2),
                    reason: "timeout"
                },
                Decision::Retry {
                    after: s(4),
                    reason: "timeout"
                },
            ]
        );
    }
}
