//! genesis-billing: the billing control plane of the Genesis meta-agent.
//!
//! A tour of the modules, from the outside in:
//! - [`cli`]: the `genesis-billing` command line (and [`demo`], the offline walk-through);
//! - [`http`]: `serve` — the admin API, health and metrics; [`webhook`]: the signed Stripe webhook inbox;
//! - [`config`]: settings from flags, file and environment, with secrets wrapped from the moment they are read;
//! - [`billing`]: the domain — provisioning, takedown, payment collection, price sync, import;
//! - [`catalog`], [`business`], [`revenue`]: the catalog, the business record, and revenue arithmetic;
//! - [`store`]: durable records in SQLite or PostgreSQL, behind one interface;
//! - [`stripe`]: our own thin Stripe client (retries, rate limit, idempotency keys);
//! - [`metrics`]: Prometheus metrics.

pub mod app;
pub mod billing;
pub mod business;
pub mod catalog;
pub mod cli;
pub mod config;
pub mod http;
pub mod jobs;
pub mod metrics;
pub mod revenue;
pub mod store;
pub mod stripe;
pub mod webhook;
