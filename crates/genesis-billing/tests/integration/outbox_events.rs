//! Events to the meta-agent (SPEC §1.6): every change of billing state writes exactly one event, in the
//! transaction of the change, whichever path finds it (webhook, checkout, takedown, roll-back, resume),
//! with the simulator delivering its webhooks back to the service as in production.

use std::time::Duration;

use genesis_billing::store::{OutboundEvent, Store};
use genesis_billing::webhook::signature::sign;
use serde_json::{json, Value};
use stripe_sim::FaultKind;

use crate::common::{self, eventually, fault, wired, World};

const WAIT: Duration = Duration::from_secs(30);

/// Every event of a business in commit order.
async fn events_of(store: &Store, business: &str) -> Vec<OutboundEvent> {
    common::events::outbox_of(store, Some(business)).await
}

fn of_type<'a>(events: &'a [OutboundEvent], t: &str) -> Vec<&'a OutboundEvent> {
    events.iter().filter(|e| e.update_type == t).collect()
}

fn data(e: &OutboundEvent) -> Value {
    serde_json::from_str(&e.data).unwrap()
}

/// The status changes as `from>to`.
fn status_chain(events: &[OutboundEvent]) -> Vec<String> {
    of_type(events, "billing.status_changed")
        .iter()
        .map(|e| {
            let d = data(e);
            format!(
                "{}>{}",
                d["from"].as_str().unwrap(),
                d["to"].as_str().unwrap()
            )
        })
        .collect()
}

/// Waits until the business has an event of type `t` (`n` of them).
async fn wait_for(world: &World, business: &str, t: &str, n: usize) {
    let store = world.service.store().clone();
    let business = business.to_owned();
    let t = t.to_owned();
    eventually(&format!("{n} × {t}"), WAIT, move || {
        let (store, business, t) = (store.clone(), business.clone(), t.clone());
        async move { of_type(&events_of(&store, &business).await, &t).len() >= n }
    })
    .await;
}

/// Attaches a test card to the customer and makes it the subscription's payment method.
async fn use_card(world: &World, customer: &str, subscription: &str, card: &str) {
    let (status, pm) = world
        .sim_call(
            reqwest::Method::POST,
            &format!("/v1/payment_methods/{card}/attach"),
            &[("customer", customer)],
        )
        .await;
    assert_eq!(status, 200, "{pm}");
    let (status, sub) = world
        .sim_call(
            reqwest::Method::POST,
            &format!("/v1/subscriptions/{subscription}"),
            &[("default_payment_method", pm["id"].as_str().unwrap())],
        )
        .await;
    assert_eq!(status, 200, "{sub}");
}

/// Posts a Stripe event to the service as Stripe would, signed.
async fn deliver(app: &common::App, event: &Value) -> u16 {
    let body = event.to_string();
    app.client
        .post(app.url("/stripe/webhook"))
        .header(
            "stripe-signature",
            sign(
                &app.webhook_secrets[0],
                genesis_billing::store::now(),
                body.as_bytes(),
            ),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_whole_lifecycle_writes_each_change_once_in_order() {
    lifecycle(World::new().await).await;
}

#[tokio::test]
async fn a_whole_lifecycle_writes_each_change_once_in_order_on_postgres() {
    lifecycle(World::postgres().await).await;
}

async fn lifecycle(world: World) {
    let (world, app) = wired(world).await;
    let id = app.create("Acme", "saas").await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    world.wait_subscription_status(&id, "active").await;
    wait_for(&world, &id, "billing.payment_succeeded", 1).await;
    let b = world.record(&id).await;
    let (customer, sub) = (
        b.stripe_customer_id.clone().unwrap(),
        b.stripe_subscription_id.clone().unwrap(),
    );

    // A renewal fails on a card that declines, then Stripe's retry pays with a good one.
    use_card(&world, &customer, &sub, "pm_card_chargeCustomerFail").await;
    world
        .sim_control("/_sim/clock/advance", json!({"seconds": 31 * 86_400}))
        .await;
    world.wait_subscription_status(&id, "past_due").await;
    wait_for(&world, &id, "billing.payment_failed", 1).await;
    use_card(&world, &customer, &sub, "pm_card_visa").await;
    world
        .sim_control("/_sim/clock/advance", json!({"seconds": 2 * 86_400}))
        .await;
    world.wait_subscription_status(&id, "active").await;
    wait_for(&world, &id, "billing.payment_succeeded", 2).await;

    // The owner cancels in Stripe: the business goes down, and the meta-agent is told who decided.
    world
        .delete_in_stripe(&format!("/v1/subscriptions/{sub}"))
        .await;
    wait_for(&world, &id, "business.taken_down", 1).await;

    let events = events_of(world.service.store(), &id).await;
    let types: Vec<&str> = events.iter().map(|e| e.update_type.as_str()).collect();
    assert_eq!(types.first(), Some(&"billing.provisioned"), "{types:?}");
    assert_eq!(types.last(), Some(&"business.taken_down"), "{types:?}");
    assert_eq!(
        status_chain(&events),
        [
            "incomplete>active",
            "active>past_due",
            "past_due>active",
            "active>canceled"
        ],
        "{types:?}"
    );
    // Stripe sends `invoice.paid` and `invoice.payment_succeeded` for each payment: one event each.
    let paid = of_type(&events, "billing.payment_succeeded");
    assert_eq!(paid.len(), 2, "{types:?}");
    assert_ne!(data(paid[0])["invoice_id"], data(paid[1])["invoice_id"]);
    for p in &paid {
        let d = data(p);
        assert_eq!(d["amount_paid_cents"], 500, "{d}");
        assert_eq!(d["currency"], "usd");
    }
    let failed = of_type(&events, "billing.payment_failed");
    assert_eq!(failed.len(), 1, "{types:?}");
    let f = data(failed[0]);
    assert_eq!(f["amount_due_cents"], 500, "{f}");
    assert_eq!(f["attempt_count"], 1, "{f}");
    assert!(f["next_payment_attempt"].as_str().unwrap().ends_with('Z'));
    assert!(f["hosted_invoice_url"]
        .as_str()
        .unwrap()
        .starts_with("http"));
    assert_eq!(
        f["invoice_id"],
        data(paid[1])["invoice_id"],
        "the retry paid it"
    );
    assert_eq!(events.len(), 9, "{types:?}");

    let provisioned = data(&events[0]);
    assert_eq!(provisioned["customer_id"], customer.as_str());
    assert_eq!(provisioned["subscription_id"], sub.as_str());
    assert_eq!(provisioned["subscription_status"], "incomplete");
    assert_eq!(provisioned["amount_cents"], 500);
    assert_eq!(provisioned["currency"], "usd");
    assert_eq!(provisioned["interval"], "month");
    assert!(provisioned["price_lookup_key"].is_string());
    let down = data(events.last().unwrap());
    assert_eq!(down["initiated_by"], "stripe");
    assert_eq!(down["reason"], "subscription_cancelled");
    assert_eq!(down["status"], "success");

    // The envelope is fixed, ids are unique, and reading twice gives the same bytes.
    let mut ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), events.len());
    for e in &events {
        let body: Value = serde_json::from_str(&e.body()).unwrap();
        let keys: Vec<&str> = body
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys.len(), 5, "{body}");
        for k in ["id", "business_id", "update_type", "data", "timestamp"] {
            assert!(body.get(k).is_some(), "{k} in {body}");
        }
        assert_eq!(body["business_id"], id.as_str());
        assert!(body["id"].as_str().unwrap().starts_with("gbe_"));
        let again = world.service.store().outbound_event(&e.id).await.unwrap();
        assert_eq!(again.unwrap().body(), e.body());
    }

    // The failed payment again, as a webhook delivered twice and as a copy under another id (gap fill
    // finding it): the service takes both, and the meta-agent hears of the failure once.
    let (status, list) = world
        .sim_call(
            reqwest::Method::GET,
            "/v1/events?type=invoice.payment_failed",
            &[],
        )
        .await;
    assert_eq!(status, 200);
    let original = list["data"][0].clone();
    assert_eq!(deliver(&app, &original).await, 200);
    let mut copy = original.clone();
    copy["id"] = json!(format!("evt_copy_{}", uuid::Uuid::new_v4().simple()));
    assert_eq!(deliver(&app, &copy).await, 200);
    let store = world.service.store().clone();
    let copy_id = copy["id"].as_str().unwrap().to_owned();
    eventually("the copy applied", WAIT, move || {
        let (store, copy_id) = (store.clone(), copy_id.clone());
        async move {
            store
                .event(&copy_id)
                .await
                .unwrap()
                .is_some_and(|e| e.status == "applied")
        }
    })
    .await;
    let after = events_of(world.service.store(), &id).await;
    assert_eq!(after, events, "no second event for one change");
}

#[tokio::test]
async fn a_takedown_through_the_api_is_reported_once_as_the_apis() {
    let (world, app) = wired(World::new().await).await;
    let id = app.create("Shop", "ecommerce").await;
    let r = app
        .admin(
            reqwest::Method::DELETE,
            &format!("/v1/businesses/{id}?reason=retired"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Our own cancellation comes back as `customer.subscription.deleted`: it must change nothing more.
    let store = world.service.store().clone();
    let business = id.clone();
    eventually("the cancellation's webhook applied", WAIT, move || {
        let (store, business) = (store.clone(), business.clone());
        async move {
            store.list_events(None, 100).await.unwrap().iter().any(|e| {
                e.event_type == "customer.subscription.deleted"
                    && e.business_id.as_deref() == Some(business.as_str())
                    && e.status != "pending"
            })
        }
    })
    .await;
    let events = events_of(world.service.store(), &id).await;
    let types: Vec<&str> = events.iter().map(|e| e.update_type.as_str()).collect();
    assert_eq!(
        types,
        [
            "billing.provisioned",
            "billing.status_changed",
            "business.taken_down"
        ]
    );
    assert_eq!(status_chain(&events), ["incomplete>canceled"]);
    let down = data(&events[2]);
    assert_eq!(down["initiated_by"], "api");
    assert_eq!(down["reason"], "retired");
    assert_eq!(down["stripe"], "cancelled");
    assert_eq!(down["customer_deleted"], true);
}

#[tokio::test]
async fn a_roll_back_reports_billing_stopped_and_never_a_takedown() {
    let (world, app) = wired(World::new().await).await;
    let ids = [
        app.create("One", "saas").await,
        app.create("Two", "saas").await,
    ];
    // The CLI is another process calling the in-process simulator: run it off this runtime's thread.
    let env = world.cli_env();
    tokio::task::spawn_blocking(move || common::run_ok(&env, &["cancel-all", "--confirm"]))
        .await
        .unwrap();
    for id in &ids {
        wait_for(&world, id, "billing.rolled_back", 1).await;
    }
    // The simulator's `customer.subscription.deleted` for each reaches the service and is recognised.
    let store = world.service.store().clone();
    eventually("the roll-back's webhooks applied", WAIT, move || {
        let store = store.clone();
        async move {
            store
                .list_events(None, 100)
                .await
                .unwrap()
                .iter()
                .filter(|e| {
                    e.event_type == "customer.subscription.deleted" && e.status != "pending"
                })
                .count()
                == 2
        }
    })
    .await;
    for id in &ids {
        let events = events_of(world.service.store(), id).await;
        let types: Vec<&str> = events.iter().map(|e| e.update_type.as_str()).collect();
        assert_eq!(
            types,
            [
                "billing.provisioned",
                "billing.status_changed",
                "billing.rolled_back"
            ],
            "{id}"
        );
        let sub = world.record(id).await.stripe_subscription_id.unwrap();
        assert_eq!(data(&events[2])["subscription_id"], sub.as_str());
        assert_eq!(status_chain(&events), ["incomplete>canceled"]);
    }
}

#[tokio::test]
async fn a_provisioning_failure_is_reported_once_however_often_it_is_retried() {
    let world = World::new().await;
    world.sim.set_faults(vec![fault(
        FaultKind::Http500,
        1.0,
        Some("POST /v1/customers"),
    )]);
    let b = world.saas("Unlucky").await;
    world.service.resume().await.unwrap();
    world.service.resume().await.unwrap();
    let events = events_of(world.service.store(), &b.business_id).await;
    let types: Vec<&str> = events.iter().map(|e| e.update_type.as_str()).collect();
    assert_eq!(types, ["billing.failed"]);
    let d = data(&events[0]);
    assert_eq!(d["step"], "customer");
    assert!(d["reason"].as_str().unwrap().contains("500"), "{d}");

    world.sim.set_faults(Vec::new());
    world.service.resume().await.unwrap();
    let events = events_of(world.service.store(), &b.business_id).await;
    let types: Vec<&str> = events.iter().map(|e| e.update_type.as_str()).collect();
    assert_eq!(types, ["billing.failed", "billing.provisioned"]);
}

/// Only the oldest undelivered event of each business is found due (the others wait behind it on an
/// index, not in a walk of every pending row); settling it lets the next one go; one stranded behind a
/// vanished event is freed by the sweep.
async fn only_heads_are_due(store: &Store, raw_url: &str) {
    use genesis_billing::store::{Settle, SettleOutcome};
    use sqlx::Connection as _;
    let event = |business: &str, cause: &str| genesis_billing::store::NewOutbound {
        business_id: business.to_owned(),
        update_type: "billing.status_changed",
        data: json!({"cause": cause}),
        cause: cause.to_owned(),
    };
    for (b, c) in [
        ("hx", "h1"),
        ("hx", "h2"),
        ("hy", "h3"),
        ("hz", "h4"),
        ("hz", "h5"),
    ] {
        assert!(store.emit(&event(b, c)).await.unwrap());
    }
    let now = genesis_billing::store::now_ms();
    let causes = |events: &[OutboundEvent]| -> Vec<String> {
        events
            .iter()
            .map(|e| data(e)["cause"].as_str().unwrap().to_owned())
            .collect()
    };
    let due = store.due_outbound(now, 10).await.unwrap();
    assert_eq!(causes(&due), ["h1", "h3", "h4"]);

    assert!(store
        .claim_outbound(due[0].seq, "w", now, now + 60_000)
        .await
        .unwrap());
    let settled = store
        .settle_outbound(
            "w",
            &[Settle {
                seq: due[0].seq,
                business_id: "hx".into(),
                outcome: SettleOutcome::Delivered,
                claim_next: true,
            }],
            now,
            now + 60_000,
        )
        .await
        .unwrap();
    assert!(settled[0].held);
    assert_eq!(causes(&[settled[0].next.clone().unwrap()]), ["h2"]);

    // h4 vanishes without settling (as if pruned): h5 is stranded until the sweep frees it.
    let h4 = due[2].id.clone();
    let mut raw = sqlx::AnyConnection::connect(raw_url).await.unwrap();
    sqlx::query("DELETE FROM outbound_event WHERE id = $1")
        .bind(&h4)
        .execute(&mut raw)
        .await
        .unwrap();
    let due = store.due_outbound(now, 10).await.unwrap();
    assert_eq!(causes(&due), ["h3"], "h2 is leased, h5 stranded");
    assert_eq!(store.unblock_stranded().await.unwrap(), 1);
    assert_eq!(store.unblock_stranded().await.unwrap(), 0);
    let due = store.due_outbound(now, 10).await.unwrap();
    assert_eq!(causes(&due), ["h3", "h5"]);
}

#[tokio::test]
async fn only_the_oldest_undelivered_event_of_a_business_is_due_on_sqlite() {
    sqlx::any::install_default_drivers();
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("heads.db").display());
    let store = Store::connect(&genesis_billing::store::DatabaseUrl::new(url.clone()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    only_heads_are_due(&store, &url).await;
}

#[tokio::test]
async fn only_the_oldest_undelivered_event_of_a_business_is_due_on_postgres() {
    sqlx::any::install_default_drivers();
    let db = common::postgres::TestDatabase::create("gb_heads").await;
    let store = Store::connect(&genesis_billing::store::DatabaseUrl::new(db.url.clone()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    only_heads_are_due(&store, &db.url).await;
}
