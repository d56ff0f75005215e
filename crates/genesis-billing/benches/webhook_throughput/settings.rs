//! The run's settings, read once from the `WEBHOOK_BENCH_*` environment variables listed in `main.rs`.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a run can be told, with the defaults of `main.rs`'s list applied.
pub struct Opts {
    /// `WEBHOOK_BENCH_SECS`: length of each measured phase, in seconds.
    pub secs: f64,
    /// `WEBHOOK_BENCH_WARMUP_SECS`: the closed-loop warm-up per target.
    pub warmup_secs: f64,
    /// `WEBHOOK_BENCH_CONNS`: concurrent connections.
    pub conns: usize,
    /// `WEBHOOK_BENCH_RATE`: the steady rate for both targets, events/s.
    pub rate: u64,
    /// None: half of what the baseline did in its closed loop.
    pub baseline_rate: Option<u64>,
    /// `WEBHOOK_BENCH_MAX_RATE`: events pre-signed per second of a closed-loop phase of the service.
    pub max_rate: u64,
    /// `WEBHOOK_BENCH_BASELINE_MAX_RATE`: the same for the baseline.
    pub baseline_max_rate: u64,
    /// `WEBHOOK_BENCH_GRACE_SECS`: how long an overloaded open loop may send after its schedule.
    pub grace: Duration,
    /// `WEBHOOK_BENCH_TIMEOUT_SECS`: per request.
    pub timeout: Duration,
    /// `WEBHOOK_BENCH_CLIENT_THREADS`: load-generator threads.
    pub client_threads: usize,
    /// `WEBHOOK_BENCH_PYTHON`: the interpreter of the baseline.
    pub python: String,
    /// `WEBHOOK_BENCH_SKIP_BASELINE`: measure the service alone.
    pub skip_baseline: bool,
    /// `WEBHOOK_BENCH_DIR`: where the temporary databases go (else the system temp dir).
    pub dir: Option<PathBuf>,
    /// `WEBHOOK_BENCH_DATABASE=postgres`: the admin URL `psql` creates and drops the bench database with.
    pub postgres_admin: Option<String>,
    /// `WEBHOOK_BENCH_REPLICAS`: `serve` processes on the one PostgreSQL database.
    pub replicas: usize,
    /// `WEBHOOK_BENCH_BUSINESSES`: businesses imported before the run, which the events are about.
    pub businesses: usize,
    /// `WEBHOOK_BENCH_EVENT`: the type of event sent.
    pub event: EventKind,
}

/// The event types the bench can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// `customer.subscription.updated` (the default).
    SubscriptionUpdated,
    /// `invoice.paid`: a paid renewal invoice.
    InvoicePaid,
}

impl EventKind {
    /// The event type as Stripe spells it.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::SubscriptionUpdated => "customer.subscription.updated",
            EventKind::InvoicePaid => "invoice.paid",
        }
    }
}

/// A numeric variable, `default` when unset or blank; a value that is not a number stops the run.
fn env_num<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a number")),
        _ => default,
    }
}

impl Opts {
    /// Reads the environment; a malformed value stops the run with its name.
    pub fn from_env() -> Self {
        Self {
            secs: env_num("WEBHOOK_BENCH_SECS", 10.0),
            warmup_secs: env_num("WEBHOOK_BENCH_WARMUP_SECS", 1.0),
            conns: env_num("WEBHOOK_BENCH_CONNS", 64usize).max(1),
            rate: env_num("WEBHOOK_BENCH_RATE", 5000u64).max(1),
            baseline_rate: match std::env::var("WEBHOOK_BENCH_BASELINE_RATE") {
                Ok(v) if !v.trim().is_empty() && v.trim() != "auto" => Some(
                    v.trim()
                        .parse::<u64>()
                        .unwrap_or_else(|_| {
                            panic!("WEBHOOK_BENCH_BASELINE_RATE={v:?} is not a number")
                        })
                        .max(1),
                ),
                _ => None,
            },
            max_rate: env_num("WEBHOOK_BENCH_MAX_RATE", 60_000u64).max(1),
            baseline_max_rate: env_num("WEBHOOK_BENCH_BASELINE_MAX_RATE", 15_000u64).max(1),
            grace: Duration::from_secs_f64(env_num("WEBHOOK_BENCH_GRACE_SECS", 5.0)),
            timeout: Duration::from_secs_f64(env_num("WEBHOOK_BENCH_TIMEOUT_SECS", 10.0)),
            client_threads: env_num("WEBHOOK_BENCH_CLIENT_THREADS", 1usize).max(1),
            python: std::env::var("WEBHOOK_BENCH_PYTHON").unwrap_or_else(|_| "python3".into()),
            skip_baseline: std::env::var("WEBHOOK_BENCH_SKIP_BASELINE")
                .is_ok_and(|v| !v.is_empty() && v != "0"),
            dir: std::env::var_os("WEBHOOK_BENCH_DIR").map(PathBuf::from),
            postgres_admin: match std::env::var("WEBHOOK_BENCH_DATABASE")
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "" | "sqlite" => None,
                "postgres" | "postgresql" | "pg" => Some(
                    std::env::var("WEBHOOK_BENCH_POSTGRES_URL")
                        .ok()
                        .filter(|v| !v.trim().is_empty())
                        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into()),
                ),
                other => panic!("WEBHOOK_BENCH_DATABASE={other:?}: expected sqlite or postgres"),
            },
            replicas: env_num("WEBHOOK_BENCH_REPLICAS", 1usize).max(1),
            businesses: env_num("WEBHOOK_BENCH_BUSINESSES", 0usize),
            event: match std::env::var("WEBHOOK_BENCH_EVENT")
                .unwrap_or_default()
                .trim()
            {
                "" | "customer.subscription.updated" => EventKind::SubscriptionUpdated,
                "invoice.paid" => EventKind::InvoicePaid,
                other => panic!(
                    "WEBHOOK_BENCH_EVENT={other:?}: expected customer.subscription.updated or invoice.paid"
                ),
            },
        }
    }
}
