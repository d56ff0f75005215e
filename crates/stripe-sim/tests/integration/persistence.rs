//! State survives restarts with a state file, both in-process and through the binary's `--state` and SIGTERM.

use crate::common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use common::{Sim, KEY};
use stripe_sim::SimConfig;

fn temp_file(name: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!(
        "stripe-sim-{name}-{}-{}.json",
        std::process::id(),
        fastrand::u64(..)
    ));
    let _ = std::fs::remove_file(&p);
    p
}

/// Creates a subscription with the idempotency key `sub-key`.
async fn subscribe_keyed(sim: &Sim, cus: &str, price: &str) -> common::Resp {
    sim.post_keyed(
        "/v1/subscriptions",
        &[("customer", cus), ("items[0][price]", price)],
        "sub-key",
    )
    .await
}

#[tokio::test]
async fn objects_and_idempotency_keys_survive_a_restart() {
    let path = temp_file("lib");
    let config = SimConfig {
        rate_limit_per_second: 0,
        state_file: Some(path.clone()),
        ..SimConfig::default()
    };
    let sim = Sim::with(config.clone()).await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer_with_card("pm_card_visa").await;
    let sub = subscribe_keyed(&sim, &cus, &price).await;
    assert_eq!(sub.body["status"], "active");
    sim.handle.shutdown().await;
    assert!(path.exists());

    let sim = Sim::with(config).await;
    let c = sim.get(&format!("/v1/customers/{cus}"), &[]).await;
    assert_eq!(c.status, 200);
    assert_eq!(sim.status_of(&sub.id()).await, "active");
    let replay = subscribe_keyed(&sim, &cus, &price).await;
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.id(), sub.id());
    let newer = sim.customer(&[]).await;
    let list = sim.get("/v1/customers", &[]).await;
    assert_eq!(
        list.body["data"][0]["id"],
        newer.as_str(),
        "ordering continues after a restart"
    );
    sim.handle.shutdown().await;
    let _ = std::fs::remove_file(&path);
}

fn spawn_binary(state: &PathBuf) -> (std::process::Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_stripe-sim"))
        .args(["--listen", "127.0.0.1:0", "--rate-limit", "0", "--state"])
        .arg(state)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("the binary starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .trim()
        .strip_prefix("stripe-sim listening on ")
        .expect("the announced address")
        .to_owned();
    (child, url)
}

#[tokio::test]
async fn the_binary_announces_its_address_and_saves_state_on_sigterm() {
    let path = temp_file("bin");
    let (mut child, url) = spawn_binary(&path);
    assert!(url.starts_with("http://127.0.0.1:"));
    let client = reqwest::Client::new();
    let r = client
        .post(format!("{url}/v1/customers"))
        .bearer_auth(KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("name=Persisted")
        .send()
        .await
        .unwrap();
    let cus: serde_json::Value = serde_json::from_str(&r.text().await.unwrap()).unwrap();
    let id = cus["id"].as_str().unwrap().to_owned();
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = child.wait().unwrap();
    assert!(exit.success(), "clean shutdown on SIGTERM");

    let (mut child, url) = spawn_binary(&path);
    let r = client
        .get(format!("{url}/v1/customers/{id}"))
        .bearer_auth(KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&path);
}
