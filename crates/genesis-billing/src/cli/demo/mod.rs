//! `genesis-billing demo`: the whole lifecycle, offline. An in-process Stripe simulator delivers real
//! signed webhooks to the service running in-process, exactly as Stripe would to `serve`, and the service
//! pushes its events to a stand-in for the meta-agent (`meta_agent`), as it would to the dashboard.

mod meta_agent;
mod owner_inbox;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::SecretString;
use serde_json::json;

use super::{business_table, print_json, revenue_table, Failure};
use crate::app::{app_state, build_service};
use crate::billing::BillingService;
use crate::billing::BusinessFilter;
use crate::business::{Business, Lifecycle, NewBusiness};
use crate::config::{Flags, Settings};
use crate::metrics::Metrics;

const DEMO_KEY: &str = "sk_test_genesis_demo_key";

/// Signs the events pushed to the demo's meta-agent.
const DEMO_DASHBOARD_SECRET: &str = "genesis-demo-dashboard-secret";

/// Signs the owners' manage links in the demo.
const DEMO_LINK_SECRET: &str = "genesis-demo-manage-link-secret";

const BUSINESSES: &[(&str, &str, Option<&str>)] = &[
    ("Acme Analytics", "saas", Some("owner@acme.example")),
    ("Blue Basket", "ecommerce", None),
    ("Daily Digest", "content", None),
    ("Ping API", "api", None),
    ("Tiny Tool", "tool", None),
];

/// Prints as the demo goes, unless the caller wants JSON only.
struct Narrator {
    json: bool,
}

impl Narrator {
    fn step(&self, text: &str) {
        if !self.json {
            println!("\n== {text}");
        }
    }
    fn say(&self, text: impl AsRef<str>) {
        if !self.json {
            println!("{}", text.as_ref());
        }
    }
}

/// The simulator, the service and its HTTP side, torn down together.
struct Stage {
    sim: stripe_sim::SimHandle,
    service: Arc<BillingService>,
    running: crate::http::Running,
    meta_agent: meta_agent::MetaAgent,
    owner_inbox: owner_inbox::OwnerInbox,
}

/// Runs the demo; the database is a fresh SQLite file in a temporary directory, kept for inspection.
pub async fn run(json: bool) -> Result<(), Failure> {
    let say = Narrator { json };
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
    let meta_agent = meta_agent::MetaAgent::start(DEMO_DASHBOARD_SECRET).await?;
    let owner_inbox = owner_inbox::OwnerInbox::start().await?;
    // Bound first: the manage links in the owners' emails point at it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("while binding the demo service")?;
    let base = format!("http://{}", listener.local_addr().context("while binding")?);
    // The caller's environment is ignored on purpose: the demo must never reach a real Stripe account.
    let mut settings = Settings::load(
        &flags,
        &[
            ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "100"),
            ("GENESIS_DASHBOARD_URL", meta_agent.url.as_str()),
            ("GENESIS_DASHBOARD_SECRET", DEMO_DASHBOARD_SECRET),
            ("GENESIS_SMTP_URL", owner_inbox.url.as_str()),
            ("GENESIS_NOTICE_FROM", "billing@genesis.example"),
            ("GENESIS_BILLING_LINK_SECRET", DEMO_LINK_SECRET),
            ("GENESIS_BILLING_PUBLIC_URL", base.as_str()),
            // No 3-D Secure in the demo: a failed payment's email need not wait for an action-required one.
            ("GENESIS_NOTICE_PAYMENT_FAILED_HOLD_MS", "0"),
        ],
    )?;
    let metrics = Arc::new(Metrics::new());
    let service = Arc::new(build_service(&settings, metrics.clone()).await?);

    say.step("syncing the price catalog into Stripe");
    let prices = service.sync_prices(true, false).await?;
    for p in &prices {
        say.say(format!(
            "{:<28} {:?} {}",
            p.lookup_key,
            p.status,
            p.stripe_price_id.as_deref().unwrap_or("-")
        ));
    }

    say.step("the service starts and registers its webhook endpoint with Stripe");
    let url = format!("{base}/stripe/webhook");
    let (endpoint, secret) = service.register_webhook_endpoint(&url).await?;
    settings.webhook_secrets = vec![secret];
    let schedule = crate::jobs::Schedule {
        resume: Duration::from_secs(3600),
        webhook_retry: Duration::from_secs(1),
        gap_fill: None,
        reconcile: None,
    };
    let running = crate::http::start_on(
        app_state(&settings, service.clone()),
        listener,
        schedule,
        false,
    )
    .context("while starting the demo service")?;
    say.say(format!("webhook endpoint {endpoint} → {url}"));
    let stage = Stage {
        sim,
        service,
        running,
        meta_agent,
        owner_inbox,
    };
    let result = walk_through(&stage, &say, prices).await;
    let _ = stage.running.shutdown().await;
    stage.sim.shutdown().await;
    let report = result?;
    if json {
        print_json(&report);
    } else {
        println!("\nrecords kept in {}", db.display());
    }
    Ok(())
}

/// Waits for webhooks to bring a record to the wanted state.
async fn until<F, Fut>(what: &str, mut check: F) -> Result<(), Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await {
        if Instant::now() > deadline {
            return Err(Failure::Failed(anyhow::anyhow!(
                "the demo timed out waiting for {what}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn record(service: &BillingService, id: &str) -> Result<Business, Failure> {
    Ok(service
        .business(id)
        .await
        .context("while reading a record")?
        .context("record vanished")?)
}

async fn status_is(service: &BillingService, id: &str, status: &str) -> bool {
    matches!(service.business(id).await, Ok(Some(b)) if b.subscription_status.as_deref() == Some(status))
}

async fn walk_through(
    stage: &Stage,
    say: &Narrator,
    prices: Vec<crate::billing::PriceSyncLine>,
) -> Result<serde_json::Value, Failure> {
    let service = &stage.service;

    say.step(
        "creating businesses: a customer and a subscription each, with the status Stripe reports",
    );
    let mut ids = Vec::new();
    for (name, kind, email) in BUSINESSES {
        let input = NewBusiness {
            name: (*name).into(),
            business_type: (*kind).into(),
            email: email.map(Into::into),
        };
        let (b, _) = service.create_business(input, None).await?;
        say.say(format!(
            "{:<16} {:<10} billing {:<12} subscription {}",
            b.name,
            b.business_type,
            b.billing,
            b.subscription_status.as_deref().unwrap_or("-")
        ));
        ids.push(b.business_id);
    }

    say.step("the owners of Acme Analytics, Blue Basket and Ping API add a card through Checkout");
    for id in [&ids[0], &ids[1], &ids[3]] {
        add_card(stage, say, id, "pm_card_visa").await?;
        until(
            "checkout.session.completed to activate the subscription",
            || status_is(service, id, "active"),
        )
        .await?;
    }
    say.say("webhook checkout.session.completed → first invoice paid → subscriptions active");

    say.step("a month later Acme's card starts failing: the renewal fails, then recovers");
    add_card(stage, say, &ids[0], "pm_card_chargeCustomerFail").await?;
    advance_clock(stage, 31 * 86_400 + 3600).await?;
    until("invoice.payment_failed to make it past_due", || {
        status_is(service, &ids[0], "past_due")
    })
    .await?;
    say.say("webhook invoice.payment_failed + customer.subscription.updated → past_due");
    until(
        "the payment-failed email in Acme's owner's inbox",
        || async { !stage.owner_inbox.mails().is_empty() },
    )
    .await?;
    let mail = stage.owner_inbox.mails().remove(0);
    let link = mail
        .manage_link()
        .context("the payment-failed email carries no manage link")?;
    say.say(format!(
        "email to {}: \"{}\"",
        mail.to.join(", "),
        mail.header("Subject").unwrap_or("-")
    ));
    say.say(format!(
        "manage link: {}…",
        &link[..link.find("token=").map_or(link.len(), |i| i + 12)]
    ));
    fix_card_through_link(stage, say, &link).await?;
    advance_clock(stage, 3 * 86_400 + 3600).await?;
    until("Stripe's retry with the new card to make it active", || {
        status_is(service, &ids[0], "active")
    })
    .await?;
    say.say("Stripe's next retry pays with the new card → active again");
    until("Daily Digest's unpaid subscription to expire", || {
        status_is(service, &ids[2], "incomplete_expired")
    })
    .await?;
    say.say("Daily Digest never paid: Stripe expired its subscription after 23 hours → billing expired, waiting for a card");

    say.step("Blue Basket's subscription is cancelled from Stripe's dashboard");
    cancel_in_stripe(stage, service, &ids[1]).await?;
    until("customer.subscription.deleted to take the business down", || async {
        matches!(service.business(&ids[1]).await, Ok(Some(b)) if b.status == Lifecycle::TakenDown)
    })
    .await?;
    say.say("webhook customer.subscription.deleted → taken down (reason subscription_cancelled)");

    say.step("drift behind the service's back: webhooks off, Ping API's subscription cancelled");
    sim_control(
        &stage.sim.base_url(),
        "/_sim/webhooks",
        json!({"enabled": false}),
    )
    .await?;
    cancel_in_stripe(stage, service, &ids[3]).await?;
    let found = service.reconcile(false, &|_, _| {}).await?;
    for d in &found.drift {
        let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        say.say(format!(
            "drift: {} {}: local {}, Stripe {}",
            d.business_id.as_deref().unwrap_or("-"),
            d.field,
            or_dash(&d.local),
            or_dash(&d.stripe)
        ));
    }
    let fixed = service.reconcile(true, &|_, _| {}).await?;
    say.say(format!(
        "reconcile --fix repaired {} of {} drifts",
        fixed.drift.iter().filter(|d| d.fixed).count(),
        fixed.drift.len()
    ));
    sim_control(
        &stage.sim.base_url(),
        "/_sim/webhooks",
        json!({"enabled": true}),
    )
    .await?;

    say.step("taking Tiny Tool down");
    let summary = service
        .takedown(&ids[4], Some("demo"), crate::billing::Initiator::Cli)
        .await?;
    say.say(format!(
        "takedown {}: stripe {}, customer deleted: {}",
        summary.status,
        summary.stripe,
        summary
            .customer_deleted
            .map(|d| if d { "yes" } else { "no" })
            .unwrap_or("-")
    ));

    say.step("what the meta-agent was told (pushed, signed, in order per business)");
    until("every event to reach the meta-agent", || async {
        matches!(service.events_backlog().await, Ok(b) if b.pending == 0)
    })
    .await?;
    let names: std::collections::HashMap<&str, &str> = ids
        .iter()
        .map(String::as_str)
        .zip(BUSINESSES.iter().map(|(name, _, _)| *name))
        .collect();
    let received = stage.meta_agent.received();
    for r in &received {
        say.say(format!(
            "{:<16} {:<26} {}",
            names.get(r.business_id.as_str()).unwrap_or(&"?"),
            r.envelope["update_type"].as_str().unwrap_or("-"),
            event_summary(&r.envelope["data"])
        ));
    }

    say.step("records");
    // The demo's fresh database holds only the businesses it created: one bounded page shows them all.
    let all = service
        .list_businesses(&BusinessFilter {
            limit: BUSINESSES.len() as i64 + 10,
            ..BusinessFilter::default()
        })
        .await
        .context("while reading records")?;
    let mrr = service.mrr().await.context("while reading records")?;
    say.say(business_table(&all).trim_end());
    say.step("revenue (active MRR; incomplete subscriptions earn nothing until paid)");
    say.say(revenue_table(&mrr).trim_end());
    Ok(json!({
        "prices": prices,
        "businesses": all,
        "drift_found": found.drift,
        "takedown": summary,
        "mrr": mrr,
        "events_received": received.iter().map(|r| &r.envelope).collect::<Vec<_>>(),
        "owner_emails": stage.owner_inbox.mails().iter().map(|m| json!({
            "to": m.to,
            "subject": m.header("Subject"),
            "message_id": m.header("Message-ID"),
        })).collect::<Vec<_>>(),
    }))
}

/// The owner follows the manage link from the email: genesis-billing opens a fresh Billing Portal session
/// on its card form (303), where the owner enters a working card.
async fn fix_card_through_link(stage: &Stage, say: &Narrator, link: &str) -> Result<(), Failure> {
    let browser = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .context("while building the demo's browser")?;
    let opened = browser
        .get(link)
        .send()
        .await
        .context("while opening the manage link")?;
    let portal = opened
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|l| l.to_str().ok())
        .filter(|_| opened.status() == reqwest::StatusCode::SEE_OTHER)
        .with_context(|| format!("the manage link answered {}", opened.status()))?
        .to_owned();
    let session = portal.rsplit('/').next().unwrap_or_default().to_owned();
    say.say(format!(
        "the owner opens it: 303 → Billing Portal session {session} (card update)"
    ));
    sim_request(
        &stage.sim.base_url(),
        reqwest::Method::POST,
        &format!("/_sim/billing_portal/sessions/{session}/payment_method"),
        Some((
            "application/x-www-form-urlencoded",
            "payment_method=pm_card_visa".to_owned(),
        )),
    )
    .await?;
    say.say("in the portal the owner enters a working card");
    Ok(())
}

/// The part of an event's data worth a glance.
fn event_summary(data: &serde_json::Value) -> String {
    let s = |k: &str| data[k].as_str().unwrap_or("-").to_owned();
    if data.get("from").is_some() {
        return format!("{} → {}", s("from"), s("to"));
    }
    if let Some(initiated_by) = data["initiated_by"].as_str() {
        return format!("{} by {initiated_by}, Stripe {}", s("reason"), s("stripe"));
    }
    if let Some(paid) = data["amount_paid_cents"].as_i64() {
        return format!("{} {paid} {}", s("invoice_id"), s("currency"));
    }
    if let Some(due) = data["amount_due_cents"].as_i64() {
        return format!(
            "{} {due} {} (attempt {}, next {})",
            s("invoice_id"),
            s("currency"),
            data["attempt_count"],
            s("next_payment_attempt")
        );
    }
    if data.get("step").is_some() {
        return format!("{}: {}", s("step"), s("reason"));
    }
    s("subscription_status")
}

/// The owner adds a card through a Checkout link; returns once the service has applied the completion.
/// Cancels a business's subscription straight in Stripe, as from the dashboard.
async fn cancel_in_stripe(
    stage: &Stage,
    service: &BillingService,
    id: &str,
) -> Result<(), Failure> {
    let sub = record(service, id)
        .await?
        .stripe_subscription_id
        .unwrap_or_default();
    stripe_call(
        &stage.sim.base_url(),
        reqwest::Method::DELETE,
        &format!("/v1/subscriptions/{sub}"),
    )
    .await
}

/// Moves the simulator's clock on by `seconds`: renewals and Stripe's retries fall due on it.
async fn advance_clock(stage: &Stage, seconds: u64) -> Result<(), Failure> {
    sim_control(
        &stage.sim.base_url(),
        "/_sim/clock/advance",
        json!({"seconds": seconds}),
    )
    .await
}

async fn add_card(
    stage: &Stage,
    say: &Narrator,
    id: &str,
    payment_method: &str,
) -> Result<(), Failure> {
    let service = &stage.service;
    let before = completions(service, id).await;
    let session = service.checkout_link(id).await?;
    say.say(format!(
        "checkout link: {}",
        session.url.as_deref().unwrap_or("-")
    ));
    complete_checkout(&stage.sim.base_url(), &session.id, payment_method).await?;
    until("checkout.session.completed to be applied", || async {
        completions(service, id).await > before
    })
    .await
}

/// How many completed Checkouts the business's history records.
async fn completions(service: &BillingService, id: &str) -> usize {
    match service.events_of(id).await {
        Ok(events) => events
            .iter()
            .filter(|(k, _, _)| k == "checkout_completed")
            .count(),
        Err(_) => 0,
    }
}

/// Plays the customer: the simulator's completion endpoint does what paying in Checkout would.
async fn complete_checkout(
    sim_base: &str,
    session: &str,
    payment_method: &str,
) -> Result<(), Failure> {
    let path = format!("/_sim/checkout/sessions/{session}/complete");
    let body = format!("payment_method={payment_method}");
    sim_request(
        sim_base,
        reqwest::Method::POST,
        &path,
        Some(("application/x-www-form-urlencoded", body)),
    )
    .await
}

/// Plays an operator in Stripe's dashboard.
async fn stripe_call(sim_base: &str, method: reqwest::Method, path: &str) -> Result<(), Failure> {
    sim_request(sim_base, method, path, None).await
}

/// A simulator control (time, webhook delivery).
async fn sim_control(sim_base: &str, path: &str, body: serde_json::Value) -> Result<(), Failure> {
    sim_request(
        sim_base,
        reqwest::Method::POST,
        path,
        Some(("application/json", body.to_string())),
    )
    .await
}

/// One call to the simulator with the demo's key; anything but a 2xx is a failure of the demo.
async fn sim_request(
    sim_base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<(&str, String)>,
) -> Result<(), Failure> {
    let mut request = reqwest::Client::new()
        .request(method, format!("{sim_base}{path}"))
        .bearer_auth(DEMO_KEY);
    if let Some((content_type, body)) = body {
        request = request
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
    }
    let response = request
        .send()
        .await
        .with_context(|| format!("while calling {path}"))?;
    if !response.status().is_success() {
        return Err(Failure::Failed(anyhow::anyhow!(
            "the simulator refused {path}: {}",
            response.status()
        )));
    }
    Ok(())
}
