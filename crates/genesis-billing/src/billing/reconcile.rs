//! Reconciliation (SPEC §1.5): compare every business with Stripe, report drift per field, and repair it.
//!
//! Stripe is read with list calls (100 objects a page, `status=all`), never one retrieve per business, so a
//! fleet of thousands costs tens of requests through the rate limiter.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::Serialize;

use super::{BillingError, BillingService};
use crate::business::{in_rollout, is_live_subscription, Billing, Business, Lifecycle};
use crate::metrics::DriftAction;
use crate::store::{now, BusinessFilter, BusinessPages, Store, StripeRow, PAGE};
use crate::stripe::{StripeClient, Subscription};

/// Billing reasons that a later roll-out, or payments coming back, should bill.
const SKIPPED_BILLABLE: &[&str] = &[
    "outside the billing roll-out",
    "payments disabled",
    "imported without Stripe billing",
];

/// One difference between the records and Stripe.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Drift {
    /// `None` for a Stripe object that belongs to no business.
    pub business_id: Option<String>,
    pub field: &'static str,
    pub local: Option<String>,
    pub stripe: Option<String>,
    /// What `--fix` does (or did) about it.
    pub repair: &'static str,
    pub fixed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of one reconciliation.
#[derive(Debug, Clone, Serialize, Default)]
pub struct ReconcileReport {
    pub businesses: usize,
    pub stripe_subscriptions: usize,
    pub stripe_customers: usize,
    pub drift: Vec<Drift>,
}

/// What reconciliation compares one page of businesses with: the Stripe objects those businesses name,
/// looked up in the run's scratch copy of Stripe's lists (`reconcile_stripe`), so memory holds one page.
struct StripeView {
    subscriptions: HashMap<String, Subscription>,
    /// Subscriptions by metadata `business_id`, newest first.
    by_business: HashMap<String, Vec<String>>,
    customers: HashSet<String>,
    /// Customers that say they are ours (metadata `autonomous` or `business_id`): id → metadata `business_id`.
    ours: HashMap<String, Option<String>>,
}

fn subscription_of(r: StripeRow) -> Subscription {
    let mut metadata = BTreeMap::new();
    if let Some(b) = r.business_id {
        metadata.insert("business_id".to_owned(), b);
    }
    if let Some(g) = r.generation {
        metadata.insert("genesis_generation".to_owned(), g);
    }
    Subscription {
        id: r.object_id,
        status: r.status.unwrap_or_default(),
        customer: r.customer,
        metadata,
        latest_invoice: None,
        price_id: r.price_id,
        default_payment_method: r.default_payment_method,
        created: r.created,
        raw: serde_json::Value::Null,
    }
}

impl StripeView {
    /// The Stripe objects this page of businesses names.
    async fn for_page(store: &Store, run: &str, page: &[Business]) -> Result<Self, BillingError> {
        let mut view = Self {
            subscriptions: HashMap::new(),
            by_business: HashMap::new(),
            customers: HashSet::new(),
            ours: HashMap::new(),
        };
        let ids: Vec<&str> = page
            .iter()
            .filter_map(|b| b.stripe_subscription_id.as_deref())
            .collect();
        for r in store
            .scratch_lookup(run, "subscription", false, &ids)
            .await?
        {
            view.subscriptions
                .insert(r.object_id.clone(), subscription_of(r));
        }
        let owners: Vec<&str> = page.iter().map(|b| b.business_id.as_str()).collect();
        for r in store
            .scratch_lookup(run, "subscription", true, &owners)
            .await?
        {
            if let Some(b) = &r.business_id {
                view.by_business
                    .entry(b.clone())
                    .or_default()
                    .push(r.object_id.clone());
            }
            view.subscriptions
                .insert(r.object_id.clone(), subscription_of(r));
        }
        let customers: Vec<&str> = page
            .iter()
            .filter_map(|b| b.stripe_customer_id.as_deref())
            .collect();
        for r in store
            .scratch_lookup(run, "customer", false, &customers)
            .await?
        {
            if r.ours {
                view.ours.insert(r.object_id.clone(), r.business_id.clone());
            }
            view.customers.insert(r.object_id);
        }
        Ok(view)
    }
}

/// Copies Stripe's subscription and customer lists into the run's scratch rows, a page at a time; returns
/// how many of each there were.
async fn read_stripe(
    stripe: &StripeClient,
    store: &Store,
    run: &str,
    started: i64,
) -> Result<(usize, usize), BillingError> {
    let mut subscriptions = 0;
    let mut after: Option<String> = None;
    loop {
        let page = stripe.list_subscriptions(None, after.as_deref()).await?;
        after = page.data.last().map(|s| s.id.clone());
        let rows: Vec<StripeRow> = page
            .data
            .into_iter()
            .map(|s| StripeRow {
                business_id: s.metadata.get("business_id").cloned(),
                generation: s.metadata.get("genesis_generation").cloned(),
                object_id: s.id,
                status: Some(s.status),
                customer: s.customer,
                price_id: s.price_id,
                default_payment_method: s.default_payment_method,
                created: s.created,
                ours: false,
            })
            .collect();
        store
            .scratch_put(run, started, "subscription", subscriptions as i64, &rows)
            .await?;
        subscriptions += rows.len();
        if !page.has_more || after.is_none() {
            break;
        }
    }
    let mut customers = 0;
    let mut after: Option<String> = None;
    loop {
        let page = stripe.list_customers(after.as_deref()).await?;
        after = page.data.last().map(|c| c.id.clone());
        let rows: Vec<StripeRow> = page
            .data
            .into_iter()
            .map(|c| StripeRow {
                ours: c.metadata.get("autonomous").map(String::as_str) == Some("true")
                    || c.metadata.contains_key("business_id"),
                business_id: c.metadata.get("business_id").cloned(),
                object_id: c.id,
                ..StripeRow::default()
            })
            .collect();
        store
            .scratch_put(run, started, "customer", customers as i64, &rows)
            .await?;
        customers += rows.len();
        if !page.has_more || after.is_none() {
            break;
        }
    }
    Ok((subscriptions, customers))
}

impl BillingService {
    /// Compares every business with Stripe; with `fix`, repairs what it can and audits each repair.
    /// `progress` is called with (done, total) as businesses are checked.
    pub async fn reconcile(
        &self,
        fix: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<ReconcileReport, BillingError> {
        let stripe = self.stripe()?;
        let run = uuid::Uuid::new_v4().to_string();
        let started = now();
        // Rows a crashed run left behind.
        self.store.scratch_clear(None, started - 86_400).await?;
        let result = self
            .reconcile_run(stripe, &run, started, fix, progress)
            .await;
        let cleared = self.store.scratch_clear(Some(&run), 0).await;
        let report = result?;
        cleared?;
        let _ = self.refresh_gauges().await;
        Ok(report)
    }

    async fn reconcile_run(
        &self,
        stripe: &StripeClient,
        run: &str,
        started: i64,
        fix: bool,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<ReconcileReport, BillingError> {
        let (stripe_subscriptions, stripe_customers) =
            read_stripe(stripe, &self.store, run, started).await?;
        let total = self.store.count_businesses().await?.max(0) as u64;
        let mut report = ReconcileReport {
            businesses: 0,
            stripe_subscriptions,
            stripe_customers,
            drift: Vec::new(),
        };
        // A page of businesses at a time, with the Stripe objects they name.
        let mut pages = BusinessPages::new(BusinessFilter::default());
        while let Some(page) = pages.next(&self.store).await? {
            let view = StripeView::for_page(&self.store, run, &page).await?;
            // Customers of ours whose business records them, as each business is read (before its repairs).
            let accounted: Vec<&str> = page
                .iter()
                .filter_map(|b| {
                    let c = b.stripe_customer_id.as_deref()?;
                    (view.ours.get(c).and_then(Option::as_deref) == Some(b.business_id.as_str()))
                        .then_some(c)
                })
                .collect();
            self.store.scratch_account(run, &accounted).await?;
            for b in &page {
                for mut d in self.drift_of(b, &view) {
                    self.metrics.drift(d.field, DriftAction::Found);
                    if fix {
                        match self.repair(b, &d, &view).await {
                            Ok(()) => {
                                d.fixed = true;
                                self.metrics.drift(d.field, DriftAction::Fixed);
                                let detail = format!(
                                    "{}: {:?} → {:?} ({})",
                                    d.field, d.local, d.stripe, d.repair
                                );
                                self.store
                                    .record_event(&b.business_id, "reconcile_fix", &detail)
                                    .await?;
                            }
                            Err(e) => d.error = Some(e.to_string()),
                        }
                    }
                    report.drift.push(d);
                }
                report.businesses += 1;
                progress(
                    report.businesses as u64,
                    total.max(report.businesses as u64),
                );
            }
        }
        // Customers in Stripe that no business accounts for, by id.
        let mut after = String::new();
        loop {
            let orphans = self.store.scratch_orphans(run, &after, PAGE).await?;
            let Some(last) = orphans.last() else { break };
            after = last.object_id.clone();
            for c in orphans {
                self.metrics.drift("orphan_customer", DriftAction::Found);
                report.drift.push(Drift {
                    business_id: c.business_id,
                    field: "orphan_customer",
                    local: None,
                    stripe: Some(c.object_id),
                    repair: "flagged for an operator: no business records this customer",
                    fixed: false,
                    error: None,
                });
            }
        }
        Ok(report)
    }

    fn drift_of(&self, b: &Business, view: &StripeView) -> Vec<Drift> {
        let drift = |field, local: Option<&str>, stripe: Option<&str>, repair| Drift {
            business_id: Some(b.business_id.clone()),
            field,
            local: local.map(str::to_owned),
            stripe: stripe.map(str::to_owned),
            repair,
            fixed: false,
            error: None,
        };
        let mut out = Vec::new();
        if b.status == Lifecycle::TakenDown {
            if b.takedown_outcome.is_none() {
                out.push(drift(
                    "takedown",
                    Some("unfinished"),
                    None,
                    "finish the takedown",
                ));
            } else if let Some(s) = b
                .stripe_subscription_id
                .as_ref()
                .and_then(|id| view.subscriptions.get(id))
            {
                if is_live_subscription(&s.status) {
                    out.push(drift(
                        "subscription_status",
                        b.subscription_status.as_deref(),
                        Some(&s.status),
                        "cancel: the business is taken down",
                    ));
                }
            }
            return out;
        }
        // A subscription Stripe has for this business but the records miss (a crash between Stripe's answer
        // and our write, or a key older than Stripe keeps): adopt it rather than provision a second one.
        let adoptable = match &b.stripe_subscription_id {
            None if b.billing != Billing::Skipped => {
                let generation = b.generation.to_string();
                view.by_business.get(&b.business_id).and_then(|ids| {
                    ids.iter().map(|id| &view.subscriptions[id]).find(|s| {
                        s.metadata
                            .get("genesis_generation")
                            .map(String::as_str)
                            .unwrap_or("0")
                            == generation
                            && is_live_subscription(&s.status)
                    })
                })
            }
            _ => None,
        };
        if let Some(s) = adoptable {
            out.push(drift(
                "subscription_id",
                None,
                Some(&s.id),
                "adopt the subscription found by metadata",
            ));
        } else {
            match b.billing {
                Billing::Pending | Billing::Failed => out.push(drift(
                    "billing",
                    Some(b.billing.as_str()),
                    None,
                    "finish provisioning",
                )),
                Billing::Skipped
                    if self.payments_enabled()
                        && in_rollout(&b.business_id, self.rollout_percent)
                        && b.billing_error
                            .as_deref()
                            .is_some_and(|e| SKIPPED_BILLABLE.contains(&e)) =>
                {
                    out.push(drift(
                        "billing",
                        Some("skipped"),
                        None,
                        "bill it: now inside the roll-out",
                    ))
                }
                _ => {}
            }
        }
        if let Some(id) = &b.stripe_subscription_id {
            match view.subscriptions.get(id) {
                None => out.push(drift(
                    "subscription_id",
                    Some(id),
                    None,
                    "none: the subscription is unknown to Stripe",
                )),
                Some(s) => {
                    if b.subscription_status.as_deref() != Some(s.status.as_str()) {
                        let repair = if is_live_subscription(&s.status) {
                            "store Stripe's status"
                        } else {
                            "subscription ended in Stripe: apply it"
                        };
                        out.push(drift(
                            "subscription_status",
                            b.subscription_status.as_deref(),
                            Some(&s.status),
                            repair,
                        ));
                    }
                    if s.metadata.get("business_id") != Some(&b.business_id) {
                        out.push(drift(
                            "metadata",
                            Some(&b.business_id),
                            s.metadata.get("business_id").map(String::as_str),
                            "restore metadata business_id",
                        ));
                    }
                }
            }
        }
        if let Some(c) = &b.stripe_customer_id {
            if !view.customers.contains(c) {
                out.push(drift(
                    "customer",
                    Some(c),
                    None,
                    "customer deleted in Stripe: recorded",
                ));
            }
        }
        out
    }

    async fn repair(&self, b: &Business, d: &Drift, view: &StripeView) -> Result<(), BillingError> {
        let stripe = self.stripe()?;
        match (d.field, d.repair) {
            ("takedown", _) => {
                self.finish_takedown_claimed(&b.business_id).await?;
            }
            ("subscription_status", "cancel: the business is taken down") => {
                if let Some(id) = &b.stripe_subscription_id {
                    stripe.cancel_subscription(id).await?;
                    self.store
                        .set_subscription_status(&b.business_id, id, "canceled", now())
                        .await?;
                }
            }
            ("billing", "bill it: now inside the roll-out") => {
                self.store
                    .set_billing(&b.business_id, Billing::Pending, None, None)
                    .await?;
                self.provision(&b.business_id).await?;
            }
            ("billing", _) => {
                self.provision(&b.business_id).await?;
            }
            ("subscription_status", "store Stripe's status") => {
                let s =
                    &view.subscriptions[b.stripe_subscription_id.as_deref().unwrap_or_default()];
                // What was just listed is Stripe's state now, newer than anything stored.
                self.store
                    .set_subscription_status(&b.business_id, &s.id, &s.status, now())
                    .await?;
            }
            ("subscription_status", _) => {
                let s =
                    &view.subscriptions[b.stripe_subscription_id.as_deref().unwrap_or_default()];
                self.subscription_ended(b, s, now()).await?;
            }
            ("metadata", _) => {
                if let Some(id) = &b.stripe_subscription_id {
                    let key = format!(
                        "genesis:{}:subscription:{id}:metadata:{}",
                        b.business_id,
                        now()
                    );
                    stripe
                        .set_subscription_metadata(
                            id,
                            &[
                                ("business_id", &b.business_id),
                                ("business_type", &b.business_type),
                            ],
                            key,
                        )
                        .await?;
                }
            }
            ("subscription_id", "adopt the subscription found by metadata") => {
                let s = &view.subscriptions[d.stripe.as_deref().unwrap_or_default()];
                self.adopt_subscription(b, s).await?;
            }
            ("customer", _) => {
                self.store
                    .record_event(
                        &b.business_id,
                        "customer_deleted",
                        "found deleted by reconciliation",
                    )
                    .await?;
            }
            _ => return Err(BillingError::Conflict(format!("no repair for {}", d.field))),
        }
        Ok(())
    }
}
