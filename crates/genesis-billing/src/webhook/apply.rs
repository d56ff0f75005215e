//! Applying stored events: the appliers (one per lane, in arrival order within a customer), the single
//! apply of `webhooks replay` and gap fill, and each outcome with its backoff, for the writer to record.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;

use crate::billing::{not_ours, Applied, BillingError, BillingService, Deferred, Writes, TOO_DEEP};
use crate::config::StripeMode;
use crate::metrics::WebhookOutcome;
use crate::store::{now, EventResult};

use super::envelope::{key_is_live, too_deep};

/// Applies after which a failing event is dead-lettered and only `webhooks replay` retries it.
const MAX_ATTEMPTS: i64 = 8;

/// A stored event held by this inbox, for an applier lane.
pub(super) struct Work {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    pub payload: String,
    /// Earlier attempts, for the backoff.
    pub attempts: i64,
    /// Read by this inbox's receiver (`envelope::read`): its nesting and mode are already checked.
    pub received: bool,
}

/// Applies stored events; a lease in the database keeps two workers off one event.
pub(super) struct Applier {
    pub service: Arc<BillingService>,
    pub lease: Duration,
    /// The configured key's mode, which every event's `livemode` must match.
    pub mode: Option<StripeMode>,
}

impl Applier {
    /// Applies one event and says how it went (status, business, error, next attempt). `attempts` counts
    /// earlier tries, for the backoff. The body is parsed here, once; an event this inbox `received` skips
    /// the envelope's checks, which its receiver made.
    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        event_type: &str,
        created: i64,
        payload: &str,
        attempts: i64,
        id: &str,
        writes: Writes,
        received: bool,
    ) -> EventResult {
        let ignored = |why| {
            Ok(Applied::Ignored {
                business_id: None,
                why,
            })
        };
        // Events stored before these checks existed, or read from Stripe's list, meet them here.
        let result = if !received && too_deep(payload.as_bytes()) {
            ignored(TOO_DEEP)
        } else {
            match serde_json::from_str::<Value>(payload) {
                Ok(v) => match (!received)
                    .then(|| {
                        not_ours(
                            v["livemode"].as_bool(),
                            v["account"].as_str(),
                            key_is_live(self.mode),
                        )
                    })
                    .flatten()
                {
                    Some(why) => ignored(why),
                    None => self.service.apply_event(&v, writes).await,
                },
                Err(e) => Err(BillingError::Conflict(format!(
                    "stored payload unreadable: {e}"
                ))),
            }
        };
        self.outcome(event_type, created, attempts, id, result)
    }

    /// Counts an apply's result and turns it into what the database records.
    fn outcome(
        &self,
        event_type: &str,
        created: i64,
        attempts: i64,
        id: &str,
        result: Result<Applied, BillingError>,
    ) -> EventResult {
        let metrics = self.service.metrics();
        let outcome = |status, business_id, error: Option<String>, retry_at| EventResult {
            event_id: id.to_owned(),
            event_type: event_type.to_owned(),
            status,
            business_id,
            error,
            retry_at,
            change: None,
            history: None,
            created,
        };
        match result {
            // Counted once the writer has recorded it (`count_outcome`).
            Ok(Applied::Deferred { business_id, write }) => {
                let r = outcome("applied", Some(business_id), None, None);
                match write {
                    Deferred::Status(change) => EventResult {
                        change: Some(change),
                        ..r
                    },
                    Deferred::History(entry) => EventResult {
                        history: Some(entry),
                        ..r
                    },
                }
            }
            Ok(Applied::Applied { business_id }) => {
                let r = outcome("applied", Some(business_id), None, None);
                count_outcome(metrics, &r);
                r
            }
            Ok(Applied::Ignored { business_id, why }) => {
                let r = outcome("ignored", business_id, Some(why.to_owned()), None);
                count_outcome(metrics, &r);
                r
            }
            Err(e) => {
                metrics.webhook_event(event_type, WebhookOutcome::Failed);
                let tries = attempts + 1;
                tracing::warn!(event_id = id, attempts = tries, error = %e, "applying webhook event failed");
                if tries >= MAX_ATTEMPTS {
                    outcome("dead", None, Some(e.to_string()), None)
                } else {
                    outcome(
                        "failed",
                        None,
                        Some(e.to_string()),
                        Some(now() + (5i64 << tries.min(10)).min(3600)),
                    )
                }
            }
        }
    }

    /// Claims a stored event (unless another worker holds it or it is finished), applies it, records it.
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
        // The claim counted this attempt already.
        let r = self
            .run(
                &event.event_type,
                event.created,
                &event.payload,
                event.attempts - 1,
                id,
                Writes::Now,
                false,
            )
            .await;
        let finished = store
            .finish_event(
                id,
                &owner,
                r.status,
                r.business_id.as_deref(),
                r.error.as_deref(),
                r.retry_at,
            )
            .await;
        if let Err(e) = finished {
            tracing::error!(event_id = id, error = %e, "cannot record webhook outcome");
        }
    }
}

/// Counts an event applied or ignored (the outcomes decided when the apply or the writer recorded it).
pub(super) fn count_outcome(metrics: &crate::metrics::Metrics, r: &EventResult) {
    let outcome = match r.status {
        "applied" => WebhookOutcome::Applied,
        "ignored" => WebhookOutcome::Ignored,
        _ => return,
    };
    metrics.webhook_event(&r.event_type, outcome);
    if outcome == WebhookOutcome::Applied {
        metrics.webhook_apply_lag((now() - r.created).max(0) as f64);
    }
}

/// Applies newly stored pending events in arrival order, from memory (no claim, no read of the event),
/// and reports each outcome to the writer, which records it with its next commit. (Events about businesses
/// the records do not know were settled when stored.)
pub(super) async fn apply_loop(
    applier: Arc<Applier>,
    mut queue: mpsc::Receiver<Work>,
    outcomes: mpsc::UnboundedSender<EventResult>,
) {
    while let Some(e) = queue.recv().await {
        let result = applier
            .run(
                &e.event_type,
                e.created,
                &e.payload,
                e.attempts,
                &e.id,
                Writes::Deferred,
                e.received,
            )
            .await;
        if outcomes.send(result).is_err() {
            return;
        }
    }
}
