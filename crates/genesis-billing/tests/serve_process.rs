//! `genesis-billing serve` as a real process: secrets stay out of every response, log line and metric, and
//! SIGTERM stops it cleanly.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use genesis_billing::webhook::signature::sign;
use serde_json::json;

const KEY: &str = "sk_test_SERVEKEYqwertyDONOTLEAK";
const WEBHOOK_SECRET: &str = "whsec_SERVESECRETzxcvDONOTLEAK";
const ADMIN: &str = "admin-SERVETOKENasdfDONOTLEAK";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_every_secret_out_of_responses_logs_and_metrics_and_stops_on_sigterm() {
    let sim = stripe_sim::start(stripe_sim::SimConfig {
        rate_limit_per_second: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("serve.db").display());
    let env = [
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", sim.base_url()),
        ("DATABASE_URL", db),
        (
            "STRIPE_WEBHOOK_SECRET",
            format!("whsec_rotated_old,{WEBHOOK_SECRET}"),
        ),
        ("GENESIS_ADMIN_TOKEN", ADMIN.to_owned()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10".to_owned()),
    ];
    let bin = env!("CARGO_BIN_EXE_genesis-billing");
    let sync = Command::new(bin)
        .args(["prices", "sync"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    assert!(sync.status.success());
    let mut child = Command::new(bin)
        .args(["-vvv", "serve", "--listen", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::task::block_in_place(|| stdout.read_line(&mut line)).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");

    let client = reqwest::Client::new();
    let mut bodies = Vec::new();
    let created = client
        .post(format!("{base}/v1/businesses"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Serve", "business_type": "saas"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let business: serde_json::Value = created.json().await.unwrap();
    bodies.push(business.to_string());
    let id = business["business_id"].as_str().unwrap();
    for (method, path, token) in [
        (
            reqwest::Method::GET,
            format!("/v1/businesses/{id}"),
            Some(ADMIN),
        ),
        (
            reqwest::Method::GET,
            "/v1/businesses".to_owned(),
            Some("wrong"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/businesses/{id}/checkout"),
            Some(ADMIN),
        ),
        (reqwest::Method::GET, "/health".to_owned(), None),
        (reqwest::Method::GET, "/openapi.json".to_owned(), None),
        (
            reqwest::Method::DELETE,
            format!("/v1/businesses/{id}"),
            Some(ADMIN),
        ),
    ] {
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        bodies.push(format!("{:?}", r.headers()));
        bodies.push(r.text().await.unwrap());
    }
    let event = json!({"id": "evt_serve", "object": "event", "type": "invoice.paid", "created": genesis_billing::store::now(), "data": {"object": {"id": "in_1"}}}).to_string();
    let t = genesis_billing::store::now();
    for signature in [
        sign(WEBHOOK_SECRET, t, event.as_bytes()),
        sign("whsec_wrong", t, event.as_bytes()),
        "garbage".to_owned(),
    ] {
        let r = client
            .post(format!("{base}/stripe/webhook"))
            .header("stripe-signature", signature)
            .body(event.clone())
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
    }
    bodies.push(
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "SIGTERM ends serve cleanly: {status:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("served"), "request logs are on: {logs}");

    for secret in [KEY, WEBHOOK_SECRET, ADMIN, "whsec_rotated_old"] {
        let fragment = &secret[secret.len() - 12..];
        assert!(!logs.contains(fragment), "{secret} in the logs");
        for b in &bodies {
            assert!(!b.contains(fragment), "{secret} in a response: {b}");
        }
    }
    sim.shutdown().await;
}
