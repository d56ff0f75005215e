//! One contract for the storage interface, run against a real SQLite file and the real PostgreSQL.
//! Each PostgreSQL test creates its own database and drops it afterwards, also when it fails.

use crate::common;

use common::postgres::TestDatabase;
use genesis_billing::billing::reason;
use genesis_billing::business::{Billing, Business, Lifecycle};
use genesis_billing::revenue::{
    live_mrr, mrr_from_tally, subscriptions_by_status, SubscriptionTally,
};
use genesis_billing::store::DatabaseUrl;
use genesis_billing::store::{
    now, BusinessFilter, BusinessPages, EventResult, HistoryEntry, Holder, Inserted, JobLease,
    NewEvent, NewOutbound, StatusChange, Store, StoreOptions, StripeRow, SubscriptionRecord,
    Triage,
};
use sqlx::Connection;

/// A fresh database of either kind; deleted (SQLite) or dropped (PostgreSQL) when the guard goes, also when
/// the test panics.
enum Fresh {
    /// Kept so the directory lives as long as the store.
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(TestDatabase),
}

impl Fresh {
    async fn sqlite() -> (Self, Store) {
        let dir = tempfile::tempdir().unwrap();
        let url = DatabaseUrl::new(format!("sqlite://{}", dir.path().join("c.db").display()));
        let store = Store::connect(&url, 4).await.unwrap();
        store.migrate().await.unwrap();
        (Self::Sqlite(dir), store)
    }

    async fn postgres() -> (Self, Store) {
        let (fresh, store) = Self::postgres_empty().await;
        store.migrate().await.unwrap();
        (fresh, store)
    }

    async fn postgres_empty() -> (Self, Store) {
        let db = TestDatabase::create("gb_contract").await;
        let store = Store::connect(&DatabaseUrl::new(db.url.clone()), 4)
            .await
            .unwrap();
        (Self::Postgres(db), store)
    }

    /// The database's URL (PostgreSQL only).
    fn url(&self) -> String {
        match self {
            Self::Postgres(db) => db.url.clone(),
            Self::Sqlite(_) => unreachable!("PostgreSQL tests only"),
        }
    }

    /// Closes the store's connections, then drops the database.
    fn drop_db(self, store: Store) {
        drop(store);
        drop(self);
    }
}

fn business(id: &str, created_at: i64) -> Business {
    Business {
        business_id: id.into(),
        name: format!("Name {id}"),
        business_type: "saas".into(),
        email: None,
        created_at,
        updated_at: created_at,
        status: Lifecycle::Active,
        billing: Billing::Pending,
        billing_error: None,
        failed_step: None,
        stripe_customer_id: None,
        stripe_subscription_id: None,
        stripe_payment_intent_id: None,
        subscription_status: None,
        price_lookup_key: None,
        stripe_price_id: None,
        monthly_price_cents: None,
        currency: None,
        generation: 0,
        stripe_state_at: 0,
        taken_down_at: None,
        takedown_reason: None,
        takedown_outcome: None,
    }
}

async fn contract(store: &Store) {
    // Migrating again changes nothing.
    assert!(store.migrate().await.unwrap().is_empty());

    // Insert, read back, paginate newest first.
    for i in 0..5 {
        store
            .insert_business(&business(&format!("b{i}"), 1000 + i), None)
            .await
            .unwrap();
    }
    assert!(
        store
            .insert_business(&business("b0", 1), None)
            .await
            .is_err(),
        "duplicate id refused"
    );
    let b0 = store.get_business("b0").await.unwrap().unwrap();
    assert_eq!(
        (b0.name.as_str(), b0.billing, b0.status),
        ("Name b0", Billing::Pending, Lifecycle::Active)
    );
    assert!(store.get_business("nope").await.unwrap().is_none());
    let page1 = store
        .list_businesses(&BusinessFilter {
            limit: 2,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page1
            .iter()
            .map(|b| b.business_id.as_str())
            .collect::<Vec<_>>(),
        ["b4", "b3"]
    );
    let page2 = store
        .list_businesses(&BusinessFilter {
            limit: 10,
            after: Some("b3".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        page2
            .iter()
            .map(|b| b.business_id.as_str())
            .collect::<Vec<_>>(),
        ["b2", "b1", "b0"]
    );

    // A request key replays the business it created.
    let first = store
        .insert_business(&business("k1", 2000), Some("req-1"))
        .await
        .unwrap();
    let replay = store
        .insert_business(&business("k2", 2001), Some("req-1"))
        .await
        .unwrap();
    assert_eq!(
        (first.business_id.as_str(), replay.business_id.as_str()),
        ("k1", "k1")
    );
    assert!(store.get_business("k2").await.unwrap().is_none());

    // Many at once: all or none.
    let batch = vec![business("m1", 3000), business("b1", 3001)];
    assert!(store.insert_businesses(&batch).await.is_err());
    assert!(
        store.get_business("m1").await.unwrap().is_none(),
        "nothing half-inserted"
    );

    // Leases: one holder at a time; an expired lease can be taken over.
    let t = now();
    assert!(store.claim_business("b0", "w1", t + 60, t).await.unwrap());
    assert!(!store.claim_business("b0", "w2", t + 60, t).await.unwrap());
    assert!(
        store
            .claim_business("b0", "w2", t + 200, t + 61)
            .await
            .unwrap(),
        "expired lease taken over"
    );
    store.release_business("b0", "w2").await.unwrap();
    assert!(store.claim_business("b0", "w3", t + 60, t).await.unwrap());
    store.release_business("b0", "w3").await.unwrap();

    // The intent log.
    assert!(store
        .begin_intent("key-1", "b0", "customer")
        .await
        .unwrap()
        .is_none());
    let again = store
        .begin_intent("key-1", "b0", "customer")
        .await
        .unwrap()
        .unwrap();
    assert_eq!((again.state.as_str(), again.attempts), ("started", 1));
    store.finish_intent("key-1", Ok("cus_1")).await.unwrap();
    let done = store.intent("key-1").await.unwrap().unwrap();
    assert_eq!(
        (
            done.state.as_str(),
            done.attempts,
            done.result_id.as_deref()
        ),
        ("done", 2, Some("cus_1"))
    );

    // Billing state only moves forward in Stripe time.
    store.set_customer("b0", "cus_1").await.unwrap();
    let rec = SubscriptionRecord {
        customer_id: None,
        amount_cents: 500,
        interval: "month",
        subscription_id: "sub_1",
        status: "incomplete",
        lookup_key: "k",
        price_id: "price_1",
        monthly_price_cents: 500,
        currency: "usd",
        state_at: 100,
    };
    store.set_subscription("b0", &rec).await.unwrap();
    assert!(store
        .set_subscription_status("b0", "sub_1", "active", 200)
        .await
        .unwrap());
    assert!(
        !store
            .set_subscription_status("b0", "sub_1", "incomplete", 150)
            .await
            .unwrap(),
        "older state refused"
    );
    assert!(
        !store
            .set_subscription_status("b0", "sub_other", "canceled", 300)
            .await
            .unwrap(),
        "other subscription refused"
    );
    let b0 = store.get_business("b0").await.unwrap().unwrap();
    assert_eq!(
        (b0.subscription_status.as_deref(), b0.billing),
        (Some("active"), Billing::Provisioned)
    );
    assert!(store
        .set_subscription_status("b0", "sub_1", "incomplete_expired", 400)
        .await
        .unwrap());
    assert_eq!(
        store.get_business("b0").await.unwrap().unwrap().billing,
        Billing::Expired
    );
    let found = store
        .business_by_stripe_id(Some("cus_1"), None)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.business_id, "b0");
    assert_eq!(
        store
            .business_by_stripe_id(None, Some("sub_1"))
            .await
            .unwrap()
            .unwrap()
            .business_id,
        "b0"
    );
    assert!(store
        .business_by_stripe_id(None, None)
        .await
        .unwrap()
        .is_none());

    // A roll-back's intent names the business's current subscription; others are not found by it.
    assert!(store
        .rolled_back_among(&["b0", "b2", "nobody"])
        .await
        .unwrap()
        .is_empty());
    store
        .begin_intent(
            "genesis:b0:subscription:sub_1:rollback_cancel",
            "b0",
            "rollback_cancel",
        )
        .await
        .unwrap();
    store
        .begin_intent(
            "genesis:b2:subscription:sub_other:rollback_cancel",
            "b2",
            "rollback_cancel",
        )
        .await
        .unwrap();
    let rolled: Vec<String> = store
        .rolled_back_among(&["b0", "b2", "nobody"])
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.business_id)
        .collect();
    assert_eq!(rolled, ["b0"]);

    // Takedown is marked once.
    assert!(store.mark_taken_down("b1", "r", "cli", 5000).await.unwrap());
    assert!(!store.mark_taken_down("b1", "r", "cli", 5001).await.unwrap());
    let unfinished: Vec<String> = store
        .unfinished_page(None, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|u| u.business.business_id)
        .collect();
    assert!(unfinished.contains(&"b1".to_owned()) && unfinished.contains(&"b2".to_owned()));
    // Paged by (created_at, id): a page of one, then the rest after it, without repeats.
    let first = store.unfinished_page(None, 1).await.unwrap();
    let cursor = &first[0].business;
    let rest = store
        .unfinished_page(Some((cursor.created_at, &cursor.business_id)), 100)
        .await
        .unwrap();
    assert_eq!(rest.len() + 1, unfinished.len());
    assert!(!rest
        .iter()
        .any(|u| u.business.business_id == cursor.business_id));
    store
        .set_takedown_outcome(
            "b1",
            Some("cancelled"),
            Some("canceled"),
            &NewOutbound {
                business_id: "b1".into(),
                update_type: "business.taken_down",
                data: serde_json::json!({}),
                cause: "taken_down:b1".into(),
            },
        )
        .await
        .unwrap();
    assert!(!store
        .unfinished_page(None, 100)
        .await
        .unwrap()
        .iter()
        .any(|u| u.business.business_id == "b1"));

    // A work lease records its holder; only the owner it names can be taken over, and release clears it.
    let t = now();
    assert!(store.claim_business("b2", "w1", t + 120, t).await.unwrap());
    let leased = store.unfinished_page(None, 100).await.unwrap();
    let b2 = leased
        .iter()
        .find(|u| u.business.business_id == "b2")
        .unwrap();
    let lease = b2.lease.as_ref().unwrap();
    assert_eq!((lease.owner.as_str(), lease.until), ("w1", t + 120));
    assert_eq!(lease.holder.as_ref(), Some(Holder::current()));
    assert!(!store.claim_business("b2", "w2", t + 120, t).await.unwrap());
    assert!(!store
        .take_over_business("b2", "someone-else", "w2", t + 60)
        .await
        .unwrap());
    assert!(store
        .take_over_business("b2", "w1", "w2", t + 60)
        .await
        .unwrap());
    store.release_business("b2", "w1").await.unwrap();
    let still = store.unfinished_page(None, 100).await.unwrap();
    let lease = still
        .iter()
        .find(|u| u.business.business_id == "b2")
        .and_then(|u| u.lease.clone())
        .unwrap();
    assert_eq!((lease.owner.as_str(), lease.until), ("w2", t + 60));
    store.release_business("b2", "w2").await.unwrap();
    assert!(store
        .unfinished_page(None, 100)
        .await
        .unwrap()
        .iter()
        .all(|u| u.lease.is_none()));

    // Webhook events: stored once, claimed once, retried when due, replayable.
    assert!(store
        .insert_event("evt_1", "invoice.paid", 10, "webhook", "{}")
        .await
        .unwrap());
    assert!(!store
        .insert_event("evt_1", "invoice.paid", 10, "webhook", "{}")
        .await
        .unwrap());
    let claimed = store
        .claim_event("evt_1", "w1", now() + 60)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(claimed.attempts, 1);
    assert!(store
        .claim_event("evt_1", "w2", now() + 60)
        .await
        .unwrap()
        .is_none());
    store
        .finish_event("evt_1", "w1", "failed", Some("b0"), Some("boom"), Some(0))
        .await
        .unwrap();
    assert_eq!(store.due_events(10).await.unwrap().len(), 1);
    assert!(store
        .claim_event("evt_1", "w2", now() + 60)
        .await
        .unwrap()
        .is_some());
    store
        .finish_event("evt_1", "w2", "applied", None, None, None)
        .await
        .unwrap();
    let e = store.event("evt_1").await.unwrap().unwrap();
    assert_eq!(
        (e.status.as_str(), e.attempts, e.business_id.as_deref()),
        ("applied", 2, Some("b0"))
    );
    assert!(store.due_events(10).await.unwrap().is_empty());
    assert!(store.reset_event("evt_1").await.unwrap());
    assert_eq!(store.due_events(10).await.unwrap().len(), 1);
    assert_eq!(store.newest_event_created().await.unwrap(), Some(10));

    // The inbox's batched write: new events leased, duplicates within a batch and across batches told
    // apart, outcomes recorded only for events the writer holds.
    let ev = |id: &str| genesis_billing::store::NewEvent {
        id: id.into(),
        event_type: "invoice.paid".into(),
        created: 20,
        source: "webhook",
        payload: "{}".into(),
        triage: Triage::Apply,
    };
    let stored = store
        .write_inbox(
            &[ev("evt_b1"), ev("evt_b2"), ev("evt_b1"), ev("evt_1")],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap()
        .stored;
    use Inserted::{Duplicate, Pending};
    assert_eq!(stored, vec![Pending, Pending, Duplicate, Duplicate]);
    assert!(
        store
            .due_events(10)
            .await
            .unwrap()
            .iter()
            .all(|e| e.event_id != "evt_b1"),
        "leased events are not due"
    );
    let result =
        |id: &str, status: &'static str, error: Option<&str>| genesis_billing::store::EventResult {
            event_id: id.into(),
            event_type: "invoice.paid".into(),
            status,
            business_id: Some("b0".into()),
            error: error.map(Into::into),
            retry_at: error.map(|_| now() + 5),
            change: None,
            history: None,
            created: 20,
        };
    store
        .write_inbox(
            &[],
            "someone-else",
            false,
            0,
            vec![result("evt_b1", "ignored", None)],
            reason,
        )
        .await
        .unwrap();
    assert_eq!(
        store.event("evt_b1").await.unwrap().unwrap().status,
        "pending",
        "not the holder: no change"
    );
    store
        .write_inbox(
            &[],
            "inbox-1",
            false,
            0,
            vec![
                result("evt_b1", "applied", None),
                result("evt_b2", "failed", Some("boom")),
            ],
            reason,
        )
        .await
        .unwrap();
    let b1 = store.event("evt_b1").await.unwrap().unwrap();
    assert_eq!(
        (b1.status.as_str(), b1.attempts, b1.business_id.as_deref()),
        ("applied", 1, Some("b0"))
    );
    let b2 = store.event("evt_b2").await.unwrap().unwrap();
    assert_eq!(
        (b2.status.as_str(), b2.attempts, b2.last_error.as_deref()),
        ("failed", 1, Some("boom"))
    );
    let unleased = store
        .write_inbox(&[ev("evt_b3")], "inbox-1", false, 0, Vec::new(), reason)
        .await
        .unwrap()
        .stored;
    assert_eq!(unleased, vec![Pending]);
    assert!(
        store
            .due_events(10)
            .await
            .unwrap()
            .iter()
            .any(|e| e.event_id == "evt_b3"),
        "unleased events are due at once"
    );

    // Triage at storage: an event naming a known business (by id, subscription or customer) is pending; one
    // naming none is stored settled as ignored, and so is an event of a type we do not handle. Neither
    // settled one is ever due, and a redelivery of either is a duplicate.
    let triaged = |id: &str, triage: Triage| NewEvent { triage, ..ev(id) };
    let keys = |k: &[&str]| Triage::IfKnown(k.iter().map(|s| s.to_string()).collect());
    let stored = store
        .write_inbox(
            &[
                triaged("evt_t1", keys(&["b1"])),
                triaged("evt_t2", keys(&["sub_nobody", "sub_1"])),
                triaged("evt_t3", keys(&["cus_1"])),
                triaged("evt_t4", keys(&["sub_nobody", "cus_nobody"])),
                triaged("evt_t5", keys(&[])),
                triaged("evt_t6", Triage::Ignore("unhandled event type")),
                triaged("evt_t4", keys(&["b1"])),
            ],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap()
        .stored;
    let unknown = Inserted::Ignored(genesis_billing::billing::UNKNOWN_BUSINESS);
    assert_eq!(
        stored,
        vec![
            Pending,
            Pending,
            Pending,
            unknown,
            unknown,
            Inserted::Ignored("unhandled event type"),
            Duplicate
        ]
    );
    for (id, why) in [
        ("evt_t4", "unknown business"),
        ("evt_t5", "unknown business"),
        ("evt_t6", "unhandled event type"),
    ] {
        let e = store.event(id).await.unwrap().unwrap();
        assert_eq!(
            (e.status.as_str(), e.last_error.as_deref(), e.attempts),
            ("ignored", Some(why), 0),
            "{id}"
        );
        assert!(e.applied_at.is_some(), "{id} is settled");
        assert_eq!(e.payload, "{}", "{id} keeps its body");
    }
    let t1 = store.event("evt_t1").await.unwrap().unwrap();
    assert_eq!((t1.status.as_str(), t1.attempts), ("pending", 0));
    let redelivered = store
        .write_inbox(
            &[triaged("evt_t4", keys(&["b1"]))],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap()
        .stored;
    assert_eq!(redelivered, vec![Duplicate]);
    assert_eq!(
        store.event("evt_t4").await.unwrap().unwrap().status,
        "ignored"
    );
    let due = store.due_events(100).await.unwrap();
    assert!(
        due.iter().all(|e| !e.event_id.starts_with("evt_t")),
        "settled events are not due, leased ones not yet: {:?}",
        due.iter().map(|e| &e.event_id).collect::<Vec<_>>()
    );

    // A subscription status an applier left to the writer is written with its event's outcome, under the
    // same rules as `set_subscription_status`: over older state only. An older status, another
    // subscription's, or a change for an event the writer does not hold leaves the business as it was; a
    // different status of the same second comes back due, to be checked with Stripe, unless Stripe already
    // settled it.
    store
        .insert_business(&business("bsc", 1), None)
        .await
        .unwrap();
    store
        .set_subscription(
            "bsc",
            &SubscriptionRecord {
                subscription_id: "sub_sc",
                status: "active",
                state_at: 100,
                ..rec
            },
        )
        .await
        .unwrap();
    let ids = ["evt_c1", "evt_c2", "evt_c3", "evt_c4", "evt_c5", "evt_c6"];
    store
        .write_inbox(
            &ids.map(ev),
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap();
    let change = |id: &str, sub: &str, status: &str, at: i64, settled: bool| EventResult {
        business_id: Some("bsc".into()),
        change: Some(StatusChange {
            business_id: "bsc".into(),
            subscription_id: sub.into(),
            status: status.into(),
            state_at: at,
            tie_settled: settled,
        }),
        ..result(id, "applied", None)
    };
    let state = || async {
        let b = store.get_business("bsc").await.unwrap().unwrap();
        (b.subscription_status, b.stripe_state_at)
    };
    let written = store
        .write_inbox(
            &[],
            "someone-else",
            false,
            0,
            vec![change("evt_c6", "sub_sc", "canceled", 500, false)],
            reason,
        )
        .await
        .unwrap();
    assert_eq!(written.settled.len(), 1);
    assert_eq!(
        state().await,
        (Some("active".into()), 100),
        "not the holder: no change"
    );
    let written = store
        .write_inbox(
            &[],
            "inbox-1",
            false,
            0,
            vec![
                change("evt_c1", "sub_sc", "past_due", 200, false),
                change("evt_c2", "sub_sc", "active", 150, false),
                change("evt_c3", "sub_other", "canceled", 300, false),
                change("evt_c4", "sub_sc", "unpaid", 200, false),
            ],
            reason,
        )
        .await
        .unwrap();
    let settled: Vec<(&str, &str)> = written
        .settled
        .iter()
        .map(|r| (r.event_id.as_str(), r.status))
        .collect();
    assert_eq!(
        settled,
        [
            ("evt_c1", "applied"),
            ("evt_c2", "ignored"),
            ("evt_c3", "ignored"),
            ("evt_c4", "pending")
        ]
    );
    assert_eq!(state().await, (Some("past_due".into()), 200));
    for (id, status, why) in [
        ("evt_c1", "applied", None),
        ("evt_c2", "ignored", Some("older than the stored state")),
        (
            "evt_c3",
            "ignored",
            Some("not the business's current subscription"),
        ),
    ] {
        let e = store.event(id).await.unwrap().unwrap();
        assert_eq!(
            (e.status.as_str(), e.last_error.as_deref(), e.attempts),
            (status, why, 1),
            "{id}"
        );
        assert!(e.applied_at.is_some(), "{id} is settled");
    }
    let tie = store.event("evt_c4").await.unwrap().unwrap();
    assert_eq!((tie.status.as_str(), tie.attempts), ("pending", 1));
    assert!(
        store
            .due_events(100)
            .await
            .unwrap()
            .iter()
            .any(|e| e.event_id == "evt_c4"),
        "a tie is due again at once"
    );
    let claimed = store
        .claim_event("evt_c4", "inbox-1", now() + 60)
        .await
        .unwrap();
    assert!(claimed.is_some());
    let written = store
        .write_inbox(
            &[],
            "inbox-1",
            false,
            0,
            vec![change("evt_c4", "sub_sc", "unpaid", 200, true)],
            reason,
        )
        .await
        .unwrap();
    assert_eq!(
        written.settled[0].status, "applied",
        "Stripe settled the tie"
    );
    assert_eq!(state().await, (Some("unpaid".into()), 200));

    // A subscription status event about a known business's current subscription is written as it is
    // stored, and the event stored settled; otherwise it is stored as `IfKnown` stores it, for the
    // appliers. A delivery stored before changes nothing.
    store.set_customer("bsc", "cus_sc").await.unwrap();
    let status_event = |id: &str,
                        business: Option<&str>,
                        sub: &str,
                        customer: Option<&str>,
                        status: &str,
                        at: i64| {
        NewEvent {
            event_type: "customer.subscription.updated".into(),
            created: at,
            triage: Triage::Status {
                business_id: business.map(Into::into),
                subscription_id: sub.into(),
                customer: customer.map(Into::into),
                status: status.into(),
            },
            ..ev(id)
        }
    };
    let stored = store
        .write_inbox(
            &[
                status_event("evt_s1", Some("bsc"), "sub_sc", None, "active", 300),
                status_event("evt_s2", None, "sub_sc", None, "past_due", 250),
                status_event("evt_s3", None, "sub_new", Some("cus_sc"), "active", 400),
                status_event(
                    "evt_s4",
                    None,
                    "sub_nobody",
                    Some("cus_nobody"),
                    "active",
                    400,
                ),
                status_event("evt_s5", Some("bsc"), "sub_sc", None, "canceled", 300),
                status_event("evt_s1", Some("bsc"), "sub_sc", None, "past_due", 500),
            ],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap()
        .stored;
    assert_eq!(
        stored,
        vec![
            Inserted::Applied,
            Inserted::Ignored("older than the stored state"),
            Pending,
            unknown,
            Pending,
            Duplicate
        ]
    );
    assert_eq!(state().await, (Some("active".into()), 300));
    for (id, status, why, attempts) in [
        ("evt_s1", "applied", None, 1),
        ("evt_s2", "ignored", Some("older than the stored state"), 1),
        ("evt_s4", "ignored", Some("unknown business"), 0),
    ] {
        let e = store.event(id).await.unwrap().unwrap();
        assert_eq!(
            (e.status.as_str(), e.last_error.as_deref(), e.attempts),
            (status, why, attempts),
            "{id}"
        );
        assert!(e.applied_at.is_some(), "{id} is settled");
    }
    assert_eq!(
        store
            .event("evt_s1")
            .await
            .unwrap()
            .unwrap()
            .business_id
            .as_deref(),
        Some("bsc")
    );
    let due = store.due_events(100).await.unwrap();
    for id in ["evt_s3", "evt_s5"] {
        assert_eq!(store.event(id).await.unwrap().unwrap().status, "pending");
        assert!(
            due.iter().all(|e| e.event_id != id),
            "{id} is leased to the writer's appliers"
        );
    }
    let again = store
        .write_inbox(
            &[status_event(
                "evt_s1",
                Some("bsc"),
                "sub_sc",
                None,
                "past_due",
                600,
            )],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap()
        .stored;
    assert_eq!(again, vec![Duplicate]);
    assert_eq!(
        state().await,
        (Some("active".into()), 300),
        "a redelivery changes nothing"
    );

    // Due events are claimed a batch at a time, oldest first, each by one claimer; the attempt is counted
    // when the claimer records its outcome.
    let old = |id: &str, created: i64| NewEvent { created, ..ev(id) };
    store
        .write_inbox(
            &[old("evt_d1", 1), old("evt_d2", 2), old("evt_d3", 3)],
            "inbox-1",
            false,
            0,
            Vec::new(),
            reason,
        )
        .await
        .unwrap();
    let ids = |events: Vec<genesis_billing::store::StoredEvent>| {
        events
            .into_iter()
            .map(|e| (e.event_id, e.attempts, e.payload))
            .collect::<Vec<_>>()
    };
    let first = store.claim_due("claimer-1", now() + 60, 2).await.unwrap();
    assert_eq!(
        ids(first),
        [
            ("evt_d1".to_owned(), 0, "{}".to_owned()),
            ("evt_d2".to_owned(), 0, "{}".to_owned())
        ]
    );
    let second = store.claim_due("claimer-2", now() + 60, 1).await.unwrap();
    assert_eq!(ids(second), [("evt_d3".to_owned(), 0, "{}".to_owned())]);
    assert!(
        store
            .due_events(100)
            .await
            .unwrap()
            .iter()
            .all(|e| !e.event_id.starts_with("evt_d")),
        "claimed events are not due"
    );
    store
        .write_inbox(
            &[],
            "claimer-1",
            false,
            0,
            vec![result("evt_d1", "applied", None)],
            reason,
        )
        .await
        .unwrap();
    let d1 = store.event("evt_d1").await.unwrap().unwrap();
    assert_eq!((d1.status.as_str(), d1.attempts), ("applied", 1));

    // A history line an applier left to the writer is added with the event's outcome, only by the holder.
    store
        .write_inbox(
            &[ev("evt_h1"), ev("evt_h2")],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap();
    let line = |id: &str, detail: &str| EventResult {
        history: Some(HistoryEntry {
            business_id: "bsc".into(),
            kind: "invoice_paid".into(),
            detail: detail.into(),
            outbound: None,
        }),
        ..result(id, "applied", None)
    };
    let lines = || async {
        store
            .events_of("bsc")
            .await
            .unwrap()
            .into_iter()
            .filter(|(kind, _, _)| kind == "invoice_paid")
            .map(|(_, detail, _)| detail)
            .collect::<std::collections::BTreeSet<_>>()
    };
    store
        .write_inbox(
            &[],
            "someone-else",
            false,
            0,
            vec![line("evt_h1", "in_x 900 usd")],
            reason,
        )
        .await
        .unwrap();
    assert!(lines().await.is_empty(), "not the holder: nothing added");
    store
        .write_inbox(
            &[],
            "inbox-1",
            false,
            0,
            vec![
                line("evt_h1", "in_1 2900 usd"),
                line("evt_h2", "in_2 2900 usd"),
            ],
            reason,
        )
        .await
        .unwrap();
    assert_eq!(
        lines().await,
        ["in_1 2900 usd".to_owned(), "in_2 2900 usd".to_owned()].into()
    );
    assert_eq!(
        store.event("evt_h1").await.unwrap().unwrap().status,
        "applied"
    );

    // History.
    store.record_event("b0", "note", "hello").await.unwrap();
    assert_eq!(store.events_of("b0").await.unwrap()[0].1, "hello");

    coordination_contract(store).await;
}

/// Job leases and the shared rate budget: the same SQL on both backends.
async fn coordination_contract(store: &Store) {
    // A job lease: one holder at a time, renewable by its owner, free once expired or released.
    let t = now();
    assert!(store.claim_job("job", "r1", t + 60, t).await.unwrap());
    assert!(
        !store.claim_job("job", "r2", t + 60, t).await.unwrap(),
        "held"
    );
    assert!(
        store.claim_job("job", "r1", t + 90, t).await.unwrap(),
        "its owner may re-claim"
    );
    assert!(store.extend_job("job", "r1", t + 120).await.unwrap());
    assert!(
        !store.extend_job("job", "r2", t + 120).await.unwrap(),
        "not r2's to renew"
    );
    assert_eq!(
        store.job_holder("job").await.unwrap(),
        Some(("r1".to_owned(), t + 120))
    );
    assert!(
        store
            .claim_job("job", "r2", t + 300, t + 121)
            .await
            .unwrap(),
        "an expired lease is taken over"
    );
    assert!(
        !store.extend_job("job", "r1", t + 500).await.unwrap(),
        "r1 lost it"
    );
    assert!(store.extend_job("job", "r2", 0).await.unwrap(), "released");
    assert!(store.claim_job("job", "r3", t + 60, t).await.unwrap());
    assert!(store.job_holder("other").await.unwrap().is_none());

    // The rate budget: each reservation moves the theoretical arrival time one interval on from
    // max(itself, now); an idle budget restarts at now.
    assert_eq!(
        store
            .reserve_rate_slot("stripe_test", 1_000_000, 100_000)
            .await
            .unwrap(),
        1_100_000
    );
    assert_eq!(
        store
            .reserve_rate_slot("stripe_test", 1_000_000, 100_000)
            .await
            .unwrap(),
        1_200_000
    );
    assert_eq!(
        store
            .reserve_rate_slot("stripe_test", 1_050_000, 100_000)
            .await
            .unwrap(),
        1_300_000
    );
    assert_eq!(
        store
            .reserve_rate_slot("stripe_test", 9_000_000, 100_000)
            .await
            .unwrap(),
        9_100_000
    );
    assert_eq!(
        store
            .reserve_rate_slot("stripe_live", 1_000_000, 50_000)
            .await
            .unwrap(),
        1_050_000,
        "one row per limiter"
    );
}

/// A mixed fleet: every type, lifecycle, subscription status, currency and missing field, with ties in
/// `created_at`, from a fixed pseudo-random sequence.
fn mixed_fleet(n: usize) -> Vec<Business> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    (0..n)
        .map(|i| {
            // Three businesses per second: page boundaries fall between equal `created_at`s.
            let mut b = business(&format!("m{i:05}"), 5_000 + (i as i64) / 3);
            b.business_type =
                ["saas", "ecommerce", "api", "content", "Tool"][next(5) as usize].into();
            b.status = if next(6) == 0 {
                Lifecycle::TakenDown
            } else {
                Lifecycle::Active
            };
            b.subscription_status = [
                None,
                Some("active"),
                Some("active"),
                Some("past_due"),
                Some("trialing"),
                Some("incomplete"),
                Some("canceled"),
            ][next(7) as usize]
                .map(str::to_owned);
            b.monthly_price_cents = [None, Some(500), Some(1_999), Some(4_900)][next(4) as usize];
            b.currency =
                [None, Some("usd"), Some("usd"), Some("eur")][next(4) as usize].map(str::to_owned);
            b
        })
        .collect()
}

/// The database's aggregates and key-set pages against the per-record computation over the same records.
async fn aggregate_contract(store: &Store) {
    assert!(store.subscription_tally().await.unwrap().is_empty());
    let fleet = mixed_fleet(700);
    for chunk in fleet.chunks(100) {
        store.insert_businesses(chunk).await.unwrap();
    }
    assert_eq!(store.count_businesses().await.unwrap(), 700);

    // Small pages walk every business exactly once, newest first, ties broken by id.
    let mut pages = BusinessPages::new(BusinessFilter {
        limit: 7,
        ..Default::default()
    });
    let mut walked = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next(store).await.unwrap() {
        assert!(page.len() <= 7);
        page_count += 1;
        walked.extend(page);
    }
    assert_eq!(page_count, 100);
    let mut expected: Vec<&Business> = fleet.iter().collect();
    expected.sort_by(|a, b| (b.created_at, &b.business_id).cmp(&(a.created_at, &a.business_id)));
    assert_eq!(
        walked
            .iter()
            .map(|b| b.business_id.as_str())
            .collect::<Vec<_>>(),
        expected
            .iter()
            .map(|b| b.business_id.as_str())
            .collect::<Vec<_>>()
    );
    // A filtered walk returns exactly the matching businesses.
    let mut pages = BusinessPages::new(BusinessFilter {
        status: Some(Lifecycle::TakenDown),
        limit: 9,
        ..Default::default()
    });
    let mut taken_down = 0;
    while let Some(page) = pages.next(store).await.unwrap() {
        assert!(page.iter().all(|b| b.status == Lifecycle::TakenDown));
        taken_down += page.len();
    }
    assert_eq!(
        taken_down,
        fleet
            .iter()
            .filter(|b| b.status == Lifecycle::TakenDown)
            .count()
    );

    // MRR and the subscription counts from the database equal the per-record computation.
    let tally = store.subscription_tally().await.unwrap();
    let from_records = live_mrr(&fleet);
    assert!(from_records
        .iter()
        .any(|l| l.currency == "eur" && l.active_count > 0));
    assert!(from_records.iter().any(|l| l.business_type == "Tool"));
    assert_eq!(mrr_from_tally(&tally), from_records);
    let mut by_status = std::collections::BTreeMap::<String, i64>::new();
    for b in fleet.iter().filter(|b| b.status == Lifecycle::Active) {
        if let Some(s) = &b.subscription_status {
            *by_status.entry(s.clone()).or_default() += 1;
        }
    }
    assert_eq!(by_status.len(), 5);
    assert_eq!(subscriptions_by_status(&tally), by_status);

    // A change to one record moves the aggregate by exactly that record.
    let b = fleet
        .iter()
        .find(|b| {
            b.status == Lifecycle::Active
                && b.subscription_status.as_deref() == Some("active")
                && b.currency.as_deref() == Some("usd")
                && b.monthly_price_cents.is_some()
        })
        .unwrap();
    store
        .mark_taken_down(&b.business_id, "test", "cli", now())
        .await
        .unwrap();
    let mut changed = fleet.clone();
    changed
        .iter_mut()
        .find(|c| c.business_id == b.business_id)
        .unwrap()
        .status = Lifecycle::TakenDown;
    assert_eq!(
        mrr_from_tally(&store.subscription_tally().await.unwrap()),
        live_mrr(&changed)
    );
    assert_ne!(live_mrr(&changed), from_records);

    tally_follows_every_write_path(store, &fleet).await;
}

/// Every record, read back a page at a time.
async fn all_records(store: &Store) -> Vec<Business> {
    let mut pages = BusinessPages::new(BusinessFilter {
        limit: 500,
        ..Default::default()
    });
    let mut all = Vec::new();
    while let Some(page) = pages.next(store).await.unwrap() {
        all.extend(page);
    }
    all
}

/// The tally computed one record at a time, in key order.
fn tally_of(records: &[Business]) -> Vec<SubscriptionTally> {
    let mut groups = std::collections::BTreeMap::<_, SubscriptionTally>::new();
    for b in records.iter().filter(|b| b.status == Lifecycle::Active) {
        let Some(status) = &b.subscription_status else {
            continue;
        };
        let t = groups
            .entry((b.business_type.clone(), b.currency.clone(), status.clone()))
            .or_insert_with(|| SubscriptionTally {
                business_type: b.business_type.clone(),
                currency: b.currency.clone(),
                subscription_status: status.clone(),
                businesses: 0,
                priced: 0,
                monthly_cents: 0,
            });
        t.businesses += 1;
        t.priced += i64::from(b.monthly_price_cents.is_some());
        t.monthly_cents += b.monthly_price_cents.unwrap_or(0);
    }
    groups.into_values().collect()
}

/// The database's tally equals the per-record computation over what the database holds; returns it.
async fn assert_tally_matches_records(store: &Store, after: &str) -> Vec<SubscriptionTally> {
    let mut tally = store.subscription_tally().await.unwrap();
    tally.sort_by(|a, b| {
        (&a.business_type, &a.currency, &a.subscription_status).cmp(&(
            &b.business_type,
            &b.currency,
            &b.subscription_status,
        ))
    });
    assert!(
        tally.iter().all(|t| t.businesses > 0),
        "after {after}: a group of no businesses is reported: {tally:?}"
    );
    assert_eq!(tally, tally_of(&all_records(store).await), "after {after}");
    tally
}

/// Each way a business row is written (single and bulk inserts, checkout, a status change, the webhook
/// inbox's batch write, takedown and its outcome, roll-back) keeps the tally equal to the records.
async fn tally_follows_every_write_path(store: &Store, fleet: &[Business]) {
    let mut before = assert_tally_matches_records(store, "the bulk import").await;
    let mut moved = |tally: Vec<SubscriptionTally>, after: &str| {
        assert_ne!(tally, before, "{after} changes the tally");
        before = tally;
    };

    // Single inserts that count, one in a group of its own and one without a currency.
    let mut solo = business("w-solo", 9_000);
    solo.business_type = "Solo".into();
    solo.subscription_status = Some("active".into());
    solo.monthly_price_cents = Some(700);
    solo.currency = Some("gbp".into());
    store.insert_business(&solo, None).await.unwrap();
    let mut no_currency = business("w-nocur", 9_001);
    no_currency.subscription_status = Some("trialing".into());
    no_currency.monthly_price_cents = Some(300);
    store.insert_business(&no_currency, None).await.unwrap();
    let tally = assert_tally_matches_records(store, "single inserts").await;
    assert!(tally
        .iter()
        .any(|t| t.business_type == "Solo" && t.businesses == 1 && t.monthly_cents == 700));
    moved(tally, "single inserts");

    // Another bulk import.
    store
        .insert_businesses(&mixed_fleet(760)[700..])
        .await
        .unwrap();
    let tally = assert_tally_matches_records(store, "a second bulk import").await;
    moved(tally, "a second bulk import");

    // Checkout: active businesses without a subscription get one; one that had a subscription moves group.
    let unsubscribed: Vec<&Business> = fleet
        .iter()
        .filter(|b| b.status == Lifecycle::Active && b.subscription_status.is_none())
        .take(4)
        .collect();
    assert_eq!(unsubscribed.len(), 4);
    let subs = ["sub_w0", "sub_w1", "sub_w2", "sub_w3"];
    for (b, sub) in unsubscribed.iter().zip(subs) {
        let rec = SubscriptionRecord {
            customer_id: None,
            amount_cents: 1_234,
            interval: "month",
            subscription_id: sub,
            status: "active",
            lookup_key: "k",
            price_id: "price_w",
            monthly_price_cents: 1_234,
            currency: "usd",
            state_at: 100,
        };
        store.set_subscription(&b.business_id, &rec).await.unwrap();
    }
    let tally = assert_tally_matches_records(store, "checkout").await;
    moved(tally, "checkout");
    let rec = SubscriptionRecord {
        customer_id: None,
        amount_cents: 999,
        interval: "month",
        subscription_id: "sub_w0",
        status: "active",
        lookup_key: "k2",
        price_id: "price_w2",
        monthly_price_cents: 2_000,
        currency: "eur",
        state_at: 150,
    };
    store
        .set_subscription(&unsubscribed[0].business_id, &rec)
        .await
        .unwrap();
    let tally = assert_tally_matches_records(store, "a new price and currency").await;
    moved(tally, "a new price and currency");

    // One status change applied directly.
    assert!(store
        .set_subscription_status(&unsubscribed[1].business_id, "sub_w1", "past_due", 200)
        .await
        .unwrap());
    let tally = assert_tally_matches_records(store, "a status change").await;
    moved(tally, "a status change");

    // Status changes written with their events' outcomes in one inbox batch.
    let ev = |id: &str| NewEvent {
        id: id.into(),
        event_type: "customer.subscription.updated".into(),
        created: 300,
        source: "webhook",
        payload: "{}".into(),
        triage: Triage::Apply,
    };
    store
        .write_inbox(
            &[ev("evt_w1"), ev("evt_w2")],
            "tally-inbox",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap();
    let result = |id: &str, b: &Business, sub: &str, status: &str| EventResult {
        event_id: id.into(),
        event_type: "customer.subscription.updated".into(),
        status: "applied",
        business_id: Some(b.business_id.clone()),
        error: None,
        retry_at: None,
        change: Some(StatusChange {
            business_id: b.business_id.clone(),
            subscription_id: sub.into(),
            status: status.into(),
            state_at: 300,
            tie_settled: false,
        }),
        history: None,
        created: 300,
    };
    store
        .write_inbox(
            &[],
            "tally-inbox",
            true,
            now() + 60,
            vec![
                result("evt_w1", unsubscribed[2], "sub_w2", "canceled"),
                result("evt_w2", unsubscribed[3], "sub_w3", "unpaid"),
            ],
            reason,
        )
        .await
        .unwrap();
    for (b, status) in [(unsubscribed[2], "canceled"), (unsubscribed[3], "unpaid")] {
        let stored = store.get_business(&b.business_id).await.unwrap().unwrap();
        assert_eq!(stored.subscription_status.as_deref(), Some(status));
    }
    let tally = assert_tally_matches_records(store, "an inbox batch").await;
    moved(tally, "an inbox batch");

    // Takedown: the only business of its group leaves, and the group with it.
    assert!(store
        .mark_taken_down("w-solo", "test", "cli", now())
        .await
        .unwrap());
    assert!(store
        .mark_taken_down(&unsubscribed[3].business_id, "test", "cli", now())
        .await
        .unwrap());
    let tally = assert_tally_matches_records(store, "takedowns").await;
    assert!(!tally.iter().any(|t| t.business_type == "Solo"));
    moved(tally, "takedowns");
    store
        .set_takedown_outcome(
            &unsubscribed[3].business_id,
            Some("cancelled"),
            Some("canceled"),
            &NewOutbound {
                business_id: unsubscribed[3].business_id.clone(),
                update_type: "business.taken_down",
                data: serde_json::json!({}),
                cause: format!("taken_down:{}", unsubscribed[3].business_id),
            },
        )
        .await
        .unwrap();
    assert_tally_matches_records(store, "a takedown outcome").await;

    // Roll-back stops billing, not the business: the tally stays as it was.
    assert!(store
        .set_rolled_back(&unsubscribed[1].business_id, "sub_w1", "rolled back")
        .await
        .unwrap());
    let tally = assert_tally_matches_records(store, "a roll-back").await;
    assert_eq!(tally, before);
}

/// The change marker stays put while nothing is written and moves with every commit.
async fn change_marker_contract(store: &Store) {
    // PostgreSQL's marker is the server's WAL position, which every database of the server moves (the
    // tests' other databases write at the same time): a marker that is not a clock holds still across
    // some pair of reads.
    let mut still = None;
    for _ in 0..50 {
        let a = store.change_marker().await.expect("a marker");
        if store.change_marker().await.as_ref() == Some(&a) {
            still = Some(a);
            break;
        }
    }
    let before = still.expect("the marker holds still while nothing is written");
    store
        .insert_business(&business("marker", 1), None)
        .await
        .unwrap();
    let after = store.change_marker().await.expect("a marker");
    assert_ne!(after, before, "a commit moves the marker");
}

/// Reconciliation's scratch copy of Stripe's lists: lookups by id and by metadata, orphans in byte order
/// across pages, and nothing left after a run is cleared.
async fn scratch_contract(store: &Store) {
    let customer = |id: &str, ours: bool, business: Option<&str>| StripeRow {
        object_id: id.into(),
        business_id: business.map(str::to_owned),
        ours,
        ..StripeRow::default()
    };
    // Mixed case and punctuation: byte order differs from most locales' order.
    let customers = [
        customer("cus_b", true, Some("b1")),
        customer("cus_B", true, None),
        customer("cus__", true, Some("gone")),
        customer("cus_Z", true, Some("b2")),
        customer("cus_a", false, None),
        customer("cus_0", true, Some("b3")),
    ];
    store
        .scratch_put("run1", 100, "customer", 0, &customers)
        .await
        .unwrap();
    // Another run's rows are never seen by this one.
    store
        .scratch_put("run2", 100, "customer", 0, &customers[..2])
        .await
        .unwrap();
    let subs: Vec<StripeRow> = (0..250)
        .map(|i| StripeRow {
            object_id: format!("sub_{i:03}"),
            business_id: Some(format!("b{}", i % 5)),
            status: Some("active".into()),
            generation: Some("0".into()),
            created: i,
            ..StripeRow::default()
        })
        .collect();
    store
        .scratch_put("run1", 100, "subscription", 0, &subs)
        .await
        .unwrap();

    let found = store
        .scratch_lookup(
            "run1",
            "subscription",
            false,
            &["sub_007", "sub_249", "sub_nope"],
        )
        .await
        .unwrap();
    assert_eq!(found, vec![subs[7].clone(), subs[249].clone()]);
    let of_b3 = store
        .scratch_lookup("run1", "subscription", true, &["b3"])
        .await
        .unwrap();
    assert_eq!(of_b3.len(), 50);
    assert!(
        of_b3.windows(2).all(|w| w[0].created < w[1].created),
        "list order"
    );

    store.scratch_account("run1", &["cus_Z"]).await.unwrap();
    let mut orphans = Vec::new();
    let mut after = String::new();
    loop {
        let page = store.scratch_orphans("run1", &after, 2).await.unwrap();
        let Some(last) = page.last() else { break };
        after = last.object_id.clone();
        orphans.extend(page.into_iter().map(|c| c.object_id));
    }
    let mut expected = vec!["cus_b", "cus_B", "cus__", "cus_0"];
    expected.sort_unstable();
    assert_eq!(orphans, expected);

    store.scratch_clear(Some("run1"), 0).await.unwrap();
    assert!(store
        .scratch_orphans("run1", "", 10)
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        store.scratch_orphans("run2", "", 10).await.unwrap().len(),
        2
    );
    // A crashed run's rows go once they are old enough.
    store.scratch_clear(None, 101).await.unwrap();
    assert!(store
        .scratch_orphans("run2", "", 10)
        .await
        .unwrap()
        .is_empty());
}

#[tokio::test]
async fn aggregates_and_pages_agree_with_the_records_on_sqlite() {
    let (fresh, store) = Fresh::sqlite().await;
    aggregate_contract(&store).await;
    change_marker_contract(&store).await;
    scratch_contract(&store).await;
    fresh.drop_db(store);
}

#[tokio::test]
async fn aggregates_and_pages_agree_with_the_records_on_in_memory_sqlite() {
    let store = Store::connect(&DatabaseUrl::new("sqlite::memory:"), 1)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    aggregate_contract(&store).await;
    assert_eq!(
        store.change_marker().await,
        None,
        "no other connection sees it"
    );
}

#[tokio::test]
async fn aggregates_and_pages_agree_with_the_records_on_postgres() {
    let (fresh, store) = Fresh::postgres().await;
    aggregate_contract(&store).await;
    change_marker_contract(&store).await;
    scratch_contract(&store).await;
    fresh.drop_db(store);
}

#[tokio::test]
async fn the_store_contract_holds_on_sqlite() {
    let (fresh, store) = Fresh::sqlite().await;
    contract(&store).await;
    fresh.drop_db(store);
}

/// An in-memory SQLite database has no file for the inbox's own writer: its writes take the portable path
/// that PostgreSQL takes, on SQLite.
#[tokio::test]
async fn the_store_contract_holds_on_in_memory_sqlite() {
    let store = Store::connect(&DatabaseUrl::new("sqlite::memory:"), 1)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    contract(&store).await;
}

#[tokio::test]
async fn the_store_contract_holds_on_postgres() {
    let (fresh, store) = Fresh::postgres().await;
    assert_eq!(store.backend().as_str(), "postgres");
    contract(&store).await;
    fresh.drop_db(store);
}

#[tokio::test]
async fn replicas_migrating_postgres_at_once_apply_each_migration_once() {
    let (fresh, store) = Fresh::postgres_empty().await;
    let url = DatabaseUrl::new(fresh.url());
    // A new, empty database and three replicas starting at once.
    let stores = futures_three(&url).await;
    let results = tokio::join!(stores.0.migrate(), stores.1.migrate(), stores.2.migrate());
    let applied: usize = [results.0, results.1, results.2]
        .into_iter()
        .map(|r| r.unwrap().len())
        .sum();
    // Every number in migrations/ is one migration (some have one file per backend).
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
        .unwrap()
        .map(|f| f.unwrap().file_name().to_string_lossy()[..4].to_owned())
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(
        applied, migrations,
        "each migration applied by exactly one replica"
    );
    assert!(
        store.get_business("x").await.unwrap().is_none(),
        "the schema works"
    );
    drop(stores);
    fresh.drop_db(store);
}

async fn futures_three(url: &DatabaseUrl) -> (Store, Store, Store) {
    (
        Store::connect(url, 2).await.unwrap(),
        Store::connect(url, 2).await.unwrap(),
        Store::connect(url, 2).await.unwrap(),
    )
}

#[tokio::test]
async fn replicas_reserving_rate_slots_at_once_on_postgres_each_get_their_own_slot() {
    let (fresh, store) = Fresh::postgres().await;
    let url = DatabaseUrl::new(fresh.url());
    let replicas = futures_three(&url).await;
    let mut tasks = tokio::task::JoinSet::new();
    for replica in [replicas.0, replicas.1, replicas.2] {
        for _ in 0..20 {
            let replica = replica.clone();
            tasks.spawn(async move {
                replica
                    .reserve_rate_slot("stripe_test", 1_000_000, 1_000)
                    .await
                    .unwrap()
            });
        }
    }
    let mut slots = Vec::new();
    while let Some(slot) = tasks.join_next().await {
        slots.push(slot.unwrap());
    }
    slots.sort_unstable();
    let expected: Vec<i64> = (1..=60).map(|i| 1_000_000 + i * 1_000).collect();
    assert_eq!(
        slots, expected,
        "sixty distinct consecutive slots, none lost or shared"
    );
    fresh.drop_db(store);
}

#[tokio::test]
async fn a_statement_stuck_on_postgres_is_cancelled_by_the_configured_timeout() {
    let (fresh, store) = Fresh::postgres().await;
    let url = fresh.url();
    // Another session holds the migration lock, so migrating waits on it: a stuck statement.
    let mut other = sqlx::PgConnection::connect(&url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut other).await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(7351001)")
        .execute(&mut other)
        .await
        .unwrap();
    let impatient = Store::connect_with(
        &DatabaseUrl::new(url),
        StoreOptions {
            max_connections: 1,
            statement_timeout: Some(std::time::Duration::from_millis(200)),
        },
    )
    .await
    .unwrap();
    let started = std::time::Instant::now();
    let err = impatient.migrate().await.unwrap_err();
    assert!(err.to_string().contains("statement timeout"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    sqlx::query("ROLLBACK").execute(&mut other).await.unwrap();
    other.close().await.unwrap();
    drop(impatient);
    fresh.drop_db(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_lease_is_renewed_while_held_and_freed_by_release_or_by_its_holders_death() {
    let (fresh, store) = Fresh::sqlite().await;
    let lease = std::time::Duration::from_secs(1);
    let claim = |name: &'static str| {
        let store = store.clone();
        async move { JobLease::claim(&store, name, lease).await.unwrap() }
    };
    let first = claim("job").await.expect("free");
    assert!(claim("job").await.is_none(), "held");
    // Well past the lease time, its holder's renewals keep it.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert!(claim("job").await.is_none(), "renewed while held");
    first.release(std::time::Duration::ZERO).await;
    let second = claim("job").await.expect("released");

    // A holder that vanishes (no release, no renewal) loses the job once its lease expires.
    drop(second);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let third = loop {
        if let Some(l) = claim("job").await {
            break l;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the lease never expired"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };

    // A waiting claim gets the job as soon as the holder is done.
    let waiting = {
        let store = store.clone();
        tokio::spawn(async move { JobLease::claim_waiting(&store, "job", lease).await })
    };
    third.release(std::time::Duration::ZERO).await;
    let fourth = tokio::time::timeout(std::time::Duration::from_secs(10), waiting)
        .await
        .expect("the waiting claim gets the job")
        .unwrap()
        .unwrap();
    fourth.release(std::time::Duration::ZERO).await;

    // A periodic job released with a hold stays taken until its next run is due.
    let periodic = claim("periodic").await.unwrap();
    let owner = periodic.owner().to_owned();
    periodic.release(std::time::Duration::from_secs(3600)).await;
    assert!(claim("periodic").await.is_none(), "not due yet");
    let (holder, until) = store.job_holder("periodic").await.unwrap().unwrap();
    assert_eq!(holder, owner);
    assert!(until >= now() + 3500, "{until}");
    fresh.drop_db(store);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_storing_the_same_webhook_events_at_once_on_postgres_store_each_once_without_deadlock(
) {
    let (fresh, store) = Fresh::postgres().await;
    let url = DatabaseUrl::new(fresh.url());
    let (a, b, _) = futures_three(&url).await;
    let event = |id: String| NewEvent {
        id,
        event_type: "invoice.paid".into(),
        created: 1,
        source: "webhook",
        payload: "{}".into(),
        triage: Triage::Apply,
    };
    for round in 0..20 {
        // The same events, in opposite orders, committed by two replicas at once.
        let batch: Vec<NewEvent> = (0..8).map(|i| event(format!("evt_{round}_{i}"))).collect();
        let reversed: Vec<NewEvent> = batch.iter().rev().cloned().collect();
        let (x, y) = tokio::join!(
            a.insert_events(&batch, Some("replica-a"), now() + 60, reason),
            b.insert_events(&reversed, Some("replica-b"), now() + 60, reason)
        );
        let (x, y) = (x.unwrap(), y.unwrap());
        for i in 0..8 {
            assert!(
                x[i] ^ y[7 - i],
                "round {round}: event {i} stored exactly once"
            );
        }
    }
    assert_eq!(store.list_events(None, 1000).await.unwrap().len(), 160);
    fresh.drop_db(store);
}

/// A batch in which the database refuses some events: every other event, and the outcome the batch
/// carries, are written all the same; the refused ones are reported `Failed` and not stored.
async fn one_refused_event_fails_no_other(store: &Store, url: &str, backend: &str) {
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    // A trigger that refuses one event id, as a constraint would.
    let trigger = if backend == "postgres" {
        "CREATE FUNCTION refuse_poison() RETURNS trigger AS $$ BEGIN \
         IF NEW.event_id = 'evt_poison' THEN RAISE EXCEPTION 'poisoned'; END IF; RETURN NEW; END $$ LANGUAGE plpgsql; \
         CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_event FOR EACH ROW EXECUTE FUNCTION refuse_poison();"
    } else {
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON webhook_event WHEN NEW.event_id = 'evt_poison' \
         BEGIN SELECT RAISE(ABORT, 'poisoned'); END;"
    };
    sqlx::raw_sql(trigger).execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let ev = |id: &str, event_type: &str| NewEvent {
        id: id.into(),
        event_type: event_type.into(),
        created: 30,
        source: "webhook",
        payload: "{}".into(),
        triage: Triage::Apply,
    };
    let held = store
        .write_inbox(
            &[ev("evt_held", "invoice.paid")],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap();
    assert_eq!(held.stored, vec![Inserted::Pending]);
    let mut batch = vec![
        ev("evt_good_1", "invoice.paid"),
        ev("evt_poison", "invoice.paid"),
        ev("evt_good_2", "invoice.paid"),
    ];
    if backend == "postgres" {
        // PostgreSQL stores no NUL in text.
        batch.push(ev("evt_nul", "invoice.\0paid"));
    }
    let outcome = EventResult {
        event_id: "evt_held".into(),
        event_type: "invoice.paid".into(),
        status: "applied",
        business_id: None,
        error: None,
        retry_at: None,
        change: None,
        history: None,
        created: 30,
    };
    let written = store
        .write_inbox(&batch, "inbox-1", true, now() + 60, vec![outcome], reason)
        .await
        .unwrap();
    let mut want = vec![Inserted::Pending, Inserted::Failed, Inserted::Pending];
    if backend == "postgres" {
        want.push(Inserted::Failed);
    }
    assert_eq!(written.stored, want);
    assert_eq!(written.settled.len(), 1);
    assert_eq!(
        store.event("evt_held").await.unwrap().unwrap().status,
        "applied",
        "the outcome in the refused batch is recorded"
    );
    for good in ["evt_good_1", "evt_good_2"] {
        let e = store.event(good).await.unwrap().expect(good);
        assert_eq!((e.status.as_str(), e.payload.as_str()), ("pending", "{}"));
    }
    for refused in ["evt_poison", "evt_nul"] {
        assert!(store.event(refused).await.unwrap().is_none(), "{refused}");
    }
    // A delivery of a good event again is a duplicate, as for any stored event.
    let again = store
        .write_inbox(
            &[ev("evt_good_1", "invoice.paid")],
            "inbox-1",
            true,
            now() + 60,
            Vec::new(),
            reason,
        )
        .await
        .unwrap();
    assert_eq!(again.stored, vec![Inserted::Duplicate]);
}

#[tokio::test]
async fn one_event_the_database_refuses_fails_no_other_in_its_batch_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let raw = format!("sqlite://{}", dir.path().join("poison.db").display());
    let store = Store::connect(&DatabaseUrl::new(raw.clone()), 2)
        .await
        .unwrap();
    store.migrate().await.unwrap();
    one_refused_event_fails_no_other(&store, &raw, "sqlite").await;
}

#[tokio::test]
async fn one_event_the_database_refuses_fails_no_other_in_its_batch_on_postgres() {
    let (fresh, store) = Fresh::postgres().await;
    one_refused_event_fails_no_other(&store, &fresh.url(), "postgres").await;
    fresh.drop_db(store);
}

/// Records a migration this binary does not know, as a newer genesis-billing would have.
async fn record_future_migration(url: &str) {
    let mut conn = sqlx::AnyConnection::connect(url).await.unwrap();
    sqlx::query(
        "INSERT INTO schema_migration (version, name, applied_at) VALUES (9001, 'from_the_future', 0)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    conn.close().await.unwrap();
}

async fn assert_refused_as_newer(url: &DatabaseUrl) {
    let store = Store::connect(url, 2).await.unwrap();
    let err = store.migrate().await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("newer genesis-billing")
            && msg.contains("9001")
            && msg.contains("from_the_future"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_sqlite_database_filled_before_the_tally_table_gets_a_correct_tally_from_its_migration() {
    let dir = tempfile::tempdir().unwrap();
    let raw = format!("sqlite://{}", dir.path().join("before10.db").display());
    let url = DatabaseUrl::new(raw.clone());
    let store = Store::connect(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    // Back to the schema of migration 9, then filled.
    let mut conn = sqlx::AnyConnection::connect(&raw).await.unwrap();
    sqlx::raw_sql(
        "DROP TRIGGER business_tally_insert; DROP TRIGGER business_tally_delete; \
         DROP TRIGGER business_tally_update; DROP TABLE business_tally; \
         DELETE FROM schema_migration WHERE version = 10",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    store.insert_businesses(&mixed_fleet(400)).await.unwrap();

    assert_eq!(store.migrate().await.unwrap(), vec!["business_tally_table"]);
    let tally = assert_tally_matches_records(&store, "migration 10").await;
    assert!(tally.iter().any(|t| t.currency.is_none()));
    assert!(tally.iter().map(|t| t.businesses).sum::<i64>() > 200);

    // Rows deleted, and a type changed, by hand (no store path does either) move the tally too.
    sqlx::raw_sql(
        "DELETE FROM business WHERE business_id IN (SELECT business_id FROM business \
         WHERE status = 'active' AND subscription_status IS NOT NULL ORDER BY business_id LIMIT 40); \
         UPDATE business SET business_type = 'Renamed' WHERE business_id IN (SELECT business_id \
         FROM business WHERE status = 'active' ORDER BY business_id DESC LIMIT 30)",
    )
    .execute(&mut conn)
    .await
    .unwrap();
    let after = assert_tally_matches_records(&store, "deletes and a renamed type").await;
    assert_ne!(after, tally);
    assert!(after.iter().any(|t| t.business_type == "Renamed"));
    // Everything deleted: nothing is reported.
    sqlx::raw_sql("DELETE FROM business")
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(store.subscription_tally().await.unwrap().is_empty());
    conn.close().await.unwrap();
}

#[tokio::test]
async fn a_sqlite_database_migrated_by_a_newer_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let raw = format!("sqlite://{}", dir.path().join("newer.db").display());
    let url = DatabaseUrl::new(raw.clone());
    Store::connect(&url, 2)
        .await
        .unwrap()
        .migrate()
        .await
        .unwrap();
    record_future_migration(&raw).await;
    assert_refused_as_newer(&url).await;
}

#[tokio::test]
async fn a_postgres_database_migrated_by_a_newer_version_is_refused() {
    let (fresh, store) = Fresh::postgres().await;
    record_future_migration(&fresh.url()).await;
    assert_refused_as_newer(&DatabaseUrl::new(fresh.url())).await;
    fresh.drop_db(store);
}

#[tokio::test]
async fn a_database_url_password_never_shows() {
    let url = DatabaseUrl::new("postgres://billing:s3cr3t-pw@db.internal:5432/billing");
    assert!(!format!("{url:?} {url}").contains("s3cr3t-pw"));
}
