//! Takedown outcomes against the simulator (SPEC §1.3).

use crate::common;

use common::{fault, World};
use genesis_billing::business::Business;
use reqwest::Method;
use stripe_sim::FaultKind;

fn sub_status(world: &World, b: &Business) -> String {
    world.subscriptions_of(&b.business_id)[0]["status"]
        .as_str()
        .unwrap()
        .to_owned()
}

fn customer_deleted(world: &World, b: &Business) -> bool {
    let id = b.stripe_customer_id.as_deref().unwrap();
    world
        .objects("customer")
        .iter()
        .any(|c| c["id"] == id && c["deleted"] == true)
}

#[tokio::test]
async fn takedown_cancels_immediately_deletes_the_customer_and_is_idempotent() {
    let world = World::new().await;
    let b = world.saas("Doomed").await;
    let s = world
        .service
        .takedown(
            &b.business_id,
            Some("test"),
            genesis_billing::billing::Initiator::Cli,
        )
        .await
        .unwrap();
    assert_eq!(
        (s.status.as_str(), s.stripe.as_str(), s.customer_deleted),
        ("success", "cancelled", Some(true))
    );
    assert_eq!(s.reason, "test");
    assert_eq!(sub_status(&world, &b), "canceled");
    let sub = &world.subscriptions_of(&b.business_id)[0];
    assert!(
        sub["canceled_at"].is_i64(),
        "cancelled now, not at period end"
    );
    assert_ne!(sub["cancel_at_period_end"], true);
    assert!(customer_deleted(&world, &b));
    let record = world.record(&b.business_id).await;
    assert_eq!(record.subscription_status.as_deref(), Some("canceled"));
    assert_eq!(record.takedown_outcome.as_deref(), Some("cancelled"));

    let before = world.stripe_requests();
    let again = world
        .service
        .takedown(
            &b.business_id,
            None,
            genesis_billing::billing::Initiator::Cli,
        )
        .await
        .unwrap();
    assert_eq!(
        (again.status.as_str(), again.stripe.as_str()),
        ("already_taken_down", "already_taken_down")
    );
    assert_eq!(
        world.stripe_requests(),
        before,
        "a second takedown calls nothing"
    );
}

#[tokio::test]
async fn an_unknown_business_is_not_found_and_nothing_is_called() {
    let world = World::new().await;
    let before = world.stripe_requests();
    let s = world
        .service
        .takedown(
            "no-such-business",
            None,
            genesis_billing::billing::Initiator::Cli,
        )
        .await
        .unwrap();
    assert_eq!(
        (s.status.as_str(), s.stripe.as_str()),
        ("not_found", "not_found")
    );
    assert_eq!(world.stripe_requests(), before);
}

#[tokio::test]
async fn a_subscription_already_cancelled_in_stripe_counts_as_cancelled() {
    let world = World::new().await;
    let b = world.saas("Gone already").await;
    let sub = b.stripe_subscription_id.clone().unwrap();
    world
        .delete_in_stripe(&format!("/v1/subscriptions/{sub}"))
        .await;
    let s = world
        .service
        .takedown(
            &b.business_id,
            None,
            genesis_billing::billing::Initiator::Cli,
        )
        .await
        .unwrap();
    assert_eq!(
        (s.status.as_str(), s.stripe.as_str()),
        ("success", "cancelled")
    );
    assert!(customer_deleted(&world, &b));
}

#[tokio::test]
async fn a_stripe_failure_is_reported_recorded_and_finished_by_resume() {
    let world = World::new().await;
    let b = world.saas("Stuck").await;
    world.sim.set_faults(vec![fault(
        FaultKind::Http500,
        1.0,
        Some("DELETE /v1/subscriptions"),
    )]);
    let s = world
        .service
        .takedown(
            &b.business_id,
            None,
            genesis_billing::billing::Initiator::Cli,
        )
        .await
        .unwrap();
    assert_eq!(s.status, "partial");
    assert!(s.stripe.starts_with("error:"), "{}", s.stripe);
    assert_eq!(sub_status(&world, &b), "incomplete", "still live in Stripe");
    let record = world.record(&b.business_id).await;
    assert_eq!(
        record.status,
        genesis_billing::business::Lifecycle::TakenDown,
        "takedown completes locally"
    );
    assert_eq!(record.takedown_outcome, None, "left open for a retry");

    world.sim.set_faults(vec![]);
    let report = world.service.resume().await.unwrap();
    assert_eq!(report.takedowns_finished, vec![b.business_id.clone()]);
    assert_eq!(sub_status(&world, &b), "canceled");
    assert!(customer_deleted(&world, &b));
}

#[tokio::test]
async fn a_customer_delete_failure_after_a_cancel_is_reported_not_hidden() {
    let world = World::new().await;
    let b = world.saas("Sticky customer").await;
    world.sim.set_faults(vec![fault(
        FaultKind::Http500,
        1.0,
        Some("DELETE /v1/customers"),
    )]);
    let s = world
        .service
        .takedown(
            &b.business_id,
            None,
            genesis_billing::billing::Initiator::Cli,
        )
        .await
        .unwrap();
    assert_eq!(
        (s.status.as_str(), s.stripe.as_str(), s.customer_deleted),
        ("partial", "cancelled", Some(false))
    );
    assert!(s.customer_delete_error.as_deref().unwrap().contains("500"));
    assert_eq!(sub_status(&world, &b), "canceled");
    world.sim.set_faults(vec![]);
    world.service.resume().await.unwrap();
    assert!(
        customer_deleted(&world, &b),
        "resume deletes the customer later"
    );
}

#[tokio::test]
async fn an_imported_legacy_payment_intent_is_cancelled_as_cancelled_legacy() {
    let world = World::new().await;
    let (status, pi) = world
        .sim_call(
            Method::POST,
            "/v1/payment_intents",
            &[("amount", "500"), ("currency", "usd")],
        )
        .await;
    assert_eq!(status, 200, "{pi}");
    let pi_id = pi["id"].as_str().unwrap();
    let export = serde_json::json!({
        "legacy-1": {"business_name": "Old One", "business_type": "saas", "stripe_payment_intent_id": pi_id, "monthly_price_usd": 5.0}
    });
    let report = world
        .service
        .import(export.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(report.legacy_payment_intents, 1);
    let s = world
        .service
        .takedown("legacy-1", None, genesis_billing::billing::Initiator::Cli)
        .await
        .unwrap();
    assert_eq!(
        (s.status.as_str(), s.stripe.as_str()),
        ("success", "cancelled_legacy")
    );
    let pis = world.objects("payment_intent");
    let stored = pis.iter().find(|p| p["id"] == pi_id).unwrap();
    assert_eq!(stored["status"], "canceled");
    assert_eq!(stored["cancellation_reason"], "abandoned");
}

#[tokio::test]
async fn with_payments_disabled_takedown_is_skipped_and_finished_once_payments_return() {
    let world = World::new().await;
    let b = world.saas("Kill switch").await;
    let off = world
        .second_service_with(&[("ENABLE_PAYMENTS", "false")])
        .await;
    let s = off
        .takedown(
            &b.business_id,
            None,
            genesis_billing::billing::Initiator::Cli,
        )
        .await
        .unwrap();
    assert_eq!(
        (s.status.as_str(), s.stripe.as_str()),
        ("success", "skipped")
    );
    assert!(
        s.note.is_some(),
        "the operator is told the Stripe side is pending"
    );
    assert_eq!(sub_status(&world, &b), "incomplete");
    world.service.resume().await.unwrap();
    assert_eq!(
        sub_status(&world, &b),
        "canceled",
        "nothing is left billing once payments are back"
    );
}

#[tokio::test]
async fn a_bad_import_is_refused_whole_with_the_entry_named() {
    let world = World::new().await;
    let export = serde_json::json!({
        "good": {"business_name": "Fine"},
        "bad": {"business_name": "Broken", "subscription_status": "splendid"}
    });
    let err = world
        .service
        .import(export.to_string().as_bytes())
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"bad\"") && err.contains("subscription_status"),
        "{err}"
    );
    assert!(
        world
            .service
            .store()
            .get_business("good")
            .await
            .unwrap()
            .is_none(),
        "nothing half-imported"
    );
    let dup = serde_json::json!({"x1": {"business_name": "One"}});
    world
        .service
        .import(dup.to_string().as_bytes())
        .await
        .unwrap();
    let again =
        serde_json::json!({"x2": {"business_name": "Two"}, "x1": {"business_name": "One again"}});
    assert!(world
        .service
        .import(again.to_string().as_bytes())
        .await
        .is_err());
    assert!(
        world
            .service
            .store()
            .get_business("x2")
            .await
            .unwrap()
            .is_none(),
        "a duplicate id rolls the whole file back"
    );
}
