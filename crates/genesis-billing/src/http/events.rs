//! `GET /v1/events`: the stream of events to the meta-agent for consumers that poll (SPEC §1.6), the same
//! ids and bodies as pushed, in commit order.

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::error::ApiError;
use super::AppState;
use crate::billing::{events_filter, DEFAULT_EVENTS_PAGE};

/// The query of `GET /v1/events`; any other parameter is a 400, as on `GET /v1/businesses`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    after: Option<String>,
    limit: Option<i64>,
    business_id: Option<String>,
}

/// `GET /v1/events?after=&limit=&business_id=`: `{"data": [envelopes, oldest first], "next_cursor"}`.
/// `next_cursor` is the last event's, or the request's own when the page is empty, so a poller that always
/// sends back what it got keeps its place.
pub async fn list(
    State(state): State<Arc<AppState>>,
    query: Result<Query<EventsParams>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(p) =
        query.map_err(|e| ApiError::bad_request(format!("invalid query: {}", e.body_text())))?;
    let filter = events_filter(
        p.after.as_deref(),
        p.business_id.as_deref(),
        None,
        p.limit.unwrap_or(DEFAULT_EVENTS_PAGE),
    )
    .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let events = state.service.events_page(&filter).await?;
    let next_cursor = events
        .last()
        .map(|e| e.cursor())
        .or(filter.after)
        .unwrap_or_default()
        .to_string();
    // The envelopes are written as the exact bytes a push sends, not re-encoded.
    let mut body = String::from("{\"data\":[");
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&e.body());
    }
    body.push_str("],\"next_cursor\":");
    body.push_str(&serde_json::Value::String(next_cursor).to_string());
    body.push('}');
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}
