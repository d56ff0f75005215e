//! The real binary: exit codes, output, and a distinctive key that must appear in no output at all.

use crate::common;

use std::process::{Command, Output};

const SECRET_KEY: &str = "sk_test_SUPERSECRETKEYDONOTLEAK1234";
const SECRET_FRAGMENT: &str = "SUPERSECRETKEYDONOTLEAK";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn run(args: &[&str], env: &[(&str, &str)]) -> Run {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let output: Output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_genesis-billing"))
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env)
            .output()
            .expect("binary runs")
    })
    .await
    .unwrap();
    let run = Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    };
    assert!(
        !run.stdout.contains(SECRET_FRAGMENT) && !run.stderr.contains(SECRET_FRAGMENT),
        "the key leaked in {:?}:\n{}\n{}",
        args_for_message(&run),
        run.stdout,
        run.stderr
    );
    run
}

fn args_for_message(run: &Run) -> i32 {
    run.code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_key_appears_in_no_output_through_success_failure_help_and_verbose_logging() {
    let sim = common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    let base = sim.base_url();
    let good = [
        ("STRIPE_API_KEY", SECRET_KEY),
        ("STRIPE_API_BASE", base.as_str()),
        ("DATABASE_URL", db.as_str()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10"),
    ];

    let help = run(&["--help"], &good).await;
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("business"));

    assert_eq!(run(&["-vvv", "prices", "sync"], &good).await.code, 0);
    let created = run(
        &[
            "-vvv",
            "--json",
            "business",
            "create",
            "--name",
            "Leak Check",
            "--type",
            "saas",
        ],
        &good,
    )
    .await;
    assert_eq!(created.code, 0, "{}", created.stderr);
    let b: serde_json::Value = serde_json::from_str(&created.stdout).unwrap();
    assert_eq!(b["billing"], "provisioned");
    assert_eq!(b["subscription_status"], "incomplete");
    assert!(
        created.stderr.contains("billing provisioned"),
        "-vvv logs: {}",
        created.stderr
    );

    let json_logs = run(&["-vvv", "--log-format", "json", "business", "list"], &good).await;
    assert_eq!(json_logs.code, 0);
    assert!(json_logs.stdout.contains("Leak Check"));

    let id = b["business_id"].as_str().unwrap();
    let down = run(
        &["-vv", "business", "takedown", id, "--reason", "leak test"],
        &good,
    )
    .await;
    assert_eq!(down.code, 0, "{}", down.stderr);
    assert!(
        down.stdout.contains("success (stripe: cancelled)"),
        "{}",
        down.stdout
    );

    // The same key through the flag, the _FILE variant and every kind of failure.
    let flag = run(
        &[
            "-vvv",
            "--stripe-key",
            SECRET_KEY,
            "--stripe-api-base",
            &base,
            "--database-url",
            &db,
            "business",
            "list",
        ],
        &[],
    )
    .await;
    assert_eq!(flag.code, 0, "{}", flag.stderr);

    let key_file = dir.path().join("key");
    std::fs::write(&key_file, format!("{SECRET_KEY}\n")).unwrap();
    let both = run(
        &["business", "list"],
        &[
            ("STRIPE_API_KEY", SECRET_KEY),
            ("STRIPE_API_KEY_FILE", key_file.to_str().unwrap()),
            ("DATABASE_URL", &db),
        ],
    )
    .await;
    assert_eq!(both.code, 2, "{}", both.stderr);
    assert!(both.stderr.contains("STRIPE_API_KEY_FILE"));

    let bad_prefix = format!("pk_test_{SECRET_FRAGMENT}");
    let invalid = run(
        &["-vvv", "business", "list"],
        &[("STRIPE_API_KEY", &bad_prefix), ("DATABASE_URL", &db)],
    )
    .await;
    assert_eq!(invalid.code, 2);
    assert!(
        invalid
            .stderr
            .contains("STRIPE_API_KEY is not a Stripe secret key"),
        "{}",
        invalid.stderr
    );

    let live_http = format!("sk_live_{SECRET_FRAGMENT}");
    let live = run(
        &["business", "list"],
        &[
            ("STRIPE_API_KEY", &live_http),
            ("STRIPE_API_BASE", &base),
            ("DATABASE_URL", &db),
        ],
    )
    .await;
    assert_eq!(live.code, 2);
    assert!(live.stderr.contains("HTTPS"));

    let unreachable = [
        ("STRIPE_API_KEY", SECRET_KEY),
        ("STRIPE_API_BASE", "http://127.0.0.1:9"),
        ("DATABASE_URL", db.as_str()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10"),
        ("GENESIS_BILLING_STRIPE_MAX_ATTEMPTS", "2"),
    ];
    let offline = run(
        &[
            "-vvv", "--json", "business", "create", "--name", "Offline", "--type", "api",
        ],
        &unreachable,
    )
    .await;
    assert_eq!(
        offline.code, 0,
        "recorded with billing failed: {}",
        offline.stderr
    );
    let o: serde_json::Value = serde_json::from_str(&offline.stdout).unwrap();
    assert_eq!(o["billing"], "failed");

    let stripe_error = run(&["-vvv", "prices", "sync"], &unreachable).await;
    assert_eq!(stripe_error.code, 1);

    let missing = run(
        &["business", "show", "00000000-0000-0000-0000-000000000000"],
        &good,
    )
    .await;
    assert_eq!(missing.code, 1);
    let not_found = run(&["business", "takedown", "nope"], &good).await;
    assert_eq!(not_found.code, 1);
    assert!(not_found.stdout.contains("not_found"));

    let bad_input = run(
        &["business", "create", "--name", "", "--type", "saas"],
        &good,
    )
    .await;
    assert_eq!(bad_input.code, 2, "{}", bad_input.stderr);
    assert!(bad_input.stderr.contains("invalid name"));

    let catalog = dir.path().join("catalog.toml");
    std::fs::write(&catalog, "default_type = \"x\"").unwrap();
    let mut with_catalog = good.to_vec();
    with_catalog.push(("GENESIS_BILLING_CATALOG", catalog.to_str().unwrap()));
    let bad_catalog = run(&["prices", "list"], &with_catalog).await;
    assert_eq!(bad_catalog.code, 2, "{}", bad_catalog.stderr);

    let usage = run(&["business", "frobnicate"], &good).await;
    assert_eq!(usage.code, 2);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_revenue_calculator_prints_the_corrected_audit_figures() {
    let r = run(&["revenue", "--businesses", "100", "--price", "5"], &[]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    for want in ["$500.00", "$44.50", "$455.50", "$5,466.00"] {
        assert!(r.stdout.contains(want), "{want} in {}", r.stdout);
    }
    let j = run(
        &[
            "--json",
            "revenue",
            "--businesses",
            "10000",
            "--price",
            "5.00",
        ],
        &[],
    )
    .await;
    let v: serde_json::Value = serde_json::from_str(&j.stdout).unwrap();
    assert_eq!(v["net_mrr_cents"], 4_555_000);
    assert_eq!(v["annual_run_rate_cents"], 54_660_000);
    assert!(!j.stdout.contains("470"), "the audit's wrong figure");
    let bad = run(&["revenue", "--businesses", "10", "--price", "five"], &[]).await;
    assert_eq!(bad.code, 2);
}

#[cfg(feature = "simulator")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_runs_offline_through_the_whole_lifecycle() {
    // No key, no Stripe base: the demo brings its own simulator and ignores the environment.
    let r = run(
        &["--json", "demo"],
        &[
            ("STRIPE_API_KEY", SECRET_KEY),
            ("STRIPE_API_BASE", "https://api.stripe.com"),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let businesses = v["businesses"].as_array().unwrap();
    assert_eq!(businesses.len(), 5);
    let by_name = |n: &str| businesses.iter().find(|b| b["name"] == n).unwrap().clone();
    assert_eq!(
        by_name("Acme Analytics")["subscription_status"],
        "active",
        "paid, failed a renewal, recovered"
    );
    assert_eq!(
        by_name("Daily Digest")["billing"],
        "expired",
        "unpaid for 23 h"
    );
    assert_eq!(
        by_name("Blue Basket")["takedown_reason"],
        "subscription_cancelled",
        "cancelled from Stripe's side"
    );
    assert_eq!(
        by_name("Ping API")["status"],
        "taken_down",
        "a drift fixed by reconcile"
    );
    assert_eq!(by_name("Tiny Tool")["status"], "taken_down");
    assert!(!v["drift_found"].as_array().unwrap().is_empty());
    assert_eq!(v["mrr"][0]["active_cents"], 500);
    // The meta-agent heard of every change, in order per business, each once.
    let received = v["events_received"].as_array().unwrap();
    let of = |name: &str| -> Vec<String> {
        let id = by_name(name)["business_id"].clone();
        received
            .iter()
            .filter(|e| e["business_id"] == id)
            .map(|e| match e["data"]["to"].as_str() {
                Some(to) => format!("{}>{to}", e["update_type"].as_str().unwrap()),
                None => e["update_type"].as_str().unwrap().to_owned(),
            })
            .collect()
    };
    let acme = of("Acme Analytics");
    assert_eq!(acme.len(), 7, "{acme:?}");
    assert_eq!(acme[0], "billing.provisioned");
    // Checkout: the service records the payment's status itself while Stripe's invoice.paid is on its
    // way, so these two come in either order.
    let mut checkout = acme[1..3].to_vec();
    checkout.sort();
    assert_eq!(
        checkout,
        ["billing.payment_succeeded", "billing.status_changed>active"]
    );
    assert_eq!(
        acme[3..],
        [
            "billing.payment_failed",
            "billing.status_changed>past_due",
            "billing.payment_succeeded",
            "billing.status_changed>active",
        ]
    );
    assert_eq!(
        of("Blue Basket").last().map(String::as_str),
        Some("business.taken_down")
    );
    let mut ids: Vec<&str> = received.iter().map(|e| e["id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), received.len(), "each event once");
    // The failed renewal reached the owner once, by email, and was fixed through its manage link.
    let emails = v["owner_emails"].as_array().unwrap();
    assert_eq!(emails.len(), 1, "{emails:?}");
    assert_eq!(emails[0]["to"][0], "owner@acme.example");
    assert!(
        emails[0]["subject"]
            .as_str()
            .unwrap()
            .contains("Payment failed"),
        "{emails:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelt_genesis_billing_variable_is_warned_about_by_name_and_its_value_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("w.db").display());
    // The misspelt variable holds the key: `run` fails the test if it appears in any output.
    let r = run(
        &["migrate"],
        &[
            ("DATABASE_URL", &db),
            ("GENESIS_BILLING_STRIPE_RATE_LIMT", SECRET_KEY),
        ],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("WARN") && r.stderr.contains("GENESIS_BILLING_STRIPE_RATE_LIMT"),
        "{}",
        r.stderr
    );
    let clean = run(&["migrate"], &[("DATABASE_URL", &db)]).await;
    assert!(
        !clean.stderr.contains("unknown environment variable"),
        "{}",
        clean.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_environment_wins_over_the_config_file_and_a_flag_over_both() {
    let dir = tempfile::tempdir().unwrap();
    let db = |name: &str| format!("sqlite://{}", dir.path().join(name).display());
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("database_url = {:?}\n", db("file.db"))).unwrap();
    let config = config.display().to_string();
    let r = run(
        &["--config", &config, "migrate"],
        &[("DATABASE_URL", &db("env.db"))],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dir.path().join("env.db").exists() && !dir.path().join("file.db").exists());
    let flag = db("flag.db");
    let r = run(
        &["--config", &config, "--database-url", &flag, "migrate"],
        &[("DATABASE_URL", &db("env.db"))],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(dir.path().join("flag.db").exists() && !dir.path().join("file.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_migrate_commands_started_at_once_on_a_new_sqlite_file_all_succeed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    let db = format!("sqlite://{}", path.display());
    let runs: Vec<_> = (0..6)
        .map(|_| {
            let db = db.clone();
            tokio::spawn(async move { run(&["--json", "migrate"], &[("DATABASE_URL", &db)]).await })
        })
        .collect();
    for r in runs {
        let r = r.await.unwrap();
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(!r.stderr.contains("locked"), "{}", r.stderr);
    }
    let conn = rusqlite::Connection::open(&path).unwrap();
    let (rows, versions): (i64, i64) = conn
        .query_row(
            "SELECT COUNT(*), COUNT(DISTINCT version) FROM schema_migration",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(rows, versions, "each migration recorded once");
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'business'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sqlite_database_migrated_by_a_newer_version_is_refused_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("newer.db");
    let db = format!("sqlite://{}", path.display());
    let env = [("DATABASE_URL", db.as_str())];
    assert_eq!(run(&["migrate"], &env).await.code, 0);
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "INSERT INTO schema_migration (version, name, applied_at) VALUES (9001, 'from_the_future', 0)",
        [],
    )
    .unwrap();
    let tables_before: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    for args in [&["migrate"][..], &["business", "list"][..]] {
        let r = run(args, &env).await;
        assert_ne!(r.code, 0, "{args:?} ran on a newer schema");
        assert!(
            r.stderr.contains("newer genesis-billing") && r.stderr.contains("9001"),
            "{args:?}: {}",
            r.stderr
        );
    }
    let tables_after: i64 = conn
        .query_row("SELECT COUNT(*) FROM sqlite_master", [], |r| r.get(0))
        .unwrap();
    assert_eq!(tables_before, tables_after, "nothing changed");
}

/// `n` businesses straight into a fresh SQLite file, as an import would leave them; two per second.
async fn fleet_file(
    dir: &tempfile::TempDir,
    n: usize,
) -> (String, Vec<genesis_billing::business::Business>) {
    use genesis_billing::business::{Billing, Business, Lifecycle};
    let url = common::db_url(dir);
    let store = genesis_billing::store::Store::connect(
        &genesis_billing::store::DatabaseUrl::new(url.clone()),
        2,
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let fleet: Vec<Business> = (0..n)
        .map(|i| Business {
            business_id: format!("fleet-{i:05}"),
            name: format!("Fleet {i}"),
            business_type: ["saas", "api", "content"][i % 3].into(),
            email: None,
            created_at: 10_000 + (i as i64) / 2,
            updated_at: 10_000,
            status: if i % 11 == 0 {
                Lifecycle::TakenDown
            } else {
                Lifecycle::Active
            },
            billing: Billing::Provisioned,
            billing_error: None,
            failed_step: None,
            stripe_customer_id: Some(format!("cus_{i}")),
            stripe_subscription_id: Some(format!("sub_{i}")),
            stripe_payment_intent_id: None,
            subscription_status: Some(
                ["active", "past_due", "trialing", "incomplete"][i % 4].into(),
            ),
            price_lookup_key: None,
            stripe_price_id: None,
            monthly_price_cents: Some([500, 1_250][i % 2]),
            currency: Some(if i % 7 == 0 { "eur" } else { "usd" }.into()),
            generation: 0,
            stripe_state_at: 0,
            taken_down_at: None,
            takedown_reason: None,
            takedown_outcome: None,
        })
        .collect();
    for chunk in fleet.chunks(500) {
        store.insert_businesses(chunk).await.unwrap();
    }
    (url, fleet)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_list_pages_through_a_fleet_larger_than_a_page_and_revenue_matches_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let (url, fleet) = fleet_file(&dir, 2_345).await;
    let env = [("DATABASE_URL", url.as_str())];

    // Every business, newest first, each exactly once, across three pages of the store.
    let all = run(&["--json", "business", "list", "--limit", "0"], &env).await;
    assert_eq!(all.code, 0, "{}", all.stderr);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&all.stdout).unwrap();
    let ids: Vec<&str> = listed
        .iter()
        .map(|b| b["business_id"].as_str().unwrap())
        .collect();
    let mut expected: Vec<&str> = fleet.iter().map(|b| b.business_id.as_str()).collect();
    expected.reverse();
    assert_eq!(ids, expected);

    // A limit above one page, as a table: a header and exactly that many rows, aligned throughout.
    let table = run(&["business", "list", "--limit", "1500"], &env).await;
    assert_eq!(table.code, 0, "{}", table.stderr);
    let lines: Vec<&str> = table.stdout.lines().collect();
    assert_eq!(lines.len(), 1 + 1_500);
    assert!(lines[0].starts_with("BUSINESS"));
    let name_column = lines[0].find("NAME").unwrap();
    assert!(lines[1..]
        .iter()
        .all(|l| l[name_column..].starts_with("Fleet ")));
    assert!(lines[1].starts_with("fleet-02344"));
    assert!(lines[1_500].starts_with("fleet-00845"));

    // Resuming after the last id printed continues where the list stopped.
    let next = run(
        &[
            "--json",
            "business",
            "list",
            "--limit",
            "2",
            "--after",
            "fleet-00845",
        ],
        &env,
    )
    .await;
    let next: Vec<serde_json::Value> = serde_json::from_str(&next.stdout).unwrap();
    assert_eq!(next.len(), 2);
    assert_eq!(
        (
            next[0]["business_id"].as_str(),
            next[1]["business_id"].as_str()
        ),
        (Some("fleet-00844"), Some("fleet-00843"))
    );

    // Past the end: an empty list, in either form.
    let none = run(
        &["--json", "business", "list", "--after", "fleet-00000"],
        &env,
    )
    .await;
    assert_eq!(none.stdout.trim(), "[]");
    let none = run(&["business", "list", "--after", "fleet-00000"], &env).await;
    assert_eq!(none.stdout.lines().count(), 1, "{}", none.stdout);

    for bad in [
        &["business", "list", "--limit", "-1"][..],
        &["business", "list", "--after", "x' OR 1=1"][..],
    ] {
        let r = run(bad, &env).await;
        assert_eq!(r.code, 2, "{bad:?}: {}", r.stderr);
        assert!(r.stdout.is_empty());
    }

    // Live revenue from the database's aggregate equals the per-record computation.
    let revenue = run(&["--json", "revenue"], &env).await;
    assert_eq!(revenue.code, 0, "{}", revenue.stderr);
    let v: serde_json::Value = serde_json::from_str(&revenue.stdout).unwrap();
    let want = serde_json::to_value(genesis_billing::revenue::live_mrr(&fleet)).unwrap();
    assert_eq!(v["mrr"], want);
    assert!(want.as_array().unwrap().len() >= 6);
}
