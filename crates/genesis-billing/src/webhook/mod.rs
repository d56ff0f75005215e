//! The webhook inbox: verify, store by event id, acknowledge, apply — plus background retries of failed
//! applies and gap fill from Stripe's event list.

pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::billing::{Applied, BillingError, BillingService, HANDLED_EVENTS};
use crate::store::{now, NewEvent, StoredEvent};
use crate::stripe::{Call, Form};
pub use signature::Rejection;

/// Largest webhook body accepted (SPEC §1.4).
pub const MAX_BODY: usize = 1 << 20;

/// Applies after which a failing event is dead-lettered and only `webhooks replay` retries it.
const MAX_ATTEMPTS: i64 = 8;

/// Events waiting to be committed; beyond this, deliveries wait (back-pressure instead of memory growth).
const COMMIT_QUEUE: usize = 8192;

/// Most events written in one transaction.
const MAX_BATCH: usize = 512;

/// What became of a delivery that passed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored now; it is applied right after.
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

type CommitRequest = (NewEvent, oneshot::Sender<Result<bool, ()>>);

/// The webhook receiver and its background work.
///
/// One committer task writes every event waiting at that moment in one transaction (group commit): each
/// response is held until its own event is on disk, and one disk sync serves many events. The event is
/// acknowledged once stored — the durable record is what Stripe's retry would otherwise provide — and then
/// applied in arrival order by one applier task. A crash between the two leaves it `pending`, and
/// `retry_due` applies it after restart.
pub struct Inbox {
    applier: Arc<Applier>,
    secrets: Vec<SecretString>,
    tolerance: i64,
    commits: mpsc::Sender<CommitRequest>,
}

/// Applies stored events; a lease in the database keeps two workers off one event.
struct Applier {
    service: Arc<BillingService>,
    lease: Duration,
}

impl Inbox {
    /// Starts the committer and applier tasks; they stop when the inbox is dropped.
    pub fn new(
        service: Arc<BillingService>,
        secrets: Vec<SecretString>,
        tolerance_secs: i64,
    ) -> Self {
        let applier = Arc::new(Applier {
            service,
            lease: Duration::from_secs(60),
        });
        let (commits, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        let (applies, apply_rx) = mpsc::unbounded_channel();
        tokio::spawn(commit_loop(applier.service.clone(), commit_rx, applies));
        tokio::spawn(apply_loop(applier.clone(), apply_rx));
        Self {
            applier,
            secrets,
            tolerance: tolerance_secs,
            commits,
        }
    }

    pub fn has_secret(&self) -> bool {
        !self.secrets.is_empty()
    }

    fn service(&self) -> &BillingService {
        &self.applier.service
    }

    fn reject(&self, r: Rejection) -> ReceiveError {
        self.service()
            .metrics()
            .inc("genesis_billing_webhook_rejected_total", &[r.reason()]);
        tracing::warn!(reason = r.reason(), "webhook rejected");
        ReceiveError::Rejected(r)
    }

    /// Handles one delivery: `Ok` only once the event is durably stored.
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
        // serde_json accepted the body, so it is valid UTF-8.
        let payload = String::from_utf8_lossy(body).into_owned();
        let kind = kind.to_owned();
        let new = NewEvent {
            id: id.to_owned(),
            event_type: kind.clone(),
            created,
            source: "webhook",
            payload,
        };
        let (reply, stored) = oneshot::channel();
        self.commits
            .send((new, reply))
            .await
            .map_err(|_| ReceiveError::Unavailable)?;
        match stored.await {
            Ok(Ok(true)) => Ok(Received::Stored),
            Ok(Ok(false)) => {
                self.service().metrics().inc(
                    "genesis_billing_webhook_events_total",
                    &[&kind, "duplicate"],
                );
                Ok(Received::Duplicate)
            }
            _ => Err(ReceiveError::Unavailable),
        }
    }

    /// Applies a stored event now unless another worker holds it (`webhooks replay`, tests).
    pub async fn apply(&self, id: &str) {
        self.applier.apply(id).await;
    }

    /// Retries every event whose backoff has passed (and any left pending by a crash).
    pub async fn retry_due(&self) -> usize {
        let due: Vec<StoredEvent> = match self.service().store().due_events(200).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot list due webhook events");
                return 0;
            }
        };
        for e in &due {
            self.applier.apply(&e.event_id).await;
        }
        due.len()
    }

    /// Reads Stripe's event list since the newest stored event and applies what webhooks missed.
    pub async fn gap_fill(&self) -> Result<usize, BillingError> {
        let service = self.service();
        let stripe = service.stripe()?;
        // A minute of overlap: events created in the same second as the newest one may not all be stored.
        let since = match service.store().newest_event_created().await? {
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
                if service
                    .store()
                    .insert_event(id, kind, created, "gap_fill", &event.to_string())
                    .await?
                {
                    missed += 1;
                    self.applier.apply(id).await;
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

impl Applier {
    /// Applies a stored event if no other worker holds it; failures are recorded for a later retry.
    async fn apply(&self, id: &str) {
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
            Err(e) => Err(BillingError::Conflict(format!(
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
}

/// Writes every queued event in one transaction, answers each waiting delivery, queues new ones for apply.
async fn commit_loop(
    service: Arc<BillingService>,
    mut queue: mpsc::Receiver<CommitRequest>,
    applies: mpsc::UnboundedSender<String>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let (events, replies): (Vec<NewEvent>, Vec<_>) = batch.drain(..).unzip();
        match service.store().insert_events(&events).await {
            Ok(stored) => {
                for ((event, reply), new) in events.into_iter().zip(replies).zip(stored) {
                    if new {
                        let _ = applies.send(event.id);
                    }
                    let _ = reply.send(Ok(new));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, count = events.len(), "cannot store webhook events");
                for reply in replies {
                    let _ = reply.send(Err(()));
                }
            }
        }
    }
}

/// Applies newly stored events in arrival order.
async fn apply_loop(applier: Arc<Applier>, mut queue: mpsc::UnboundedReceiver<String>) {
    while let Some(id) = queue.recv().await {
        applier.apply(&id).await;
    }
}
