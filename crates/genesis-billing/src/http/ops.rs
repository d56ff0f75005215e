//! Unauthenticated routes (health, metrics, OpenAPI, the signed webhook) and the background loops.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::error::ApiError;
use super::{AppState, CatalogHealth, Schedule};
use crate::store::JobLease;
use crate::webhook::{ReceiveError, Received, Rejection, MAX_BODY};

/// `GET /health` (SPEC §5). 503 only when the database is unreachable: Stripe problems degrade, not kill.
pub async fn health(State(state): State<Arc<AppState>>) -> Response {
    let database = match state.service.store().ping().await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("error: {e}"),
    };
    let catalog = match &*state.catalog.read().await {
        CatalogHealth::Unchecked => "unchecked".to_owned(),
        CatalogHealth::Verified => "verified".to_owned(),
        CatalogHealth::Problem(p) => p.clone(),
    };
    let stripe_ready = state.service.payments_enabled() && catalog == "verified";
    let db_ok = database == "ok";
    let ok = db_ok && (stripe_ready || !state.service.payments_enabled());
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "stripe_ready": stripe_ready,
        "stripe_mode": state.stripe_mode,
        "stripe_key_is_test": state.key_is_test,
        "database": database,
        "database_kind": state.service.store().backend().as_str(),
        "catalog": catalog,
        "webhook_secret_configured": state.inbox.has_secret(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let status = if db_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// `GET /metrics` in the Prometheus text format; gauges are recomputed from the records at each scrape.
pub async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    if let Err(e) = state.service.refresh_gauges().await {
        tracing::warn!(error = %e, "cannot refresh gauges");
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

/// `POST /stripe/webhook`: raw bytes → signature → store by id → apply → acknowledge.
pub async fn webhook(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let bytes = match axum::body::to_bytes(body, MAX_BODY + 1).await {
        Ok(b) => b,
        Err(_) => return rejected(&state, Rejection::TooLarge),
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

fn rejected(state: &AppState, r: Rejection) -> Response {
    state
        .service
        .metrics()
        .inc("genesis_billing_webhook_rejected_total", &[r.reason()]);
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

/// Starts the periodic work: catalog verification, resume, webhook retries, gap fill.
pub fn spawn_background(
    state: Arc<AppState>,
    schedule: Schedule,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        // Verify the catalog until it resolves: serve starts even when Stripe is unreachable (SPEC §5).
        if !s.service.payments_enabled() {
            *s.catalog.write().await = CatalogHealth::Problem("payments disabled".into());
            return;
        }
        loop {
            let health = match s.service.resolve_prices().await {
                Ok(missing) if missing.is_empty() => CatalogHealth::Verified,
                Ok(missing) => CatalogHealth::Problem(format!(
                    "unresolved lookup keys: {}",
                    missing.join(", ")
                )),
                Err(e) => CatalogHealth::Problem(format!("cannot reach Stripe: {e}")),
            };
            let verified = matches!(health, CatalogHealth::Verified);
            if let CatalogHealth::Problem(p) = &health {
                tracing::warn!(problem = %p, "price catalog not verified");
            }
            *s.catalog.write().await = health;
            if verified {
                return;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
        }
    }));
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            if s.service.payments_enabled() {
                match s.service.resume().await {
                    Ok(r) if !(r.provisioned.is_empty() && r.takedowns_finished.is_empty()) => {
                        tracing::info!(
                            provisioned = r.provisioned.len(),
                            takedowns = r.takedowns_finished.len(),
                            "resumed unfinished work"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "resume failed"),
                }
            }
            tokio::time::sleep(schedule.resume).await;
        }
    }));
    let s = state.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            // Drain what is due (a backlog after a burst or a restart), then wait. Claimed events are
            // leased and failed ones wait out their backoff, so this ends once the due ones are handed out;
            // each round waits for the appliers to take its batch.
            while s.inbox.retry_due().await > 0 {}
            tokio::time::sleep(schedule.webhook_retry).await;
        }
    }));
    if let Some(every) = schedule.reconcile {
        let s = state.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if s.service.payments_enabled() {
                    // Once per interval across the fleet: a job lease (see store::coordination).
                    let Some(lease) =
                        JobLease::try_claim(s.service.store(), "reconcile", s.service.lease())
                            .await
                    else {
                        continue;
                    };
                    match s.service.reconcile(true, &|_, _| {}).await {
                        Ok(r) if !r.drift.is_empty() => {
                            let fixed = r.drift.iter().filter(|d| d.fixed).count();
                            tracing::warn!(
                                found = r.drift.len(),
                                fixed,
                                "reconciliation found drift"
                            );
                        }
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
                    }
                    lease.release(every).await;
                }
            }
        }));
    }
    if let Some(every) = schedule.gap_fill {
        let s = state;
        tasks.push(tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                if s.service.payments_enabled() {
                    let Some(lease) =
                        JobLease::try_claim(s.service.store(), "gap_fill", s.service.lease()).await
                    else {
                        continue;
                    };
                    if let Err(e) = s.inbox.gap_fill().await {
                        tracing::warn!(error = %e, "gap fill failed");
                    }
                    lease.release(every).await;
                }
            }
        }));
    }
    tasks
}
