//! Errors from Stripe calls, keeping everything Stripe told us (type, code, status, request id).

use std::time::Duration;

/// What Stripe said when it answered with an error object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// Stripe's `type` (`invalid_request_error`, `card_error`, ...).
    pub kind: String,
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub message: String,
    pub param: Option<String>,
    pub request_id: Option<String>,
    pub should_retry: Option<bool>,
    pub retry_after: Option<Duration>,
    /// `Idempotent-Replayed: true`: Stripe returned a stored response for this key.
    pub replayed: bool,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Stripe {} {}", self.status, self.kind)?;
        if let Some(c) = &self.code {
            write!(f, "/{c}")?;
        }
        write!(
            f,
            ": {} (request {})",
            self.message,
            self.request_id.as_deref().unwrap_or("-")
        )
    }
}

/// A failed Stripe call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error object (boxed: it is large, and errors travel through many `Result`s).
    #[error("{0}")]
    Api(Box<ApiError>),
    /// No HTTP response: connection refused or reset, DNS, TLS.
    #[error("could not reach Stripe: {0}")]
    Connection(String),
    /// The per-request timeout elapsed.
    #[error("Stripe did not answer within the timeout")]
    Timeout,
    /// Stripe answered 2xx with a body we could not read.
    #[error("unreadable response from Stripe: {0}")]
    Decode(String),
}

impl StripeError {
    /// HTTP status, when Stripe answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api(e) => Some(e.status),
            _ => None,
        }
    }

    /// Stripe's error `code` (e.g. `resource_missing`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api(e) => e.code.as_deref(),
            _ => None,
        }
    }

    /// Whether the outcome of the call is unknown: the write may or may not have happened.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Connection(_) | Self::Timeout => true,
            Self::Api(e) => e.status >= 500 || e.status == 409 || e.status == 429,
            Self::Decode(_) => true,
        }
    }

    /// Whether a retry could succeed (see `retry::decide` for the full policy).
    pub fn is_retryable(&self) -> bool {
        crate::stripe::retry::retry_reason(self).is_some()
    }

    /// The `resource_missing` case, which callers often treat as "already gone".
    pub fn is_missing(&self) -> bool {
        self.code() == Some("resource_missing") || self.status() == Some(404)
    }

    /// A short label for metrics and records (`card_declined`, `http_500`, `timeout`, ...).
    pub fn reason(&self) -> String {
        match self {
            Self::Api(e) => e
                .code
                .clone()
                .unwrap_or_else(|| format!("http_{}", e.status)),
            Self::Connection(_) => "connection".into(),
            Self::Timeout => "timeout".into(),
            Self::Decode(_) => "decode".into(),
        }
    }
}
