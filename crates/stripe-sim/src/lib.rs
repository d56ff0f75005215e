#![recursion_limit = "256"]
// `ApiError` is built at most once per failed request; boxing it would cost more code than it saves.
#![allow(clippy::result_large_err)]
//! `stripe-sim`: a stateful local simulator of Stripe's HTTP API at version `2026-09-30.endive`, for tests and demos.
//!
//! A tour of the modules, from the wire inwards:
//! - [`server`]: accept loop, authentication, rate limiting, faults, idempotency, dispatch;
//! - [`routes`] maps `/v1` paths to [`resources`], one module per Stripe resource; `server::sim` serves `/_sim`
//!   controls;
//! - [`form`] decodes bracket-notation parameters and [`params`] validates them against per-endpoint schemas;
//! - [`error`] is Stripe's error shape; `resources::search` is Stripe's search query language;
//! - `resources::billing` (invoices, payments) and `resources::lifecycle` (time-driven transitions) are the
//!   subscription state machine, beside the resources they drive;
//! - [`state`], [`store`], [`clock`], [`idempotency`] hold the data; [`webhook`] delivers events; [`faults`] and
//!   [`rate_limit`] shape traffic.

pub mod clock;
pub mod error;
pub mod faults;
pub mod form;
pub mod idempotency;
pub mod params;
pub mod rate_limit;
pub mod resources;
pub mod routes;
pub mod server;
pub mod state;
pub mod store;
pub mod webhook;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

pub use faults::{FaultKind, FaultRule};
use server::{lock, App};
use state::State;
use webhook::Webhooks;

/// How to run a simulator.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Address to bind; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Token-bucket rate over `/v1` requests; 0 turns limiting off.
    pub rate_limit_per_second: u32,
    /// Where state is loaded from and saved to; `None` keeps it in memory only.
    pub state_file: Option<PathBuf>,
    /// Fault rules active from the start.
    pub faults: Vec<FaultRule>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            rate_limit_per_second: 25,
            state_file: None,
            faults: Vec::new(),
        }
    }
}

/// A running simulator.
pub struct SimHandle {
    addr: SocketAddr,
    app: Arc<App>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Binds, loads state, and spawns the server and its background tasks on the current Tokio runtime.
pub async fn start(config: SimConfig) -> anyhow::Result<SimHandle> {
    let listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("while binding {}", config.listen))?;
    let addr = listener
        .local_addr()
        .context("while reading the bound address")?;
    let base_url = format!("http://{addr}");
    let mut st = State::new(base_url);
    if let Some(path) = &config.state_file {
        if path.exists() {
            let bytes =
                std::fs::read(path).with_context(|| format!("while reading {}", path.display()))?;
            st.load_persisted(&bytes)
                .with_context(|| format!("while loading state from {}", path.display()))?;
            st.idempotency.drop_in_flight();
        }
    }
    let state = Arc::new(Mutex::new(st));
    let persist = config.state_file.as_ref().map(|_| Arc::new(Notify::new()));
    let app = Arc::new(App {
        state: state.clone(),
        faults: Mutex::new(faults::Faults {
            rules: config.faults.clone(),
            ..Default::default()
        }),
        bucket: Mutex::new(rate_limit::TokenBucket::new(config.rate_limit_per_second)),
        webhooks: Webhooks::start(state),
        persist: persist.clone(),
        state_file: config.state_file.clone(),
    });
    let (tx, rx) = watch::channel(false);
    let mut tasks = vec![tokio::spawn(server::serve(
        listener,
        app.clone(),
        rx.clone(),
    ))];
    tasks.push(tokio::spawn(tick(app.clone(), rx.clone())));
    if let Some(n) = persist {
        tasks.push(tokio::spawn(persist_loop(app.clone(), n, rx)));
    }
    Ok(SimHandle {
        addr,
        app,
        shutdown: tx,
        tasks,
    })
}

/// Runs what becomes due as real time passes (e.g. checkout expiry), once a second.
async fn tick(app: Arc<App>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(Duration::from_secs(1));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => return,
        }
        let mut st = lock(&app.state);
        let now = st.global_now();
        resources::lifecycle::run_due(&mut st, None, now);
        app.after_change(&mut st);
    }
}

/// Saves the state file shortly after changes, batching bursts of writes.
async fn persist_loop(app: Arc<App>, notify: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = stop.changed() => return,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        let app2 = app.clone();
        match tokio::task::spawn_blocking(move || app2.save()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "could not save the state file"),
            Err(e) => tracing::error!(error = %e, "the state saver panicked"),
            Ok(Ok(())) => {}
        }
    }
}

impl SimHandle {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, to use as the Stripe API base.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every stored object of a Stripe `object` type, in wire shape, in the order they were stored (lists order by `created`); deleted customers and canceled subscriptions included (a deleted customer carries `deleted: true`).
    pub fn objects(&self, object: &str) -> Vec<serde_json::Value> {
        let st = lock(&self.app.state);
        st.store
            .ids(object)
            .iter()
            .filter_map(|(_, id)| st.store.full(id))
            .collect()
    }

    /// Replaces the fault rules.
    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        lock(&self.app.faults).rules = rules;
    }

    /// Changes the rate limit (0 = off).
    pub fn set_rate_limit(&self, per_second: u32) {
        lock(&self.app.bucket).set(per_second);
    }

    /// How many faults of each kind were injected.
    pub fn fault_counts(&self) -> BTreeMap<String, u64> {
        lock(&self.app.faults).counts.clone()
    }

    /// Advances simulated time for everything not on a test clock, running what becomes due (as `POST /_sim/clock/advance`).
    pub fn advance_time(&self, secs: i64) {
        server::sim::advance_global(&self.app, secs);
    }

    /// Stops serving and saves the state file, if any.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        let app = self.app.clone();
        match tokio::task::spawn_blocking(move || app.save()).await {
            Ok(Err(e)) => tracing::error!(error = %e, "could not save the state file"),
            Err(e) => tracing::error!(error = %e, "the state saver panicked"),
            Ok(Ok(())) => {}
        }
    }
}
