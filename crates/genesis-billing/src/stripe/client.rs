//! The HTTP transport to Stripe: auth, pinned version, idempotency keys, timeouts, retries, rate limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{HeaderMap, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::error::StripeError;
use super::form::Form;
use super::rate_limit::{RateLimiter, SharedBudget};
use super::retry::{decide, Decision, RetryPolicy};
use crate::metrics::Metrics;

/// The Stripe API version genesis-billing is written against (SPEC §4).
pub const STRIPE_VERSION: &str = "2026-09-30.endive";

/// Everything the client needs to reach Stripe.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    pub api_base: String,
    pub key: SecretString,
    pub timeout: Duration,
    pub retry: RetryPolicy,
    pub rate_limit_per_second: u32,
}

/// A Stripe API client. Clone it freely: clones share the connection pool and the rate limiter.
#[derive(Clone)]
pub struct StripeClient {
    http: reqwest::Client,
    base: Arc<str>,
    key: SecretString,
    retry: RetryPolicy,
    limiter: Arc<RateLimiter>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for StripeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StripeClient")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

/// One logical Stripe call; retried attempts reuse it unchanged, idempotency key included.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub method: Method,
    pub path: &'a str,
    pub form: Form,
    pub idempotency_key: Option<String>,
    /// Label for metrics, e.g. `customer.create`.
    pub operation: &'static str,
}

impl<'a> Call<'a> {
    pub fn get(operation: &'static str, path: &'a str, query: Form) -> Self {
        Self {
            method: Method::GET,
            path,
            form: query,
            idempotency_key: None,
            operation,
        }
    }
    pub fn post(operation: &'static str, path: &'a str, form: Form, key: Option<String>) -> Self {
        Self {
            method: Method::POST,
            path,
            form,
            idempotency_key: key,
            operation,
        }
    }
    pub fn delete(operation: &'static str, path: &'a str) -> Self {
        Self {
            method: Method::DELETE,
            path,
            form: Form::new(),
            idempotency_key: None,
            operation,
        }
    }
}

impl StripeClient {
    pub fn new(config: ClientConfig, metrics: Arc<Metrics>) -> Result<Self, StripeError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(64)
            .build()
            .map_err(|e| StripeError::Connection(e.to_string()))?;
        // Bursts of a tenth of a second's budget keep us under Stripe's own bucket at any phase.
        let burst = (config.rate_limit_per_second / 10).max(1);
        Ok(Self {
            http,
            base: config.api_base.trim_end_matches('/').into(),
            key: config.key,
            retry: config.retry,
            limiter: Arc::new(RateLimiter::new(config.rate_limit_per_second, burst)),
            metrics,
        })
    }

    /// Draws this client's rate limit from `budget`, shared with the other replicas, instead of from this
    /// process alone (same rate and burst; see `rate_limit`).
    pub fn with_shared_rate_limit(mut self, budget: Arc<dyn SharedBudget>) -> Self {
        self.limiter = Arc::new(self.limiter.sharing(budget));
        self
    }

    /// Sends a call, retrying transient failures per the policy; each attempt waits for the rate limiter.
    pub async fn send(&self, call: &Call<'_>) -> Result<Value, StripeError> {
        let mut attempt = 1;
        loop {
            self.limiter.acquire().await;
            let started = Instant::now();
            let result = self.attempt(call).await;
            let outcome = match &result {
                Ok(_) => "ok".to_owned(),
                Err(e) => e.reason(),
            };
            self.metrics
                .stripe_request(call.operation, &outcome, started.elapsed().as_secs_f64());
            let err = match result {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if err.status() == Some(429) {
                self.metrics.stripe_rate_limited();
            }
            match decide(&err, attempt, &self.retry, fastrand::f64()) {
                Decision::Retry { after, reason } => {
                    tracing::debug!(operation = call.operation, attempt, ?after, error = %err, "retrying Stripe call");
                    self.metrics.stripe_retry(call.operation, reason);
                    tokio::time::sleep(after).await;
                    attempt += 1;
                }
                Decision::Stop => return Err(err),
            }
        }
    }

    async fn attempt(&self, call: &Call<'_>) -> Result<Value, StripeError> {
        let mut url = format!("{}{}", self.base, call.path);
        let mut request = if call.method == Method::POST {
            self.http
                .post(&url)
                .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                .body(call.form.encode())
        } else {
            if !call.form.is_empty() {
                url.push(if url.contains('?') { '&' } else { '?' });
                url.push_str(&call.form.encode());
            }
            self.http.request(call.method.clone(), &url)
        };
        request = request
            .header(
                AUTHORIZATION,
                format!("Bearer {}", self.key.expose_secret()),
            )
            .header("Stripe-Version", STRIPE_VERSION)
            .header(
                USER_AGENT,
                concat!("genesis-billing/", env!("CARGO_PKG_VERSION")),
            );
        if let Some(key) = &call.idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.map_err(transport_error)?;
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = response.bytes().await.map_err(transport_error)?;
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| StripeError::Decode(e.to_string()));
        }
        Err(api_error(status, &headers, &body))
    }
}

fn transport_error(e: reqwest::Error) -> StripeError {
    if e.is_timeout() {
        StripeError::Timeout
    } else {
        // Walk the source chain: reqwest's top-level message alone ("error sending request") hides the cause.
        let mut causes = String::new();
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            causes.push_str(": ");
            causes.push_str(&s.to_string());
            source = s.source();
        }
        StripeError::Connection(format!("{}{causes}", e.without_url()))
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn api_error(status: u16, headers: &HeaderMap, body: &[u8]) -> StripeError {
    let parsed: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let error = &parsed["error"];
    let text = |k: &str| error[k].as_str().map(str::to_owned);
    StripeError::Api(Box::new(super::error::ApiError {
        status,
        kind: text("type").unwrap_or_else(|| "api_error".into()),
        code: text("code"),
        decline_code: text("decline_code"),
        message: text("message")
            .unwrap_or_else(|| format!("HTTP {status} without a Stripe error body")),
        param: text("param"),
        request_id: header_str(headers, "request-id").map(str::to_owned),
        should_retry: header_str(headers, "stripe-should-retry")
            .map(|v| v.eq_ignore_ascii_case("true")),
        retry_after: header_str(headers, "retry-after")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs),
        replayed: header_str(headers, "idempotent-replayed")
            .is_some_and(|v| v.eq_ignore_ascii_case("true")),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn an_error_response_keeps_what_stripe_said() {
        let mut headers = HeaderMap::new();
        headers.insert("request-id", HeaderValue::from_static("req_123"));
        headers.insert("stripe-should-retry", HeaderValue::from_static("false"));
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
        let body = br#"{"error":{"type":"card_error","code":"card_declined","decline_code":"generic_decline","message":"Your card was declined.","param":"payment_method"}}"#;
        match api_error(402, &headers, body) {
            StripeError::Api(e) => {
                assert_eq!(e.status, 402);
                assert_eq!(e.kind, "card_error");
                assert_eq!(e.code.as_deref(), Some("card_declined"));
                assert_eq!(e.decline_code.as_deref(), Some("generic_decline"));
                assert_eq!(e.message, "Your card was declined.");
                assert_eq!(e.param.as_deref(), Some("payment_method"));
                assert_eq!(e.request_id.as_deref(), Some("req_123"));
                assert_eq!(e.should_retry, Some(false));
                assert!(e.replayed);
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_non_json_error_body_still_gives_a_clear_error() {
        let err = api_error(502, &HeaderMap::new(), b"<html>bad gateway</html>");
        assert_eq!(err.status(), Some(502));
        assert!(err.to_string().contains("502"), "{err}");
    }
}
