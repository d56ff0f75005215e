//! Roll-back (SPEC §5): `cancel-all` cancels every live subscription genesis-billing created, through the
//! rate limiter; it can be interrupted and run again without cancelling anything twice.
//!
//! A roll-back stops billing; it never ends a business. Each cancellation is recorded as an intent before
//! Stripe is called, so the `customer.subscription.deleted` event that reports it back (which may arrive
//! before the command records its result, or after a crash instead of it) is recognised as ours and only
//! marks billing `skipped`, instead of being taken for a cancellation decided in Stripe.

use serde::Serialize;

use super::{BillingError, BillingService};
use crate::business::{is_live_subscription, Billing, Business, Lifecycle};
use crate::metrics::SubscriptionOutcome;
use crate::store::{notice_message_id, now, NewNotice, NoticeState};

/// Why billing of a rolled-back business is `skipped`.
pub const ROLLED_BACK: &str = "rolled back by cancel-all";

/// A subscription `cancel-all` would cancel (or did).
#[derive(Debug, Clone, Serialize)]
pub struct LiveSubscription {
    pub subscription_id: String,
    pub business_id: String,
    pub status: String,
}

/// One page of Stripe's subscription list, as a roll-back sees it.
#[derive(Debug, Clone, Serialize, Default)]
pub struct RollbackPage {
    /// Live in Stripe: to cancel.
    pub live: Vec<LiveSubscription>,
    /// Cancelled by an earlier, interrupted roll-back while our record still shows them live: only the
    /// record needs updating; Stripe is not called again.
    pub records_to_update: Vec<LiveSubscription>,
    /// The cursor of the next page; `None` on the last.
    pub next: Option<String>,
}

/// The intent recorded before a roll-back cancels `subscription` of `business_id` (`Store::rolled_back_among`
/// builds the same key in SQL).
fn rollback_key(business_id: &str, subscription: &str) -> String {
    format!("genesis:{business_id}:subscription:{subscription}:rollback_cancel")
}

impl BillingService {
    /// Reads one page (up to 100) of Stripe's subscriptions carrying our `business_id` metadata (never the
    /// account's others), starting after the cursor `after`. Memory stays bounded by the page.
    pub async fn rollback_page(&self, after: Option<&str>) -> Result<RollbackPage, BillingError> {
        let stripe = self.stripe()?;
        let page = stripe.list_subscriptions(None, after).await?;
        let mut out = RollbackPage {
            next: page
                .has_more
                .then(|| page.data.last().map(|s| s.id.clone()))
                .flatten(),
            ..RollbackPage::default()
        };
        let mut ended = Vec::new();
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
                out.live.push(entry);
            } else {
                ended.push(entry);
            }
        }
        // Ended in Stripe while our record still shows them live, and cancelled by us (a cancellation
        // decided in Stripe is the webhooks' and reconcile's to apply): one query for the page.
        let ids: Vec<&str> = ended.iter().map(|e| e.business_id.as_str()).collect();
        let stale: std::collections::HashMap<String, Business> = self
            .store
            .rolled_back_among(&ids)
            .await?
            .into_iter()
            // Its record still live, or half written: a kill between the status and the billing write
            // leaves `canceled` with billing not yet `skipped`.
            .filter(|b| {
                b.status == Lifecycle::Active
                    && (b.billing != Billing::Skipped
                        || b.subscription_status
                            .as_deref()
                            .is_some_and(is_live_subscription))
            })
            .map(|b| (b.business_id.clone(), b))
            .collect();
        out.records_to_update = ended
            .into_iter()
            .filter(|e| {
                stale.get(&e.business_id).is_some_and(|b| {
                    b.stripe_subscription_id.as_deref() == Some(e.subscription_id.as_str())
                })
            })
            .collect();
        Ok(out)
    }

    /// Cancels one subscription of a roll-back and records it; billing of the business becomes `skipped`
    /// so that reconciliation does not bill it again on its own.
    pub async fn cancel_for_rollback(&self, s: &LiveSubscription) -> Result<(), BillingError> {
        self.cancel_in_stripe_for_rollback(s).await?;
        self.record_rollback(s).await
    }

    /// The Stripe half of [`Self::cancel_for_rollback`]: records the intent, then cancels. Until
    /// [`Self::record_rollback`] runs, the subscription's deleted event is what records the result.
    pub async fn cancel_in_stripe_for_rollback(
        &self,
        s: &LiveSubscription,
    ) -> Result<(), BillingError> {
        let stripe = self.stripe()?;
        // The intent goes first: a deleted event that beats our own record must find it. A subscription
        // naming a business we have no record of has no business to end, and no intent row to hold.
        let key = rollback_key(&s.business_id, &s.subscription_id);
        let known = self.store.get_business(&s.business_id).await?.is_some();
        if known {
            self.store
                .begin_intent(&key, &s.business_id, "rollback_cancel")
                .await?;
        }
        match stripe.cancel_subscription(&s.subscription_id).await {
            Ok(_) => self.metrics.subscription(SubscriptionOutcome::Cancelled),
            Err(e) if e.is_missing() => {}
            Err(e) => {
                // Already over (cancelled by an earlier, interrupted run): nothing to do in Stripe.
                let current = stripe.retrieve_subscription(&s.subscription_id).await?;
                if is_live_subscription(&current.status) {
                    if known {
                        self.store.finish_intent(&key, Err(&e.to_string())).await?;
                    }
                    return Err(e.into());
                }
            }
        }
        if known {
            self.store
                .finish_intent(&key, Ok(&s.subscription_id))
                .await?;
        }
        Ok(())
    }

    /// `cancel-all --notify`: writes the owner's notice for this subscription, held until the roll-back's
    /// record of the cancellation (its `billing.rolled_back` event) releases it. Written before Stripe is
    /// called, so an interrupted run still tells the owner once the cancellation is recorded, by whichever
    /// path records it; its cause is the subscription, so reruns write nothing new.
    pub async fn hold_rollback_notice(&self, s: &LiveSubscription) -> Result<(), BillingError> {
        if self.store.get_business(&s.business_id).await?.is_none() {
            return Ok(());
        }
        let cause = format!("rollback:{}", s.subscription_id);
        self.store
            .insert_notice(&NewNotice {
                message_id: notice_message_id(&cause),
                cause,
                business_id: s.business_id.clone(),
                kind: "rolled_back",
                recipient: None,
                state: NoticeState::Held,
                reason: None,
                data: serde_json::json!({ "subscription_id": s.subscription_id }),
                delay_ms: 0,
            })
            .await?;
        Ok(())
    }

    /// Records a rolled-back subscription on its business, without calling Stripe.
    pub async fn record_rollback(&self, s: &LiveSubscription) -> Result<(), BillingError> {
        if let Some(b) = self.store.get_business(&s.business_id).await? {
            self.mark_rolled_back(&b, &s.subscription_id, now()).await?;
        }
        Ok(())
    }

    /// Whether a roll-back recorded its intent to cancel this subscription of this business (and Stripe did
    /// not refuse it).
    pub async fn cancelled_by_rollback(
        &self,
        business_id: &str,
        subscription: &str,
    ) -> Result<bool, BillingError> {
        // A failed intent is a cancel Stripe refused while the subscription stayed live: a later
        // cancellation of it is not ours.
        Ok(self
            .store
            .intent(&rollback_key(business_id, subscription))
            .await?
            .is_some_and(|i| i.state != "failed"))
    }

    /// The record of a rolled-back subscription: canceled, billing `skipped`, the business untouched.
    /// Written by the command or by the deleted event, whichever comes first; the second changes nothing.
    pub(super) async fn mark_rolled_back(
        &self,
        b: &Business,
        subscription: &str,
        at: i64,
    ) -> Result<(), BillingError> {
        self.store
            .set_subscription_status(&b.business_id, subscription, "canceled", at)
            .await?;
        if self
            .store
            .set_rolled_back(&b.business_id, subscription, ROLLED_BACK)
            .await?
        {
            self.store
                .record_event(&b.business_id, "rollback_cancel", subscription)
                .await?;
        }
        Ok(())
    }
}
