//! Roll-back (SPEC §5): `cancel-all` cancels every live subscription genesis-billing created, through the
//! rate limiter; it can be interrupted and run again without cancelling anything twice.

use serde::Serialize;

use super::{BillingError, BillingService};
use crate::business::{is_live_subscription, Billing, Lifecycle};
use crate::store::now;

/// A subscription `cancel-all` would cancel (or did).
#[derive(Debug, Clone, Serialize)]
pub struct LiveSubscription {
    pub subscription_id: String,
    pub business_id: String,
    pub status: String,
}

/// What a roll-back has to do, read from Stripe's subscription list.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RollbackPlan {
    /// Live in Stripe: to cancel.
    pub live: Vec<LiveSubscription>,
    /// Already ended in Stripe (an interrupted earlier run) while our record still shows them live:
    /// only the record needs updating; Stripe is not called again.
    pub records_to_update: Vec<LiveSubscription>,
}

impl BillingService {
    /// Reads Stripe's subscriptions carrying our `business_id` metadata (never the account's others).
    pub async fn plan_rollback(&self) -> Result<RollbackPlan, BillingError> {
        let stripe = self.stripe()?;
        let mut plan = RollbackPlan::default();
        let mut after: Option<String> = None;
        loop {
            let page = stripe.list_subscriptions(None, after.as_deref()).await?;
            after = page.data.last().map(|s| s.id.clone());
            for s in page.data {
                let Some(business_id) = s.metadata.get("business_id").cloned() else {
                    continue;
                };
                let entry = LiveSubscription {
                    subscription_id: s.id.clone(),
                    business_id,
                    status: s.status.clone(),
                };
                if is_live_subscription(&s.status) {
                    plan.live.push(entry);
                } else if let Some(b) = self.store.get_business(&entry.business_id).await? {
                    let stale = b.status == Lifecycle::Active
                        && b.stripe_subscription_id.as_deref() == Some(s.id.as_str())
                        && b.subscription_status
                            .as_deref()
                            .is_some_and(is_live_subscription);
                    if stale {
                        plan.records_to_update.push(entry);
                    }
                }
            }
            if !page.has_more || after.is_none() {
                break;
            }
        }
        Ok(plan)
    }

    /// Cancels one subscription of a roll-back and records it; billing of the business becomes `skipped`
    /// so that reconciliation does not bill it again on its own.
    pub async fn cancel_for_rollback(&self, s: &LiveSubscription) -> Result<(), BillingError> {
        let stripe = self.stripe()?;
        match stripe.cancel_subscription(&s.subscription_id).await {
            Ok(_) => self.metrics.inc(
                "genesis_meta_agent_stripe_subscriptions_total",
                &["cancelled"],
            ),
            Err(e) if e.is_missing() => {}
            Err(e) => {
                // Already over (cancelled by an earlier, interrupted run): nothing to do in Stripe.
                let current = stripe.retrieve_subscription(&s.subscription_id).await?;
                if is_live_subscription(&current.status) {
                    return Err(e.into());
                }
            }
        }
        self.record_rollback(s).await
    }

    /// Records a rolled-back subscription on its business, without calling Stripe.
    pub async fn record_rollback(&self, s: &LiveSubscription) -> Result<(), BillingError> {
        if self.store.get_business(&s.business_id).await?.is_some() {
            self.store
                .set_subscription_status(&s.business_id, &s.subscription_id, "canceled", now())
                .await?;
            self.store
                .set_billing(
                    &s.business_id,
                    Billing::Skipped,
                    None,
                    Some("rolled back by cancel-all"),
                )
                .await?;
            self.store
                .record_event(&s.business_id, "rollback_cancel", &s.subscription_id)
                .await?;
        }
        Ok(())
    }
}
