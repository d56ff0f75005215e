//! Payment collection through Checkout (SPEC §1.2), with the simulator delivering real signed webhooks.

use crate::common;

use std::time::Duration;

use common::{eventually, wired, World};
use genesis_billing::business::{Billing, Lifecycle};
use reqwest::Method;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn a_completed_checkout_pays_the_first_invoice_and_makes_the_card_the_default() {
    let (world, app) = wired(World::new().await).await;
    let id = app.create("Pays", "saas").await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    world.wait_subscription_status(&id, "active").await;
    let b = world.record(&id).await;
    let customer = world
        .objects("customer")
        .into_iter()
        .find(|c| c["id"] == b.stripe_customer_id.as_deref().unwrap())
        .unwrap();
    let pm = customer["invoice_settings"]["default_payment_method"]
        .as_str()
        .expect("customer default set")
        .to_owned();
    let sub = &world.subscriptions_of(&id)[0];
    assert_eq!(
        sub["default_payment_method"],
        pm.as_str(),
        "the subscription's default too"
    );
    let invoice = world
        .objects("invoice")
        .into_iter()
        .find(|i| i["id"] == sub["latest_invoice"])
        .unwrap();
    assert_eq!(invoice["status"], "paid");
}

#[tokio::test]
async fn an_unpaid_subscription_expires_after_23_hours_and_a_later_card_starts_a_new_one_that_charges_at_once(
) {
    let (world, app) = wired(World::new().await).await;
    let id = app.create("Late payer", "saas").await;
    let first = world.record(&id).await.stripe_subscription_id.unwrap();
    world
        .sim_control("/_sim/clock/advance", json!({"seconds": 24 * 3600}))
        .await;
    eventually("expired", WAIT, || async {
        let b = world.record(&id).await;
        b.subscription_status.as_deref() == Some("incomplete_expired")
            && b.billing == Billing::Expired
    })
    .await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    eventually("a new active subscription", WAIT, || async {
        let b = world.record(&id).await;
        b.stripe_subscription_id.as_deref() != Some(first.as_str())
            && b.subscription_status.as_deref() == Some("active")
    })
    .await;
    let b = world.record(&id).await;
    assert_eq!((b.billing, b.generation), (Billing::Provisioned, 1));
    let subs = world.subscriptions_of(&id);
    assert_eq!(subs.len(), 2);
    assert_eq!(
        subs.iter().filter(|s| s["status"] == "active").count(),
        1,
        "one live subscription"
    );
}

#[tokio::test]
async fn a_trial_cancelled_for_a_missing_card_waits_for_one_then_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, "default_type = \"saas\"\n[prices.saas]\nlookup_key = \"trial_cancel\"\namount_cents = 900\ntrial_days = 7\nmissing_payment_method = \"cancel\"\n").unwrap();
    let world = World::with_env(&[("GENESIS_BILLING_CATALOG", catalog.to_str().unwrap())]).await;
    let (world, app) = wired(world).await;
    let id = app.create("Trialist", "saas").await;
    assert_eq!(
        world.record(&id).await.subscription_status.as_deref(),
        Some("trialing")
    );
    world
        .sim_control("/_sim/clock/advance", json!({"seconds": 8 * 86_400}))
        .await;
    eventually("trial ended without a card", WAIT, || async {
        let b = world.record(&id).await;
        b.subscription_status.as_deref() == Some("canceled") && b.billing == Billing::Expired
    })
    .await;
    assert_eq!(
        world.record(&id).await.status,
        Lifecycle::Active,
        "waiting for a card, not taken down"
    );
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    eventually("a replacement subscription", WAIT, || async {
        let b = world.record(&id).await;
        b.generation == 1 && b.subscription_status.as_deref() == Some("active")
    })
    .await;
}

#[tokio::test]
async fn a_trialing_subscription_just_continues_with_the_new_default_card() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, "default_type = \"saas\"\n[prices.saas]\nlookup_key = \"trial_keep\"\namount_cents = 900\ntrial_days = 14\n").unwrap();
    let world = World::with_env(&[("GENESIS_BILLING_CATALOG", catalog.to_str().unwrap())]).await;
    let (world, app) = wired(world).await;
    let id = app.create("Trial with card", "saas").await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    eventually("the checkout to be applied", WAIT, || async {
        world
            .history(&id)
            .await
            .contains(&"checkout_completed".to_owned())
    })
    .await;
    let b = world.record(&id).await;
    assert_eq!(
        (b.subscription_status.as_deref(), b.generation),
        (Some("trialing"), 0)
    );
    assert!(world.subscriptions_of(&id)[0]["default_payment_method"].is_string());
}

#[tokio::test]
async fn a_declined_card_changes_nothing_but_is_recorded() {
    let (world, app) = wired(World::new().await).await;
    let id = app.create("Declined", "saas").await;
    // Refused by Checkout itself: the session stays open and no event is sent.
    let session = app.checkout(&id).await;
    assert_eq!(
        world
            .complete_checkout(&session, "pm_card_visa_chargeDeclined")
            .await,
        402
    );
    // Accepted by Checkout, then refused when the first invoice is charged.
    assert_eq!(
        world
            .complete_checkout(&session, "pm_card_chargeCustomerFail")
            .await,
        200
    );
    eventually("the decline to be recorded", WAIT, || async {
        world
            .history(&id)
            .await
            .contains(&"payment_declined".to_owned())
    })
    .await;
    let b = world.record(&id).await;
    assert_eq!(
        (b.subscription_status.as_deref(), b.billing, b.status),
        (Some("incomplete"), Billing::Provisioned, Lifecycle::Active)
    );
}

#[tokio::test]
async fn an_expired_checkout_session_changes_nothing_but_is_recorded() {
    let (world, app) = wired(World::new().await).await;
    let id = app.create("Abandoned", "saas").await;
    let session = app.checkout(&id).await;
    assert_eq!(
        world
            .sim_call(
                Method::POST,
                &format!("/v1/checkout/sessions/{session}/expire"),
                &[]
            )
            .await
            .0,
        200
    );
    eventually("the expiry to be recorded", WAIT, || async {
        world
            .history(&id)
            .await
            .contains(&"checkout_expired".to_owned())
    })
    .await;
    assert_eq!(
        world.record(&id).await.subscription_status.as_deref(),
        Some("incomplete")
    );
}
