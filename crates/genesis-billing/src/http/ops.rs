//! Unauthenticated routes: health, metrics, OpenAPI and the signed webhook (the background loops are in
//! `jobs`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use tokio::sync::watch;

use super::error::ApiError;
use super::AppState;
use crate::billing::BillingService;
use crate::billing::ProbeFailure;
use crate::jobs::{CatalogHealth, StripeHealth};
use crate::webhook::signature;
use crate::webhook::{ReceiveError, Received, Rejection, MAX_BODY};

/// How long `/health` waits for the database probe: with the rest, it answers within 2 s whatever the
/// database does.
const DB_PROBE_DEADLINE: Duration = Duration::from_millis(1500);

/// What `/health` says about the database: a fixed code; the error itself goes to the log only.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbHealth {
    Ok,
    /// No connection (refused, authentication failed, no such database, pool exhausted).
    Unreachable,
    /// Did not answer a read within the deadline.
    Timeout,
    /// Answers reads but a write failed or did not finish in time (locked, read-only, disk full).
    NotWritable,
}

impl DbHealth {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::NotWritable => "not_writable",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Reading,
    Writing,
    Done(DbHealth),
}

/// A finished probe's result is reused this long: however often `/health` is called, the database sees at
/// most one probe write per second (a flood of health checks must not compete with webhooks for SQLite's
/// write lock).
const DB_PROBE_REUSE: Duration = Duration::from_secs(1);

/// The database probe in progress or just finished: concurrent `/health` requests share it, so a stuck
/// database holds one pooled connection for the probe, not one per request.
#[derive(Default)]
pub struct DbProbe(std::sync::Mutex<Option<(watch::Receiver<Stage>, std::time::Instant)>>);

async fn database_health(state: &AppState) -> DbHealth {
    let mut rx = {
        let mut current = state.db_probe.0.lock().unwrap_or_else(|p| p.into_inner());
        match current.as_ref() {
            Some((rx, started))
                if !matches!(*rx.borrow(), Stage::Done(_))
                    || started.elapsed() < DB_PROBE_REUSE =>
            {
                rx.clone()
            }
            _ => {
                let (tx, rx) = watch::channel(Stage::Reading);
                tokio::spawn(probe_database(state.service.clone(), tx));
                *current = Some((rx.clone(), std::time::Instant::now()));
                rx
            }
        }
    };
    let finished = match tokio::time::timeout(
        DB_PROBE_DEADLINE,
        rx.wait_for(|s| matches!(s, Stage::Done(_))),
    )
    .await
    {
        Ok(Ok(stage)) => Some(*stage),
        Ok(Err(_)) => Some(Stage::Done(DbHealth::Unreachable)),
        Err(_) => None,
    };
    let stage = finished.unwrap_or_else(|| {
        let stage = *rx.borrow();
        tracing::warn!(
            stage = ?stage,
            "health: the database probe did not finish within {DB_PROBE_DEADLINE:?}"
        );
        stage
    });
    match stage {
        Stage::Done(h) => h,
        Stage::Reading => DbHealth::Timeout,
        Stage::Writing => DbHealth::NotWritable,
    }
}

/// A read, then a committed write; reports each stage so a waiter that gives up knows which one hung.
async fn probe_database(service: Arc<BillingService>, tx: watch::Sender<Stage>) {
    let health = match service.probe_read().await {
        Err((_, e)) => {
            tracing::warn!(error = %e, "health: database read probe failed");
            DbHealth::Unreachable
        }
        Ok(()) => {
            tx.send_replace(Stage::Writing);
            match service.probe_write().await {
                Ok(()) => DbHealth::Ok,
                Err((failure, e)) => {
                    tracing::warn!(error = %e, "health: database write probe failed");
                    match failure {
                        ProbeFailure::Unreachable => DbHealth::Unreachable,
                        ProbeFailure::NotWritable => DbHealth::NotWritable,
                    }
                }
            }
        }
    };
    tx.send_replace(Stage::Done(health));
}

/// `GET /health` (SPEC §5). 503 only when the database is not usable: Stripe problems degrade, not kill.
/// Every value is a fixed code (README); details go to the log. Answers within 2 s.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let (database, events) = tokio::join!(database_health(&state), events_health(&state));
    let catalog = match &*state.checks.catalog.read().await {
        CatalogHealth::Unchecked => "unchecked".to_owned(),
        CatalogHealth::Verified => "verified".to_owned(),
        CatalogHealth::Problem(p) => p.clone(),
    };
    let stripe = *state
        .checks
        .stripe
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let payments = state.service.payments_enabled();
    let stripe_ready = payments && catalog == "verified" && stripe == StripeHealth::Ok;
    let db_ok = database == DbHealth::Ok;
    let ok = db_ok && (stripe_ready || !payments);
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "stripe_ready": stripe_ready,
        "stripe": stripe.as_str(),
        "stripe_mode": state.stripe_mode,
        "stripe_key_is_test": state.key_is_test,
        "database": database.as_str(),
        "database_kind": state.service.database_kind(),
        "catalog": catalog,
        "webhook_secret_configured": state.inbox.has_secret(),
        "billing_portal": state.checks.portal.lock().unwrap_or_else(|p| p.into_inner()).as_str(),
        "events": events,
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// How long `/health` waits for the outbox's counts (alongside the database probe, within the 2 s).
const EVENTS_DEADLINE: Duration = Duration::from_millis(1000);

/// `/health`'s `events`: whether delivery is configured (and where: scheme and host only) and how far
/// behind it is; the counts are null when the database does not answer in time.
async fn events_health(state: &AppState) -> serde_json::Value {
    let url = state.outbound.url.as_ref();
    let backlog =
        tokio::time::timeout(EVENTS_DEADLINE, state.service.store().outbound_backlog()).await;
    let backlog = match backlog {
        Ok(Ok(b)) => Some(b),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health: cannot read the event outbox");
            None
        }
        Err(_) => None,
    };
    serde_json::json!({
        "delivery_configured": url.is_some(),
        "destination": url.map(|u| u.origin()),
        "pending": backlog.map(|b| b.pending),
        "oldest_undelivered_age_seconds": backlog.map(|b| crate::outbound::worker::oldest_age(&b)),
        "dead_lettered": backlog.map(|b| b.dead),
    })
}

/// `GET /metrics` in the Prometheus text format; gauges are recomputed from the records at each scrape.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Err(e) = state.service.refresh_gauges().await {
        tracing::warn!(error = %e, "cannot refresh gauges");
    }
    // The delivery backlog only where something delivers: elsewhere nothing is behind.
    if state.outbound.url.is_some() {
        let store = state.service.store();
        if let Err(e) =
            crate::outbound::worker::refresh_gauges(store, state.service.metrics()).await
        {
            tracing::warn!(error = %e, "cannot refresh the event delivery gauges");
        }
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.service.metrics().render(),
    )
        .into_response()
}

/// `GET /openapi.json`: the admin API's description.
pub async fn openapi() -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        include_str!("openapi.json"),
    )
        .into_response()
}

/// Before a webhook's body is read: a secret must be configured, the `Stripe-Signature` header present
/// and well formed, and a declared length within 1 MiB; then a slot in the webhook in-flight budget.
pub async fn webhook_gate(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if !state.inbox.has_secret() {
        return rejected(&state, Rejection::NoSecret);
    }
    let shape = match request.headers().get("stripe-signature") {
        None => Err(Rejection::MissingSignature),
        Some(v) => match v.to_str() {
            Ok(v) => signature::check_header(v),
            Err(_) => Err(Rejection::MalformedSignature),
        },
    };
    if let Err(r) = shape {
        return rejected(&state, r);
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return rejected(&state, Rejection::TooLarge);
    }
    match state.gates.webhook.try_enter() {
        Some(_slot) => next.run(request).await,
        None => super::overloaded(),
    }
}

/// `POST /stripe/webhook`: raw bytes → signature → store by id → apply → acknowledge.
pub async fn webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // A chunked body is cut off at the limit while it is read; the read has a deadline (server.rs).
    let bytes = match axum::body::to_bytes(body, MAX_BODY + 1).await {
        Ok(b) => b,
        Err(e) if super::server::is_body_timeout(&e) => {
            return super::error::body_timeout().into_response();
        }
        Err(e) if is_length_limit(&e) => return rejected(&state, Rejection::TooLarge),
        Err(e) => {
            tracing::debug!(error = %e, "webhook body could not be read");
            return ApiError::bad_request("the request body could not be read").into_response();
        }
    };
    let signature = headers
        .get("stripe-signature")
        .and_then(|v| v.to_str().ok());
    match state.inbox.receive(signature, &bytes).await {
        Ok(Received::Stored) => Json(serde_json::json!({ "received": true })).into_response(),
        Ok(Received::Duplicate) => {
            Json(serde_json::json!({ "received": true, "duplicate": true })).into_response()
        }
        Err(ReceiveError::Rejected(r)) => reject_response(r),
        Err(ReceiveError::Unavailable) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "cannot store the event now; deliver it again",
        )
        .into_response(),
    }
}

/// Whether a body error is the 1 MiB limit being reached.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    false
}

fn rejected(state: &AppState, r: Rejection) -> Response {
    tracing::warn!(reason = r.reason(), "webhook rejected");
    state.service.metrics().webhook_rejected(r.reason());
    reject_response(r)
}

fn reject_response(r: Rejection) -> Response {
    let status = match r {
        Rejection::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        Rejection::MissingSignature
        | Rejection::MalformedSignature
        | Rejection::BadSignature
        | Rejection::StaleTimestamp
        | Rejection::FutureTimestamp => StatusCode::UNAUTHORIZED,
        Rejection::NoSecret => StatusCode::FORBIDDEN,
        Rejection::BadPayload => StatusCode::BAD_REQUEST,
    };
    ApiError::new(status, r.reason(), r.message()).into_response()
}
