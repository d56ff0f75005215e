//! Test helpers: a real simulator on 127.0.0.1, real SQLite files, the real billing service.
#![allow(dead_code)]

pub mod events;
pub mod postgres;
pub mod receiver;

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use genesis_billing::app::build_service;
use genesis_billing::billing::BillingService;
use genesis_billing::config::{Flags, Settings};
use genesis_billing::metrics::Metrics;
use secrecy::SecretString;
use serde_json::Value;

pub const KEY: &str = "sk_test_genesis_tests_key";

/// A simulator plus a billing service on a fresh SQLite file.
pub struct World {
    pub sim: stripe_sim::SimHandle,
    pub dir: tempfile::TempDir,
    pub service: Arc<BillingService>,
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
    /// The PostgreSQL database of a `World::postgres`, dropped with it.
    pub postgres: Option<postgres::TestDatabase>,
}

pub fn db_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("billing.db").display())
}

/// Settings for `sim` with extra environment `env` (e.g. catalog, rollout).
pub fn settings_for(sim_base: &str, database_url: &str, env: &[(&str, &str)]) -> Settings {
    let flags = Flags {
        stripe_key: Some(SecretString::from(KEY)),
        stripe_api_base: Some(sim_base.to_owned()),
        database_url: Some(database_url.to_owned()),
        ..Flags::default()
    };
    let mut all: Vec<(String, String)> = vec![
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS".into(), "20".into()),
        ("GENESIS_BILLING_STRIPE_RATE_LIMIT".into(), "0".into()),
        ("GENESIS_BILLING_STRIPE_TIMEOUT_SECS".into(), "5".into()),
    ];
    for (k, v) in env {
        all.retain(|(name, _)| name != k);
        all.push(((*k).into(), (*v).into()));
    }
    Settings::load(&flags, &all).expect("valid test settings")
}

/// A simulator configuration without rate limit (tests make bursts a real client would spread out).
pub fn unlimited() -> stripe_sim::SimConfig {
    stripe_sim::SimConfig {
        rate_limit_per_second: 0,
        ..Default::default()
    }
}

/// A simulator without rate limit on a port of its own.
pub async fn start_sim() -> stripe_sim::SimHandle {
    stripe_sim::start(unlimited()).await.unwrap()
}

/// A fault rule that delays every matching request by `latency_ms` ± `jitter_ms`.
pub fn latency(operation: &str, latency_ms: u64, jitter_ms: u64) -> stripe_sim::FaultRule {
    stripe_sim::FaultRule {
        kind: stripe_sim::FaultKind::Latency,
        probability: 1.0,
        operation: Some(operation.into()),
        latency_ms,
        jitter_ms,
    }
}

impl World {
    /// A simulator without rate limit and a service with prices synced.
    pub async fn new() -> Self {
        Self::with_env(&[]).await
    }

    /// As `new`, with extra environment `env` for the service.
    pub async fn with_env(env: &[(&str, &str)]) -> Self {
        Self::with(unlimited(), env).await
    }

    pub async fn with(config: stripe_sim::SimConfig, env: &[(&str, &str)]) -> Self {
        Self::on(config, env, None).await
    }

    /// A simulator without rate limit and a service on a PostgreSQL database of its own.
    pub async fn postgres() -> Self {
        let db = postgres::TestDatabase::create("gb_world").await;
        Self::on(unlimited(), &[], Some(db)).await
    }

    async fn on(
        config: stripe_sim::SimConfig,
        env: &[(&str, &str)],
        postgres: Option<postgres::TestDatabase>,
    ) -> Self {
        let sim = stripe_sim::start(config).await.expect("simulator starts");
        let dir = tempfile::tempdir().expect("temp dir");
        let url = postgres
            .as_ref()
            .map_or_else(|| db_url(&dir), |db| db.url.clone());
        let settings = settings_for(&sim.base_url(), &url, env);
        let metrics = Arc::new(Metrics::new());
        let service = Arc::new(
            build_service(&settings, metrics.clone())
                .await
                .map_err(|_| "build")
                .expect("service builds"),
        );
        if service.payments_enabled() {
            service.sync_prices(true, false).await.expect("prices sync");
        }
        Self {
            sim,
            dir,
            service,
            metrics,
            settings,
            postgres,
        }
    }

    /// Another service on the same database and simulator (a second process, as far as Stripe can tell).
    pub async fn second_service(&self) -> Arc<BillingService> {
        let metrics = Arc::new(Metrics::new());
        Arc::new(
            build_service(&self.settings, metrics)
                .await
                .map_err(|_| "build")
                .expect("service builds"),
        )
    }

    /// A business of type `saas`, created (and provisioned, where payments are on) through the service.
    pub async fn saas(&self, name: &str) -> genesis_billing::business::Business {
        self.service
            .create_business(
                genesis_billing::business::NewBusiness {
                    name: name.into(),
                    business_type: "saas".into(),
                    email: None,
                },
                None,
            )
            .await
            .unwrap()
            .0
    }

    /// The kinds of a business's billing history, oldest first.
    pub async fn history(&self, id: &str) -> Vec<String> {
        self.service
            .store()
            .events_of(id)
            .await
            .unwrap()
            .into_iter()
            .map(|(kind, _, _)| kind)
            .collect()
    }

    /// Waits (up to 10 s) until the stored subscription status of business `id` is `status`.
    pub async fn wait_subscription_status(&self, id: &str, status: &str) {
        eventually(
            &format!("{id}'s subscription to be {status}"),
            Duration::from_secs(10),
            || async { self.record(id).await.subscription_status.as_deref() == Some(status) },
        )
        .await;
    }

    /// The stored record of a business that must exist.
    pub async fn record(&self, id: &str) -> genesis_billing::business::Business {
        self.service
            .store()
            .get_business(id)
            .await
            .unwrap()
            .unwrap()
    }

    /// Another service on the same database with other settings (e.g. the kill switch on).
    pub async fn second_service_with(&self, env: &[(&str, &str)]) -> Arc<BillingService> {
        let settings = settings_for(&self.sim.base_url(), &db_url(&self.dir), env);
        Arc::new(
            build_service(&settings, Arc::new(Metrics::new()))
                .await
                .map_err(|_| "build")
                .expect("service builds"),
        )
    }

    /// The environment the binary needs to run against this world (key, simulator, database, fast retries).
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("STRIPE_API_KEY", KEY.to_owned()),
            ("STRIPE_API_BASE", self.sim.base_url()),
            ("DATABASE_URL", db_url(&self.dir)),
            ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10".to_owned()),
        ]
    }

    pub fn db_path(&self) -> PathBuf {
        self.dir.path().join("billing.db")
    }

    /// Objects of a type in the simulator, deleted and canceled ones included.
    pub fn objects(&self, kind: &str) -> Vec<Value> {
        self.sim.objects(kind)
    }

    /// Live (not deleted) customers whose metadata names `business_id`.
    pub fn customers_of(&self, business_id: &str) -> Vec<Value> {
        self.objects("customer")
            .into_iter()
            .filter(|c| c["metadata"]["business_id"] == business_id && c["deleted"] != true)
            .collect()
    }

    /// Subscriptions whose metadata names `business_id`.
    pub fn subscriptions_of(&self, business_id: &str) -> Vec<Value> {
        self.objects("subscription")
            .into_iter()
            .filter(|s| s["metadata"]["business_id"] == business_id)
            .collect()
    }

    /// Stripe requests made so far by the service under test.
    pub fn stripe_requests(&self) -> u64 {
        self.metrics
            .histogram_total("genesis_billing_stripe_request_duration_seconds")
    }

    /// A raw call to the simulator as an operator or a test would make it.
    pub async fn sim_call(
        &self,
        method: reqwest::Method,
        path: &str,
        form: &[(&str, &str)],
    ) -> (u16, Value) {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let response = reqwest::Client::new()
            .request(method, format!("{}{}", self.sim.base_url(), path))
            .bearer_auth(KEY)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .expect("simulator answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Completes a Checkout Session in the simulator with payment method `pm`, as its customer would;
    /// returns the simulator's status.
    pub async fn complete_checkout(&self, session: &str, pm: &str) -> u16 {
        self.sim_call(
            reqwest::Method::POST,
            &format!("/_sim/checkout/sessions/{session}/complete"),
            &[("payment_method", pm)],
        )
        .await
        .0
    }

    /// Deletes (or cancels) an object straight in the simulator, as from Stripe's dashboard; it must succeed.
    pub async fn delete_in_stripe(&self, path: &str) {
        let (status, body) = self.sim_call(reqwest::Method::DELETE, path, &[]).await;
        assert_eq!(status, 200, "DELETE {path}: {body}");
    }

    /// A simulator control call (`/_sim/...`, JSON).
    pub async fn sim_control(&self, path: &str, body: Value) -> Value {
        let response = reqwest::Client::new()
            .post(format!("{}{}", self.sim.base_url(), path))
            .bearer_auth(KEY)
            .json(&body)
            .send()
            .await
            .expect("simulator answers");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        response.json().await.unwrap_or(Value::Null)
    }
}

/// The genesis-billing binary with `env` added to the test's own environment.
pub fn bin(env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_genesis-billing"));
    cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())));
    cmd
}

/// Runs the binary with `env` and `args` to the end (blocking) and returns what it wrote and its status.
pub fn output(env: &[(&str, String)], args: &[&str]) -> Output {
    bin(env).args(args).output().unwrap()
}

/// As `output`, and the run must succeed (its stderr in the message if not).
pub fn run_ok(env: &[(&str, String)], args: &[&str]) -> Output {
    let out = output(env, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// As `run_ok`, returning stdout as JSON.
pub fn run_json(env: &[(&str, String)], args: &[&str]) -> Value {
    serde_json::from_slice(&run_ok(env, args).stdout).unwrap()
}

/// Sends `request` and reads its answer as JSON.
pub async fn json_of(request: reqwest::RequestBuilder) -> Value {
    request.send().await.unwrap().json().await.unwrap()
}

/// Polls `check` until it returns true or the deadline passes.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A fault rule for the simulator.
pub fn fault(
    kind: stripe_sim::FaultKind,
    probability: f64,
    operation: Option<&str>,
) -> stripe_sim::FaultRule {
    stripe_sim::FaultRule {
        kind,
        probability,
        operation: operation.map(str::to_owned),
        latency_ms: 0,
        jitter_ms: 0,
    }
}

/// The HTTP service of a `World`, started in-process on a port of its own.
pub struct App {
    pub base: String,
    /// The webhook signing secrets the service accepts.
    pub webhook_secrets: Vec<String>,
    pub running: Option<genesis_billing::http::Running>,
    pub client: reqwest::Client,
}

pub const ADMIN_TOKEN: &str = "admin-token-for-tests";

impl App {
    /// Starts the service with `tokens` and `secrets`, on `listener` if given.
    pub async fn start(
        world: &World,
        tokens: &[&str],
        secrets: &[String],
        listener: Option<tokio::net::TcpListener>,
    ) -> Self {
        let schedule = genesis_billing::jobs::Schedule {
            resume: Duration::from_secs(3600),
            webhook_retry: Duration::from_millis(200),
            gap_fill: None,
            reconcile: None,
        };
        Self::start_with(world, tokens, secrets, listener, schedule).await
    }

    /// As `start`, with the background jobs on `schedule`.
    pub async fn start_with(
        world: &World,
        tokens: &[&str],
        secrets: &[String],
        listener: Option<tokio::net::TcpListener>,
        schedule: genesis_billing::jobs::Schedule,
    ) -> Self {
        let mut settings = world.settings.clone();
        settings.admin_tokens = tokens
            .iter()
            .map(|t| SecretString::from(t.to_string()))
            .collect();
        settings.webhook_secrets = secrets
            .iter()
            .map(|s| SecretString::from(s.clone()))
            .collect();
        let state = genesis_billing::app::app_state(&settings, world.service.clone());
        let listener = match listener {
            Some(l) => l,
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
        };
        let running = genesis_billing::http::start_on(state, listener, schedule, false).unwrap();
        Self {
            webhook_secrets: secrets.to_vec(),
            base: format!("http://{}", running.addr),
            running: Some(running),
            client: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// Creates a business through the admin API and returns its id.
    pub async fn create(&self, name: &str, kind: &str) -> String {
        let r = self
            .admin(reqwest::Method::POST, "/v1/businesses")
            .json(&serde_json::json!({"name": name, "business_type": kind}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 201);
        r.json::<Value>().await.unwrap()["business_id"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// Asks the admin API for a business's checkout link and returns the Checkout Session's id.
    pub async fn checkout(&self, id: &str) -> String {
        let link = json_of(self.admin(
            reqwest::Method::POST,
            &format!("/v1/businesses/{id}/checkout"),
        ))
        .await;
        link["checkout_session"].as_str().unwrap().to_owned()
    }

    pub fn admin(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, self.url(path))
            .bearer_auth(ADMIN_TOKEN)
    }
}

/// A service whose webhook endpoint is registered in the simulator, receiving real signed deliveries.
pub async fn wired(world: World) -> (World, App) {
    wired_with(world, None).await
}

/// As `wired`, with failed webhook applies retried in the background only after `retry` when given.
pub async fn wired_with(world: World, retry: Option<Duration>) -> (World, App) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/stripe/webhook", listener.local_addr().unwrap());
    let mut form: Vec<(&str, &str)> = vec![("url", url.as_str())];
    for e in genesis_billing::billing::HANDLED_EVENTS {
        form.push(("enabled_events[]", e));
    }
    let (status, endpoint) = world
        .sim_call(reqwest::Method::POST, "/v1/webhook_endpoints", &form)
        .await;
    assert_eq!(status, 200, "{endpoint}");
    let secret = endpoint["secret"].as_str().unwrap().to_owned();
    let app = match retry {
        None => App::start(&world, &[ADMIN_TOKEN], &[secret], Some(listener)).await,
        Some(webhook_retry) => {
            let schedule = genesis_billing::jobs::Schedule {
                resume: Duration::from_secs(3600),
                webhook_retry,
                gap_fill: None,
                reconcile: None,
            };
            App::start_with(&world, &[ADMIN_TOKEN], &[secret], Some(listener), schedule).await
        }
    };
    world
        .sim_control(
            "/_sim/webhooks",
            serde_json::json!({"retry_schedule_ms": [50, 100, 200]}),
        )
        .await;
    (world, app)
}
