//! Provisioning against the simulator over real HTTP, on real SQLite files.

use crate::common;

use common::{fault, World};
use genesis_billing::business::{Billing, Business, Lifecycle, NewBusiness};
use stripe_sim::FaultKind;

fn new(name: &str, kind: &str) -> NewBusiness {
    NewBusiness {
        name: name.into(),
        business_type: kind.into(),
        email: Some("owner@example.com".into()),
    }
}

/// Creates a business (with an owner's email) through the service.
async fn create(world: &World, name: &str, kind: &str) -> Business {
    world
        .service
        .create_business(new(name, kind), None)
        .await
        .unwrap()
        .0
}

/// Every provisioned business has exactly one live customer and one subscription in Stripe, matching its
/// record, and no live customer in Stripe belongs to no business.
fn assert_one_each(world: &World, businesses: &[Business]) {
    for b in businesses {
        let customers = world.customers_of(&b.business_id);
        let subs = world.subscriptions_of(&b.business_id);
        assert_eq!(
            customers.len(),
            1,
            "customers of {}: {customers:?}",
            b.business_id
        );
        assert_eq!(
            subs.len(),
            1,
            "subscriptions of {}: {subs:?}",
            b.business_id
        );
        assert_eq!(b.stripe_customer_id.as_deref(), customers[0]["id"].as_str());
        assert_eq!(b.stripe_subscription_id.as_deref(), subs[0]["id"].as_str());
        assert_eq!(b.subscription_status.as_deref(), subs[0]["status"].as_str());
    }
    let ids: std::collections::HashSet<&str> =
        businesses.iter().map(|b| b.business_id.as_str()).collect();
    for c in world
        .objects("customer")
        .iter()
        .filter(|c| c["deleted"] != true)
    {
        let owner = c["metadata"]["business_id"].as_str().unwrap_or("");
        assert!(
            ids.contains(owner),
            "customer {} belongs to no business",
            c["id"]
        );
    }
}

#[tokio::test]
async fn creating_a_business_stores_stripes_real_status_with_exactly_two_stripe_writes() {
    let world = World::new().await;
    let before = world.stripe_requests();
    let (b, replayed) = world
        .service
        .create_business(new("Acme", "saas"), None)
        .await
        .unwrap();
    assert!(!replayed);
    assert_eq!(
        world.stripe_requests() - before,
        2,
        "customer + subscription, no reads"
    );
    assert_eq!(b.status, Lifecycle::Active);
    assert_eq!(b.billing, Billing::Provisioned);
    assert_eq!(
        b.subscription_status.as_deref(),
        Some("incomplete"),
        "never an assumed active"
    );
    assert_eq!(b.price_lookup_key.as_deref(), Some("genesis_saas_monthly"));
    assert_eq!(
        (b.monthly_price_cents, b.currency.as_deref()),
        (Some(500), Some("usd"))
    );
    assert_one_each(&world, std::slice::from_ref(&b));

    let customer = &world.customers_of(&b.business_id)[0];
    assert_eq!(customer["name"], "Acme");
    assert_eq!(customer["email"], "owner@example.com");
    assert_eq!(customer["metadata"]["business_type"], "saas");
    assert_eq!(customer["metadata"]["autonomous"], "true");
    assert!(customer["metadata"]["genesis_created"]
        .as_str()
        .unwrap()
        .ends_with('Z'));
    let sub = &world.subscriptions_of(&b.business_id)[0];
    assert_eq!(
        sub["items"]["data"][0]["price"]["lookup_key"],
        "genesis_saas_monthly"
    );
    assert_eq!(
        sub["payment_settings"]["save_default_payment_method"],
        "on_subscription"
    );
    assert_eq!(sub["metadata"]["business_name"], "Acme");
    assert_eq!(sub["metadata"]["business_type"], "saas");
}

#[tokio::test]
async fn a_long_name_is_truncated_to_100_characters_not_bytes() {
    let world = World::new().await;
    let name = "é".repeat(150);
    let b = create(&world, &name, "content").await;
    let customer = &world.customers_of(&b.business_id)[0];
    assert_eq!(customer["name"].as_str().unwrap().chars().count(), 100);
    assert_eq!(b.name, name, "the record keeps the full name");
}

#[tokio::test]
async fn an_unknown_business_type_falls_back_to_the_default_price() {
    let world = World::new().await;
    let b = create(&world, "Newsletter", "newsletter").await;
    assert_eq!(
        b.price_lookup_key.as_deref(),
        Some("genesis_default_monthly")
    );
    assert_eq!(b.billing, Billing::Provisioned);
}

#[tokio::test]
async fn a_trial_in_the_catalog_starts_the_subscription_trialing() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = dir.path().join("catalog.toml");
    std::fs::write(
        &catalog,
        "default_type = \"saas\"\n[prices.saas]\nlookup_key = \"trial_saas\"\namount_cents = 5000\ntrial_days = 14\nmissing_payment_method = \"pause\"\n",
    )
    .unwrap();
    let world = World::with_env(&[("GENESIS_BILLING_CATALOG", catalog.to_str().unwrap())]).await;
    let b = create(&world, "Trial Co", "saas").await;
    assert_eq!(b.subscription_status.as_deref(), Some("trialing"));
    assert_eq!(b.monthly_price_cents, Some(5000));
    let sub = &world.subscriptions_of(&b.business_id)[0];
    assert_eq!(
        sub["trial_settings"]["end_behavior"]["missing_payment_method"],
        "pause"
    );
}

#[tokio::test]
async fn the_kill_switch_records_businesses_as_skipped_and_calls_nothing() {
    let world = World::with_env(&[("ENABLE_PAYMENTS", "false")]).await;
    let b = create(&world, "Quiet", "api").await;
    assert_eq!(b.billing, Billing::Skipped);
    assert_eq!(world.stripe_requests(), 0);
    assert!(world.objects("customer").is_empty());
}

#[tokio::test]
async fn a_zero_percent_rollout_skips_billing() {
    let world = World::with_env(&[("BILLING_ROLLOUT_PERCENT", "0")]).await;
    let before = world.stripe_requests();
    let b = create(&world, "Outside", "tool").await;
    assert_eq!(b.billing, Billing::Skipped);
    assert_eq!(
        b.billing_error.as_deref(),
        Some("outside the billing roll-out")
    );
    assert_eq!(world.stripe_requests(), before);
}

#[tokio::test]
async fn invalid_input_is_refused_and_nothing_is_recorded() {
    let world = World::new().await;
    for bad in [
        new("", "saas"),
        new("ok", "Not A Type"),
        NewBusiness {
            email: Some("nope".into()),
            ..new("ok", "saas")
        },
    ] {
        assert!(world.service.create_business(bad, None).await.is_err());
    }
    let all = world
        .service
        .store()
        .list_businesses(&Default::default())
        .await
        .unwrap();
    assert!(all.is_empty());
    assert!(world.objects("customer").is_empty());
}

#[tokio::test]
async fn a_failed_customer_step_is_recorded_counted_and_resumed() {
    let world = World::new().await;
    world.sim.set_faults(vec![fault(
        FaultKind::Http500,
        1.0,
        Some("POST /v1/customers"),
    )]);
    let b = create(&world, "Unlucky", "saas").await;
    assert_eq!(b.billing, Billing::Failed);
    assert_eq!(b.failed_step.as_deref(), Some("customer"));
    assert!(
        b.billing_error.as_deref().unwrap().contains("500"),
        "{:?}",
        b.billing_error
    );
    let m = &world.metrics;
    assert_eq!(
        m.value("genesis_meta_agent_stripe_subscriptions_total", &["failed"]),
        1.0,
        "defect 4: the failure is counted"
    );
    assert_eq!(
        m.value("genesis_billing_provision_failures_total", &["customer"]),
        1.0
    );

    world.sim.set_faults(vec![]);
    let report = world.service.resume().await.unwrap();
    assert_eq!(report.provisioned, vec![b.business_id.clone()]);
    let after = world.record(&b.business_id).await;
    assert_eq!(after.billing, Billing::Provisioned);
    assert_one_each(&world, &[after]);
}

#[tokio::test]
async fn a_500_replayed_under_the_idempotency_key_falls_back_to_finding_the_customer() {
    let world = World::new().await;
    // The customer is created, then the client gets a 500 which Stripe stores and replays for that key.
    world.sim.set_faults(vec![fault(
        FaultKind::CommitThen500,
        1.0,
        Some("POST /v1/customers"),
    )]);
    let b = create(&world, "Replayed", "saas").await;
    world.sim.set_faults(vec![]);
    let b = if b.billing == Billing::Provisioned {
        b
    } else {
        world.service.resume().await.unwrap();
        world.record(&b.business_id).await
    };
    assert_eq!(b.billing, Billing::Provisioned);
    assert_one_each(&world, &[b]);
}

#[tokio::test]
async fn fifty_businesses_under_thirty_percent_faults_end_with_one_customer_and_one_subscription_each(
) {
    let world = World::new().await;
    let writes = ["POST /v1/customers", "POST /v1/subscriptions"];
    let kinds = [
        FaultKind::Http500,
        FaultKind::Http503,
        FaultKind::Http429,
        FaultKind::Drop,
        FaultKind::CommitThen500,
        FaultKind::CommitThenDrop,
    ];
    let rules = writes
        .iter()
        .flat_map(|op| {
            kinds
                .iter()
                .map(move |k| fault(*k, 0.3 / kinds.len() as f64, Some(op)))
        })
        .collect();
    world.sim.set_faults(rules);
    let mut tasks = Vec::new();
    for i in 0..50 {
        let service = world.service.clone();
        tasks.push(tokio::spawn(async move {
            service
                .create_business(new(&format!("Biz {i}"), "saas"), None)
                .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let injected: u64 = world.sim.fault_counts().values().sum();
    assert!(
        injected > 5,
        "faults were injected: {:?}",
        world.sim.fault_counts()
    );
    // Failures are retried later, as the service does in the background; faults stay on meanwhile.
    for _ in 0..10 {
        if world.service.resume().await.unwrap().failed.is_empty() {
            break;
        }
    }
    world.sim.set_faults(vec![]);
    world.service.resume().await.unwrap();
    let all = world
        .service
        .store()
        .list_businesses(&Default::default())
        .await
        .unwrap();
    assert_eq!(all.len(), 50);
    assert!(
        all.iter().all(|b| b.billing == Billing::Provisioned),
        "{:?}",
        all.iter()
            .map(|b| (&b.business_id, b.billing, &b.billing_error))
            .collect::<Vec<_>>()
    );
    assert_one_each(&world, &all);
}

#[tokio::test]
async fn the_same_business_provisioned_from_two_tasks_and_two_services_gets_one_customer_and_one_subscription(
) {
    let world = World::new().await;
    let second = world.second_service().await;
    for round in 0..5 {
        // A record left pending, as a crash right after recording it would leave it.
        let b = create(&world, &format!("Twin {round}"), "saas").await;
        let pending = Business {
            business_id: uuid_like(round),
            billing: Billing::Pending,
            stripe_customer_id: None,
            stripe_subscription_id: None,
            subscription_status: None,
            ..b
        };
        world
            .service
            .store()
            .insert_business(&pending, None)
            .await
            .unwrap();
        let (a, c, d) = tokio::join!(
            world.service.provision(&pending.business_id),
            world.service.provision(&pending.business_id),
            second.provision(&pending.business_id)
        );
        a.unwrap();
        c.unwrap();
        d.unwrap();
        world.service.resume().await.unwrap();
    }
    let all = world
        .service
        .store()
        .list_businesses(&Default::default())
        .await
        .unwrap();
    assert!(all.iter().all(|b| b.billing == Billing::Provisioned));
    assert_one_each(&world, &all);
}

fn uuid_like(n: u32) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A service on a SQLite file against a simulator of its own with no prices created yet (`World` syncs
/// them); the directory holds the database.
async fn service_without_prices() -> (
    stripe_sim::SimHandle,
    tempfile::TempDir,
    genesis_billing::billing::BillingService,
) {
    let sim = common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let settings = common::settings_for(&sim.base_url(), &common::db_url(&dir), &[]);
    let metrics = std::sync::Arc::new(genesis_billing::metrics::Metrics::new());
    let service = genesis_billing::app::build_service(&settings, metrics)
        .await
        .map_err(|_| "build")
        .unwrap();
    (sim, dir, service)
}

#[tokio::test]
async fn a_business_whose_price_cannot_be_resolved_fails_and_is_provisioned_after_prices_sync() {
    let (sim, _dir, service) = service_without_prices().await;
    let (b, _) = service
        .create_business(new("Early", "saas"), None)
        .await
        .unwrap();
    assert_eq!(b.billing, Billing::Failed);
    assert_eq!(b.failed_step.as_deref(), Some("subscription"));
    assert!(b
        .billing_error
        .as_deref()
        .unwrap()
        .contains("genesis_saas_monthly"));
    assert!(
        b.stripe_customer_id.is_some(),
        "the customer made before the failure is kept"
    );

    let lines = service.sync_prices(true, false).await.unwrap();
    assert!(lines.iter().all(|l| l.stripe_price_id.is_some()));
    let again = service.sync_prices(true, false).await.unwrap();
    assert!(
        again
            .iter()
            .all(|l| l.status == genesis_billing::billing::PriceStatus::Ok),
        "sync is idempotent"
    );
    assert_eq!(sim.objects("price").len(), lines.len());

    service.resume().await.unwrap();
    let after = service
        .store()
        .get_business(&b.business_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(after.billing, Billing::Provisioned);
    assert_eq!(
        after.stripe_customer_id, b.stripe_customer_id,
        "the same customer is reused"
    );
    let customers: Vec<_> = sim
        .objects("customer")
        .into_iter()
        .filter(|c| c["metadata"]["business_id"] == b.business_id.as_str())
        .collect();
    assert_eq!(customers.len(), 1);
}

#[tokio::test]
async fn a_burst_of_businesses_on_a_cold_price_cache_reads_the_prices_once() {
    let world = World::new().await;
    let metrics = std::sync::Arc::new(genesis_billing::metrics::Metrics::new());
    let cold = std::sync::Arc::new(
        genesis_billing::app::build_service(&world.settings, metrics.clone())
            .await
            .map_err(|_| "build")
            .unwrap(),
    );
    let mut tasks = Vec::new();
    for i in 0..20 {
        let service = cold.clone();
        tasks.push(tokio::spawn(async move {
            service
                .create_business(new(&format!("Cold {i}"), "saas"), None)
                .await
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap().0.billing, Billing::Provisioned);
    }
    assert_eq!(
        metrics.histogram_total("genesis_billing_stripe_request_duration_seconds"),
        20 * 2 + 1,
        "two writes each and one price lookup in all"
    );
}

#[tokio::test]
async fn prices_sync_transfer_moves_a_differing_lookup_key_to_a_price_with_the_catalog_terms() {
    let (sim, _dir, service) = service_without_prices().await;
    // The catalog's key already on a price with other terms (say, changed by hand in the dashboard).
    async fn stripe(base: String, path: &str, form: &[(&str, &str)]) -> serde_json::Value {
        let r = reqwest::Client::new()
            .post(format!("{base}{path}"))
            .bearer_auth(common::KEY)
            .form(form)
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success());
        r.json().await.unwrap()
    }
    let product = stripe(sim.base_url(), "/v1/products", &[("name", "Genesis SaaS")]).await;
    let product = product["id"].as_str().unwrap();
    let old = stripe(
        sim.base_url(),
        "/v1/prices",
        &[
            ("product", product),
            ("unit_amount", "999"),
            ("currency", "usd"),
            ("recurring[interval]", "month"),
            ("lookup_key", "genesis_saas_monthly"),
        ],
    )
    .await;
    let old = old["id"].as_str().unwrap();
    let line = |lines: Vec<genesis_billing::billing::PriceSyncLine>| {
        lines
            .into_iter()
            .find(|l| l.lookup_key == "genesis_saas_monthly")
            .unwrap()
    };
    use genesis_billing::billing::PriceStatus;

    let reported = line(service.sync_prices(true, false).await.unwrap());
    assert_eq!(
        (reported.status, reported.stripe_price_id.as_deref()),
        (PriceStatus::Differs, Some(old)),
        "without --transfer a difference is only reported"
    );
    assert!(reported.difference.unwrap().contains("amount"));

    let moved = line(service.sync_prices(true, true).await.unwrap());
    assert_eq!(moved.status, PriceStatus::Transferred);
    let moved_to = moved.stripe_price_id.clone().unwrap();
    assert_ne!(moved_to, old);
    let prices = sim.objects("price");
    let by_id = |id: &str| prices.iter().find(|p| p["id"] == id).unwrap().clone();
    assert_eq!(
        by_id(old)["lookup_key"],
        serde_json::Value::Null,
        "the key left the old price"
    );
    let created = by_id(&moved_to);
    assert_eq!(created["lookup_key"], "genesis_saas_monthly");
    assert_eq!(created["unit_amount"], moved.amount_cents);
    assert_eq!(created["product"], product, "the same Product, a new Price");

    let again = line(service.sync_prices(true, true).await.unwrap());
    assert_eq!(
        (again.status, again.stripe_price_id.as_deref()),
        (PriceStatus::Ok, Some(moved_to.as_str())),
        "a rerun changes nothing"
    );
    assert_eq!(sim.objects("price").len(), prices.len());

    let (b, _) = service
        .create_business(new("After the move", "saas"), None)
        .await
        .unwrap();
    assert_eq!(b.stripe_price_id.as_deref(), Some(moved_to.as_str()));
}
