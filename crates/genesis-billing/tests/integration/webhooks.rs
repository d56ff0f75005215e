//! Stripe webhooks: hostile deliveries refused, and real signed deliveries from the simulator applied once.

use crate::common;

use std::time::Duration;

use common::{eventually, App, World, ADMIN_TOKEN};
use genesis_billing::business::{Billing, Business, Lifecycle};
use genesis_billing::store::now;
use genesis_billing::webhook::signature::sign;
use reqwest::Method;
use serde_json::{json, Value};

const SECRET: &str = "whsec_tests_secret";

fn event(id: &str, kind: &str, object: Value) -> Vec<u8> {
    json!({"id": id, "object": "event", "type": kind, "created": now(), "livemode": false, "data": {"object": object}}).to_string().into_bytes()
}

async fn post(app: &App, signature: Option<String>, body: Vec<u8>) -> (u16, Value) {
    let mut req = app
        .client
        .post(app.url("/stripe/webhook"))
        .header("content-type", "application/json")
        .body(body);
    if let Some(s) = signature {
        req = req.header("stripe-signature", s);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn hostile_webhooks_get_a_4xx_change_nothing_and_are_counted_by_reason() {
    let world = World::new().await;
    let b = world.saas("Target").await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[SECRET.to_owned()], None).await;
    let cancel = event(
        "evt_hostile",
        "customer.subscription.deleted",
        json!({"id": b.stripe_subscription_id, "object": "subscription", "status": "canceled", "customer": b.stripe_customer_id, "metadata": {"business_id": b.business_id}}),
    );
    let t = now();
    let mut altered = cancel.clone();
    altered.extend_from_slice(b" ");
    let mut not_utf8 =
        br#"{"id":"evt_bytes","type":"invoice.paid","created":1,"data":{"object":{"note":""#
            .to_vec();
    not_utf8.extend_from_slice(&[0xff, 0xfe]);
    not_utf8.extend_from_slice(br#""}}}"#);
    let not_an_object =
        br#"{"id":"evt_str","type":"customer.deleted","created":1,"data":{"object":"cus_1"}}"#
            .to_vec();
    let cases: Vec<(Option<String>, Vec<u8>, u16, &str)> = vec![
        (None, cancel.clone(), 401, "missing_signature"),
        (
            Some("t=abc,v1=zz".into()),
            cancel.clone(),
            401,
            "malformed_signature",
        ),
        (
            Some(sign("whsec_wrong", t, &cancel)),
            cancel.clone(),
            401,
            "bad_signature",
        ),
        (
            Some(sign(SECRET, t, &cancel)),
            altered,
            401,
            "bad_signature",
        ),
        (
            Some(sign(SECRET, t - 301, &cancel)),
            cancel.clone(),
            401,
            "stale_timestamp",
        ),
        // Well past the edge: `t` was read before the earlier cases ran, and the service's clock may have
        // moved on a second since (the exact edges are unit-tested in `signature.rs`).
        (
            Some(sign(SECRET, t + 360, &cancel)),
            cancel.clone(),
            401,
            "future_timestamp",
        ),
        // The signature of another body.
        (
            Some(sign(SECRET, t, br#"{"id":"evt_other"}"#)),
            cancel.clone(),
            401,
            "bad_signature",
        ),
        // A captured delivery replayed later: a fresh timestamp with the old signature.
        (
            Some(format!(
                "t={},{}",
                t + 5,
                sign(SECRET, t - 100, &cancel).split_once(',').unwrap().1
            )),
            cancel.clone(),
            401,
            "bad_signature",
        ),
        (Some(sign(SECRET, t, b"")), Vec::new(), 400, "bad_payload"),
        (
            Some(sign(SECRET, t, b"not json")),
            b"not json".to_vec(),
            400,
            "bad_payload",
        ),
        (
            Some(sign(SECRET, t, br#"{"id":"evt_x"}"#)),
            br#"{"id":"evt_x"}"#.to_vec(),
            400,
            "bad_payload",
        ),
        (
            Some(sign(SECRET, t, &[0xff, 0xfe])),
            vec![0xff, 0xfe],
            400,
            "bad_payload",
        ),
        // A well-formed envelope with bytes that are not UTF-8 in a field the receiver skips: refused, never
        // stored altered.
        (
            Some(sign(SECRET, t, &not_utf8)),
            not_utf8.clone(),
            400,
            "bad_payload",
        ),
        // `data.object` that is not an object.
        (
            Some(sign(SECRET, t, &not_an_object)),
            not_an_object.clone(),
            400,
            "bad_payload",
        ),
        (
            Some(sign(SECRET, t, &vec![b' '; 2 << 20])),
            vec![b' '; 2 << 20],
            413,
            "too_large",
        ),
    ];
    for (signature, body, want, reason) in cases {
        let counted = || {
            world
                .metrics
                .value("genesis_billing_webhook_rejected_total", &[reason])
        };
        let before = counted();
        let (status, v) = post(&app, signature, body).await;
        assert_eq!(status, want, "{reason}: {v}");
        assert_eq!(v["error"]["code"], reason);
        assert_eq!(counted(), before + 1.0, "{reason} counted once");
    }
    assert_nothing_stored(&world).await;
    let record = world.record(&b.business_id).await;
    assert_eq!(record.status, Lifecycle::Active, "nothing changed");

    // Without any secret configured, even a correctly signed event is refused.
    let open = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    let (status, v) = post(&open, Some(sign(SECRET, t, &cancel)), cancel.clone()).await;
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (403, Some("no_secret"))
    );
    assert_eq!(world.record(&b.business_id).await.status, Lifecycle::Active);
}

#[tokio::test]
async fn a_signed_event_is_stored_applied_once_and_its_duplicate_acknowledged() {
    let world = World::new().await;
    let b = world.saas("Dup").await;
    let app = App::start(
        &world,
        &[ADMIN_TOKEN],
        &["whsec_old".to_owned(), SECRET.to_owned()],
        None,
    )
    .await;
    let mut sub = world.subscriptions_of(&b.business_id)[0].clone();
    sub["status"] = json!("past_due");
    // A state clearly newer than the one provisioning stored (a tie would be settled by asking Stripe).
    let body = json!({"id": "evt_once", "object": "event", "type": "customer.subscription.updated", "created": b.stripe_state_at + 5, "data": {"object": sub}})
        .to_string()
        .into_bytes();
    let (s1, v1) = post(&app, Some(sign(SECRET, now(), &body)), body.clone()).await;
    assert_eq!((s1, v1["received"].as_bool()), (200, Some(true)));
    assert!(
        world
            .service
            .store()
            .event("evt_once")
            .await
            .unwrap()
            .is_some(),
        "stored before the 2xx"
    );
    let (s2, v2) = post(&app, Some(sign(SECRET, now(), &body)), body.clone()).await;
    assert_eq!((s2, v2["duplicate"].as_bool()), (200, Some(true)));
    wait_event(&world, "evt_once", "applied").await;
    let stored = world
        .service
        .store()
        .event("evt_once")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((stored.status.as_str(), stored.attempts), ("applied", 1));
    let record = world.record(&b.business_id).await;
    assert_eq!(record.subscription_status.as_deref(), Some("past_due"));
    assert_eq!(
        world.metrics.value(
            "genesis_billing_webhook_events_total",
            &["customer.subscription.updated", "duplicate"]
        ),
        1.0
    );
    assert_eq!(
        world.metrics.value(
            "genesis_billing_webhook_events_total",
            &["customer.subscription.updated", "applied"]
        ),
        1.0,
        "counted applied once"
    );

    // An older state delivered late does not move the record backwards.
    let mut older = world.subscriptions_of(&b.business_id)[0].clone();
    older["status"] = json!("incomplete");
    let late = json!({"id": "evt_late", "object": "event", "type": "customer.subscription.updated", "created": record.stripe_state_at - 10, "data": {"object": older}}).to_string().into_bytes();
    let (s3, _) = post(&app, Some(sign(SECRET, now(), &late)), late).await;
    assert_eq!(s3, 200);
    wait_event(&world, "evt_late", "ignored").await;
    let record = world.record(&b.business_id).await;
    assert_eq!(record.subscription_status.as_deref(), Some("past_due"));

    // Unknown types and unknown businesses are acknowledged and ignored.
    let unknown = event("evt_unknown", "charge.refunded", json!({"id": "ch_1"}));
    assert_eq!(
        post(&app, Some(sign(SECRET, now(), &unknown)), unknown)
            .await
            .0,
        200
    );
    let stranger = event(
        "evt_stranger",
        "customer.subscription.updated",
        json!({"id": "sub_nobody", "object": "subscription", "status": "active", "customer": "cus_nobody", "metadata": {}, "items": {"data": []}}),
    );
    assert_eq!(
        post(&app, Some(sign(SECRET, now(), &stranger)), stranger)
            .await
            .0,
        200
    );
    for (id, why) in [
        ("evt_stranger", "unknown business"),
        ("evt_unknown", "unhandled event type"),
    ] {
        wait_event(&world, id, "ignored").await;
        let e = world.service.store().event(id).await.unwrap().unwrap();
        assert_eq!(e.last_error.as_deref(), Some(why), "{id}");
    }
    for (kind, events) in [
        ("charge.refunded", 1.0),
        ("customer.subscription.updated", 2.0),
    ] {
        assert_eq!(
            world
                .metrics
                .value("genesis_billing_webhook_events_total", &[kind, "ignored"]),
            events,
            "{kind}: counted as ignored (evt_late, evt_stranger)"
        );
    }
}

async fn wired() -> (World, App) {
    common::wired(World::new().await).await
}

async fn complete_checkout(world: &World, app: &App, id: &str, pm: &str) -> u16 {
    world.complete_checkout(&app.checkout(id).await, pm).await
}

#[tokio::test]
async fn webhooks_from_the_simulator_activate_take_down_and_mark_past_due() {
    let (world, app) = wired().await;

    // A payment completed through Checkout turns the subscription active.
    let paid = app.create("Paying", "saas").await;
    assert_eq!(
        complete_checkout(&world, &app, &paid, "pm_card_visa").await,
        200
    );
    world.wait_subscription_status(&paid, "active").await;

    // A subscription cancelled in Stripe takes the business down.
    let doomed = app.create("Cancelled in Stripe", "saas").await;
    let sub = world.record(&doomed).await.stripe_subscription_id.unwrap();
    world
        .delete_in_stripe(&format!("/v1/subscriptions/{sub}"))
        .await;
    eventually(
        "the business to be taken down",
        Duration::from_secs(10),
        || async {
            let b = world.record(&doomed).await;
            b.status == Lifecycle::TakenDown
                && b.takedown_reason.as_deref() == Some("subscription_cancelled")
        },
    )
    .await;

    // A renewal that fails makes it past_due.
    assert_eq!(
        complete_checkout(&world, &app, &paid, "pm_card_chargeCustomerFail").await,
        200
    );
    eventually(
        "the failing card to become the default",
        Duration::from_secs(10),
        || async {
            world
                .history(&paid)
                .await
                .iter()
                .filter(|k| *k == "checkout_completed")
                .count()
                == 2
        },
    )
    .await;
    world
        .sim_control("/_sim/clock/advance", json!({"seconds": 32 * 86_400}))
        .await;
    world.wait_subscription_status(&paid, "past_due").await;
    eventually(
        "the failed payment to be recorded",
        Duration::from_secs(10),
        || async {
            world
                .history(&paid)
                .await
                .iter()
                .any(|k| k == "invoice_payment_failed")
        },
    )
    .await;
}

#[tokio::test]
async fn duplicated_and_reordered_deliveries_are_applied_once_and_records_equal_stripe() {
    let (world, app) = wired().await;
    world.sim_control("/_sim/webhooks", json!({"duplicate_probability": 0.5, "reorder_window": 5, "retry_schedule_ms": [50, 100, 200]})).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        ids.push(app.create(&format!("Chaos {i}"), "saas").await);
    }
    for id in &ids[..3] {
        assert_eq!(
            complete_checkout(&world, &app, id, "pm_card_visa").await,
            200
        );
    }
    let sub = world.record(&ids[3]).await.stripe_subscription_id.unwrap();
    world
        .sim_call(Method::DELETE, &format!("/v1/subscriptions/{sub}"), &[])
        .await;

    eventually(
        "records to match the simulator",
        Duration::from_secs(20),
        || async {
            let mut all_match = true;
            for id in &ids {
                let b = world.record(id).await;
                let stripe = &world.subscriptions_of(id)[0];
                all_match &= b.subscription_status.as_deref() == stripe["status"].as_str();
            }
            // Quiet: every event Stripe emitted for the endpoint is stored here and finished.
            let stored: std::collections::HashMap<String, String> = world
                .service
                .store()
                .list_events(None, 10_000)
                .await
                .unwrap()
                .into_iter()
                .map(|e| (e.event_id, e.status))
                .collect();
            let emitted = world.objects("event");
            let all_finished = emitted
                .iter()
                .filter(|e| {
                    genesis_billing::billing::HANDLED_EVENTS
                        .contains(&e["type"].as_str().unwrap_or(""))
                })
                .all(|e| {
                    stored
                        .get(e["id"].as_str().unwrap_or(""))
                        .is_some_and(|s| s != "pending")
                });
            all_match && all_finished
        },
    )
    .await;
    let duplicates: f64 = genesis_billing::billing::HANDLED_EVENTS
        .iter()
        .map(|t| {
            world
                .metrics
                .value("genesis_billing_webhook_events_total", &[t, "duplicate"])
        })
        .sum();
    assert!(duplicates > 0.0, "the simulator duplicated some deliveries");
    for e in world.service.store().list_events(None, 1000).await.unwrap() {
        assert_eq!(e.attempts, 1, "{} applied once", e.event_id);
        assert!(
            e.status == "applied" || e.status == "ignored",
            "{} is {}",
            e.event_id,
            e.status
        );
    }
    assert_eq!(world.record(&ids[3]).await.status, Lifecycle::TakenDown);
}

/// Waits until a stored event reaches `status` (events are applied right after they are acknowledged).
/// The inbox holds no event at all.
async fn assert_nothing_stored(world: &World) {
    assert!(
        world
            .service
            .store()
            .list_events(None, 10)
            .await
            .unwrap()
            .is_empty(),
        "nothing stored"
    );
}

async fn wait_event(world: &World, id: &str, status: &str) {
    eventually(
        &format!("{id} to be {status}"),
        Duration::from_secs(10),
        || async {
            world
                .service
                .store()
                .event(id)
                .await
                .unwrap()
                .is_some_and(|e| e.status == status)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_apply_is_visible_listed_as_failed_and_replayed_by_the_cli() {
    // The service's own retries wait an hour: the replay below is the CLI's, not a race with them.
    let (world, app) =
        common::wired_with(World::new().await, Some(Duration::from_secs(3600))).await;
    let id = app.create("Flaky Stripe", "saas").await;
    // Applying checkout.session.completed reads the SetupIntent from Stripe: make that fail.
    world.sim.set_faults(vec![common::fault(
        stripe_sim::FaultKind::Http500,
        1.0,
        Some("GET /v1/setup_intents"),
    )]);
    let status = complete_checkout(&world, &app, &id, "pm_card_visa").await;
    assert_eq!(status, 200);
    let failed = {
        let mut found = None;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while found.is_none() {
            found = world
                .service
                .store()
                .list_events(Some("failed"), 10)
                .await
                .unwrap()
                .into_iter()
                .next();
            assert!(
                std::time::Instant::now() < deadline,
                "the failed apply to be recorded"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        found.unwrap()
    };
    assert_eq!(
        (failed.event_type.as_str(), failed.attempts),
        ("checkout.session.completed", 1)
    );
    assert!(
        failed.last_error.as_deref().unwrap().contains("500"),
        "{:?}",
        failed.last_error
    );

    let env = world.cli_env();
    let run = |args: &[&str]| common::output(&env, args);
    let listed = tokio::task::block_in_place(|| run(&["--json", "webhooks", "list", "--failed"]));
    let events: Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(events[0]["event_id"], failed.event_id.as_str());
    assert_eq!(events[0]["status"], "failed");

    world.sim.set_faults(vec![]);
    let replayed =
        tokio::task::block_in_place(|| run(&["--json", "webhooks", "replay", &failed.event_id]));
    assert!(
        replayed.status.success(),
        "{}",
        String::from_utf8_lossy(&replayed.stderr)
    );
    let after: Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(after["status"], "applied");
    assert_eq!(
        world.record(&id).await.subscription_status.as_deref(),
        Some("active")
    );
    let missing = tokio::task::block_in_place(|| run(&["webhooks", "replay", "evt_nothing"]));
    assert_eq!(missing.status.code(), Some(1));
}

#[tokio::test]
async fn events_left_pending_by_a_crash_are_applied_once_each_when_the_service_starts() {
    let world = World::new().await;
    let b = world.saas("Interrupted").await;
    // Stored, unleased and pending: what a service killed before applying them leaves behind.
    let sub = world.subscriptions_of(&b.business_id)[0].clone();
    let statuses = ["past_due", "active", "past_due"];
    for (n, status) in statuses.iter().enumerate() {
        let mut object = sub.clone();
        object["status"] = json!(status);
        let id = format!("evt_left_{n}");
        let created = b.stripe_state_at + 1 + n as i64;
        let body = json!({"id": id, "object": "event", "type": "customer.subscription.updated", "created": created, "data": {"object": object}}).to_string();
        assert!(world
            .service
            .store()
            .insert_event(
                &id,
                "customer.subscription.updated",
                created,
                "webhook",
                &body
            )
            .await
            .unwrap());
    }
    let status = || async { world.record(&b.business_id).await.subscription_status };
    assert_eq!(
        status().await.as_deref(),
        Some("incomplete"),
        "nothing applied before the service starts"
    );

    let _app = App::start(&world, &[ADMIN_TOKEN], &[SECRET.to_owned()], None).await;
    for n in 0..statuses.len() {
        let id = format!("evt_left_{n}");
        wait_event(&world, &id, "applied").await;
        let e = world.service.store().event(&id).await.unwrap().unwrap();
        assert_eq!(e.attempts, 1, "{id} applied once");
    }
    assert_eq!(
        status().await.as_deref(),
        Some("past_due"),
        "the newest state wins"
    );
}

/// A cancellation of `b`'s subscription: applied, it would take the business down.
fn cancellation(b: &Business) -> Value {
    json!({"id": b.stripe_subscription_id, "object": "subscription", "status": "canceled", "customer": b.stripe_customer_id, "metadata": {"business_id": b.business_id}})
}

/// `value` wrapped in `levels` single-key objects.
fn nested(levels: usize, value: Value) -> Value {
    (0..levels).fold(value, |inner, _| json!({ "n": inner }))
}

async fn assert_untouched(world: &World, before: &Business) {
    let now = world.record(&before.business_id).await;
    assert_eq!(
        (
            now.status,
            now.billing,
            now.subscription_status.as_deref(),
            now.stripe_state_at,
            now.updated_at
        ),
        (
            before.status,
            before.billing,
            before.subscription_status.as_deref(),
            before.stripe_state_at,
            before.updated_at
        ),
        "the business record is unchanged"
    );
}

#[tokio::test]
async fn deep_nesting_and_ids_or_types_outside_stripes_character_set_are_refused_before_storing() {
    let world = World::new().await;
    let b = world.saas("Charset").await;
    let before = world.record(&b.business_id).await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[SECRET.to_owned()], None).await;
    let envelope = |id: &str, kind: &str, object: Value| json!({"id": id, "object": "event", "type": kind, "created": now(), "livemode": false, "data": {"object": object}});
    let cancel = "customer.subscription.deleted";
    let mut deep = cancellation(&b);
    deep["metadata"]["deep"] = nested(200, json!(1));
    // The envelope, `data`, the object and its metadata are four levels: 61 more make 65, one over.
    let mut just_over = cancellation(&b);
    just_over["metadata"]["deep"] = nested(61, json!(1));
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "nested 200 levels deep",
            envelope("evt_deep", cancel, deep).to_string().into_bytes(),
        ),
        (
            "nested one level over the limit",
            envelope("evt_just_over", cancel, just_over)
                .to_string()
                .into_bytes(),
        ),
        // serde_json escapes the NUL as \u0000 in the body, which the receiver reads as a NUL.
        (
            "an id with a NUL",
            event("evt_a\0b", cancel, cancellation(&b)),
        ),
        (
            "an id with a hyphen",
            event("evt_a-b", cancel, cancellation(&b)),
        ),
        (
            "an id with a non-ASCII letter",
            event("evt_\u{e9}t\u{e9}", cancel, cancellation(&b)),
        ),
        (
            "an id of another object",
            event("sub_123", cancel, cancellation(&b)),
        ),
        (
            "an id of 300 characters",
            event(
                &format!("evt_{}", "a".repeat(296)),
                cancel,
                cancellation(&b),
            ),
        ),
        (
            "a type with a NUL",
            event(
                "evt_type_nul",
                "customer.subscription.deleted\0",
                cancellation(&b),
            ),
        ),
        (
            "a type in capitals",
            event(
                "evt_type_caps",
                "Customer.Subscription.Deleted",
                cancellation(&b),
            ),
        ),
        (
            "a type with a space",
            event(
                "evt_type_space",
                "customer subscription.deleted",
                cancellation(&b),
            ),
        ),
        (
            "an empty type",
            event("evt_type_empty", "", cancellation(&b)),
        ),
    ];
    let rejected = || {
        world
            .metrics
            .value("genesis_billing_webhook_rejected_total", &["bad_payload"])
    };
    for (what, body) in cases {
        let counted = rejected();
        let (status, v) = post(&app, Some(sign(SECRET, now(), &body)), body).await;
        assert_eq!(
            (status, v["error"]["code"].as_str()),
            (400, Some("bad_payload")),
            "{what}: {v}"
        );
        assert_eq!(rejected(), counted + 1.0, "{what} counted once");
    }
    assert_nothing_stored(&world).await;
    assert_untouched(&world, &before).await;

    // At the limit exactly (3 + 61 levels), an event is stored (an unhandled type, settled as ignored).
    let mut at_limit = json!({"id": "ch_1", "object": "charge"});
    at_limit["deep"] = nested(61, json!(1));
    let body = envelope("evt_at_limit", "charge.refunded", at_limit)
        .to_string()
        .into_bytes();
    let (status, v) = post(&app, Some(sign(SECRET, now(), &body)), body).await;
    assert_eq!(status, 200, "{v}");
    wait_event(&world, "evt_at_limit", "ignored").await;
}

#[tokio::test]
async fn events_of_the_other_mode_or_of_a_connected_account_are_stored_ignored_and_change_nothing()
{
    let world = World::new().await;
    let b = world.saas("Not ours").await;
    let before = world.record(&b.business_id).await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[SECRET.to_owned()], None).await;
    let envelope = |id: &str, livemode: bool, account: Option<&str>| {
        let mut e = json!({"id": id, "object": "event", "type": "customer.subscription.deleted", "created": now(), "livemode": livemode, "data": {"object": cancellation(&b)}});
        if let Some(a) = account {
            e["account"] = json!(a);
        }
        e.to_string().into_bytes()
    };
    for (id, body, why) in [
        (
            "evt_live",
            envelope("evt_live", true, None),
            "livemode mismatch",
        ),
        (
            "evt_connect",
            envelope("evt_connect", false, Some("acct_1Connected")),
            "event from a connected account",
        ),
    ] {
        let (status, v) = post(&app, Some(sign(SECRET, now(), &body)), body).await;
        assert_eq!(
            (status, v["received"].as_bool()),
            (200, Some(true)),
            "{id}: {v}"
        );
        wait_event(&world, id, "ignored").await;
        let e = world.service.store().event(id).await.unwrap().unwrap();
        assert_eq!(e.last_error.as_deref(), Some(why), "{id}");
    }
    assert_untouched(&world, &before).await;

    // The applier holds stored events to the same rules (events stored earlier, or read from Stripe's list).
    let inbox = genesis_billing::webhook::Inbox::new(
        world.service.clone(),
        Vec::new(),
        300,
        Some(genesis_billing::config::StripeMode::Test),
    );
    let mut deep = cancellation(&b);
    deep["metadata"]["deep"] = nested(100, json!(1));
    let deep = json!({"id": "evt_stored_deep", "type": "customer.subscription.deleted", "created": now(), "data": {"object": deep}});
    for (id, body, why) in [
        (
            "evt_stored_live",
            String::from_utf8(envelope("evt_stored_live", true, None)).unwrap(),
            "livemode mismatch",
        ),
        (
            "evt_stored_connect",
            String::from_utf8(envelope("evt_stored_connect", false, Some("acct_2"))).unwrap(),
            "event from a connected account",
        ),
        ("evt_stored_deep", deep.to_string(), "nested too deep"),
    ] {
        assert!(world
            .service
            .store()
            .insert_event(
                id,
                "customer.subscription.deleted",
                now(),
                "gap_fill",
                &body
            )
            .await
            .unwrap());
        inbox.apply(id).await;
        let e = world.service.store().event(id).await.unwrap().unwrap();
        assert_eq!(
            (e.status.as_str(), e.last_error.as_deref()),
            ("ignored", Some(why)),
            "{id}"
        );
    }
    assert_untouched(&world, &before).await;
}

/// The ids of the simulator's `customer.subscription.deleted` events about `subscription`.
fn deleted_events(world: &World, subscription: &str) -> Vec<String> {
    world
        .objects("event")
        .into_iter()
        .filter(|e| {
            e["type"] == "customer.subscription.deleted"
                && e["data"]["object"]["id"] == subscription
        })
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the deleted event of each subscription was delivered, stored and applied.
async fn wait_deleted_applied(world: &World, subscriptions: &[String]) {
    eventually(
        "every deleted event to be applied",
        Duration::from_secs(20),
        || async {
            for sub in subscriptions {
                let ids = deleted_events(world, sub);
                if ids.is_empty() {
                    return false;
                }
                for id in ids {
                    let stored = world.service.store().event(&id).await.unwrap();
                    if stored.is_none_or(|e| e.status != "applied") {
                        return false;
                    }
                }
            }
            true
        },
    )
    .await;
}

/// Every business in `ids` is up, billing skipped as rolled back, its subscription canceled and its
/// customer still in Stripe.
async fn assert_rolled_back_not_taken_down(world: &World, ids: &[String]) {
    for id in ids {
        let b = world.record(id).await;
        assert_eq!(b.status, Lifecycle::Active, "{id} stays up");
        assert_eq!(b.billing, Billing::Skipped, "{id}'s billing is skipped");
        assert_eq!(
            b.billing_error.as_deref(),
            Some("rolled back by cancel-all")
        );
        assert_eq!(b.subscription_status.as_deref(), Some("canceled"));
        assert_eq!(b.takedown_reason, None);
        assert_eq!(b.takedown_outcome, None);
        assert_eq!(world.customers_of(id).len(), 1, "{id}'s customer is kept");
        let subs = world.subscriptions_of(id);
        assert_eq!(subs.len(), 1);
        assert_eq!(subs[0]["status"], "canceled");
    }
}

fn cli(world: &World, args: &[&str]) -> std::process::Output {
    common::run_ok(&world.cli_env(), args)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_all_with_webhooks_flowing_stops_billing_but_never_takes_a_business_down() {
    let (world, app) = wired().await;
    let mut ids = Vec::new();
    for i in 0..12 {
        ids.push(app.create(&format!("Rolled back {i}"), "saas").await);
    }
    // A cancellation decided in Stripe still ends its business: only our own are told apart.
    let dashboard = app.create("Cancelled in the dashboard", "saas").await;
    let dashboard_sub = world
        .record(&dashboard)
        .await
        .stripe_subscription_id
        .unwrap();
    let (status, _) = world
        .sim_call(
            Method::DELETE,
            &format!("/v1/subscriptions/{dashboard_sub}"),
            &[],
        )
        .await;
    assert_eq!(status, 200);
    wait_deleted_applied(&world, std::slice::from_ref(&dashboard_sub)).await;
    assert_eq!(world.record(&dashboard).await.status, Lifecycle::TakenDown);

    let out = tokio::task::block_in_place(|| {
        cli(
            &world,
            &["--json", "cancel-all", "--confirm", "--concurrency", "4"],
        )
    });
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cancelled"], 12, "{v}");
    let mut subs = Vec::new();
    for id in &ids {
        subs.push(world.record(id).await.stripe_subscription_id.unwrap());
    }
    wait_deleted_applied(&world, &subs).await;
    assert_rolled_back_not_taken_down(&world, &ids).await;

    // Run again: nothing left to cancel, nothing changes, no business goes down.
    let out = tokio::task::block_in_place(|| cli(&world, &["--json", "cancel-all", "--confirm"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cancelled"], 0, "{v}");
    assert_rolled_back_not_taken_down(&world, &ids).await;
    for sub in &subs {
        assert_eq!(deleted_events(&world, sub).len(), 1, "{sub} cancelled once");
    }
    let history = world.history(&ids[0]).await;
    assert_eq!(
        history
            .iter()
            .filter(|kind| *kind == "rollback_cancel")
            .count(),
        1,
        "one history line for the roll-back, whoever recorded it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_event_that_arrives_before_the_roll_back_records_its_work_only_stops_billing() {
    let (world, app) = wired().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create(&format!("Early event {i}"), "saas").await);
    }
    // The Stripe half of each cancellation, its intent recorded first; the command's own record is held back.
    let page = world.service.rollback_page(None).await.unwrap();
    assert_eq!(page.live.len(), 5);
    for s in &page.live {
        world
            .service
            .cancel_in_stripe_for_rollback(s)
            .await
            .unwrap();
    }
    let subs: Vec<String> = page
        .live
        .iter()
        .map(|s| s.subscription_id.clone())
        .collect();
    wait_deleted_applied(&world, &subs).await;
    assert_rolled_back_not_taken_down(&world, &ids).await;

    // The command now records what it did: nothing changes.
    for s in &page.live {
        world.service.record_rollback(s).await.unwrap();
    }
    assert_rolled_back_not_taken_down(&world, &ids).await;
    let again = world.service.rollback_page(None).await.unwrap();
    assert!(again.live.is_empty() && again.records_to_update.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_events_that_arrive_after_the_roll_back_recorded_its_work_change_nothing() {
    let (world, app) = wired().await;
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(app.create(&format!("Late event {i}"), "saas").await);
    }
    // Deliveries held back while the command runs and records; they reach us afterwards, read from
    // Stripe's event list as `reconcile` does when webhooks were missed.
    world
        .sim_control("/_sim/webhooks", json!({"enabled": false}))
        .await;
    let out = tokio::task::block_in_place(|| cli(&world, &["--json", "cancel-all", "--confirm"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["cancelled"], 5, "{v}");
    assert_rolled_back_not_taken_down(&world, &ids).await;
    let subs: Vec<String> = world
        .objects("subscription")
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_owned())
        .collect();
    for sub in &subs {
        assert!(world
            .service
            .store()
            .event(&deleted_events(&world, sub)[0])
            .await
            .unwrap()
            .is_none());
    }
    world
        .sim_control("/_sim/webhooks", json!({"enabled": true}))
        .await;
    let out = tokio::task::block_in_place(|| cli(&world, &["--json", "reconcile", "--fix"]));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["missed_events_applied"].as_u64().unwrap() >= 5, "{v}");
    wait_deleted_applied(&world, &subs).await;
    assert_rolled_back_not_taken_down(&world, &ids).await;
    drop(app);
}
