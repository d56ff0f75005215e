//! Cards that need authentication (`pm_card_authenticationRequired`) on renewals and first invoices, the hosted
//! invoice page's authentication step, and `customer.subscription.trial_will_end` on the simulated clock.

use crate::common;

use common::Sim;
use serde_json::{json, Value};

const DAY: i64 = 86_400;
const START: i64 = 1_767_225_600;

async fn clock(sim: &Sim) -> String {
    sim.post(
        "/v1/test_helpers/test_clocks",
        &[("frozen_time", &START.to_string())],
    )
    .await
    .id()
}

async fn advance(sim: &Sim, clock: &str, to: i64) {
    let r = sim
        .post(
            &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
            &[("frozen_time", &to.to_string())],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
}

fn events_for(sim: &Sim, kind: &str, id: &str) -> Vec<Value> {
    sim.events_of(kind)
        .into_iter()
        .filter(|e| e["data"]["object"]["id"] == id)
        .collect()
}

async fn authenticate(sim: &Sim, invoice: &str) -> common::Resp {
    sim.sim(&format!("/_sim/invoices/{invoice}/authenticate"), json!({}))
        .await
}

#[tokio::test]
async fn a_renewal_needing_authentication_waits_for_the_customer_then_pays() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(1500).await;
    let clock = clock(&sim).await;
    let cus = sim.customer(&[("test_clock", &clock)]).await;
    let sub = sim
        .subscribe(&cus, &price, &[("default_payment_method", "pm_card_visa")])
        .await;
    assert_eq!(sub.body["status"], "active");
    // Attaching the card works: it is only its charges that need authentication.
    let switch = sim
        .post(
            &format!("/v1/subscriptions/{}", sub.id()),
            &[("default_payment_method", "pm_card_authenticationRequired")],
        )
        .await;
    assert_eq!(switch.status, 200, "{:?}", switch.body);
    let pm = switch.body["default_payment_method"]
        .as_str()
        .unwrap()
        .to_owned();
    let card = sim.get(&format!("/v1/payment_methods/{pm}"), &[]).await;
    assert_eq!(card.body["card"]["last4"], "3184");
    assert_eq!(card.body["customer"], cus.as_str());

    let renew = START + 31 * DAY + 60;
    advance(&sim, &clock, renew).await;
    assert_eq!(sim.status_of(&sub.id()).await, "past_due");
    let open = sim
        .get(
            "/v1/invoices",
            &[("subscription", &sub.id()), ("status", "open")],
        )
        .await;
    let inv = open.body["data"][0].clone();
    let inv_id = inv["id"].as_str().unwrap().to_owned();
    assert_eq!(inv["status"], "open");
    assert_eq!(inv["billing_reason"], "subscription_cycle");
    let action = events_for(&sim, "invoice.payment_action_required", &inv_id);
    assert_eq!(action.len(), 1);
    let hosted = action[0]["data"]["object"]["hosted_invoice_url"]
        .as_str()
        .unwrap();
    assert!(
        hosted.starts_with(&sim.base) && hosted.contains(&inv_id),
        "{hosted}"
    );
    assert_eq!(events_for(&sim, "invoice.payment_failed", &inv_id).len(), 1);
    let payments = sim
        .get(
            &format!("/v1/invoices/{inv_id}"),
            &[("expand[]", "payments")],
        )
        .await;
    let pi_id = payments.body["payments"]["data"][0]["payment"]["payment_intent"]
        .as_str()
        .unwrap()
        .to_owned();
    let pi = sim.get(&format!("/v1/payment_intents/{pi_id}"), &[]).await;
    assert_eq!(pi.body["status"], "requires_action");
    assert_eq!(pi.body["next_action"]["type"], "use_stripe_sdk");
    assert_eq!(
        pi.body["latest_charge"],
        Value::Null,
        "no charge before authentication"
    );
    assert_eq!(
        events_for(&sim, "payment_intent.requires_action", &pi_id).len(),
        1
    );

    let before = sim.event_types().len();
    let done = authenticate(&sim, &inv_id).await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(done.body["status"], "paid");
    assert_eq!(done.body["amount_paid"], 1500);
    assert_eq!(sim.status_of(&sub.id()).await, "active");
    let pi = sim.get(&format!("/v1/payment_intents/{pi_id}"), &[]).await;
    assert_eq!(pi.body["status"], "succeeded");
    assert_eq!(pi.body["next_action"], Value::Null);
    let new_events = sim.event_types()[before..].to_vec();
    for t in [
        "charge.succeeded",
        "payment_intent.succeeded",
        "invoice.paid",
        "invoice.payment_succeeded",
        "customer.subscription.updated",
    ] {
        assert!(
            new_events.iter().any(|e| e == t),
            "{t} missing from {new_events:?}"
        );
    }
    let updated = events_for(&sim, "customer.subscription.updated", &sub.id());
    let last = updated.last().unwrap();
    assert_eq!(last["data"]["previous_attributes"]["status"], "past_due");
    assert_eq!(last["data"]["object"]["status"], "active");
    // The event carries the simulated time of the customer's clock.
    assert_eq!(last["created"], renew);

    let again = authenticate(&sim, &inv_id).await;
    assert_eq!(again.status, 400, "{:?}", again.body);
    assert_eq!(again.error_code(), "invoice_not_open");
    assert_eq!(authenticate(&sim, "in_missing").await.status, 404);
    // A retry is no longer scheduled for the paid invoice.
    advance(&sim, &clock, renew + 8 * DAY).await;
    assert_eq!(sim.status_of(&sub.id()).await, "active");
}

#[tokio::test]
async fn a_first_invoice_needing_authentication_leaves_the_subscription_incomplete() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(900).await;
    let cus = sim.customer(&[]).await;
    let sub = sim
        .subscribe(
            &cus,
            &price,
            &[("default_payment_method", "pm_card_authenticationRequired")],
        )
        .await;
    assert_eq!(sub.status, 200, "{:?}", sub.body);
    assert_eq!(sub.body["status"], "incomplete");
    let inv = sub.body["latest_invoice"].as_str().unwrap().to_owned();
    let i = sim.get(&format!("/v1/invoices/{inv}"), &[]).await;
    assert_eq!(i.body["status"], "open");
    assert_eq!(
        events_for(&sim, "invoice.payment_action_required", &inv).len(),
        1
    );
    // Paying through the API asks for the customer's action, as Stripe does.
    let pay = sim.post(&format!("/v1/invoices/{inv}/pay"), &[]).await;
    assert_eq!(pay.status, 402, "{:?}", pay.body);
    assert_eq!(pay.error_code(), "invoice_payment_intent_requires_action");
    assert_eq!(
        pay.body["error"]["payment_intent"]["status"],
        "requires_action"
    );
    let done = authenticate(&sim, &inv).await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(sim.status_of(&sub.id()).await, "active");
    let updated = events_for(&sim, "customer.subscription.updated", &sub.id());
    assert_eq!(
        updated.last().unwrap()["data"]["previous_attributes"]["status"],
        "incomplete"
    );
}

#[tokio::test]
async fn authentication_is_refused_for_a_payment_that_was_declined() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(900).await;
    let cus = sim.customer_with_card("pm_card_chargeCustomerFail").await;
    let sub = sim.subscribe(&cus, &price, &[]).await;
    assert_eq!(sub.body["status"], "incomplete");
    let inv = sub.body["latest_invoice"].as_str().unwrap().to_owned();
    assert!(events_for(&sim, "invoice.payment_action_required", &inv).is_empty());
    let r = authenticate(&sim, &inv).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_code(), "payment_intent_unexpected_state");
    assert_eq!(sim.status_of(&sub.id()).await, "incomplete");
    // Hostile ids are a clean 404, not a crash.
    let odd = authenticate(&sim, "in_%3Cscript%3E").await;
    assert_eq!(odd.status, 404);
}

#[tokio::test]
async fn payment_intents_confirmed_on_session_wait_in_requires_action() {
    let sim = Sim::start().await;
    let cus = sim.customer(&[]).await;
    let att = sim
        .post(
            "/v1/payment_methods/pm_card_authenticationRequired/attach",
            &[("customer", &cus)],
        )
        .await;
    assert_eq!(att.status, 200, "{:?}", att.body);
    let pm = att.id();
    let pi = sim
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "800"),
                ("currency", "usd"),
                ("customer", &cus),
                ("payment_method", &pm),
                ("confirm", "true"),
            ],
        )
        .await;
    assert_eq!(pi.status, 200, "{:?}", pi.body);
    assert_eq!(pi.body["status"], "requires_action");
    let off = sim
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "800"),
                ("currency", "usd"),
                ("customer", &cus),
                ("payment_method", &pm),
                ("confirm", "true"),
                ("off_session", "true"),
            ],
        )
        .await;
    assert_eq!(off.status, 402, "{:?}", off.body);
    assert_eq!(off.error_code(), "authentication_required");
    assert_eq!(off.body["error"]["decline_code"], "authentication_required");
}

#[tokio::test]
async fn retries_of_a_payment_needing_authentication_ask_again_then_dunning_applies() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(1500).await;
    let clock = clock(&sim).await;
    let cus = sim.customer(&[("test_clock", &clock)]).await;
    let sub = sim
        .subscribe(&cus, &price, &[("default_payment_method", "pm_card_visa")])
        .await;
    sim.post(
        &format!("/v1/subscriptions/{}", sub.id()),
        &[("default_payment_method", "pm_card_authenticationRequired")],
    )
    .await;
    let renew = START + 31 * DAY + 60;
    advance(&sim, &clock, renew).await;
    advance(&sim, &clock, renew + 2 * DAY).await;
    assert_eq!(sim.status_of(&sub.id()).await, "past_due");
    let asked = sim.events_of("invoice.payment_action_required");
    assert_eq!(asked.len(), 2, "the first retry asked again");
    advance(&sim, &clock, renew + 8 * DAY).await;
    let s = sim
        .get(&format!("/v1/subscriptions/{}", sub.id()), &[])
        .await;
    assert_eq!(s.body["status"], "canceled");
    assert_eq!(s.body["cancellation_details"]["reason"], "payment_failed");
}

#[tokio::test]
async fn trial_will_end_is_sent_once_three_days_before_the_trial_ends() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(1000).await;
    let clock = clock(&sim).await;
    let cus = sim
        .customer(&[
            ("test_clock", &clock),
            ("payment_method", "pm_card_visa"),
            ("invoice_settings[default_payment_method]", "pm_card_visa"),
        ])
        .await;
    let sub = sim
        .subscribe(&cus, &price, &[("trial_period_days", "14")])
        .await;
    assert_eq!(sub.body["status"], "trialing");
    let end = sub.body["trial_end"].as_i64().unwrap();
    assert_eq!(end, START + 14 * DAY);
    let kind = "customer.subscription.trial_will_end";
    assert!(events_for(&sim, kind, &sub.id()).is_empty());
    advance(&sim, &clock, end - 3 * DAY - 1).await;
    assert!(
        events_for(&sim, kind, &sub.id()).is_empty(),
        "not before three days"
    );
    advance(&sim, &clock, end - 3 * DAY).await;
    let warned = events_for(&sim, kind, &sub.id());
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0]["created"], end - 3 * DAY);
    assert_eq!(warned[0]["data"]["object"]["status"], "trialing");
    assert_eq!(warned[0]["data"]["object"]["trial_end"], end);
    advance(&sim, &clock, end - DAY).await;
    advance(&sim, &clock, end + DAY).await;
    assert_eq!(events_for(&sim, kind, &sub.id()).len(), 1, "only once");
    assert_eq!(sim.status_of(&sub.id()).await, "active");
}

#[tokio::test]
async fn trial_will_end_goes_out_at_once_for_a_trial_of_three_days_or_less() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(1000).await;
    let clock = clock(&sim).await;
    let cus = sim
        .customer(&[
            ("test_clock", &clock),
            ("payment_method", "pm_card_visa"),
            ("invoice_settings[default_payment_method]", "pm_card_visa"),
        ])
        .await;
    let kind = "customer.subscription.trial_will_end";
    let short = sim
        .subscribe(&cus, &price, &[("trial_period_days", "2")])
        .await;
    let warned = events_for(&sim, kind, &short.id());
    assert_eq!(warned.len(), 1);
    assert_eq!(warned[0]["created"], START);
    advance(&sim, &clock, START + 3 * DAY).await;
    assert_eq!(events_for(&sim, kind, &short.id()).len(), 1);
    assert_eq!(sim.status_of(&short.id()).await, "active");

    // A trial ended now warns too; a trial end moved later warns again for the new end.
    let now = START + 3 * DAY;
    let long = sim
        .subscribe(&cus, &price, &[("trial_period_days", "30")])
        .await;
    assert!(events_for(&sim, kind, &long.id()).is_empty());
    let moved = sim
        .post(
            &format!("/v1/subscriptions/{}", long.id()),
            &[("trial_end", &(now + DAY).to_string())],
        )
        .await;
    assert_eq!(moved.status, 200, "{:?}", moved.body);
    assert_eq!(
        events_for(&sim, kind, &long.id()).len(),
        1,
        "a day left: at once"
    );
    let later = now + 10 * DAY;
    sim.post(
        &format!("/v1/subscriptions/{}", long.id()),
        &[("trial_end", &later.to_string())],
    )
    .await;
    advance(&sim, &clock, later - 3 * DAY).await;
    let warned = events_for(&sim, kind, &long.id());
    assert_eq!(warned.len(), 2);
    assert_eq!(warned[1]["created"], later - 3 * DAY);
    let ended = sim
        .post(
            &format!("/v1/subscriptions/{}", long.id()),
            &[("trial_end", "now")],
        )
        .await;
    assert_eq!(ended.status, 200, "{:?}", ended.body);
    assert_eq!(sim.status_of(&long.id()).await, "active");
    assert_eq!(
        events_for(&sim, kind, &long.id()).len(),
        3,
        "trial_end=now warns"
    );
}
