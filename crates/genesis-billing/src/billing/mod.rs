//! The billing domain: provisioning, takedown, payment collection, the price catalog in Stripe, import.
//!
//! `BillingService` owns the store, the Stripe client and the catalog; every entry point of the CLI and the
//! HTTP service goes through it.

mod event_stream;
mod events;
mod import;
mod payment;
mod prices;
mod provision;
mod queries;
mod reconcile;
mod rollback;
mod takedown;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;

use crate::business::InvalidInput;
use crate::catalog::{Catalog, Entry};
use crate::metrics::{Metrics, MrrLabels};
use crate::store::{Store, StoreError};
use crate::stripe::{Price, StripeClient};

// The store's and the client's types that are part of the service's API, so entry points need neither.
pub use crate::store::{BusinessFilter, BusinessPages, JobLease, ProbeFailure, StoredEvent, PAGE};
pub use crate::stripe::StripeError;

pub use event_stream::{
    events_filter, BadCursor, Cursor, Delivery, OutboundEvent, OutboundFilter, Replay,
    DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE, UPDATE_TYPES,
};
pub use events::{
    event_keys, keys_of, not_ours, reason, Applied, Deferred, EventKeys, KeyFields, Writes,
    CONNECTED_ACCOUNT, HANDLED_EVENTS, LIVEMODE_MISMATCH, NOT_CURRENT_SUBSCRIPTION,
    OLDER_THAN_STORED, SAME_SECOND, TOO_DEEP, UNHANDLED_EVENT, UNKNOWN_BUSINESS,
};
pub use import::{ImportError, ImportReport, MAX_IMPORT_BYTES};
pub use payment::CheckoutOutcome;
pub use prices::{PriceStatus, PriceSyncLine};
pub use provision::ResumeReport;
pub use reconcile::{Drift, ReconcileReport};
pub use rollback::{LiveSubscription, RollbackPage, ROLLED_BACK};
pub use takedown::{Initiator, TakedownSummary};

/// A domain failure.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    #[error(transparent)]
    Invalid(#[from] InvalidInput),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error("no business {0}")]
    NotFound(String),
    #[error("payments are disabled")]
    PaymentsDisabled,
    #[error("no active Stripe price with lookup key {0}; run `genesis-billing prices sync`")]
    PriceUnresolved(String),
    #[error(transparent)]
    Import(#[from] ImportError),
    #[error("{0}")]
    Conflict(String),
}

/// The billing control plane.
pub struct BillingService {
    store: Store,
    stripe: Option<StripeClient>,
    catalog: Catalog,
    /// Prices by lookup key, resolved once: the happy path then costs two Stripe writes and no reads.
    prices: RwLock<HashMap<String, Price>>,
    /// Held while prices are resolved after a cache miss.
    resolving: tokio::sync::Mutex<()>,
    rollout_percent: u8,
    metrics: Arc<Metrics>,
    public_url: String,
    /// How long a worker may hold a business before another may take over its work.
    lease: Duration,
    gauges: GaugeRefresh,
}

impl BillingService {
    pub fn new(
        store: Store,
        stripe: Option<StripeClient>,
        catalog: Catalog,
        rollout_percent: u8,
        metrics: Arc<Metrics>,
        public_url: String,
    ) -> Self {
        Self {
            store,
            stripe,
            catalog,
            prices: RwLock::new(HashMap::new()),
            resolving: tokio::sync::Mutex::new(()),
            rollout_percent,
            metrics,
            public_url,
            lease: Duration::from_secs(120),
            gauges: GaugeRefresh::default(),
        }
    }

    /// Overrides the work lease (tests and multi-replica deployments).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long a worker may hold work before another may take it over (`GENESIS_BILLING_LEASE_SECS`).
    pub fn lease(&self) -> Duration {
        self.lease
    }

    /// Claims (or renews) business `id` for `owner` for one lease from now; false while another live
    /// worker holds it.
    async fn claim(&self, id: &str, owner: &str) -> Result<bool, BillingError> {
        let t = crate::store::now();
        Ok(self
            .store
            .claim_business(id, owner, t + self.lease.as_secs() as i64, t)
            .await?)
    }

    /// The store, for tests that check what was recorded; entry points go through the service.
    #[doc(hidden)]
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn catalog(&self) -> &Catalog {
        &self.catalog
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn payments_enabled(&self) -> bool {
        self.stripe.is_some()
    }

    /// The Stripe client, or `PaymentsDisabled`.
    pub fn stripe(&self) -> Result<&StripeClient, BillingError> {
        self.stripe.as_ref().ok_or(BillingError::PaymentsDisabled)
    }

    /// Resolves every catalog lookup key to its active Stripe price and caches the result.
    /// Returns the lookup keys that did not resolve.
    pub async fn resolve_prices(&self) -> Result<Vec<String>, BillingError> {
        let stripe = self.stripe()?;
        let keys = self.catalog.lookup_keys();
        let found = stripe.prices_by_lookup_keys(&keys).await?;
        let mut cache = self.prices.write().await;
        for p in found {
            if let Some(k) = p.lookup_key.clone() {
                cache.insert(k, p);
            }
        }
        Ok(keys
            .into_iter()
            .filter(|k| !cache.contains_key(*k))
            .map(str::to_owned)
            .collect())
    }

    /// The Stripe price of a catalog entry, from the cache or resolved once.
    async fn price_for(&self, entry: &Entry) -> Result<Price, BillingError> {
        if let Some(p) = self.prices.read().await.get(&entry.lookup_key) {
            return Ok(p.clone());
        }
        // Single flight: a burst of provisioning tasks that all miss the cache resolves once, not once each.
        let _resolving = self.resolving.lock().await;
        if let Some(p) = self.prices.read().await.get(&entry.lookup_key) {
            return Ok(p.clone());
        }
        self.resolve_prices().await?;
        self.prices
            .read()
            .await
            .get(&entry.lookup_key)
            .cloned()
            .ok_or_else(|| BillingError::PriceUnresolved(entry.lookup_key.clone()))
    }

    /// Creates the Stripe webhook endpoint for exactly the events we handle, pinned to our API version.
    /// Returns its id and its signing secret (which Stripe shows only at creation).
    pub async fn register_webhook_endpoint(
        &self,
        url: &str,
    ) -> Result<(String, secrecy::SecretString), BillingError> {
        let key = format!("genesis:webhook_endpoint:{url}");
        let endpoint = self
            .stripe()?
            .create_webhook_endpoint(url, HANDLED_EVENTS, key)
            .await?;
        Ok((endpoint.id, endpoint.secret))
    }

    /// Recomputes the MRR and subscription-status gauges from an aggregate computed in the database.
    ///
    /// Concurrent callers share one computation that began after they called, so each sees every write
    /// committed before its call, and 64 scrapes at once cost one or two aggregates. While the database is
    /// unchanged since the last computation (see `Store::change_marker`) the gauges are already right.
    pub async fn refresh_gauges(&self) -> Result<(), BillingError> {
        use std::sync::atomic::Ordering;
        let ticket = self.gauges.started.load(Ordering::SeqCst);
        let mut last = self.gauges.last.lock().await;
        if last.finished > ticket {
            return Ok(());
        }
        let seq = self.gauges.started.fetch_add(1, Ordering::SeqCst) + 1;
        let marker = self.store.change_marker().await;
        if marker.is_some() && marker == last.marker {
            last.finished = seq;
            return Ok(());
        }
        last.marker = None;
        let tally = self.store.subscription_tally().await?;
        self.metrics
            .set_mrr(crate::revenue::mrr_from_tally(&tally).iter().map(|l| {
                let labels = MrrLabels {
                    business_type: l.business_type.clone(),
                    currency: l.currency.clone(),
                };
                (labels, l.active_cents as f64 / 100.0)
            }));
        self.metrics
            .set_subscription_statuses(crate::revenue::subscriptions_by_status(&tally));
        last.marker = marker;
        last.finished = seq;
        Ok(())
    }
}

/// The single flight behind `refresh_gauges`.
#[derive(Debug, Default)]
struct GaugeRefresh {
    /// Computations begun so far.
    started: std::sync::atomic::AtomicU64,
    last: tokio::sync::Mutex<LastGauges>,
}

#[derive(Debug, Default)]
struct LastGauges {
    /// The number of the last computation that finished.
    finished: u64,
    /// The database's change marker when it began, if it succeeded.
    marker: Option<String>,
}
