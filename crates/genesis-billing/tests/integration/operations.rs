//! Operating a fleet: reconciliation of drift made behind the service's back, roll-out, roll-back, smoke.

use crate::common;

use std::process::Stdio;
use std::time::Duration;

use common::{World, KEY};
use genesis_billing::business::{Billing, Lifecycle};
use reqwest::Method;

#[tokio::test]
async fn reconcile_reports_drift_made_behind_the_services_back_and_fix_repairs_it() {
    let world = World::new().await;
    let cancelled = world.saas("Cancelled in the dashboard").await.business_id;
    let relabelled = world.saas("Metadata edited").await.business_id;
    let deleted = world.saas("Customer deleted").await.business_id;
    let fine = world.saas("Untouched").await.business_id;
    // No webhook endpoint is registered: the service hears nothing of these changes.
    let sub = world
        .record(&cancelled)
        .await
        .stripe_subscription_id
        .unwrap();
    world
        .delete_in_stripe(&format!("/v1/subscriptions/{sub}"))
        .await;
    let sub = world
        .record(&relabelled)
        .await
        .stripe_subscription_id
        .unwrap();
    assert_eq!(
        world
            .sim_call(
                Method::POST,
                &format!("/v1/subscriptions/{sub}"),
                &[("metadata[business_id]", "someone-else")]
            )
            .await
            .0,
        200
    );
    let customer = world.record(&deleted).await.stripe_customer_id.unwrap();
    world
        .delete_in_stripe(&format!("/v1/customers/{customer}"))
        .await;

    let before = world.stripe_requests();
    let report = world.service.reconcile(false, &|_, _| {}).await.unwrap();
    assert!(
        world.stripe_requests() - before <= 4,
        "lists, not one retrieve per business"
    );
    let found = |id: &str, field: &str| {
        report
            .drift
            .iter()
            .any(|d| d.business_id.as_deref() == Some(id) && d.field == field)
    };
    assert!(
        found(&cancelled, "subscription_status"),
        "{:#?}",
        report.drift
    );
    assert!(found(&relabelled, "metadata"), "{:#?}", report.drift);
    assert!(
        found(&deleted, "customer") && found(&deleted, "subscription_status"),
        "{:#?}",
        report.drift
    );
    assert!(!report
        .drift
        .iter()
        .any(|d| d.business_id.as_deref() == Some(fine.as_str())));
    assert!(
        report.drift.iter().all(|d| !d.fixed),
        "a report changes nothing"
    );
    assert_eq!(world.record(&cancelled).await.status, Lifecycle::Active);

    let fixed = world.service.reconcile(true, &|_, _| {}).await.unwrap();
    assert!(fixed.drift.iter().all(|d| d.fixed), "{:#?}", fixed.drift);
    let c = world.record(&cancelled).await;
    assert_eq!(
        (c.status, c.takedown_reason.as_deref()),
        (Lifecycle::TakenDown, Some("subscription_cancelled"))
    );
    assert_eq!(world.record(&deleted).await.status, Lifecycle::TakenDown);
    let sub = &world.subscriptions_of(&relabelled)[0];
    assert_eq!(
        sub["metadata"]["business_id"],
        relabelled.as_str(),
        "metadata restored in Stripe"
    );
    let audit = world.history(&relabelled).await;
    assert!(
        audit.iter().any(|kind| kind == "reconcile_fix"),
        "each repair is audited"
    );
    assert!(
        world.metrics.value(
            "genesis_billing_reconcile_drift_total",
            &["metadata", "fixed"]
        ) >= 1.0
    );

    let clean = world.service.reconcile(false, &|_, _| {}).await.unwrap();
    assert!(clean.drift.is_empty(), "{:#?}", clean.drift);
}

#[tokio::test]
async fn reconcile_adopts_a_subscription_found_by_metadata_instead_of_creating_a_second() {
    let world = World::new().await;
    let b = world.saas("Orphaned sub").await;
    // A record that lost its subscription id (a crash between Stripe's answer and our write).
    let lost = genesis_billing::business::Business {
        business_id: "00000000-0000-4000-8000-00000000ad0b".into(),
        billing: Billing::Pending,
        stripe_subscription_id: None,
        subscription_status: None,
        ..b.clone()
    };
    world
        .service
        .store()
        .insert_business(&lost, None)
        .await
        .unwrap();
    let price = b.stripe_price_id.clone().unwrap();
    let customer = b.stripe_customer_id.clone().unwrap();
    let (status, sub) = world
        .sim_call(
            Method::POST,
            "/v1/subscriptions",
            &[
                ("customer", &customer),
                ("items[0][price]", &price),
                ("payment_behavior", "default_incomplete"),
                ("metadata[business_id]", &lost.business_id),
            ],
        )
        .await;
    assert_eq!(status, 200, "{sub}");
    let report = world.service.reconcile(true, &|_, _| {}).await.unwrap();
    assert!(
        report
            .drift
            .iter()
            .any(|d| d.field == "subscription_id" && d.fixed),
        "{:#?}",
        report.drift
    );
    let after = world.record(&lost.business_id).await;
    assert_eq!(after.stripe_subscription_id.as_deref(), sub["id"].as_str());
    assert_eq!(after.billing, Billing::Provisioned);
    assert_eq!(
        world.subscriptions_of(&lost.business_id).len(),
        1,
        "adopted, not created twice"
    );
}

#[tokio::test]
async fn raising_the_rollout_bills_the_newly_included_businesses_on_the_next_reconciliation() {
    let world = World::with_env(&[("BILLING_ROLLOUT_PERCENT", "0")]).await;
    let mut ids = Vec::new();
    for i in 0..10 {
        ids.push(world.saas(&format!("Later {i}")).await.business_id);
    }
    assert!(world.objects("customer").is_empty());
    let everyone = world
        .second_service_with(&[("BILLING_ROLLOUT_PERCENT", "100")])
        .await;
    let report = everyone.reconcile(true, &|_, _| {}).await.unwrap();
    assert_eq!(
        report
            .drift
            .iter()
            .filter(|d| d.field == "billing" && d.fixed)
            .count(),
        10,
        "{:#?}",
        report.drift
    );
    for id in &ids {
        let b = world.record(id).await;
        assert_eq!(b.billing, Billing::Provisioned);
        assert_eq!(world.subscriptions_of(id).len(), 1);
    }
}

#[tokio::test]
async fn the_mrr_gauge_goes_down_on_cancellation() {
    let world = World::new().await;
    let mut ids = Vec::new();
    for i in 0..2 {
        let id = world.saas(&format!("Paying {i}")).await.business_id;
        let sub = world.record(&id).await.stripe_subscription_id.unwrap();
        // Activate through the simulator and let reconciliation bring the status home.
        let (_, session) = world
            .sim_call(
                Method::POST,
                "/v1/checkout/sessions",
                &[
                    ("mode", "setup"),
                    ("currency", "usd"),
                    (
                        "customer",
                        &world.record(&id).await.stripe_customer_id.unwrap(),
                    ),
                    ("success_url", "https://x.test/s"),
                ],
            )
            .await;
        let sid = session["id"].as_str().unwrap().to_owned();
        world.complete_checkout(&sid, "pm_card_visa").await;
        let completed = world
            .service
            .stripe()
            .unwrap()
            .retrieve_checkout_session(&sid)
            .await
            .unwrap();
        world
            .service
            .apply_checkout_completed(&completed)
            .await
            .unwrap();
        assert_eq!(world.subscriptions_of(&id)[0]["id"], sub.as_str());
        ids.push(id);
    }
    world.service.refresh_gauges().await.unwrap();
    assert_eq!(
        world
            .metrics
            .value("genesis_billing_mrr_usd", &["saas", "usd"]),
        10.0
    );
    world
        .service
        .takedown(&ids[0], None, genesis_billing::billing::Initiator::Cli)
        .await
        .unwrap();
    assert_eq!(
        world
            .metrics
            .value("genesis_billing_mrr_usd", &["saas", "usd"]),
        5.0
    );
    let revenue_counter = world
        .metrics
        .value("genesis_meta_agent_stripe_revenue_total_usd", &["saas"]);
    assert_eq!(
        revenue_counter, 10.0,
        "the original counter only ever adds, as before"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_is_a_dry_run_by_default_and_killed_halfway_then_rerun_cancels_each_subscription_exactly_once(
) {
    let world = World::new().await;
    for i in 0..24 {
        world.saas(&format!("Rollback {i}")).await;
    }
    let env = world.cli_env();
    let run = |args: &[&str]| common::output(&env, args);

    let dry = tokio::task::block_in_place(|| run(&["--json", "cancel-all"]));
    assert!(dry.status.success());
    let v: serde_json::Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(v["would_cancel"].as_array().unwrap().len(), 24);
    assert!(
        world
            .objects("subscription")
            .iter()
            .all(|s| s["status"] == "incomplete"),
        "a dry run cancels nothing"
    );

    // Slow cancellations, then a kill in the middle of the batch.
    world
        .sim
        .set_faults(vec![common::latency("DELETE /v1/subscriptions", 60, 0)]);
    let mut child = common::bin(&env)
        .args(["cancel-all", "--confirm", "--concurrency", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    common::eventually("some cancellations", Duration::from_secs(20), || async {
        world
            .objects("subscription")
            .iter()
            .filter(|s| s["status"] == "canceled")
            .count()
            >= 4
    })
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let halfway = world
        .objects("subscription")
        .iter()
        .filter(|s| s["status"] == "canceled")
        .count();
    assert!(halfway < 24, "killed halfway ({halfway} cancelled)");
    world.sim.set_faults(vec![]);

    let rerun = tokio::task::block_in_place(|| run(&["cancel-all", "--confirm"]));
    assert!(
        rerun.status.success(),
        "{}",
        String::from_utf8_lossy(&rerun.stderr)
    );
    let subs = world.objects("subscription");
    assert!(subs.iter().all(|s| s["status"] == "canceled"));
    let events = world.objects("event");
    for s in &subs {
        let deletions = events
            .iter()
            .filter(|e| {
                e["type"] == "customer.subscription.deleted" && e["data"]["object"]["id"] == s["id"]
            })
            .count();
        assert_eq!(deletions, 1, "{} cancelled exactly once", s["id"]);
    }
    let again = tokio::task::block_in_place(|| run(&["--json", "cancel-all"]));
    let v: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert!(v["would_cancel"].as_array().unwrap().is_empty());
    let listed = world
        .service
        .store()
        .list_businesses(&Default::default())
        .await
        .unwrap();
    assert!(listed
        .iter()
        .all(|b| b.subscription_status.as_deref() == Some("canceled")
            && b.billing == Billing::Skipped));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_runs_a_throwaway_business_through_the_lifecycle_and_refuses_live_keys() {
    let world = World::new().await;
    let env = [
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", world.sim.base_url()),
        ("DATABASE_URL", common::db_url(&world.dir)),
    ];
    let out = tokio::task::block_in_place(|| common::output(&env, &["--json", "smoke"]));
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["steps"].as_array().unwrap().len(), 5);
    assert!(
        world
            .objects("subscription")
            .iter()
            .all(|s| s["status"] == "canceled"),
        "cleaned up"
    );
    assert!(
        world
            .objects("customer")
            .iter()
            .all(|c| c["deleted"] == true),
        "cleaned up"
    );

    let live = tokio::task::block_in_place(|| {
        common::bin(&[])
            .arg("smoke")
            .env("STRIPE_API_KEY", "sk_live_smokesmoke")
            .env("DATABASE_URL", common::db_url(&world.dir))
            .output()
            .unwrap()
    });
    assert_eq!(live.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&live.stderr).contains("refuses live keys"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_pages_through_stripe_and_reconcile_never_takes_a_rolled_back_business_down() {
    let world = World::new().await;
    // More than two of Stripe's pages of 100.
    let mut ids = Vec::new();
    for i in 0..230 {
        ids.push(world.saas(&format!("Paged {i}")).await.business_id);
    }
    let env = world.cli_env();
    let run = |args: &[&str]| common::run_json(&env, args);

    // One cancelled in Stripe by a roll-back that died before recording it: no webhook endpoint is
    // registered, so reconciliation is what finds it.
    let first = world.service.rollback_page(None).await.unwrap();
    assert_eq!(first.live.len(), 100);
    assert!(first.next.is_some());
    let crashed = &first.live[0];
    world
        .service
        .cancel_in_stripe_for_rollback(crashed)
        .await
        .unwrap();
    let report = world.service.reconcile(true, &|_, _| {}).await.unwrap();
    assert!(report
        .drift
        .iter()
        .any(|d| d.business_id.as_deref() == Some(crashed.business_id.as_str()) && d.fixed));
    let b = world.record(&crashed.business_id).await;
    assert_eq!(
        b.status,
        Lifecycle::Active,
        "reconcile does not take it down"
    );
    assert_eq!(b.billing, Billing::Skipped);
    assert_eq!(b.subscription_status.as_deref(), Some("canceled"));

    // Another cancelled by a roll-back that died before recording it: the next run only records it.
    let unrecorded = &first.live[1];
    world
        .service
        .cancel_in_stripe_for_rollback(unrecorded)
        .await
        .unwrap();
    // And one cancelled in the dashboard: not ours, so cancel-all leaves it to webhooks and reconcile.
    let dashboard = &first.live[2];
    let (status, _) = world
        .sim_call(
            Method::DELETE,
            &format!("/v1/subscriptions/{}", dashboard.subscription_id),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    ids.retain(|id| *id != dashboard.business_id);

    let dry = tokio::task::block_in_place(|| run(&["--json", "cancel-all"]));
    assert_eq!(dry["would_cancel"].as_array().unwrap().len(), 227, "{dry}");
    assert_eq!(dry["would_cancel_count"], 227);
    assert_eq!(dry["records_to_update"], 1);
    let listed: std::collections::HashSet<&str> = dry["would_cancel"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["business_id"].as_str().unwrap())
        .collect();
    assert_eq!(listed.len(), 227, "each listed once");

    let done = tokio::task::block_in_place(|| run(&["--json", "cancel-all", "--confirm"]));
    assert_eq!(done["cancelled"], 227, "{done}");
    assert_eq!(done["live"], 227);
    assert_eq!(done["records_updated"], 1);
    for id in &ids {
        let b = world.record(id).await;
        assert_eq!(b.status, Lifecycle::Active);
        assert_eq!(b.billing, Billing::Skipped);
        assert_eq!(b.subscription_status.as_deref(), Some("canceled"));
        assert_eq!(world.customers_of(id).len(), 1, "customer kept");
    }
    let untouched = world.record(&dashboard.business_id).await;
    assert_eq!(untouched.billing, Billing::Provisioned);
    assert_eq!(untouched.subscription_status.as_deref(), Some("incomplete"));
    let again = tokio::task::block_in_place(|| run(&["--json", "cancel-all"]));
    assert_eq!(again["would_cancel_count"], 0, "{again}");
    assert_eq!(again["records_to_update"], 0, "{again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancellations_stripe_refuses_are_reported_change_nothing_and_a_later_dashboard_cancel_still_ends_the_business(
) {
    let world = World::new().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(world.saas(&format!("Refused {i}")).await.business_id);
    }
    let env = world.cli_env();
    world.sim.set_faults(vec![common::fault(
        stripe_sim::FaultKind::Http500,
        1.0,
        Some("DELETE /v1/subscriptions"),
    )]);
    let out = tokio::task::block_in_place(|| {
        common::output(&env, &["--json", "cancel-all", "--confirm"])
    });
    assert_eq!(out.status.code(), Some(1), "failures make the exit code 1");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cancelled"], 0, "{v}");
    assert_eq!(v["failed"], 3);
    assert_eq!(v["errors"].as_array().unwrap().len(), 3);
    world.sim.set_faults(vec![]);
    for id in &ids {
        let b = world.record(id).await;
        assert_eq!(
            b.billing,
            Billing::Provisioned,
            "nothing recorded for a refused cancel"
        );
        assert_eq!(world.subscriptions_of(id)[0]["status"], "incomplete");
    }

    // Cancelled in the dashboard afterwards: Stripe's decision, not the refused roll-back's.
    let sub = world.record(&ids[0]).await.stripe_subscription_id.unwrap();
    assert!(!world
        .service
        .cancelled_by_rollback(&ids[0], &sub)
        .await
        .unwrap());
    world
        .sim_call(Method::DELETE, &format!("/v1/subscriptions/{sub}"), &[])
        .await;
    world.service.reconcile(true, &|_, _| {}).await.unwrap();
    let b = world.record(&ids[0]).await;
    assert_eq!(b.status, Lifecycle::TakenDown);
    assert_eq!(b.takedown_reason.as_deref(), Some("subscription_cancelled"));
}

#[tokio::test]
async fn a_rerun_finishes_a_roll_back_record_cut_between_its_status_and_its_billing_write() {
    let world = World::new().await;
    let id = world.saas("Half written").await.business_id;
    let page = world.service.rollback_page(None).await.unwrap();
    let s = page
        .live
        .iter()
        .find(|s| s.business_id == id)
        .expect("the business's live subscription")
        .clone();
    world
        .service
        .cancel_in_stripe_for_rollback(&s)
        .await
        .unwrap();
    // What a kill between the two writes of the record leaves: the status, not yet the billing.
    world
        .service
        .store()
        .set_subscription_status(
            &id,
            &s.subscription_id,
            "canceled",
            genesis_billing::store::now(),
        )
        .await
        .unwrap();
    let half = world.record(&id).await;
    assert_ne!(half.billing, Billing::Skipped);

    let rerun = world.service.rollback_page(None).await.unwrap();
    assert!(rerun.live.is_empty(), "nothing left to cancel in Stripe");
    assert_eq!(rerun.records_to_update.len(), 1, "the half-written record");
    world
        .service
        .record_rollback(&rerun.records_to_update[0])
        .await
        .unwrap();
    let b = world.record(&id).await;
    assert_eq!(
        (b.status, b.billing, b.subscription_status.as_deref()),
        (Lifecycle::Active, Billing::Skipped, Some("canceled"))
    );
}

#[tokio::test]
async fn reconcile_walks_a_fleet_larger_than_a_page_checking_each_business_once() {
    let world = World::new().await;
    let provisioned = world.saas("Provisioned").await.business_id;
    let template = world.record(&provisioned).await;
    // 2,500 imported businesses: one in ten records a subscription Stripe never had.
    let fleet: Vec<genesis_billing::business::Business> = (0..2_500)
        .map(|i| {
            let mut b = template.clone();
            b.business_id = format!("walk-{i:05}");
            b.created_at = 1_000 + i as i64 / 4;
            b.stripe_customer_id = None;
            b.stripe_subscription_id = (i % 10 == 0).then(|| format!("sub_never_{i}"));
            b.billing = if i % 10 == 0 {
                Billing::Provisioned
            } else {
                Billing::Skipped
            };
            b.billing_error = None;
            b
        })
        .collect();
    for chunk in fleet.chunks(500) {
        world
            .service
            .store()
            .insert_businesses(chunk)
            .await
            .unwrap();
    }
    let seen = std::sync::Mutex::new(Vec::new());
    let report = world
        .service
        .reconcile(false, &|done, total| {
            seen.lock().unwrap().push((done, total))
        })
        .await
        .unwrap();
    assert_eq!(report.businesses, 2_501);
    let seen = seen.into_inner().unwrap();
    assert_eq!(seen.len(), 2_501);
    assert_eq!(seen.last(), Some(&(2_501, 2_501)));
    let mut unknown: Vec<&str> = report
        .drift
        .iter()
        .filter(|d| d.field == "subscription_id")
        .map(|d| d.business_id.as_deref().unwrap())
        .collect();
    assert_eq!(report.drift.len(), unknown.len(), "{:#?}", report.drift);
    unknown.sort_unstable();
    let mut expected: Vec<String> = (0..2_500)
        .filter(|i| i % 10 == 0)
        .map(|i| format!("walk-{i:05}"))
        .collect();
    expected.sort_unstable();
    assert_eq!(unknown, expected, "each business checked exactly once");
}

#[tokio::test]
async fn reconcile_flags_each_customer_no_business_records_once_in_id_order() {
    let world = World::new().await;
    let recorded = world.saas("Recorded").await.business_id;
    let mut orphans = Vec::new();
    for metadata in [
        vec![("metadata[business_id]", "no-such-business")],
        vec![("metadata[business_id]", recorded.as_str())],
        vec![("metadata[autonomous]", "true")],
    ] {
        let (status, c) = world
            .sim_call(Method::POST, "/v1/customers", &metadata)
            .await;
        assert_eq!(status, 200);
        orphans.push(c["id"].as_str().unwrap().to_owned());
    }
    let (status, _) = world
        .sim_call(Method::POST, "/v1/customers", &[("metadata[other]", "x")])
        .await;
    assert_eq!(status, 200, "a customer that is not ours");
    orphans.sort();

    let report = world.service.reconcile(false, &|_, _| {}).await.unwrap();
    let flagged: Vec<&str> = report
        .drift
        .iter()
        .filter(|d| d.field == "orphan_customer")
        .map(|d| d.stripe.as_deref().unwrap())
        .collect();
    assert_eq!(flagged, orphans, "{:#?}", report.drift);
    assert_eq!(report.drift.len(), 3, "{:#?}", report.drift);
    assert_eq!(report.stripe_customers, 5);
    let named = report
        .drift
        .iter()
        .find(|d| d.business_id.as_deref() == Some(recorded.as_str()))
        .unwrap();
    assert_eq!(
        named.field, "orphan_customer",
        "the business records another customer"
    );
}
