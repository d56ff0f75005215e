//! Background jobs of `serve`: catalog and Stripe checks (what `/health` reports), resume of unfinished
//! work, webhook retries, periodic reconciliation and gap fill. Singleton jobs take a fleet-wide job lease
//! (see `store::coordination`) so one replica runs each at a time. The HTTP layer only reads [`Checks`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;

use crate::billing::{BillingError, BillingService, StripeError};
use crate::owners::Owners;
use crate::webhook::Inbox;

/// How often the background check asks Stripe once everything is fine (and 30 s while it is not).
const STRIPE_RECHECK: Duration = Duration::from_secs(60);
const STRIPE_RETRY: Duration = Duration::from_secs(30);
/// Upper bound on one background Stripe check, retries included.
const STRIPE_CHECK_TIMEOUT: Duration = Duration::from_secs(30);

/// Intervals of the background work.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    /// How often unfinished provisioning and takedowns are resumed.
    pub resume: Duration,
    /// How often due webhook retries are handed out.
    pub webhook_retry: Duration,
    /// `None` disables gap fill.
    pub gap_fill: Option<Duration>,
    /// `None` disables periodic reconciliation.
    pub reconcile: Option<Duration>,
}

/// What `/health` reports about the catalog: verified, or which lookup keys did not resolve.
#[derive(Debug, Clone)]
pub enum CatalogHealth {
    /// Not checked yet.
    Unchecked,
    /// Every lookup key resolved.
    Verified,
    /// Why not (a fixed phrase plus the unresolved keys).
    Problem(String),
}

/// What `/health` says about Stripe, from the last background check (never a call per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StripeHealth {
    Unchecked,
    Ok,
    Disabled,
    Unreachable,
    Timeout,
    AuthFailed,
    RateLimited,
    Error,
}

impl StripeHealth {
    /// The fixed code `/health` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Ok => "ok",
            Self::Disabled => "disabled",
            Self::Unreachable => "unreachable",
            Self::Timeout => "timeout",
            Self::AuthFailed => "auth_failed",
            Self::RateLimited => "rate_limited",
            Self::Error => "error",
        }
    }

    fn of(e: &StripeError) -> Self {
        match e {
            StripeError::Connection(_) => Self::Unreachable,
            StripeError::Timeout => Self::Timeout,
            StripeError::Api(a) if a.status == 401 || a.status == 403 => Self::AuthFailed,
            StripeError::Api(a) if a.status == 429 => Self::RateLimited,
            _ => Self::Error,
        }
    }
}

/// The latest background checks, written by the check loop and read by `/health`.
#[derive(Debug)]
pub struct Checks {
    /// The catalog as last verified.
    pub catalog: RwLock<CatalogHealth>,
    /// Stripe's reachability as the last check found it.
    pub stripe: std::sync::Mutex<StripeHealth>,
    /// Our Billing Portal configuration as the last check left it (a fixed code, see `PortalHealth`).
    pub portal: std::sync::Mutex<PortalHealth>,
}

/// What `/health` says about the Billing Portal configuration manage links open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortalHealth {
    Unchecked,
    /// Found, created or updated to match the settings.
    Ready,
    /// Manage links are not configured (no link secret or public URL): nothing to keep.
    NotConfigured,
    /// Payments are off.
    Disabled,
    /// The last attempt failed this way (retried).
    Failed(StripeHealth),
}

impl PortalHealth {
    /// The fixed code `/health` shows.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unchecked => "unchecked",
            Self::Ready => "ready",
            Self::NotConfigured => "not_configured",
            Self::Disabled => "disabled",
            Self::Failed(s) => s.as_str(),
        }
    }
}

impl Default for Checks {
    fn default() -> Self {
        Self {
            catalog: RwLock::new(CatalogHealth::Unchecked),
            stripe: std::sync::Mutex::new(StripeHealth::Unchecked),
            portal: std::sync::Mutex::new(PortalHealth::Unchecked),
        }
    }
}

/// What each loop holds.
#[derive(Clone)]
struct Ctx {
    service: Arc<BillingService>,
    inbox: Arc<Inbox>,
    checks: Arc<Checks>,
}

/// Starts the periodic work: catalog verification, resume, webhook retries, gap fill.
pub fn spawn(
    service: Arc<BillingService>,
    inbox: Arc<Inbox>,
    checks: Arc<Checks>,
    schedule: Schedule,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let ctx = Ctx {
        service,
        inbox,
        checks,
    };
    let s = ctx.clone();
    tasks.push(tokio::spawn(async move {
        // Verify the catalog until it resolves, then keep checking Stripe now and then so `/health` can
        // say whether it is reachable without calling it per request. serve starts even when Stripe is
        // unreachable (SPEC §5).
        if !s.service.payments_enabled() {
            *s.checks.catalog.write().await = CatalogHealth::Problem("payments disabled".into());
            *s.checks.stripe.lock().unwrap_or_else(|p| p.into_inner()) = StripeHealth::Disabled;
            return;
        }
        loop {
            let checked =
                tokio::time::timeout(STRIPE_CHECK_TIMEOUT, s.service.resolve_prices()).await;
            let (catalog, stripe) = match checked {
                Ok(Ok(missing)) if missing.is_empty() => {
                    (Some(CatalogHealth::Verified), StripeHealth::Ok)
                }
                Ok(Ok(missing)) => (
                    Some(CatalogHealth::Problem(format!(
                        "unresolved lookup keys: {}",
                        missing.join(", ")
                    ))),
                    StripeHealth::Ok,
                ),
                Ok(Err(BillingError::Stripe(e))) => {
                    tracing::warn!(error = %e, "Stripe check failed");
                    (None, StripeHealth::of(&e))
                }
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Stripe check failed");
                    (None, StripeHealth::Error)
                }
                Err(_) => {
                    tracing::warn!("Stripe check did not finish within {STRIPE_CHECK_TIMEOUT:?}");
                    (None, StripeHealth::Timeout)
                }
            };
            if let Some(CatalogHealth::Problem(p)) = &catalog {
                tracing::warn!(problem = %p, "price catalog not verified");
            }
            let fine =
                matches!(catalog, Some(CatalogHealth::Verified)) && stripe == StripeHealth::Ok;
            // Stripe first: a reader that sees the catalog verified then also sees Stripe's state.
            *s.checks.stripe.lock().unwrap_or_else(|p| p.into_inner()) = stripe;
            if let Some(c) = catalog {
                *s.checks.catalog.write().await = c;
            }
            tokio::time::sleep(if fine { STRIPE_RECHECK } else { STRIPE_RETRY }).await;
        }
    }));
    let s = ctx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            if s.service.payments_enabled() {
                match s.service.resume().await {
                    Ok(r) if !(r.provisioned.is_empty() && r.takedowns_finished.is_empty()) => {
                        tracing::info!(
                            provisioned = r.provisioned.len(),
                            takedowns = r.takedowns_finished.len(),
                            "resumed unfinished work"
                        );
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "resume failed"),
                }
            }
            tokio::time::sleep(schedule.resume).await;
        }
    }));
    let s = ctx.clone();
    tasks.push(tokio::spawn(async move {
        loop {
            // Drain what is due (a backlog after a burst or a restart), then wait. Claimed events are
            // leased and failed ones wait out their backoff, so this ends once the due ones are handed out;
            // each round waits for the appliers to take its batch.
            while s.inbox.retry_due().await > 0 {}
            tokio::time::sleep(schedule.webhook_retry).await;
        }
    }));
    if let Some(every) = schedule.reconcile {
        tasks.push(leased_job(
            ctx.clone(),
            "reconcile",
            every,
            |s| async move {
                match s.service.reconcile(true, &|_, _| {}).await {
                    Ok(r) if !r.drift.is_empty() => {
                        let fixed = r.drift.iter().filter(|d| d.fixed).count();
                        tracing::warn!(found = r.drift.len(), fixed, "reconciliation found drift");
                    }
                    Ok(_) => {}
                    Err(e) => tracing::warn!(error = %e, "reconciliation failed"),
                }
            },
        ));
    }
    if let Some(every) = schedule.gap_fill {
        tasks.push(leased_job(ctx, "gap_fill", every, |s| async move {
            if let Err(e) = s.inbox.gap_fill().await {
                tracing::warn!(error = %e, "gap fill failed");
            }
        }));
    }
    tasks
}

/// How often our portal configuration is checked again once it is right (someone may change it in the
/// dashboard), and how soon a failed attempt is retried.
const PORTAL_RECHECK: Duration = Duration::from_secs(3600);
const PORTAL_RETRY: Duration = Duration::from_secs(30);

/// Finds or creates our Billing Portal configuration at start-up and keeps it matching the settings, like
/// the catalog check: a failure is logged, shown in `/health` and retried; serve runs regardless.
pub fn spawn_portal_check(
    service: Arc<BillingService>,
    owners: Arc<Owners>,
    checks: Arc<Checks>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let set = |h: PortalHealth| *checks.portal.lock().unwrap_or_else(|p| p.into_inner()) = h;
        if owners.configured().is_err() {
            return set(PortalHealth::NotConfigured);
        }
        let Ok(stripe) = service.stripe() else {
            return set(PortalHealth::Disabled);
        };
        loop {
            let checked = tokio::time::timeout(STRIPE_CHECK_TIMEOUT, owners.recheck_portal(stripe));
            let health = match checked.await {
                Ok(Ok(_)) => PortalHealth::Ready,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "Billing Portal configuration check failed; retrying");
                    PortalHealth::Failed(StripeHealth::of(&e))
                }
                Err(_) => {
                    tracing::warn!("Billing Portal configuration check did not finish within {STRIPE_CHECK_TIMEOUT:?}");
                    PortalHealth::Failed(StripeHealth::Timeout)
                }
            };
            set(health);
            tokio::time::sleep(if health == PortalHealth::Ready {
                PORTAL_RECHECK
            } else {
                PORTAL_RETRY
            })
            .await;
        }
    })
}

/// Every `every`, while payments are on, runs `work` on one replica of the fleet: a job lease (see
/// store::coordination) makes it once per interval across the fleet.
fn leased_job<F, Fut>(
    s: Ctx,
    name: &'static str,
    every: Duration,
    work: F,
) -> tokio::task::JoinHandle<()>
where
    F: Fn(Ctx) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(every).await;
            if s.service.payments_enabled() {
                let Some(lease) = s.service.try_claim_job(name).await else {
                    continue;
                };
                work(s.clone()).await;
                lease.release(every).await;
            }
        }
    })
}

/// How often events past their retention are deleted (every replica: the delete is idempotent and cheap).
const EVENT_PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// The first prune waits this long after start, off the start-up path.
const EVENT_PRUNE_FIRST: Duration = Duration::from_secs(30);

/// Starts the outbox's jobs: retention pruning always, and the delivery worker when a URL is configured.
/// The worker stops claiming when `stop` turns true (SIGTERM); see `outbound::worker`.
pub fn spawn_outbound(
    service: Arc<BillingService>,
    settings: Arc<crate::outbound::OutboundSettings>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    let store = service.store().clone();
    let retention = settings.retention();
    tasks.push(tokio::spawn(async move {
        tokio::time::sleep(EVENT_PRUNE_FIRST).await;
        loop {
            match crate::outbound::worker::prune(&store, retention).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "deleted events past their retention"),
                Err(e) => tracing::warn!(error = %e, "cannot delete events past their retention"),
            }
            tokio::time::sleep(EVENT_PRUNE_EVERY).await;
        }
    }));
    match crate::outbound::Worker::new(service.store().clone(), service.metrics().clone(), settings)
    {
        Ok(Some(worker)) => tasks.push(tokio::spawn(Arc::new(worker).run(stop))),
        Ok(None) => {
            tracing::info!("GENESIS_DASHBOARD_URL is not set: events are kept but not pushed");
        }
        Err(e) => tracing::error!(error = %e, "cannot build the HTTP client for event delivery"),
    }
    tasks
}

/// How often the notice job looks for new outbox events, due notices and unpaid businesses. It polls:
/// the outbox's wake-up signal belongs to the event delivery worker.
const NOTICE_POLL: Duration = Duration::from_secs(1);
/// Unpaid businesses taken down per round.
const UNPAID_BATCH: i64 = 20;

/// Plans owner notices from the outbox, sends the due ones, and applies the unpaid policy. Every replica
/// runs it: a notice's cause is unique and each send is leased, and a takedown is idempotent.
pub fn spawn_notices(
    service: Arc<BillingService>,
    notices: Arc<crate::owners::notice::Notices>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        if !notices.configured() {
            tracing::info!(
                "owner notices are not configured (GENESIS_SMTP_URL and GENESIS_NOTICE_FROM): none are planned or sent here"
            );
        }
        loop {
            let mut busy = false;
            match notices.plan().await {
                Ok(n) => busy |= n > 0,
                Err(e) => tracing::warn!(error = %e, "planning owner notices failed"),
            }
            match notices.send_due().await {
                Ok(r) => busy |= r.sent + r.retried + r.failed + r.skipped > 0,
                Err(e) => tracing::warn!(error = %e, "sending owner notices failed"),
            }
            if notices.unpaid_policy() == crate::config::UnpaidPolicy::Takedown
                && service.payments_enabled()
            {
                busy |= take_down_unpaid(&service).await > 0;
            }
            if !busy {
                tokio::time::sleep(NOTICE_POLL).await;
            }
        }
    })
}

/// Takes down businesses whose subscription Stripe marked `unpaid` (policy `takedown`): reason `unpaid`,
/// initiated by Stripe. Done here, over the store, so it holds whichever path recorded the status
/// (webhook, gap fill, reconcile). Returns how many were taken down.
async fn take_down_unpaid(service: &BillingService) -> usize {
    let ids = match service.store().unpaid_active(UNPAID_BATCH).await {
        Ok(ids) => ids,
        Err(e) => {
            tracing::warn!(error = %e, "listing unpaid businesses failed");
            return 0;
        }
    };
    let mut done = 0;
    for id in ids {
        match service
            .takedown(&id, Some("unpaid"), crate::billing::Initiator::Stripe)
            .await
        {
            Ok(s) => {
                tracing::warn!(business_id = %id, status = %s.status, "business taken down: its subscription is unpaid");
                done += 1;
            }
            Err(e) => {
                tracing::warn!(business_id = %id, error = %e, "taking down an unpaid business failed")
            }
        }
    }
    done
}
