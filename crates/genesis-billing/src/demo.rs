//! `genesis-billing demo`: the whole lifecycle, offline, against an in-process Stripe simulator.

use std::sync::Arc;

use anyhow::Context as _;
use secrecy::SecretString;

use crate::billing::BillingService;
use crate::business::NewBusiness;
use crate::cli::{build_service, business_table, print_json, revenue_table, Failure};
use crate::config::{Flags, Settings};
use crate::metrics::Metrics;
use crate::revenue::live_mrr;
use crate::store::BusinessFilter;

const DEMO_KEY: &str = "sk_test_genesis_demo_key";

const BUSINESSES: &[(&str, &str, Option<&str>)] = &[
    ("Acme Analytics", "saas", Some("owner@acme.example")),
    ("Blue Basket", "ecommerce", None),
    ("Daily Digest", "content", None),
    ("Ping API", "api", None),
    ("Tiny Tool", "tool", None),
];

fn step(json: bool, text: &str) {
    if !json {
        println!("\n== {text}");
    }
}

/// Runs the demo; the database is a fresh SQLite file in a temporary directory, kept for inspection.
pub async fn run(json: bool) -> Result<(), Failure> {
    let sim = stripe_sim::start(stripe_sim::SimConfig::default())
        .await
        .context("while starting the Stripe simulator")?;
    let dir = std::env::temp_dir().join(format!("genesis-billing-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("while creating {}", dir.display()))?;
    let db = dir.join("demo.db");
    let flags = Flags {
        stripe_key: Some(SecretString::from(DEMO_KEY)),
        stripe_api_base: Some(sim.base_url()),
        database_url: Some(format!("sqlite://{}", db.display())),
        ..Flags::default()
    };
    // The caller's environment is ignored on purpose: the demo must never reach a real Stripe account.
    let settings = Settings::load(&flags, &[("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "100")])?;
    let metrics = Arc::new(Metrics::new());
    let service = build_service(&settings, metrics.clone()).await?;
    let result = walk_through(&service, &sim.base_url(), json).await;
    sim.shutdown().await;
    let report = result?;
    if json {
        print_json(&report);
    } else {
        println!("\nrecords kept in {}", db.display());
    }
    Ok(())
}

async fn walk_through(
    service: &BillingService,
    sim_base: &str,
    json: bool,
) -> Result<serde_json::Value, Failure> {
    step(json, "syncing the price catalog into Stripe");
    let prices = service.sync_prices(true).await?;
    if !json {
        for p in &prices {
            println!(
                "{:<28} {:?} {}",
                p.lookup_key,
                p.status,
                p.stripe_price_id.as_deref().unwrap_or("-")
            );
        }
    }

    step(
        json,
        "creating businesses (customer + subscription each, status as Stripe reports it)",
    );
    let mut ids = Vec::new();
    for (name, kind, email) in BUSINESSES {
        let (b, _) = service
            .create_business(
                NewBusiness {
                    name: (*name).into(),
                    business_type: (*kind).into(),
                    email: email.map(Into::into),
                },
                None,
            )
            .await?;
        if !json {
            println!(
                "{:<16} {:<10} billing {:<12} subscription {}",
                b.name,
                b.business_type,
                b.billing,
                b.subscription_status.as_deref().unwrap_or("-")
            );
        }
        ids.push(b.business_id);
    }

    step(
        json,
        "the owner of Acme Analytics adds a card through Checkout",
    );
    let session = service.checkout_link(&ids[0]).await?;
    if !json {
        println!("checkout link: {}", session.url.as_deref().unwrap_or("-"));
    }
    complete_checkout(sim_base, &session.id).await?;
    let completed = service
        .stripe()?
        .retrieve_checkout_session(&session.id)
        .await
        .map_err(crate::billing::BillingError::from)?;
    let outcome = service.apply_checkout_completed(&completed).await?;
    let acme = service
        .store()
        .get_business(&ids[0])
        .await
        .context("while reading a record")?
        .context("record vanished")?;
    if !json {
        println!(
            "checkout completed: {outcome:?}; subscription now {}",
            acme.subscription_status.as_deref().unwrap_or("-")
        );
    }

    step(json, "taking Tiny Tool down");
    let summary = service.takedown(&ids[4], Some("demo")).await?;
    if !json {
        println!(
            "takedown {}: stripe {}, customer deleted {:?}",
            summary.status, summary.stripe, summary.customer_deleted
        );
    }

    step(json, "records");
    let all = service
        .store()
        .list_businesses(&BusinessFilter::default())
        .await
        .context("while reading records")?;
    let mrr = live_mrr(&all);
    if !json {
        print!("{}", business_table(&all));
        step(
            json,
            "revenue (active MRR; incomplete subscriptions earn nothing until paid)",
        );
        print!("{}", revenue_table(&mrr));
    }
    Ok(serde_json::json!({
        "prices": prices,
        "businesses": all,
        "checkout": outcome,
        "takedown": summary,
        "mrr": mrr,
    }))
}

/// Plays the customer: the simulator's completion endpoint does what paying in Checkout would.
async fn complete_checkout(sim_base: &str, session: &str) -> Result<(), Failure> {
    let url = format!("{sim_base}/_sim/checkout/sessions/{session}/complete");
    let response = reqwest::Client::new()
        .post(&url)
        .bearer_auth(DEMO_KEY)
        .header(
            reqwest::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .body("payment_method=pm_card_visa")
        .send()
        .await
        .context("while completing the checkout session")?;
    if !response.status().is_success() {
        return Err(Failure::Failed(anyhow::anyhow!(
            "the simulator refused to complete checkout: {}",
            response.status()
        )));
    }
    Ok(())
}
