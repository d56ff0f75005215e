//! Webhook delivery: Stripe's signature, event filtering, retries, duplicates, reordering, pausing.

use crate::common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{eventually, Sim};
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::{json, Value};
use sha2::Sha256;

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<(String, String, String)>>>,
    fail_first: Arc<AtomicUsize>,
}

impl Receiver {
    /// Starts a receiver that answers 500 to its first `fail_first` deliveries and 200 after.
    async fn start(fail_first: usize) -> (Receiver, String) {
        let r = Receiver {
            fail_first: Arc::new(AtomicUsize::new(fail_first)),
            ..Default::default()
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let rc = r.clone();
        tokio::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let rc = rc.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(
                        move |req: hyper::Request<hyper::body::Incoming>| {
                            let rc = rc.clone();
                            async move {
                                let sig = req
                                    .headers()
                                    .get("stripe-signature")
                                    .map(|v| v.to_str().unwrap().to_owned())
                                    .unwrap_or_default();
                                let ctype = req
                                    .headers()
                                    .get("content-type")
                                    .map(|v| v.to_str().unwrap().to_owned())
                                    .unwrap_or_default();
                                let body = String::from_utf8(
                                    req.into_body().collect().await.unwrap().to_bytes().to_vec(),
                                )
                                .unwrap();
                                let failing = rc
                                    .fail_first
                                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                        n.checked_sub(1)
                                    })
                                    .is_ok();
                                if !failing {
                                    rc.got.lock().unwrap().push((sig, ctype, body));
                                }
                                let mut resp =
                                    hyper::Response::new(Full::new(Bytes::from_static(b"ok")));
                                *resp.status_mut() = if failing {
                                    hyper::StatusCode::INTERNAL_SERVER_ERROR
                                } else {
                                    hyper::StatusCode::OK
                                };
                                Ok::<_, std::convert::Infallible>(resp)
                            }
                        },
                    );
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
                });
            }
        });
        (r, url)
    }

    fn events(&self) -> Vec<Value> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, b)| serde_json::from_str(b).unwrap())
            .collect()
    }

    async fn wait_for(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} deliveries"), Duration::from_secs(10), || {
            let e = self.events();
            async move { (e.len() >= n).then_some(e) }
        })
        .await
    }
}

async fn endpoint(sim: &Sim, url: &str, events: &[&str]) -> String {
    let mut p = vec![("url", url)];
    for e in events {
        p.push(("enabled_events[]", e));
    }
    let r = sim.post("/v1/webhook_endpoints", &p).await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let secret = r.body["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    let again = sim
        .get(&format!("/v1/webhook_endpoints/{}", r.id()), &[])
        .await;
    assert!(
        again.body.get("secret").is_none(),
        "the secret is only returned at creation"
    );
    secret
}

fn verify(secret: &str, header: &str, body: &str) -> i64 {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", x)) => t = x.parse::<i64>().ok(),
            Some(("v1", x)) => v1.push(x.to_owned()),
            _ => {}
        }
    }
    let t = t.expect("t= present");
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{t}.{body}").as_bytes());
    let expected: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(v1.contains(&expected), "signature mismatch");
    t
}

#[tokio::test]
async fn deliveries_are_signed_as_stripe_signs_them_with_wall_clock_time() {
    let sim = Sim::start().await;
    let (rx, url) = Receiver::start(0).await;
    let secret = endpoint(&sim, &url, &["customer.created"]).await;
    sim.handle.advance_time(40 * 86_400);
    let cus = sim.customer(&[]).await;
    sim.post(&format!("/v1/customers/{cus}"), &[("name", "x")])
        .await;
    let got = rx.wait_for(1).await;
    let (sig, ctype, body) = rx.got.lock().unwrap()[0].clone();
    assert_eq!(ctype, "application/json; charset=utf-8");
    let t = verify(&secret, &sig, &body);
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (wall - t).abs() < 60,
        "signed with the wall clock, not simulated time"
    );
    assert_eq!(got[0]["type"], "customer.created");
    assert_eq!(got[0]["data"]["object"]["id"], cus.as_str());
    assert!(
        got[0]["created"].as_i64().unwrap() > wall + 39 * 86_400,
        "events carry simulated time"
    );
    let ev = sim
        .get(
            &format!("/v1/events/{}", got[0]["id"].as_str().unwrap()),
            &[],
        )
        .await;
    let pending = eventually("pending_webhooks to drop", Duration::from_secs(5), || {
        let sim = &sim;
        let id = got[0]["id"].as_str().unwrap().to_owned();
        async move {
            let e = sim.get(&format!("/v1/events/{id}"), &[]).await;
            (e.body["pending_webhooks"] == 0).then_some(())
        }
    })
    .await;
    let _ = (ev, pending);
    assert_eq!(rx.events().len(), 1, "customer.updated is not subscribed");
}

#[tokio::test]
async fn failed_deliveries_are_retried_on_the_schedule() {
    let sim = Sim::start().await;
    let s = sim
        .sim("/_sim/webhooks", json!({"retry_schedule_ms": [20, 20, 20]}))
        .await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    let (rx, url) = Receiver::start(2).await;
    endpoint(&sim, &url, &["*"]).await;
    sim.customer(&[]).await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0]["type"], "customer.created");
    let stats = sim.get("/_sim/webhooks", &[]).await;
    assert_eq!(stats.body["stats"]["failed"], 2);
    assert_eq!(stats.body["stats"]["delivered"], 1);
}

#[tokio::test]
async fn duplicates_deliver_the_same_event_twice() {
    let sim = Sim::start().await;
    sim.sim("/_sim/webhooks", json!({"duplicate_probability": 1.0}))
        .await;
    let (rx, url) = Receiver::start(0).await;
    endpoint(&sim, &url, &["customer.created"]).await;
    sim.customer(&[]).await;
    let got = rx.wait_for(2).await;
    assert_eq!(got[0]["id"], got[1]["id"]);
}

#[tokio::test]
async fn a_reorder_window_shuffles_deliveries() {
    let sim = Sim::start().await;
    sim.sim("/_sim/webhooks", json!({"reorder_window": 12}))
        .await;
    let (rx, url) = Receiver::start(0).await;
    endpoint(&sim, &url, &["customer.created"]).await;
    let mut created = Vec::new();
    for _ in 0..12 {
        created.push(sim.customer(&[]).await);
    }
    let got = rx.wait_for(12).await;
    let order: Vec<String> = got
        .iter()
        .map(|e| e["data"]["object"]["id"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted_got = order.clone();
    sorted_got.sort();
    let mut sorted_created = created.clone();
    sorted_created.sort();
    assert_eq!(
        sorted_got, sorted_created,
        "every event arrives exactly once"
    );
    assert_ne!(order, created, "the order was shuffled");
}

#[tokio::test]
async fn paused_delivery_sends_nothing_until_re_enabled() {
    let sim = Sim::start().await;
    let (rx, url) = Receiver::start(0).await;
    endpoint(&sim, &url, &["customer.created"]).await;
    sim.sim("/_sim/webhooks", json!({"enabled": false})).await;
    let quiet = sim.customer(&[]).await;
    sim.sim("/_sim/webhooks", json!({"enabled": true})).await;
    let loud = sim.customer(&[]).await;
    let got = rx.wait_for(1).await;
    assert_eq!(got[0]["data"]["object"]["id"], loud.as_str());
    assert!(
        sim.events_of("customer.created")
            .iter()
            .any(|e| e["data"]["object"]["id"] == quiet.as_str()),
        "still recorded"
    );
    assert_eq!(rx.events().len(), 1);
}
