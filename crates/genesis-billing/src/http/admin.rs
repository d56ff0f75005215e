//! The admin API the meta-agent calls: businesses, takedowns, checkout links, revenue.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::billing::BillingError;
use crate::billing::BusinessFilter;
use crate::business::{is_business_id, Billing, Lifecycle, NewBusiness};
use crate::revenue::totals;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    name: String,
    business_type: String,
    #[serde(default)]
    email: Option<String>,
}

pub(super) fn business_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(id) = path.map_err(|_| ApiError::bad_request("invalid business id in the path"))?;
    if !is_business_id(&id) {
        return Err(ApiError::not_found(format!(
            "no business {}",
            id.chars().take(64).collect::<String>()
        )));
    }
    Ok(id)
}

/// `POST /v1/businesses`: records and provisions; an `Idempotency-Key` makes retries safe.
pub async fn create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if super::server::is_body_timeout(&e) {
            super::error::body_timeout()
        } else {
            ApiError::new(e.status(), "invalid_request", e.body_text())
        }
    })?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().ok().filter(|k| {
                !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| b.is_ascii_graphic())
            });
            Some(
                k.ok_or_else(|| {
                    ApiError::bad_request(
                        "Idempotency-Key must be 1-255 printable ASCII characters",
                    )
                })?
                .to_owned(),
            )
        }
    };
    let input: CreateBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let (business, replayed) = state
        .service
        .create_business(
            NewBusiness {
                name: input.name,
                business_type: input.business_type,
                email: input.email,
            },
            key.as_deref(),
        )
        .await
        .map_err(|e| match e {
            BillingError::Conflict(m) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                m,
            ),
            other => other.into(),
        })?;
    let status = if replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let mut response = (status, Json(business)).into_response();
    if replayed {
        response.headers_mut().insert(
            "idempotent-replayed",
            "true".parse().expect("static header"),
        );
    }
    Ok(response)
}

/// `GET /v1/businesses/{id}`.
pub async fn show(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = business_id(path)?;
    match state.service.business(&id).await? {
        Some(b) => Ok(Json(b).into_response()),
        None => Err(ApiError::not_found(format!("no business {id}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    status: Option<String>,
    billing: Option<String>,
    limit: Option<i64>,
    cursor: Option<String>,
}

/// `GET /v1/businesses?status=&billing=&limit=&cursor=`: newest first; `next_cursor` continues.
pub async fn list(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let status = p
        .status
        .map(|s| {
            Lifecycle::parse(&s)
                .ok_or_else(|| ApiError::bad_request("status must be active or taken_down"))
        })
        .transpose()?;
    let billing = p
        .billing
        .map(|s| {
            Billing::parse(&s).ok_or_else(|| {
                ApiError::bad_request(
                    "billing must be pending, provisioned, skipped, failed or expired",
                )
            })
        })
        .transpose()?;
    let limit = p.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 500"));
    }
    if let Some(c) = &p.cursor {
        // An empty cursor means the first page.
        if !(c.is_empty() || is_business_id(c)) {
            return Err(ApiError::bad_request("invalid cursor"));
        }
    }
    let mut page = state
        .service
        .list_businesses(&BusinessFilter {
            status,
            billing,
            limit: limit + 1,
            after: p.cursor,
        })
        .await?;
    let more = page.len() as i64 > limit;
    page.truncate(limit as usize);
    let next_cursor = if more {
        page.last().map(|b| b.business_id.clone())
    } else {
        None
    };
    Ok(Json(serde_json::json!({ "data": page, "next_cursor": next_cursor })).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TakedownParams {
    reason: Option<String>,
}

/// `DELETE /v1/businesses/{id}?reason=`: the takedown summary (404 when there is no such business).
pub async fn takedown(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TakedownParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = business_id(path)?;
    let Query(p) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let summary = state
        .service
        .takedown(&id, p.reason.as_deref(), crate::billing::Initiator::Api)
        .await?;
    let status = if summary.status == "not_found" {
        StatusCode::NOT_FOUND
    } else {
        StatusCode::OK
    };
    Ok((status, Json(summary)).into_response())
}

/// `POST /v1/businesses/{id}/checkout`: a Checkout URL for the owner.
pub async fn checkout(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = business_id(path)?;
    let session = state.service.checkout_link(&id).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "business_id": id, "checkout_session": session.id, "url": session.url })),
    )
        .into_response())
}

/// `GET /v1/revenue`: live MRR by type and currency.
pub async fn revenue(State(state): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let lines = state.service.mrr().await?;
    let totals: serde_json::Map<String, serde_json::Value> = totals(&lines)
        .into_iter()
        .map(|t| {
            let cents = serde_json::json!({
                "active_cents": t.active_cents,
                "past_due_cents": t.past_due_cents,
                "trialing_cents": t.trialing_cents,
            });
            (t.currency, cents)
        })
        .collect();
    Ok(Json(serde_json::json!({ "mrr": lines, "totals": totals })).into_response())
}
