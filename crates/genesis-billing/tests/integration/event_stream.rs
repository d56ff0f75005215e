//! The stream of events to the meta-agent as pollers and operators see it (SPEC §1.6): `GET /v1/events`
//! over real HTTP, the `events` commands of the real binary, and the outbox's contract on a real SQLite
//! file and the real PostgreSQL.

use crate::common;

use common::postgres::TestDatabase;
use common::{output, run_json, run_ok, wired, App, World, ADMIN_TOKEN};
use genesis_billing::billing::{Delivery, Initiator, Replay};
use genesis_billing::store::{
    now, now_ms, DatabaseUrl, NewOutbound, OutboundEvent, OutboundFilter, Store,
};
use serde_json::{json, Value};
use sqlx::Connection;

/// What a poller can see of the outbox, and what an operator can: ids, bodies and delivery state.
fn snapshot(events: &[OutboundEvent]) -> Vec<(String, String, Delivery, i64, Option<String>)> {
    events
        .iter()
        .map(|e| {
            (
                e.id.clone(),
                e.body(),
                e.delivery,
                e.attempts,
                e.last_error.clone(),
            )
        })
        .collect()
}

fn types_of(events: &[OutboundEvent], business: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.business_id == business)
        .map(|e| e.update_type.clone())
        .collect()
}

#[tokio::test]
async fn a_lifecycle_reads_the_same_in_pages_of_one_two_and_a_hundred_and_the_cursor_holds_its_place(
) {
    let (world, app) = wired(World::new().await).await;
    // Provision, pay through Checkout in the simulator, take down: all through the billing service.
    let b = world.saas("Streamed").await;
    let id = b.business_id.clone();
    let session = world.service.checkout_link(&id).await.unwrap();
    assert_eq!(
        world.complete_checkout(&session.id, "pm_card_visa").await,
        200
    );
    world.wait_subscription_status(&id, "active").await;
    world.wait_webhooks_applied().await;
    let summary = world
        .service
        .takedown(&id, Some("owner left"), Initiator::Cli)
        .await
        .unwrap();
    assert_eq!(summary.status, "success");
    world.wait_webhooks_applied().await;

    let outbox = world.outbox().await;
    let types = types_of(&outbox, &id);
    assert_eq!(
        types.first().map(String::as_str),
        Some("billing.provisioned")
    );
    for t in [
        "billing.status_changed",
        "billing.payment_succeeded",
        "business.taken_down",
    ] {
        assert!(types.iter().any(|x| x == t), "{t} in {types:?}");
    }
    let taken_down = outbox
        .iter()
        .find(|e| e.update_type == "business.taken_down")
        .unwrap()
        .envelope();
    assert_eq!(taken_down["data"]["initiated_by"], "cli");

    let (hundred, c100) = app.pull_all(100, None, None).await;
    let (ones, c1) = app.pull_all(1, None, None).await;
    let (twos, c2) = app.pull_all(2, None, None).await;
    let expected: Vec<Value> = outbox.iter().map(OutboundEvent::envelope).collect();
    assert_eq!(hundred, expected, "one page: every event, in commit order");
    assert_eq!(ones, expected, "pages of one");
    assert_eq!(twos, expected, "pages of two");
    let last = outbox.last().unwrap().cursor().to_string();
    assert_eq!((&c100, &c1, &c2), (&last, &last, &last));

    // The page is the pushed bodies byte for byte, not a re-encoding of them.
    let (status, raw, _) = app.events_raw("limit=100").await;
    assert_eq!(status, 200);
    let bodies: Vec<String> = outbox.iter().map(OutboundEvent::body).collect();
    assert_eq!(
        raw,
        format!(
            "{{\"data\":[{}],\"next_cursor\":\"{last}\"}}",
            bodies.join(",")
        )
    );
    let first = &hundred[0];
    let keys: std::collections::BTreeSet<&str> = first
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        ["business_id", "data", "id", "timestamp", "update_type"].into()
    );
    assert!(first["timestamp"].as_str().unwrap().ends_with('Z'));
    let ids: std::collections::HashSet<&str> =
        hundred.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), hundred.len(), "ids are unique");

    // The cursor continues: a later change appears after it, and nothing before it comes again.
    let later = world.saas("Later").await;
    let (after, next) = app.pull_all(100, Some(&last), None).await;
    assert!(!after.is_empty());
    assert!(after
        .iter()
        .all(|e| e["business_id"] == later.business_id.as_str()));
    assert_eq!(after[0]["update_type"], "billing.provisioned");
    assert_eq!(
        next,
        world.outbox().await.last().unwrap().cursor().to_string()
    );
    // An empty page gives back the request's own cursor (pull_all checks it on every walk's last page).
    let (status, _, page) = app.events_raw(&format!("after={next}")).await;
    assert_eq!(status, 200);
    assert_eq!(page, json!({"data": [], "next_cursor": next}));
}

#[tokio::test]
async fn a_business_filter_returns_that_business_s_events_in_the_same_order() {
    let world = World::new().await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    // Before any event: an empty page and the start of the stream as the cursor.
    let (status, _, empty) = app.events_raw("").await;
    assert_eq!(status, 200);
    assert_eq!(empty, json!({"data": [], "next_cursor": "0.0"}));

    let a = world.saas("Alpha").await.business_id;
    let b = world.saas("Beta").await.business_id;
    world
        .service
        .takedown(&a, None, Initiator::Api)
        .await
        .unwrap();
    world.saas("Gamma").await;
    let outbox = world.outbox().await;
    for id in [&a, &b] {
        let (events, _) = app.pull_all(2, None, Some(id)).await;
        let expected: Vec<Value> = outbox
            .iter()
            .filter(|e| &e.business_id == id)
            .map(OutboundEvent::envelope)
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(events, expected, "{id}");
    }
    assert!(types_of(&outbox, &a).contains(&"business.taken_down".to_owned()));
    let (nothing, cursor) = app.pull_all(5, None, Some("no-such-business")).await;
    assert!(nothing.is_empty());
    assert_eq!(cursor, "0.0");
}

#[tokio::test]
async fn bad_input_is_refused_with_the_error_shape_and_changes_nothing() {
    let world = World::new().await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    world.saas("One").await;
    world.saas("Two").await;
    let before = snapshot(&world.outbox().await);
    let (_, page_before, _) = app.events_raw("limit=1000").await;
    let big = "b".repeat(10 * 1024);
    let huge_cursor = format!("{}.1", "9".repeat(30));
    let long_cursor = "1".repeat(100);
    let cases: Vec<(&str, String)> = vec![
        ("cursor abc", "after=abc".into()),
        ("cursor 1.2.3", "after=1.2.3".into()),
        ("negative cursor", "after=-1.2".into()),
        ("negative seq", "after=1.-2".into()),
        ("huge cursor", format!("after={huge_cursor}")),
        ("long cursor", format!("after={long_cursor}")),
        ("cursor with NUL", "after=1.2%00".into()),
        ("cursor with spaces", "after=%201.2".into()),
        ("cursor in other digits", "after=%EF%BC%91.2".into()),
        ("limit 0", "limit=0".into()),
        ("limit 1001", "limit=1001".into()),
        ("limit x", "limit=x".into()),
        ("negative limit", "limit=-1".into()),
        ("empty limit", "limit=".into()),
        ("fractional limit", "limit=1.5".into()),
        ("limit past i64", "limit=99999999999999999999".into()),
        ("business_id of 10 KB", format!("business_id={big}")),
        ("empty business_id", "business_id=".into()),
        (
            "business_id with a quote",
            "business_id=%27%20OR%201%3D1--".into(),
        ),
        ("business_id with a slash", "business_id=a%2Fb".into()),
        ("unknown parameter", "cursor=0.0".into()),
        ("repeated parameter", "limit=1&limit=2".into()),
    ];
    for (what, query) in &cases {
        let (status, text, v) = app.events_raw(query).await;
        assert_eq!(status, 400, "{what}: {text}");
        assert_eq!(v["error"]["code"], "invalid_request", "{what}: {text}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}: {text}"
        );
        assert!(v["request_id"].is_string(), "{what}: {text}");
        assert!(text.len() < 1000, "{what}: the input is not echoed back");
    }
    for auth in [None, Some("Bearer wrong"), Some("Bearer ")] {
        let mut req = app.client.get(app.url("/v1/events"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 401, "{auth:?}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["error"]["code"], "unauthorized");
        assert!(v.get("data").is_none());
    }
    let post = app
        .admin(reqwest::Method::POST, "/v1/events")
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 405);

    assert_eq!(snapshot(&world.outbox().await), before, "nothing changed");
    let (_, page_after, _) = app.events_raw("limit=1000").await;
    assert_eq!(page_after, page_before);
}

#[tokio::test]
async fn the_openapi_document_describes_the_events_route_and_every_update_type() {
    let world = World::new().await;
    let app = App::start(&world, &[], &[], None).await;
    let doc = common::json_of(app.client.get(app.url("/openapi.json"))).await;
    let get = &doc["paths"]["/v1/events"]["get"];
    let params: Vec<&str> = get["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(params, ["after", "limit", "business_id"]);
    assert_eq!(
        get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/EventPage"
    );
    let event = &doc["components"]["schemas"]["Event"];
    let types: Vec<&str> = event["properties"]["update_type"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(types, genesis_billing::billing::UPDATE_TYPES);
    assert_eq!(
        event["required"],
        json!(["id", "business_id", "update_type", "data", "timestamp"])
    );
}

/// Events delivered or dead-lettered (what a redelivery would queue again).
async fn non_pending(store: &Store) -> usize {
    let mut n = 0;
    for d in [Delivery::Delivered, Delivery::Dead] {
        let filter = OutboundFilter {
            delivery: Some(d),
            limit: 1000,
            ..Default::default()
        };
        n += store.list_outbound(&filter).await.unwrap().len();
    }
    n
}

/// Takes an event's delivery lease and finishes it: `dead` with `error`, or delivered when `error` is
/// `None`. A worker only claims the oldest undelivered event of a business; to force any event's state the
/// claim is made as of a time past every wait, including a place behind an earlier event
/// (`store::BLOCKED`).
async fn finish_delivery(store: &Store, e: &OutboundEvent, error: Option<&str>) {
    let t = genesis_billing::store::BLOCKED;
    assert!(store
        .claim_outbound(e.seq, "test-worker", t, t + 60_000)
        .await
        .unwrap());
    let done = match error {
        Some(err) => store.outbound_dead(e.seq, "test-worker", err).await,
        None => store.outbound_delivered(e.seq, "test-worker").await,
    };
    assert!(done.unwrap());
}

#[tokio::test]
async fn the_cli_lists_pages_replays_a_dead_event_and_redelivers() {
    let world = World::new().await;
    let env = world.cli_env();
    let a = world.saas("Cli A").await.business_id;
    let b = world.saas("Cli B").await.business_id;
    world.saas("Cli C").await;
    world
        .service
        .takedown(&b, Some("gone"), Initiator::Cli)
        .await
        .unwrap();
    let outbox = world.outbox().await;
    assert!(outbox.len() >= 4, "{:?}", snapshot(&outbox));
    let ids = |v: &Value| -> Vec<String> {
        v["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["id"].as_str().unwrap().to_owned())
            .collect()
    };
    let all_ids: Vec<String> = outbox.iter().map(|e| e.id.clone()).collect();

    // Everything, then the same in two steps through the printed cursor.
    let all = run_json(&env, &["events", "list", "--json"]);
    assert_eq!(ids(&all), all_ids);
    assert_eq!(all["more"], false);
    assert_eq!(
        all["next_cursor"],
        outbox.last().unwrap().cursor().to_string()
    );
    assert_eq!(all["data"][0]["delivery"], "pending");
    assert_eq!(all["data"][0]["data"], outbox[0].envelope()["data"]);
    let head = run_json(&env, &["events", "list", "--limit", "2", "--json"]);
    assert_eq!(ids(&head), all_ids[..2]);
    assert_eq!(head["more"], true);
    let cursor = head["next_cursor"].as_str().unwrap().to_owned();
    assert_eq!(cursor, outbox[1].cursor().to_string());
    let tail = run_json(&env, &["events", "list", "--after", &cursor, "--json"]);
    assert_eq!(ids(&tail), all_ids[2..]);
    let only_a = run_json(&env, &["events", "list", "--business", &a, "--json"]);
    assert!(!ids(&only_a).is_empty());
    assert!(only_a["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["business_id"] == a.as_str()));
    let human = String::from_utf8(run_ok(&env, &["events", "list"]).stdout).unwrap();
    assert!(human.starts_with("EVENT"), "{human}");
    for e in &outbox {
        assert!(human.contains(&e.id), "{human}");
    }
    assert!(human.contains("business.taken_down") && human.contains("pending"));
    assert!(human.contains(&format!("next cursor: {}", outbox.last().unwrap().cursor())));

    // A dead-lettered event, made dead through the store's own calls.
    let store = world.service.store();
    finish_delivery(
        store,
        &outbox[0],
        Some("HTTP 400: unknown business\nsecond line"),
    )
    .await;
    let failed = run_json(&env, &["events", "list", "--failed", "--json"]);
    assert_eq!(ids(&failed), [outbox[0].id.clone()]);
    assert_eq!(failed["data"][0]["delivery"], "dead");
    assert_eq!(failed["data"][0]["attempts"], 1);
    let failed_human =
        String::from_utf8(run_ok(&env, &["events", "list", "--failed"]).stdout).unwrap();
    assert!(
        failed_human.contains("dead")
            && failed_human.contains("HTTP 400: unknown business second line"),
        "{failed_human}"
    );
    assert_eq!(
        failed_human.lines().count(),
        3,
        "header, one event, cursor: {failed_human}"
    );

    let replayed = run_ok(&env, &["events", "replay", &outbox[0].id]);
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("queued"));
    let e = store.outbound_event(&outbox[0].id).await.unwrap().unwrap();
    assert_eq!(
        (e.delivery, e.attempts, e.last_error),
        (Delivery::Pending, 0, None)
    );

    // Replay refuses what is not dead-lettered, and what does not exist.
    let again = output(&env, &["events", "replay", &outbox[0].id]);
    assert_eq!(again.status.code(), Some(1));
    let msg = String::from_utf8_lossy(&again.stderr);
    assert!(
        msg.contains("pending") && msg.contains("not dead-lettered"),
        "{msg}"
    );
    let missing = output(
        &env,
        &["events", "replay", "gbe_00000000000000000000000000000000"],
    );
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event"));
    let missing_json = output(&env, &["events", "replay", "gbe_nothing", "--json"]);
    assert_eq!(missing_json.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&missing_json.stdout).unwrap();
    assert_eq!(v["status"], "not_found");
    let hostile = format!("gbe_{}'; DROP TABLE outbound_event; --", "x".repeat(10_000));
    let refused = output(&env, &["events", "replay", &hostile]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(refused.stderr.len() < 300, "the id is not echoed whole");
    finish_delivery(store, &outbox[1], None).await;
    let delivered = output(&env, &["events", "replay", &outbox[1].id]);
    assert_eq!(delivered.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&delivered.stderr).contains("delivered"));

    // Redeliver: delivered and dead events since a time go back to pending, counted; pending ones stay.
    let of_b: Vec<&OutboundEvent> = outbox.iter().filter(|e| e.business_id == b).collect();
    finish_delivery(store, of_b.last().unwrap(), None).await;
    finish_delivery(store, &outbox[2], Some("HTTP 410")).await;
    let waiting = non_pending(store).await;
    assert!(waiting >= 2, "{waiting}");
    let only_b = run_json(
        &env,
        &[
            "events",
            "redeliver",
            "--since",
            "0",
            "--business",
            &b,
            "--json",
        ],
    );
    let of_b_waiting = [&outbox[1], &outbox[2], *of_b.last().unwrap()]
        .iter()
        .filter(|e| e.business_id == b)
        .map(|e| e.id.clone())
        .collect::<std::collections::HashSet<_>>()
        .len();
    assert_eq!(only_b["queued"], of_b_waiting as u64);
    assert_eq!(only_b["business_id"], b.as_str());
    let future = run_json(
        &env,
        &[
            "events",
            "redeliver",
            "--since",
            "2100-01-01T00:00:00Z",
            "--json",
        ],
    );
    assert_eq!(future["queued"], 0);
    let rest = run_ok(
        &env,
        &["events", "redeliver", "--since", "1970-01-01T00:00:00Z"],
    );
    let text = String::from_utf8_lossy(&rest.stdout).into_owned();
    assert!(
        text.contains(&format!("queued {} event", waiting - of_b_waiting)),
        "{text}"
    );
    assert_eq!(non_pending(store).await, 0, "every event pending again");
    let nothing = run_json(&env, &["events", "redeliver", "--since", "0", "--json"]);
    assert_eq!(nothing["queued"], 0);

    // Usage errors exit 2 and change nothing.
    let before = snapshot(&world.outbox().await);
    for args in [
        &["events", "list", "--after", "abc"][..],
        &["events", "list", "--after", "1.2.3"],
        &["events", "list", "--limit", "0"],
        &["events", "list", "--limit", "x"],
        &["events", "list", "--business", "a b"],
        &["events", "redeliver", "--since", "yesterday"],
        &["events", "redeliver", "--since", "-5"],
        &["events", "redeliver", "--since", "0", "--business", "x/y"],
        &["events", "redeliver"],
        &["events", "replay"],
        &["events", "list", "--bogus"],
    ] {
        let out = output(&env, args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty(), "{args:?}");
    }
    assert_eq!(snapshot(&world.outbox().await), before);
}

// --- The outbox's contract, on both backends ----------------------------------------------------------

fn event(business: &str, cause: &str) -> NewOutbound {
    NewOutbound {
        business_id: business.into(),
        update_type: "billing.provisioned",
        data: json!({"cause": cause}),
        cause: cause.into(),
    }
}

async fn list(store: &Store, filter: OutboundFilter) -> Vec<OutboundEvent> {
    store.list_outbound(&filter).await.unwrap()
}

fn causes(events: &[OutboundEvent]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.envelope()["data"]["cause"].as_str().unwrap().to_owned())
        .collect()
}

/// Commit-order listing, cursors, filters, replay, redelivery and retention: the same on both backends.
async fn outbox_contract(store: &Store) {
    let page = |limit| OutboundFilter {
        limit,
        ..Default::default()
    };
    assert!(list(store, page(10)).await.is_empty());
    for i in 0..7 {
        let business = if i % 2 == 0 { "oa" } else { "ob" };
        assert!(store
            .emit(&event(business, &format!("c{i}")))
            .await
            .unwrap());
    }
    assert!(
        !store.emit(&event("oa", "c0")).await.unwrap(),
        "a second write of the same cause writes nothing"
    );
    let all = list(store, page(1000)).await;
    assert_eq!(causes(&all), ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]);
    assert!(all.windows(2).all(|w| w[0].cursor() < w[1].cursor()));
    assert!(all
        .iter()
        .all(|e| e.id.starts_with("gbe_") && e.id.len() == 36));
    assert!(all.iter().all(|e| e.delivery == Delivery::Pending));

    // Pages of three through the cursor; a cursor printed and read back is the same place.
    let mut walked = Vec::new();
    let mut after = None;
    loop {
        let p = list(
            store,
            OutboundFilter {
                after,
                limit: 3,
                ..Default::default()
            },
        )
        .await;
        let Some(last) = p.last() else { break };
        after = Some(last.cursor().to_string().parse().unwrap());
        walked.extend(p);
    }
    assert_eq!(walked, all);
    let ob = list(
        store,
        OutboundFilter {
            business_id: Some("ob".into()),
            after: Some(all[1].cursor()),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(causes(&ob), ["c3", "c5"]);
    assert_eq!(
        store.outbound_event(&all[3].id).await.unwrap().as_ref(),
        Some(&all[3])
    );
    assert_eq!(store.outbound_event("gbe_none").await.unwrap(), None);

    // A delivery lease is one worker's at a time.
    let t = now_ms();
    assert!(store
        .claim_outbound(all[0].seq, "w1", t, t + 60_000)
        .await
        .unwrap());
    assert!(!store
        .claim_outbound(all[0].seq, "w2", t, t + 60_000)
        .await
        .unwrap());
    assert!(!store
        .outbound_dead(all[0].seq, "w2", "not mine")
        .await
        .unwrap());
    assert!(store
        .outbound_dead(all[0].seq, "w1", "HTTP 400")
        .await
        .unwrap());
    let dead = list(
        store,
        OutboundFilter {
            delivery: Some(Delivery::Dead),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(causes(&dead), ["c0"]);
    assert_eq!(
        (dead[0].attempts, dead[0].last_error.as_deref()),
        (1, Some("HTTP 400"))
    );
    assert_eq!(dead[0].body(), all[0].body(), "the body never changes");
    let backlog = store.outbound_backlog().await.unwrap();
    assert_eq!((backlog.pending, backlog.dead), (6, 1));
    assert_eq!(backlog.oldest_pending_at, Some(all[1].created_at));

    // Replay: only a dead-lettered event, once.
    assert_eq!(
        store.replay_outbound("gbe_none").await.unwrap(),
        Replay::NotFound
    );
    assert_eq!(
        store.replay_outbound(&all[1].id).await.unwrap(),
        Replay::NotDead(Delivery::Pending)
    );
    assert_eq!(
        store.replay_outbound(&all[0].id).await.unwrap(),
        Replay::Queued
    );
    let replayed = store.outbound_event(&all[0].id).await.unwrap().unwrap();
    assert_eq!(
        (
            replayed.delivery,
            replayed.attempts,
            replayed.last_error.clone()
        ),
        (Delivery::Pending, 0, None)
    );
    assert_eq!(
        replayed.cursor(),
        all[0].cursor(),
        "its place in the stream stays"
    );
    assert_eq!(
        store.replay_outbound(&all[0].id).await.unwrap(),
        Replay::NotDead(Delivery::Pending)
    );
    assert!(store
        .claim_outbound(all[1].seq, "w1", t, t + 60_000)
        .await
        .unwrap());
    assert!(store.outbound_delivered(all[1].seq, "w1").await.unwrap());
    assert_eq!(
        store.replay_outbound(&all[1].id).await.unwrap(),
        Replay::NotDead(Delivery::Delivered)
    );

    // Redeliver: delivered and dead events since a time, of one business or all, counted once.
    assert!(store
        .claim_outbound(all[2].seq, "w1", t, t + 60_000)
        .await
        .unwrap());
    assert!(store
        .outbound_dead(all[2].seq, "w1", "HTTP 410")
        .await
        .unwrap());
    assert_eq!(
        store.redeliver_outbound(now() + 3600, None).await.unwrap(),
        0
    );
    assert_eq!(store.redeliver_outbound(0, Some("ob")).await.unwrap(), 1);
    assert_eq!(store.redeliver_outbound(0, Some("ob")).await.unwrap(), 0);
    assert_eq!(store.redeliver_outbound(0, None).await.unwrap(), 1);
    assert_eq!(store.redeliver_outbound(0, None).await.unwrap(), 0);
    let again = list(store, page(1000)).await;
    assert!(again
        .iter()
        .all(|e| e.delivery == Delivery::Pending && e.attempts == 0));
    assert_eq!(
        snapshot(&again).iter().map(|s| &s.1).collect::<Vec<_>>(),
        snapshot(&all).iter().map(|s| &s.1).collect::<Vec<_>>()
    );

    // More than one statement's worth (a thousand rows) is redelivered and pruned whole.
    for i in 0..1_100 {
        store.emit(&event("oc", &format!("bulk{i}"))).await.unwrap();
    }
    let bulk = list(
        store,
        OutboundFilter {
            business_id: Some("oc".into()),
            limit: 1000,
            ..Default::default()
        },
    )
    .await;
    for e in bulk.iter().take(1_000) {
        assert!(store
            .claim_outbound(e.seq, "w1", t, t + 60_000)
            .await
            .unwrap());
        assert!(store.outbound_delivered(e.seq, "w1").await.unwrap());
    }
    let rest = list(
        store,
        OutboundFilter {
            business_id: Some("oc".into()),
            after: Some(bulk.last().unwrap().cursor()),
            limit: 1000,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(rest.len(), 100);
    for e in &rest[..50] {
        assert!(store
            .claim_outbound(e.seq, "w1", t, t + 60_000)
            .await
            .unwrap());
        assert!(store.outbound_dead(e.seq, "w1", "HTTP 400").await.unwrap());
    }
    assert_eq!(store.redeliver_outbound(0, None).await.unwrap(), 1_050);
    assert_eq!(store.outbound_backlog().await.unwrap().pending, 1_107);

    // Retention: nothing younger than the cut goes; everything older does.
    assert_eq!(store.prune_outbound(0).await.unwrap(), 0);
    let last = list(
        store,
        OutboundFilter {
            after: Some(rest.last().unwrap().cursor()),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert!(last.is_empty());
    assert_eq!(store.prune_outbound(now() + 1).await.unwrap(), 1_107);
    assert!(list(store, page(10)).await.is_empty());
    // A poller's cursor from before the prune still continues with what comes next.
    store.emit(&event("oa", "after-prune")).await.unwrap();
    let next = list(
        store,
        OutboundFilter {
            after: Some(rest.last().unwrap().cursor()),
            limit: 10,
            ..Default::default()
        },
    )
    .await;
    assert_eq!(causes(&next), ["after-prune"]);
}

#[tokio::test]
async fn the_outbox_contract_holds_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("o.db").display()));
    let store = Store::connect(&url, 4).await.unwrap();
    store.migrate().await.unwrap();
    outbox_contract(&store).await;
}

#[tokio::test]
async fn the_outbox_contract_holds_on_postgres() {
    let db = TestDatabase::create("gb_outbox").await;
    let store = Store::connect(&DatabaseUrl::new(db.url.clone()), 4)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    outbox_contract(&store).await;
    drop(store);
}

/// PostgreSQL commits concurrent transactions in any order: a reader must not pass an event whose
/// transaction is still open, or a poller's cursor would skip it once it commits.
#[tokio::test]
async fn on_postgres_a_page_stops_before_an_event_whose_transaction_is_still_open() {
    let db = TestDatabase::create("gb_outbox_order").await;
    let store = Store::connect(&DatabaseUrl::new(db.url.clone()), 4)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    let page = || OutboundFilter {
        limit: 100,
        ..Default::default()
    };
    store.emit(&event("pa", "first")).await.unwrap();
    let seen = list(&store, page()).await;
    assert_eq!(causes(&seen), ["first"]);
    let cursor = seen[0].cursor();

    // A transaction that writes an event (as a trigger would) and stays open while a later one commits.
    let mut open = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut open).await.unwrap();
    sqlx::query(
        "INSERT INTO outbound_event (id, business_id, update_type, data, created_at, cause) \
         VALUES ('gbe_open', 'pa', 'billing.status_changed', '{\"cause\":\"open\"}', $1, 'open')",
    )
    .bind(now())
    .execute(&mut open)
    .await
    .unwrap();
    store.emit(&event("pb", "later")).await.unwrap();
    let from_cursor = || OutboundFilter {
        after: Some(cursor),
        limit: 100,
        ..Default::default()
    };
    assert!(
        list(&store, from_cursor()).await.is_empty(),
        "the later commit waits behind the open transaction"
    );
    sqlx::query("COMMIT").execute(&mut open).await.unwrap();
    open.close().await.unwrap();
    assert_eq!(
        causes(&list(&store, from_cursor()).await),
        ["open", "later"]
    );
    drop(store);
}
