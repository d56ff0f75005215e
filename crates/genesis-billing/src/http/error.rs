//! The one JSON error shape of the HTTP API: `{"error": {"code", "message"}, "request_id"}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use crate::billing::BillingError;

tokio::task_local! {
    /// The id of the request being served, for error bodies and logs.
    pub static REQUEST_ID: String;
}

/// An HTTP error. Internal details are logged here once, never sent.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }
}

/// 408: the request body did not arrive within `GENESIS_BILLING_BODY_READ_TIMEOUT_SECS`.
pub fn body_timeout() -> ApiError {
    ApiError::new(
        StatusCode::REQUEST_TIMEOUT,
        "request_timeout",
        "the request body did not arrive in time",
    )
}

impl From<BillingError> for ApiError {
    fn from(e: BillingError) -> Self {
        match e {
            BillingError::Invalid(i) => Self::bad_request(i.to_string()),
            BillingError::NotFound(id) => Self::not_found(format!("no business {id}")),
            BillingError::PaymentsDisabled => Self::new(
                StatusCode::CONFLICT,
                "payments_disabled",
                "payments are disabled",
            ),
            BillingError::Conflict(m) => Self::new(StatusCode::CONFLICT, "conflict", m),
            BillingError::Import(i) => Self::bad_request(i.to_string()),
            BillingError::PriceUnresolved(k) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "price_unresolved",
                format!("no active Stripe price with lookup key {k}"),
            ),
            BillingError::Stripe(s) => {
                tracing::warn!(error = %s, "Stripe call failed");
                Self::new(StatusCode::BAD_GATEWAY, "stripe_error", s.to_string())
            }
            BillingError::Store(s) => {
                tracing::error!(error = %s, "database error");
                Self::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
        }
    }
}

/// The error body, given a request id.
pub fn error_body(code: &str, message: &str) -> serde_json::Value {
    let request_id = REQUEST_ID.try_with(Clone::clone).ok();
    serde_json::json!({ "error": { "code": code, "message": message }, "request_id": request_id })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(error_body(self.code, &self.message))).into_response()
    }
}
