//! The webhook inbox: verify, store by event id, apply, acknowledge — always in that order — plus
//! background retries of failed applies and gap fill from Stripe's event list.

pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;

use crate::billing::{Applied, BillingService, HANDLED_EVENTS};
use crate::store::{now, StoredEvent};
use crate::stripe::{Call, Form};
pub use signature::Rejection;

/// Largest webhook body accepted (SPEC §1.4).
pub const MAX_BODY: usize = 1 << 20;

/// Applies after which a failing event is dead-lettered and only `webhooks replay` retries it.
const MAX_ATTEMPTS: i64 = 8;

/// What became of a delivery that passed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored now (and applied, or queued for retry if applying failed).
    Stored,
    /// Already stored by an earlier delivery: acknowledged, not applied again.
    Duplicate,
}

/// Why a delivery was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveError {
    /// The delivery is refused (4xx); nothing was stored.
    Rejected(Rejection),
    /// Our database failed; Stripe should deliver again (5xx).
    Unavailable,
}

/// The webhook receiver and its background work.
pub struct Inbox {
    service: Arc<BillingService>,
    secrets: Vec<SecretString>,
    tolerance: i64,
    lease: Duration,
}

impl Inbox {
    pub fn new(
        service: Arc<BillingService>,
        secrets: Vec<SecretString>,
        tolerance_secs: i64,
    ) -> Self {
        Self {
            service,
            secrets,
            tolerance: tolerance_secs,
            lease: Duration::from_secs(60),
        }
    }

    pub fn has_secret(&self) -> bool {
        !self.secrets.is_empty()
    }

    fn reject(&self, r: Rejection) -> ReceiveError {
        self.service
            .metrics()
            .inc("genesis_billing_webhook_rejected_total", &[r.reason()]);
        tracing::warn!(reason = r.reason(), "webhook rejected");
        ReceiveError::Rejected(r)
    }

    /// Handles one delivery: the event is durably stored before this returns `Ok`.
    pub async fn receive(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Received, ReceiveError> {
        if body.len() > MAX_BODY {
            return Err(self.reject(Rejection::TooLarge));
        }
        signature::verify(signature, body, &self.secrets, now(), self.tolerance)
            .map_err(|r| self.reject(r))?;
        let event: Value =
            serde_json::from_slice(body).map_err(|_| self.reject(Rejection::BadPayload))?;
        let (Some(id), Some(kind), Some(created)) = (
            event["id"].as_str(),
            event["type"].as_str(),
            event["created"].as_i64(),
        ) else {
            return Err(self.reject(Rejection::BadPayload));
        };
        if !id.starts_with("evt_")
            || id.len() > 255
            || kind.len() > 255
            || !event["data"]["object"].is_object()
        {
            return Err(self.reject(Rejection::BadPayload));
        }
        let body_text =
            std::str::from_utf8(body).map_err(|_| self.reject(Rejection::BadPayload))?;
        let stored = self
            .service
            .store()
            .insert_event(id, kind, created, "webhook", body_text)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "cannot store webhook event");
                ReceiveError::Unavailable
            })?;
        if stored {
            self.apply(id).await;
            Ok(Received::Stored)
        } else {
            self.service
                .metrics()
                .inc("genesis_billing_webhook_events_total", &[kind, "duplicate"]);
            Ok(Received::Duplicate)
        }
    }

    /// Applies a stored event if no other worker holds it; failures are recorded for a later retry.
    pub async fn apply(&self, id: &str) {
        let owner = uuid::Uuid::new_v4().to_string();
        let until = now() + self.lease.as_secs() as i64;
        let store = self.service.store();
        let event = match store.claim_event(id, &owner, until).await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(event_id = id, error = %e, "cannot claim webhook event");
                return;
            }
        };
        let metrics = self.service.metrics();
        let result = match serde_json::from_str::<Value>(&event.payload) {
            Ok(v) => self.service.apply_event(&v).await,
            Err(e) => Err(crate::billing::BillingError::Conflict(format!(
                "stored payload unreadable: {e}"
            ))),
        };
        let finished = match result {
            Ok(Applied::Applied { business_id }) => {
                metrics.inc(
                    "genesis_billing_webhook_events_total",
                    &[&event.event_type, "applied"],
                );
                metrics.observe(
                    "genesis_billing_webhook_apply_lag_seconds",
                    &[],
                    (now() - event.created).max(0) as f64,
                );
                store
                    .finish_event(id, &owner, "applied", Some(&business_id), None, None)
                    .await
            }
            Ok(Applied::Ignored { business_id, why }) => {
                metrics.inc(
                    "genesis_billing_webhook_events_total",
                    &[&event.event_type, "ignored"],
                );
                store
                    .finish_event(
                        id,
                        &owner,
                        "ignored",
                        business_id.as_deref(),
                        Some(why),
                        None,
                    )
                    .await
            }
            Err(e) => {
                metrics.inc(
                    "genesis_billing_webhook_events_total",
                    &[&event.event_type, "failed"],
                );
                let attempts = event.attempts;
                let (status, retry_at) = if attempts >= MAX_ATTEMPTS {
                    ("dead", None)
                } else {
                    ("failed", Some(now() + (5i64 << attempts.min(10)).min(3600)))
                };
                tracing::warn!(event_id = id, attempts, error = %e, "applying webhook event failed");
                store
                    .finish_event(id, &owner, status, None, Some(&e.to_string()), retry_at)
                    .await
            }
        };
        if let Err(e) = finished {
            tracing::error!(event_id = id, error = %e, "cannot record webhook outcome");
        }
    }

    /// Retries every event whose backoff has passed (and any left pending by a crash).
    pub async fn retry_due(&self) -> usize {
        let due: Vec<StoredEvent> = match self.service.store().due_events(200).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot list due webhook events");
                return 0;
            }
        };
        for e in &due {
            self.apply(&e.event_id).await;
        }
        due.len()
    }

    /// Reads Stripe's event list since the newest stored event and applies what webhooks missed.
    pub async fn gap_fill(&self) -> Result<usize, crate::billing::BillingError> {
        let stripe = self.service.stripe()?;
        // A minute of overlap: events created in the same second as the newest one may not all be stored.
        let since = match self.service.store().newest_event_created().await? {
            Some(t) => t - 60,
            None => now() - 3600,
        };
        let mut missed = 0;
        let mut after: Option<String> = None;
        for _page in 0..50 {
            let query = Form::new()
                .add("created[gte]", since.to_string())
                .add("limit", "100")
                .add_list("types", HANDLED_EVENTS.iter().copied())
                .add_opt("starting_after", after.clone());
            let page = stripe
                .send(&Call::get("event.list", "/v1/events", query))
                .await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            for event in &data {
                let (Some(id), Some(kind), Some(created)) = (
                    event["id"].as_str(),
                    event["type"].as_str(),
                    event["created"].as_i64(),
                ) else {
                    continue;
                };
                if self
                    .service
                    .store()
                    .insert_event(id, kind, created, "gap_fill", &event.to_string())
                    .await?
                {
                    missed += 1;
                    self.apply(id).await;
                }
            }
            match (
                page["has_more"].as_bool(),
                data.last().and_then(|e| e["id"].as_str()),
            ) {
                (Some(true), Some(last)) => after = Some(last.to_owned()),
                _ => break,
            }
        }
        if missed > 0 {
            tracing::info!(missed, "gap fill applied events that webhooks missed");
        }
        Ok(missed)
    }
}
