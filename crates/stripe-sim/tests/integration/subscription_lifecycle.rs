//! The subscription state machine: payment behaviours, trials, invoices, renewals, expiry and dunning.

use crate::common;

use common::Sim;
use serde_json::json;

const DAY: i64 = 86_400;

#[tokio::test]
async fn default_incomplete_stays_incomplete_until_its_first_invoice_is_paid() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer(&[]).await;
    let r = sim
        .subscribe(
            &cus,
            &price,
            &[
                ("payment_behavior", "default_incomplete"),
                (
                    "payment_settings[save_default_payment_method]",
                    "on_subscription",
                ),
                ("expand[]", "latest_invoice.payments"),
                ("expand[]", "latest_invoice.confirmation_secret"),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "incomplete");
    assert!(
        r.body.get("current_period_end").is_none(),
        "endive has no subscription-level periods"
    );
    assert!(r.body["items"]["data"][0]["current_period_end"]
        .as_i64()
        .is_some());
    let inv = &r.body["latest_invoice"];
    assert_eq!(inv["status"], "open");
    assert!(inv.get("payment_intent").is_none());
    assert_eq!(
        inv["parent"]["subscription_details"]["subscription"],
        r.id()
    );
    assert_eq!(
        inv["payments"]["data"][0]["payment"]["type"],
        "payment_intent"
    );
    assert!(inv["confirmation_secret"]["client_secret"]
        .as_str()
        .unwrap()
        .contains("_secret_"));
    let inv_id = inv["id"].as_str().unwrap().to_owned();

    let paid = sim
        .post(
            &format!("/v1/invoices/{inv_id}/pay"),
            &[("payment_method", "pm_card_visa")],
        )
        .await;
    assert_eq!(paid.status, 200, "{:?}", paid.body);
    assert_eq!(paid.body["status"], "paid");
    let sub = sim.get(&format!("/v1/subscriptions/{}", r.id()), &[]).await;
    assert_eq!(sub.body["status"], "active");
    assert!(
        sub.body["default_payment_method"]
            .as_str()
            .unwrap()
            .starts_with("pm_"),
        "saved on the subscription"
    );
    let updated = sim.events_of("customer.subscription.updated");
    let last = updated.last().unwrap();
    assert_eq!(last["data"]["previous_attributes"]["status"], "incomplete");
    let types = sim.event_types();
    for t in [
        "invoice.paid",
        "invoice.payment_succeeded",
        "payment_intent.succeeded",
        "customer.subscription.created",
    ] {
        assert!(types.contains(&t.to_owned()), "missing {t}");
    }
}

#[tokio::test]
async fn paying_with_a_failing_card_is_a_402_and_the_invoice_stays_open() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer(&[]).await;
    let r = sim
        .subscribe(&cus, &price, &[("payment_behavior", "default_incomplete")])
        .await;
    let inv = r.body["latest_invoice"].as_str().unwrap().to_owned();
    let fail = sim
        .post(
            &format!("/v1/invoices/{inv}/pay"),
            &[("payment_method", "pm_card_chargeCustomerFail")],
        )
        .await;
    assert_eq!(fail.status, 402);
    assert_eq!(fail.body["error"]["type"], "card_error");
    assert_eq!(fail.body["error"]["decline_code"], "generic_decline");
    let inv_now = sim.get(&format!("/v1/invoices/{inv}"), &[]).await;
    assert_eq!(inv_now.body["status"], "open");
    assert_eq!(inv_now.body["attempt_count"], 1);
    assert_eq!(sim.status_of(&r.id()).await, "incomplete");
    assert_eq!(sim.events_of("invoice.payment_failed").len(), 1);
}

#[tokio::test]
async fn an_unpaid_incomplete_subscription_expires_after_23_hours() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer(&[]).await;
    let r = sim
        .subscribe(&cus, &price, &[("payment_behavior", "default_incomplete")])
        .await;
    sim.sim("/_sim/clock/advance", json!({"seconds": 22 * 3600}))
        .await;
    assert_eq!(sim.status_of(&r.id()).await, "incomplete");
    let adv = sim
        .sim("/_sim/clock/advance", json!({"seconds": 3600 + 1}))
        .await;
    assert_eq!(adv.status, 200);
    assert_eq!(sim.status_of(&r.id()).await, "incomplete_expired");
    let inv = sim
        .get(
            &format!(
                "/v1/invoices/{}",
                r.body["latest_invoice"].as_str().unwrap()
            ),
            &[],
        )
        .await;
    assert_eq!(inv.body["status"], "void");
    let pay = sim
        .post(
            &format!("/v1/invoices/{}/pay", inv.id()),
            &[("payment_method", "pm_card_visa")],
        )
        .await;
    assert_eq!(pay.status, 400);
    let ev = sim.events_of("customer.subscription.updated");
    assert_eq!(
        ev.last().unwrap()["data"]["previous_attributes"]["status"],
        "incomplete"
    );
}

#[tokio::test]
async fn allow_incomplete_charges_the_customers_default_card_at_once() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let good = sim.customer_with_card("pm_card_visa").await;
    let r = sim.subscribe(&good, &price, &[]).await;
    assert_eq!(r.body["status"], "active", "{:?}", r.body);
    let bad = sim.customer_with_card("pm_card_chargeCustomerFail").await;
    let r = sim
        .subscribe(&bad, &price, &[("expand[]", "latest_invoice")])
        .await;
    assert_eq!(r.body["status"], "incomplete");
    assert_eq!(r.body["latest_invoice"]["status"], "open");
    let none = sim.customer(&[]).await;
    let r = sim.subscribe(&none, &price, &[]).await;
    assert_eq!(r.body["status"], "incomplete");
}

#[tokio::test]
async fn error_if_incomplete_refuses_with_402_and_creates_nothing() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let bad = sim.customer_with_card("pm_card_chargeCustomerFail").await;
    let before = sim.handle.objects("subscription").len();
    let r = sim
        .subscribe(&bad, &price, &[("payment_behavior", "error_if_incomplete")])
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(r.body["error"]["type"], "card_error");
    assert_eq!(sim.handle.objects("subscription").len(), before);
    assert!(sim.handle.objects("invoice").is_empty());
}

#[tokio::test]
async fn a_declining_card_cannot_be_attached() {
    let sim = Sim::start().await;
    let cus = sim.customer(&[]).await;
    let r = sim
        .post(
            "/v1/payment_methods/pm_card_visa_chargeDeclined/attach",
            &[("customer", &cus)],
        )
        .await;
    assert_eq!(r.status, 402);
    assert_eq!(r.body["error"]["code"], "card_declined");
    let ok = sim
        .post(
            "/v1/payment_methods/pm_card_chargeCustomerFail/attach",
            &[("customer", &cus)],
        )
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.body["customer"], cus.as_str());
    let detached = sim
        .post(&format!("/v1/payment_methods/{}/detach", ok.id()), &[])
        .await;
    assert_eq!(detached.body["customer"], serde_json::Value::Null);
}

#[tokio::test]
async fn trials_start_trialing_with_a_paid_zero_invoice_and_charge_at_trial_end() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer_with_card("pm_card_visa").await;
    let r = sim
        .subscribe(
            &cus,
            &price,
            &[("trial_period_days", "7"), ("expand[]", "latest_invoice")],
        )
        .await;
    assert_eq!(r.body["status"], "trialing");
    assert_eq!(r.body["latest_invoice"]["status"], "paid");
    assert_eq!(r.body["latest_invoice"]["amount_due"], 0);
    sim.handle.advance_time(7 * DAY + 1);
    let sub = sim
        .get(
            &format!("/v1/subscriptions/{}", r.id()),
            &[("expand[]", "latest_invoice")],
        )
        .await;
    assert_eq!(sub.body["status"], "active");
    assert_eq!(sub.body["latest_invoice"]["status"], "paid");
    assert_eq!(sub.body["latest_invoice"]["amount_paid"], 500);
    assert_eq!(
        sub.body["items"]["data"][0]["current_period_start"],
        r.body["trial_end"]
    );
}

#[tokio::test]
async fn a_trial_ending_without_a_payment_method_follows_missing_payment_method() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let mut subs = Vec::new();
    for behaviour in ["cancel", "pause", "create_invoice"] {
        let cus = sim.customer(&[]).await;
        let r = sim
            .subscribe(
                &cus,
                &price,
                &[
                    ("trial_period_days", "3"),
                    (
                        "trial_settings[end_behavior][missing_payment_method]",
                        behaviour,
                    ),
                ],
            )
            .await;
        assert_eq!(r.body["status"], "trialing");
        subs.push((behaviour, r.id()));
    }
    sim.sim("/_sim/clock/advance", json!({"seconds": 3 * DAY + 10}))
        .await;
    for (behaviour, id) in &subs {
        let s = sim
            .get(
                &format!("/v1/subscriptions/{id}"),
                &[("expand[]", "latest_invoice")],
            )
            .await;
        match *behaviour {
            "cancel" => {
                assert_eq!(s.body["status"], "canceled");
                assert!(s.body["canceled_at"].as_i64().is_some());
            }
            "pause" => assert_eq!(s.body["status"], "paused"),
            _ => {
                assert_eq!(s.body["status"], "past_due");
                assert_eq!(s.body["latest_invoice"]["status"], "open");
            }
        }
    }
    assert_eq!(sim.events_of("customer.subscription.deleted").len(), 1);
    assert_eq!(sim.events_of("customer.subscription.paused").len(), 1);
}

#[tokio::test]
async fn renewals_under_a_test_clock_bill_each_period() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(700).await;
    let start = 1_767_225_600; // 2026-01-01
    let clock = sim
        .post(
            "/v1/test_helpers/test_clocks",
            &[("frozen_time", &start.to_string()), ("name", "renewals")],
        )
        .await;
    assert_eq!(clock.status, 200, "{:?}", clock.body);
    let clock_id = clock.id();
    let cus = sim
        .customer(&[
            ("test_clock", &clock_id),
            ("payment_method", "pm_card_visa"),
            ("invoice_settings[default_payment_method]", "pm_card_visa"),
        ])
        .await;
    let sub = sim.subscribe(&cus, &price, &[]).await;
    assert_eq!(sub.body["status"], "active");
    assert_eq!(sub.body["created"], start);
    assert_eq!(sub.body["test_clock"], clock_id.as_str());
    let end1 = sub.body["items"]["data"][0]["current_period_end"]
        .as_i64()
        .unwrap();
    assert_eq!(end1, 1_769_904_000); // 2026-02-01
    let adv = sim
        .post(
            &format!("/v1/test_helpers/test_clocks/{clock_id}/advance"),
            &[("frozen_time", &(start + 65 * DAY).to_string())],
        )
        .await;
    assert_eq!(adv.status, 200, "{:?}", adv.body);
    assert_eq!(adv.body["status"], "advancing");
    let c = sim
        .get(&format!("/v1/test_helpers/test_clocks/{clock_id}"), &[])
        .await;
    assert_eq!(c.body["status"], "ready");
    let s = sim
        .get(&format!("/v1/subscriptions/{}", sub.id()), &[])
        .await;
    assert_eq!(s.body["status"], "active");
    assert_eq!(
        s.body["items"]["data"][0]["current_period_start"],
        1_772_323_200
    ); // 2026-03-01
    let invoices = sim
        .get(
            "/v1/invoices",
            &[("subscription", &sub.id()), ("status", "paid")],
        )
        .await;
    assert_eq!(invoices.body["data"].as_array().unwrap().len(), 3);
    assert_eq!(
        invoices.body["data"][0]["billing_reason"],
        "subscription_cycle"
    );
    let back = sim
        .post(
            &format!("/v1/test_helpers/test_clocks/{clock_id}/advance"),
            &[("frozen_time", &start.to_string())],
        )
        .await;
    assert_eq!(back.status, 400);
}

#[tokio::test]
async fn a_failing_renewal_goes_past_due_then_canceled_after_the_retries() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let start = 1_767_225_600;
    let clock = sim
        .post(
            "/v1/test_helpers/test_clocks",
            &[("frozen_time", &start.to_string())],
        )
        .await
        .id();
    let cus = sim.customer(&[("test_clock", &clock)]).await;
    let sub = sim
        .subscribe(&cus, &price, &[("default_payment_method", "pm_card_visa")])
        .await;
    assert_eq!(sub.body["status"], "active");
    // The card starts failing: switch the subscription to a failing card.
    let r = sim
        .post(
            &format!("/v1/subscriptions/{}", sub.id()),
            &[("default_payment_method", "pm_card_chargeCustomerFail")],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let renew = start + 31 * DAY + 60;
    sim.post(
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &[("frozen_time", &renew.to_string())],
    )
    .await;
    assert_eq!(sim.status_of(&sub.id()).await, "past_due");
    let failed = sim.events_of("invoice.payment_failed");
    assert!(!failed.is_empty());
    // The failure's own event says when Stripe retries, as Stripe's does.
    assert!(
        failed[0]["data"]["object"]["next_payment_attempt"]
            .as_i64()
            .is_some_and(|t| t > renew),
        "{}",
        failed[0]
    );
    let open = sim
        .get(
            "/v1/invoices",
            &[("subscription", &sub.id()), ("status", "open")],
        )
        .await;
    assert!(open.body["data"][0]["next_payment_attempt"]
        .as_i64()
        .is_some());
    sim.post(
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &[("frozen_time", &(renew + 8 * DAY).to_string())],
    )
    .await;
    let s = sim
        .get(&format!("/v1/subscriptions/{}", sub.id()), &[])
        .await;
    assert_eq!(s.body["status"], "canceled");
    assert_eq!(s.body["cancellation_details"]["reason"], "payment_failed");
    let inv = sim
        .get(
            &format!(
                "/v1/invoices/{}",
                open.body["data"][0]["id"].as_str().unwrap()
            ),
            &[],
        )
        .await;
    assert_eq!(inv.body["attempt_count"], 4);
}

#[tokio::test]
async fn dunning_can_leave_subscriptions_unpaid_instead_of_canceled() {
    let sim = Sim::start().await;
    let s = sim
        .sim("/_sim/settings", json!({"dunning": "unpaid"}))
        .await;
    assert_eq!(s.status, 200);
    let price = sim.monthly_price(500).await;
    let cus = sim.customer_with_card("pm_card_visa").await;
    let sub = sim.subscribe(&cus, &price, &[]).await;
    let pm = sim
        .post(
            "/v1/payment_methods/pm_card_chargeCustomerFail/attach",
            &[("customer", &cus)],
        )
        .await
        .id();
    sim.post(
        &format!("/v1/customers/{cus}"),
        &[("invoice_settings[default_payment_method]", &pm)],
    )
    .await;
    sim.handle.advance_time(32 * DAY);
    assert_eq!(sim.status_of(&sub.id()).await, "past_due");
    sim.handle.advance_time(8 * DAY);
    assert_eq!(sim.status_of(&sub.id()).await, "unpaid");
}

#[tokio::test]
async fn a_past_due_subscription_recovers_when_its_invoice_is_paid() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer_with_card("pm_card_chargeCustomerFail").await;
    let sub = sim
        .subscribe(&cus, &price, &[("trial_period_days", "1")])
        .await;
    sim.handle.advance_time(DAY + 5);
    assert_eq!(sim.status_of(&sub.id()).await, "past_due");
    let open = sim
        .get("/v1/invoices", &[("customer", &cus), ("status", "open")])
        .await;
    let inv = open.body["data"][0]["id"].as_str().unwrap().to_owned();
    let paid = sim
        .post(
            &format!("/v1/invoices/{inv}/pay"),
            &[("payment_method", "pm_card_visa")],
        )
        .await;
    assert_eq!(paid.status, 200, "{:?}", paid.body);
    assert_eq!(sim.status_of(&sub.id()).await, "active");
}

#[tokio::test]
async fn cancel_is_immediate_and_a_second_cancel_is_a_404() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer_with_card("pm_card_visa").await;
    let sub = sim.subscribe(&cus, &price, &[]).await;
    let c = sim.delete(&format!("/v1/subscriptions/{}", sub.id())).await;
    assert_eq!(c.body["status"], "canceled");
    assert!(c.body["canceled_at"].as_i64().is_some());
    assert_eq!(
        c.body["cancellation_details"]["reason"],
        "cancellation_requested"
    );
    let again = sim.delete(&format!("/v1/subscriptions/{}", sub.id())).await;
    assert_eq!(again.status, 404);
    assert_eq!(again.error_code(), "resource_missing");
    let listed = sim.get("/v1/subscriptions", &[("customer", &cus)]).await;
    assert!(
        listed.body["data"].as_array().unwrap().is_empty(),
        "canceled are hidden by default"
    );
    let all = sim
        .get(
            "/v1/subscriptions",
            &[("customer", &cus), ("status", "all")],
        )
        .await;
    assert_eq!(all.body["data"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn deleting_a_customer_cancels_its_subscriptions_and_leaves_a_stub() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer_with_card("pm_card_visa").await;
    let sub = sim.subscribe(&cus, &price, &[]).await;
    let d = sim.delete(&format!("/v1/customers/{cus}")).await;
    assert_eq!(
        d.body,
        json!({"id": cus, "object": "customer", "deleted": true})
    );
    let g = sim.get(&format!("/v1/customers/{cus}"), &[]).await;
    assert_eq!(g.status, 200);
    assert_eq!(
        g.body,
        json!({"id": cus, "object": "customer", "deleted": true})
    );
    assert_eq!(sim.status_of(&sub.id()).await, "canceled");
    assert_eq!(sim.events_of("customer.subscription.deleted").len(), 1);
    assert_eq!(sim.events_of("customer.deleted").len(), 1);
    let stored = sim.handle.objects("customer");
    assert_eq!(stored[0]["deleted"], true);
    let again = sim.delete(&format!("/v1/customers/{cus}")).await;
    assert_eq!(again.status, 404);
}

#[tokio::test]
async fn checkout_setup_completion_attaches_the_card_and_emits_completed() {
    let sim = Sim::start().await;
    let cus = sim.customer(&[]).await;
    let missing = sim
        .post(
            "/v1/checkout/sessions",
            &[("mode", "setup"), ("customer", &cus)],
        )
        .await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.body["error"]["param"], "currency");
    let old = sim
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "setup"),
                ("customer", &cus),
                ("currency", "usd"),
                ("payment_method_types[0]", "card"),
            ],
        )
        .await;
    assert_eq!(old.error_code(), "parameter_unknown");
    let cs = sim
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "setup"),
                ("customer", &cus),
                ("currency", "usd"),
                ("success_url", "https://example.com/ok"),
                ("metadata[business_id]", "b1"),
            ],
        )
        .await;
    assert_eq!(cs.status, 200, "{:?}", cs.body);
    assert!(cs.body["url"].as_str().unwrap().contains(&cs.id()));
    let declined = sim
        .sim(
            &format!("/_sim/checkout/sessions/{}/complete", cs.id()),
            json!({"payment_method": "pm_card_visa_chargeDeclined"}),
        )
        .await;
    assert_eq!(declined.status, 402);
    assert_eq!(declined.body["error"]["type"], "card_error");
    assert!(sim.events_of("checkout.session.completed").is_empty());
    assert_eq!(
        sim.get(&format!("/v1/checkout/sessions/{}", cs.id()), &[])
            .await
            .body["status"],
        "open"
    );
    let done = sim
        .sim(
            &format!("/_sim/checkout/sessions/{}/complete", cs.id()),
            json!({}),
        )
        .await;
    assert_eq!(done.status, 200, "{:?}", done.body);
    assert_eq!(done.body["status"], "complete");
    assert!(done.body["setup_intent"]
        .as_str()
        .unwrap()
        .starts_with("seti_"));
    let ev = sim.events_of("checkout.session.completed");
    assert_eq!(ev[0]["data"]["object"]["metadata"]["business_id"], "b1");
    let pms = sim
        .get(&format!("/v1/customers/{cus}/payment_methods"), &[])
        .await;
    assert_eq!(pms.body["data"].as_array().unwrap().len(), 1);
    let seti = sim
        .get(
            &format!(
                "/v1/setup_intents/{}",
                done.body["setup_intent"].as_str().unwrap()
            ),
            &[],
        )
        .await;
    assert_eq!(seti.body["payment_method"], pms.body["data"][0]["id"]);
}

#[tokio::test]
async fn checkout_subscription_mode_creates_an_active_subscription_and_expire_works() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let cus = sim.customer(&[]).await;
    let cs = sim
        .post(
            "/v1/checkout/sessions",
            &[
                ("mode", "subscription"),
                ("customer", &cus),
                ("line_items[0][price]", &price),
                ("line_items[0][quantity]", "1"),
                ("subscription_data[metadata][business_id]", "b2"),
            ],
        )
        .await;
    assert_eq!(cs.status, 200, "{:?}", cs.body);
    let done = sim
        .sim(
            &format!("/_sim/checkout/sessions/{}/complete", cs.id()),
            json!({}),
        )
        .await;
    let sub = done.body["subscription"].as_str().unwrap().to_owned();
    let s = sim.get(&format!("/v1/subscriptions/{sub}"), &[]).await;
    assert_eq!(s.body["status"], "active");
    assert_eq!(s.body["metadata"]["business_id"], "b2");
    let other = sim
        .post(
            "/v1/checkout/sessions",
            &[("mode", "setup"), ("customer", &cus), ("currency", "usd")],
        )
        .await;
    let exp = sim
        .post(&format!("/v1/checkout/sessions/{}/expire", other.id()), &[])
        .await;
    assert_eq!(exp.body["status"], "expired");
    assert_eq!(exp.body["url"], serde_json::Value::Null);
    assert_eq!(
        sim.post(&format!("/v1/checkout/sessions/{}/expire", other.id()), &[])
            .await
            .status,
        400
    );
    assert_eq!(sim.events_of("checkout.session.expired").len(), 1);
}
