//! Owners' manage links: `GET /billing/manage?token=…` (the signed token is the credential) redirects to
//! a fresh Billing Portal or Checkout session; `POST /v1/businesses/{id}/manage-link` (admin) hands one out.
//!
//! A refused token gets one plain 403 page whatever the reason, and nothing is read from Stripe or
//! changed. No page is cached, and none sends a referrer (the token is in the URL).

use std::sync::Arc;

use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::admin::business_id;
use super::error::ApiError;
use super::AppState;
use crate::business::Lifecycle;
use crate::owners::Destination;

/// A small HTML page with the headers every manage page carries.
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <meta name=\"viewport\" content=\"width=device-width\"></head>\n\
         <body><h1>{title}</h1><p>{text}</p></body></html>\n"
    );
    with_headers(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        "content-security-policy",
        HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"),
    );
    r
}

fn refused() -> Response {
    page(
        StatusCode::FORBIDDEN,
        "This link does not work",
        "The link is not valid or has expired. Ask for a new billing link.",
    )
}

fn unavailable() -> Response {
    page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Billing is unavailable",
        "The billing page cannot be opened just now. Please try again in a few minutes.",
    )
}

/// 303 to a Stripe-hosted page.
fn see_other(url: &str) -> Response {
    match HeaderValue::from_str(url) {
        Ok(location) if url.starts_with("https://") || url.starts_with("http://") => {
            with_headers((StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response())
        }
        _ => {
            tracing::warn!("Stripe returned a session without a usable URL");
            unavailable()
        }
    }
}

/// The one `token` of a query string, or `None` (absent, repeated, or the query too long to hold one).
fn token_of(query: Option<&str>) -> Option<String> {
    let query = query?;
    if query.len() > 4 * crate::owners::link::MAX_TOKEN_LEN {
        return None;
    }
    let mut tokens = form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned());
    let token = tokens.next()?;
    tokens.next().is_none().then_some(token)
}

/// `GET /billing/manage?token=…`.
pub async fn open(State(state): State<Arc<AppState>>, RawQuery(query): RawQuery) -> Response {
    let Some(token) = token_of(query.as_deref()) else {
        return refused();
    };
    let id = match state.owners.verify(&token, crate::owners::now()) {
        Ok(id) => id,
        Err(e) => {
            // The reason only: never the token.
            tracing::info!(reason = %e, "manage link refused");
            return refused();
        }
    };
    let business = match state.service.business(&id).await {
        Ok(Some(b)) if b.status == Lifecycle::Active => b,
        Ok(_) => {
            tracing::info!(business_id = %id, "manage link for a business that is gone or taken down");
            return refused();
        }
        Err(e) => {
            tracing::error!(error = %e, "database error while opening a manage link");
            return unavailable();
        }
    };
    let Ok(stripe) = state.service.stripe() else {
        return page(
            StatusCode::SERVICE_UNAVAILABLE,
            "Billing is switched off",
            "Payments are not being taken at the moment; there is nothing to manage.",
        );
    };
    let destination = Destination::of(&business);
    let url = match destination {
        Destination::NotReady => {
            return page(
                StatusCode::CONFLICT,
                "Billing is not set up yet",
                "Billing for this business is still being set up. Please try again later.",
            )
        }
        Destination::Checkout => match state.service.checkout_link(&id).await {
            Ok(session) => session.url,
            Err(e) => {
                tracing::warn!(business_id = %id, error = %e, "manage link: Checkout session failed");
                return unavailable();
            }
        },
        Destination::PaymentMethodUpdate | Destination::Portal => {
            let customer = business.stripe_customer_id.as_deref().unwrap_or_default();
            let update = destination == Destination::PaymentMethodUpdate;
            match state
                .owners
                .portal_session(stripe, &id, customer, update)
                .await
            {
                Ok(session) => session.url,
                Err(e) => {
                    tracing::warn!(business_id = %id, error = %e, "manage link: portal session failed");
                    return unavailable();
                }
            }
        }
    };
    tracing::info!(business_id = %id, ?destination, "manage link opened");
    see_other(url.as_deref().unwrap_or_default())
}

/// `GET /billing/manage/done`: where the portal and Checkout send the owner back.
pub async fn done() -> Response {
    page(
        StatusCode::OK,
        "All done",
        "Your billing details are saved. You can close this page.",
    )
}

/// `POST /v1/businesses/{id}/manage-link`: `{business_id, url, expires_at}` for an active business.
pub async fn create_link(
    State(state): State<Arc<AppState>>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = business_id(path)?;
    if let Err(e) = state.owners.configured() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "manage_links_not_configured",
            e.to_string(),
        ));
    }
    let business = state
        .service
        .business(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no business {id}")))?;
    if business.status != Lifecycle::Active {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("business {id} is taken down"),
        ));
    }
    let link = state
        .owners
        .manage_link(&id, crate::owners::now())
        .map_err(|e| {
            ApiError::new(
                StatusCode::CONFLICT,
                "manage_links_not_configured",
                e.to_string(),
            )
        })?;
    let mut r = Json(serde_json::json!({
        "business_id": id,
        "url": link.url,
        "expires_at": link.expires_at,
    }))
    .into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exactly_one_token_is_taken_from_the_query() {
        assert_eq!(token_of(Some("token=abc")).as_deref(), Some("abc"));
        assert_eq!(token_of(Some("x=1&token=a%2Eb")).as_deref(), Some("a.b"));
        assert_eq!(token_of(Some("token=a&token=b")), None);
        assert_eq!(token_of(Some("tokens=a")), None);
        assert_eq!(token_of(None), None);
        let long = format!(
            "token={}",
            "a".repeat(4 * crate::owners::link::MAX_TOKEN_LEN)
        );
        assert_eq!(token_of(Some(&long)), None);
    }
}
