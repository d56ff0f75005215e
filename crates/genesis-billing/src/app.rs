//! The composition root: settings in, a running application out. `serve`, every CLI command, the demo,
//! the smoke test and the integration tests build the store, the Stripe client (with the fleet's shared
//! rate budget), the billing service, the webhook inbox, the HTTP state and the background jobs here and
//! nowhere else.
//!
//! It is also the one place allowed to join two lower layers: the Stripe client's [`SharedBudget`] is
//! implemented here over the store's `rate_limit` table, so neither `store` nor `stripe` knows the other.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use crate::billing::BillingService;
use crate::catalog::Catalog;
use crate::config::{Settings, StripeMode};
use crate::http::AppState;
use crate::jobs::Schedule;
use crate::metrics::Metrics;
use crate::owners::notice::Notices;
use crate::owners::Owners;
use crate::store::{Backend, Store};
use crate::stripe::rate_limit::{BudgetError, SharedBudget};
use crate::stripe::{ClientConfig, StripeClient};
use crate::webhook::Inbox;

/// Why the application could not be built: the settings are wrong (a usage error), or something it
/// depends on failed (the database, the Stripe client).
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The settings name something unusable (e.g. an unreadable catalog file).
    #[error("{0}")]
    Settings(String),
    /// A dependency failed while starting.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Loads the catalog named by the settings, or the built-in one.
pub fn load_catalog(settings: &Settings) -> Result<Catalog, BuildError> {
    match &settings.catalog_path {
        Some(p) => Catalog::from_file(p).map_err(|e| BuildError::Settings(e.to_string())),
        None => Ok(Catalog::default()),
    }
}

/// Opens (and migrates) the store and builds the billing service from settings.
pub async fn build_service(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<BillingService, BuildError> {
    let catalog = load_catalog(settings)?;
    let store = Store::connect_with(&settings.database_url, settings.store_options())
        .await
        .with_context(|| format!("while opening the database {}", settings.database_url))?;
    store
        .migrate()
        .await
        .context("while migrating the database")?;
    let stripe = match &settings.stripe {
        Some(s) => Some(
            StripeClient::new(
                ClientConfig {
                    api_base: s.api_base.clone(),
                    key: s.key.clone(),
                    timeout: s.timeout,
                    retry: s.retry.clone(),
                    rate_limit_per_second: s.rate_limit_per_second,
                },
                metrics.clone(),
            )
            .context("while building the Stripe client")
            // Stripe limits the account, not the process: replicas on one PostgreSQL draw from one budget
            // in it (see stripe::rate_limit). SQLite means one process, whose own limiter suffices.
            .map(|client| match store.backend() {
                Backend::Postgres => client.with_shared_rate_limit(Arc::new(StoreRateBudget {
                    store: store.clone(),
                    name: format!("stripe_{}", s.mode.as_str()),
                })),
                Backend::Sqlite => client,
            })?,
        ),
        None => None,
    };
    Ok(BillingService::new(
        store,
        stripe,
        catalog,
        settings.rollout_percent,
        metrics,
        settings.public_url.clone(),
    )
    .with_lease(Duration::from_secs(settings.lease_secs.max(1))))
}

/// The webhook inbox for these settings.
pub fn inbox(settings: &Settings, service: Arc<BillingService>) -> Inbox {
    Inbox::new(
        service,
        settings.webhook_secrets.clone(),
        settings.webhook_tolerance_secs,
        settings.key_mode,
    )
}

/// The HTTP layer's shared state for these settings.
pub fn app_state(settings: &Settings, service: Arc<BillingService>) -> Arc<AppState> {
    let inbox = Arc::new(inbox(settings, service.clone()));
    let owners = Arc::new(Owners::from_settings(settings));
    let notices = notices(settings, &service, owners.clone());
    Arc::new(
        AppState::new(
            service,
            inbox,
            &settings.admin_tokens,
            settings.stripe_mode_label(),
            settings.key_mode == Some(StripeMode::Test),
        )
        .with_serve_settings(&settings.serve)
        .with_owners(owners)
        .with_outbound(&settings.outbound)
        .with_notices(notices),
    )
}

/// Owner notices for these settings. [`App::build`] has checked they build (templates readable, TLS set
/// up); should one fail later anyway, notices are planned and recorded skipped rather than lost.
pub fn notices(
    settings: &Settings,
    service: &BillingService,
    owners: Arc<Owners>,
) -> Option<Arc<Notices>> {
    match Notices::new(
        settings,
        service.store().clone(),
        owners,
        service.metrics().clone(),
    ) {
        Ok(n) => Some(Arc::new(n)),
        Err(e) => {
            tracing::error!(error = %e, "owner notices are off");
            None
        }
    }
}

/// The background jobs' intervals from the settings (0 disables gap fill and reconciliation).
pub fn schedule(settings: &Settings) -> Schedule {
    Schedule {
        resume: Duration::from_secs(settings.resume_interval_secs.max(1)),
        webhook_retry: Duration::from_secs(5),
        gap_fill: (settings.gap_fill_interval_secs > 0)
            .then(|| Duration::from_secs(settings.gap_fill_interval_secs)),
        reconcile: (settings.reconcile_interval_secs > 0)
            .then(|| Duration::from_secs(settings.reconcile_interval_secs)),
    }
}

/// A built application: the settings it came from, its metrics and its billing service.
pub struct App {
    /// The settings it was built from.
    pub settings: Settings,
    /// The process's metrics registry.
    pub metrics: Arc<Metrics>,
    /// The billing service every entry point goes through.
    pub service: Arc<BillingService>,
}

impl App {
    /// Builds the application (store connected and migrated, Stripe client, billing service).
    pub async fn build(settings: Settings) -> Result<Self, BuildError> {
        let metrics = Arc::new(Metrics::new());
        let service = Arc::new(build_service(&settings, metrics.clone()).await?);
        // A template directory that cannot be read, or TLS that cannot be set up, is a settings problem.
        Notices::new(
            &settings,
            service.store().clone(),
            Arc::new(Owners::disabled()),
            metrics.clone(),
        )
        .map_err(BuildError::Settings)?;
        Ok(Self {
            settings,
            metrics,
            service,
        })
    }

    /// The webhook inbox.
    pub fn inbox(&self) -> Inbox {
        inbox(&self.settings, self.service.clone())
    }

    /// The HTTP state (handlers, inbox, limits).
    pub fn state(&self) -> Arc<AppState> {
        app_state(&self.settings, self.service.clone())
    }

    /// Binds the listeners, starts the background jobs and serves until SIGTERM or Ctrl-C is received.
    pub async fn start(&self) -> anyhow::Result<crate::http::Running> {
        crate::http::start(
            self.state(),
            self.settings.listen,
            schedule(&self.settings),
            true,
        )
        .await
        .with_context(|| format!("while binding {}", self.settings.listen))
    }
}

/// A rate budget kept in the database, so every replica draws from the same one (see
/// [`crate::stripe::rate_limit`]): the adapter between the store's `rate_limit` table and the client.
#[derive(Debug, Clone)]
pub struct StoreRateBudget {
    store: Store,
    name: String,
}

impl SharedBudget for StoreRateBudget {
    fn advance(
        &self,
        now_us: i64,
        interval_us: i64,
    ) -> Pin<Box<dyn Future<Output = Result<i64, BudgetError>> + Send + '_>> {
        Box::pin(async move {
            self.store
                .reserve_rate_slot(&self.name, now_us, interval_us)
                .await
                .map_err(|e| Box::new(e) as BudgetError)
        })
    }
}
