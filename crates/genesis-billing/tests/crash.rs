//! The real binary killed with SIGKILL mid-provisioning, then `business resume`: nothing doubled, nothing lost.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::KEY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_binary_at_random_points_then_resuming_leaves_one_customer_and_one_subscription_per_business(
) {
    let sim = stripe_sim::start(stripe_sim::SimConfig {
        rate_limit_per_second: 0,
        ..Default::default()
    })
    .await
    .unwrap();
    // Slow writes stretch the run so the kills land inside Stripe calls, not only between them.
    sim.set_faults(vec![stripe_sim::FaultRule {
        kind: stripe_sim::FaultKind::Latency,
        probability: 1.0,
        operation: Some("POST /v1/".into()),
        latency_ms: 40,
        jitter_ms: 40,
    }]);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("crash.db").display());
    let env = [
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", sim.base_url()),
        ("DATABASE_URL", db.clone()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10".to_owned()),
        ("GENESIS_BILLING_LEASE_SECS", "1".to_owned()),
    ];
    let bin = env!("CARGO_BIN_EXE_genesis-billing");
    let run = |args: &[&str]| {
        let out = Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tokio::task::block_in_place(|| run(&["prices", "sync"]));

    for round in 0..4 {
        let mut child = Command::new(bin)
            .args([
                "business",
                "create",
                "--name",
                &format!("Crash {round}"),
                "--type",
                "saas",
                "--count",
                "25",
                "--concurrency",
                "6",
            ])
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Choosing the kill point, not waiting for anything.
        tokio::time::sleep(Duration::from_millis(150 + fastrand::u64(0..500))).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
    }
    sim.set_faults(vec![]);

    // Leases of the killed processes expire after a second; resume until every business is provisioned.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        tokio::task::block_in_place(|| run(&["business", "resume"]));
        let listed =
            tokio::task::block_in_place(|| run(&["--json", "business", "list", "--limit", "1000"]));
        let all: Vec<serde_json::Value> = serde_json::from_str(&listed).unwrap();
        if all.iter().all(|b| b["billing"] == "provisioned") {
            assert!(!all.is_empty(), "the kills left some businesses recorded");
            let ids: std::collections::HashSet<&str> = all
                .iter()
                .map(|b| b["business_id"].as_str().unwrap())
                .collect();
            let customers = sim.objects("customer");
            let subs = sim.objects("subscription");
            for b in &all {
                let id = b["business_id"].as_str().unwrap();
                let c: Vec<_> = customers
                    .iter()
                    .filter(|c| c["metadata"]["business_id"] == id && c["deleted"] != true)
                    .collect();
                let s: Vec<_> = subs
                    .iter()
                    .filter(|s| s["metadata"]["business_id"] == id)
                    .collect();
                assert_eq!(c.len(), 1, "customers of {id}");
                assert_eq!(s.len(), 1, "subscriptions of {id}");
                assert_eq!(b["stripe_customer_id"], c[0]["id"]);
                assert_eq!(b["stripe_subscription_id"], s[0]["id"]);
                assert_eq!(b["subscription_status"], s[0]["status"]);
            }
            for c in customers.iter().filter(|c| c["deleted"] != true) {
                assert!(
                    ids.contains(c["metadata"]["business_id"].as_str().unwrap_or("")),
                    "orphan customer {}",
                    c["id"]
                );
            }
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "resume did not finish: {listed}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    sim.shutdown().await;
}
