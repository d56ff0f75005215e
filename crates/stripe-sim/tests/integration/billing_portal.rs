//! The Billing Portal: configurations, sessions and their validation, the session page and its expiry, and the
//! `/_sim/` steps for what a customer does in the portal (new card, cancel).

use crate::common;

use common::{Sim, KEY};
use serde_json::json;

const DAY: i64 = 86_400;

/// Request parameters, the status expected and the `param` the error names.
type Case<'a> = (Vec<(&'a str, &'a str)>, u16, &'a str);

async fn config(sim: &Sim, extra: &[(&str, &str)]) -> common::Resp {
    let mut pairs = vec![
        ("features[invoice_history][enabled]", "true"),
        ("features[payment_method_update][enabled]", "true"),
    ];
    pairs.extend_from_slice(extra);
    sim.post("/v1/billing_portal/configurations", &pairs).await
}

/// The HTML page at a session's URL, fetched as a browser would: without an API key.
async fn page(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url).await.expect("request completes");
    let status = r.status().as_u16();
    let ctype = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (status, ctype, r.text().await.unwrap_or_default())
}

#[tokio::test]
async fn configurations_are_created_retrieved_updated_and_listed() {
    let sim = Sim::start().await;
    let a = config(
        &sim,
        &[
            ("business_profile[headline]", "Genesis billing"),
            ("default_return_url", "https://app.example/settings"),
            ("features[subscription_cancel][enabled]", "true"),
            ("features[subscription_cancel][mode]", "immediately"),
            ("features[subscription_cancel][proration_behavior]", "none"),
            ("features[customer_update][enabled]", "true"),
            ("features[customer_update][allowed_updates][]", "email"),
            ("features[customer_update][allowed_updates][]", "address"),
            ("metadata[team]", "ops"),
        ],
    )
    .await;
    assert_eq!(a.status, 200, "{:?}", a.body);
    assert!(a.id().starts_with("bpc_"));
    assert_eq!(a.body["object"], "billing_portal.configuration");
    assert_eq!(a.body["is_default"], false);
    assert_eq!(a.body["active"], true);
    assert_eq!(a.body["business_profile"]["headline"], "Genesis billing");
    assert_eq!(a.body["default_return_url"], "https://app.example/settings");
    let f = &a.body["features"];
    assert_eq!(f["subscription_cancel"]["mode"], "immediately");
    assert_eq!(f["subscription_cancel"]["enabled"], true);
    assert_eq!(f["invoice_history"]["enabled"], true);
    assert_eq!(f["payment_method_update"]["enabled"], true);
    assert_eq!(f["subscription_update"]["enabled"], false);
    assert_eq!(
        f["customer_update"]["allowed_updates"],
        json!(["email", "address"])
    );
    assert_eq!(a.body["metadata"]["team"], "ops");

    let got = sim
        .get(
            &format!("/v1/billing_portal/configurations/{}", a.id()),
            &[],
        )
        .await;
    assert_eq!(got.status, 200);
    assert_eq!(got.body, a.body);

    let b = config(&sim, &[]).await;
    assert_eq!(b.status, 200, "{:?}", b.body);
    let upd = sim
        .post(
            &format!("/v1/billing_portal/configurations/{}", b.id()),
            &[
                ("active", "false"),
                ("features[subscription_cancel][enabled]", "true"),
                ("features[subscription_cancel][mode]", "at_period_end"),
            ],
        )
        .await;
    assert_eq!(upd.status, 200, "{:?}", upd.body);
    assert_eq!(upd.body["active"], false);
    assert_eq!(upd.body["features"]["subscription_cancel"]["enabled"], true);
    let ev = sim.events_of("billing_portal.configuration.updated");
    assert_eq!(ev.len(), 1);
    assert_eq!(ev[0]["data"]["previous_attributes"]["active"], true);

    let all = sim.get("/v1/billing_portal/configurations", &[]).await;
    assert_eq!(all.status, 200);
    assert_eq!(all.body["object"], "list");
    assert_eq!(all.body["url"], "/v1/billing_portal/configurations");
    assert_eq!(all.body["data"].as_array().unwrap().len(), 2);
    let active = sim
        .get("/v1/billing_portal/configurations", &[("active", "true")])
        .await;
    let ids: Vec<&str> = active.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![a.id().as_str()]);
    let page1 = sim
        .get("/v1/billing_portal/configurations", &[("limit", "1")])
        .await;
    assert_eq!(page1.body["has_more"], true);
    let last = page1.body["data"][0]["id"].as_str().unwrap().to_owned();
    let page2 = sim
        .get(
            "/v1/billing_portal/configurations",
            &[("limit", "1"), ("starting_after", &last)],
        )
        .await;
    assert_eq!(page2.body["has_more"], false);
    assert_ne!(page2.body["data"][0]["id"], page1.body["data"][0]["id"]);
    let defaults = sim
        .get(
            "/v1/billing_portal/configurations",
            &[("is_default", "true")],
        )
        .await;
    assert_eq!(defaults.body["data"], json!([]));
}

#[tokio::test]
async fn configuration_input_is_validated_like_stripe() {
    let sim = Sim::start().await;
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("default_return_url", "https://x.test")], "features"),
        (
            vec![
                ("features[subscription_cancel][enabled]", "true"),
                ("features[subscription_cancel][mode]", "someday"),
            ],
            "features[subscription_cancel][mode]",
        ),
        (
            vec![("features[invoice_history][enabled]", "maybe")],
            "features[invoice_history][enabled]",
        ),
        (
            vec![("features[invoice_history][shown]", "true")],
            "features[invoice_history][shown]",
        ),
        (
            vec![("features[invoice_history]", "x")],
            "features[invoice_history]",
        ),
        (
            vec![(
                "features[payment_method_update][payment_method_configuration]",
                "pmc_1",
            )],
            "features[payment_method_update][enabled]",
        ),
        (
            vec![
                ("features[customer_update][enabled]", "true"),
                ("features[customer_update][allowed_updates][]", "<script>"),
            ],
            "features[customer_update][allowed_updates][0]",
        ),
        (
            vec![
                ("features[invoice_history][enabled]", "true"),
                ("default_return_url", "javascript:alert(1)"),
            ],
            "default_return_url",
        ),
        (
            vec![
                ("features[invoice_history][enabled]", "true"),
                ("colour", "red"),
            ],
            "colour",
        ),
    ];
    for (pairs, param) in cases {
        let r = sim.post("/v1/billing_portal/configurations", &pairs).await;
        assert_eq!(r.status, 400, "{pairs:?}: {:?}", r.body);
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
        assert_eq!(r.body["error"]["param"], param, "{pairs:?}: {:?}", r.body);
    }
    let long_key = "k".repeat(41);
    let key = format!("metadata[{long_key}]");
    let r = config(&sim, &[(&key, "v")]).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let huge = "x".repeat(600);
    let r = config(&sim, &[("metadata[k]", &huge)]).await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let missing = sim
        .get("/v1/billing_portal/configurations/bpc_nope", &[])
        .await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.error_code(), "resource_missing");
    assert_eq!(
        missing.body["error"]["message"],
        "No such configuration: 'bpc_nope'"
    );
    assert!(sim
        .handle
        .objects("billing_portal.configuration")
        .is_empty());
}

#[tokio::test]
async fn configuration_creation_is_idempotent() {
    let sim = Sim::start().await;
    let pairs = [("features[invoice_history][enabled]", "true")];
    let a = sim
        .post_keyed("/v1/billing_portal/configurations", &pairs, "cfg-1")
        .await;
    let b = sim
        .post_keyed("/v1/billing_portal/configurations", &pairs, "cfg-1")
        .await;
    assert_eq!(a.status, 200);
    assert_eq!(b.header("idempotent-replayed"), Some("true"));
    assert_eq!(a.id(), b.id());
    assert_eq!(sim.handle.objects("billing_portal.configuration").len(), 1);
    let other = sim
        .post_keyed(
            "/v1/billing_portal/configurations",
            &[("features[invoice_history][enabled]", "false")],
            "cfg-1",
        )
        .await;
    assert_eq!(other.status, 400);
    assert_eq!(other.body["error"]["type"], "idempotency_error");
}

#[tokio::test]
async fn a_session_uses_the_default_configuration_made_on_first_use() {
    let sim = Sim::start().await;
    let cus = sim.customer(&[]).await;
    let s = sim
        .post(
            "/v1/billing_portal/sessions",
            &[
                ("customer", &cus),
                ("return_url", "https://app.example/back"),
                ("locale", "fr"),
            ],
        )
        .await;
    assert_eq!(s.status, 200, "{:?}", s.body);
    assert!(s.id().starts_with("bps_"));
    assert_eq!(s.body["object"], "billing_portal.session");
    assert_eq!(s.body["customer"], cus.as_str());
    assert_eq!(s.body["return_url"], "https://app.example/back");
    assert_eq!(s.body["locale"], "fr");
    assert_eq!(s.body["flow"], serde_json::Value::Null);
    assert_eq!(s.body["livemode"], false);
    let url = s.body["url"].as_str().unwrap();
    assert_eq!(
        url,
        format!("{}/_sim/billing_portal/sessions/{}", sim.base, s.id())
    );
    let cfg = s.body["configuration"].as_str().unwrap().to_owned();
    let c = sim
        .get(&format!("/v1/billing_portal/configurations/{cfg}"), &[])
        .await;
    assert_eq!(c.body["is_default"], true);
    assert_eq!(c.body["features"]["payment_method_update"]["enabled"], true);
    assert_eq!(c.body["features"]["subscription_cancel"]["enabled"], true);
    let again = sim
        .post("/v1/billing_portal/sessions", &[("customer", &cus)])
        .await;
    assert_eq!(again.body["configuration"], cfg.as_str());
    assert_eq!(again.body["return_url"], serde_json::Value::Null);
    assert_eq!(sim.handle.objects("billing_portal.configuration").len(), 1);
    assert_eq!(sim.events_of("billing_portal.session.created").len(), 2);
    let expanded = sim
        .post(
            "/v1/billing_portal/sessions",
            &[("customer", &cus), ("expand[]", "configuration")],
        )
        .await;
    assert_eq!(expanded.body["configuration"]["id"], cfg.as_str());
    // The default configuration cannot be switched off.
    let off = sim
        .post(
            &format!("/v1/billing_portal/configurations/{cfg}"),
            &[("active", "false")],
        )
        .await;
    assert_eq!(off.status, 400, "{:?}", off.body);
}

#[tokio::test]
async fn session_creation_is_validated_like_stripe() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(900).await;
    let cus = sim.customer_with_card("pm_card_visa").await;
    let other = sim.customer_with_card("pm_card_visa").await;
    let sub = sim.subscribe(&cus, &price, &[]).await.id();
    let others_sub = sim.subscribe(&other, &price, &[]).await.id();
    let no_cancel = config(&sim, &[]).await.id();
    let cancel_cfg = config(&sim, &[("features[subscription_cancel][enabled]", "true")])
        .await
        .id();
    let inactive = config(&sim, &[]).await.id();
    sim.post(
        &format!("/v1/billing_portal/configurations/{inactive}"),
        &[("active", "false")],
    )
    .await;
    let gone = sim.customer(&[]).await;
    sim.delete(&format!("/v1/customers/{gone}")).await;
    let canceled = sim.subscribe(&cus, &price, &[]).await.id();
    sim.delete(&format!("/v1/subscriptions/{canceled}")).await;

    let cases: Vec<Case> = vec![
        (vec![], 400, "customer"),
        (vec![("customer", "")], 400, "customer"),
        (vec![("customer", "cus_missing")], 404, "customer"),
        (vec![("customer", &gone)], 404, "customer"),
        (
            vec![("customer", &cus), ("configuration", "bpc_missing")],
            404,
            "configuration",
        ),
        (
            vec![("customer", &cus), ("configuration", &inactive)],
            400,
            "configuration",
        ),
        (vec![("customer", &cus), ("locale", "xx-YY")], 400, "locale"),
        (
            vec![("customer", &cus), ("return_url", "ftp://x")],
            400,
            "return_url",
        ),
        (
            vec![("customer", &cus), ("flow_data[type]", "teleport")],
            400,
            "flow_data[type]",
        ),
        (
            vec![
                ("customer", &cus),
                ("configuration", &cancel_cfg),
                ("flow_data[type]", "subscription_cancel"),
            ],
            400,
            "flow_data[subscription_cancel][subscription]",
        ),
        (
            vec![
                ("customer", &cus),
                ("configuration", &cancel_cfg),
                ("flow_data[type]", "subscription_cancel"),
                ("flow_data[subscription_cancel][subscription]", &others_sub),
            ],
            400,
            "flow_data[subscription_cancel][subscription]",
        ),
        (
            vec![
                ("customer", &cus),
                ("configuration", &cancel_cfg),
                ("flow_data[type]", "subscription_cancel"),
                (
                    "flow_data[subscription_cancel][subscription]",
                    "sub_missing",
                ),
            ],
            404,
            "flow_data[subscription_cancel][subscription]",
        ),
        (
            vec![
                ("customer", &cus),
                ("configuration", &cancel_cfg),
                ("flow_data[type]", "subscription_cancel"),
                ("flow_data[subscription_cancel][subscription]", &canceled),
            ],
            400,
            "flow_data[subscription_cancel][subscription]",
        ),
        (
            vec![
                ("customer", &cus),
                ("configuration", &no_cancel),
                ("flow_data[type]", "subscription_cancel"),
                ("flow_data[subscription_cancel][subscription]", &sub),
            ],
            400,
            "flow_data[type]",
        ),
        (
            vec![
                ("customer", &cus),
                ("configuration", &no_cancel),
                ("flow_data[type]", "subscription_update"),
                ("flow_data[subscription_update][subscription]", &sub),
            ],
            400,
            "flow_data[type]",
        ),
        (
            vec![
                ("customer", &cus),
                ("flow_data[type]", "payment_method_update"),
                ("flow_data[after_completion][type]", "redirect"),
            ],
            400,
            "flow_data[after_completion][redirect][return_url]",
        ),
        (
            vec![
                ("customer", &cus),
                ("flow_data[type]", "payment_method_update"),
                ("flow_data[wormhole]", "1"),
            ],
            400,
            "flow_data[wormhole]",
        ),
    ];
    for (pairs, status, param) in cases {
        let r = sim.post("/v1/billing_portal/sessions", &pairs).await;
        assert_eq!(r.status, status, "{pairs:?}: {:?}", r.body);
        assert_eq!(r.body["error"]["param"], param, "{pairs:?}: {:?}", r.body);
        assert!(r.body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()));
    }
    // A flow the configuration cannot serve: payment_method_update switched off.
    let no_pm = sim
        .post(
            "/v1/billing_portal/configurations",
            &[("features[invoice_history][enabled]", "true")],
        )
        .await
        .id();
    let r = sim
        .post(
            "/v1/billing_portal/sessions",
            &[
                ("customer", &cus),
                ("configuration", &no_pm),
                ("flow_data[type]", "payment_method_update"),
            ],
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert!(sim.handle.objects("billing_portal.session").is_empty());
    // A failed request made no default configuration.
    assert!(sim
        .handle
        .objects("billing_portal.configuration")
        .iter()
        .all(|c| c["is_default"] == false));

    let ok = sim
        .post(
            "/v1/billing_portal/sessions",
            &[
                ("customer", &cus),
                ("configuration", &cancel_cfg),
                ("flow_data[type]", "subscription_cancel"),
                ("flow_data[subscription_cancel][subscription]", &sub),
                ("flow_data[after_completion][type]", "redirect"),
                (
                    "flow_data[after_completion][redirect][return_url]",
                    "https://app.example/done",
                ),
            ],
        )
        .await;
    assert_eq!(ok.status, 200, "{:?}", ok.body);
    let flow = &ok.body["flow"];
    assert_eq!(flow["type"], "subscription_cancel");
    assert_eq!(flow["subscription_cancel"]["subscription"], sub.as_str());
    assert_eq!(
        flow["subscription_cancel"]["retention"],
        serde_json::Value::Null
    );
    assert_eq!(flow["after_completion"]["type"], "redirect");
    assert_eq!(
        flow["after_completion"]["redirect"]["return_url"],
        "https://app.example/done"
    );
    assert_eq!(flow["subscription_update"], serde_json::Value::Null);
}

#[tokio::test]
async fn the_session_page_expires_after_five_minutes_of_simulated_time() {
    let sim = Sim::start().await;
    let cus = sim.customer(&[]).await;
    let s = sim
        .post(
            "/v1/billing_portal/sessions",
            &[
                ("customer", &cus),
                ("return_url", "https://app.example/\"><script>"),
            ],
        )
        .await;
    let url = s.body["url"].as_str().unwrap().to_owned();
    let (status, ctype, html) = page(&url).await;
    assert_eq!(status, 200, "{html}");
    assert!(ctype.starts_with("text/html"), "{ctype}");
    assert!(html.contains(&cus));
    assert!(
        !html.contains("<script>"),
        "the return URL is escaped: {html}"
    );
    let (status, _, _) = page(&format!(
        "{}/_sim/billing_portal/sessions/bps_unknown",
        sim.base
    ))
    .await;
    assert_eq!(status, 404);
    sim.handle.advance_time(290);
    // 290 simulated seconds plus the real ones the test takes: still live.
    assert_eq!(page(&url).await.0, 200);
    sim.handle.advance_time(11);
    let (status, _, html) = page(&url).await;
    assert_eq!(status, 410);
    assert!(html.contains("expired"), "{html}");
    // Steps on an expired session are refused.
    let r = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{}/payment_method", s.id()),
            json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(r.error_code(), "session_expired");
    let r = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{}/cancel", s.id()),
            json!({"subscription": "sub_x"}),
        )
        .await;
    assert_eq!(r.error_code(), "session_expired");
}

#[tokio::test]
async fn a_test_clock_advance_expires_its_customers_sessions() {
    let sim = Sim::start().await;
    let start = 1_767_225_600i64;
    let clock = sim
        .post(
            "/v1/test_helpers/test_clocks",
            &[("frozen_time", &start.to_string())],
        )
        .await
        .id();
    let cus = sim.customer(&[("test_clock", &clock)]).await;
    let s = sim
        .post("/v1/billing_portal/sessions", &[("customer", &cus)])
        .await;
    assert_eq!(s.body["created"], start);
    let url = s.body["url"].as_str().unwrap().to_owned();
    assert_eq!(page(&url).await.0, 200);
    sim.post(
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &[("frozen_time", &(start + 600).to_string())],
    )
    .await;
    assert_eq!(page(&url).await.0, 410);
}

#[tokio::test]
async fn the_portal_card_update_makes_the_next_retry_pay_the_past_due_invoice() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(2500).await;
    let start = 1_767_225_600i64;
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
    assert_eq!(sub.body["status"], "active", "{:?}", sub.body);
    sim.post(
        &format!("/v1/subscriptions/{}", sub.id()),
        &[("default_payment_method", "pm_card_chargeCustomerFail")],
    )
    .await;
    let renew = start + 31 * DAY + 60;
    sim.post(
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &[("frozen_time", &renew.to_string())],
    )
    .await;
    assert_eq!(sim.status_of(&sub.id()).await, "past_due");
    let open = sim
        .get(
            "/v1/invoices",
            &[("subscription", &sub.id()), ("status", "open")],
        )
        .await;
    let inv = open.body["data"][0]["id"].as_str().unwrap().to_owned();
    let retry_at = open.body["data"][0]["next_payment_attempt"]
        .as_i64()
        .unwrap();
    assert!(retry_at > renew);

    let session = sim
        .post(
            "/v1/billing_portal/sessions",
            &[
                ("customer", &cus),
                ("flow_data[type]", "payment_method_update"),
            ],
        )
        .await;
    assert_eq!(session.status, 200, "{:?}", session.body);
    assert_eq!(session.body["flow"]["type"], "payment_method_update");
    let before = sim.event_types().len();
    // A card declined when it is set up is refused, as the portal's form would refuse it.
    let declined = sim
        .sim(
            &format!(
                "/_sim/billing_portal/sessions/{}/payment_method",
                session.id()
            ),
            json!({"payment_method": "pm_card_visa_chargeDeclined"}),
        )
        .await;
    assert_eq!(declined.status, 402, "{:?}", declined.body);
    let missing = sim
        .sim(
            &format!(
                "/_sim/billing_portal/sessions/{}/payment_method",
                session.id()
            ),
            json!({}),
        )
        .await;
    assert_eq!(missing.status, 400);
    let unknown = sim
        .sim(
            "/_sim/billing_portal/sessions/bps_nope/payment_method",
            json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(unknown.status, 404);
    let upd = sim
        .sim(
            &format!(
                "/_sim/billing_portal/sessions/{}/payment_method",
                session.id()
            ),
            json!({"payment_method": "pm_card_visa"}),
        )
        .await;
    assert_eq!(upd.status, 200, "{:?}", upd.body);
    let pm = upd.body["payment_method"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(upd.body["payment_method"]["customer"], cus.as_str());
    let c = sim.get(&format!("/v1/customers/{cus}"), &[]).await;
    assert_eq!(
        c.body["invoice_settings"]["default_payment_method"],
        pm.as_str()
    );
    let s = sim
        .get(&format!("/v1/subscriptions/{}", sub.id()), &[])
        .await;
    assert_eq!(s.body["default_payment_method"], pm.as_str());
    assert_eq!(
        s.body["status"], "past_due",
        "nothing is charged until the retry"
    );
    let new_events: Vec<String> = sim.event_types()[before..].to_vec();
    assert_eq!(
        new_events,
        vec![
            "payment_method.attached",
            "customer.updated",
            "customer.subscription.updated"
        ]
    );
    let updated = sim.events_of("customer.updated");
    let last = updated.last().unwrap();
    assert!(last["data"]["previous_attributes"]["invoice_settings"].is_object());
    assert!(last["request"]["id"].as_str().unwrap().starts_with("req_"));

    // The clock passes the retry: the new card pays.
    sim.post(
        &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
        &[("frozen_time", &(retry_at + 1).to_string())],
    )
    .await;
    let i = sim.get(&format!("/v1/invoices/{inv}"), &[]).await;
    assert_eq!(i.body["status"], "paid", "{:?}", i.body);
    assert_eq!(i.body["attempt_count"], 2);
    assert_eq!(sim.status_of(&sub.id()).await, "active");
    let paid: Vec<_> = sim
        .events_of("invoice.paid")
        .into_iter()
        .filter(|e| e["data"]["object"]["id"] == inv.as_str())
        .collect();
    assert_eq!(paid.len(), 1);
    assert!(sim
        .events_of("invoice.payment_succeeded")
        .iter()
        .any(|e| e["data"]["object"]["id"] == inv.as_str()));
    let back = sim.events_of("customer.subscription.updated");
    assert!(back
        .iter()
        .any(|e| e["data"]["object"]["status"] == "active"
            && e["data"]["previous_attributes"]["status"] == "past_due"));
}

#[tokio::test]
async fn portal_cancellation_follows_the_configuration() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(700).await;
    let cus = sim.customer_with_card("pm_card_visa").await;
    let other = sim.customer_with_card("pm_card_visa").await;
    let others_sub = sim.subscribe(&other, &price, &[]).await.id();
    let now_cfg = config(
        &sim,
        &[
            ("features[subscription_cancel][enabled]", "true"),
            ("features[subscription_cancel][mode]", "immediately"),
        ],
    )
    .await
    .id();
    let later_cfg = config(
        &sim,
        &[
            ("features[subscription_cancel][enabled]", "true"),
            ("features[subscription_cancel][mode]", "at_period_end"),
        ],
    )
    .await
    .id();
    let no_cfg = config(&sim, &[]).await.id();
    let session = |cfg: String| {
        let sim = &sim;
        let cus = cus.clone();
        async move {
            let r = sim
                .post(
                    "/v1/billing_portal/sessions",
                    &[("customer", &cus), ("configuration", &cfg)],
                )
                .await;
            assert_eq!(r.status, 200, "{:?}", r.body);
            r.id()
        }
    };

    // Cancellation switched off: refused.
    let s = session(no_cfg).await;
    let sub1 = sim.subscribe(&cus, &price, &[]).await.id();
    let r = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{s}/cancel"),
            json!({"subscription": sub1}),
        )
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    assert_eq!(sim.status_of(&sub1).await, "active");

    // At period end: still active, set to cancel.
    let s = session(later_cfg).await;
    let r = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{s}/cancel"),
            json!({"subscription": others_sub}),
        )
        .await;
    assert_eq!(
        r.status, 400,
        "another customer's subscription: {:?}",
        r.body
    );
    let r = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{s}/cancel"),
            json!({}),
        )
        .await;
    assert_eq!(r.status, 400, "no subscription named: {:?}", r.body);
    let r = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{s}/cancel"),
            json!({"subscription": sub1}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert_eq!(r.body["status"], "active");
    assert_eq!(r.body["cancel_at_period_end"], true);
    assert_eq!(
        r.body["cancellation_details"]["reason"],
        "cancellation_requested"
    );
    let ev = sim.events_of("customer.subscription.updated");
    let last = ev.last().unwrap();
    assert_eq!(last["data"]["object"]["id"], sub1.as_str());
    assert_eq!(
        last["data"]["previous_attributes"]["cancel_at_period_end"],
        false
    );
    sim.handle.advance_time(32 * DAY);
    assert_eq!(sim.status_of(&sub1).await, "canceled");

    // Immediately, through a subscription_cancel flow naming the subscription.
    let sub2 = sim.subscribe(&cus, &price, &[]).await.id();
    let r = sim
        .post(
            "/v1/billing_portal/sessions",
            &[
                ("customer", &cus),
                ("configuration", &now_cfg),
                ("flow_data[type]", "subscription_cancel"),
                ("flow_data[subscription_cancel][subscription]", &sub2),
            ],
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let deleted_before = sim.events_of("customer.subscription.deleted").len();
    // A form body works as well as JSON.
    let form = sim
        .client
        .post(format!(
            "{}/_sim/billing_portal/sessions/{}/cancel",
            sim.base,
            r.id()
        ))
        .bearer_auth(KEY)
        .header("content-type", "application/x-www-form-urlencoded")
        .body("")
        .send()
        .await
        .unwrap();
    let form = Sim::read(form).await;
    assert_eq!(form.status, 200, "{:?}", form.body);
    assert_eq!(form.body["status"], "canceled");
    assert_eq!(
        form.body["cancellation_details"]["reason"],
        "cancellation_requested"
    );
    let deleted = sim.events_of("customer.subscription.deleted");
    assert_eq!(deleted.len(), deleted_before + 1);
    assert_eq!(
        deleted.last().unwrap()["data"]["object"]["id"],
        sub2.as_str()
    );
    // Already canceled: refused.
    let again = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{}/cancel", r.id()),
            json!({}),
        )
        .await;
    assert_eq!(again.status, 400, "{:?}", again.body);
    // Hostile input to the step: malformed JSON, a non-string, an oversized body.
    let bad = sim
        .client
        .post(format!(
            "{}/_sim/billing_portal/sessions/{}/cancel",
            sim.base,
            r.id()
        ))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body("{\"subscription\":")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status().as_u16(), 400);
    let r2 = sim
        .sim(
            &format!("/_sim/billing_portal/sessions/{}/cancel", r.id()),
            json!({"subscription": ["x"]}),
        )
        .await;
    assert_eq!(r2.status, 400);
    let big = sim
        .client
        .post(format!(
            "{}/_sim/billing_portal/sessions/{}/cancel",
            sim.base,
            r.id()
        ))
        .bearer_auth(KEY)
        .header("content-type", "application/json")
        .body(format!(
            "{{\"subscription\":\"{}\"}}",
            "s".repeat(2 * 1024 * 1024)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(big.status().as_u16(), 413);
    // The steps need the API key, as every /_sim control does.
    let anon = reqwest::Client::new()
        .post(format!(
            "{}/_sim/billing_portal/sessions/{}/cancel",
            sim.base,
            r.id()
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status().as_u16(), 401);
}
