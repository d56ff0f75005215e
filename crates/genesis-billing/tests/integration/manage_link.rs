//! Owners' manage links (issue 14): a signed link opens a fresh Billing Portal session for the right
//! customer (on the card form after a failed renewal) or Checkout for an unpaid first invoice; a forged,
//! expired, malformed, oversized or foreign token gets a plain 403 and calls nothing in Stripe.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{eventually, json_of, wired, App, World, ADMIN_TOKEN};
use genesis_billing::owners::link::LinkKeys;
use reqwest::{Method, StatusCode};
use secrecy::SecretString;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(10);
const SECRET: &str = "link-secret-NEWkeyDONOTLEAK-0123";
const OLD_SECRET: &str = "link-secret-OLDkeyDONOTLEAK-4567";
const PUBLIC_URL: &str = "https://billing.example.test";

/// A world whose service makes links under `secrets`, with extra environment `env`.
async fn world_with(secrets: &str, env: &[(&str, &str)]) -> World {
    let mut all = vec![
        ("GENESIS_BILLING_LINK_SECRET", secrets),
        ("GENESIS_BILLING_PUBLIC_URL", PUBLIC_URL),
    ];
    all.extend_from_slice(env);
    World::with_env(&all).await
}

/// A catalog whose saas entry has a trial of `days` (then `create_invoice` without a card).
fn trial_catalog(dir: &tempfile::TempDir, days: u32) -> String {
    let path = dir.path().join("catalog.toml");
    std::fs::write(
        &path,
        format!("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"link_trial\"\namount_cents = 900\ntrial_days = {days}\nmissing_payment_method = \"create_invoice\"\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// A client that does not follow redirects: the test reads each 303 itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Asks the admin API for a link to business `id`.
async fn link_for(app: &App, id: &str) -> Value {
    let r = app
        .admin(Method::POST, &format!("/v1/businesses/{id}/manage-link"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// The token of a link.
fn token_of(url: &str) -> &str {
    url.split_once("?token=").expect("a token").1
}

/// Opens a link's token on `app` (the public URL is where owners reach this service; here it is `app`).
async fn open(app: &App, token: &str) -> reqwest::Response {
    browser()
        .get(app.url("/billing/manage"))
        .query(&[("token", token)])
        .send()
        .await
        .unwrap()
}

fn header<'r>(r: &'r reqwest::Response, name: &str) -> &'r str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// The portal session the simulator holds for a 303's `Location`.
fn portal_session_at(world: &World, location: &str) -> Value {
    world
        .objects("billing_portal.session")
        .into_iter()
        .find(|s| s["url"] == location)
        .unwrap_or_else(|| panic!("no portal session with url {location}"))
}

/// Makes business `id` active with a card that pays, through Checkout.
async fn activate(world: &World, app: &App, id: &str) {
    let session = app.checkout(id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    world.wait_subscription_status(id, "active").await;
}

#[tokio::test]
async fn a_link_redirects_to_a_fresh_portal_session_for_the_businesss_own_customer() {
    let (world, app) = wired(world_with(SECRET, &[]).await).await;
    let id = app.create("Owner", "saas").await;
    let other = app.create("Someone else", "saas").await;
    activate(&world, &app, &id).await;
    activate(&world, &app, &other).await;
    let link = link_for(&app, &id).await;
    let url = link["url"].as_str().unwrap();
    assert!(
        url.starts_with(&format!("{PUBLIC_URL}/billing/manage?token=v1.{id}.")),
        "{url}"
    );
    let expires_at = link["expires_at"].as_i64().unwrap();
    let now = genesis_billing::store::now();
    assert!(
        (now + 604_790..=now + 604_800).contains(&expires_at),
        "7 days by default"
    );

    let mut seen = Vec::new();
    for _ in 0..2 {
        let r = open(&app, token_of(url)).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(header(&r, "cache-control"), "no-store");
        assert_eq!(header(&r, "referrer-policy"), "no-referrer");
        let location = header(&r, "location").to_owned();
        let session = portal_session_at(&world, &location);
        let customer = world.record(&id).await.stripe_customer_id.unwrap();
        assert_eq!(session["customer"], customer.as_str());
        assert_eq!(session["flow"], Value::Null, "the overview, no flow");
        assert_eq!(
            session["return_url"],
            format!("{PUBLIC_URL}/billing/manage/done")
        );
        // The page it leads to is the portal (the simulator serves it to anyone holding the URL).
        let page = reqwest::get(&location).await.unwrap();
        assert_eq!(page.status(), 200);
        seen.push(session["id"].as_str().unwrap().to_owned());
    }
    assert_ne!(seen[0], seen[1], "a fresh session each time");

    // Sessions use our configuration, made with the features owners need.
    let session = world
        .objects("billing_portal.session")
        .into_iter()
        .find(|s| s["id"] == seen[0].as_str())
        .unwrap();
    let config = world
        .objects("billing_portal.configuration")
        .into_iter()
        .find(|c| c["id"] == session["configuration"])
        .unwrap();
    assert_eq!(config["metadata"]["genesis_billing"], "owner_portal");
    assert_eq!(config["features"]["payment_method_update"]["enabled"], true);
    assert_eq!(config["features"]["invoice_history"]["enabled"], true);
    assert_eq!(
        config["features"]["subscription_cancel"]["enabled"], false,
        "cancelling is off by default"
    );
    assert_eq!(
        world.objects("billing_portal.configuration").len(),
        1,
        "one configuration, reused"
    );

    // The page the portal sends owners back to.
    let done = browser()
        .get(app.url("/billing/manage/done"))
        .send()
        .await
        .unwrap();
    assert_eq!(done.status(), 200);
    assert_eq!(header(&done, "cache-control"), "no-store");
}

#[tokio::test]
async fn a_failed_renewal_opens_the_portal_on_the_card_form_and_a_new_card_there_is_applied() {
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(&dir, 7);
    let world = world_with(SECRET, &[("GENESIS_BILLING_CATALOG", &catalog)]).await;
    let (world, app) = wired(world).await;
    let id = app.create("Failing card", "saas").await;
    // A card that attaches, then fails every charge: the trial's end makes the renewal fail.
    let session = app.checkout(&id).await;
    assert_eq!(
        world
            .complete_checkout(&session, "pm_card_chargeCustomerFail")
            .await,
        200
    );
    eventually("the card to be the default", WAIT, || async {
        world
            .history(&id)
            .await
            .contains(&"checkout_completed".to_owned())
    })
    .await;
    world
        .sim_control("/_sim/clock/advance", json!({"seconds": 8 * 86_400}))
        .await;
    world.wait_subscription_status(&id, "past_due").await;

    let link = link_for(&app, &id).await;
    let r = open(&app, token_of(link["url"].as_str().unwrap())).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = header(&r, "location").to_owned();
    let session = portal_session_at(&world, &location);
    let customer = world.record(&id).await.stripe_customer_id.unwrap();
    assert_eq!(session["customer"], customer.as_str());
    assert_eq!(session["flow"]["type"], "payment_method_update");

    // The owner enters a working card in the portal; it becomes the subscription's default.
    let (status, body) = world
        .sim_call(
            Method::POST,
            &format!(
                "/_sim/billing_portal/sessions/{}/payment_method",
                session["id"].as_str().unwrap()
            ),
            &[("payment_method", "pm_card_visa")],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let sub = &world.subscriptions_of(&id)[0];
    assert_ne!(sub["default_payment_method"], Value::Null);
}

#[tokio::test]
async fn an_incomplete_subscription_is_sent_to_checkout() {
    let (world, app) = wired(world_with(SECRET, &[]).await).await;
    let id = app.create("First invoice unpaid", "saas").await;
    assert_eq!(
        world.record(&id).await.subscription_status.as_deref(),
        Some("incomplete")
    );
    let link = link_for(&app, &id).await;
    let r = open(&app, token_of(link["url"].as_str().unwrap())).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = header(&r, "location").to_owned();
    let checkout = world
        .objects("checkout.session")
        .into_iter()
        .find(|s| s["url"] == location.as_str())
        .unwrap_or_else(|| panic!("no Checkout session at {location}"));
    let customer = world.record(&id).await.stripe_customer_id.unwrap();
    assert_eq!(checkout["customer"], customer.as_str());
    assert_eq!(checkout["mode"], "setup");
    assert!(world.objects("billing_portal.session").is_empty());
    // Paying there activates the business as any Checkout does.
    let session_id = checkout["id"].as_str().unwrap();
    assert_eq!(
        world.complete_checkout(session_id, "pm_card_visa").await,
        200
    );
    world.wait_subscription_status(&id, "active").await;
}

/// Stripe objects a refused link could have created, and requests our client made.
async fn stripe_side(world: &World) -> (usize, usize, u64) {
    (
        world.objects("billing_portal.session").len(),
        world.objects("checkout.session").len(),
        world.stripe_requests(),
    )
}

/// A refused token's answer: the plain 403 page, no redirect, nothing cached, the token not echoed.
async fn assert_refused(app: &App, token: &str, what: &str) {
    let r = open(app, token).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "{what}");
    assert!(header(&r, "location").is_empty(), "{what}");
    assert!(
        header(&r, "content-type").starts_with("text/html"),
        "{what}"
    );
    assert_eq!(header(&r, "cache-control"), "no-store", "{what}");
    assert_eq!(header(&r, "referrer-policy"), "no-referrer", "{what}");
    let body = r.text().await.unwrap();
    assert!(body.contains("This link does not work"), "{what}: {body}");
    if token.len() > 20 {
        assert!(!body.contains(&token[token.len() - 20..]), "{what}");
    }
}

#[tokio::test]
async fn forged_malformed_oversized_and_foreign_tokens_get_a_plain_403_and_call_nothing_in_stripe()
{
    let (world, app) = wired(world_with(SECRET, &[]).await).await;
    let id = app.create("Target", "saas").await;
    let other = app.create("Other", "saas").await;
    activate(&world, &app, &id).await;
    let gone = app.create("Gone", "saas").await;
    let good = link_for(&app, &id).await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let good = token_of(&good).to_owned();
    let gone_token = link_for(&app, &gone).await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let gone_token = token_of(&gone_token).to_owned();
    let r = app
        .admin(Method::DELETE, &format!("/v1/businesses/{gone}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    let now = genesis_billing::store::now();
    let other_secret = LinkKeys::new(
        vec![SecretString::from(
            "another-deployments-secret-000".to_owned(),
        )],
        3600,
    )
    .unwrap();
    let ours = LinkKeys::new(vec![SecretString::from(SECRET.to_owned())], 604_800).unwrap();
    let other_token = ours.sign(&other, now).unwrap().token;
    let (mac_of_other, exp) = {
        let parts: Vec<&str> = other_token.split('.').collect();
        (parts[3].to_owned(), parts[2].to_owned())
    };
    let mut flipped = good.clone().into_bytes();
    let at = flipped.len() - 5;
    flipped[at] = if flipped[at] == b'x' { b'y' } else { b'x' };
    let cases: Vec<(String, &str)> = vec![
        (String::from_utf8(flipped).unwrap(), "forged signature"),
        (
            format!("v1.{id}.{exp}.{mac_of_other}"),
            "another business's signature on this id",
        ),
        (
            other_secret.sign(&id, now).unwrap().token,
            "signed by another secret",
        ),
        (
            ours.sign("no-such-business", now).unwrap().token,
            "a business that does not exist",
        ),
        (gone_token.clone(), "a business taken down"),
        (ours.sign(&id, now - 604_801).unwrap().token, "expired"),
        (String::new(), "empty"),
        ("v1.garbage".into(), "malformed"),
        (good.replace("v1.", "v2."), "unknown version"),
        (format!("{good}<script>"), "hostile characters"),
        ("A".repeat(10_000), "oversized"),
        (
            format!("{good}{}", "A".repeat(200)),
            "oversized after a good token",
        ),
    ];
    // Let start-up work (catalog and portal checks) settle, then count.
    eventually("the portal check", WAIT, || async {
        let h = json_of(app.client.get(app.url("/health"))).await;
        h["billing_portal"] == "ready" && h["catalog"] == "verified"
    })
    .await;
    let history = world.history(&id).await;
    let before = stripe_side(&world).await;
    for (token, what) in &cases {
        assert_refused(&app, token, what).await;
    }
    // No token at all, two tokens, and a token hidden in another parameter.
    for query in ["", "?tokens=x", &format!("?token={good}&token={good}")] {
        let r = browser()
            .get(format!("{}{query}", app.url("/billing/manage")))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN, "{query}");
    }
    assert_eq!(
        stripe_side(&world).await,
        before,
        "nothing called in Stripe"
    );
    assert_eq!(world.history(&id).await, history, "nothing recorded");
    assert_eq!(
        world.record(&id).await.subscription_status.as_deref(),
        Some("active")
    );
    // The genuine token still works.
    assert_eq!(open(&app, &good).await.status(), StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_link_stops_working_when_its_short_ttl_runs_out() {
    let world = world_with(SECRET, &[("GENESIS_BILLING_LINK_TTL_SECS", "1")]).await;
    let (world, app) = wired(world).await;
    let id = app.create("Short lived", "saas").await;
    activate(&world, &app, &id).await;
    let link = link_for(&app, &id).await;
    let expires_at = link["expires_at"].as_i64().unwrap();
    // Wall-clock time has to pass; poll the clock rather than guess a sleep.
    eventually("the link's expiry", WAIT, || async {
        genesis_billing::store::now() >= expires_at
    })
    .await;
    let before = stripe_side(&world).await;
    assert_refused(&app, token_of(link["url"].as_str().unwrap()), "expired").await;
    assert_eq!(stripe_side(&world).await.0, before.0, "no portal session");
}

/// Starts another service on `world` whose link secrets are `secrets`.
async fn app_with_secrets(world: &World, secrets: &[&str]) -> App {
    let mut settings = world.settings.clone();
    settings.admin_tokens = vec![SecretString::from(ADMIN_TOKEN.to_owned())];
    settings.owners.link_secrets = secrets
        .iter()
        .map(|s| SecretString::from((*s).to_owned()))
        .collect();
    let state = genesis_billing::app::app_state(&settings, world.service.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let schedule = genesis_billing::jobs::Schedule {
        resume: Duration::from_secs(3600),
        webhook_retry: Duration::from_secs(3600),
        gap_fill: None,
        reconcile: None,
    };
    let running = genesis_billing::http::start_on(state, listener, schedule, false).unwrap();
    App {
        base: format!("http://{}", running.addr),
        webhook_secrets: Vec::new(),
        running: Some(running),
        client: reqwest::Client::new(),
    }
}

#[tokio::test]
async fn after_rotation_the_new_secret_signs_and_links_under_the_old_one_still_open() {
    let (world, old_app) = wired(world_with(OLD_SECRET, &[]).await).await;
    let id = old_app.create("Rotated", "saas").await;
    activate(&world, &old_app, &id).await;
    let old_link = link_for(&old_app, &id).await["url"]
        .as_str()
        .unwrap()
        .to_owned();

    let rotated = app_with_secrets(&world, &[SECRET, OLD_SECRET]).await;
    assert_eq!(
        open(&rotated, token_of(&old_link)).await.status(),
        StatusCode::SEE_OTHER,
        "a link signed before the rotation still opens"
    );
    let new_link = link_for(&rotated, &id).await["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let now = genesis_billing::store::now();
    let only = |s: &str| LinkKeys::new(vec![SecretString::from(s.to_owned())], 604_800).unwrap();
    assert_eq!(only(SECRET).verify(token_of(&new_link), now).unwrap(), id);
    assert!(
        only(OLD_SECRET).verify(token_of(&new_link), now).is_err(),
        "the first secret signs"
    );

    // Once the old secret is retired, its links stop working.
    let retired = app_with_secrets(&world, &[SECRET]).await;
    assert_refused(&retired, token_of(&old_link), "retired secret").await;
    assert_eq!(
        open(&retired, token_of(&new_link)).await.status(),
        StatusCode::SEE_OTHER
    );
}

#[tokio::test]
async fn without_a_link_secret_or_public_url_no_link_is_made_and_the_api_says_why() {
    for env in [
        vec![("GENESIS_BILLING_PUBLIC_URL", PUBLIC_URL)],
        vec![("GENESIS_BILLING_LINK_SECRET", SECRET)],
    ] {
        let world = World::with_env(&env).await;
        let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
        let id = app.create("No links", "saas").await;
        let r = app
            .admin(Method::POST, &format!("/v1/businesses/{id}/manage-link"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 409);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "manage_links_not_configured");
        let missing = if env[0].0 == "GENESIS_BILLING_LINK_SECRET" {
            "GENESIS_BILLING_PUBLIC_URL"
        } else {
            "GENESIS_BILLING_LINK_SECRET"
        };
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(missing), "{message}");
        assert!(!message.contains(SECRET));

        // The CLI: a configuration error, exit status 2.
        let mut cli_env = world.cli_env();
        cli_env.extend(env.iter().map(|(k, v)| (*k, (*v).to_owned())));
        let out = common::output(&cli_env, &["business", "manage-link", &id]);
        assert_eq!(out.status.code(), Some(2));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(missing), "{stderr}");
        assert!(!stderr.contains(SECRET), "{stderr}");
        // No portal configuration is made for links nobody can have.
        assert!(world.objects("billing_portal.configuration").is_empty());
    }
}

#[tokio::test]
async fn the_cli_and_the_api_hand_out_links_for_active_businesses_only() {
    let (world, app) = wired(world_with(SECRET, &[]).await).await;
    let id = app.create("CLI owner", "saas").await;
    let mut env = world.cli_env();
    env.push(("GENESIS_BILLING_LINK_SECRET", SECRET.to_owned()));
    env.push(("GENESIS_BILLING_PUBLIC_URL", PUBLIC_URL.to_owned()));
    let out = common::run_json(&env, &["business", "manage-link", &id, "--json"]);
    let url = out["url"].as_str().unwrap();
    assert!(url.starts_with(&format!("{PUBLIC_URL}/billing/manage?token=")));
    assert!(out["expires_at"].as_i64().unwrap() > genesis_billing::store::now());
    // What the CLI made opens on the service.
    assert_eq!(
        open(&app, token_of(url)).await.status(),
        StatusCode::SEE_OTHER
    );
    let plain = common::run_ok(&env, &["business", "manage-link", &id]);
    assert!(String::from_utf8_lossy(&plain.stdout).starts_with(PUBLIC_URL));

    let missing = "00000000-0000-4000-8000-000000000000";
    let out = common::output(&env, &["business", "manage-link", missing]);
    assert_eq!(out.status.code(), Some(1));
    let r = app
        .admin(
            Method::POST,
            &format!("/v1/businesses/{missing}/manage-link"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    let r = app
        .admin(Method::DELETE, &format!("/v1/businesses/{id}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let out = common::output(&env, &["business", "manage-link", &id]);
    assert_eq!(out.status.code(), Some(1));
    let r = app
        .admin(Method::POST, &format!("/v1/businesses/{id}/manage-link"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    // The admin route needs the admin token; the owner's page does not.
    let r = reqwest::Client::new()
        .post(app.url(&format!("/v1/businesses/{id}/manage-link")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test]
async fn the_portal_configuration_follows_the_cancel_setting_and_is_repaired_when_changed() {
    let world = world_with(SECRET, &[("GENESIS_BILLING_PORTAL_ALLOW_CANCEL", "true")]).await;
    let app = App::start(&world, &[ADMIN_TOKEN], &[], None).await;
    eventually("the portal check", WAIT, || async {
        json_of(app.client.get(app.url("/health"))).await["billing_portal"] == "ready"
    })
    .await;
    let configs = world.objects("billing_portal.configuration");
    assert_eq!(configs.len(), 1);
    let config = &configs[0];
    assert_eq!(config["features"]["subscription_cancel"]["enabled"], true);
    assert_eq!(
        config["features"]["subscription_cancel"]["mode"],
        "at_period_end"
    );
    let id = config["id"].as_str().unwrap().to_owned();

    // Someone turns features off and deactivates it in the dashboard; the next check puts it back.
    let (status, body) = world
        .sim_call(
            Method::POST,
            &format!("/v1/billing_portal/configurations/{id}"),
            &[
                ("features[invoice_history][enabled]", "false"),
                ("active", "false"),
            ],
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // A second replica started with cancelling off finds the same configuration and updates it.
    let mut settings = world.settings.clone();
    settings.owners.portal_allow_cancel = false;
    let owners = Arc::new(genesis_billing::owners::Owners::from_settings(&settings));
    owners
        .recheck_portal(world.service.stripe().unwrap())
        .await
        .unwrap();
    let configs = world.objects("billing_portal.configuration");
    assert_eq!(configs.len(), 1, "found by its metadata, not created again");
    let c = &configs[0];
    assert_eq!(c["active"], true);
    assert_eq!(c["features"]["invoice_history"]["enabled"], true);
    assert_eq!(c["features"]["subscription_cancel"]["enabled"], false);
}

#[tokio::test]
async fn serve_starts_while_stripe_refuses_the_portal_and_retries_later() {
    let world = world_with(SECRET, &[]).await;
    world.sim.set_faults(vec![common::fault(
        stripe_sim::FaultKind::Http500,
        1.0,
        Some("GET /v1/billing_portal/configurations"),
    )]);
    let (world, app) = wired(world).await;
    eventually("the failure to show in /health", WAIT, || async {
        json_of(app.client.get(app.url("/health"))).await["billing_portal"] == "error"
    })
    .await;
    // The admin API works meanwhile, and links are still handed out.
    let id = app.create("Meanwhile", "saas").await;
    activate(&world, &app, &id).await;
    let link = link_for(&app, &id).await;
    // Opening one needs the configuration: a 503 page to try again later, nothing cached.
    let r = open(&app, token_of(link["url"].as_str().unwrap())).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&r, "cache-control"), "no-store");
    assert!(world.objects("billing_portal.session").is_empty());
    world.sim.set_faults(Vec::new());
    let r = open(&app, token_of(link["url"].as_str().unwrap())).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(world.objects("billing_portal.configuration").len(), 1);
}
