//! Webhook throughput benchmark (issue 4, "How it is checked"): `POST /stripe/webhook` of the release
//! `genesis-billing serve` driven on loopback with validly signed, distinct `customer.subscription.updated`
//! events of 2 KiB, against a baseline measured in the same run: the minimal Python receiver of the first
//! proposal (`scripts/bench/baseline_receiver.py`: FastAPI under uvicorn, `stripe.Webhook.construct_event`,
//! one SQLite insert and commit per event).
//!
//! ```text
//! pip install -r scripts/bench/requirements.txt
//! cargo bench -p genesis-billing --bench webhook_throughput
//! ```
//!
//! For each target, in turn (never both at once: the machine has 2 cores, shared by the load generator and
//! the server under test):
//! - a warm-up (closed loop, not reported, but its events count in the durability check);
//! - closed loop: C keep-alive HTTP/1.1 connections, each sending its next event as soon as the previous one
//!   is answered, for D seconds → events/s;
//! - open loop at a steady rate R: event i is scheduled at start + i/R; latency runs from the scheduled time
//!   whenever the generator is behind schedule (no coordinated omission), else from the moment it was sent
//!   (so a timer waking a little late is not charged to the server) → p50 / p99 / max;
//! - after each phase, the rows in the target's SQLite file are counted and compared with the 2xx answers:
//!   every acknowledged event must already be committed (read by another process while the server runs);
//! - peak RSS is `VmHWM` of the server process at the end.
//!
//! Settings (environment):
//! - `WEBHOOK_BENCH_SECS` (10): length of each measured phase.
//! - `WEBHOOK_BENCH_WARMUP_SECS` (1): closed-loop warm-up per target.
//! - `WEBHOOK_BENCH_CONNS` (64): concurrent connections.
//! - `WEBHOOK_BENCH_RATE` (5000): steady rate for both targets.
//! - `WEBHOOK_BENCH_BASELINE_RATE` (auto): a steady rate the baseline can sustain, measured besides RATE;
//!   by default half of what it did in its closed loop (rounded down to a multiple of 10).
//! - `WEBHOOK_BENCH_MAX_RATE` (60000), `WEBHOOK_BENCH_BASELINE_MAX_RATE` (15000): events pre-signed for a
//!   closed-loop phase are MAX_RATE × SECS; a phase that uses them all ends early and says so.
//! - `WEBHOOK_BENCH_GRACE_SECS` (5): an overloaded open loop stops sending this long after its schedule ends;
//!   what it did not send is reported as unsent.
//! - `WEBHOOK_BENCH_TIMEOUT_SECS` (10): per request.
//! - `WEBHOOK_BENCH_CLIENT_THREADS` (1): load-generator threads.
//! - `WEBHOOK_BENCH_BUSINESSES` (0): with N > 0, N businesses with active subscriptions are imported
//!   (`genesis-billing import`) before the service starts, and event i is about business i mod N, so the
//!   service applies it after its 2xx (an update of that business's record) instead of settling it as about
//!   an unknown business when storing it. The run then waits (up to 120 s) for every event to be settled and
//!   reports how long that took and the events by status.
//! - `WEBHOOK_BENCH_EVENT` (`customer.subscription.updated`): or `invoice.paid`, a paid renewal invoice of
//!   2 KiB that names its subscription and business under `parent.subscription_details`.
//! - `WEBHOOK_BENCH_PYTHON` (python3); `WEBHOOK_BENCH_SKIP_BASELINE=1` measures the service alone.
//! - `WEBHOOK_BENCH_PRINT_EVENT=1` prints one signed event and exits.
//! - `WEBHOOK_BENCH_DIR`: where the temporary databases go (default: the system temp dir). It must be a
//!   real disk for "durable" to mean anything; the file system type is printed.
//! - `WEBHOOK_BENCH_DATABASE` (sqlite): `postgres` runs the service on PostgreSQL instead (issue 6). A fresh
//!   database `gb_bench_<random>` is created for the run with `psql … -c 'CREATE DATABASE …'`, the service is
//!   started with `DATABASE_URL=postgres://…/gb_bench_<random>`, the durability check counts the rows with
//!   `psql … -tAc 'SELECT count(*) FROM webhook_event'`, and the database is dropped `WITH (FORCE)` at the
//!   end (also when the run fails). The Python baseline, a SQLite design, is not run in this mode.
//! - `WEBHOOK_BENCH_POSTGRES_URL` (`postgres://postgres@127.0.0.1:5432/postgres`): the admin connection
//!   `psql` uses to create and drop the database; the service's URL is this one with the database replaced.
//! - `WEBHOOK_BENCH_REPLICAS` (1; more only with `postgres`): `serve` processes on the one database. The
//!   closed loop's connections are split evenly between them (connection k goes to replica k mod N); in the
//!   open loop event i goes to replica i mod N, each replica with its share of the connections. Events/s and
//!   latencies are for the whole fleet, server CPU is the sum of the replicas, peak RSS is given per replica.
//!
//! Exit status: non-zero if a target acknowledged an event that is not in its database (or on a setup
//! failure). The goals are reported, not enforced: this is a benchmark, not a timed test.

// The event template is one large `json!` literal.
#![recursion_limit = "256"]

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

const SECRET: &str = "whsec_bench_6f1d0c2a9b8e4f7da3c5e1b2";
const BODY_SIZE: usize = 2048;
/// Stands for the per-event key in the body template; every key has exactly this length.
const KEY_MARK: &str = "KKKKKKKKKKKKKKKK";
/// Stands for the key of the business an event is about (its subscription, customer, `business_id`): the
/// event's own key by default, so every event names a business the service does not know; with
/// `WEBHOOK_BENCH_BUSINESSES=N`, one of N businesses imported before the run.
const BUSINESS_MARK: &str = "BBBBBBBBBBBBBBBB";
const API_VERSION: &str = "2026-09-30.endive";

// ---------------------------------------------------------------------------------------------------------
// Settings

#[derive(Debug, Clone)]
struct Opts {
    secs: f64,
    warmup_secs: f64,
    conns: usize,
    rate: u64,
    /// None: half of what the baseline did in its closed loop.
    baseline_rate: Option<u64>,
    max_rate: u64,
    baseline_max_rate: u64,
    grace: Duration,
    timeout: Duration,
    client_threads: usize,
    python: String,
    skip_baseline: bool,
    dir: Option<PathBuf>,
    /// `WEBHOOK_BENCH_DATABASE=postgres`: the admin URL `psql` creates and drops the bench database with.
    postgres_admin: Option<String>,
    replicas: usize,
    /// `WEBHOOK_BENCH_BUSINESSES`: businesses imported before the run, which the events are about.
    businesses: usize,
    /// `WEBHOOK_BENCH_EVENT`: the type of event sent.
    event: EventKind,
}

/// The event types the bench can send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventKind {
    SubscriptionUpdated,
    InvoicePaid,
}

impl EventKind {
    fn name(self) -> &'static str {
        match self {
            EventKind::SubscriptionUpdated => "customer.subscription.updated",
            EventKind::InvoicePaid => "invoice.paid",
        }
    }
}

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
    fn from_env() -> Self {
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

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

// ---------------------------------------------------------------------------------------------------------
// Events: a 2 KiB template, one key per event, signed before the phase starts

/// A `customer.subscription.updated` event body at API 2026-09-30.endive (a subscription with its fields
/// that matter here, null-valued rarely used ones left out, the description padding the body to exactly
/// `BODY_SIZE`), split where the event's key goes.
fn body_template(created: i64) -> Vec<(String, Option<bool>)> {
    let (k, b) = (KEY_MARK, BUSINESS_MARK);
    let period_start = created - 86_400;
    let period_end = period_start + 30 * 86_400;
    let price = serde_json::json!({
        "id": "price_1QbenchSaasStarterMonthly",
        "object": "price",
        "active": true,
        "billing_scheme": "per_unit",
        "created": period_start - 86_400,
        "currency": "usd",
        "livemode": false,
        "lookup_key": "saas_starter_monthly",
        "metadata": {},
        "nickname": null,
        "product": "prod_QbenchSaasStarter",
        "recurring": {"interval": "month", "interval_count": 1, "meter": null, "usage_type": "licensed"},
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": 2900,
        "unit_amount_decimal": "2900"
    });
    let build = |description: &str| {
        serde_json::json!({
            "id": format!("evt_1Q{k}"),
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": {
                "object": {
                    "id": format!("sub_1Q{b}"),
                    "object": "subscription",
                    "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
                    "billing_cycle_anchor": period_start,
                    "cancel_at": null,
                    "cancel_at_period_end": false,
                    "canceled_at": null,
                    "collection_method": "charge_automatically",
                    "created": period_start,
                    "currency": "usd",
                    "customer": format!("cus_Q{b}"),
                    "days_until_due": null,
                    "default_payment_method": format!("pm_1Q{b}"),
                    "default_tax_rates": [],
                    "description": description,
                    "discounts": [],
                    "ended_at": null,
                    "items": {
                        "object": "list",
                        "data": [{
                            "id": format!("si_Q{b}"),
                            "object": "subscription_item",
                            "created": period_start,
                            "current_period_end": period_end,
                            "current_period_start": period_start,
                            "discounts": [],
                            "metadata": {},
                            "price": price,
                            "quantity": 1,
                            "subscription": format!("sub_1Q{b}"),
                            "tax_rates": []
                        }],
                        "has_more": false,
                        "total_count": 1,
                        "url": format!("/v1/subscription_items?subscription=sub_1Q{b}")
                    },
                    "latest_invoice": format!("in_1Q{b}"),
                    "livemode": false,
                    "metadata": {"business_id": format!("bench-{b}"), "business_type": "saas"},
                    "pause_collection": null,
                    "schedule": null,
                    "start_date": period_start,
                    "status": "active",
                    "trial_end": null,
                    "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
                    "trial_start": null
                },
                "previous_attributes": {"status": "incomplete"}
            },
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": "customer.subscription.updated"
        })
        .to_string()
    };
    padded(build)
}

/// An `invoice.paid` event body at API 2026-09-30.endive: a subscription's paid renewal invoice, which names
/// its subscription and business under `parent.subscription_details` (`WEBHOOK_BENCH_EVENT=invoice.paid`).
fn invoice_template(created: i64) -> Vec<(String, Option<bool>)> {
    let (k, b) = (KEY_MARK, BUSINESS_MARK);
    let period_start = created - 30 * 86_400;
    let build = |description: &str| {
        serde_json::json!({
            "id": format!("evt_1Q{k}"),
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": {
                "object": {
                    "id": format!("in_1Q{k}"),
                    "object": "invoice",
                    "account_country": "US",
                    "amount_due": 2900,
                    "amount_paid": 2900,
                    "amount_remaining": 0,
                    "attempt_count": 1,
                    "attempted": true,
                    "billing_reason": "subscription_cycle",
                    "collection_method": "charge_automatically",
                    "created": created,
                    "currency": "usd",
                    "customer": format!("cus_Q{b}"),
                    "description": description,
                    "lines": {
                        "object": "list",
                        "data": [{
                            "id": format!("il_1Q{k}"),
                            "object": "line_item",
                            "amount": 2900,
                            "currency": "usd",
                            "description": "1 × Genesis SaaS (at $29.00 / month)",
                            "period": {"end": created, "start": period_start},
                            "pricing": {"price_details": {"price": "price_1QbenchSaasStarterMonthly", "product": "prod_QbenchSaasStarter"}, "type": "price_details", "unit_amount_decimal": "2900"},
                            "quantity": 1
                        }],
                        "has_more": false,
                        "total_count": 1,
                        "url": format!("/v1/invoices/in_1Q{k}/lines")
                    },
                    "livemode": false,
                    "metadata": {},
                    "parent": {
                        "type": "subscription_details",
                        "quote_details": null,
                        "subscription_details": {
                            "metadata": {"business_id": format!("bench-{b}"), "business_type": "saas"},
                            "subscription": format!("sub_1Q{b}")
                        }
                    },
                    "period_end": created,
                    "period_start": period_start,
                    "status": "paid",
                    "status_transitions": {"finalized_at": created, "paid_at": created},
                    "subtotal": 2900,
                    "total": 2900
                }
            },
            "livemode": false,
            "pending_webhooks": 1,
            "request": {"id": null, "idempotency_key": null},
            "type": "invoice.paid"
        })
        .to_string()
    };
    padded(build)
}

/// The event `build` makes with a description that pads it to exactly `BODY_SIZE`, cut at its marks.
fn padded(build: impl Fn(&str) -> String) -> Vec<(String, Option<bool>)> {
    let bare = build("").len();
    assert!(bare < BODY_SIZE, "template alone is {bare} bytes");
    const FILLER: &str =
        "Genesis business subscription, benchmark padding to a realistic event size. ";
    let description: String = FILLER.chars().cycle().take(BODY_SIZE - bare).collect();
    let full = build(&description);
    assert_eq!(full.len(), BODY_SIZE);
    split_marks(&full)
}

/// A template cut at each mark: the text before it, and whether the mark stands for the business's key.
fn split_marks(full: &str) -> Vec<(String, Option<bool>)> {
    let mut out = Vec::new();
    let mut rest = full;
    loop {
        let next = [(KEY_MARK, false), (BUSINESS_MARK, true)]
            .into_iter()
            .filter_map(|(mark, business)| rest.find(mark).map(|at| (at, business)))
            .min();
        match next {
            Some((at, business)) => {
                out.push((rest[..at].to_owned(), Some(business)));
                rest = &rest[at + KEY_MARK.len()..];
            }
            None => {
                out.push((rest.to_owned(), None));
                return out;
            }
        }
    }
}

/// The key of the `n`th imported business (`WEBHOOK_BENCH_BUSINESSES`); as long as an event's key.
fn business_key(n: usize) -> String {
    format!("bz{n:014}")
}

/// The events of one phase: bodies are rebuilt from the template on demand, signatures are computed up front.
struct Pool {
    /// The template's text between marks, each followed by the mark it was cut at (none after the last).
    segments: Vec<(String, Option<bool>)>,
    /// 0: each event is about a business of its own, unknown to the service; else event i is about imported
    /// business i mod `businesses`.
    businesses: usize,
    /// Distinguishes the phases of one run: `{run:04x}{phase:02}`, completed by a 10-digit index.
    prefix: String,
    t: i64,
    signatures: Vec<[u8; 64]>,
}

impl Pool {
    fn new(
        run: u16,
        phase: u8,
        count: usize,
        threads: usize,
        businesses: usize,
        event: EventKind,
    ) -> Self {
        let t = unix_now();
        let mut pool = Pool {
            segments: match event {
                EventKind::SubscriptionUpdated => body_template(t),
                EventKind::InvoicePaid => invoice_template(t),
            },
            businesses,
            prefix: format!("{run:04x}{phase:02}"),
            t,
            signatures: Vec::new(),
        };
        let keyed = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("any key length");
        let stamp = format!("{t}.");
        let chunk = count.div_ceil(threads.max(1)).max(1);
        let ranges: Vec<(usize, usize)> = (0..count)
            .step_by(chunk)
            .map(|s| (s, (s + chunk).min(count)))
            .collect();
        let signatures = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(from, to)| {
                    let (pool, keyed, stamp) = (&pool, &keyed, &stamp);
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(to - from);
                        let mut body = Vec::with_capacity(BODY_SIZE);
                        for i in from..to {
                            pool.write_body(i, &mut body);
                            let mut mac = keyed.clone();
                            mac.update(stamp.as_bytes());
                            mac.update(&body);
                            out.push(hex32(&mac.finalize().into_bytes()));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("signing thread"))
                .collect::<Vec<_>>()
        });
        pool.signatures = signatures;
        pool
    }

    fn len(&self) -> usize {
        self.signatures.len()
    }

    fn write_body(&self, i: usize, out: &mut Vec<u8>) {
        let key = format!("{}{:010}", self.prefix, i);
        let business = match self.businesses {
            0 => key.clone(),
            n => business_key(i % n),
        };
        debug_assert_eq!(key.len(), KEY_MARK.len());
        debug_assert_eq!(business.len(), BUSINESS_MARK.len());
        out.clear();
        for (seg, mark) in &self.segments {
            out.extend_from_slice(seg.as_bytes());
            match mark {
                Some(false) => out.extend_from_slice(key.as_bytes()),
                Some(true) => out.extend_from_slice(business.as_bytes()),
                None => {}
            }
        }
    }

    fn body(&self, i: usize) -> Bytes {
        let mut v = Vec::with_capacity(BODY_SIZE);
        self.write_body(i, &mut v);
        Bytes::from(v)
    }

    fn signature_header(&self, i: usize) -> HeaderValue {
        let mut s = format!("t={},v1=", self.t).into_bytes();
        s.extend_from_slice(&self.signatures[i]);
        HeaderValue::from_maybe_shared(Bytes::from(s)).expect("ascii header")
    }
}

fn hex32(bytes: &[u8]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (n, b) in bytes.iter().take(32).enumerate() {
        out[2 * n] = HEX[(b >> 4) as usize];
        out[2 * n + 1] = HEX[(b & 15) as usize];
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Targets: the server processes

/// Where a target keeps its events.
enum Store {
    /// A SQLite file, read with the `sqlite3` CLI (or Python's `sqlite3`).
    Sqlite(PathBuf),
    /// A PostgreSQL database (`WEBHOOK_BENCH_DATABASE=postgres`), read with `psql`.
    Postgres { url: String },
}

impl Store {
    /// One value read by a separate process while the server runs.
    fn scalar(&self, sql: &str, python: &str) -> Result<String, String> {
        match self {
            Store::Sqlite(db) => sqlite_scalar(db, sql, python),
            Store::Postgres { url } => psql(url, sql),
        }
    }

    /// How commits are made durable, as far as it can be read from outside: SQLite's journal mode (persistent
    /// in the file when it is WAL; `synchronous` is per connection and cannot be read from outside), or
    /// PostgreSQL's `synchronous_commit` and `fsync`.
    fn durability_setting(&self, python: &str) -> String {
        match self {
            Store::Sqlite(db) => format!(
                "journal mode {}",
                sqlite_scalar(db, "PRAGMA journal_mode", python).unwrap_or_default()
            ),
            Store::Postgres { url } => format!(
                "synchronous_commit {}, fsync {}",
                psql(url, "SHOW synchronous_commit").unwrap_or_default(),
                psql(url, "SHOW fsync").unwrap_or_default()
            ),
        }
    }
}

/// One server process.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn host(&self) -> HeaderValue {
        HeaderValue::from_str(&self.addr.to_string()).expect("ascii")
    }

    fn terminate(&self) {
        // SIGTERM for a graceful stop (the workspace forbids unsafe code, so no libc::kill).
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits up to `deadline` for the process to exit after `terminate`, then kills it.
    fn reap(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn stop(&mut self) {
        self.terminate();
        self.reap(Instant::now() + Duration::from_secs(10));
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
    }
}

struct Target {
    name: String,
    /// The server processes: one, or several replicas on one PostgreSQL database.
    procs: Vec<Proc>,
    path: &'static str,
    store: Store,
    table: &'static str,
    /// Counts the stored events not yet applied, where the target applies events after acknowledging them.
    backlog_sql: Option<&'static str>,
    /// Events the warm-up and measured phases had acknowledged, and requests whose fate is unknown
    /// (transport error or timeout: the server may have stored them).
    acked: u64,
    abandoned: u64,
}

impl Target {
    fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// Stops every process: all are sent SIGTERM first, so replicas shut down side by side.
    fn stop(&mut self) {
        for p in &self.procs {
            p.terminate();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut self.procs {
            p.reap(deadline);
        }
    }

    fn alive(&mut self) -> bool {
        self.procs.iter_mut().all(Proc::alive)
    }

    /// "" for a single process, else " 2" etc.: how notes name a replica.
    fn replica_label(&self, n: usize) -> String {
        if self.procs.len() > 1 {
            format!(" replica {}", n + 1)
        } else {
            String::new()
        }
    }
}

/// A database created for this run on PostgreSQL, dropped (`WITH (FORCE)`) when this goes out of scope: at
/// the end of the run, or on the way out of a failed one.
struct PgDatabase {
    admin: String,
    name: String,
    url: String,
}

impl PgDatabase {
    fn create(admin: &str) -> Result<Self, String> {
        let name = format!("gb_bench_{:016x}", fastrand::u64(..));
        let url = database_url(admin, &name)?;
        psql(admin, &format!("CREATE DATABASE {name}"))
            .map_err(|e| format!("cannot create the bench database: {e}"))?;
        Ok(Self {
            admin: admin.to_owned(),
            name,
            url,
        })
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        match psql(
            &self.admin,
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        ) {
            Ok(_) => eprintln!("webhook_throughput: dropped database {}", self.name),
            Err(e) => eprintln!(
                "webhook_throughput: could not drop database {} (drop it by hand): {e}",
                self.name
            ),
        }
    }
}

/// `admin` (a `postgres://` URL) with its database replaced by `name`, query parameters kept.
fn database_url(admin: &str, name: &str) -> Result<String, String> {
    let (base, query) = admin
        .split_once('?')
        .map_or((admin, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| format!("WEBHOOK_BENCH_POSTGRES_URL={admin:?} is not a postgres:// URL"))?;
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    Ok(format!(
        "{scheme}://{authority}/{name}{}",
        query.map_or(String::new(), |q| format!("?{q}"))
    ))
}

/// One statement run by `psql` on `url`; its output, unaligned and without headers.
fn psql(url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new("psql")
        .args([
            "-X",
            "-q",
            "-t",
            "-A",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run psql: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() {
        return Err(format!(
            "psql {sql:?} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(text)
}

/// Starts one `serve` process on `database_url` and waits for its listening line (on PostgreSQL the first
/// replica has run the migrations by then).
fn start_service_proc(dir: &Path, database_url: &str) -> Result<Proc, String> {
    let log = dir.join("service.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_genesis-billing"))
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("GENESIS_ADMIN_TOKEN", "bench-admin-token-unused")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start genesis-billing: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.strip_prefix("genesis-billing listening on http://") {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "genesis-billing printed no listening line; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
    };
    Ok(Proc {
        child,
        addr: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
        log,
    })
}

/// Creates `n` businesses, each with an active subscription, with `genesis-billing import` (no Stripe
/// needed): the businesses the events are about when `WEBHOOK_BENCH_BUSINESSES` is set.
fn import_businesses(dir: &Path, database_url: &str, n: usize) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let records: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            let b = business_key(i);
            (
                format!("bench-{b}"),
                serde_json::json!({
                    "business_name": format!("Bench {i}"),
                    "business_type": "saas",
                    "stripe_customer_id": format!("cus_Q{b}"),
                    "stripe_subscription_id": format!("sub_1Q{b}"),
                    "subscription_status": "active",
                    "monthly_price_usd": 29.0
                }),
            )
        })
        .collect();
    let file = dir.join("businesses.json");
    std::fs::write(&file, serde_json::Value::Object(records).to_string())
        .map_err(|e| e.to_string())?;
    let out = Command::new(env!("CARGO_BIN_EXE_genesis-billing"))
        .arg("import")
        .arg(&file)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .output()
        .map_err(|e| format!("cannot run genesis-billing import: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "genesis-billing import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!("webhook_throughput: imported {n} businesses; the events are about them");
    Ok(())
}

/// The service on a SQLite file in `dir`.
fn start_service(dir: &Path, businesses: usize) -> Result<Target, String> {
    let db = dir.join("bench.db");
    let url = format!("sqlite://{}", db.display());
    import_businesses(dir, &url, businesses)?;
    let proc = start_service_proc(dir, &url)?;
    Ok(service_target(
        "genesis-billing".into(),
        vec![proc],
        Store::Sqlite(db),
    ))
}

/// `replicas` service processes on one PostgreSQL database, started one after the other; their logs go to
/// `dir/replica-N`.
fn start_service_postgres(
    dir: &Path,
    pg: &PgDatabase,
    replicas: usize,
    businesses: usize,
) -> Result<Target, String> {
    import_businesses(dir, &pg.url, businesses)?;
    let mut procs = Vec::with_capacity(replicas);
    for n in 1..=replicas {
        procs.push(start_service_proc(
            &mkdir(dir.join(format!("replica-{n}")))?,
            &pg.url,
        )?);
    }
    let name = format!(
        "genesis-billing (PostgreSQL, {replicas} replica{})",
        if replicas == 1 { "" } else { "s" }
    );
    Ok(service_target(
        name,
        procs,
        Store::Postgres {
            url: pg.url.clone(),
        },
    ))
}

fn service_target(name: String, procs: Vec<Proc>, store: Store) -> Target {
    Target {
        name,
        procs,
        path: "/stripe/webhook",
        store,
        table: "webhook_event",
        backlog_sql: Some("SELECT count(*) FROM webhook_event WHERE status = 'pending'"),
        acked: 0,
        abandoned: 0,
    }
}

fn start_baseline(dir: &Path, python: &str) -> Result<Target, String> {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench");
    let check = Command::new(python)
        .args(["-c", "import fastapi, uvicorn, stripe"])
        .output()
        .map_err(|e| format!("cannot run {python}: {e}"))?;
    if !check.status.success() {
        return Err(format!(
            "the baseline needs its Python packages: pip install -r scripts/bench/requirements.txt\n{}",
            String::from_utf8_lossy(&check.stderr)
        ));
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let db = dir.join("baseline.db");
    let log = dir.join("baseline.log");
    // Started directly (no shell, one worker: uvicorn then serves in this very process), so the child's pid
    // is the process whose VmHWM is the receiver's peak RSS.
    let child = Command::new(python)
        .args(["-m", "uvicorn", "baseline_receiver:app", "--app-dir"])
        .arg(&scripts)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ])
        .env("BASELINE_DB", &db)
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start the baseline: {e}"))?;
    let mut proc = Proc {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !proc.alive() {
            return Err(format!(
                "the baseline exited; its log:\n{}",
                proc.log_tail()
            ));
        }
        if health_ok(proc.addr) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the baseline never answered GET /health; its log:\n{}",
                proc.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Target {
        name: "baseline (Python)".into(),
        procs: vec![proc],
        path: "/webhook",
        store: Store::Sqlite(db),
        table: "stripe_event",
        backlog_sql: None,
        acked: 0,
        abandoned: 0,
    })
}

/// `GET /health` answered 200, on a plain blocking socket.
fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}

// ---------------------------------------------------------------------------------------------------------
// /proc and sqlite

fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| {
            rest.trim_start_matches(':')
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
}

/// User + system CPU seconds of a process (`self` or a pid), all threads.
fn cpu_secs(pid: &str) -> f64 {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    let Some(after) = text.rsplit_once(')').map(|(_, a)| a) else {
        return 0.0;
    };
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = [11usize, 12]
        .iter()
        .filter_map(|&n| fields.get(n)?.parse::<f64>().ok())
        .sum();
    ticks / clock_ticks()
}

/// CPU seconds of each process named `postgres` (the server and its backends, all databases), by pid.
fn postgres_cpu_by_pid() -> BTreeMap<String, f64> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return BTreeMap::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|pid| pid.bytes().all(|b| b.is_ascii_digit()))
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(|pid| {
            let cpu = cpu_secs(&pid);
            (pid, cpu)
        })
        .collect()
}

/// PostgreSQL's CPU seconds since a snapshot: on PostgreSQL, the database's share of the machine. A backend
/// that exited in between takes its time with it, so this is a lower bound (the service's pool keeps its
/// connections open).
fn postgres_cpu_since(before: &BTreeMap<String, f64>) -> f64 {
    postgres_cpu_by_pid()
        .iter()
        .map(|(pid, cpu)| (cpu - before.get(pid).copied().unwrap_or(0.0)).max(0.0))
        .sum()
}

/// Busy CPU seconds of the whole machine (all cores, every process), from /proc/stat.
fn machine_busy_secs() -> f64 {
    let Ok(text) = std::fs::read_to_string("/proc/stat") else {
        return 0.0;
    };
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return 0.0;
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal …: busy is all but idle and iowait (guest time is
    // already counted in user).
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) / clock_ticks()
}

fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// One value read by a separate process (the sqlite3 CLI, else Python's sqlite3 module), read-only.
fn sqlite_scalar(db: &Path, sql: &str, python: &str) -> Result<String, String> {
    let cli = Command::new("sqlite3")
        .arg("-readonly")
        .args(["-cmd", ".timeout 10000"])
        .arg(db)
        .arg(sql)
        .output();
    let out = match cli {
        Ok(o) if o.status.success() => o,
        _ => Command::new(python)
            .args([
                "-c",
                "import sqlite3, sys; c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True, timeout=10); print(c.execute(sys.argv[2]).fetchone()[0])",
            ])
            .arg(db)
            .arg(sql)
            .output()
            .map_err(|e| format!("cannot read {}: {e}", db.display()))?,
    };
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if !out.status.success() || text.is_empty() {
        return Err(format!(
            "cannot run {sql:?} on {}: {text}{}",
            db.display(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(text)
}

/// Rows in `table`.
fn count_rows(store: &Store, table: &str, python: &str) -> Result<u64, String> {
    let text = store.scalar(&format!("SELECT count(*) FROM {table}"), python)?;
    text.parse()
        .map_err(|_| format!("row count of {table}: {text:?}"))
}

/// Appends of one event's size, each followed by fdatasync, for `secs`: what one durable commit per event
/// could at best do on this disk right now (virtual disks vary from minute to minute).
fn fsync_probe(dir: &Path, secs: f64) -> Option<f64> {
    let path = dir.join("fsync-probe");
    let mut f = std::fs::File::create(&path).ok()?;
    let block = [b'x'; BODY_SIZE];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&block).ok()?;
        f.sync_data().ok()?;
        n += 1;
    }
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    Some(rate)
}

// ---------------------------------------------------------------------------------------------------------
// The load generator

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What the phase's requests were: everything the report needs.
#[derive(Default)]
struct Tally {
    ok: u64,
    statuses: BTreeMap<u16, u64>,
    transport_errors: u64,
    timeouts: u64,
    /// Latencies of the requests that got an answer, in microseconds.
    latencies: Vec<u32>,
    last_done: Option<Instant>,
}

impl Tally {
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.latencies.extend(other.latencies);
        self.last_done = self.last_done.max(other.last_done);
    }

    fn non_2xx(&self) -> u64 {
        self.statuses.values().sum()
    }

    fn abandoned(&self) -> u64 {
        self.transport_errors + self.timeouts
    }

    fn sent(&self) -> u64 {
        self.ok + self.non_2xx() + self.abandoned()
    }
}

struct Shared {
    pool: Pool,
    /// Address and `Host` header of each server process (replica).
    replicas: Vec<(SocketAddr, HeaderValue)>,
    path: &'static str,
    timeout: Duration,
    /// Closed loop: the next event, for every connection.
    next: AtomicU64,
    /// Open loop, per replica r: how many of its events (r, r + N, r + 2N, …) were taken.
    next_by_replica: Vec<AtomicU64>,
}

/// Sends event `i` on `conn` to replica `replica` (reconnecting if the connection was lost) and records the
/// outcome; `origin` is when the latency starts.
async fn send_one(
    shared: &Shared,
    replica: usize,
    conn: &mut Option<Sender>,
    i: usize,
    origin: Instant,
    tally: &mut Tally,
) {
    let attempt = async {
        // A connection the server closed while idle is replaced before sending: that is not an error.
        if let Some(sender) = conn.as_mut() {
            if sender.ready().await.is_err() {
                *conn = None;
            }
        }
        if conn.is_none() {
            let mut fresh = connect(shared.replicas[replica].0).await?;
            fresh.ready().await?;
            *conn = Some(fresh);
        }
        let sender = conn.as_mut().expect("connected");
        let request = Request::post(shared.path)
            .header(HOST, shared.replicas[replica].1.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("stripe-signature", shared.pool.signature_header(i))
            .body(Full::new(shared.pool.body(i)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, BoxError>(status)
    };
    let result = tokio::time::timeout(shared.timeout, attempt).await;
    let done = Instant::now();
    match result {
        Ok(Ok(status)) => {
            if status.is_success() {
                tally.ok += 1;
            } else {
                *tally.statuses.entry(status.as_u16()).or_default() += 1;
            }
            tally.latencies.push(
                done.duration_since(origin)
                    .as_micros()
                    .min(u32::MAX as u128) as u32,
            );
        }
        Ok(Err(_)) => {
            tally.transport_errors += 1;
            *conn = None;
        }
        Err(_) => {
            tally.timeouts += 1;
            *conn = None;
        }
    }
    tally.last_done = Some(done);
}

#[derive(Clone, Copy)]
enum Mode {
    /// Each connection sends its next event as soon as the previous one is answered, until `secs`.
    Closed { secs: f64 },
    /// Event i scheduled at start + i/rate, for `secs`; nothing sent after `secs + grace`.
    Open {
        rate: u64,
        secs: f64,
        grace: Duration,
    },
}

struct PhaseResult {
    label: String,
    tally: Tally,
    elapsed: Duration,
    scheduled: Option<u64>,
    pool_exhausted: bool,
    /// Summed over the replicas; per replica in `server_cpu_by_replica`.
    server_cpu: f64,
    server_cpu_by_replica: Vec<f64>,
    /// 2xx answers from each replica.
    ok_by_replica: Vec<u64>,
    /// On PostgreSQL: CPU of the `postgres` processes during the phase.
    postgres_cpu: Option<f64>,
    /// CPU used by every other process on the machine during the phase (not the server, not us, not
    /// PostgreSQL when measured).
    other_cpu: f64,
    client_cpu: f64,
}

impl PhaseResult {
    fn per_sec(&self) -> f64 {
        self.tally.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    fn unsent(&self) -> u64 {
        self.scheduled
            .map_or(0, |s| s.saturating_sub(self.tally.sent()))
    }
    fn percentile_ms(&self, p: f64) -> Option<f64> {
        let l = &self.tally.latencies;
        if l.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * l.len() as f64).ceil() as usize;
        Some(l[rank.clamp(1, l.len()) - 1] as f64 / 1000.0)
    }
    fn max_ms(&self) -> Option<f64> {
        self.tally.latencies.last().map(|&v| v as f64 / 1000.0)
    }
}

async fn run_phase(
    target: &Target,
    opts: &Opts,
    pool: Pool,
    mode: Mode,
    label: String,
) -> Result<PhaseResult, String> {
    let conns = opts.conns;
    let n_replicas = target.procs.len();
    let shared = Arc::new(Shared {
        pool,
        replicas: target.procs.iter().map(|p| (p.addr, p.host())).collect(),
        path: target.path,
        timeout: opts.timeout,
        next: AtomicU64::new(0),
        next_by_replica: (0..n_replicas).map(|_| AtomicU64::new(0)).collect(),
    });
    // Connections are opened before the clock starts; connection k goes to replica k mod N.
    let mut senders = Vec::with_capacity(conns);
    for k in 0..conns {
        let replica = k % n_replicas;
        senders.push((
            replica,
            connect(shared.replicas[replica].0)
                .await
                .map_err(|e| format!("{}: cannot connect: {e}", target.name))?,
        ));
    }
    let pids: Vec<String> = target.pids().iter().map(u32::to_string).collect();
    let exhausted = Arc::new(AtomicBool::new(false));
    let on_postgres = matches!(target.store, Store::Postgres { .. });
    let postgres_cpu0 = on_postgres.then(postgres_cpu_by_pid);
    let machine0 = machine_busy_secs();
    let server_cpu0: Vec<f64> = pids.iter().map(|p| cpu_secs(p)).collect();
    let client_cpu0 = cpu_secs("self");
    let start = Instant::now();
    let scheduled = match mode {
        Mode::Open { rate, secs, .. } => Some((rate as f64 * secs).round() as u64),
        Mode::Closed { .. } => None,
    };
    let mut handles = Vec::with_capacity(conns);
    for (replica, sender) in senders {
        let shared = shared.clone();
        let exhausted = exhausted.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = Some(sender);
            let mut tally = Tally::default();
            match mode {
                Mode::Closed { secs } => {
                    tally.latencies.reserve(4096);
                    let end = start + Duration::from_secs_f64(secs);
                    loop {
                        if Instant::now() >= end {
                            break;
                        }
                        let i = shared.next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= shared.pool.len() {
                            exhausted.store(true, Ordering::Relaxed);
                            break;
                        }
                        send_one(&shared, replica, &mut conn, i, Instant::now(), &mut tally).await;
                    }
                }
                Mode::Open { rate, secs, grace } => {
                    let total = (rate as f64 * secs).round() as u64;
                    let interval_ns = 1e9 / rate as f64;
                    let stop = start + Duration::from_secs_f64(secs) + grace;
                    // This replica's events: replica, replica + N, replica + 2N, … (so with one
                    // replica, every event in order).
                    let n = n_replicas as u64;
                    loop {
                        let i = replica as u64
                            + n * shared.next_by_replica[replica].fetch_add(1, Ordering::Relaxed);
                        if i >= total || Instant::now() >= stop {
                            break;
                        }
                        let scheduled =
                            start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                        let origin = if Instant::now() < scheduled {
                            // On time: wait for the slot, and measure from the moment of sending, so the
                            // timer's millisecond granularity is not counted as server latency.
                            tokio::time::sleep_until(tokio::time::Instant::from_std(scheduled))
                                .await;
                            Instant::now()
                        } else {
                            // Behind schedule (every connection was busy): the wait counts.
                            scheduled
                        };
                        send_one(&shared, replica, &mut conn, i as usize, origin, &mut tally).await;
                    }
                }
            }
            (replica, tally)
        }));
    }
    let mut tally = Tally::default();
    let mut ok_by_replica = vec![0u64; n_replicas];
    for h in handles {
        let (replica, t) = h.await.map_err(|e| format!("load generator task: {e}"))?;
        ok_by_replica[replica] += t.ok;
        tally.merge(t);
    }
    let server_cpu_by_replica: Vec<f64> = pids
        .iter()
        .zip(&server_cpu0)
        .map(|(p, c0)| cpu_secs(p) - c0)
        .collect();
    let server_cpu: f64 = server_cpu_by_replica.iter().sum();
    let machine = machine_busy_secs() - machine0;
    let postgres_cpu = postgres_cpu0.as_ref().map(postgres_cpu_since);
    let client_cpu = cpu_secs("self") - client_cpu0;
    tally.latencies.sort_unstable();
    let elapsed = tally.last_done.unwrap_or(start).duration_since(start);
    Ok(PhaseResult {
        label,
        tally,
        elapsed,
        scheduled,
        pool_exhausted: exhausted.load(Ordering::Relaxed),
        server_cpu,
        server_cpu_by_replica,
        ok_by_replica,
        postgres_cpu,
        other_cpu: (machine - server_cpu - client_cpu - postgres_cpu.unwrap_or(0.0)).max(0.0),
        client_cpu,
    })
}

// ---------------------------------------------------------------------------------------------------------
// One target: warm-up, closed loop, steady rates, durability checks

struct TargetReport {
    name: String,
    closed: PhaseResult,
    steady: Vec<PhaseResult>,
    /// Per server process (replica).
    peak_rss_kb: Vec<Option<u64>>,
    rows: u64,
    acked: u64,
    abandoned: u64,
    durability_ok: bool,
    /// How the database makes a commit durable, e.g. "journal mode wal".
    durability_setting: String,
    notes: Vec<String>,
}

/// Counts the rows after a phase and checks them against what was acknowledged so far.
fn check_rows(target: &Target, python: &str) -> Result<(u64, bool), String> {
    let rows = count_rows(&target.store, target.table, python)?;
    // Every 2xx must be stored; a request abandoned by the client may or may not have been.
    let ok = rows >= target.acked && rows <= target.acked + target.abandoned;
    Ok((rows, ok))
}

async fn bench_target(
    mut target: Target,
    opts: &Opts,
    run: u16,
    steady_rates: &[Option<u64>],
    max_rate: u64,
) -> Result<TargetReport, String> {
    let threads = 2;
    let mut notes = Vec::new();
    let mut durability_ok = true;
    let mut phase_no = 0u8;
    let mut next_pool = |count: usize| {
        phase_no += 1;
        Pool::new(run, phase_no, count, threads, opts.businesses, opts.event)
    };

    eprintln!("[{}] warm-up {:.0} s", target.name, opts.warmup_secs);
    let warm = if opts.warmup_secs > 0.0 {
        let pool = next_pool((max_rate as f64 * opts.warmup_secs).ceil() as usize);
        Some(
            run_phase(
                &target,
                opts,
                pool,
                Mode::Closed {
                    secs: opts.warmup_secs,
                },
                "warm-up".into(),
            )
            .await?,
        )
    } else {
        None
    };
    let mut phases: Vec<PhaseResult> = Vec::new();
    let mut account =
        |target: &mut Target, r: &PhaseResult, notes: &mut Vec<String>| -> Result<(), String> {
            target.acked += r.tally.ok;
            target.abandoned += r.tally.abandoned();
            let (rows, ok) = check_rows(target, &opts.python)?;
            if !ok {
                durability_ok = false;
                notes.push(format!(
                    "DURABILITY MISMATCH after {}: {rows} rows, {} acknowledged, {} abandoned",
                    r.label, target.acked, target.abandoned
                ));
            }
            eprintln!(
                "[{}] {}: {} 2xx, {:.0}/s; rows {rows} vs acknowledged {}{}",
                target.name,
                r.label,
                r.tally.ok,
                r.per_sec(),
                target.acked,
                if r.ok_by_replica.len() > 1 {
                    format!(" (2xx per replica: {:?})", r.ok_by_replica)
                } else {
                    String::new()
                }
            );
            Ok(())
        };
    if let Some(w) = &warm {
        account(&mut target, w, &mut notes)?;
    }

    eprintln!(
        "[{}] closed loop: {} connections, {:.0} s",
        target.name, opts.conns, opts.secs
    );
    let pool = next_pool((max_rate as f64 * opts.secs).ceil() as usize);
    let closed = run_phase(
        &target,
        opts,
        pool,
        Mode::Closed { secs: opts.secs },
        format!("closed loop, {} connections", opts.conns),
    )
    .await?;
    if closed.pool_exhausted {
        notes.push(format!(
            "closed loop used all {} pre-signed events before {:.0} s: raise WEBHOOK_BENCH_MAX_RATE",
            (max_rate as f64 * opts.secs).ceil(),
            opts.secs
        ));
    }
    account(&mut target, &closed, &mut notes)?;

    for &rate in steady_rates {
        // A rate it can sustain: half of its closed-loop throughput, rounded down to a multiple of 10.
        let rate =
            rate.unwrap_or_else(|| ((closed.per_sec() / 2.0 / 10.0).floor() as u64 * 10).max(10));
        if !target.alive() {
            notes.push(format!("the process exited before the {rate}/s phase"));
            break;
        }
        eprintln!("[{}] steady {rate}/s for {:.0} s", target.name, opts.secs);
        let count = (rate as f64 * opts.secs).round() as usize;
        let pool = next_pool(count);
        let r = run_phase(
            &target,
            opts,
            pool,
            Mode::Open {
                rate,
                secs: opts.secs,
                grace: opts.grace,
            },
            format!("steady {rate}/s"),
        )
        .await?;
        if r.unsent() > 0 {
            notes.push(format!(
                "{} at {rate}/s fell behind: {} of {} scheduled events not sent by {:.0} s (its p99 is a lower bound)",
                target.name,
                r.unsent(),
                r.scheduled.unwrap_or(0),
                opts.secs + opts.grace.as_secs_f64()
            ));
        }
        account(&mut target, &r, &mut notes)?;
        phases.push(r);
    }
    let peak_rss_kb: Vec<Option<u64>> = target
        .pids()
        .into_iter()
        .map(|pid| proc_status_kb(pid, "VmHWM"))
        .collect();
    for n in 0..target.procs.len() {
        if !target.procs[n].alive() {
            notes.push(format!(
                "{} died during the run; its log:\n{}",
                if target.procs.len() > 1 {
                    format!("replica {}", n + 1)
                } else {
                    "the process".into()
                },
                target.procs[n].log_tail()
            ));
        }
    }
    let (rows, _) = check_rows(&target, &opts.python)?;
    let durability_setting = target.store.durability_setting(&opts.python);
    if let (Some(sql), true) = (target.backlog_sql, opts.businesses > 0) {
        // Events about known businesses are applied after their 2xx: how long until every one is settled.
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let pending = |target: &Target| {
            target
                .store
                .scalar(sql, &opts.python)
                .ok()
                .and_then(|v| v.parse::<u64>().ok())
        };
        let at_end = pending(&target);
        let mut left = at_end;
        while left.is_some_and(|n| n > 0) && Instant::now() < deadline && target.alive() {
            std::thread::sleep(Duration::from_millis(100));
            left = pending(&target);
        }
        notes.push(format!(
            "{}: {} events pending when the last phase ended; {} {:.1} s later",
            target.name,
            at_end.map_or("?".into(), |n| thousands(n as f64)),
            match left {
                Some(0) => "all settled".to_owned(),
                Some(n) => format!("{} still pending", thousands(n as f64)),
                None => "pending count unreadable".to_owned(),
            },
            started.elapsed().as_secs_f64()
        ));
        let by_status: Vec<String> = ["applied", "ignored", "pending", "failed", "dead"]
            .into_iter()
            .filter_map(|status| {
                let n = target
                    .store
                    .scalar(
                        &format!("SELECT count(*) FROM webhook_event WHERE status = '{status}'"),
                        &opts.python,
                    )
                    .ok()?;
                Some(format!(
                    "{status} {}",
                    n.parse::<f64>().map_or(n, thousands)
                ))
            })
            .collect();
        notes.push(format!(
            "{}: stored events by status: {}",
            target.name,
            by_status.join(", ")
        ));
    } else if let Some(sql) = target.backlog_sql {
        // Acknowledged is not applied: how far applying lags behind at the end of the run.
        if let Ok(pending) = target.store.scalar(sql, &opts.python) {
            notes.push(format!(
                "{}: {} of {} stored events were still pending (stored, not yet applied) when the run ended",
                target.name,
                pending.parse::<f64>().map_or(pending.clone(), thousands),
                thousands(rows as f64)
            ));
        }
    }
    target.stop();
    for (n, proc) in target.procs.iter().enumerate() {
        let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
        let log_lines = log.lines().filter(|l| !l.trim().is_empty()).count();
        if log_lines > 0 {
            notes.push(format!(
                "{}{} wrote {log_lines} log lines on stderr; the last: {}",
                target.name,
                target.replica_label(n),
                log.lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
            ));
        }
    }
    if target.procs.len() > 1 {
        // How evenly the fleet shared the work.
        for p in std::iter::once(&closed).chain(&phases) {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            let split: Vec<String> = p
                .ok_by_replica
                .iter()
                .zip(&p.server_cpu_by_replica)
                .enumerate()
                .map(|(n, (ok, cpu))| {
                    format!(
                        "replica {}: {} 2xx, {:.0}% CPU",
                        n + 1,
                        thousands(*ok as f64),
                        100.0 * cpu / secs
                    )
                })
                .collect();
            notes.push(format!(
                "{}, {}: {}",
                target.name,
                p.label,
                split.join("; ")
            ));
        }
    }
    Ok(TargetReport {
        name: target.name.clone(),
        closed,
        steady: phases,
        peak_rss_kb,
        rows,
        acked: target.acked,
        abandoned: target.abandoned,
        durability_ok,
        durability_setting,
        notes,
    })
}

// ---------------------------------------------------------------------------------------------------------
// Report

fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.1} ms"),
    }
}

fn errors(r: &PhaseResult) -> String {
    let mut parts: Vec<String> = r
        .tally
        .statuses
        .iter()
        .map(|(s, n)| format!("{n}× {s}"))
        .collect();
    if r.tally.transport_errors > 0 {
        parts.push(format!("{} transport", r.tally.transport_errors));
    }
    if r.tally.timeouts > 0 {
        parts.push(format!("{} timeouts", r.tally.timeouts));
    }
    if r.unsent() > 0 {
        parts.push(format!("{} unsent", r.unsent()));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

fn git(args: &[&str]) -> String {
    Command::new("git")
        .arg("-C")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn fs_type(dir: &Path) -> String {
    // `findmnt` names ext4 as such; `stat -f` (the fallback) says "ext2/ext3" for all three.
    let run = |cmd: &str, args: &[&str]| {
        Command::new(cmd)
            .args(args)
            .arg(dir)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .filter(|t| !t.is_empty())
    };
    run("findmnt", &["-n", "-o", "FSTYPE", "--target"])
        .or_else(|| run("stat", &["-f", "-c", "%T"]))
        .unwrap_or_default()
}

/// `postgres`: on PostgreSQL, a description of the database server (version, address, data directory).
fn print_report(
    opts: &Opts,
    reports: &[TargetReport],
    dir: &Path,
    fsyncs: [Option<f64>; 2],
    revision: &str,
    postgres: Option<&str>,
) {
    let baseline = reports.iter().find(|r| r.name.starts_with("baseline"));
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::new();
    use std::fmt::Write as _;
    let databases = match postgres {
        None => {
            let _ = writeln!(out, "\n## Webhook throughput");
            format!("databases in {} ({})", dir.display(), fs_type(dir))
        }
        Some(pg) => {
            let _ = writeln!(
                out,
                "\n## Webhook throughput on PostgreSQL, {} replica{}",
                opts.replicas,
                if opts.replicas == 1 { "" } else { "s" }
            );
            format!(
                "database on {pg}; server logs in {}{}",
                dir.display(),
                if opts.replicas > 1 {
                    format!(
                        "; {} replicas, the connections split evenly, steady-rate events alternating",
                        opts.replicas
                    )
                } else {
                    String::new()
                }
            )
        }
    };
    let _ = writeln!(
        out,
        "\ncommit {revision}; {cores} cores ({cpu}), shared by the load generator and the server{}; {databases}; \
         {} B signed `{}` events about {}; closed loop {} keep-alive connections for {} s; steady rates for {} s.\n",
        match postgres {
            None => "",
            Some(_) => " processes and PostgreSQL",
        },
        BODY_SIZE,
        opts.event.name(),
        match opts.businesses {
            0 => "businesses the service does not know (settled when stored)".to_owned(),
            n => format!("{} imported businesses (applied after the 2xx)", thousands(n as f64)),
        },
        opts.conns,
        opts.secs,
        opts.secs,
    );
    let probe = |v: Option<f64>| v.map_or("–".into(), thousands);
    let _ = writeln!(
        out,
        "Disk: {} / {} appends of {} B + fdatasync per second (1 s probes before / after the run).\n",
        probe(fsyncs[0]),
        probe(fsyncs[1]),
        BODY_SIZE
    );
    let _ = writeln!(
        out,
        "| target | events/s (closed loop) | vs baseline | steady rate | p50 | p99 | max | errors | peak RSS | rows stored / 2xx |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for r in reports {
        let ratio = baseline
            .map(|b| format!("{:.1}×", r.closed.per_sec() / b.closed.per_sec().max(1e-9)))
            .unwrap_or_else(|| "–".into());
        let rss = rss_mb(&r.peak_rss_kb);
        let rows = format!(
            "{} / {}{}",
            thousands(r.rows as f64),
            thousands(r.acked as f64),
            if r.durability_ok { "" } else { " MISMATCH" }
        );
        for (n, s) in r.steady.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}/s | {} | {} | {} | {} | {} | {} |",
                r.name,
                if n == 0 {
                    thousands(r.closed.per_sec())
                } else {
                    "″".into()
                },
                if n == 0 { ratio.clone() } else { "″".into() },
                thousands(s.scheduled.unwrap_or(0) as f64 / opts.secs),
                ms(s.percentile_ms(50.0)),
                ms(s.percentile_ms(99.0)),
                ms(s.max_ms()),
                errors(s),
                if n == 0 { rss.clone() } else { "″".into() },
                if n == 0 { rows.clone() } else { "″".into() },
            );
        }
    }
    let _ = writeln!(out, "\nPhases:\n");
    let _ = writeln!(
        out,
        "| target | phase | 2xx | achieved/s | p50 | p99 | max | errors | server CPU | server CPU/event | load generator CPU |{} other processes' CPU |",
        if postgres.is_some() { " PostgreSQL CPU |" } else { "" }
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|{}---:|",
        if postgres.is_some() { "---:|" } else { "" }
    );
    for r in reports {
        for p in std::iter::once(&r.closed).chain(&r.steady) {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% | {:.0} µs | {:.0}% |{} {:.0}% |",
                r.name,
                p.label,
                thousands(p.tally.ok as f64),
                thousands(p.per_sec()),
                ms(p.percentile_ms(50.0)),
                ms(p.percentile_ms(99.0)),
                ms(p.max_ms()),
                errors(p),
                100.0 * p.server_cpu / secs,
                1e6 * p.server_cpu / (p.tally.ok.max(1) as f64),
                100.0 * p.client_cpu / secs,
                p.postgres_cpu
                    .map_or(String::new(), |c| format!(" {:.0}% |", 100.0 * c / secs)),
                100.0 * p.other_cpu / secs,
            );
        }
    }
    let _ = writeln!(
        out,
        "\n(CPU as % of one core over the phase; 200% is the whole machine. \"Other processes\" is the rest of the \
         machine's busy time meanwhile: other programs, and kernel threads such as the file system's journal and \
         disk flushing on behalf of the server{}.)",
        if postgres.is_some() {
            " and PostgreSQL; \"PostgreSQL CPU\" is every `postgres` process (server and backends)"
        } else {
            ""
        }
    );

    if let Some(ours) = reports
        .iter()
        .find(|r| r.name.starts_with("genesis-billing"))
    {
        let steady = ours.steady.first();
        let _ = writeln!(
            out,
            "\nGoals (issue 4{}):",
            if postgres.is_some() {
                ", set for one process on SQLite; shown for comparison"
            } else {
                ""
            }
        );
        let eps = ours.closed.per_sec();
        let _ = writeln!(
            out,
            "- ≥ 20,000 events/s durably stored with {}: {} ({}/s)",
            if postgres.is_some() {
                "PostgreSQL"
            } else {
                "SQLite"
            },
            yes(eps >= 20_000.0),
            thousands(eps)
        );
        match baseline {
            Some(b) => {
                let x = eps / b.closed.per_sec().max(1e-9);
                let _ = writeln!(
                    out,
                    "- ≥ 7× the baseline measured in the same run: {} ({x:.1}×)",
                    yes(x >= 7.0)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "- ≥ 7× the baseline: not measured (WEBHOOK_BENCH_SKIP_BASELINE)"
                );
            }
        }
        if let Some(s) = steady {
            let p99 = s.percentile_ms(99.0).unwrap_or(f64::INFINITY);
            let clean = s.unsent() == 0 && s.tally.non_2xx() == 0 && s.tally.abandoned() == 0;
            let _ = writeln!(
                out,
                "- p99 < 20 ms at a steady {}/s: {} ({})",
                thousands(s.scheduled.unwrap_or(0) as f64 / opts.secs),
                yes(p99 < 20.0 && clean),
                ms(Some(p99))
            );
        }
        if ours.peak_rss_kb.iter().all(Option::is_some) {
            let _ = writeln!(
                out,
                "- RSS < 50 MB{}: {} ({})",
                if ours.peak_rss_kb.len() > 1 {
                    " per replica"
                } else {
                    ""
                },
                yes(ours.peak_rss_kb.iter().flatten().all(|&kb| kb < 50 * 1024)),
                rss_mb(&ours.peak_rss_kb)
            );
        }
    }
    let _ = writeln!(
        out,
        "\nDurability (rows counted by another process after each phase, while the server runs):"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "- {} ({}): {} rows, {} acknowledged, {} requests abandoned by the client: {}",
            r.name,
            r.durability_setting,
            thousands(r.rows as f64),
            thousands(r.acked as f64),
            r.abandoned,
            if r.durability_ok { "ok" } else { "MISMATCH" }
        );
    }
    let mut notes: Vec<String> = reports.iter().flat_map(|r| r.notes.clone()).collect();
    let busiest = reports
        .iter()
        .flat_map(|r| std::iter::once(&r.closed).chain(&r.steady))
        .map(|p| 100.0 * p.other_cpu / p.elapsed.as_secs_f64().max(1e-9))
        .fold(0.0f64, f64::max);
    if busiest > 10.0 {
        notes.push(format!(
            "other processes and kernel threads used up to {busiest:.0}% of a core during a phase (see the \
             phases table): if that was another program, the figures are lower than on a quiet machine"
        ));
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// Peak RSS of each process, e.g. "47.4 MB" or "47.4 MB, 45.9 MB".
fn rss_mb(kbs: &[Option<u64>]) -> String {
    kbs.iter()
        .map(|kb| kb.map_or("–".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0)))
        .collect::<Vec<_>>()
        .join(", ")
}

fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}

// ---------------------------------------------------------------------------------------------------------

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let opts = Opts::from_env();
    if std::env::var_os("WEBHOOK_BENCH_PRINT_EVENT").is_some() {
        let opts = Opts::from_env();
        let pool = Pool::new(0, 0, 1, 1, opts.businesses, opts.event);
        println!(
            "Stripe-Signature: {}",
            pool.signature_header(0).to_str().unwrap_or("")
        );
        println!("{}", String::from_utf8_lossy(&pool.body(0)));
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("webhook_throughput: an acknowledged event was missing from a database");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("webhook_throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(opts: Opts) -> Result<bool, String> {
    if opts.replicas > 1 && opts.postgres_admin.is_none() {
        return Err(format!(
            "WEBHOOK_BENCH_REPLICAS={} needs WEBHOOK_BENCH_DATABASE=postgres (replicas share one PostgreSQL database)",
            opts.replicas
        ));
    }
    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("webhook-bench-")
        .tempdir_in(&base)
        .map_err(|e| e.to_string())?;
    let run = fastrand::u16(..);
    eprintln!(
        "webhook_throughput: {} B events, {} connections, {} s phases, steady {}/s (baseline also {}); data in {}",
        BODY_SIZE,
        opts.conns,
        opts.secs,
        opts.rate,
        opts.baseline_rate
            .map_or("half its closed-loop rate".to_owned(), |r| format!("{r}/s")),
        dir.path().display()
    );

    // What was measured: the commit, and whether the working tree (which the binary was built from) differed.
    let commit = git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let revision = format!(
        "{commit}{}",
        if dirty { " (working tree dirty)" } else { "" }
    );
    let fsync_before = fsync_probe(dir.path(), 1.0);
    // On PostgreSQL: a fresh database for this run, dropped when `pg` goes out of scope, which is after the
    // server processes have been stopped (they are stopped by `bench_target`, or dropped on an early return,
    // before this earlier-declared guard).
    let pg = match &opts.postgres_admin {
        Some(admin) => {
            let db = PgDatabase::create(admin)?;
            eprintln!(
                "webhook_throughput: PostgreSQL database {} ({} replica{})",
                db.name,
                opts.replicas,
                if opts.replicas == 1 { "" } else { "s" }
            );
            Some(db)
        }
        None => None,
    };
    let postgres = pg.as_ref().map(|db| describe_postgres(&db.url, &db.name));
    // Both processes are started first (a missing Python package fails before anything is measured), then
    // measured one after the other; the idle one uses no CPU.
    let service = match &pg {
        None => start_service(&mkdir(dir.path().join("service"))?, opts.businesses)?,
        Some(db) => start_service_postgres(dir.path(), db, opts.replicas, opts.businesses)?,
    };
    let baseline = if opts.skip_baseline {
        None
    } else if pg.is_some() {
        eprintln!(
            "webhook_throughput: the Python baseline (one SQLite insert per event) is not run on PostgreSQL"
        );
        None
    } else {
        Some(start_baseline(
            &mkdir(dir.path().join("baseline"))?,
            &opts.python,
        )?)
    };

    let mut reports = Vec::new();
    if let Some(b) = baseline {
        let mut rates = vec![opts.baseline_rate];
        if opts.baseline_rate != Some(opts.rate) {
            rates.push(Some(opts.rate));
        }
        reports.push(bench_target(b, &opts, run, &rates, opts.baseline_max_rate).await?);
    }
    reports.push(bench_target(service, &opts, run, &[Some(opts.rate)], opts.max_rate).await?);
    // Ours first in the table.
    reports.reverse();
    let fsync_after = fsync_probe(dir.path(), 1.0);
    print_report(
        &opts,
        &reports,
        dir.path(),
        [fsync_before, fsync_after],
        &revision,
        postgres.as_deref(),
    );
    Ok(reports.iter().all(|r| r.durability_ok))
}

/// "PostgreSQL 15.x at 127.0.0.1:5432, database gb_bench_…, data directory … (ext4)", as far as readable.
fn describe_postgres(url: &str, name: &str) -> String {
    let version = psql(url, "SHOW server_version").unwrap_or_default();
    let address = url
        .split_once("://")
        .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
        .map(|a| a.rsplit_once('@').map_or(a, |(_, host)| host))
        .unwrap_or("");
    let data = psql(url, "SHOW data_directory").unwrap_or_default();
    let data = if data.is_empty() {
        String::new()
    } else {
        let fs = fs_type(Path::new(&data));
        format!(
            ", data directory {data}{}",
            if fs.is_empty() {
                String::new()
            } else {
                format!(" ({fs})")
            }
        )
    };
    format!("PostgreSQL {version} at {address}, database {name}{data}")
}

fn mkdir(path: PathBuf) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}
