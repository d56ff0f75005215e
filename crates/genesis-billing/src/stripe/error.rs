//! Errors from Stripe calls, keeping everything Stripe told us (type, code, status, request id).

use std::time::Duration;

/// A failed Stripe call.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StripeError {
    /// Stripe answered with an error object.
    #[error("Stripe {status} {kind}{}: {message} (request {})", code.as_deref().map(|c| format!("/{c}")).unwrap_or_default(), request_id.as_deref().unwrap_or("-"))]
    Api {
        status: u16,
        kind: String,
        code: Option<String>,
        decline_code: Option<String>,
        message: String,
        param: Option<String>,
        request_id: Option<String>,
        should_retry: Option<bool>,
        retry_after: Option<Duration>,
        /// `Idempotent-Replayed: true`: Stripe returned a stored response for this key.
        replayed: bool,
    },
    /// No HTTP response: connection refused or reset, DNS, TLS.
    #[error("could not reach Stripe: {0}")]
    Connection(String),
    /// The per-request timeout elapsed.
    #[error("Stripe did not answer within the timeout")]
    Timeout,
    /// Stripe answered 2xx with a body we could not read.
    #[error("unreadable response from Stripe: {0}")]
    Decode(String),
    /// Payments are disabled; nothing was sent.
    #[error("payments are disabled")]
    Disabled,
}

impl StripeError {
    /// HTTP status, when Stripe answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Stripe's error `code` (e.g. `resource_missing`).
    pub fn code(&self) -> Option<&str> {
        match self {
            Self::Api { code, .. } => code.as_deref(),
            _ => None,
        }
    }

    /// Whether the outcome of the call is unknown: the write may or may not have happened.
    pub fn is_ambiguous(&self) -> bool {
        match self {
            Self::Connection(_) | Self::Timeout => true,
            Self::Api { status, .. } => *status >= 500 || *status == 409 || *status == 429,
            Self::Decode(_) => true,
            Self::Disabled => false,
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
            Self::Api { code: Some(c), .. } => c.clone(),
            Self::Api { status, .. } => format!("http_{status}"),
            Self::Connection(_) => "connection".into(),
            Self::Timeout => "timeout".into(),
            Self::Decode(_) => "decode".into(),
            Self::Disabled => "disabled".into(),
        }
    }
}
