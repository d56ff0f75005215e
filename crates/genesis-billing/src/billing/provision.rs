//! Provisioning (SPEC §1.1): record the business, then a customer, then a subscription; resumable at any
//! point without ever creating a second customer or subscription.

use serde::Serialize;

use super::{BillingError, BillingService};
use crate::business::{
    in_rollout, rfc3339, truncate_chars, Billing, Business, Lifecycle, NewBusiness,
};
use crate::metrics::SubscriptionOutcome;
use crate::store::{now, BusinessLease, HolderState, SubscriptionRecord, UnfinishedBusiness};
use crate::stripe::{
    Customer, NewCustomer, NewSubscription, StripeClient, StripeError, Subscription,
};

/// Stripe may prune idempotency keys a day old; past this age a key is no proof against a duplicate.
const KEY_TRUST_SECS: i64 = 23 * 3600;

/// At most this many business ids are listed per outcome in a `ResumeReport`; `counts` has them all.
pub const MAX_LISTED: usize = 1000;

/// What `resume` did. The id lists hold the first `MAX_LISTED` of each outcome, so a report stays small
/// whatever the fleet's size; `counts` counts them all.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ResumeReport {
    pub provisioned: Vec<String>,
    pub failed: Vec<String>,
    pub takedowns_finished: Vec<String>,
    pub takedowns_failed: Vec<String>,
    /// Held by a live worker (or one on another host) right now, with its lease's expiry.
    pub busy: Vec<BusyWork>,
    pub counts: ResumeCounts,
    /// The latest expiry (unix seconds) among the busy leases: by then they are all free to take over.
    pub busy_until: Option<i64>,
}

/// How many businesses each outcome of a `resume` counts.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ResumeCounts {
    pub provisioned: u64,
    pub failed: u64,
    pub takedowns_finished: u64,
    pub takedowns_failed: u64,
    pub busy: u64,
    /// Leases taken over from a worker on this host whose process is gone (counted in the outcomes too).
    pub taken_over: u64,
    /// Businesses whose billing waits for payments to be enabled (`ENABLE_PAYMENTS=false`).
    pub waiting_for_payments: u64,
}

/// A business another worker holds: who, and until when.
#[derive(Debug, Clone, Serialize)]
pub struct BusyWork {
    pub business_id: String,
    /// Unix seconds.
    pub lease_until: i64,
    pub host: Option<String>,
    pub pid: Option<i64>,
}

fn listed(list: &mut Vec<String>, count: &mut u64, id: String) {
    *count += 1;
    if list.len() < MAX_LISTED {
        list.push(id);
    }
}

impl ResumeReport {
    fn busy(&mut self, business_id: String, lease: Option<&BusinessLease>) {
        self.counts.busy += 1;
        let until = lease.map(|l| l.until).unwrap_or_default();
        self.busy_until = self.busy_until.max(Some(until));
        if self.busy.len() < MAX_LISTED {
            let holder = lease.and_then(|l| l.holder.as_ref());
            self.busy.push(BusyWork {
                business_id,
                lease_until: until,
                host: holder.and_then(|h| h.host.clone()),
                pid: holder.map(|h| h.pid),
            });
        }
    }
}

pub(super) fn customer_key(id: &str) -> String {
    format!("genesis:{id}:customer:create")
}

pub(super) fn subscription_key(id: &str, generation: i64) -> String {
    if generation == 0 {
        format!("genesis:{id}:subscription:create")
    } else {
        format!("genesis:{id}:subscription:create:g{generation}")
    }
}

impl BillingService {
    /// Records a business and provisions its billing. With a `request_key` seen before, returns the
    /// business that request created instead of a new one.
    /// The flag is true when `request_key` replayed an earlier request.
    pub async fn create_business(
        &self,
        input: NewBusiness,
        request_key: Option<&str>,
    ) -> Result<(Business, bool), BillingError> {
        let input = input.validate()?;
        let id = uuid::Uuid::new_v4().to_string();
        let (billing, why) = if !self.payments_enabled() {
            (Billing::Skipped, Some("payments disabled"))
        } else if !in_rollout(&id, self.rollout_percent) {
            (Billing::Skipped, Some("outside the billing roll-out"))
        } else {
            (Billing::Pending, None)
        };
        let created_at = now();
        let record = Business {
            business_id: id.clone(),
            name: input.name,
            business_type: input.business_type,
            email: input.email,
            created_at,
            updated_at: created_at,
            status: Lifecycle::Active,
            billing,
            billing_error: why.map(str::to_owned),
            failed_step: None,
            stripe_customer_id: None,
            stripe_subscription_id: None,
            stripe_payment_intent_id: None,
            subscription_status: None,
            price_lookup_key: None,
            stripe_price_id: None,
            monthly_price_cents: None,
            currency: None,
            generation: 0,
            stripe_state_at: 0,
            taken_down_at: None,
            takedown_reason: None,
            takedown_outcome: None,
        };
        // Recorded with our work lease already held: a background resume cannot start on it meanwhile.
        let owner = uuid::Uuid::new_v4().to_string();
        let until = created_at + self.lease.as_secs() as i64;
        let lease = (billing == Billing::Pending).then_some((owner.as_str(), until));
        let stored = self
            .store
            .insert_business_leased(&record, request_key, lease)
            .await?;
        if stored.business_id != id {
            if (&stored.name, &stored.business_type, &stored.email)
                != (&record.name, &record.business_type, &record.email)
            {
                return Err(BillingError::Conflict(
                    "this Idempotency-Key was used for a request with other parameters".into(),
                ));
            }
            return Ok((stored, true));
        }
        let business = if billing == Billing::Pending {
            let result = self.provision_claimed(&id, &owner).await;
            self.store.release_business(&id, &owner).await?;
            result?
        } else {
            stored
        };
        self.metrics
            .business_created(&business.business_type, business.billing.as_str());
        Ok((business, false))
    }

    /// Provisions (or finishes provisioning) one business, unless another worker holds it right now.
    pub async fn provision(&self, id: &str) -> Result<Business, BillingError> {
        let owner = uuid::Uuid::new_v4().to_string();
        if !self.claim(id, &owner).await? {
            return self
                .store
                .get_business(id)
                .await?
                .ok_or_else(|| BillingError::NotFound(id.to_owned()));
        }
        let result = self.provision_claimed(id, &owner).await;
        self.store.release_business(id, &owner).await?;
        result
    }

    async fn provision_claimed(&self, id: &str, owner: &str) -> Result<Business, BillingError> {
        let b = self
            .store
            .get_business(id)
            .await?
            .ok_or_else(|| BillingError::NotFound(id.to_owned()))?;
        if b.status != Lifecycle::Active || !matches!(b.billing, Billing::Pending | Billing::Failed)
        {
            return Ok(b);
        }
        let stripe = self.stripe()?;
        let customer = match &b.stripe_customer_id {
            Some(c) => c.clone(),
            None => match self.ensure_customer(stripe, &b).await {
                Ok(c) => c,
                Err(e) => return self.fail(&b, "customer", e).await,
            },
        };
        // Renew our lease between the two writes: a long rate-limit queue must not let another worker
        // take this business over while we still work on it.
        self.claim(id, owner).await?;
        match self.ensure_subscription(stripe, &b, &customer, None).await {
            Ok(sub) => {
                self.metrics.subscription(SubscriptionOutcome::Success);
                let entry = self.catalog.entry_for(&b.business_type);
                if entry.currency == "usd" {
                    self.metrics
                        .revenue_added(&b.business_type, entry.monthly_cents() as f64 / 100.0);
                }
                tracing::info!(business_id = id, subscription = %sub.id, status = %sub.status, "billing provisioned");
            }
            Err(e) => return self.fail(&b, "subscription", e).await,
        }
        self.store
            .get_business(id)
            .await?
            .ok_or_else(|| BillingError::NotFound(id.to_owned()))
    }

    /// Marks billing failed at `step`, counts it, and returns the record; the business itself stands.
    async fn fail(
        &self,
        b: &Business,
        step: &str,
        e: BillingError,
    ) -> Result<Business, BillingError> {
        if let BillingError::Store(_) = e {
            // Our own database failing is not a billing outcome: the caller sees it, and resume retries.
            return Err(e);
        }
        tracing::warn!(business_id = %b.business_id, step, error = %e, "billing failed");
        self.metrics.subscription(SubscriptionOutcome::Failed);
        self.metrics.provision_failure(step);
        self.store
            .set_billing(
                &b.business_id,
                Billing::Failed,
                Some(step),
                Some(&e.to_string()),
            )
            .await?;
        self.store
            .get_business(&b.business_id)
            .await?
            .ok_or_else(|| BillingError::NotFound(b.business_id.clone()))
    }

    async fn ensure_customer(
        &self,
        stripe: &StripeClient,
        b: &Business,
    ) -> Result<String, BillingError> {
        let key = customer_key(&b.business_id);
        let previous = self
            .store
            .begin_intent(&key, &b.business_id, "customer")
            .await?;
        if previous.is_some_and(|p| now() - p.created_at > KEY_TRUST_SECS) {
            if let Some(c) = self.find_customer(stripe, &b.business_id).await? {
                return self.adopt_customer(&key, b, &c).await;
            }
        }
        let description = format!("Genesis {} business {}", b.business_type, b.business_id);
        let params = NewCustomer {
            name: truncate_chars(&b.name, 100),
            email: b.email.as_deref(),
            description: &description,
            metadata: vec![
                ("business_id", b.business_id.clone()),
                ("business_type", b.business_type.clone()),
                ("genesis_created", rfc3339(b.created_at)),
                ("autonomous", "true".to_owned()),
            ],
        };
        match stripe.create_customer(&params, key.clone()).await {
            Ok(c) => self.adopt_customer(&key, b, &c).await,
            Err(e) => {
                if e.is_ambiguous() {
                    // The write may have happened: Stripe replays a stored 500 for this key forever.
                    if let Ok(Some(c)) = self.find_customer(stripe, &b.business_id).await {
                        return self.adopt_customer(&key, b, &c).await;
                    }
                }
                self.store.finish_intent(&key, Err(&e.to_string())).await?;
                Err(e.into())
            }
        }
    }

    async fn adopt_customer(
        &self,
        key: &str,
        b: &Business,
        c: &Customer,
    ) -> Result<String, BillingError> {
        self.store.finish_intent(key, Ok(&c.id)).await?;
        self.store.set_customer(&b.business_id, &c.id).await?;
        Ok(c.id.clone())
    }

    /// The live customer Stripe holds for a business, found by metadata (the oldest, if several).
    pub(super) async fn find_customer(
        &self,
        stripe: &StripeClient,
        business_id: &str,
    ) -> Result<Option<Customer>, StripeError> {
        let mut found: Vec<Customer> = stripe
            .search_customers("business_id", business_id)
            .await?
            .into_iter()
            .filter(|c| {
                !c.deleted && c.metadata.get("business_id").map(String::as_str) == Some(business_id)
            })
            .collect();
        found.sort_by_key(|c| c.raw["created"].as_i64().unwrap_or(0));
        if found.len() > 1 {
            tracing::warn!(
                business_id,
                count = found.len(),
                "several Stripe customers for one business; using the oldest"
            );
        }
        Ok(found.into_iter().next())
    }

    /// Creates (or finds) the subscription of the business's current generation and stores it.
    pub(super) async fn ensure_subscription(
        &self,
        stripe: &StripeClient,
        b: &Business,
        customer: &str,
        payment_method: Option<&str>,
    ) -> Result<Subscription, BillingError> {
        let entry = self.catalog.entry_for(&b.business_type).clone();
        let price = self.price_for(&entry).await?;
        let key = subscription_key(&b.business_id, b.generation);
        let previous = self
            .store
            .begin_intent(&key, &b.business_id, "subscription")
            .await?;
        let mut existing = None;
        if previous.is_some_and(|p| now() - p.created_at > KEY_TRUST_SECS) {
            existing = self.find_subscription(stripe, customer, b).await?;
        }
        let sub = match existing {
            Some(s) => s,
            None => {
                let params = NewSubscription {
                    customer,
                    price: &price.id,
                    metadata: vec![
                        ("business_id", b.business_id.clone()),
                        ("business_name", truncate_chars(&b.name, 500).to_owned()),
                        ("business_type", b.business_type.clone()),
                        ("genesis_generation", b.generation.to_string()),
                    ],
                    trial_days: entry.trial_days,
                    missing_payment_method: entry.missing_payment_method.as_str(),
                    default_payment_method: payment_method,
                };
                match stripe.create_subscription(&params, key.clone()).await {
                    Ok(s) => s,
                    Err(e) => {
                        let found = if e.is_ambiguous() {
                            self.find_subscription(stripe, customer, b)
                                .await
                                .ok()
                                .flatten()
                        } else {
                            None
                        };
                        match found {
                            Some(s) => s,
                            None => {
                                self.store.finish_intent(&key, Err(&e.to_string())).await?;
                                return Err(e.into());
                            }
                        }
                    }
                }
            }
        };
        self.store.finish_intent(&key, Ok(&sub.id)).await?;
        self.store
            .set_subscription(
                &b.business_id,
                &SubscriptionRecord {
                    customer_id: sub.customer.as_deref(),
                    amount_cents: entry.amount_cents,
                    interval: &entry.interval,
                    subscription_id: &sub.id,
                    status: &sub.status,
                    lookup_key: &entry.lookup_key,
                    price_id: &price.id,
                    monthly_price_cents: entry.monthly_cents(),
                    currency: &entry.currency,
                    state_at: sub.created,
                },
            )
            .await?;
        Ok(sub)
    }

    /// The subscription of this business's current generation, found by listing the customer's
    /// subscriptions (read-after-write consistent, unlike search).
    async fn find_subscription(
        &self,
        stripe: &StripeClient,
        customer: &str,
        b: &Business,
    ) -> Result<Option<Subscription>, StripeError> {
        let generation = b.generation.to_string();
        let mut after: Option<String> = None;
        loop {
            let page = stripe
                .list_subscriptions(Some(customer), after.as_deref())
                .await?;
            if let Some(s) = page.data.iter().find(|s| {
                s.metadata.get("business_id") == Some(&b.business_id)
                    && s.metadata
                        .get("genesis_generation")
                        .map(String::as_str)
                        .unwrap_or("0")
                        == generation
            }) {
                return Ok(Some(s.clone()));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => after = Some(last.id.clone()),
                _ => return Ok(None),
            }
        }
    }

    /// Finishes every interrupted provisioning and takedown that no live worker holds, page by page. A
    /// lease whose holder was a process on this host that is gone (killed) is taken over at once; a live
    /// holder's, or another host's, is reported busy with its expiry.
    pub async fn resume(&self) -> Result<ResumeReport, BillingError> {
        const PAGE: i64 = 200;
        let mut report = ResumeReport::default();
        let mut after: Option<(i64, String)> = None;
        loop {
            let page = self
                .store
                .unfinished_page(after.as_ref().map(|(t, id)| (*t, id.as_str())), PAGE)
                .await?;
            let last = page
                .last()
                .map(|u| (u.business.created_at, u.business.business_id.clone()));
            for u in page {
                self.resume_one(u, &mut report).await?;
            }
            match last {
                Some(cursor) => after = Some(cursor),
                None => return Ok(report),
            }
        }
    }

    async fn resume_one(
        &self,
        u: UnfinishedBusiness,
        report: &mut ResumeReport,
    ) -> Result<(), BillingError> {
        let b = u.business;
        if b.status == Lifecycle::Active && !self.payments_enabled() {
            report.counts.waiting_for_payments += 1;
            return Ok(());
        }
        let t = now();
        let owner = uuid::Uuid::new_v4().to_string();
        let until = t + self.lease.as_secs() as i64;
        let claimed = match &u.lease {
            Some(l) if l.until >= t => {
                let dead = l
                    .holder
                    .as_ref()
                    .is_some_and(|h| h.state() == HolderState::Dead);
                let taken = dead
                    && self
                        .store
                        .take_over_business(&b.business_id, &l.owner, &owner, until)
                        .await?;
                if taken {
                    report.counts.taken_over += 1;
                    tracing::info!(business_id = %b.business_id, holder_pid = ?l.holder.as_ref().map(|h| h.pid), "took over the work of a process that is gone");
                }
                taken
            }
            _ => {
                self.store
                    .claim_business(&b.business_id, &owner, until, t)
                    .await?
            }
        };
        if !claimed {
            report.busy(b.business_id, u.lease.as_ref());
            return Ok(());
        }
        let id = b.business_id.clone();
        let result = if b.status == Lifecycle::Active {
            self.provision_claimed(&id, &owner)
                .await
                .map(|after| match after.billing {
                    Billing::Failed => listed(&mut report.failed, &mut report.counts.failed, id),
                    _ => listed(&mut report.provisioned, &mut report.counts.provisioned, id),
                })
        } else {
            self.finish_takedown_owned(&id).await.map(|summary| {
                match summary {
                    Some(s) if s.status != "success" => listed(
                        &mut report.takedowns_failed,
                        &mut report.counts.takedowns_failed,
                        id,
                    ),
                    // Finished now, or found finished by another worker in between.
                    _ => listed(
                        &mut report.takedowns_finished,
                        &mut report.counts.takedowns_finished,
                        id,
                    ),
                }
            })
        };
        self.store.release_business(&b.business_id, &owner).await?;
        result
    }
}
