//! Pushing events to the meta-agent (issue 13): the service in-process with the simulator delivering real
//! signed webhooks, and a real receiver on 127.0.0.1 that verifies every signature with its own code.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::receiver::{verifies, Receiver};
use common::{eventually, wired, App, World};
use genesis_billing::store::{Delivery, OutboundEvent, OutboundFilter};
use reqwest::Method;

const WAIT: Duration = Duration::from_secs(20);
const SECRET: &str = "dashboard-secret-0123456789";

/// A wired world whose service pushes to `receiver` (signed with `SECRET`, backoff capped at 1 s), with
/// `extra` settings on top.
async fn pushing_to(receiver: &Receiver, extra: &[(&str, &str)]) -> (World, App) {
    let url = receiver.url();
    let mut env = vec![
        ("GENESIS_DASHBOARD_URL", url.as_str()),
        ("GENESIS_DASHBOARD_SECRET", SECRET),
        ("GENESIS_DASHBOARD_BACKOFF_CAP_SECS", "1"),
    ];
    env.extend_from_slice(extra);
    wired(World::with_env(&env).await).await
}

/// The stored events of a business, in commit order.
async fn events_of(world: &World, business: &str) -> Vec<OutboundEvent> {
    common::events::outbox_of(world.service.store(), Some(business)).await
}

/// Waits until every stored event has been delivered or dead-lettered.
async fn wait_settled(world: &World) {
    eventually("every event settled", WAIT, || async {
        world
            .service
            .store()
            .outbound_backlog()
            .await
            .unwrap()
            .pending
            == 0
    })
    .await;
}

/// The receiver got exactly the stored events of `business`, each once, in commit order, with the bodies
/// and headers the store says; every one is recorded delivered.
async fn assert_delivered_in_order(world: &World, receiver: &Receiver, business: &str) {
    let stored = events_of(world, business).await;
    let got = receiver.accepted_of(business);
    let stored_ids: Vec<&str> = stored.iter().map(|e| e.id.as_str()).collect();
    let got_ids: Vec<&str> = got.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(
        got_ids, stored_ids,
        "{business}: in commit order, each once"
    );
    for (e, d) in stored.iter().zip(&got) {
        assert_eq!(e.delivery, Delivery::Delivered, "{}", e.id);
        assert_eq!(d.body, e.body(), "the body is the stored event's");
        assert_eq!(d.envelope["id"], e.id.as_str());
        assert_eq!(d.envelope["business_id"], business);
        assert_eq!(d.content_type, "application/json");
        assert!(
            d.user_agent.starts_with("genesis-billing/"),
            "{}",
            d.user_agent
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provisioning_and_a_checkout_reach_the_meta_agent_signed_in_order_and_each_once() {
    let receiver = Receiver::start(&[SECRET]).await;
    let (world, app) = pushing_to(&receiver, &[]).await;
    let id = app.create("Pays", "saas").await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    world.wait_subscription_status(&id, "active").await;
    eventually("three events received", WAIT, || async {
        receiver.accepted_of(&id).len() >= 3
    })
    .await;
    wait_settled(&world).await;
    let got = receiver.accepted_of(&id);
    let types: Vec<&str> = got.iter().map(|d| d.update_type()).collect();
    assert_eq!(
        types,
        [
            "billing.provisioned",
            "billing.status_changed",
            "billing.payment_succeeded"
        ]
    );
    assert_eq!(got[1].envelope["data"]["from"], "incomplete");
    assert_eq!(got[1].envelope["data"]["to"], "active");
    assert_delivered_in_order(&world, &receiver, &id).await;
    assert_eq!(receiver.bad_signatures(), 0);
    assert_eq!(receiver.all().len(), 3, "no request but these three");
    for d in receiver.all() {
        let sig = d.signature.as_deref().expect("signed");
        assert!(verifies(sig, SECRET, d.body.as_bytes()), "{sig}");
        assert_eq!(sig.matches("v1=").count(), 1);
        assert!(!d.body.contains(SECRET));
    }
    let ids: HashSet<&str> = got.iter().map(|d| d.event_id.as_str()).collect();
    assert_eq!(ids.len(), 3, "three distinct ids");
    assert_eq!(
        world.metrics.value(
            "genesis_billing_outbound_events_total",
            &["billing.provisioned", "delivered"]
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_answering_503_for_a_while_gets_everything_in_order_with_byte_identical_retries()
{
    let receiver = Receiver::start(&[SECRET]).await;
    receiver.fail_next(5);
    let (world, app) = pushing_to(&receiver, &[]).await;
    let a = app.create("Retried A", "saas").await;
    let b = app.create("Retried B", "saas").await;
    for id in [&a, &b] {
        let r = app
            .admin(Method::DELETE, &format!("/v1/businesses/{id}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    eventually("both businesses' events delivered", WAIT, || async {
        let mut done = true;
        for id in [&a, &b] {
            let stored = events_of(&world, id).await;
            done &= stored.len() >= 2 && stored.iter().all(|e| e.delivery == Delivery::Delivered);
        }
        done
    })
    .await;
    wait_settled(&world).await;
    for id in [&a, &b] {
        assert_delivered_in_order(&world, &receiver, id).await;
        let types: Vec<String> = receiver
            .accepted_of(id)
            .iter()
            .map(|d| d.update_type().to_owned())
            .collect();
        assert_eq!(
            types.first().map(String::as_str),
            Some("billing.provisioned")
        );
        assert_eq!(
            types.last().map(String::as_str),
            Some("business.taken_down")
        );
    }
    let all = receiver.all();
    let refused: Vec<_> = all.iter().filter(|d| d.status == 503).collect();
    assert_eq!(refused.len(), 5, "the first five were answered 503");
    for r in refused {
        let accepted = receiver
            .accepted()
            .into_iter()
            .find(|d| d.event_id == r.event_id)
            .expect("a refused event is accepted later");
        assert_eq!(accepted.body, r.body, "a retry is byte-identical");
    }
    // Per business, nothing of a business was accepted before its earlier events were.
    for id in [&a, &b] {
        let order: Vec<&str> = all
            .iter()
            .filter(|d| d.path_business == **id)
            .map(|d| d.event_id.as_str())
            .collect();
        let mut seen = Vec::new();
        for e in order {
            if seen.last() != Some(&e) && seen.contains(&e) {
                panic!("{id}: {e} sent again after a later event");
            }
            seen.push(e);
        }
    }
    let retried: f64 = [
        "billing.provisioned",
        "billing.status_changed",
        "business.taken_down",
    ]
    .iter()
    .map(|t| {
        world
            .metrics
            .value("genesis_billing_outbound_events_total", &[t, "retried"])
    })
    .sum();
    assert_eq!(retried, 5.0);
    assert_eq!(receiver.bad_signatures(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_is_down_then_up_loses_nothing() {
    let receiver = Receiver::start(&[SECRET]).await;
    receiver.down().await;
    let (world, app) = pushing_to(&receiver, &[]).await;
    let a = app.create("Down A", "saas").await;
    let b = app.create("Down B", "saas").await;
    eventually("failed attempts recorded", WAIT, || async {
        let mut failed = true;
        for id in [&a, &b] {
            failed &= events_of(&world, id)
                .await
                .first()
                .is_some_and(|e| e.attempts >= 2 && e.delivery == Delivery::Pending);
        }
        failed
    })
    .await;
    let stored = events_of(&world, &a).await;
    assert_eq!(stored[0].last_error.as_deref(), Some("connection failed"));
    assert!(receiver.all().is_empty());
    let health: serde_json::Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["events"]["delivery_configured"], true);
    assert!(
        health["events"]["pending"].as_i64().unwrap() >= 2,
        "{health}"
    );
    assert_eq!(health["events"]["destination"], receiver.url());
    receiver.up().await;
    eventually(
        "everything delivered once the receiver is back",
        WAIT,
        || async { receiver.accepted_of(&a).len() == 1 && receiver.accepted_of(&b).len() == 1 },
    )
    .await;
    wait_settled(&world).await;
    for id in [&a, &b] {
        assert_delivered_in_order(&world, &receiver, id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_dead_letters_one_event_while_other_businesses_flow_and_its_business_goes_on_after_it(
) {
    let receiver = Receiver::start(&[SECRET]).await;
    let (world, app) = pushing_to(&receiver, &[]).await;
    let refused = app.create("Refused", "saas").await;
    receiver.refuse(&refused, "business.taken_down");
    let r = app
        .admin(Method::DELETE, &format!("/v1/businesses/{refused}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let other = app.create("Other", "saas").await;
    eventually("the refused event dead-lettered", WAIT, || async {
        events_of(&world, &refused)
            .await
            .iter()
            .any(|e| e.delivery == Delivery::Dead)
    })
    .await;
    let dead: Vec<OutboundEvent> = world
        .service
        .store()
        .list_outbound(&OutboundFilter {
            delivery: Some(Delivery::Dead),
            limit: 100,
            ..OutboundFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].update_type, "business.taken_down");
    assert_eq!(dead[0].attempts, 1, "a 400 is not retried");
    let error = dead[0].last_error.clone().unwrap();
    assert!(error.starts_with("HTTP 400: REFUSED?[31m x"), "{error}");
    assert!(error.len() <= 210, "only an excerpt: {}", error.len());
    assert!(
        error.chars().all(|c| c.is_ascii_graphic() || c == ' '),
        "{error}"
    );
    eventually("the other business delivered", WAIT, || async {
        !receiver.accepted_of(&other).is_empty()
    })
    .await;
    // A later event of the refused business (written as the roll-back writes it) goes out after the
    // dead letter.
    world
        .service
        .store()
        .emit(&genesis_billing::store::NewOutbound {
            business_id: refused.clone(),
            update_type: "billing.rolled_back",
            data: serde_json::json!({"subscription_id": "sub_later"}),
            cause: format!("test:later:{refused}"),
        })
        .await
        .unwrap();
    eventually("the later event delivered", WAIT, || async {
        receiver
            .accepted_of(&refused)
            .iter()
            .any(|d| d.update_type() == "billing.rolled_back")
    })
    .await;
    wait_settled(&world).await;
    let all = receiver.all();
    let position = |t: &str| {
        all.iter()
            .position(|d| d.path_business == refused && d.update_type() == t)
            .unwrap()
    };
    assert!(position("business.taken_down") < position("billing.rolled_back"));
    assert_eq!(
        all.iter()
            .filter(|d| d.update_type() == "business.taken_down" && d.path_business == refused)
            .count(),
        1,
        "a dead letter is not sent again by itself"
    );
    assert_eq!(
        world.metrics.value(
            "genesis_billing_outbound_events_total",
            &["business.taken_down", "dead_lettered"]
        ),
        1.0
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("genesis_billing_outbound_events_dead 1\n"),
        "{metrics}"
    );
    assert!(metrics.contains("genesis_billing_outbound_events_pending 0\n"));
    assert!(metrics.contains("genesis_billing_outbound_oldest_undelivered_age_seconds 0\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_secrets_sign_each_event_twice_and_a_receiver_holding_either_one_accepts_it() {
    const OLD: &str = "dashboard-secret-old-0001";
    const NEW: &str = "dashboard-secret-new-0002";
    // The receiver is still on the old secret; a second check below plays one already on the new one.
    let receiver = Receiver::start(&[OLD]).await;
    let secrets = format!("{OLD},{NEW}");
    let (world, app) =
        pushing_to(&receiver, &[("GENESIS_DASHBOARD_SECRET", secrets.as_str())]).await;
    let id = app.create("Rotating", "saas").await;
    eventually("delivered", WAIT, || async {
        !receiver.accepted_of(&id).is_empty()
    })
    .await;
    wait_settled(&world).await;
    assert_eq!(receiver.bad_signatures(), 0);
    for d in receiver.all() {
        let sig = d.signature.unwrap();
        assert_eq!(sig.matches("v1=").count(), 2, "{sig}");
        assert!(verifies(&sig, OLD, d.body.as_bytes()));
        assert!(verifies(&sig, NEW, d.body.as_bytes()));
        assert!(!verifies(
            &sig,
            "dashboard-secret-other-3",
            d.body.as_bytes()
        ));
        // A changed body fails with either secret.
        let tampered = d.body.replace("billing.", "billinG.");
        assert!(!verifies(&sig, OLD, tampered.as_bytes()));
        assert!(!verifies(&sig, NEW, tampered.as_bytes()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_still_failing_at_the_end_of_the_give_up_window_is_dead_lettered() {
    let receiver = Receiver::start(&[SECRET]).await;
    receiver.fail_next(usize::MAX);
    let (world, app) = pushing_to(
        &receiver,
        &[
            ("GENESIS_DASHBOARD_GIVE_UP_SECS", "2"),
            ("GENESIS_BILLING_EVENT_RETENTION_DAYS", "1"),
        ],
    )
    .await;
    let id = app.create("Gives up", "saas").await;
    eventually("dead-lettered after the window", WAIT, || async {
        events_of(&world, &id)
            .await
            .first()
            .is_some_and(|e| e.delivery == Delivery::Dead)
    })
    .await;
    let e = events_of(&world, &id).await.remove(0);
    let error = e.last_error.unwrap();
    assert!(error.starts_with("gave up after "), "{error}");
    assert!(error.ends_with("HTTP 503: busy, try later"), "{error}");
    assert!(e.attempts >= 2, "retried before giving up: {}", e.attempts);
    let tries = receiver.all().len();
    assert_eq!(tries as i64, e.attempts);

    // Replayed after the window: it gets a window of its own, so one more 503 is retried, not fatal.
    receiver.fail_next(1);
    assert_eq!(
        world.service.replay_outbound(&e.id).await.unwrap(),
        genesis_billing::store::Replay::Queued
    );
    eventually("the replay delivered", WAIT, || async {
        events_of(&world, &id)
            .await
            .first()
            .is_some_and(|e| e.delivery == Delivery::Delivered)
    })
    .await;
    assert_eq!(receiver.all().len(), tries + 2, "one 503, then delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_url_events_are_kept_and_health_says_delivery_is_off() {
    let world = World::new().await;
    let (world, app) = wired(world).await;
    let id = app.create("Unpushed", "saas").await;
    assert_eq!(events_of(&world, &id).await.len(), 1);
    let health: serde_json::Value = app
        .client
        .get(app.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let events = &health["events"];
    assert_eq!(events["delivery_configured"], false, "{health}");
    assert_eq!(events["destination"], serde_json::Value::Null);
    assert_eq!(events["pending"], 1);
    assert!(events["oldest_undelivered_age_seconds"].as_i64().unwrap() >= 0);
    assert_eq!(events["dead_lettered"], 0);
}

/// `serve` as a real process: started with `env`, its base URL read from its first line.
fn spawn_serve(env: &[(&str, String)]) -> (std::process::Child, String) {
    use std::io::BufRead;
    let mut child = common::bin(env)
        .args(["-vvv", "serve", "--listen", "127.0.0.1:0"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::task::block_in_place(|| stdout.read_line(&mut line)).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");
    (child, base)
}

/// Everything `child` wrote to stderr, after it ended.
fn logs_of(child: &mut std::process::Child) -> String {
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    logs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_the_dashboard_secret_out_of_logs_health_metrics_and_events_and_survives_sigkill(
) {
    const DASH_SECRET: &str = "dash-SERVESECRETqwerDONOTLEAK";
    const ADMIN: &str = "admin-token-for-event-tests";
    let receiver = Receiver::start(&[DASH_SECRET]).await;
    let sim = common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("STRIPE_API_KEY", common::KEY.to_owned()),
        ("STRIPE_API_BASE", sim.base_url()),
        (
            "DATABASE_URL",
            format!("sqlite://{}", dir.path().join("serve.db").display()),
        ),
        ("GENESIS_ADMIN_TOKEN", ADMIN.to_owned()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10".to_owned()),
        ("GENESIS_DASHBOARD_URL", receiver.url()),
        ("GENESIS_DASHBOARD_SECRET", DASH_SECRET.to_owned()),
        ("GENESIS_DASHBOARD_BACKOFF_CAP_SECS", "1".to_owned()),
    ];
    common::run_ok(&env, &["prices", "sync"]);
    let client = reqwest::Client::new();
    let create = |base: String, name: &'static str| {
        let client = client.clone();
        async move {
            let r = client
                .post(format!("{base}/v1/businesses"))
                .bearer_auth(ADMIN)
                .json(&serde_json::json!({"name": name, "business_type": "saas"}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
            let b: serde_json::Value = r.json().await.unwrap();
            b["business_id"].as_str().unwrap().to_owned()
        }
    };

    // The receiver refuses for now; serve is SIGKILLed with the event undelivered.
    receiver.fail_next(usize::MAX);
    let (mut first, base) = spawn_serve(&env);
    let early = create(base.clone(), "Before the kill").await;
    eventually("a refused attempt", WAIT, || async {
        receiver.all().iter().any(|d| d.path_business == early)
    })
    .await;
    first.kill().unwrap();
    tokio::task::block_in_place(|| first.wait()).unwrap();
    let mut logs = logs_of(&mut first);

    receiver.fail_next(0);
    let (mut second, base) = spawn_serve(&env);
    let late = create(base.clone(), "After the restart").await;
    eventually("both events delivered after the restart", WAIT, || async {
        receiver.accepted_of(&early).len() == 1 && receiver.accepted_of(&late).len() == 1
    })
    .await;
    let mut responses = Vec::new();
    let health: serde_json::Value = client
        .get(format!("{base}/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["events"]["delivery_configured"], true, "{health}");
    assert_eq!(health["events"]["destination"], receiver.url());
    assert_eq!(health["events"]["pending"], 0, "{health}");
    assert_eq!(health["events"]["dead_lettered"], 0);
    assert_eq!(health["events"]["oldest_undelivered_age_seconds"], 0);
    responses.push(health.to_string());
    let metrics = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("genesis_billing_outbound_events_total{update_type=\"billing.provisioned\",outcome=\"delivered\"} 2\n"),
        "{metrics}"
    );
    responses.push(metrics);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &second.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let ended = tokio::task::block_in_place(|| second.wait()).unwrap();
    assert!(ended.success(), "SIGTERM ends serve cleanly: {ended:?}");
    logs += &logs_of(&mut second);
    assert!(logs.contains("pushing events to the meta-agent"), "{logs}");
    assert!(logs.contains("event delivery failed; retrying"), "{logs}");

    assert_eq!(receiver.bad_signatures(), 0);
    let fragment = &DASH_SECRET[5..];
    assert!(!logs.contains(fragment), "the secret in the logs");
    for r in &responses {
        assert!(!r.contains(fragment), "the secret in a response: {r}");
    }
    for d in receiver.all() {
        assert!(!d.body.contains(fragment), "the secret in an event");
        assert!(!d.signature.unwrap_or_default().contains(fragment));
    }
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_on_postgresql_send_each_event_once_one_at_a_time_in_order_per_business() {
    use genesis_billing::outbound::{DashboardUrl, OutboundSettings, Worker};
    use genesis_billing::store::{DatabaseUrl, NewOutbound, Store};
    use std::sync::Arc;

    let db = common::postgres::TestDatabase::create("gb_outbound").await;
    let replica = || async {
        let store = Store::connect(&DatabaseUrl::new(db.url.clone()), 4)
            .await
            .unwrap();
        store.migrate().await.unwrap();
        store
    };
    let (a, b) = (replica().await, replica().await);
    let receiver = Receiver::start(&[SECRET]).await;
    // Slow enough that one replica alone cannot drain the backlog before the other polls.
    receiver.slow_down(100);
    receiver.fail_next(6);
    let settings = Arc::new(OutboundSettings {
        url: Some(DashboardUrl::parse(&receiver.url(), false).unwrap()),
        secrets: vec![secrecy::SecretString::from(SECRET)],
        backoff_cap: Duration::from_secs(1),
        concurrency: 3,
        ..OutboundSettings::default()
    });
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let metrics = [
        Arc::new(genesis_billing::metrics::Metrics::new()),
        Arc::new(genesis_billing::metrics::Metrics::new()),
    ];
    let mut workers = Vec::new();
    for (store, m) in [(&a, &metrics[0]), (&b, &metrics[1])] {
        let w = Worker::new(store.clone(), m.clone(), settings.clone())
            .unwrap()
            .unwrap();
        workers.push(tokio::spawn(Arc::new(w).run(stop.clone())));
    }
    // Eight businesses, six events each, written through both replicas in turn.
    let businesses: Vec<String> = (0..8).map(|i| format!("biz_pg_{i}")).collect();
    for round in 0..6 {
        for (i, business) in businesses.iter().enumerate() {
            let store = if (i + round) % 2 == 0 { &a } else { &b };
            store
                .emit(&NewOutbound {
                    business_id: business.clone(),
                    update_type: "billing.status_changed",
                    data: serde_json::json!({"round": round}),
                    cause: format!("test:{business}:{round}"),
                })
                .await
                .unwrap();
        }
    }
    eventually("48 events delivered", Duration::from_secs(60), || async {
        a.outbound_backlog().await.unwrap().pending == 0
    })
    .await;
    stop_tx.send_replace(true);
    for w in workers {
        w.await.unwrap();
    }
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 48, "each event accepted once");
    assert_eq!(
        receiver.overlaps(),
        0,
        "never two requests of a business at once"
    );
    assert_eq!(receiver.bad_signatures(), 0);
    for business in &businesses {
        let rounds: Vec<i64> = receiver
            .accepted_of(business)
            .iter()
            .map(|d| d.envelope["data"]["round"].as_i64().unwrap())
            .collect();
        assert_eq!(rounds, (0..6).collect::<Vec<_>>(), "{business} in order");
    }
    let delivered: Vec<f64> = metrics
        .iter()
        .map(|m| {
            m.value(
                "genesis_billing_outbound_events_total",
                &["billing.status_changed", "delivered"],
            )
        })
        .collect();
    assert_eq!(delivered.iter().sum::<f64>(), 48.0, "{delivered:?}");
    assert!(
        delivered.iter().all(|n| *n > 0.0),
        "both replicas delivered: {delivered:?}"
    );
}

#[test]
fn a_bad_dashboard_url_or_secret_stops_serve_with_status_2_and_a_clear_error_that_echoes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("bad.db").display());
    for (name, value, says) in [
        (
            "GENESIS_DASHBOARD_URL",
            "ftp://dash.example/LEAKPATH",
            "must start with https://",
        ),
        (
            "GENESIS_DASHBOARD_URL",
            "https://u:LEAKPW@dash.example/",
            "user name or password",
        ),
        (
            "GENESIS_DASHBOARD_URL",
            "http://10.0.0.1/LEAKPATH",
            "GENESIS_DASHBOARD_ALLOW_HTTP=true",
        ),
        (
            "GENESIS_DASHBOARD_URL",
            "dash.example/LEAKPATH",
            "not an absolute URL",
        ),
        (
            "GENESIS_DASHBOARD_SECRET",
            "LEAKSHORT",
            "shorter than 16 characters",
        ),
        ("GENESIS_DASHBOARD_CONCURRENCY", "0", "expected 1 to 1024"),
    ] {
        let out = common::output(
            &[("DATABASE_URL", db.clone()), (name, value.to_owned())],
            &["serve", "--listen", "127.0.0.1:0"],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}={value}: {stderr}");
        assert!(
            stderr.contains(name) && stderr.contains(says),
            "{name}: {stderr}"
        );
        assert!(!stderr.contains("LEAK"), "{stderr}");
    }
}
