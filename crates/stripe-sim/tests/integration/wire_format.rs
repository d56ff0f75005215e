//! Stripe's wire format: authentication, errors for bad input, ids, lists and pagination, search, prices by lookup key, events.

use crate::common;

use common::{Sim, KEY};
use serde_json::json;

#[tokio::test]
async fn authentication_accepts_bearer_and_basic_and_rejects_the_rest() {
    let sim = Sim::start().await;
    let url = format!("{}/v1/customers", sim.base);
    let c = &sim.client;
    let ok = c.get(&url).basic_auth(KEY, Some("")).send().await.unwrap();
    assert_eq!(ok.status(), 200);
    let rk = c
        .get(&url)
        .bearer_auth("rk_test_restricted")
        .send()
        .await
        .unwrap();
    assert_eq!(rk.status(), 200);
    let none = Sim::read(c.get(&url).send().await.unwrap()).await;
    assert_eq!(none.status, 401);
    assert!(none.body["error"]["message"]
        .as_str()
        .unwrap()
        .starts_with("You did not provide an API key"));
    assert_eq!(none.body["error"]["type"], "invalid_request_error");
    for bad in [
        "sk_live_abcdefghijklmnop",
        "pk_test_abcdefghijklmn",
        "nonsense",
    ] {
        let r = Sim::read(c.get(&url).bearer_auth(bad).send().await.unwrap()).await;
        assert_eq!(r.status, 401, "{bad}");
        let msg = r.body["error"]["message"].as_str().unwrap();
        assert!(msg.starts_with("Invalid API Key provided"), "{msg}");
        assert!(
            !msg.contains(bad) || bad.len() <= 12,
            "the key is masked: {msg}"
        );
    }
    let sim_route = c
        .get(format!("{}/_sim/ping", sim.base))
        .send()
        .await
        .unwrap();
    assert_eq!(sim_route.status(), 401);
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_the_stripe_version() {
    let sim = Sim::start().await;
    let r = sim
        .client
        .get(format!("{}/v1/customers", sim.base))
        .bearer_auth(KEY)
        .header("Stripe-Version", "2026-09-30.endive")
        .send()
        .await
        .unwrap();
    assert!(r.headers()["request-id"]
        .to_str()
        .unwrap()
        .starts_with("req_"));
    assert_eq!(r.headers()["stripe-version"], "2026-09-30.endive");
    let missing = sim.get("/v1/nope", &[]).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.body["error"]["message"], "Unrecognized request URL (GET: /v1/nope). Please see https://stripe.com/docs or we can help at https://support.stripe.com/.");
    assert!(missing.header("request-id").is_some());
    let wrong_method = sim.send("PUT", "/v1/customers", &[], None).await;
    assert_eq!(wrong_method.status, 404);
}

#[tokio::test]
async fn bad_input_gets_stripe_shaped_4xx_and_changes_nothing() {
    let sim = Sim::start().await;
    let post_raw = |body: Vec<u8>| {
        let c = sim.client.clone();
        let url = format!("{}/v1/customers", sim.base);
        async move {
            Sim::read(
                c.post(url)
                    .bearer_auth(KEY)
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body)
                    .send()
                    .await
                    .unwrap(),
            )
            .await
        }
    };
    for body in [
        b"name=%ff%fe".to_vec(),
        b"name=a&name[x]=b".to_vec(),
        b"metadata[a=1".to_vec(),
        vec![0xff, 0xfe, 0x00],
        b"{\"name\": \"json\"}".to_vec(),
    ] {
        let r = post_raw(body.clone()).await;
        assert_eq!(
            r.status,
            400,
            "{:?} -> {:?}",
            String::from_utf8_lossy(&body),
            r.body
        );
        assert_eq!(r.body["error"]["type"], "invalid_request_error");
    }
    let big = post_raw(format!("name={}", "x".repeat(2 * 1024 * 1024)).into_bytes()).await;
    assert_eq!(big.status, 413);
    assert_eq!(big.body["error"]["type"], "invalid_request_error");
    let unknown = sim
        .post(
            "/v1/customers",
            &[("name", "a"), ("favourite_colour", "red")],
        )
        .await;
    assert_eq!(unknown.error_code(), "parameter_unknown");
    assert_eq!(unknown.body["error"]["param"], "favourite_colour");
    let int = sim.post("/v1/customers", &[("balance", "lots")]).await;
    assert_eq!(int.error_code(), "parameter_invalid_integer");
    let meta = sim
        .post("/v1/customers", &[("metadata[k]", &"v".repeat(501))])
        .await;
    assert_eq!(meta.status, 400);
    let missing = sim
        .post("/v1/subscriptions", &[("items[0][price]", "price_x")])
        .await;
    assert_eq!(missing.error_code(), "parameter_missing");
    assert_eq!(missing.body["error"]["param"], "customer");
    let empty = sim
        .post(
            "/v1/subscriptions",
            &[("customer", ""), ("items[0][price]", "price_x")],
        )
        .await;
    assert_eq!(empty.error_code(), "parameter_invalid_empty");
    let product_data = sim
        .post(
            "/v1/subscriptions",
            &[
                ("customer", "cus_x"),
                ("items[0][price_data][product_data][name]", "x"),
            ],
        )
        .await;
    assert_eq!(product_data.error_code(), "parameter_unknown");
    assert_eq!(
        product_data.body["error"]["param"],
        "items[0][price_data][product_data]"
    );
    assert!(sim.handle.objects("customer").is_empty());
    assert!(sim.handle.objects("event").is_empty());
}

#[tokio::test]
async fn unknown_ids_and_wrong_prefixes_are_404_resource_missing() {
    let sim = Sim::start().await;
    let cus = sim.customer(&[]).await;
    for path in [
        "/v1/customers/cus_doesnotexist",
        "/v1/subscriptions/sub_nope",
        "/v1/invoices/in_nope",
        "/v1/prices/price_nope",
        "/v1/events/evt_nope",
    ] {
        let r = sim.get(path, &[]).await;
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.error_code(), "resource_missing");
        assert_eq!(r.body["error"]["param"], "id");
    }
    let wrong = sim.get(&format!("/v1/subscriptions/{cus}"), &[]).await;
    assert_eq!(wrong.status, 404);
    assert_eq!(
        wrong.body["error"]["message"],
        format!("No such subscription: '{cus}'")
    );
    let sub = sim
        .post(
            "/v1/subscriptions",
            &[("customer", "cus_missing"), ("items[0][price]", "price_x")],
        )
        .await;
    assert_eq!(sub.status, 404);
    assert_eq!(sub.body["error"]["param"], "customer");
}

#[tokio::test]
async fn lists_are_newest_first_and_paginate_both_ways() {
    let sim = Sim::start().await;
    let mut ids = Vec::new();
    for i in 0..25 {
        ids.push(sim.customer(&[("email", &format!("c{i}@x.io"))]).await);
    }
    let first = sim.get("/v1/customers", &[]).await;
    assert_eq!(first.body["object"], "list");
    assert_eq!(first.body["url"], "/v1/customers");
    assert_eq!(first.body["has_more"], true);
    let data = first.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 10);
    assert_eq!(data[0]["id"], ids[24].as_str());
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut p = vec![("limit", "7")];
        if let Some(a) = &after {
            p.push(("starting_after", a));
        }
        let page = sim.get("/v1/customers", &p).await;
        let d = page.body["data"].as_array().unwrap();
        seen.extend(d.iter().map(|c| c["id"].as_str().unwrap().to_owned()));
        if page.body["has_more"] != true {
            break;
        }
        after = Some(d.last().unwrap()["id"].as_str().unwrap().to_owned());
    }
    let mut expected = ids.clone();
    expected.reverse();
    assert_eq!(seen, expected);
    let before = sim
        .get(
            "/v1/customers",
            &[("ending_before", &ids[10]), ("limit", "3")],
        )
        .await;
    let d: Vec<&str> = before.body["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        d,
        vec![ids[13].as_str(), ids[12].as_str(), ids[11].as_str()]
    );
    assert_eq!(before.body["has_more"], true);
    assert_eq!(
        sim.get("/v1/customers", &[("limit", "0")]).await.status,
        400
    );
    assert_eq!(
        sim.get("/v1/customers", &[("limit", "101")]).await.status,
        400
    );
    let by_email = sim.get("/v1/customers", &[("email", "c3@x.io")]).await;
    assert_eq!(by_email.body["data"][0]["id"], ids[3].as_str());
}

#[tokio::test]
async fn search_finds_customers_and_subscriptions_by_metadata_at_once() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(500).await;
    let a = sim
        .customer(&[("metadata[business_id]", "b1"), ("email", "a@x.io")])
        .await;
    let b = sim.customer(&[("metadata[business_id]", "b2")]).await;
    let r = sim
        .get(
            "/v1/customers/search",
            &[("query", "metadata['business_id']:'b1'")],
        )
        .await;
    assert_eq!(r.body["object"], "search_result");
    assert_eq!(r.body["data"].as_array().unwrap().len(), 1);
    assert_eq!(r.body["data"][0]["id"], a.as_str());
    let or = sim
        .get(
            "/v1/customers/search",
            &[
                (
                    "query",
                    "metadata['business_id']:'b1' OR metadata['business_id']:'b2'",
                ),
                ("limit", "1"),
            ],
        )
        .await;
    assert_eq!(or.body["has_more"], true);
    let page = or.body["next_page"].as_str().unwrap().to_owned();
    let next = sim
        .get(
            "/v1/customers/search",
            &[
                (
                    "query",
                    "metadata['business_id']:'b1' OR metadata['business_id']:'b2'",
                ),
                ("page", &page),
            ],
        )
        .await;
    assert_eq!(next.body["data"][0]["id"], a.as_str());
    assert_eq!(or.body["data"][0]["id"], b.as_str());
    let email = sim
        .get("/v1/customers/search", &[("query", "email:'a@x.io'")])
        .await;
    assert_eq!(email.body["data"][0]["id"], a.as_str());
    let bad = sim
        .get("/v1/customers/search", &[("query", "nonsense")])
        .await;
    assert_eq!(bad.status, 400);
    let sub = sim
        .subscribe(&a, &price, &[("metadata[business_id]", "b1")])
        .await;
    let s = sim
        .get(
            "/v1/subscriptions/search",
            &[(
                "query",
                "metadata['business_id']:'b1' AND status:'incomplete'",
            )],
        )
        .await;
    assert_eq!(s.body["data"][0]["id"], sub.id().as_str());
    sim.delete(&format!("/v1/customers/{b}")).await;
    let gone = sim
        .get(
            "/v1/customers/search",
            &[("query", "metadata['business_id']:'b2'")],
        )
        .await;
    assert!(gone.body["data"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn prices_list_by_lookup_keys_and_transfer_lookup_key_moves_a_key() {
    let sim = Sim::start().await;
    let mk = |key: &'static str, amount: &'static str, transfer: bool| {
        let mut p = vec![
            ("currency", "usd"),
            ("unit_amount", amount),
            ("recurring[interval]", "month"),
            ("product_data[name]", "P"),
            ("lookup_key", key),
        ];
        if transfer {
            p.push(("transfer_lookup_key", "true"));
        }
        let sim = &sim;
        async move { sim.post("/v1/prices", &p).await }
    };
    let a = mk("genesis_saas_monthly", "500", false).await;
    let b = mk("genesis_api_monthly", "1500", false).await;
    let dup = mk("genesis_saas_monthly", "900", false).await;
    assert_eq!(dup.status, 400);
    let r = sim
        .get(
            "/v1/prices",
            &[
                ("lookup_keys[]", "genesis_saas_monthly"),
                ("lookup_keys[]", "genesis_api_monthly"),
            ],
        )
        .await;
    assert_eq!(r.body["data"].as_array().unwrap().len(), 2);
    let c = mk("genesis_saas_monthly", "900", true).await;
    assert_eq!(c.status, 200);
    let r = sim
        .get(
            "/v1/prices",
            &[
                ("lookup_keys[0]", "genesis_saas_monthly"),
                ("expand[]", "data.product"),
            ],
        )
        .await;
    let data = r.body["data"].as_array().unwrap();
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["id"], c.body["id"]);
    assert_eq!(data[0]["product"]["object"], "product");
    let old = sim.get(&format!("/v1/prices/{}", a.id()), &[]).await;
    assert_eq!(old.body["lookup_key"], serde_json::Value::Null);
    let upd = sim
        .post(&format!("/v1/prices/{}", b.id()), &[("active", "false")])
        .await;
    assert_eq!(upd.body["active"], false);
    let ev = sim.events_of("price.updated");
    assert!(ev
        .iter()
        .any(|e| e["data"]["previous_attributes"]["active"] == true));
    let cus = sim.customer(&[]).await;
    let inactive = sim.subscribe(&cus, &b.id(), &[]).await;
    assert_eq!(inactive.status, 400);
}

#[tokio::test]
async fn events_list_filters_by_type_and_created_and_carry_previous_attributes() {
    let sim = Sim::start().await;
    let cus = sim.customer(&[]).await;
    sim.post(&format!("/v1/customers/{cus}"), &[("name", "Renamed")])
        .await;
    let all = sim.get("/v1/events", &[]).await;
    assert_eq!(all.body["data"][0]["type"], "customer.updated");
    assert_eq!(
        all.body["data"][0]["data"]["previous_attributes"]["name"],
        "Test business"
    );
    assert_eq!(all.body["data"][0]["api_version"], "2026-09-30.endive");
    let created = sim.get("/v1/events", &[("type", "customer.created")]).await;
    assert_eq!(created.body["data"].as_array().unwrap().len(), 1);
    let wildcard = sim.get("/v1/events", &[("type", "customer.*")]).await;
    assert_eq!(wildcard.body["data"].as_array().unwrap().len(), 2);
    let t = created.body["data"][0]["created"].as_i64().unwrap();
    let later = sim
        .get("/v1/events", &[("created[gt]", &(t + 1000).to_string())])
        .await;
    assert!(later.body["data"].as_array().unwrap().is_empty());
    let since = sim
        .get(
            "/v1/events",
            &[
                ("created[gte]", &t.to_string()),
                ("types[]", "customer.updated"),
            ],
        )
        .await;
    assert_eq!(since.body["data"].as_array().unwrap().len(), 1);
    let one = sim
        .get(
            &format!(
                "/v1/events/{}",
                created.body["data"][0]["id"].as_str().unwrap()
            ),
            &[],
        )
        .await;
    assert_eq!(one.body["data"]["object"]["id"], cus.as_str());
}

#[tokio::test]
async fn payment_intents_can_be_created_confirmed_and_canceled() {
    let sim = Sim::start().await;
    let pi = sim
        .post(
            "/v1/payment_intents",
            &[("amount", "500"), ("currency", "usd")],
        )
        .await;
    assert_eq!(pi.body["status"], "requires_payment_method");
    let bad_reason = sim
        .post(
            &format!("/v1/payment_intents/{}/cancel", pi.id()),
            &[("cancellation_reason", "bored")],
        )
        .await;
    assert_eq!(bad_reason.status, 400);
    let c = sim
        .post(
            &format!("/v1/payment_intents/{}/cancel", pi.id()),
            &[("cancellation_reason", "abandoned")],
        )
        .await;
    assert_eq!(c.body["status"], "canceled");
    assert_eq!(c.body["cancellation_reason"], "abandoned");
    let again = sim
        .post(&format!("/v1/payment_intents/{}/cancel", pi.id()), &[])
        .await;
    assert_eq!(again.error_code(), "payment_intent_unexpected_state");
    let ok = sim
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "500"),
                ("currency", "usd"),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
            ],
        )
        .await;
    assert_eq!(ok.body["status"], "succeeded");
    let fail = sim
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "500"),
                ("currency", "usd"),
                ("payment_method", "pm_card_chargeCustomerFail"),
            ],
        )
        .await;
    let conf = sim
        .post(&format!("/v1/payment_intents/{}/confirm", fail.id()), &[])
        .await;
    assert_eq!(conf.status, 402);
    assert_eq!(
        conf.body["error"]["payment_intent"]["status"],
        "requires_payment_method"
    );
    let pmt = sim
        .post(
            "/v1/payment_intents",
            &[
                ("amount", "500"),
                ("currency", "usd"),
                ("payment_method_types[]", "card"),
            ],
        )
        .await;
    assert_eq!(pmt.error_code(), "payment_method_types_no_longer_supported");
}

#[tokio::test]
async fn sim_controls_validate_their_json() {
    let sim = Sim::start().await;
    assert_eq!(
        sim.sim("/_sim/clock/advance", json!({"seconds": -5}))
            .await
            .status,
        400
    );
    assert_eq!(
        sim.sim("/_sim/settings", json!({"dunning": "explode"}))
            .await
            .status,
        400
    );
    assert_eq!(
        sim.sim("/_sim/webhooks", json!({"bogus": 1})).await.status,
        400
    );
    assert_eq!(sim.sim("/_sim/nothing", json!({})).await.status, 404);
    let r = sim
        .client
        .post(format!("{}/_sim/faults", sim.base))
        .bearer_auth(KEY)
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

/// Pages through a list with `starting_after`, then back with `ending_before`; returns the forward order.
async fn page_through(sim: &Sim, path: &str, limit: usize) -> Vec<serde_json::Value> {
    let lim = limit.to_string();
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut q = vec![("limit", lim.as_str())];
        if let Some(a) = &after {
            q.push(("starting_after", a.as_str()));
        }
        let page = sim.get(path, &q).await;
        assert_eq!(page.status, 200, "{:?}", page.body);
        let data = page.body["data"].as_array().unwrap().clone();
        assert!(data.len() <= limit);
        seen.extend(data.iter().cloned());
        if page.body["has_more"] != true {
            break;
        }
        after = Some(data.last().unwrap()["id"].as_str().unwrap().to_owned());
    }
    let mut back: Vec<serde_json::Value> = Vec::new();
    let mut before = seen.last().map(|v| v["id"].as_str().unwrap().to_owned());
    while let Some(b) = before.take() {
        let page = sim
            .get(
                path,
                &[("limit", lim.as_str()), ("ending_before", b.as_str())],
            )
            .await;
        let data = page.body["data"].as_array().unwrap().clone();
        for v in data.iter().rev() {
            back.push(v.clone());
        }
        if page.body["has_more"] == true {
            before = data.first().map(|v| v["id"].as_str().unwrap().to_owned());
        }
    }
    back.reverse();
    let ids = |vs: &[serde_json::Value]| -> Vec<String> {
        vs.iter()
            .map(|v| v["id"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(
        ids(&back),
        ids(&seen[..seen.len() - 1]),
        "{path}: ending_before pages back through the same order"
    );
    seen
}

fn assert_newest_first(path: &str, items: &[serde_json::Value]) {
    let created: Vec<i64> = items
        .iter()
        .map(|v| v["created"].as_i64().unwrap())
        .collect();
    assert!(
        created.windows(2).all(|w| w[0] >= w[1]),
        "{path} is not newest first by created: {created:?}"
    );
}

#[tokio::test]
async fn lists_are_newest_first_by_created_across_pages_after_a_test_clock_advance() {
    let sim = Sim::start().await;
    let price = sim.monthly_price(900).await;
    // A clock ahead of real time: what happens on it is stamped later than the clock's own (real-time) events.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let start = now + 100 * 86_400;
    let clock = sim
        .post(
            "/v1/test_helpers/test_clocks",
            &[("frozen_time", &start.to_string())],
        )
        .await
        .id();
    let cus = sim
        .customer(&[
            ("test_clock", &clock),
            ("payment_method", "pm_card_visa"),
            ("invoice_settings[default_payment_method]", "pm_card_visa"),
        ])
        .await;
    let sub = sim.subscribe(&cus, &price, &[]).await;
    assert_eq!(sub.body["created"], start);
    let adv = sim
        .post(
            &format!("/v1/test_helpers/test_clocks/{clock}/advance"),
            &[("frozen_time", &(start + 65 * 86_400).to_string())],
        )
        .await;
    assert_eq!(adv.status, 200, "{:?}", adv.body);
    // Objects made afterwards in real time are older than the clock's, though inserted last.
    let plain = sim.customer_with_card("pm_card_visa").await;
    assert_eq!(sim.subscribe(&plain, &price, &[]).await.status, 200);

    let events = page_through(&sim, "/v1/events", 4).await;
    assert_eq!(events.len(), sim.handle.objects("event").len());
    assert_newest_first("/v1/events", &events);
    let ready = events
        .iter()
        .position(|e| e["type"] == "test_helpers.test_clock.ready")
        .unwrap();
    let renewal = events
        .iter()
        .position(|e| e["type"] == "invoice.paid" && e["created"].as_i64().unwrap() > start)
        .unwrap();
    assert!(
        renewal < ready,
        "a renewal paid at clock time comes before the clock's real-time ready event"
    );
    for (path, kind) in [
        ("/v1/invoices", "invoice"),
        ("/v1/customers", "customer"),
        ("/v1/subscriptions", "subscription"),
        ("/v1/payment_intents", "payment_intent"),
    ] {
        let items = page_through(&sim, path, 2).await;
        let stored = sim
            .handle
            .objects(kind)
            .into_iter()
            .filter(|v| v["deleted"] != true)
            .count();
        assert!(items.len() >= 2, "{path}");
        assert_eq!(items.len(), stored, "{path}");
        assert_newest_first(path, &items);
    }
    let search = sim
        .get(
            "/v1/subscriptions/search",
            &[("query", "status:'active'"), ("limit", "1")],
        )
        .await;
    let next = search.body["next_page"].as_str().unwrap().to_owned();
    let page2 = sim
        .get(
            "/v1/subscriptions/search",
            &[
                ("query", "status:'active'"),
                ("limit", "1"),
                ("page", &next),
            ],
        )
        .await;
    assert_eq!(page2.status, 200, "{:?}", page2.body);
    assert!(
        search.body["data"][0]["created"].as_i64() >= page2.body["data"][0]["created"].as_i64()
    );
    assert_ne!(search.body["data"][0]["id"], page2.body["data"][0]["id"]);
    for bad in ["page_x", "page_1", "page_1_x", "nope", "page_1_2_3"] {
        let r = sim
            .get(
                "/v1/subscriptions/search",
                &[("query", "status:'active'"), ("page", bad)],
            )
            .await;
        assert_eq!(r.status, 400, "{bad}: {:?}", r.body);
    }
}

/// Stripe's always-present fields per object at 2026-09-30.endive, from the Node SDK's declarations.
const REQUIRED_FIELDS: &str = include_str!("../../conformance/endive_required_fields.json");

/// The definition that describes a rendered object, by its `object` (and `deleted`).
fn definition_of(v: &serde_json::Value) -> Option<&'static str> {
    let deleted = v["deleted"] == true;
    Some(match (v["object"].as_str()?, deleted) {
        ("customer", false) => "Customer",
        ("customer", true) => "DeletedCustomer",
        ("product", false) => "Product",
        ("product", true) => "DeletedProduct",
        ("price", _) => "Price",
        ("plan", _) => "Plan",
        ("subscription", _) => "Subscription",
        ("subscription_item", _) => "SubscriptionItem",
        ("invoice", _) => "Invoice",
        ("line_item", _) => "InvoiceLineItem",
        ("invoice_payment", _) => "InvoicePayment",
        ("payment_method", _) => "PaymentMethod",
        ("payment_intent", _) => "PaymentIntent",
        ("charge", _) => "Charge",
        ("setup_intent", _) => "SetupIntent",
        ("checkout.session", _) => "Checkout.Session",
        ("item", _) => "LineItem",
        ("event", _) => "Event",
        ("webhook_endpoint", false) => "WebhookEndpoint",
        ("webhook_endpoint", true) => "DeletedWebhookEndpoint",
        ("test_helpers.test_clock", false) => "TestHelpers.TestClock",
        ("test_helpers.test_clock", true) => "TestHelpers.DeletedTestClock",
        ("billing_portal.configuration", _) => "BillingPortal.Configuration",
        ("billing_portal.session", _) => "BillingPortal.Session",
        ("list", _) => "ApiList",
        ("search_result", _) => "ApiSearchResult",
        _ => return None,
    })
}

/// Checks one value against a shape of the fixture, recording `Definition.path.field` for each missing field.
fn check_shape(
    defs: &serde_json::Value,
    v: &serde_json::Value,
    shape: &serde_json::Value,
    path: &str,
    missing: &mut std::collections::BTreeSet<String>,
) {
    if let Some(items) = v.as_array() {
        for item in items {
            check_shape(defs, item, shape, &format!("{path}[]"), missing);
        }
        return;
    }
    let Some(obj) = v.as_object() else { return };
    if let Some(r) = shape["ref"].as_str() {
        return check_shape(defs, v, &defs[r], path, missing);
    }
    if let Some(of) = shape["list"].as_str() {
        check_shape(defs, v, &defs["ApiList"], path, missing);
        return check_shape(
            defs,
            &v["data"],
            &defs[of],
            &format!("{path}.data"),
            missing,
        );
    }
    for f in shape["required"].as_array().into_iter().flatten() {
        let f = f.as_str().unwrap();
        if !obj.contains_key(f) {
            missing.insert(format!("{path}.{f}"));
        }
    }
    for (f, sub) in shape["nested"].as_object().into_iter().flatten() {
        if let Some(x) = obj.get(f) {
            check_shape(defs, x, sub, &format!("{path}.{f}"), missing);
        }
    }
}

/// Checks every Stripe object inside a response (lists, expansions, event payloads included).
fn check_all(
    defs: &serde_json::Value,
    v: &serde_json::Value,
    seen: &mut std::collections::BTreeSet<&'static str>,
    missing: &mut std::collections::BTreeSet<String>,
) {
    match v {
        serde_json::Value::Object(o) => {
            if let Some(name) = definition_of(v) {
                seen.insert(name);
                check_shape(defs, v, &defs[name], name, missing);
            }
            for x in o.values() {
                check_all(defs, x, seen, missing);
            }
        }
        serde_json::Value::Array(a) => {
            for x in a {
                check_all(defs, x, seen, missing);
            }
        }
        _ => {}
    }
}

#[tokio::test]
async fn every_object_carries_every_field_stripe_always_sends_at_endive() {
    let fixture: serde_json::Value = serde_json::from_str(REQUIRED_FIELDS).unwrap();
    assert_eq!(fixture["api_version"], "2026-09-30.endive");
    let defs = &fixture["definitions"];
    let sim = Sim::start().await;
    let mut bodies: Vec<serde_json::Value> = Vec::new();
    let mut keep = |r: common::Resp, what: &str| {
        assert!(r.status == 200, "{what}: {} {:?}", r.status, r.body);
        bodies.push(r.body.clone());
        r
    };
    let hook = keep(
        sim.post(
            "/v1/webhook_endpoints",
            &[
                ("url", "http://127.0.0.1:9/hook"),
                ("enabled_events[]", "*"),
            ],
        )
        .await,
        "webhook endpoint",
    );
    sim.sim("/_sim/webhooks", json!({"enabled": false})).await;
    let product = keep(
        sim.post("/v1/products", &[("name", "Plan")]).await,
        "product",
    );
    let price = keep(
        sim.post(
            "/v1/prices",
            &[
                ("currency", "usd"),
                ("unit_amount", "1200"),
                ("recurring[interval]", "month"),
                ("product", &product.id()),
                ("lookup_key", "plan_monthly"),
            ],
        )
        .await,
        "price",
    );
    let clock = keep(
        sim.post(
            "/v1/test_helpers/test_clocks",
            &[("frozen_time", "1767225600"), ("name", "conformance")],
        )
        .await,
        "test clock",
    );
    let cus = keep(
        sim.post(
            "/v1/customers",
            &[
                ("name", "Acme"),
                ("email", "billing@acme.test"),
                ("test_clock", &clock.id()),
                ("payment_method", "pm_card_visa"),
                ("invoice_settings[default_payment_method]", "pm_card_visa"),
            ],
        )
        .await,
        "customer",
    );
    let sub = keep(
        sim.post(
            "/v1/subscriptions",
            &[
                ("customer", &cus.id()),
                ("items[0][price]", &price.id()),
                ("expand[]", "latest_invoice.payments"),
            ],
        )
        .await,
        "subscription",
    );
    keep(
        sim.post(
            &format!("/v1/test_helpers/test_clocks/{}/advance", clock.id()),
            &[("frozen_time", "1772409600")],
        )
        .await,
        "advance",
    );
    let inv = sub.body["latest_invoice"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    keep(
        sim.get(
            &format!("/v1/invoices/{inv}"),
            &[
                ("expand[]", "payments"),
                ("expand[]", "confirmation_secret"),
            ],
        )
        .await,
        "invoice",
    );
    keep(
        sim.get(&format!("/v1/invoices/{inv}/lines"), &[]).await,
        "lines",
    );
    // A subscription whose first payment fails leaves an open invoice to pay by hand.
    let other = keep(
        sim.post(
            "/v1/customers",
            &[
                ("payment_method", "pm_card_chargeCustomerFail"),
                (
                    "invoice_settings[default_payment_method]",
                    "pm_card_chargeCustomerFail",
                ),
            ],
        )
        .await,
        "customer 2",
    );
    let incomplete = keep(
        sim.post(
            "/v1/subscriptions",
            &[
                ("customer", &other.id()),
                ("items[0][price]", &price.id()),
                ("payment_behavior", "default_incomplete"),
            ],
        )
        .await,
        "incomplete subscription",
    );
    let open = incomplete.body["latest_invoice"]
        .as_str()
        .unwrap()
        .to_owned();
    keep(
        sim.post(
            &format!("/v1/invoices/{open}/pay"),
            &[("payment_method", "pm_card_visa")],
        )
        .await,
        "pay",
    );
    let pi = keep(
        sim.post(
            "/v1/payment_intents",
            &[
                ("amount", "500"),
                ("currency", "usd"),
                ("payment_method", "pm_card_visa"),
                ("confirm", "true"),
                ("expand[]", "latest_charge"),
                ("expand[]", "payment_method"),
            ],
        )
        .await,
        "payment intent",
    );
    assert_eq!(pi.body["latest_charge"]["object"], "charge");
    let idle = sim
        .post(
            "/v1/payment_intents",
            &[("amount", "700"), ("currency", "usd")],
        )
        .await;
    keep(
        sim.post(&format!("/v1/payment_intents/{}/cancel", idle.id()), &[])
            .await,
        "canceled payment intent",
    );
    // A price change renders the item's plan again; a cancel fills cancellation_details.
    let item = sub.body["items"]["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let yearly = sim
        .post(
            "/v1/prices",
            &[
                ("currency", "usd"),
                ("unit_amount", "12000"),
                ("recurring[interval]", "year"),
                ("product", &product.id()),
            ],
        )
        .await;
    keep(
        sim.post(
            &format!("/v1/subscriptions/{}", sub.id()),
            &[("items[0][id]", &item), ("items[0][price]", &yearly.id())],
        )
        .await,
        "subscription price change",
    );
    keep(
        sim.delete(&format!("/v1/subscriptions/{}", incomplete.id()))
            .await,
        "subscription cancel",
    );
    let one_time = sim
        .post(
            "/v1/prices",
            &[
                ("currency", "usd"),
                ("unit_amount", "300"),
                ("product", &product.id()),
            ],
        )
        .await;
    let other_id = other.id();
    for (mode, extra) in [
        ("payment", vec![("line_items[0][price]", one_time.id())]),
        ("subscription", vec![("line_items[0][price]", price.id())]),
        ("setup", vec![("currency", "usd".to_owned())]),
    ] {
        let mut p: Vec<(&str, &str)> = vec![
            ("mode", mode),
            ("customer", &other_id),
            ("success_url", "https://example.com/ok"),
        ];
        for (k, v) in &extra {
            p.push((k, v.as_str()));
        }
        if mode != "setup" {
            p.push(("line_items[0][quantity]", "1"));
        }
        let cs = keep(sim.post("/v1/checkout/sessions", &p).await, "checkout");
        keep(
            sim.get(
                &format!("/v1/checkout/sessions/{}/line_items", cs.id()),
                &[],
            )
            .await,
            "checkout line items",
        );
        let done = keep(
            sim.sim(
                &format!("/_sim/checkout/sessions/{}/complete", cs.id()),
                json!({}),
            )
            .await,
            "checkout complete",
        );
        if let Some(pi) = done.body["payment_intent"].as_str() {
            keep(
                sim.get(
                    &format!("/v1/payment_intents/{pi}"),
                    &[("expand[]", "latest_charge")],
                )
                .await,
                "checkout payment intent",
            );
        }
        if let Some(si) = done.body["setup_intent"].as_str() {
            keep(
                sim.get(&format!("/v1/setup_intents/{si}"), &[]).await,
                "setup intent",
            );
        }
    }
    // The billing portal: a configuration with every feature, sessions with each kind of flow.
    let portal = keep(
        sim.post(
            "/v1/billing_portal/configurations",
            &[
                ("features[invoice_history][enabled]", "true"),
                ("features[payment_method_update][enabled]", "true"),
                ("features[customer_update][enabled]", "true"),
                ("features[customer_update][allowed_updates][]", "email"),
                ("features[subscription_cancel][enabled]", "true"),
                (
                    "features[subscription_cancel][cancellation_reason][enabled]",
                    "true",
                ),
                (
                    "features[subscription_cancel][cancellation_reason][options][]",
                    "too_expensive",
                ),
                ("features[subscription_update][enabled]", "true"),
                (
                    "features[subscription_update][default_allowed_updates][]",
                    "price",
                ),
                (
                    "features[subscription_update][products][0][product]",
                    &product.id(),
                ),
                (
                    "features[subscription_update][products][0][prices][]",
                    &price.id(),
                ),
                ("login_page[enabled]", "true"),
            ],
        )
        .await,
        "portal configuration",
    );
    keep(
        sim.post(
            &format!("/v1/billing_portal/configurations/{}", portal.id()),
            &[("name", "Everything")],
        )
        .await,
        "portal configuration update",
    );
    let live_sub = sub.id();
    for flow in [
        vec![("flow_data[type]", "payment_method_update")],
        vec![
            ("flow_data[type]", "subscription_cancel"),
            ("flow_data[subscription_cancel][subscription]", &live_sub),
            ("flow_data[after_completion][type]", "hosted_confirmation"),
            (
                "flow_data[after_completion][hosted_confirmation][custom_message]",
                "Bye",
            ),
        ],
        vec![
            ("flow_data[type]", "subscription_update"),
            ("flow_data[subscription_update][subscription]", &live_sub),
            ("flow_data[after_completion][type]", "redirect"),
            (
                "flow_data[after_completion][redirect][return_url]",
                "https://example.com/back",
            ),
        ],
        vec![
            ("flow_data[type]", "subscription_update_confirm"),
            (
                "flow_data[subscription_update_confirm][subscription]",
                &live_sub,
            ),
            (
                "flow_data[subscription_update_confirm][items][0][id]",
                &item,
            ),
            (
                "flow_data[subscription_update_confirm][items][0][price]",
                &yearly.id(),
            ),
            (
                "flow_data[subscription_update_confirm][items][0][quantity]",
                "2",
            ),
        ],
    ] {
        let cus_id = cus.id();
        let portal_id = portal.id();
        let mut p = vec![
            ("customer", cus_id.as_str()),
            ("configuration", portal_id.as_str()),
        ];
        p.extend(flow);
        p.push(("expand[]", "configuration"));
        keep(
            sim.post("/v1/billing_portal/sessions", &p).await,
            "portal session",
        );
    }
    keep(
        sim.post("/v1/billing_portal/sessions", &[("customer", &cus.id())])
            .await,
        "portal session on the default configuration",
    );
    for path in [
        "/v1/customers",
        "/v1/products",
        "/v1/prices",
        "/v1/subscriptions",
        "/v1/invoices",
        "/v1/payment_intents",
        "/v1/payment_methods",
        "/v1/checkout/sessions",
        "/v1/webhook_endpoints",
        "/v1/test_helpers/test_clocks",
        "/v1/billing_portal/configurations",
    ] {
        keep(sim.get(path, &[("limit", "100")]).await, path);
    }
    keep(
        sim.get(
            &format!("/v1/customers/{}/payment_methods", other.id()),
            &[],
        )
        .await,
        "customer payment methods",
    );
    keep(
        sim.get("/v1/subscriptions/search", &[("query", "status:'active'")])
            .await,
        "search",
    );
    keep(sim.get("/v1/events", &[("limit", "100")]).await, "events");
    keep(
        sim.delete(&format!("/v1/customers/{}", other.id())).await,
        "delete customer",
    );
    keep(
        sim.get(&format!("/v1/customers/{}", other.id()), &[]).await,
        "deleted customer",
    );
    let spare = sim.post("/v1/products", &[("name", "Spare")]).await;
    keep(
        sim.delete(&format!("/v1/products/{}", spare.id())).await,
        "delete product",
    );
    keep(
        sim.delete(&format!("/v1/webhook_endpoints/{}", hook.id()))
            .await,
        "delete endpoint",
    );
    keep(
        sim.delete(&format!("/v1/test_helpers/test_clocks/{}", clock.id()))
            .await,
        "delete clock",
    );
    // Events about deletions too, and whatever the webhook queue would have sent.
    keep(
        sim.get("/v1/events", &[("limit", "100")]).await,
        "events after deletions",
    );

    let mut seen = std::collections::BTreeSet::new();
    let mut missing = std::collections::BTreeSet::new();
    for b in &bodies {
        check_all(defs, b, &mut seen, &mut missing);
    }
    let unchecked: Vec<&String> = defs
        .as_object()
        .unwrap()
        .keys()
        .filter(|k| k.as_str() != "Address" && !seen.contains(k.as_str()))
        .collect();
    assert!(unchecked.is_empty(), "no response produced: {unchecked:?}");
    assert!(
        missing.is_empty(),
        "{} fields Stripe always sends are missing:\n{}",
        missing.len(),
        missing.iter().cloned().collect::<Vec<_>>().join("\n")
    );
}
