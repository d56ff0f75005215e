//! The demo's stand-in for the meta-agent's dashboard: `POST /api/businesses/{id}/events` on 127.0.0.1,
//! checking each `Genesis-Signature` with the code that checks Stripe's webhooks (the scheme is Stripe's),
//! and keeping what arrived to print at the end.

use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use secrecy::SecretString;
use serde_json::Value;

use crate::webhook::signature;

/// An event as the meta-agent received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub business_id: String,
    pub envelope: Value,
}

#[derive(Clone)]
struct Inbox {
    secret: Arc<[SecretString]>,
    received: Arc<Mutex<Vec<Received>>>,
}

/// The running receiver; stops with the demo's runtime.
pub struct MetaAgent {
    pub url: String,
    inbox: Inbox,
}

impl MetaAgent {
    /// Starts on a free loopback port, accepting events signed with `secret`.
    pub async fn start(secret: &str) -> anyhow::Result<Self> {
        let inbox = Inbox {
            secret: Arc::new([SecretString::from(secret.to_owned())]),
            received: Arc::default(),
        };
        let app = Router::new()
            .route("/api/businesses/{id}/events", post(receive))
            .with_state(inbox.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .context("while binding the demo's meta-agent")?;
        let url = format!("http://{}", listener.local_addr()?);
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, inbox })
    }

    /// Everything received so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.inbox
            .received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

async fn receive(
    State(inbox): State<Inbox>,
    Path(business_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> StatusCode {
    let header = headers
        .get("genesis-signature")
        .and_then(|v| v.to_str().ok());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    if signature::verify(header, &body, &inbox.secret, now, 300).is_err() {
        return StatusCode::BAD_REQUEST;
    }
    let Ok(envelope) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST;
    };
    inbox
        .received
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(Received {
            business_id,
            envelope,
        });
    StatusCode::NO_CONTENT
}
