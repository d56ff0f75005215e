//! Owner notices by email (issue 14): a real SMTP server on 127.0.0.1 (scripts/smtp_sink.py, aiosmtpd)
//! receives what the service sends while the simulator drives renewals, trials and roll-backs. One email
//! per cause, whatever is delivered twice or restarted; temporary refusals retried, permanent ones failed
//! and resent by hand; values escaped; the SMTP password nowhere.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use genesis_billing::store::{now, OutboundFilter};
use genesis_billing::webhook::signature::sign;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{self, eventually, output, wired, App, World, ADMIN_TOKEN};

const WAIT: Duration = Duration::from_secs(30);
const LINK_SECRET: &str = "notice-link-secret-0123456789";
const PUBLIC_URL: &str = "https://billing.example.test";
const SMTP_USER: &str = "notices";
const SMTP_PASSWORD: &str = "smtp-PASSWORD-never-in-logs-42";
const OWNER: &str = "owner@shop.example";

/// scripts/smtp_sink.py, running until dropped.
struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sink {
    /// Starts the sink with extra arguments (`--fail-first N`, `--auth U:P`).
    fn start(args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../scripts/smtp_sink.py");
        let mut child = Command::new("python3")
            .arg(script)
            .arg("--dir")
            .arg(dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 runs scripts/smtp_sink.py (pip install -r scripts/requirements.txt)");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("the sink did not start: {line:?}"))
            .parse()
            .unwrap();
        Self { child, dir, port }
    }

    /// Messages accepted so far, in order.
    fn messages(&self) -> Vec<Value> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "json"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
            .collect()
    }

    /// Waits until at least `n` messages arrived; returns them all.
    async fn wait_for(&self, n: usize) -> Vec<Value> {
        eventually(&format!("{n} email(s)"), WAIT, || async {
            self.messages().len() >= n
        })
        .await;
        self.messages()
    }

    /// Answers 550 to these recipients from now on (none when empty).
    fn reject(&self, recipients: &[&str]) {
        std::fs::write(self.dir.path().join("reject"), recipients.join("\n")).unwrap();
    }

    /// The SMTP URL for this sink, with our test credentials when `auth`.
    fn url(&self, auth: bool) -> String {
        match auth {
            true => format!("smtp://{SMTP_USER}:{SMTP_PASSWORD}@127.0.0.1:{}", self.port),
            false => format!("smtp://127.0.0.1:{}", self.port),
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service's environment for notices to `sink` (fast retries), plus `extra`.
fn notice_env(sink: &Sink, auth: bool, extra: &[(&str, String)]) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "GENESIS_BILLING_LINK_SECRET".to_owned(),
            LINK_SECRET.to_owned(),
        ),
        (
            "GENESIS_BILLING_PUBLIC_URL".to_owned(),
            PUBLIC_URL.to_owned(),
        ),
        ("GENESIS_SMTP_URL".to_owned(), sink.url(auth)),
        (
            "GENESIS_NOTICE_FROM".to_owned(),
            "Genesis Billing <billing@genesis.example>".to_owned(),
        ),
        ("GENESIS_NOTICE_RETRY_BASE_MS".to_owned(), "200".to_owned()),
        (
            "GENESIS_NOTICE_PAYMENT_FAILED_HOLD_MS".to_owned(),
            "1000".to_owned(),
        ),
    ];
    env.extend(extra.iter().map(|(k, v)| ((*k).to_owned(), v.clone())));
    env
}

/// A catalog whose saas price is $9.00 after a trial of `days` (then an invoice even without a card).
fn trial_catalog(dir: &std::path::Path, days: u32) -> String {
    let path = dir.join("catalog.toml");
    std::fs::write(
        &path,
        format!("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"notice_trial\"\namount_cents = 900\ntrial_days = {days}\nmissing_payment_method = \"create_invoice\"\n"),
    )
    .unwrap();
    path.display().to_string()
}

/// A wired world (service receiving the simulator's webhooks, notice job running) with `env`.
async fn world(env: &[(String, String)]) -> (World, App) {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    wired(World::with_env(&env).await).await
}

/// Creates a business with an owner email (or none) through the admin API.
async fn create(app: &App, name: &str, email: Option<&str>) -> String {
    let mut body = json!({"name": name, "business_type": "saas"});
    if let Some(e) = email {
        body["email"] = json!(e);
    }
    let r = app
        .admin(Method::POST, "/v1/businesses")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    r.json::<Value>().await.unwrap()["business_id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn advance(world: &World, seconds: i64) {
    world
        .sim_control("/_sim/clock/advance", json!({ "seconds": seconds }))
        .await;
}

/// Completes a Checkout for business `id` with card `pm` and waits until it is recorded.
async fn checkout_with(world: &World, app: &App, id: &str, pm: &str) {
    let session = app.checkout(id).await;
    assert_eq!(world.complete_checkout(&session, pm).await, 200);
    eventually("the checkout to be recorded", WAIT, || async {
        world
            .history(id)
            .await
            .contains(&"checkout_completed".to_owned())
    })
    .await;
}

/// The notices of business `id`, newest first.
async fn notices_of(world: &World, id: &str) -> Vec<genesis_billing::store::Notice> {
    world
        .service
        .store()
        .list_notices(&genesis_billing::store::NoticeFilter {
            business_id: Some(id.to_owned()),
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap()
}

/// Waits until business `id` has a notice of `kind` in `state`.
async fn wait_notice(
    world: &World,
    id: &str,
    kind: &str,
    state: &str,
) -> genesis_billing::store::Notice {
    eventually(&format!("a {state} {kind} notice"), WAIT, || async {
        notices_of(world, id)
            .await
            .iter()
            .any(|n| n.kind == kind && n.state.as_str() == state)
    })
    .await;
    notices_of(world, id)
        .await
        .into_iter()
        .find(|n| n.kind == kind)
        .unwrap()
}

/// Waits until the planner has read every outbox event there is now.
async fn wait_planner_caught_up(world: &World) {
    let store = world.service.store().clone();
    let mut last = None;
    let mut filter = OutboundFilter {
        limit: 1000,
        ..Default::default()
    };
    loop {
        let page = store.list_outbound(&filter).await.unwrap();
        match page.last() {
            Some(e) => {
                last = Some(e.cursor());
                filter.after = last;
            }
            None => break,
        }
    }
    let Some(end) = last else { return };
    eventually("the planner to catch up", WAIT, || async {
        store.notice_cursor().await.unwrap() >= end
    })
    .await;
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// The manage link in an email's text.
fn manage_link(text: &str) -> String {
    let start = text
        .find(&format!("{PUBLIC_URL}/billing/manage?token="))
        .unwrap_or_else(|| panic!("no manage link in {text}"));
    text[start..].split_whitespace().next().unwrap().to_owned()
}

/// Posts a Stripe event to the service as Stripe would, signed.
async fn deliver(app: &App, event: &Value) -> u16 {
    let body = event.to_string();
    app.client
        .post(app.url("/stripe/webhook"))
        .header(
            "stripe-signature",
            sign(&app.webhook_secrets[0], now(), body.as_bytes()),
        )
        .body(body)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The simulator's events of `kind`, newest first.
async fn sim_events(world: &World, kind: &str) -> Vec<Value> {
    let (status, list) = world
        .sim_call(Method::GET, &format!("/v1/events?type={kind}"), &[])
        .await;
    assert_eq!(status, 200, "{list}");
    list["data"].as_array().unwrap().clone()
}

#[tokio::test]
async fn a_failed_renewal_mails_the_owner_once_and_the_link_leads_to_a_card_that_pays_the_retry() {
    let sink = Sink::start(&["--auth", &format!("{SMTP_USER}:{SMTP_PASSWORD}")]);
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(dir.path(), 7);
    let env = notice_env(&sink, true, &[("GENESIS_BILLING_CATALOG", catalog)]);
    let (world, mut app) = world(&env).await;
    let id = create(&app, "Acme Widgets", Some(OWNER)).await;
    checkout_with(&world, &app, &id, "pm_card_chargeCustomerFail").await;
    // Just past the trial's end: one failed attempt (each later failed retry is a cause of its own).
    advance(&world, 7 * 86_400 + 3600).await;
    world.wait_subscription_status(&id, "past_due").await;

    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail["rcpt_tos"], json!([OWNER]));
    assert_eq!(mail["auth_login"], SMTP_USER, "the sink required AUTH");
    assert_eq!(mail["subject"], "Payment failed for Acme Widgets");
    let text = mail["text"].as_str().unwrap();
    assert!(
        text.contains("We could not charge USD 9.00 for Acme Widgets"),
        "{text}"
    );
    assert!(mail["html"].as_str().unwrap().contains("USD 9.00"));
    let notice = wait_notice(&world, &id, "payment_failed", "sent").await;
    assert_eq!(mail["message_id"], notice.message_id.as_str());
    assert_eq!(notice.recipient.as_deref(), Some(OWNER));

    // The link opens a portal session for this business's customer, on the card form.
    let link = manage_link(text);
    let token = link.split_once("?token=").unwrap().1;
    let r = browser()
        .get(app.url("/billing/manage"))
        .query(&[("token", token)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    let location = r.headers()["location"].to_str().unwrap().to_owned();
    let session = world
        .objects("billing_portal.session")
        .into_iter()
        .find(|s| s["url"] == location.as_str())
        .expect("a portal session at the redirect");
    let customer = world.record(&id).await.stripe_customer_id.unwrap();
    assert_eq!(session["customer"], customer.as_str());
    assert_eq!(session["flow"]["type"], "payment_method_update");

    // The owner enters a working card there; Stripe's next retry pays, and the business is active again.
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
    let failed = sim_events(&world, "invoice.payment_failed").await;
    let next_attempt = failed[0]["data"]["object"]["next_payment_attempt"]
        .as_i64()
        .expect("a retry is scheduled");
    assert!(
        text.contains(&format!(
            "Next automatic attempt: {}.",
            genesis_billing::business::rfc3339(next_attempt)
        )),
        "{text}"
    );
    let (_, clock) = world.sim_call(Method::GET, "/_sim/clock", &[]).await;
    let sim_now = clock["now"].as_i64().unwrap();
    advance(&world, next_attempt - sim_now + 60).await;
    world.wait_subscription_status(&id, "active").await;
    let events = world
        .service
        .store()
        .list_outbound(&OutboundFilter {
            business_id: Some(id.clone()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        events
            .iter()
            .any(|e| e.update_type == "billing.status_changed"
                && serde_json::from_str::<Value>(&e.data).unwrap()["to"] == "active"
                && serde_json::from_str::<Value>(&e.data).unwrap()["from"] == "past_due"),
        "billing.status_changed back to active"
    );

    // The failed payment's webhook delivered again, then serve restarted: still one email.
    assert_eq!(deliver(&app, &failed[0]).await, 200);
    wait_planner_caught_up(&world).await;
    app.running.take().unwrap().shutdown().await.unwrap();
    let app = App::start(&world, &[ADMIN_TOKEN], &app.webhook_secrets, None).await;
    assert_eq!(deliver(&app, &failed[0]).await, 200);
    wait_planner_caught_up(&world).await;
    let payment_failed: Vec<_> = notices_of(&world, &id)
        .await
        .into_iter()
        .filter(|n| n.kind == "payment_failed")
        .collect();
    assert_eq!(payment_failed.len(), 1);
    assert_eq!(sink.messages().len(), 1, "one email per cause");

    // The password is in no stored error, metric or message.
    let metrics = world.service.metrics().render();
    assert!(
        metrics
            .contains("genesis_billing_notices_total{kind=\"payment_failed\",outcome=\"sent\"} 1"),
        "{metrics}"
    );
    assert!(!metrics.contains(SMTP_PASSWORD));
    assert!(!mail.to_string().contains(SMTP_PASSWORD));
    assert!(!mail.to_string().contains(LINK_SECRET));
}

#[tokio::test]
async fn a_renewal_that_needs_authentication_mails_the_hosted_invoice_link_once() {
    let sink = Sink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(dir.path(), 7);
    let env = notice_env(&sink, false, &[("GENESIS_BILLING_CATALOG", catalog)]);
    let (world, _app) = world(&env).await;
    let id = create(&_app, "Secure Shop", Some(OWNER)).await;
    checkout_with(&world, &_app, &id, "pm_card_authenticationRequired").await;
    advance(&world, 7 * 86_400 + 3600).await;
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(
        mail["subject"],
        "Please confirm the payment for Secure Shop"
    );
    let required = sim_events(&world, "invoice.payment_action_required").await;
    let hosted = required[0]["data"]["object"]["hosted_invoice_url"]
        .as_str()
        .unwrap();
    assert!(mail["text"].as_str().unwrap().contains(hosted), "{mail}");
    assert!(
        !mail["text"]
            .as_str()
            .unwrap()
            .contains("/billing/manage?token="),
        "no manage link in this one"
    );
    wait_notice(&world, &id, "action_required", "sent").await;
    let superseded = wait_notice(&world, &id, "payment_failed", "skipped").await;
    assert!(superseded.reason.unwrap().contains("action-required"));
    wait_planner_caught_up(&world).await;
    assert_eq!(
        sink.messages().len(),
        1,
        "the failed attempt is told once, as an action required"
    );
}

#[tokio::test]
async fn a_trial_ending_with_a_card_on_the_customer_mails_nobody() {
    let sink = Sink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(dir.path(), 7);
    let env = notice_env(&sink, false, &[("GENESIS_BILLING_CATALOG", catalog)]);
    let (world, app) = world(&env).await;
    let id = create(&app, "Carded", Some(OWNER)).await;
    // The card is the customer's default (Stripe charges it), not the subscription's.
    let customer = world.record(&id).await.stripe_customer_id.unwrap();
    let (status, pm) = world
        .sim_call(
            reqwest::Method::POST,
            "/v1/payment_methods/pm_card_visa/attach",
            &[("customer", customer.as_str())],
        )
        .await;
    assert_eq!(status, 200, "{pm}");
    let (status, c) = world
        .sim_call(
            reqwest::Method::POST,
            &format!("/v1/customers/{customer}"),
            &[(
                "invoice_settings[default_payment_method]",
                pm["id"].as_str().unwrap(),
            )],
        )
        .await;
    assert_eq!(status, 200, "{c}");
    advance(&world, 5 * 86_400).await;
    let store = world.service.store().clone();
    let business = id.clone();
    common::eventually("billing.trial_ending", Duration::from_secs(20), move || {
        let (store, business) = (store.clone(), business.clone());
        async move {
            common::events::outbox_of(&store, Some(&business))
                .await
                .iter()
                .any(|e| e.update_type == "billing.trial_ending")
        }
    })
    .await;
    let events = common::events::outbox_of(world.service.store(), Some(&id)).await;
    let ending = events
        .iter()
        .find(|e| e.update_type == "billing.trial_ending")
        .unwrap();
    let data: serde_json::Value = serde_json::from_str(&ending.data).unwrap();
    assert_eq!(data["has_payment_method"], true, "{data}");
    wait_planner_caught_up(&world).await;
    assert!(sink.messages().is_empty(), "{:?}", sink.messages());
}

#[tokio::test]
async fn a_trial_ending_without_a_card_mails_once_and_a_name_with_html_arrives_as_text() {
    let sink = Sink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(dir.path(), 7);
    let env = notice_env(&sink, false, &[("GENESIS_BILLING_CATALOG", catalog)]);
    let (world, app) = world(&env).await;
    let name = "<script>alert(\"x\")</script> & Sons";
    let id = create(&app, name, Some(OWNER)).await;
    advance(&world, 5 * 86_400).await;
    let mail = sink.wait_for(1).await.remove(0);
    let html = mail["html"].as_str().unwrap();
    assert!(!html.contains("<script>"), "{html}");
    assert!(
        html.contains("&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; Sons"),
        "{html}"
    );
    assert!(mail["text"].as_str().unwrap().contains(name));
    assert!(mail["subject"]
        .as_str()
        .unwrap()
        .starts_with("The trial of <script>"));
    let trial_end = world.subscriptions_of(&id)[0]["trial_end"]
        .as_i64()
        .unwrap();
    let trial_end = genesis_billing::business::rfc3339(trial_end);
    assert!(
        mail["text"].as_str().unwrap().contains(&trial_end),
        "{trial_end}: {mail}"
    );
    assert!(mail["text"]
        .as_str()
        .unwrap()
        .contains(&format!("{PUBLIC_URL}/billing/manage?token=v1.{id}.")));
    wait_notice(&world, &id, "trial_ending", "sent").await;
    wait_planner_caught_up(&world).await;
    assert_eq!(sink.messages().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporary_refusal_is_retried_and_a_permanent_one_is_failed_listed_and_resent_by_hand() {
    let sink = Sink::start(&["--fail-first", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(dir.path(), 7);
    let env = notice_env(
        &sink,
        false,
        &[("GENESIS_BILLING_CATALOG", catalog.clone())],
    );
    let (world, app) = world(&env).await;
    let retried = create(&app, "Retried", Some(OWNER)).await;
    let refused = create(&app, "Refused", Some("nobody@shop.example")).await;
    let silent = create(&app, "No address", None).await;
    sink.reject(&["nobody@shop.example"]);
    advance(&world, 5 * 86_400).await;

    // 451 first, then accepted.
    let n = wait_notice(&world, &retried, "trial_ending", "sent").await;
    assert_eq!(n.attempts, 2, "one 451, then accepted");
    let m = world.service.metrics();
    assert_eq!(
        m.value(
            "genesis_billing_notices_total",
            &["trial_ending", "retried"]
        ),
        1.0
    );
    // 550: failed at once, with the server's answer.
    let f = wait_notice(&world, &refused, "trial_ending", "failed").await;
    assert_eq!(f.attempts, 1);
    assert!(
        f.last_error.as_deref().unwrap().contains("550"),
        "{:?}",
        f.last_error
    );
    assert_eq!(
        m.value("genesis_billing_notices_total", &["trial_ending", "failed"]),
        1.0
    );
    // No address: skipped, with the reason.
    let s = wait_notice(&world, &silent, "trial_ending", "skipped").await;
    assert_eq!(
        s.reason.as_deref(),
        Some("the business has no email address")
    );
    assert_eq!(
        m.value(
            "genesis_billing_notices_total",
            &["trial_ending", "skipped"]
        ),
        1.0
    );
    assert_eq!(sink.messages().len(), 1);

    // The operator sees the failure and resends it once the mailbox works.
    let mut cli_env = world.cli_env();
    cli_env.extend(
        notice_env(&sink, false, &[("GENESIS_BILLING_CATALOG", catalog)])
            .into_iter()
            .map(|(k, v)| (leak(k), v)),
    );
    let listed = common::run_json(&cli_env, &["--json", "notices", "list", "--failed"]);
    let ids: Vec<&str> = listed["notices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![f.id.as_str()]);
    // Pages, newest first, and bad input refused.
    let first = common::run_json(&cli_env, &["--json", "notices", "list", "--limit", "2"]);
    assert_eq!(first["notices"].as_array().unwrap().len(), 2);
    let next = first["next_before"].as_str().unwrap().to_owned();
    let second = common::run_json(
        &cli_env,
        &[
            "--json", "notices", "list", "--limit", "2", "--before", &next,
        ],
    );
    assert_eq!(second["notices"].as_array().unwrap().len(), 1);
    assert_eq!(second["next_before"], Value::Null);
    let mine = common::run_json(
        &cli_env,
        &["--json", "notices", "list", "--business", &silent],
    );
    assert_eq!(mine["notices"][0]["state"], "skipped");
    for bad in [
        vec!["notices", "list", "--business", "<script>"],
        vec![
            "notices",
            "list",
            "--before",
            "'; DROP TABLE owner_notice; --",
        ],
        vec!["notices", "list", "--limit", "100000"],
    ] {
        assert_eq!(output(&cli_env, &bad).status.code(), Some(2), "{bad:?}");
    }
    let long = format!("gbn_{}", "a".repeat(10_000));
    assert_eq!(
        output(&cli_env, &["notices", "resend", &long])
            .status
            .code(),
        Some(2)
    );
    let sent = wait_notice(&world, &retried, "trial_ending", "sent").await;
    let not_failed = output(&cli_env, &["notices", "resend", &sent.id]);
    assert_eq!(not_failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_failed.stderr).contains("only a failed notice is resent"));
    let bad = output(&cli_env, &["notices", "resend", "gbn_<script>"]);
    assert_eq!(bad.status.code(), Some(2));
    let missing = output(&cli_env, &["notices", "resend", "gbn_0000000000000"]);
    assert_eq!(missing.status.code(), Some(1));
    sink.reject(&[]);
    let resent = common::run_json(&cli_env, &["--json", "notices", "resend", &f.id]);
    assert_eq!(resent["notice"]["state"], "sent", "{resent}");
    let mails = sink.wait_for(2).await;
    assert_eq!(mails[1]["rcpt_tos"], json!(["nobody@shop.example"]));
    assert_eq!(
        mails[1]["message_id"],
        f.message_id.as_str(),
        "the same Message-ID"
    );
    assert!(!String::from_utf8_lossy(&not_failed.stderr).contains(LINK_SECRET));
}

/// A `&'static str` for the CLI environment's keys (a handful per test).
fn leak(s: String) -> &'static str {
    Box::leak(s.into_boxed_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_back_with_notify_tells_each_owner_once_however_often_it_runs() {
    let sink = Sink::start(&[]);
    let env = notice_env(&sink, false, &[]);
    let (world, app) = world(&env).await;
    let a = create(&app, "First", Some("first@shop.example")).await;
    let b = create(&app, "Second", Some("second@shop.example")).await;
    let c = create(&app, "Third", None).await;
    for id in [&a, &b, &c] {
        let session = app.checkout(id).await;
        assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
        world.wait_subscription_status(id, "active").await;
    }
    let mut cli_env = world.cli_env();
    cli_env.extend(env.into_iter().map(|(k, v)| (leak(k), v)));
    let out = common::run_json(&cli_env, &["--json", "cancel-all", "--confirm", "--notify"]);
    assert_eq!(out["cancelled"], 3, "{out}");
    assert_eq!(out["notices"]["sent"], 2, "{out}");
    assert_eq!(out["notices"]["skipped"], 1, "{out}");
    let mut to: Vec<String> = sink
        .wait_for(2)
        .await
        .iter()
        .map(|m| m["rcpt_tos"][0].as_str().unwrap().to_owned())
        .collect();
    to.sort();
    assert_eq!(to, ["first@shop.example", "second@shop.example"]);
    let mail = &sink.messages()[0];
    assert!(mail["text"]
        .as_str()
        .unwrap()
        .contains("Nothing more will be charged"));
    assert_eq!(
        notices_of(&world, &c).await[0].reason.as_deref(),
        Some("the business has no email address")
    );

    // Run again (and let serve's planner see everything): nothing more.
    let again = common::run_json(&cli_env, &["--json", "cancel-all", "--confirm", "--notify"]);
    assert_eq!(again["cancelled"], 0, "{again}");
    wait_planner_caught_up(&world).await;
    assert_eq!(sink.messages().len(), 2);
}

#[tokio::test]
async fn an_unpaid_subscription_takes_the_business_down_and_the_owner_is_told_billing_ended() {
    let sink = Sink::start(&[]);
    let env = notice_env(&sink, false, &[]);
    let (world, app) = world(&env).await;
    let id = create(&app, "Never paid", Some(OWNER)).await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    world.wait_subscription_status(&id, "active").await;
    // Stripe marks the subscription unpaid after its retries (as its account setting says).
    let sub = world.record(&id).await.stripe_subscription_id.unwrap();
    let updated = sim_events(&world, "customer.subscription.updated").await;
    let mut event = updated
        .into_iter()
        .find(|e| e["data"]["object"]["id"] == sub.as_str())
        .unwrap_or_else(|| sim_events_any_subscription(&world, &sub));
    event["id"] = json!(format!("evt_unpaid_{}", uuid::Uuid::new_v4().simple()));
    event["type"] = json!("customer.subscription.updated");
    event["created"] = json!(now() + 5);
    event["data"]["object"]["status"] = json!("unpaid");
    assert_eq!(deliver(&app, &event).await, 200);

    eventually("the business taken down", WAIT, || async {
        world.record(&id).await.status == genesis_billing::business::Lifecycle::TakenDown
    })
    .await;
    let b = world.record(&id).await;
    assert_eq!(b.takedown_reason.as_deref(), Some("unpaid"));
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail["subject"], "Billing ended for Never paid");
    assert!(mail["text"]
        .as_str()
        .unwrap()
        .contains("the invoice stayed unpaid after every retry"));
}

/// A `customer.subscription.*` event of subscription `sub` to copy (the simulator's created event).
fn sim_events_any_subscription(world: &World, sub: &str) -> Value {
    let subscription = world
        .objects("subscription")
        .into_iter()
        .find(|s| s["id"] == sub)
        .unwrap();
    json!({
        "object": "event",
        "api_version": "2026-09-30.endive",
        "livemode": false,
        "data": {"object": subscription},
    })
}

#[tokio::test]
async fn notices_without_a_link_secret_stop_start_up_and_the_smtp_url_never_shows() {
    let bad = [
        (
            vec![
                (
                    "GENESIS_SMTP_URL",
                    format!("smtp://u:{SMTP_PASSWORD}@mail.example:587"),
                ),
                ("GENESIS_NOTICE_FROM", "b@example.org".into()),
            ],
            "GENESIS_BILLING_LINK_SECRET",
        ),
        (
            vec![
                (
                    "GENESIS_SMTP_URL",
                    format!("ftp://u:{SMTP_PASSWORD}@mail.example"),
                ),
                ("GENESIS_NOTICE_FROM", "b@example.org".into()),
            ],
            "smtp://",
        ),
        (
            vec![
                (
                    "GENESIS_SMTP_URL",
                    format!("smtp://u:{SMTP_PASSWORD}@mail.example"),
                ),
                ("GENESIS_NOTICE_FROM", "not an address\r\nBcc: x".into()),
            ],
            "GENESIS_NOTICE_FROM",
        ),
        (
            vec![("GENESIS_NOTICE_DISABLE", "payment_failed,<script>".into())],
            "unknown notice kind",
        ),
        (
            vec![("GENESIS_BILLING_UNPAID_POLICY", "sometimes".into())],
            "takedown or keep",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("b.db").display());
    for (env, expected) in bad {
        let mut env: Vec<(&str, String)> = env;
        env.push(("DATABASE_URL", db.clone()));
        let out = output(&env, &["notices", "list"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(expected), "{expected}: {stderr}");
        assert!(!stderr.contains(SMTP_PASSWORD), "{stderr}");
    }
}

#[tokio::test]
async fn a_wrong_smtp_password_is_refused_and_never_recorded() {
    let sink = Sink::start(&["--auth", &format!("{SMTP_USER}:the-right-one")]);
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(dir.path(), 7);
    let env = notice_env(&sink, true, &[("GENESIS_BILLING_CATALOG", catalog)]);
    let (world, app) = world(&env).await;
    let id = create(&app, "Auth fails", Some(OWNER)).await;
    advance(&world, 5 * 86_400).await;
    eventually("an attempt refused by the server", WAIT, || async {
        notices_of(&world, &id)
            .await
            .iter()
            .any(|n| n.last_error.is_some())
    })
    .await;
    let n = wait_notice(&world, &id, "trial_ending", "failed").await;
    let error = n.last_error.unwrap();
    assert!(error.contains("535"), "the server's refusal: {error}");
    assert!(!error.contains(SMTP_PASSWORD), "{error}");
    let listed = serde_json::to_string(&notices_of(&world, &id).await).unwrap();
    assert!(!listed.contains(SMTP_PASSWORD));
    assert!(!world.service.metrics().render().contains(SMTP_PASSWORD));
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_on_postgresql_racing_over_one_outbox_send_each_cause_once() {
    let sink = Sink::start(&[]);
    let db = common::postgres::TestDatabase::create("notices").await;
    let sim = common::start_sim().await;
    let env = notice_env(&sink, false, &[]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let settings = common::settings_for(&sim.base_url(), &db.url, &env);
    let replica = || async {
        let metrics = std::sync::Arc::new(genesis_billing::metrics::Metrics::new());
        let service = genesis_billing::app::build_service(&settings, metrics.clone())
            .await
            .map_err(|_| "build")
            .unwrap();
        let notices = genesis_billing::owners::notice::Notices::new(
            &settings,
            service.store().clone(),
            std::sync::Arc::new(genesis_billing::owners::Owners::from_settings(&settings)),
            metrics,
        )
        .unwrap();
        (service, notices)
    };
    let (a, notices_a) = replica().await;
    let (_b, notices_b) = replica().await;
    let (business, _) = a
        .create_business(
            genesis_billing::business::NewBusiness {
                name: "Replicated".into(),
                business_type: "saas".into(),
                email: Some(OWNER.into()),
            },
            None,
        )
        .await
        .unwrap();
    // 20 failed payments, each written twice (a duplicate webhook, gap fill): one event per cause.
    for i in 0..20 {
        for _ in 0..2 {
            a.store()
                .emit(&genesis_billing::store::NewOutbound {
                    business_id: business.business_id.clone(),
                    update_type: "billing.payment_failed",
                    data: json!({"invoice_id": format!("in_{i}"), "amount_due_cents": 500, "currency": "usd"}),
                    cause: format!("payment_failed:in_{i}:1"),
                })
                .await
                .unwrap();
        }
    }
    // Both replicas plan and send at once, several rounds, as their jobs would.
    for _ in 0..3 {
        let (x, y) = tokio::join!(notices_a.plan(), notices_b.plan());
        x.unwrap();
        y.unwrap();
    }
    eventually("every notice sent", WAIT, || async {
        let (x, y) = tokio::join!(notices_a.send_due(), notices_b.send_due());
        x.unwrap();
        y.unwrap();
        notices_of_store(a.store(), &business.business_id)
            .await
            .iter()
            .all(|n| n.state.as_str() == "sent")
    })
    .await;
    let all = notices_of_store(a.store(), &business.business_id).await;
    assert_eq!(all.len(), 20);
    let mails = sink.wait_for(20).await;
    let mut ids: Vec<&str> = mails
        .iter()
        .map(|m| m["message_id"].as_str().unwrap())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20, "one email per cause");
    assert_eq!(sink.messages().len(), 20);
}

async fn notices_of_store(
    store: &genesis_billing::store::Store,
    id: &str,
) -> Vec<genesis_billing::store::Notice> {
    store
        .list_notices(&genesis_billing::store::NoticeFilter {
            business_id: Some(id.to_owned()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smtp_password_is_in_no_log_line_of_a_roll_back_whose_server_refuses_it() {
    let sink = Sink::start(&["--auth", &format!("{SMTP_USER}:the-right-one")]);
    let env = notice_env(&sink, true, &[]);
    // serve runs with the same settings: whichever process sends, the server refuses the password.
    let (world, app) = world(&env).await;
    let id = create(&app, "Logged", Some(OWNER)).await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    world.wait_subscription_status(&id, "active").await;
    let mut cli_env = world.cli_env();
    cli_env.extend(env.into_iter().map(|(k, v)| (leak(k), v)));
    cli_env.push(("RUST_LOG", "trace".to_owned()));
    let out = output(
        &cli_env,
        &[
            "-vvv",
            "--log-format",
            "json",
            "--json",
            "cancel-all",
            "--confirm",
            "--notify",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(report["notices"]["failed"], 1, "{stdout}");
    assert!(!stderr.contains(SMTP_PASSWORD) && !stdout.contains(SMTP_PASSWORD));
    let n = notices_of(&world, &id).await.remove(0);
    assert!(n.last_error.unwrap().contains("535"));
    assert!(sink.messages().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_roll_back_interrupted_after_stripe_cancelled_still_tells_the_owner_once() {
    let sink = Sink::start(&[]);
    let env = notice_env(&sink, false, &[]);
    let (world, app) = world(&env).await;
    let id = create(&app, "Interrupted", Some(OWNER)).await;
    let session = app.checkout(&id).await;
    assert_eq!(world.complete_checkout(&session, "pm_card_visa").await, 200);
    world.wait_subscription_status(&id, "active").await;
    // A `cancel-all --notify` killed right after Stripe cancelled: its notice is held, nothing recorded.
    let page = world.service.rollback_page(None).await.unwrap();
    let s = page.live.into_iter().find(|s| s.business_id == id).unwrap();
    world.service.hold_rollback_notice(&s).await.unwrap();
    world
        .service
        .cancel_in_stripe_for_rollback(&s)
        .await
        .unwrap();
    // The deleted webhook records the roll-back; its event releases the notice.
    let mail = sink.wait_for(1).await.remove(0);
    assert_eq!(mail["subject"], "Billing stopped for Interrupted");
    // The run again: nothing more.
    let mut cli_env = world.cli_env();
    cli_env.extend(env.into_iter().map(|(k, v)| (leak(k), v)));
    let again = common::run_json(&cli_env, &["--json", "cancel-all", "--confirm", "--notify"]);
    assert_eq!(again["cancelled"], 0, "{again}");
    wait_planner_caught_up(&world).await;
    assert_eq!(sink.messages().len(), 1);
    assert_eq!(notices_of(&world, &id).await.len(), 1);
}

#[tokio::test]
async fn a_kind_turned_off_is_recorded_skipped_and_not_sent() {
    let sink = Sink::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let catalog = trial_catalog(dir.path(), 7);
    let env = notice_env(
        &sink,
        false,
        &[
            ("GENESIS_BILLING_CATALOG", catalog),
            ("GENESIS_NOTICE_DISABLE", "trial_ending".to_owned()),
        ],
    );
    let (world, app) = world(&env).await;
    let id = create(&app, "Quiet", Some(OWNER)).await;
    advance(&world, 5 * 86_400).await;
    let n = wait_notice(&world, &id, "trial_ending", "skipped").await;
    assert!(n.reason.unwrap().contains("GENESIS_NOTICE_DISABLE"));
    assert_eq!(n.recipient.as_deref(), Some(OWNER));
    wait_planner_caught_up(&world).await;
    assert!(sink.messages().is_empty());
}
