//! The real binary killed with SIGKILL mid-provisioning, then `business resume`: nothing doubled, nothing lost.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::KEY;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_binary_at_random_points_then_resuming_leaves_one_customer_and_one_subscription_per_business(
) {
    let sim = common::start_sim().await;
    // Slow writes stretch the run so the kills land inside Stripe calls, not only between them.
    sim.set_faults(vec![common::latency("POST /v1/", 40, 40)]);
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("crash.db").display());
    let env = [
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", sim.base_url()),
        ("DATABASE_URL", db.clone()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10".to_owned()),
        ("GENESIS_BILLING_LEASE_SECS", "1".to_owned()),
    ];
    let run =
        |args: &[&str]| String::from_utf8_lossy(&common::run_ok(&env, args).stdout).into_owned();
    tokio::task::block_in_place(|| run(&["prices", "sync"]));

    for round in 0..4 {
        let mut child = common::bin(&env)
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

/// Every listed business provisioned, with exactly one customer and one subscription in the simulator,
/// and no customer in the simulator without a business.
fn assert_provisioned_once(sim: &stripe_sim::SimHandle, all: &[serde_json::Value]) {
    let customers = sim.objects("customer");
    let subs = sim.objects("subscription");
    for b in all {
        let id = b["business_id"].as_str().unwrap();
        assert_eq!(b["billing"], "provisioned", "{b}");
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
    }
    let ids: std::collections::HashSet<&str> = all
        .iter()
        .map(|b| b["business_id"].as_str().unwrap())
        .collect();
    for c in &customers {
        assert!(
            ids.contains(c["metadata"]["business_id"].as_str().unwrap_or("")),
            "orphan customer {}",
            c["id"]
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_resume_right_after_a_killed_create_finishes_every_business_without_waiting_for_leases()
{
    let sim = common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    // The default lease (120 s): only telling a dead holder from a live one lets resume go on now.
    let env = [
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", sim.base_url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("killed.db").display()),
        ),
        // Long enough that a request the killed process left in flight finishes within the retries.
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "200".to_owned()),
    ];
    tokio::task::block_in_place(|| common::run_json(&env, &["--json", "prices", "sync"]));
    // Slow writes, so the kill lands with businesses recorded and their Stripe work half done.
    sim.set_faults(vec![common::latency("POST /v1/", 60, 20)]);
    let mut child = common::bin(&env)
        .args([
            "business",
            "create",
            "--name",
            "Killed",
            "--type",
            "saas",
            "--count",
            "30",
            "--concurrency",
            "6",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::eventually(
        "the create to be mid-work",
        Duration::from_secs(30),
        || async { sim.objects("customer").len() >= 8 },
    )
    .await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    sim.set_faults(vec![]);
    let before: Vec<serde_json::Value> =
        serde_json::from_value(tokio::task::block_in_place(|| {
            common::run_json(&env, &["--json", "business", "list", "--limit", "1000"])
        }))
        .unwrap();
    let unfinished = before
        .iter()
        .filter(|b| b["billing"] != "provisioned")
        .count();
    assert!(unfinished > 0, "the kill left work unfinished");

    // Once, right away: no retry loop, no waiting for the killed process's leases to expire.
    let report =
        tokio::task::block_in_place(|| common::run_json(&env, &["--json", "business", "resume"]));
    assert_eq!(report["counts"]["busy"], 0, "{report}");
    assert_eq!(report["counts"]["failed"], 0, "{report}");
    assert_eq!(report["counts"]["taken_over"], unfinished, "{report}");
    assert_eq!(report["counts"]["provisioned"], unfinished, "{report}");

    let all: Vec<serde_json::Value> = serde_json::from_value(tokio::task::block_in_place(|| {
        common::run_json(&env, &["--json", "business", "list", "--limit", "1000"])
    }))
    .unwrap();
    assert_eq!(all.len(), before.len());
    assert_provisioned_once(&sim, &all);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_held_by_a_live_process_is_reported_busy_with_its_expiry_and_not_taken_over() {
    let world = common::World::new().await;
    // Provisioning fails, leaving the business unfinished; then this (live) test process holds its lease.
    world.sim.set_faults(vec![common::fault(
        stripe_sim::FaultKind::Http500,
        1.0,
        Some("POST /v1/customers"),
    )]);
    let b = world.saas("Held").await;
    assert_eq!(b.billing, genesis_billing::business::Billing::Failed);
    world.sim.set_faults(vec![]);
    let now = genesis_billing::store::now();
    let until = now + 120;
    assert!(world
        .service
        .store()
        .claim_business(&b.business_id, "live-holder", until, now)
        .await
        .unwrap());
    let env = [
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", world.sim.base_url()),
        ("DATABASE_URL", common::db_url(&world.dir)),
    ];

    let report =
        tokio::task::block_in_place(|| common::run_json(&env, &["--json", "business", "resume"]));
    assert_eq!(report["counts"]["busy"], 1, "{report}");
    assert_eq!(report["counts"]["taken_over"], 0, "{report}");
    assert_eq!(report["counts"]["provisioned"], 0, "{report}");
    assert_eq!(report["busy_until"], until);
    assert_eq!(report["busy"][0]["business_id"], b.business_id.as_str());
    assert_eq!(report["busy"][0]["lease_until"], until);
    assert_eq!(report["busy"][0]["pid"], i64::from(std::process::id()));
    assert!(world.customers_of(&b.business_id).is_empty(), "not touched");

    // The text output says who holds it and until when, never that there is nothing to do.
    let out = tokio::task::block_in_place(|| common::output(&env, &["business", "resume"]));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 businesses held by live workers") && text.contains(&b.business_id),
        "{text}"
    );

    // Released by its holder, the next resume finishes it.
    world
        .service
        .store()
        .release_business(&b.business_id, "live-holder")
        .await
        .unwrap();
    let report =
        tokio::task::block_in_place(|| common::run_json(&env, &["--json", "business", "resume"]));
    assert_eq!(report["counts"]["provisioned"], 1, "{report}");
    assert_eq!(world.customers_of(&b.business_id).len(), 1);
    assert_eq!(world.subscriptions_of(&b.business_id).len(), 1);
}
