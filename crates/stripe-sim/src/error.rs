//! Stripe's error shape (`{"error": {type, code, message, param, ...}}`) and constructors for the errors the simulator returns.

use serde_json::{json, Map, Value};

/// One Stripe API error: HTTP status plus the fields of the `error` object.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub status: u16,
    /// Stripe's `type`: `invalid_request_error`, `card_error`, `api_error` or `idempotency_error`.
    pub kind: &'static str,
    /// Stripe's `code`, e.g. `resource_missing`.
    pub code: Option<String>,
    /// Human readable message, worded like Stripe's.
    pub message: String,
    /// The parameter at fault, in bracket notation.
    pub param: Option<String>,
    /// `decline_code` for card errors.
    pub decline_code: Option<String>,
    /// Extra fields merged into the error object (e.g. `payment_intent` on a failed confirm).
    pub extra: Map<String, Value>,
    /// Value of the `Stripe-Should-Retry` header, when one is sent.
    pub should_retry: Option<bool>,
}

/// Result alias for handlers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// A 400 `invalid_request_error` with a message and optional param.
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(400, "invalid_request_error", None, message, param)
    }

    /// A generic constructor.
    pub fn new(
        status: u16,
        kind: &'static str,
        code: Option<&str>,
        message: impl Into<String>,
        param: Option<&str>,
    ) -> Self {
        ApiError {
            status,
            kind,
            code: code.map(str::to_owned),
            message: message.into(),
            param: param.map(str::to_owned),
            decline_code: None,
            extra: Map::new(),
            should_retry: None,
        }
    }

    /// A 400 with a code.
    pub fn invalid_code(code: &str, message: impl Into<String>, param: Option<&str>) -> Self {
        Self::new(400, "invalid_request_error", Some(code), message, param)
    }

    /// `parameter_unknown`: Stripe rejects every parameter it does not document.
    pub fn unknown_param(param: &str) -> Self {
        Self::invalid_code(
            "parameter_unknown",
            format!("Received unknown parameter: {param}"),
            Some(param),
        )
    }

    /// `parameter_missing`.
    pub fn missing_param(param: &str) -> Self {
        Self::invalid_code(
            "parameter_missing",
            format!("Missing required param: {param}."),
            Some(param),
        )
    }

    /// `parameter_invalid_empty`: an empty string for a parameter that cannot be unset.
    pub fn empty_param(param: &str) -> Self {
        Self::invalid_code(
            "parameter_invalid_empty",
            format!(
                "You passed an empty string for '{param}'. We assume empty values are an attempt to unset a parameter; however '{param}' cannot be unset. You should remove '{param}' from your request or supply a non-empty value."
            ),
            Some(param),
        )
    }

    /// `parameter_invalid_integer`.
    pub fn invalid_integer(param: &str, value: &str) -> Self {
        Self::invalid_code(
            "parameter_invalid_integer",
            format!("Invalid integer: {value}"),
            Some(param),
        )
    }

    /// An enum parameter with a value outside its set, worded as Stripe words it.
    pub fn invalid_enum(param: &str, allowed: &[&str]) -> Self {
        let list = match allowed.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{}, or {last}", rest.join(", ")),
            _ => allowed.join(", "),
        };
        Self::invalid(
            format!("Invalid {param}: must be one of {list}"),
            Some(param),
        )
    }

    /// 404 `resource_missing` for an id of the given Stripe object name (`customer`, `price`, ...).
    pub fn no_such(object: &str, id: &str, param: &str) -> Self {
        Self::new(
            404,
            "invalid_request_error",
            Some("resource_missing"),
            format!("No such {object}: '{id}'"),
            Some(param),
        )
    }

    /// A 402 `card_error` with Stripe's decline code and message.
    pub fn card_declined(decline_code: &str, code: &str, message: &str) -> Self {
        let mut e = Self::new(402, "card_error", Some(code), message, None);
        e.decline_code = Some(decline_code.to_owned());
        e
    }

    /// 500 `api_error`, as Stripe answers when something broke on its side.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "api_error", None, message, None)
    }

    /// Adds an extra field to the error object.
    pub fn with(mut self, key: &str, value: Value) -> Self {
        self.extra.insert(key.to_owned(), value);
        self
    }

    /// Whether the idempotency layer stores this error: Stripe does not store parameter validation failures.
    pub fn is_stored(&self) -> bool {
        self.status != 400 || self.kind == "idempotency_error"
    }

    /// The JSON body `{"error": {...}}`.
    pub fn to_json(&self, request_id: &str) -> Value {
        let mut err = Map::new();
        if let Some(code) = &self.code {
            err.insert("code".into(), json!(code));
            err.insert(
                "doc_url".into(),
                json!(format!(
                    "https://stripe.com/docs/error-codes/{}",
                    code.replace('_', "-")
                )),
            );
        }
        if let Some(d) = &self.decline_code {
            err.insert("decline_code".into(), json!(d));
        }
        err.insert("message".into(), json!(self.message));
        if let Some(p) = &self.param {
            err.insert("param".into(), json!(p));
        }
        err.insert(
            "request_log_url".into(),
            json!(format!(
                "https://dashboard.stripe.com/test/logs/{request_id}"
            )),
        );
        err.insert("type".into(), json!(self.kind));
        for (k, v) in &self.extra {
            err.insert(k.clone(), v.clone());
        }
        json!({ "error": Value::Object(err) })
    }
}
