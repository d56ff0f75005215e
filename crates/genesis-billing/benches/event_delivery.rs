//! Event delivery benchmark (issue 13, "How it is checked"): how fast the outbox reaches the meta-agent.
//!
//! ```text
//! cargo bench -p genesis-billing --bench event_delivery
//! ```
//!
//! In one process, in turn:
//! - a receiver on 127.0.0.1 (axum, answers 204 and notes when each event arrived);
//! - **baseline**: the same bodies POSTed straight to it by `EVENT_BENCH_CONCURRENCY` plain reqwest tasks,
//!   no database: what the HTTP path alone allows;
//! - **drain**: `EVENT_BENCH_EVENTS` events of `EVENT_BENCH_BUSINESSES` businesses written to the outbox first,
//!   then the delivery worker started (signing every request, the same concurrency): events delivered per
//!   second, as a ratio of the baseline;
//! - **steady**: with the worker running, one event per transaction at `EVENT_BENCH_RATE` per second for
//!   `EVENT_BENCH_SECS`, each of a business of its own: the delay from the event's commit (the write
//!   returned) to the receiver's 2xx, p50 / p99 / max;
//! - **outage**: `EVENT_BENCH_OUTAGE_EVENTS` undelivered events of `EVENT_BENCH_OUTAGE_BUSINESSES`
//!   businesses whose first events all wait out a backoff (the receiver is down): the time of one read of
//!   the due events (`Store::due_outbound`, which the worker runs twice a second), against the query it
//!   replaced (walking every pending row), run on the same rows.
//!
//! The database is a fresh SQLite file, or `EVENT_BENCH_DATABASE_URL` (a PostgreSQL database to use; its
//! `outbound_event` rows are deleted first).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::Router;
use genesis_billing::metrics::Metrics;
use genesis_billing::outbound::{DashboardUrl, OutboundSettings, Worker};
use genesis_billing::store::{DatabaseUrl, NewOutbound, Store};

fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// When each business's events arrived, by business.
type Arrivals = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

async fn receive(State(arrivals): State<Arrivals>, Path(business): Path<String>) -> StatusCode {
    arrivals
        .lock()
        .unwrap()
        .entry(business)
        .or_default()
        .push(Instant::now());
    StatusCode::NO_CONTENT
}

fn arrived(arrivals: &Arrivals) -> usize {
    arrivals.lock().unwrap().values().map(Vec::len).sum()
}

async fn wait_for(arrivals: &Arrivals, n: usize) {
    while arrived(arrivals) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn event(business: String, i: u64) -> NewOutbound {
    NewOutbound {
        business_id: business,
        update_type: "billing.status_changed",
        data: serde_json::json!({"subscription_id": format!("sub_{i}"), "from": "active", "to": "past_due"}),
        cause: format!("bench:{i}"),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let events = setting("EVENT_BENCH_EVENTS", 20_000);
    let businesses = setting("EVENT_BENCH_BUSINESSES", 1_000).max(1);
    let concurrency = setting("EVENT_BENCH_CONCURRENCY", 16) as usize;
    let rate = setting("EVENT_BENCH_RATE", 200).max(1);
    let secs = setting("EVENT_BENCH_SECS", 10);

    let arrivals: Arrivals = Arc::default();
    let app = Router::new()
        .route("/api/businesses/{id}/events", post(receive))
        .with_state(arrivals.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let dir = tempfile::tempdir().unwrap();
    let database = std::env::var("EVENT_BENCH_DATABASE_URL")
        .unwrap_or_else(|_| format!("sqlite://{}", dir.path().join("bench.db").display()));
    let store = Store::connect(&DatabaseUrl::new(database.clone()), 8)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    store.prune_outbound(i64::MAX).await.unwrap();
    println!(
        "backend {}, {events} events of {businesses} businesses, concurrency {concurrency}",
        store.backend().as_str()
    );

    // Baseline: the receiver alone, with the bodies the worker sends.
    let body = serde_json::json!({"id": "gbe_0", "business_id": "b", "update_type": "billing.status_changed",
        "data": {"subscription_id": "sub_0", "from": "active", "to": "past_due"}, "timestamp": "2026-12-05T00:00:00Z"})
    .to_string();
    let client = reqwest::Client::new();
    let started = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, url, body, next) = (client.clone(), url.clone(), body.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= events {
                    return;
                }
                let r = client
                    .post(format!(
                        "{url}/api/businesses/base-{}/events",
                        i % businesses
                    ))
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(r.status().is_success());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let baseline = events as f64 / started.elapsed().as_secs_f64();
    println!("baseline (plain POSTs, no database): {baseline:.0} requests/s");
    arrivals.lock().unwrap().clear();

    // Drain: a backlog written first, then delivered.
    for i in 0..events {
        store
            .emit(&event(format!("drain-{}", i % businesses), i))
            .await
            .unwrap();
    }
    let settings = Arc::new(OutboundSettings {
        url: Some(DashboardUrl::parse(&url, false).unwrap()),
        secrets: vec![secrecy::SecretString::from("bench-dashboard-secret-0123")],
        concurrency,
        ..OutboundSettings::default()
    });
    let metrics = Arc::new(Metrics::new());
    let worker = Arc::new(
        Worker::new(store.clone(), metrics, settings)
            .unwrap()
            .unwrap(),
    );
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let started = Instant::now();
    let running = tokio::spawn(worker.run(stop));
    wait_for(&arrivals, events as usize).await;
    let drained = events as f64 / started.elapsed().as_secs_f64();
    println!(
        "drain: {drained:.0} events/s delivered ({:.2} × baseline)",
        drained / baseline
    );
    arrivals.lock().unwrap().clear();

    // Steady: one event per transaction at a steady rate; delay from commit to the receiver's 2xx.
    let total = rate * secs;
    let mut committed: Vec<(String, Instant)> = Vec::with_capacity(total as usize);
    let start = tokio::time::Instant::now();
    for i in 0..total {
        tokio::time::sleep_until(start + Duration::from_secs_f64(i as f64 / rate as f64)).await;
        let business = format!("steady-{i}");
        store
            .emit(&event(business.clone(), events + i))
            .await
            .unwrap();
        committed.push((business, Instant::now()));
    }
    wait_for(&arrivals, total as usize).await;
    let got = arrivals.lock().unwrap().clone();
    let mut delays: Vec<Duration> = committed
        .iter()
        .map(|(b, at)| got[b][0].saturating_duration_since(*at))
        .collect();
    delays.sort_unstable();
    println!(
        "steady {rate}/s for {secs} s: commit → 2xx p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        percentile(&delays, 0.5).as_secs_f64() * 1e3,
        percentile(&delays, 0.99).as_secs_f64() * 1e3,
        delays.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
    );
    stop_tx.send_replace(true);
    let _ = running.await;

    // Outage: a backlog whose first events all wait out a backoff.
    let outage = setting("EVENT_BENCH_OUTAGE_EVENTS", 100_000);
    let outage_businesses = setting("EVENT_BENCH_OUTAGE_BUSINESSES", 10_000).max(1);
    store.prune_outbound(i64::MAX).await.unwrap();
    for i in 0..outage {
        store
            .emit(&event(
                format!("down-{}", i % outage_businesses),
                10_000_000 + i,
            ))
            .await
            .unwrap();
    }
    sqlx::any::install_default_drivers();
    let raw = sqlx::AnyPool::connect(&database).await.unwrap();
    let now = genesis_billing::store::now_ms();
    sqlx::query("UPDATE outbound_event SET next_attempt_ms = $1 WHERE delivery = 'pending' AND next_attempt_ms = 0")
        .bind(now + 3_600_000)
        .execute(&raw)
        .await
        .unwrap();
    // Fresh statistics, as autovacuum keeps them on a live database (a bulk load outruns it here).
    let analyze = || async {
        if database.starts_with("postgres") {
            sqlx::query("ANALYZE outbound_event")
                .execute(&raw)
                .await
                .unwrap();
        }
    };
    analyze().await;
    let time = |runs: Vec<Duration>| {
        let mut runs = runs;
        runs.sort_unstable();
        runs[runs.len() / 2]
    };
    let mut new = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        assert!(store.due_outbound(now, 16).await.unwrap().is_empty());
        new.push(t.elapsed());
    }
    // The replaced scheme: every later event of a business due at once, found by a walk over every
    // pending row in sequence order that keeps only each business's oldest.
    sqlx::query(&format!(
        "UPDATE outbound_event SET next_attempt_ms = 0 WHERE next_attempt_ms = {}",
        genesis_billing::store::BLOCKED
    ))
    .execute(&raw)
    .await
    .unwrap();
    analyze().await;
    let mut old = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let rows = sqlx::query(
            "SELECT o.seq FROM outbound_event o WHERE o.delivery = 'pending' \
             AND o.seq = (SELECT MIN(i.seq) FROM outbound_event i WHERE i.business_id = o.business_id AND i.delivery = 'pending') \
             AND o.next_attempt_ms <= $1 AND (o.lease_until_ms IS NULL OR o.lease_until_ms < $1) ORDER BY o.seq LIMIT $2",
        )
        .bind(now)
        .bind(16i64)
        .fetch_all(&raw)
        .await
        .unwrap();
        assert!(rows.is_empty());
        old.push(t.elapsed());
    }
    let (new, old) = (time(new), time(old));
    println!(
        "outage, {outage} undelivered events of {outage_businesses} businesses: one read of the due events {:.2} ms, \
         the walk it replaced {:.1} ms ({:.0} × faster)",
        new.as_secs_f64() * 1e3,
        old.as_secs_f64() * 1e3,
        old.as_secs_f64() / new.as_secs_f64().max(1e-9)
    );
}
