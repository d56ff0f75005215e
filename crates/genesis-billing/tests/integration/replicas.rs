//! Several `genesis-billing serve` processes on one PostgreSQL database against one simulator: webhooks
//! applied once whichever replica gets them, a replica killed with SIGKILL mid-batch whose work another
//! finishes, and a Stripe rate limit that holds for the fleet rather than per replica.
//!
//! Each test creates its own database (`gb_replicas_<uuid>`) and drops it at the end, even on failure.

use crate::common;

use common::postgres::TestDatabase;

use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::eventually;
use genesis_billing::metrics::Metrics;
use genesis_billing::store::DatabaseUrl;
use genesis_billing::store::{now, Store};
use genesis_billing::stripe::{Call, ClientConfig, Form, RetryPolicy, StripeClient};
use genesis_billing::webhook::signature::sign;
use serde_json::{json, Value};

const KEY: &str = "sk_test_replicas_key";
const WEBHOOK_SECRET: &str = "whsec_replicas_secret";
const ADMIN: &str = "admin-replicas-token";

async fn store_of(db: &TestDatabase) -> Store {
    Store::connect(&DatabaseUrl::new(db.url.clone()), 2)
        .await
        .unwrap()
}

/// The environment every process of a fleet shares.
fn fleet_env(
    sim: &stripe_sim::SimHandle,
    db: &TestDatabase,
    extra: &[(&str, &str)],
) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("STRIPE_API_KEY", KEY),
        ("STRIPE_API_BASE", &sim.base_url()),
        ("DATABASE_URL", &db.url),
        ("GENESIS_ADMIN_TOKEN", ADMIN),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET),
        ("GENESIS_BILLING_LEASE_SECS", "2"),
        ("GENESIS_BILLING_RESUME_INTERVAL_SECS", "1"),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "20"),
        ("GENESIS_BILLING_DB_MAX_CONNECTIONS", "8"),
    ]
    .iter()
    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
    .collect();
    for (k, v) in extra {
        env.retain(|(name, _)| name != k);
        env.push(((*k).to_owned(), (*v).to_owned()));
    }
    env
}

fn command(env: &[(String, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genesis-billing"));
    // Only what the test sets: nothing from the developer's shell (a DATABASE_URL, a real key).
    cmd.env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .env("RUST_LOG", "info");
    cmd
}

fn sync_prices(env: &[(String, String)]) {
    let out = command(env).args(["prices", "sync"]).output().unwrap();
    assert!(
        out.status.success(),
        "prices sync: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One `genesis-billing serve` process; killed when dropped.
struct Replica {
    name: &'static str,
    child: Child,
    base: String,
    log: std::path::PathBuf,
    /// Kept open: the process may write to stdout again.
    _stdout: BufReader<ChildStdout>,
    http: reqwest::Client,
}

impl Replica {
    fn start(name: &'static str, env: &[(String, String)], logs: &tempfile::TempDir) -> Self {
        let log = logs.path().join(format!("{name}.log"));
        let mut child = command(env)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        tokio::task::block_in_place(|| stdout.read_line(&mut line)).unwrap();
        let base = line.trim().rsplit(' ').next().unwrap_or("").to_owned();
        assert!(
            base.starts_with("http://127.0.0.1:"),
            "{name} did not start: {line:?}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        Self {
            name,
            child,
            base,
            log,
            _stdout: stdout,
            http: reqwest::Client::new(),
        }
    }

    async fn health(&self) -> Value {
        let r = self.http.get(format!("{}/health", self.base)).send().await;
        match r {
            Ok(r) => r.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    async fn wait_ready(&self) {
        eventually(
            &format!("{} to verify the catalog", self.name),
            Duration::from_secs(30),
            || async { self.health().await["catalog"] == "verified" },
        )
        .await;
        assert_eq!(self.health().await["database_kind"], "postgres");
    }

    /// `POST /v1/businesses`: (status, body), or `None` when the replica did not answer.
    async fn create(&self, name: &str, business_type: &str) -> Option<(u16, Value)> {
        let r = self
            .http
            .post(format!("{}/v1/businesses", self.base))
            .bearer_auth(ADMIN)
            .json(&json!({"name": name, "business_type": business_type}))
            .send()
            .await
            .ok()?;
        let status = r.status().as_u16();
        Some((status, r.json().await.unwrap_or(Value::Null)))
    }

    /// Delivers a signed event body, as Stripe would.
    async fn deliver(&self, body: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}/stripe/webhook", self.base))
            .header(
                "stripe-signature",
                sign(WEBHOOK_SECRET, now(), body.as_bytes()),
            )
            .body(body.to_owned())
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn metrics(&self) -> String {
        self.http
            .get(format!("{}/metrics", self.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn kill(&mut self) {
        // SIGKILL: no graceful shutdown, no lease released.
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stripe requests a replica has made so far (every attempt, whatever its outcome).
fn stripe_requests(metrics: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with("genesis_billing_stripe_request_duration_seconds_count"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Live customers and all subscriptions in the simulator, by their `business_id` metadata.
fn sim_by_business(sim: &stripe_sim::SimHandle, object: &str) -> BTreeMap<String, Vec<Value>> {
    let mut by = BTreeMap::<String, Vec<Value>>::new();
    for o in sim.objects(object) {
        if o["deleted"] == true {
            continue;
        }
        let id = o["metadata"]["business_id"]
            .as_str()
            .unwrap_or("<none>")
            .to_owned();
        by.entry(id).or_default().push(o);
    }
    by
}

/// A create answers with the business provisioned, or — when the other replica's resume loop took the
/// fresh record between its insert and its creator's claim — still `pending`, in that replica's hands.
fn assert_billing_provisioned_or_in_hand(body: &Value) {
    assert!(
        body["billing"] == "provisioned" || body["billing"] == "pending",
        "{body}"
    );
}

/// Polls until no business has unfinished billing, whoever holds it.
async fn all_work_finished(store: &Store, what: &str) {
    eventually(what, Duration::from_secs(60), || async {
        store.unfinished_page(None, 1).await.unwrap().is_empty()
    })
    .await;
}

/// Every business is provisioned exactly once and its record is what the simulator holds.
async fn assert_records_match_the_simulator(store: &Store, sim: &stripe_sim::SimHandle) -> usize {
    let businesses = store.list_businesses(&Default::default()).await.unwrap();
    let customers = sim_by_business(sim, "customer");
    let subscriptions = sim_by_business(sim, "subscription");
    let ids: HashSet<&str> = businesses.iter().map(|b| b.business_id.as_str()).collect();
    for id in customers.keys() {
        assert!(
            ids.contains(id.as_str()),
            "customer without a business: {id}"
        );
    }
    for id in subscriptions.keys() {
        assert!(
            ids.contains(id.as_str()),
            "subscription without a business: {id}"
        );
    }
    for b in &businesses {
        let id = &b.business_id;
        assert_eq!(b.billing.as_str(), "provisioned", "{id}: {b:?}");
        let c = customers.get(id).map(Vec::as_slice).unwrap_or_default();
        let s = subscriptions.get(id).map(Vec::as_slice).unwrap_or_default();
        assert_eq!(
            (c.len(), s.len()),
            (1, 1),
            "{id}: one customer, one subscription"
        );
        assert_eq!(b.stripe_customer_id.as_deref(), c[0]["id"].as_str(), "{id}");
        assert_eq!(
            b.stripe_subscription_id.as_deref(),
            s[0]["id"].as_str(),
            "{id}"
        );
        assert_eq!(
            b.subscription_status.as_deref(),
            s[0]["status"].as_str(),
            "{id}"
        );
        assert_eq!(s[0]["customer"], c[0]["id"], "{id}");
        assert_eq!(
            b.stripe_price_id.as_deref(),
            s[0]["items"]["data"][0]["price"]["id"].as_str(),
            "{id}"
        );
    }
    // Nothing left for anyone: no unfinished business, whoever holds it.
    assert!(store.unfinished_page(None, 1).await.unwrap().is_empty());
    businesses.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_apply_each_webhook_once_and_finish_the_work_of_a_killed_one() {
    let sim = common::start_sim().await;
    sim.set_faults(vec![common::latency("POST /v1/", 40, 40)]);
    let db = TestDatabase::create("gb_replicas").await;
    let env = fleet_env(&sim, &db, &[]);
    sync_prices(&env);
    let logs = tempfile::tempdir().unwrap();
    let mut a = Replica::start("A", &env, &logs);
    let b = Replica::start("B", &env, &logs);
    tokio::join!(a.wait_ready(), b.wait_ready());
    let store = store_of(&db).await;

    // A few businesses through each replica.
    let mut first = Vec::new();
    for (i, replica) in [&a, &b, &a, &b, &a, &b].into_iter().enumerate() {
        let (status, body) = replica.create(&format!("Early {i}"), "saas").await.unwrap();
        assert_eq!(status, 201, "{body}");
        assert_billing_provisioned_or_in_hand(&body);
        first.push(body["business_id"].as_str().unwrap().to_owned());
    }
    all_work_finished(&store, "the first businesses").await;

    // Their first invoices are paid in Stripe; Stripe tells us with customer.subscription.updated.
    // Each event goes to both replicas at once, except every third, which only one replica gets.
    let mut sent = Vec::new();
    let mut deliveries = Vec::new();
    for (i, id) in first.iter().enumerate() {
        let sub = sim_by_business(&sim, "subscription")[id][0].clone();
        let invoice = sub["latest_invoice"].as_str().unwrap().to_owned();
        let paid = reqwest::Client::new()
            .post(format!("{}/v1/invoices/{invoice}/pay", sim.base_url()))
            .bearer_auth(KEY)
            .form(&[("paid_out_of_band", "true")])
            .send()
            .await
            .unwrap();
        assert!(paid.status().is_success(), "{}", paid.text().await.unwrap());
        let sub = sim_by_business(&sim, "subscription")[id][0].clone();
        assert_eq!(sub["status"], "active");
        let record = store.get_business(id).await.unwrap().unwrap();
        let event_id = format!("evt_replicas_{i}");
        let body = json!({
            "id": event_id, "object": "event", "type": "customer.subscription.updated",
            "created": record.stripe_state_at.max(now()) + 1, "data": {"object": sub},
        })
        .to_string();
        sent.push(event_id);
        let (a, b) = (&a, &b);
        deliveries.push(async move {
            match i % 3 {
                2 if i % 2 == 0 => vec![a.deliver(&body).await],
                2 => vec![b.deliver(&body).await],
                _ => {
                    let (x, y) = tokio::join!(a.deliver(&body), b.deliver(&body));
                    vec![x, y]
                }
            }
        });
    }
    let answers = futures_join_all(deliveries).await;
    for (id, answer) in sent.iter().zip(&answers) {
        assert!(answer.iter().all(|(s, _)| *s == 200), "{id}: {answer:?}");
        if answer.len() == 2 {
            let duplicates = answer
                .iter()
                .filter(|(_, v)| v["duplicate"] == true)
                .count();
            assert_eq!(
                duplicates, 1,
                "{id}: stored by exactly one replica: {answer:?}"
            );
        }
    }
    eventually("every event applied", Duration::from_secs(30), || async {
        let events = store.list_events(None, 1000).await.unwrap();
        events.len() == sent.len() && events.iter().all(|e| e.status == "applied")
    })
    .await;
    let events = store.list_events(None, 1000).await.unwrap();
    let mut stored: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
    stored.sort_unstable();
    let mut expected: Vec<&str> = sent.iter().map(String::as_str).collect();
    expected.sort_unstable();
    assert_eq!(stored, expected, "each event stored once");
    for e in &events {
        assert_eq!(
            (e.status.as_str(), e.attempts),
            ("applied", 1),
            "{} applied once",
            e.event_id
        );
    }
    for id in &first {
        let record = store.get_business(id).await.unwrap().unwrap();
        assert_eq!(
            record.subscription_status.as_deref(),
            Some("active"),
            "{id}"
        );
    }

    // A batch through replica A, killed with SIGKILL while the batch is half done.
    let batch = 30;
    let mut requests = tokio::task::JoinSet::new();
    let a_base = a.base.clone();
    for i in 0..batch {
        let base = a_base.clone();
        requests.spawn(async move {
            reqwest::Client::new()
                .post(format!("{base}/v1/businesses"))
                .bearer_auth(ADMIN)
                .json(&json!({"name": format!("Batch {i}"), "business_type": "tool"}))
                .send()
                .await
                .map(|r| r.status().as_u16())
        });
    }
    let total = |n: usize| first.len() + n;
    eventually(
        "the batch to be under way",
        Duration::from_secs(30),
        || async {
            let all = store.list_businesses(&Default::default()).await.unwrap();
            let provisioned = all
                .iter()
                .filter(|b| b.billing.as_str() == "provisioned")
                .count();
            all.len() >= total(batch / 2) && provisioned >= total(3)
        },
    )
    .await;
    a.kill();
    let at_kill = store.list_businesses(&Default::default()).await.unwrap();
    let unfinished_at_kill = at_kill
        .iter()
        .filter(|b| b.billing.as_str() != "provisioned")
        .count();
    assert!(
        unfinished_at_kill > 0,
        "the kill came too late to leave work behind; A's log:\n{}",
        a.logs()
    );
    while requests.join_next().await.is_some() {}

    // Replica B finishes what A left once A's leases expire.
    all_work_finished(&store, "replica B to finish the killed replica's work").await;
    let count = assert_records_match_the_simulator(&store, &sim).await;
    assert!(count >= total(batch / 2), "{count} businesses recorded");
    let events = store.list_events(None, 1000).await.unwrap();
    assert!(events
        .iter()
        .all(|e| e.status == "applied" && e.attempts == 1));
    eprintln!(
        "{count} businesses; {unfinished_at_kill} unfinished when A was killed; all finished by B"
    );
    drop(b);
    drop(store);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_provisioning_together_stay_under_the_fleet_wide_stripe_rate_limit() {
    const RATE: u32 = 10;
    let sim = stripe_sim::start(stripe_sim::SimConfig {
        rate_limit_per_second: RATE,
        ..Default::default()
    })
    .await
    .unwrap();
    let db = TestDatabase::create("gb_replicas").await;
    let env = fleet_env(
        &sim,
        &db,
        &[
            ("GENESIS_BILLING_STRIPE_RATE_LIMIT", "10"),
            // No takeovers mid-run: this test measures the rate, not crash recovery.
            ("GENESIS_BILLING_LEASE_SECS", "120"),
        ],
    );
    sync_prices(&env);
    let logs = tempfile::tempdir().unwrap();
    let a = Replica::start("A", &env, &logs);
    let b = Replica::start("B", &env, &logs);
    tokio::join!(a.wait_ready(), b.wait_ready());
    let before = stripe_requests(&a.metrics().await) + stripe_requests(&b.metrics().await);

    // Thirty businesses, half through each replica, all at once: far more demand than 10 requests/s.
    let started = Instant::now();
    let mut creates = Vec::new();
    for i in 0..30 {
        let replica = if i % 2 == 0 { &a } else { &b };
        creates.push(async move { replica.create(&format!("Rate {i}"), "saas").await });
    }
    let results = futures_join_all(creates).await;
    for r in &results {
        let (status, body) = r.as_ref().expect("the replica answers");
        assert_eq!(*status, 201, "{body}");
        assert_billing_provisioned_or_in_hand(body);
    }
    let store = store_of(&db).await;
    all_work_finished(&store, "every business").await;
    let elapsed = started.elapsed().as_secs_f64();

    // No 429 reached a caller: the simulator's token bucket (10/s, 10 deep) never refused a request.
    let (ma, mb) = (a.metrics().await, b.metrics().await);
    for (name, m) in [("A", &ma), ("B", &mb)] {
        assert!(
            m.lines()
                .any(|l| l == "genesis_billing_stripe_rate_limited_total 0"),
            "replica {name} met Stripe's rate limit"
        );
    }
    assert_eq!(assert_records_match_the_simulator(&store, &sim).await, 30);

    // The aggregate rate, measured from the replicas' own counts. The fleet's GCRA grants at most
    // RATE × T + burst slots in any window of T seconds (burst = RATE / 10 = 1), so over the run the
    // two replicas together made at most RATE × elapsed + 1 requests. Two per-replica limiters would
    // allow twice that, and would have finished in about half the time (the simulator then answers
    // 429: see `two_local_limiters_together_exceed_the_simulators_limit`, the control). Every
    // business needs at least a customer and a subscription, so the demand (≥ 60 requests) exceeded
    // what 10/s allows in the time taken: the limit was actually tested, not idle.
    let requests = stripe_requests(&ma) + stripe_requests(&mb) - before;
    let allowed = f64::from(RATE) * elapsed + 1.0;
    eprintln!("{requests} Stripe requests in {elapsed:.2} s by two replicas (limit {RATE}/s)");
    assert!(requests >= 60.0, "{requests} requests");
    assert!(
        requests <= allowed,
        "{requests} requests in {elapsed:.2} s exceed {RATE}/s for the fleet"
    );
    assert!(
        elapsed >= (60.0 - 1.0) / f64::from(RATE),
        "sixty requests at {RATE}/s cannot finish in {elapsed:.2} s"
    );
    drop((a, b, store));
    sim.shutdown().await;
}

/// The control for the test above: the same simulator limit and two clients each limited to the same
/// rate on their own (what two replicas without a shared budget would do) provoke 429s. So the
/// simulator's limit is tight enough to catch a per-replica limiter.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_local_limiters_together_exceed_the_simulators_limit() {
    let sim = stripe_sim::start(stripe_sim::SimConfig {
        rate_limit_per_second: 10,
        ..Default::default()
    })
    .await
    .unwrap();
    let metrics = Arc::new(Metrics::new());
    let client = || {
        StripeClient::new(
            ClientConfig {
                api_base: sim.base_url(),
                key: secrecy::SecretString::from(KEY),
                timeout: Duration::from_secs(5),
                retry: RetryPolicy {
                    max_attempts: 1,
                    ..RetryPolicy::default()
                },
                rate_limit_per_second: 10,
            },
            metrics.clone(),
        )
        .unwrap()
    };
    let (one, two) = (client(), client());
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..60 {
        let c = if i % 2 == 0 { one.clone() } else { two.clone() };
        calls.spawn(async move {
            c.send(&Call::get(
                "customer.list",
                "/v1/customers",
                Form::new().add("limit", "1"),
            ))
            .await
            .err()
            .and_then(|e| e.status())
        });
    }
    let mut refused = 0;
    while let Some(r) = calls.join_next().await {
        if r.unwrap() == Some(429) {
            refused += 1;
        }
    }
    assert!(
        refused > 0,
        "two local limiters at 10/s each stayed under 10/s"
    );
    assert!(metrics.render().lines().any(|l| l
        .starts_with("genesis_billing_stripe_rate_limited_total ")
        && !l.ends_with(" 0")));
    sim.shutdown().await;
}

/// Awaits every future, concurrently, in order (no extra crate for `join_all`).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in pinned.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

const PUSH_SECRET: &str = "dashboard-secret-for-replicas";

/// A signed `customer.subscription.updated` for the simulator's subscription `sub`, as of `status` at `created`.
fn status_event(id: &str, sub: &Value, status: &str, created: i64) -> String {
    let mut object = sub.clone();
    object["status"] = json!(status);
    json!({
        "id": id, "object": "event", "type": "customer.subscription.updated",
        "created": created, "data": {"object": object},
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_push_each_event_once_in_order_per_business_and_one_killed_mid_stream_loses_nothing(
) {
    let sim = common::start_sim().await;
    let db = TestDatabase::create("gb_replicas_push").await;
    let receiver = common::receiver::Receiver::start(&[PUSH_SECRET]).await;
    // Slow enough that events are still in flight when a replica is killed.
    receiver.slow_down(40);
    let url = receiver.url();
    let env = fleet_env(
        &sim,
        &db,
        &[
            ("GENESIS_DASHBOARD_URL", url.as_str()),
            ("GENESIS_DASHBOARD_SECRET", PUSH_SECRET),
            ("GENESIS_DASHBOARD_TIMEOUT_SECS", "2"),
            ("GENESIS_DASHBOARD_BACKOFF_CAP_SECS", "1"),
            ("GENESIS_DASHBOARD_CONCURRENCY", "4"),
        ],
    );
    sync_prices(&env);
    let logs = tempfile::tempdir().unwrap();
    let mut a = Replica::start("A", &env, &logs);
    let b = Replica::start("B", &env, &logs);
    tokio::join!(a.wait_ready(), b.wait_ready());
    let store = store_of(&db).await;

    let mut ids = Vec::new();
    for (i, replica) in [&a, &b].into_iter().cycle().take(8).enumerate() {
        let (status, body) = replica
            .create(&format!("Pushed {i}"), "saas")
            .await
            .unwrap();
        assert_eq!(status, 201, "{body}");
        ids.push(body["business_id"].as_str().unwrap().to_owned());
    }
    all_work_finished(&store, "provisioning").await;

    // Stripe's changes reach the replicas in turn: active, then past_due, for every business.
    let subs = sim_by_business(&sim, "subscription");
    let start = now() + 1;
    for (step, status) in ["active", "past_due"].into_iter().enumerate() {
        for (i, id) in ids.iter().enumerate() {
            let replica = if (i + step) % 2 == 0 { &a } else { &b };
            let body = status_event(
                &format!("evt_push_{step}_{i}"),
                &subs[id][0],
                status,
                start + step as i64,
            );
            assert_eq!(replica.deliver(&body).await.0, 200);
        }
    }
    // Killed while the receiver is still working through the stream.
    eventually("the stream under way", Duration::from_secs(30), || async {
        !receiver.accepted().is_empty()
    })
    .await;
    assert!(store.outbound_backlog().await.unwrap().pending > 0);
    a.kill();

    // B alone from here: the recovery, and two takedowns.
    for (i, id) in ids.iter().enumerate() {
        let body = status_event(
            &format!("evt_push_2_{i}"),
            &subs[id][0],
            "active",
            start + 2,
        );
        assert_eq!(b.deliver(&body).await.0, 200);
    }
    for id in &ids[..2] {
        let r = b
            .http
            .delete(format!("{}/v1/businesses/{id}", b.base))
            .bearer_auth(ADMIN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    eventually(
        "every event delivered, A's by B",
        Duration::from_secs(60),
        || async { store.outbound_backlog().await.unwrap().pending == 0 },
    )
    .await;

    assert_eq!(receiver.bad_signatures(), 0);
    let mut repeats = 0;
    for (i, id) in ids.iter().enumerate() {
        let stored = store
            .list_outbound(&genesis_billing::store::OutboundFilter {
                business_id: Some(id.clone()),
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        let mut expected = vec!["billing.provisioned"];
        expected.extend(["billing.status_changed"; 3]);
        if i < 2 {
            expected.extend(["billing.status_changed", "business.taken_down"]);
        }
        let types: Vec<&str> = stored.iter().map(|e| e.update_type.as_str()).collect();
        assert_eq!(types, expected, "{id}");
        // What arrived: the stored events in commit order, each with its stored body; a delivery cut short
        // by the kill may come again, with the same id and body, right after itself.
        let mut got: Vec<(String, String)> = Vec::new();
        for d in receiver.accepted_of(id) {
            if got.last() == Some(&(d.event_id.clone(), d.body.clone())) {
                repeats += 1;
                continue;
            }
            got.push((d.event_id, d.body));
        }
        let want: Vec<(String, String)> = stored.iter().map(|e| (e.id.clone(), e.body())).collect();
        assert_eq!(got, want, "{id}: each event once, in order");
    }
    assert!(
        repeats <= 4,
        "only deliveries in flight at the kill repeat: {repeats}"
    );
    eprintln!("{repeats} deliveries repeated after the kill");
    drop(b);
    drop(store);
    sim.shutdown().await;
}
