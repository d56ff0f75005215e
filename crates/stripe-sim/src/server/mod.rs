//! The HTTP layer: an accept loop over hyper's HTTP/1 connections (so faults can drop a connection without answering), authentication, rate limiting, faults, idempotency and dispatch to handlers.

pub mod sim;

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::error::ApiError;
use crate::faults::{FaultKind, Faults};
use crate::form::{self, Node};
use crate::idempotency::{scope_key, Begin, StoredResponse};
use crate::rate_limit::TokenBucket;
use crate::routes::route;

use crate::state::{RequestInfo, State, API_VERSION};
use crate::webhook::Webhooks;

/// Largest request body accepted (Stripe's own limit is not published; larger bodies get a 413 in Stripe's error shape).
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Shared by every connection.
pub struct App {
    /// All simulated Stripe state.
    pub state: Arc<Mutex<State>>,
    /// Fault rules and counts.
    pub faults: Mutex<Faults>,
    /// The `/v1` rate limiter.
    pub bucket: Mutex<TokenBucket>,
    /// Webhook deliverer.
    pub webhooks: Webhooks,
    /// Wakes the persister after a change (only with a state file).
    pub persist: Option<Arc<Notify>>,
    /// Where state is saved.
    pub state_file: Option<PathBuf>,
}

/// Locks a mutex, recovering it if a panicking handler poisoned it (the simulator must keep serving).
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl App {
    /// Hands queued events to the deliverer and schedules a save after a change.
    pub fn after_change(&self, st: &mut State) {
        let out = std::mem::take(&mut st.outbox);
        self.webhooks.send(out);
        if st.dirty {
            if let Some(n) = &self.persist {
                n.notify_one();
            }
        }
    }

    /// Writes the state file now, if there is one.
    pub fn save(&self) -> anyhow::Result<()> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        let bytes = {
            let mut st = lock(&self.state);
            st.dirty = false;
            st.to_persisted()?
        };
        crate::store::write_atomically(path, &bytes)
    }
}

/// The error a service returns to make hyper close the connection without a response.
#[derive(Debug)]
pub struct DropConnection;

impl std::fmt::Display for DropConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped by fault injection")
    }
}

impl std::error::Error for DropConnection {}

/// Accepts connections until shutdown is signalled; each connection serves keep-alive HTTP/1.
pub async fn serve(listener: TcpListener, app: Arc<App>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.changed() => break,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let app = app.clone();
                // Stripe finishes a request even when the client goes away. Run it detached from the
                // connection, so a client dropped mid-request (a crash, a timeout) cannot cancel it halfway
                // and leave its idempotency key in flight forever.
                async move {
                    match tokio::spawn(handle(app, req)).await {
                        Ok(r) => r,
                        Err(_) => Ok(error_response(
                            &ApiError::internal("The request handler failed."),
                            &new_request_id(),
                            API_VERSION,
                        )),
                    }
                }
            });
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                r = conn.as_mut() => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "connection ended");
                    }
                }
                _ = stop.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn new_request_id() -> String {
    let mut s = String::from("req_");
    s.extend(std::iter::repeat_with(fastrand::alphanumeric).take(14));
    s
}

/// Builds a JSON response with the headers Stripe always sends.
fn respond(
    status: u16,
    body: impl Into<Bytes>,
    request_id: &str,
    version: &str,
    extra: &[(&'static str, String)],
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() =
        hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/json"));
    h.insert("server", HeaderValue::from_static("stripe-sim"));
    if let Ok(v) = HeaderValue::from_str(request_id) {
        h.insert("request-id", v);
    }
    if let Ok(v) = HeaderValue::from_str(version) {
        h.insert("stripe-version", v);
    }
    for (k, v) in extra {
        if let Ok(v) = HeaderValue::from_str(v) {
            h.insert(*k, v);
        }
    }
    r
}

/// Stripe's 429 for a request over the rate limit.
fn rate_limited() -> ApiError {
    ApiError::new(
        429,
        "invalid_request_error",
        Some("rate_limit"),
        "Request rate limit exceeded. Learn more about rate limits here https://stripe.com/docs/rate-limits.",
        None,
    )
}

fn error_response(e: &ApiError, request_id: &str, version: &str) -> Response<Full<Bytes>> {
    let mut extra = Vec::new();
    if let Some(r) = e.should_retry {
        extra.push(("stripe-should-retry", r.to_string()));
    }
    respond(
        e.status,
        e.to_json(request_id).to_string(),
        request_id,
        version,
        &extra,
    )
}

/// Decodes standard base64 (for HTTP Basic auth).
fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

fn masked(key: &str) -> String {
    let chars: Vec<char> = key.chars().collect();
    if chars.len() <= 12 {
        return "*".repeat(chars.len());
    }
    let head: String = chars[..8].iter().collect();
    let tail: String = chars[chars.len() - 4..].iter().collect();
    format!("{head}{}{tail}", "*".repeat(chars.len() - 12))
}

/// The API key of a request: `Bearer sk_test_…`/`rk_test_…`, or HTTP Basic with the key as user name.
pub fn authenticate(headers: &HeaderMap) -> Result<String, ApiError> {
    let missing = || {
        ApiError::new(
            401,
            "invalid_request_error",
            None,
            "You did not provide an API key. You need to provide your API key in the Authorization header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See https://stripe.com/docs/api#authentication for details, or we can help at https://support.stripe.com/.",
            None,
        )
    };
    let invalid = |shown: &str| {
        ApiError::new(
            401,
            "invalid_request_error",
            None,
            format!("Invalid API Key provided: {shown}"),
            None,
        )
    };
    let Some(raw) = headers.get("authorization") else {
        return Err(missing());
    };
    let Ok(raw) = raw.to_str() else {
        return Err(invalid("****"));
    };
    let raw = raw.trim();
    let (scheme, rest) = raw.split_once(' ').unwrap_or((raw, ""));
    let key = if scheme.eq_ignore_ascii_case("bearer") {
        rest.trim().to_owned()
    } else if scheme.eq_ignore_ascii_case("basic") {
        let decoded = base64_decode(rest.trim())
            .and_then(|b| String::from_utf8(b).ok())
            .ok_or_else(|| invalid("****"))?;
        decoded.split(':').next().unwrap_or_default().to_owned()
    } else {
        return Err(invalid(&masked(raw)));
    };
    if key.is_empty() {
        return Err(missing());
    }
    let valid_prefix = key.starts_with("sk_test_") || key.starts_with("rk_test_");
    if !valid_prefix || key.len() <= 8 || key.chars().any(|c| !c.is_ascii_graphic()) {
        return Err(invalid(&masked(&key)));
    }
    Ok(key)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// Handles one request. `Err` closes the connection without a response (the `drop` faults).
pub async fn handle(
    app: Arc<App>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, DropConnection> {
    let request_id = new_request_id();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or_default().to_owned();
    let headers = req.headers().clone();
    let version = header(&headers, "stripe-version")
        .unwrap_or(API_VERSION)
        .to_owned();
    // A portal session's URL is opened by the customer's browser, which has no API key: the session id is the secret.
    if let ("GET", ["", "_sim", "billing_portal", "sessions", id]) = (
        method.as_str(),
        path.split('/').collect::<Vec<_>>().as_slice(),
    ) {
        let (status, html) = crate::resources::billing_portal::page(&lock(&app.state), id);
        let mut r = respond(status, html, &request_id, &version, &[]);
        r.headers_mut().insert(
            "content-type",
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        return Ok(r);
    }
    let api_key = match authenticate(&headers) {
        Ok(k) => k,
        Err(e) => return Ok(error_response(&e, &request_id, &version)),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
    {
        Ok(b) => b.to_bytes(),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            let e = ApiError::new(
                413,
                "invalid_request_error",
                None,
                format!("The request body is too large: the limit is {MAX_BODY_BYTES} bytes."),
                None,
            );
            return Ok(error_response(&e, &request_id, &version));
        }
        Err(_) => return Err(DropConnection),
    };
    if path == "/_sim" || path.starts_with("/_sim/") {
        let ctype = header(&headers, "content-type")
            .unwrap_or_default()
            .to_owned();
        let (status, value) = sim::handle(&app, &method, &path, &body, &ctype, &request_id).await;
        return Ok(respond(
            status,
            value.to_string(),
            &request_id,
            &version,
            &[],
        ));
    }
    let idem_key = header(&headers, "idempotency-key")
        .map(str::to_owned)
        .filter(|_| method == "POST");
    Ok(
        match api(
            &app,
            &method,
            &path,
            &query,
            &body,
            &api_key,
            idem_key,
            &request_id,
            &version,
        )
        .await
        {
            Outcome::Drop => return Err(DropConnection),
            Outcome::Reply(r) => r,
        },
    )
}

enum Outcome {
    Reply(Response<Full<Bytes>>),
    Drop,
}

/// The Stripe API path: rate limit, faults, parameters, routing, idempotency, execution.
#[allow(clippy::too_many_arguments)]
async fn api(
    app: &App,
    method: &str,
    path: &str,
    query: &str,
    body: &[u8],
    api_key: &str,
    idem_key: Option<String>,
    request_id: &str,
    version: &str,
) -> Outcome {
    let reply = |e: ApiError| Outcome::Reply(error_response(&e, request_id, version));
    if !lock(&app.bucket).try_take() {
        return reply(rate_limited());
    }
    let decision = lock(&app.faults).decide(method, path);
    match decision.fault {
        Some(FaultKind::Drop) => return Outcome::Drop,
        Some(k @ (FaultKind::Http500 | FaultKind::Http502 | FaultKind::Http503)) => {
            let status = match k {
                FaultKind::Http500 => 500,
                FaultKind::Http502 => 502,
                _ => 503,
            };
            let mut e = ApiError::new(
                status,
                "api_error",
                None,
                "An unknown error occurred (injected by stripe-sim).",
                None,
            );
            e.should_retry = Some(true);
            return reply(e);
        }
        Some(FaultKind::Http429) => return reply(rate_limited()),
        _ => {}
    }
    let mut params = match form::parse(query.as_bytes()) {
        Ok(p) => p,
        Err(e) => return reply(e),
    };
    if method != "GET" {
        match form::parse(body) {
            Ok(b) => params.merge(b),
            Err(e) => return reply(e),
        }
    }
    let Some(handler) = route(method, path) else {
        return reply(ApiError::new(
            404,
            "invalid_request_error",
            None,
            format!("Unrecognized request URL ({method}: {path}). Please see https://stripe.com/docs or we can help at https://support.stripe.com/."),
            None,
        ));
    };
    let mut extra_headers: Vec<(&'static str, String)> = Vec::new();
    let mut scoped = None;
    if let Some(key) = &idem_key {
        if key.is_empty() || key.len() > 255 {
            return reply(ApiError::invalid(
                "Idempotency keys must be between 1 and 255 characters long.",
                Some("Idempotency-Key"),
            ));
        }
        extra_headers.push(("idempotency-key", key.clone()));
        let s = scope_key(api_key, key);
        let fingerprint = format!("{method} {path} {}", params.to_json());
        let begun = {
            let mut st = lock(&app.state);
            let now = st.global_now();
            st.idempotency.begin(&s, &fingerprint, now)
        };
        let refused = match begun {
            Begin::Fresh => {
                scoped = Some(s);
                None
            }
            Begin::Replay(r) => {
                extra_headers.push(("idempotent-replayed", "true".into()));
                if let Some(sr) = r.should_retry {
                    extra_headers.push(("stripe-should-retry", sr.to_string()));
                }
                return Outcome::Reply(respond(
                    r.status,
                    r.body,
                    request_id,
                    version,
                    &extra_headers,
                ));
            }
            Begin::Mismatch => Some(ApiError::new(
                    400,
                    "idempotency_error",
                    None,
                    format!("Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."),
                    None,
                )),
            Begin::InFlight => Some(ApiError::new(
                    409,
                    "idempotency_error",
                    Some("idempotency_key_in_use"),
                    "There is currently another in-progress request using this Idempotent Key (that probably means you submitted twice, and the other request is still going through): this request will not be retried. Please try again later.",
                    None,
                )),
        };
        if let Some(e) = refused {
            return Outcome::Reply(respond(
                e.status,
                e.to_json(request_id).to_string(),
                request_id,
                version,
                &extra_headers,
            ));
        }
    }
    if decision.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(decision.latency_ms)).await;
    }
    let result = run_handler(
        app,
        handler,
        &params,
        request_id,
        idem_key.clone(),
        method != "GET",
    );
    let (mut status, mut body, mut should_retry, stored) = match &result {
        Ok(v) => (200, v.to_string(), None, true),
        Err(e) => (
            e.status,
            e.to_json(request_id).to_string(),
            e.should_retry,
            e.is_stored(),
        ),
    };
    if result.is_ok() && decision.fault == Some(FaultKind::CommitThen500) {
        let e = ApiError::internal(
            "An unknown error occurred (injected by stripe-sim after the change was made).",
        );
        status = 500;
        body = e.to_json(request_id).to_string();
        should_retry = None;
    }
    if let Some(s) = scoped {
        let keep = stored.then(|| StoredResponse {
            status,
            body: body.clone(),
            should_retry,
        });
        lock(&app.state).idempotency.finish(&s, keep);
    }
    if result.is_ok() && decision.fault == Some(FaultKind::CommitThenDrop) {
        return Outcome::Drop;
    }
    if let Some(r) = should_retry {
        extra_headers.push(("stripe-should-retry", r.to_string()));
    }
    Outcome::Reply(respond(status, body, request_id, version, &extra_headers))
}

/// Runs a handler under the state lock; a panic becomes a 500 instead of taking the server down.
fn run_handler(
    app: &App,
    handler: crate::resources::Handler,
    params: &Node,
    request_id: &str,
    idem_key: Option<String>,
    mutating: bool,
) -> Result<Value, ApiError> {
    let mut st = lock(&app.state);
    st.request = Some(RequestInfo {
        id: request_id.to_owned(),
        idempotency_key: idem_key,
    });
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| handler(&mut st, params)));
    st.request = None;
    if mutating {
        st.dirty = true;
    }
    app.after_change(&mut st);
    match result {
        Ok(r) => r,
        Err(_) => {
            tracing::error!(request_id, "handler panicked");
            Err(ApiError::internal("An unknown error occurred."))
        }
    }
}

/// `{"error": …}` for `/_sim` routes.
pub fn sim_error(status: u16, message: impl Into<String>, request_id: &str) -> (u16, Value) {
    let e = ApiError::new(status, "invalid_request_error", None, message, None);
    (status, e.to_json(request_id))
}

/// Used by `/_sim/ping`: the cheapest authenticated answer, the benchmark's baseline.
pub fn ping() -> Value {
    json!({ "object": "sim.ping", "ok": true })
}
