//! Idempotency keys as Stripe keeps them, every fault kind, and the rate limiter.

use crate::common;

use std::time::{Duration, Instant};

use common::{Sim, KEY};
use serde_json::json;
use stripe_sim::{FaultKind, FaultRule, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn rule(kind: FaultKind, operation: &str) -> FaultRule {
    FaultRule {
        kind,
        probability: 1.0,
        operation: Some(operation.into()),
        latency_ms: 0,
        jitter_ms: 0,
    }
}

/// Sends a raw HTTP/1.1 POST and returns everything the server wrote before closing.
async fn raw_post(sim: &Sim, path: &str, body: &str, idem: &str) -> Vec<u8> {
    let mut s = tokio::net::TcpStream::connect(sim.handle.addr())
        .await
        .unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nIdempotency-Key: {idem}\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\nConnection: keep-alive\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection");
    out
}

#[tokio::test]
async fn a_replay_returns_the_first_response_with_the_replayed_header() {
    let sim = Sim::start().await;
    let a = sim
        .post_keyed(
            "/v1/customers",
            &[("name", "A"), ("metadata[k]", "v")],
            "key-1",
        )
        .await;
    let b = sim
        .post_keyed(
            "/v1/customers",
            &[("metadata[k]", "v"), ("name", "A")],
            "key-1",
        )
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(b.status, 200);
    assert_eq!(a.body, b.body);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(b.header("idempotency-key"), Some("key-1"));
    assert!(a.header("idempotent-replayed").is_none());
    assert_eq!(sim.handle.objects("customer").len(), 1);
    let ev = sim.events_of("customer.created");
    assert_eq!(ev[0]["request"]["idempotency_key"], "key-1");
    assert!(ev[0]["request"]["id"].as_str().unwrap().starts_with("req_"));
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_an_idempotency_error() {
    let sim = Sim::start().await;
    sim.send("POST", "/v1/customers", &[("name", "A")], Some("key-2"))
        .await;
    let b = sim
        .send("POST", "/v1/customers", &[("name", "B")], Some("key-2"))
        .await;
    assert_eq!(b.status, 400);
    assert_eq!(b.body["error"]["type"], "idempotency_error");
    assert!(b.body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("key-2"));
    let other_path = sim
        .send("POST", "/v1/products", &[("name", "A")], Some("key-2"))
        .await;
    assert_eq!(other_path.status, 400);
}

#[tokio::test]
async fn validation_failures_are_not_stored_but_card_errors_are() {
    let sim = Sim::start().await;
    let bad = sim
        .send("POST", "/v1/customers", &[("nonsense", "1")], Some("key-3"))
        .await;
    assert_eq!(bad.status, 400);
    let good = sim
        .send("POST", "/v1/customers", &[("name", "ok")], Some("key-3"))
        .await;
    assert_eq!(
        good.status, 200,
        "a failed validation does not burn the key"
    );
    let cus = good.id();
    let declined = sim
        .post_keyed(
            "/v1/payment_methods/pm_card_visa_chargeDeclined/attach",
            &[("customer", &cus)],
            "key-4",
        )
        .await;
    assert_eq!(declined.status, 402);
    let again = sim
        .post_keyed(
            "/v1/payment_methods/pm_card_visa_chargeDeclined/attach",
            &[("customer", &cus)],
            "key-4",
        )
        .await;
    assert_eq!(again.status, 402);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn keys_expire_after_24_simulated_hours() {
    let sim = Sim::start().await;
    sim.send("POST", "/v1/customers", &[("name", "A")], Some("key-5"))
        .await;
    sim.handle.advance_time(24 * 3600 + 1);
    let b = sim
        .send("POST", "/v1/customers", &[("name", "B")], Some("key-5"))
        .await;
    assert_eq!(b.status, 200);
    assert!(b.header("idempotent-replayed").is_none());
}

#[tokio::test]
async fn a_concurrent_request_with_an_in_flight_key_gets_409() {
    let sim = Sim::start().await;
    sim.handle.set_faults(vec![FaultRule {
        latency_ms: 400,
        ..rule(FaultKind::Latency, "POST /v1/customers")
    }]);
    let (a, b) = tokio::join!(
        sim.send("POST", "/v1/customers", &[("name", "A")], Some("key-6")),
        sim.send("POST", "/v1/customers", &[("name", "A")], Some("key-6")),
    );
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(statuses, [200, 409]);
    let conflict = if a.status == 409 { &a } else { &b };
    assert_eq!(conflict.error_code(), "idempotency_key_in_use");
    assert_eq!(sim.handle.objects("customer").len(), 1);
}

#[tokio::test]
async fn http_5xx_and_429_faults_change_nothing() {
    let sim = Sim::start().await;
    for (kind, status) in [
        (FaultKind::Http500, 500),
        (FaultKind::Http502, 502),
        (FaultKind::Http503, 503),
        (FaultKind::Http429, 429),
    ] {
        sim.handle
            .set_faults(vec![rule(kind, "POST /v1/customers")]);
        let r = sim
            .send("POST", "/v1/customers", &[("name", "A")], Some("key-7"))
            .await;
        assert_eq!(r.status, status);
        assert!(r.body["error"]["type"].is_string());
        if status >= 500 {
            assert_eq!(r.header("stripe-should-retry"), Some("true"));
            assert_eq!(r.body["error"]["type"], "api_error");
        } else {
            assert_eq!(r.error_code(), "rate_limit");
        }
    }
    assert!(sim.handle.objects("customer").is_empty());
    sim.handle.set_faults(vec![]);
    let r = sim
        .send("POST", "/v1/customers", &[("name", "A")], Some("key-7"))
        .await;
    assert_eq!(
        r.status, 200,
        "pre-execution faults are not stored for the key"
    );
    let counts = sim.handle.fault_counts();
    assert_eq!(counts["http_500"], 1);
    assert_eq!(counts["http_429"], 1);
}

#[tokio::test]
async fn latency_delays_the_answer() {
    let sim = Sim::start().await;
    sim.handle.set_faults(vec![FaultRule {
        latency_ms: 300,
        jitter_ms: 50,
        ..rule(FaultKind::Latency, "GET /v1/customers")
    }]);
    let t = Instant::now();
    let r = sim.get("/v1/customers", &[]).await;
    assert_eq!(r.status, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn drop_closes_the_connection_without_a_response_or_a_change() {
    let sim = Sim::start().await;
    sim.handle
        .set_faults(vec![rule(FaultKind::Drop, "POST /v1/customers")]);
    let out = raw_post(&sim, "/v1/customers", "name=A", "key-8").await;
    assert!(out.is_empty(), "got {:?}", String::from_utf8_lossy(&out));
    assert!(sim.handle.objects("customer").is_empty());
    assert_eq!(sim.handle.fault_counts()["drop"], 1);
}

#[tokio::test]
async fn commit_then_500_commits_and_the_retry_replays_the_500() {
    let sim = Sim::start().await;
    sim.handle
        .set_faults(vec![rule(FaultKind::CommitThen500, "POST /v1/customers")]);
    let a = sim
        .post_keyed(
            "/v1/customers",
            &[("name", "A"), ("metadata[business_id]", "b-9")],
            "key-9",
        )
        .await;
    assert_eq!(a.status, 500);
    assert_eq!(
        sim.handle.objects("customer").len(),
        1,
        "the write happened"
    );
    sim.handle.set_faults(vec![]);
    let b = sim
        .post_keyed(
            "/v1/customers",
            &[("name", "A"), ("metadata[business_id]", "b-9")],
            "key-9",
        )
        .await;
    assert_eq!(b.status, 500);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    let found = sim
        .get(
            "/v1/customers/search",
            &[("query", "metadata['business_id']:'b-9'")],
        )
        .await;
    assert_eq!(found.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn commit_then_drop_commits_and_the_retry_gets_the_success() {
    let sim = Sim::start().await;
    sim.handle
        .set_faults(vec![rule(FaultKind::CommitThenDrop, "POST /v1/customers")]);
    let out = raw_post(&sim, "/v1/customers", "name=A", "key-10").await;
    assert!(out.is_empty());
    let stored = sim.handle.objects("customer");
    assert_eq!(stored.len(), 1);
    sim.handle.set_faults(vec![]);
    let b = sim
        .send("POST", "/v1/customers", &[("name", "A")], Some("key-10"))
        .await;
    assert_eq!(b.status, 200);
    assert_eq!(b.body["id"], stored[0]["id"]);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn fault_rules_are_managed_over_sim_routes() {
    let sim = Sim::start().await;
    let r = sim
        .sim("/_sim/faults", json!({"rules": [{"kind": "http_503", "probability": 1.0, "operation": "GET /v1/prices"}]}))
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(sim.get("/v1/prices", &[]).await.status, 503);
    assert_eq!(sim.get("/v1/products", &[]).await.status, 200);
    let g = sim.get("/_sim/faults", &[]).await;
    assert_eq!(g.body["counts"]["http_503"], 1);
    assert_eq!(g.body["rules"][0]["kind"], "http_503");
    let d = sim.delete("/_sim/faults").await;
    assert_eq!(d.body["rules"], json!([]));
    assert_eq!(sim.get("/v1/prices", &[]).await.status, 200);
    let bad = sim
        .sim("/_sim/faults", json!({"rules": [{"kind": "explode"}]}))
        .await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn the_rate_limit_answers_429_in_stripes_shape_and_spares_sim_routes() {
    let sim = Sim::with(SimConfig {
        rate_limit_per_second: 3,
        ..SimConfig::default()
    })
    .await;
    let mut limited = None;
    for _ in 0..10 {
        let r = sim.get("/v1/customers", &[]).await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
    }
    let r = limited.expect("a 429 within 10 quick requests at 3/s");
    assert_eq!(r.body["error"]["type"], "invalid_request_error");
    assert_eq!(r.body["error"]["code"], "rate_limit");
    assert!(r.header("request-id").is_some());
    for _ in 0..10 {
        assert_eq!(sim.get("/_sim/ping", &[]).await.status, 200);
    }
    let off = sim.sim("/_sim/rate_limit", json!({"per_second": 0})).await;
    assert_eq!(off.body["per_second"], 0);
    for _ in 0..20 {
        assert_eq!(sim.get("/v1/customers", &[]).await.status, 200);
    }
}

#[tokio::test]
async fn a_client_that_hangs_up_mid_request_does_not_leave_its_key_in_flight() {
    let sim = Sim::start().await;
    sim.handle.set_faults(vec![FaultRule {
        latency_ms: 300,
        ..rule(FaultKind::Latency, "POST /v1/customers")
    }]);
    // The client gives up (a crash or a timeout) while the simulator is still working on the request.
    let mut s = tokio::net::TcpStream::connect(sim.handle.addr())
        .await
        .unwrap();
    let body = "name=Gone";
    let req = format!(
        "POST /v1/customers HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nIdempotency-Key: key-hangup\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    // The same request, sent again with the same key.
    let retry = || sim.post_keyed("/v1/customers", &[("name", "Gone")], "key-hangup");
    common::eventually(
        "the request to be in flight",
        Duration::from_secs(5),
        || async {
            let r = retry().await;
            (r.status == 409).then_some(())
        },
    )
    .await;
    drop(s);
    sim.handle.set_faults(vec![]);
    // As on Stripe, the request completes; a retry with the key then replays it instead of a 409 forever.
    let replay = common::eventually(
        "the key to leave in-flight",
        Duration::from_secs(5),
        || async {
            let r = retry().await;
            (r.status != 409).then_some(r)
        },
    )
    .await;
    assert_eq!(replay.status, 200);
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(sim.handle.objects("customer").len(), 1);
}
