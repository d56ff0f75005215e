//! Pushing the outbox to the meta-agent (SPEC §1.6, issue 13): every event the store wrote is POSTed to
//! `{GENESIS_DASHBOARD_URL}/api/businesses/{business_id}/events`, signed like Stripe signs webhooks,
//! retried with backoff until the receiver says 2xx or the give-up window ends, in order per business.
//!
//! - [`destination`]: the settings and their validation (the URL, the secrets, the retry limits);
//! - [`signature`]: the `Genesis-Signature` header;
//! - [`deliver`]: one POST and what its outcome means (delivered, retry later, dead-letter);
//! - [`worker`]: the loop `serve` runs: leases, per-business order, bounded concurrency.

pub mod deliver;
pub mod destination;
pub mod signature;
pub mod worker;

pub use deliver::{Deliverer, Outcome};
pub use destination::{DashboardUrl, OutboundSettings, UrlProblem};
pub use worker::Worker;
