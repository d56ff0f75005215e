//! Takedown (SPEC §1.3): the business stops being billed at once, and its personal data leaves Stripe.

use serde::Serialize;

use super::{BillingError, BillingService};
use crate::business::{is_live_subscription, rfc3339, Business, Lifecycle};
use crate::metrics::{SubscriptionOutcome, TakedownStatus};
use crate::store::{now, NewOutbound};
use crate::stripe::{StripeClient, StripeError};

/// The result of a takedown, as the CLI and the API report it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TakedownSummary {
    pub business_id: String,
    pub reason: String,
    pub timestamp: String,
    /// `success`, `partial`, `not_found` or `already_taken_down`.
    pub status: String,
    /// `cancelled`, `cancelled_legacy`, `skipped`, `error:<reason>`, `not_found` or `already_taken_down`.
    pub stripe: String,
    /// Whether the Stripe customer was deleted (absent when there was none to delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_deleted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_delete_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Who started a takedown, as `business.taken_down` reports it to the meta-agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Initiator {
    /// `DELETE /v1/businesses/{id}`.
    Api,
    /// `business takedown`, the demo and the smoke test.
    Cli,
    /// A cancellation decided in Stripe (dashboard, dunning, the owner in the portal), however it reached
    /// us: webhook, gap fill or reconcile.
    Stripe,
    /// Reconcile's own decision.
    Reconcile,
    /// A roll-back.
    Rollback,
}

impl Initiator {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Cli => "cli",
            Self::Stripe => "stripe",
            Self::Reconcile => "reconcile",
            Self::Rollback => "rollback",
        }
    }
}

/// What the `business.taken_down` event of a takedown says besides its Stripe side.
struct Takedown<'a> {
    reason: &'a str,
    initiated_by: &'a str,
    at: i64,
}

/// Validates a takedown reason: short, printable, defaulting to `manual`.
pub fn clean_reason(reason: Option<&str>) -> Result<String, crate::business::InvalidInput> {
    let r = reason
        .map(str::trim)
        .filter(|r| !r.is_empty())
        .unwrap_or("manual");
    if r.chars().count() > 200 || r.chars().any(char::is_control) {
        return Err(crate::business::InvalidInput {
            field: "reason",
            reason: "must be at most 200 printable characters".into(),
        });
    }
    Ok(r.to_owned())
}

struct StripeSide {
    outcome: String,
    customer_deleted: Option<bool>,
    customer_delete_error: Option<String>,
    /// Whether nothing is left to do in Stripe.
    finished: bool,
    note: Option<String>,
}

impl BillingService {
    /// Takes a business down. Idempotent: a second call reports `already_taken_down` and calls nothing.
    pub async fn takedown(
        &self,
        id: &str,
        reason: Option<&str>,
        initiated_by: Initiator,
    ) -> Result<TakedownSummary, BillingError> {
        let reason = clean_reason(reason)?;
        let at = now();
        let summary = |status: &str, stripe: &str| TakedownSummary {
            business_id: id.to_owned(),
            reason: reason.clone(),
            timestamp: rfc3339(at),
            status: status.to_owned(),
            stripe: stripe.to_owned(),
            customer_deleted: None,
            customer_delete_error: None,
            note: None,
        };
        let Some(b) = self.store.get_business(id).await? else {
            self.metrics.takedown(TakedownStatus::NotFound);
            return Ok(summary("not_found", "not_found"));
        };
        if b.status == Lifecycle::TakenDown
            || !self
                .store
                .mark_taken_down(id, &reason, initiated_by.as_str(), at)
                .await?
        {
            self.metrics.takedown(TakedownStatus::AlreadyTakenDown);
            return Ok(summary("already_taken_down", "already_taken_down"));
        }
        tracing::info!(business_id = id, %reason, "business taken down");
        let owner = uuid::Uuid::new_v4().to_string();
        // The record is marked taken down first, so a crash from here on is finished by `resume`.
        let side = if self.claim(id, &owner).await? {
            let what = Takedown {
                reason: &reason,
                initiated_by: initiated_by.as_str(),
                at,
            };
            let side = self.cancel_in_stripe(&b, &what).await;
            self.store.release_business(id, &owner).await?;
            side?
        } else {
            StripeSide {
                outcome: "skipped".into(),
                customer_deleted: None,
                customer_delete_error: None,
                finished: false,
                note: Some(
                    "another worker holds this business; it finishes the Stripe side".into(),
                ),
            }
        };
        let status = if side.outcome.starts_with("error:") || side.customer_delete_error.is_some() {
            TakedownStatus::Partial
        } else {
            TakedownStatus::Success
        };
        self.metrics.takedown(status);
        let _ = self.refresh_gauges().await;
        Ok(TakedownSummary {
            status: status.as_str().to_owned(),
            stripe: side.outcome,
            customer_deleted: side.customer_deleted,
            customer_delete_error: side.customer_delete_error,
            note: side.note,
            ..summary(status.as_str(), "")
        })
    }

    /// Finishes the Stripe side of an interrupted takedown; `None` when another worker holds it.
    pub(super) async fn finish_takedown_claimed(
        &self,
        id: &str,
    ) -> Result<Option<TakedownSummary>, BillingError> {
        let owner = uuid::Uuid::new_v4().to_string();
        if !self.claim(id, &owner).await? {
            return Ok(None);
        }
        let result = self.finish_takedown_owned(id).await;
        self.store.release_business(id, &owner).await?;
        result
    }

    /// As [`Self::finish_takedown_claimed`], with the business's lease already held by the caller.
    pub(super) async fn finish_takedown_owned(
        &self,
        id: &str,
    ) -> Result<Option<TakedownSummary>, BillingError> {
        let b = self
            .store
            .get_business(id)
            .await?
            .ok_or_else(|| BillingError::NotFound(id.to_owned()))?;
        if b.status != Lifecycle::TakenDown || b.takedown_outcome.is_some() {
            return Ok(None);
        }
        let initiated_by = self.store.takedown_initiator(id).await?;
        let what = Takedown {
            reason: b.takedown_reason.as_deref().unwrap_or_default(),
            initiated_by: initiated_by.as_deref().unwrap_or("unknown"),
            at: b.taken_down_at.unwrap_or_else(now),
        };
        let side = self.cancel_in_stripe(&b, &what).await?;
        let status = if side.finished { "success" } else { "partial" };
        Ok(Some(TakedownSummary {
            business_id: id.to_owned(),
            reason: b.takedown_reason.clone().unwrap_or_default(),
            timestamp: rfc3339(b.taken_down_at.unwrap_or_else(now)),
            status: status.to_owned(),
            stripe: side.outcome,
            customer_deleted: side.customer_deleted,
            customer_delete_error: side.customer_delete_error,
            note: side.note,
        }))
    }

    /// Marks the Stripe side unfinished (for `resume`) after a failed call, recording why.
    async fn stripe_failed(
        &self,
        b: &Business,
        side: &mut StripeSide,
        e: &StripeError,
    ) -> Result<(), BillingError> {
        side.outcome = format!("error:{}", e.reason());
        side.finished = false;
        self.store
            .record_event(&b.business_id, "takedown_error", &e.to_string())
            .await?;
        Ok(())
    }

    /// Cancels what bills the business and deletes its customer, recording the outcome.
    async fn cancel_in_stripe(
        &self,
        b: &Business,
        what: &Takedown<'_>,
    ) -> Result<StripeSide, BillingError> {
        let billable = b.stripe_subscription_id.is_some()
            || b.stripe_payment_intent_id.is_some()
            || b.stripe_customer_id.is_some();
        let Some(stripe) = &self.stripe else {
            // Kill switch: nothing may reach Stripe. Leave the takedown open so it is finished when
            // payments are back on, instead of silently leaving a subscription billing.
            let note = billable.then(|| "payments are disabled: the Stripe side is finished by `business resume` once they are enabled".to_owned());
            let side = StripeSide {
                outcome: "skipped".into(),
                customer_deleted: None,
                customer_delete_error: None,
                finished: !billable,
                note,
            };
            self.store
                .set_takedown_outcome(
                    &b.business_id,
                    (!billable).then_some("skipped"),
                    None,
                    &taken_down_event(b, what, &side),
                )
                .await?;
            return Ok(side);
        };
        let mut side = StripeSide {
            outcome: "skipped".into(),
            customer_deleted: None,
            customer_delete_error: None,
            finished: true,
            note: None,
        };
        let mut new_status = None;
        if let Some(sub) = &b.stripe_subscription_id {
            let already_over = b
                .subscription_status
                .as_deref()
                .is_some_and(|s| !is_live_subscription(s));
            let cancelled = if already_over {
                Ok(())
            } else {
                cancel_subscription(stripe, sub).await
            };
            match cancelled {
                Ok(()) => {
                    side.outcome = "cancelled".into();
                    // A subscription Stripe had already ended keeps the status Stripe gave it.
                    new_status = (!already_over).then_some("canceled");
                    self.metrics.subscription(SubscriptionOutcome::Cancelled);
                }
                Err(e) => self.stripe_failed(b, &mut side, &e).await?,
            }
        } else if let Some(pi) = &b.stripe_payment_intent_id {
            let key = format!("genesis:{}:payment_intent:cancel", b.business_id);
            match stripe.cancel_payment_intent(pi, key).await {
                Ok(_) => side.outcome = "cancelled_legacy".into(),
                Err(e) if e.code() == Some("payment_intent_unexpected_state") => {
                    // Already canceled or succeeded: nothing left to stop.
                    side.outcome = "cancelled_legacy".into();
                    side.note = Some(format!("payment intent was not cancellable: {e}"));
                }
                Err(e) => self.stripe_failed(b, &mut side, &e).await?,
            }
        }
        // Personal data leaves Stripe only once nothing bills any more.
        if side.finished {
            if let Some(customer) = &b.stripe_customer_id {
                match stripe.delete_customer(customer).await {
                    Ok(()) => side.customer_deleted = Some(true),
                    Err(e) if e.is_missing() => side.customer_deleted = Some(true),
                    Err(e) => {
                        side.customer_deleted = Some(false);
                        side.customer_delete_error = Some(e.to_string());
                        side.finished = false;
                        self.store
                            .record_event(&b.business_id, "customer_delete_failed", &e.to_string())
                            .await?;
                    }
                }
            }
        }
        let outcome = side.finished.then_some(side.outcome.as_str());
        self.store
            .set_takedown_outcome(
                &b.business_id,
                outcome,
                new_status,
                &taken_down_event(b, what, &side),
            )
            .await?;
        Ok(side)
    }
}

/// The `business.taken_down` event: the takedown's summary as its first attempt ends (a Stripe side left
/// open is finished later, and the event is not written again).
fn taken_down_event(b: &Business, what: &Takedown<'_>, side: &StripeSide) -> NewOutbound {
    let status = if side.outcome.starts_with("error:") || side.customer_delete_error.is_some() {
        TakedownStatus::Partial
    } else {
        TakedownStatus::Success
    };
    NewOutbound {
        business_id: b.business_id.clone(),
        update_type: "business.taken_down",
        data: serde_json::json!({
            "business_id": b.business_id,
            "reason": what.reason,
            "initiated_by": what.initiated_by,
            "timestamp": rfc3339(what.at),
            "status": status.as_str(),
            "stripe": side.outcome,
            "customer_deleted": side.customer_deleted,
            "customer_delete_error": side.customer_delete_error,
        }),
        cause: format!("taken_down:{}", b.business_id),
    }
}

/// Cancels immediately; a subscription Stripe already ended (or never had) counts as cancelled.
async fn cancel_subscription(stripe: &StripeClient, id: &str) -> Result<(), StripeError> {
    match stripe.cancel_subscription(id).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_missing() => Ok(()),
        Err(e) if e.status().is_some_and(|s| (400..500).contains(&s)) => {
            let current = stripe.retrieve_subscription(id).await?;
            if is_live_subscription(&current.status) {
                Err(e)
            } else {
                Ok(())
            }
        }
        Err(e) => Err(e),
    }
}
