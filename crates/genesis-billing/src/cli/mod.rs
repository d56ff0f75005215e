//! The `genesis-billing` command line (SPEC §5): parsing, logging, exit codes, and each command.

mod output;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use secrecy::SecretString;

use crate::billing::{BillingError, BillingService, PriceStatus};
use crate::business::{Billing, Lifecycle, NewBusiness};
use crate::catalog::Catalog;
use crate::config::{ConfigError, Flags, ProcessEnv, Settings};
use crate::metrics::Metrics;
use crate::revenue::{format_cents, mrr_from_tally, parse_dollars, project, FeeSchedule};
use crate::store::{BusinessFilter, BusinessPages, Store, PAGE};
use crate::stripe::{ClientConfig, StripeClient};
pub use output::{business_table, print_json, table, BusinessStream};

#[derive(Debug, Parser)]
#[command(
    name = "genesis-billing",
    version,
    about = "Billing control plane of the Genesis meta-agent: Stripe billing for every business, from creation to takedown."
)]
struct Cli {
    /// TOML config file (also GENESIS_BILLING_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// sqlite://PATH or postgres://… (also DATABASE_URL).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    /// Stripe secret key. Prefer STRIPE_API_KEY or STRIPE_API_KEY_FILE: flags are visible to other users.
    #[arg(long, global = true, value_name = "KEY", hide_default_value = true)]
    stripe_key: Option<String>,
    /// Stripe API base URL (also STRIPE_API_BASE), e.g. a local stripe-sim.
    #[arg(long, global = true, value_name = "URL")]
    stripe_api_base: Option<String>,
    /// Price catalog file (also GENESIS_BILLING_CATALOG).
    #[arg(long, global = true, value_name = "FILE")]
    catalog: Option<PathBuf>,
    /// More logging (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    log_format: LogFormat,
    /// Machine-readable output on stdout.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Pretty,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply database migrations.
    Migrate,
    /// Create, inspect and take down businesses.
    #[command(subcommand)]
    Business(BusinessCommand),
    /// The price catalog in Stripe.
    #[command(subcommand)]
    Prices(PricesCommand),
    /// Adopt records exported from the first Python version (a JSON object keyed by business_id).
    Import { file: PathBuf },
    /// Live MRR from the records, or the calculator with --businesses and --price.
    Revenue(RevenueArgs),
    /// Run the whole lifecycle offline against an in-process Stripe simulator.
    Demo,
    /// Run the service: admin API, Stripe webhooks, health, metrics, background work.
    Serve {
        /// Address to bind (also GENESIS_BILLING_LISTEN).
        #[arg(long, value_name = "HOST:PORT")]
        listen: Option<String>,
    },
    /// Stripe webhook endpoint and stored events.
    #[command(subcommand)]
    Webhooks(WebhooksCommand),
    /// Compare every business with Stripe and report drift per field; --fix repairs it.
    Reconcile {
        #[arg(long)]
        fix: bool,
    },
    /// Roll-back: cancel every live subscription genesis-billing created (a dry run without --confirm).
    CancelAll {
        #[arg(long)]
        confirm: bool,
        /// Cancellations in flight at once (all go through the rate limiter).
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=256))]
        concurrency: u32,
    },
    /// Staging check: a throwaway business through create, checkout link and takedown. Refuses live keys.
    Smoke,
}

#[derive(Debug, Subcommand)]
enum WebhooksCommand {
    /// Create the Stripe webhook endpoint for exactly the events we handle; prints its signing secret once.
    Register {
        #[arg(long)]
        url: String,
    },
    /// Stored events, newest first.
    List {
        /// Only events whose apply failed (including dead-lettered ones).
        #[arg(long)]
        failed: bool,
        #[arg(long, default_value_t = 50)]
        limit: i64,
    },
    /// Apply a stored event again.
    Replay { id: String },
}

#[derive(Debug, Subcommand)]
enum BusinessCommand {
    /// Create a business and provision its billing.
    Create(CreateArgs),
    /// Show one business.
    Show { id: String },
    /// List businesses, newest first.
    List {
        /// active or taken_down.
        #[arg(long)]
        status: Option<String>,
        /// pending, provisioned, skipped, failed or expired.
        #[arg(long)]
        billing: Option<String>,
        /// Most businesses to print; 0 prints every one (read and printed a page at a time).
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Start after this business id (the last one a previous list printed).
        #[arg(long)]
        after: Option<String>,
    },
    /// Take a business down: cancel its subscription at once and delete its Stripe customer.
    Takedown {
        id: String,
        #[arg(long)]
        reason: Option<String>,
    },
    /// Finish interrupted provisioning and takedowns.
    Resume,
    /// A Stripe Checkout link for the business owner to add a payment method.
    CheckoutLink { id: String },
}

#[derive(Debug, Args)]
struct CreateArgs {
    #[arg(long)]
    name: String,
    #[arg(long = "type", value_name = "TYPE")]
    business_type: String,
    #[arg(long)]
    email: Option<String>,
    /// Create this many businesses concurrently (names get a numeric suffix).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    count: u32,
    /// Businesses provisioned at once with --count.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    concurrency: u32,
}

#[derive(Debug, Subcommand)]
enum PricesCommand {
    /// Create missing Products and Prices by lookup key; report differences.
    Sync {
        /// Move the lookup key of a price that differs from the catalog to a new price with the catalog's
        /// terms (existing subscriptions keep their price; new ones get the new one).
        #[arg(long)]
        transfer: bool,
    },
    /// Show each catalog entry and its Stripe Price id.
    List,
}

#[derive(Debug, Args)]
struct RevenueArgs {
    /// Number of businesses for the calculator.
    #[arg(long, requires = "price")]
    businesses: Option<i64>,
    /// Monthly price in dollars for the calculator, e.g. 5 or 4.99.
    #[arg(long, requires = "businesses")]
    price: Option<String>,
    /// Stripe's percentage fee in basis points (290 = 2.9 %).
    #[arg(long, default_value_t = 290)]
    fee_bps: i64,
    /// Stripe's fixed fee per charge in cents.
    #[arg(long, default_value_t = 30)]
    fee_fixed_cents: i64,
}

/// Why a command failed: usage and configuration errors exit 2, everything else 1.
#[derive(Debug)]
pub enum Failure {
    Usage(String),
    Failed(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Failed(e)
    }
}

impl From<ConfigError> for Failure {
    fn from(e: ConfigError) -> Self {
        Self::Usage(e.to_string())
    }
}

impl From<BillingError> for Failure {
    fn from(e: BillingError) -> Self {
        match e {
            BillingError::Invalid(i) => Self::Usage(i.to_string()),
            other => Self::Failed(other.into()),
        }
    }
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose, cli.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(Failure::Usage(msg)) => {
            eprintln!("error: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Failed(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn init_logging(verbose: u8, format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let ours = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    // Dependencies stay at warn (info at -vvv): their debug output is noise, and never ours to vouch for.
    let deps = if verbose >= 3 { "info" } else { "warn" };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{deps},sqlx::query=error,genesis_billing={ours},stripe_sim={ours}"
        ))
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Pretty => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

fn flags(cli: &Cli) -> Flags {
    Flags {
        config_file: cli.config.clone(),
        stripe_key: cli.stripe_key.clone().map(SecretString::from),
        stripe_api_base: cli.stripe_api_base.clone(),
        database_url: cli.database_url.clone(),
        catalog: cli.catalog.clone(),
        listen: None,
    }
}

/// Loads the catalog named by the settings, or the built-in one.
pub fn load_catalog(settings: &Settings) -> Result<Catalog, Failure> {
    match &settings.catalog_path {
        Some(p) => Catalog::from_file(p).map_err(|e| Failure::Usage(e.to_string())),
        None => Ok(Catalog::default()),
    }
}

/// Opens (and migrates) the store and builds the billing service from settings.
pub async fn build_service(
    settings: &Settings,
    metrics: Arc<Metrics>,
) -> Result<BillingService, Failure> {
    let catalog = load_catalog(settings)?;
    let store = Store::connect_with(&settings.database_url, settings.store_options())
        .await
        .with_context(|| format!("while opening the database {}", settings.database_url))?;
    store
        .migrate()
        .await
        .context("while migrating the database")?;
    let stripe = match &settings.stripe {
        Some(s) => Some(
            StripeClient::new(
                ClientConfig {
                    api_base: s.api_base.clone(),
                    key: s.key.clone(),
                    timeout: s.timeout,
                    retry: s.retry.clone(),
                    rate_limit_per_second: s.rate_limit_per_second,
                },
                metrics.clone(),
            )
            .context("while building the Stripe client")
            // Stripe limits the account, not the process: replicas on one PostgreSQL draw from one budget
            // in it (see stripe::rate_limit). SQLite means one process, whose own limiter suffices.
            .map(|client| match store.backend() {
                crate::store::Backend::Postgres => client.with_shared_rate_limit(Arc::new(
                    store.rate_budget(&format!("stripe_{}", s.mode.as_str())),
                )),
                crate::store::Backend::Sqlite => client,
            })?,
        ),
        None => None,
    };
    Ok(BillingService::new(
        store,
        stripe,
        catalog,
        settings.rollout_percent,
        metrics,
        settings.public_url.clone(),
    )
    .with_lease(std::time::Duration::from_secs(settings.lease_secs.max(1))))
}

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    if let Command::Demo = cli.command {
        crate::demo::run(cli.json).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Revenue(RevenueArgs {
        businesses: Some(n),
        price: Some(p),
        fee_bps,
        fee_fixed_cents,
    }) = &cli.command
    {
        return calculator(
            *n,
            p,
            FeeSchedule {
                percent_bps: *fee_bps,
                fixed_cents: *fee_fixed_cents,
            },
            cli.json,
        );
    }
    let mut flags = flags(&cli);
    if let Command::Serve { listen } = &cli.command {
        flags.listen = listen.clone();
    }
    let settings = Settings::load(&flags, &ProcessEnv)?;
    settings.warnings.iter().for_each(|w| tracing::warn!("{w}"));
    let metrics = Arc::new(Metrics::new());
    let service = Arc::new(build_service(&settings, metrics.clone()).await?);
    let json = cli.json;
    match cli.command {
        Command::Migrate => {
            // build_service migrated already; report the state.
            if json {
                print_json(
                    &serde_json::json!({"migrated": true, "database": service.store().backend().as_str()}),
                );
            } else {
                println!("database {} is up to date", settings.database_url);
            }
        }
        Command::Business(cmd) => return business(&service, cmd, json, &metrics).await,
        Command::Prices(cmd) => prices(&service, cmd, json).await?,
        Command::Import { file } => {
            let bytes = read_limited(&file, crate::billing::MAX_IMPORT_BYTES)?;
            let report = service.import(&bytes).await.map_err(|e| match e {
                BillingError::Import(i) => Failure::Usage(i.to_string()),
                other => other.into(),
            })?;
            if json {
                print_json(&report);
            } else {
                println!(
                    "imported {} businesses: {} with a subscription, {} legacy payment intents, {} without billing",
                    report.imported, report.with_subscription, report.legacy_payment_intents, report.without_billing
                );
            }
        }
        Command::Revenue(_) => {
            let tally = service
                .store()
                .subscription_tally()
                .await
                .context("while reading records")?;
            let lines = mrr_from_tally(&tally);
            if json {
                print_json(&serde_json::json!({ "mrr": lines }));
            } else {
                print!("{}", revenue_table(&lines));
            }
        }
        Command::Serve { .. } => serve(&settings, service).await?,
        Command::Reconcile { fix } => return reconcile(&settings, service, fix, json).await,
        Command::CancelAll {
            confirm,
            concurrency,
        } => return cancel_all(service, confirm, concurrency, json).await,
        Command::Smoke => return crate::smoke::run(&settings, &service, json).await,
        Command::Webhooks(cmd) => return webhooks(&settings, service, cmd, json).await,
        Command::Demo => unreachable!("handled above"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The service, until SIGTERM or Ctrl-C.
async fn serve(settings: &Settings, service: Arc<BillingService>) -> Result<(), Failure> {
    let state = app_state(settings, service);
    let schedule = crate::http::Schedule {
        resume: std::time::Duration::from_secs(settings.resume_interval_secs.max(1)),
        webhook_retry: std::time::Duration::from_secs(5),
        gap_fill: (settings.gap_fill_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(settings.gap_fill_interval_secs)),
        reconcile: (settings.reconcile_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(settings.reconcile_interval_secs)),
    };
    let running = crate::http::start(state, settings.listen, schedule, true)
        .await
        .with_context(|| format!("while binding {}", settings.listen))?;
    if settings.admin_tokens.is_empty() {
        tracing::warn!("no GENESIS_ADMIN_TOKEN configured: the admin API refuses every request");
    }
    if settings.webhook_secrets.is_empty() {
        tracing::warn!("no STRIPE_WEBHOOK_SECRET configured: every webhook is refused");
    }
    println!("genesis-billing listening on http://{}", running.addr);
    if let Some(ops) = running.ops_addr {
        println!("health and metrics on http://{ops}");
    }
    warn_if_descriptors_short(settings);
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    running.wait().await.context("while serving")?;
    Ok(())
}

/// Warns when the connection cap (per listener) leaves too few file descriptors for the database, Stripe
/// and the log: accept would then fail before the cap is reached.
fn warn_if_descriptors_short(settings: &Settings) {
    let Ok(limits) = std::fs::read_to_string("/proc/self/limits") else {
        return;
    };
    let soft = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(3))
        .and_then(|v| v.parse::<u64>().ok());
    let listeners = if settings.serve.ops_listen.is_some() {
        2
    } else {
        1
    };
    let needed = settings.serve.max_connections as u64 * listeners
        + u64::from(settings.db_max_connections) * 3
        + 64;
    if let Some(soft) = soft.filter(|s| *s < needed) {
        tracing::warn!(
            open_files_limit = soft,
            needed,
            "the open-files limit is below GENESIS_BILLING_MAX_CONNECTIONS plus what the service needs \
             besides; raise the limit (ulimit -n, LimitNOFILE=) or lower the cap"
        );
    }
}

/// The HTTP layer's shared state for these settings.
pub fn app_state(settings: &Settings, service: Arc<BillingService>) -> Arc<crate::http::AppState> {
    let inbox = Arc::new(crate::webhook::Inbox::new(
        service.clone(),
        settings.webhook_secrets.clone(),
        settings.webhook_tolerance_secs,
        settings.key_mode,
    ));
    Arc::new(
        crate::http::AppState::new(
            service,
            inbox,
            &settings.admin_tokens,
            settings.stripe_mode_label(),
            settings.key_mode == Some(crate::config::StripeMode::Test),
        )
        .with_serve_settings(&settings.serve),
    )
}

async fn webhooks(
    settings: &Settings,
    service: Arc<BillingService>,
    cmd: WebhooksCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match cmd {
        WebhooksCommand::Register { url } => {
            if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() > 2048 {
                return Err(Failure::Usage("--url must be an http(s) URL".into()));
            }
            let (id, secret) = service.register_webhook_endpoint(&url).await?;
            let secret = secrecy::ExposeSecret::expose_secret(&secret);
            if json {
                print_json(
                    &serde_json::json!({"id": id, "url": url, "enabled_events": crate::billing::HANDLED_EVENTS, "secret": secret}),
                );
            } else {
                println!("webhook endpoint {id} for {url}");
                println!("signing secret (shown once; set it as STRIPE_WEBHOOK_SECRET): {secret}");
            }
        }
        WebhooksCommand::List { failed, limit } => {
            let store = service.store();
            let mut events = Vec::new();
            if failed {
                events.extend(
                    store
                        .list_events(Some("failed"), limit)
                        .await
                        .context("while reading events")?,
                );
                events.extend(
                    store
                        .list_events(Some("dead"), limit)
                        .await
                        .context("while reading events")?,
                );
            } else {
                events = store
                    .list_events(None, limit)
                    .await
                    .context("while reading events")?;
            }
            if json {
                print_json(&events);
            } else {
                let rows: Vec<Vec<String>> = events
                    .iter()
                    .map(|e| {
                        vec![
                            e.event_id.clone(),
                            e.event_type.clone(),
                            crate::business::rfc3339(e.created),
                            e.status.clone(),
                            e.attempts.to_string(),
                            e.business_id.clone().unwrap_or_else(|| "-".into()),
                            e.last_error
                                .clone()
                                .unwrap_or_default()
                                .chars()
                                .take(60)
                                .collect(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &[
                            "EVENT",
                            "TYPE",
                            "CREATED",
                            "STATUS",
                            "ATTEMPTS",
                            "BUSINESS",
                            "LAST ERROR"
                        ],
                        &rows
                    )
                );
            }
        }
        WebhooksCommand::Replay { id } => {
            let state = app_state(settings, service.clone());
            if !service
                .store()
                .reset_event(&id)
                .await
                .context("while reading events")?
            {
                eprintln!("no stored event {id}");
                return Ok(ExitCode::from(1));
            }
            state.inbox.apply(&id).await;
            let event = service
                .store()
                .event(&id)
                .await
                .context("while reading events")?;
            match event {
                Some(e) if json => print_json(&e),
                Some(e) => println!(
                    "{}: {}{}",
                    e.event_id,
                    e.status,
                    e.last_error.map(|l| format!(" ({l})")).unwrap_or_default()
                ),
                None => {}
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

async fn reconcile(
    settings: &Settings,
    service: Arc<BillingService>,
    fix: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    // First apply what webhooks missed, so drift reflects only what the event stream cannot explain.
    let inbox = crate::webhook::Inbox::new(
        service.clone(),
        settings.webhook_secrets.clone(),
        settings.webhook_tolerance_secs,
        settings.key_mode,
    );
    let missed = inbox.gap_fill().await?;
    let bar = progress_bar(0, "businesses");
    let report = service
        .reconcile(fix, &|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await?;
    bar.finish_and_clear();
    if json {
        print_json(&serde_json::json!({
            "missed_events_applied": missed,
            "stripe_requests": service.metrics().stripe_attempts(),
            "report": report
        }));
    } else {
        let rows: Vec<Vec<String>> = report
            .drift
            .iter()
            .map(|d| {
                vec![
                    d.business_id.clone().unwrap_or_else(|| "-".into()),
                    d.field.to_owned(),
                    d.local.clone().unwrap_or_else(|| "-".into()),
                    d.stripe.clone().unwrap_or_else(|| "-".into()),
                    d.repair.to_owned(),
                    match (&d.error, d.fixed) {
                        (Some(e), _) => format!("failed: {e}"),
                        (None, true) => "fixed".into(),
                        (None, false) => "-".into(),
                    },
                ]
            })
            .collect();
        if !rows.is_empty() {
            print!(
                "{}",
                table(
                    &["BUSINESS", "FIELD", "LOCAL", "STRIPE", "REPAIR", "RESULT"],
                    &rows
                )
            );
        }
        let fixed = report.drift.iter().filter(|d| d.fixed).count();
        println!(
            "{} businesses, {} Stripe subscriptions, {} customers: {} drift found, {} fixed; {} missed events applied",
            report.businesses, report.stripe_subscriptions, report.stripe_customers, report.drift.len(), fixed, missed
        );
    }
    let failed = report.drift.iter().any(|d| d.error.is_some());
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

async fn cancel_all(
    service: Arc<BillingService>,
    confirm: bool,
    concurrency: u32,
    json: bool,
) -> Result<ExitCode, Failure> {
    if !confirm {
        return cancel_all_dry_run(&service, json).await;
    }
    // One roll-back at a time across the fleet: a job lease (see store::coordination), renewed while we
    // run and released at the end. A second run waits for the first; a run that was killed holds it for
    // at most 10 s (the lease is short because it is renewed), so a rerun after a crash starts quickly.
    let lease = service.lease().min(std::time::Duration::from_secs(10));
    let lease = crate::store::JobLease::claim_waiting(service.store(), "cancel_all", lease)
        .await
        .context("while claiming the cancel-all lease")?;
    // Page by page: a page of Stripe's list (100), its live subscriptions cancelled with at most
    // `concurrency` in flight, then the next page; memory stays bounded whatever the fleet's size. The
    // total is not known up front, so the bar's length grows as pages reveal live subscriptions.
    let bar = progress_bar(0, "subscriptions cancelled");
    let mut tasks = tokio::task::JoinSet::new();
    let mut tally = RollbackTally::default();
    let mut after: Option<String> = None;
    let listed = loop {
        let page = match service.rollback_page(after.as_deref()).await {
            Ok(page) => page,
            Err(e) => break Err(e),
        };
        for s in &page.records_to_update {
            if let Err(e) = service.record_rollback(s).await {
                tally.error(&s.subscription_id, &e.to_string());
            } else {
                tally.records_updated += 1;
            }
        }
        tally.live += page.live.len() as u64;
        bar.inc_length(page.live.len() as u64);
        for s in page.live {
            while tasks.len() >= concurrency as usize {
                if let Some(joined) = tasks.join_next().await {
                    tally.joined(joined);
                }
            }
            let (service, bar) = (service.clone(), bar.clone());
            tasks.spawn(async move {
                let result = service
                    .cancel_for_rollback(&s)
                    .await
                    .map_err(|e| (s.subscription_id.clone(), e.to_string()));
                bar.inc(1);
                result
            });
        }
        match page.next {
            Some(next) => after = Some(next),
            None => break Ok(()),
        }
    };
    while let Some(joined) = tasks.join_next().await {
        tally.joined(joined);
    }
    bar.finish_and_clear();
    lease.release(std::time::Duration::ZERO).await;
    // A failed listing stops the run; what was already cancelled is recorded, and a rerun goes on.
    listed?;
    let cancelled = tally.live.saturating_sub(tally.cancels_failed);
    if json {
        print_json(&serde_json::json!({
            "cancelled": cancelled,
            "live": tally.live,
            "records_updated": tally.records_updated,
            "failed": tally.failed,
            "errors": tally.errors,
        }));
    } else {
        println!(
            "cancelled {cancelled} of {} live subscriptions ({} records of already cancelled ones updated)",
            tally.live, tally.records_updated
        );
        for (id, e) in &tally.errors {
            eprintln!("error: {id}: {e}");
        }
        if tally.failed as usize > tally.errors.len() {
            eprintln!(
                "... and {} more errors",
                tally.failed as usize - tally.errors.len()
            );
        }
    }
    Ok(if tally.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// At most this many errors are kept for the report of a roll-back; the rest are counted.
const MAX_LISTED_ERRORS: usize = 100;

/// What a `cancel-all --confirm` run did, counted as it goes.
#[derive(Debug, Default)]
struct RollbackTally {
    live: u64,
    records_updated: u64,
    /// Every failure, of a cancellation or of a record's update.
    failed: u64,
    cancels_failed: u64,
    errors: Vec<(String, String)>,
}

impl RollbackTally {
    fn error(&mut self, id: &str, e: &str) {
        self.failed += 1;
        if self.errors.len() < MAX_LISTED_ERRORS {
            self.errors.push((id.to_owned(), e.to_owned()));
        }
    }

    fn joined(&mut self, joined: Result<Result<(), (String, String)>, tokio::task::JoinError>) {
        match joined {
            Ok(Ok(())) => return,
            Ok(Err((id, e))) => self.error(&id, &e),
            Err(e) => self.error("-", &e.to_string()),
        }
        self.cancels_failed += 1;
    }
}

/// `cancel-all` without `--confirm`: streams what would be cancelled, page by page, and counts it.
/// With `--json` the array is written as it is found, so even a large fleet's list costs no memory.
async fn cancel_all_dry_run(service: &BillingService, json: bool) -> Result<ExitCode, Failure> {
    use std::io::Write;
    let mut out = std::io::BufWriter::new(std::io::stdout());
    let (mut live, mut records) = (0u64, 0u64);
    let mut after: Option<String> = None;
    if json {
        let _ = write!(out, "{{\"dry_run\": true, \"would_cancel\": [");
    }
    loop {
        let page = service.rollback_page(after.as_deref()).await?;
        for s in &page.live {
            if json {
                let sep = if live == 0 { "" } else { "," };
                let item = serde_json::to_string(s).unwrap_or_default();
                let _ = write!(out, "{sep}\n  {item}");
            } else {
                let _ = writeln!(
                    out,
                    "{}  {}  {}",
                    s.subscription_id, s.status, s.business_id
                );
            }
            live += 1;
        }
        records += page.records_to_update.len() as u64;
        match page.next {
            Some(next) => after = Some(next),
            None => break,
        }
    }
    if json {
        let _ = writeln!(
            out,
            "\n], \"would_cancel_count\": {live}, \"records_to_update\": {records}}}"
        );
    } else {
        let _ = writeln!(
            out,
            "dry run: {live} live subscriptions would be cancelled ({records} records of already cancelled ones updated); run with --confirm"
        );
    }
    let _ = out.flush();
    Ok(ExitCode::SUCCESS)
}

fn read_limited(path: &PathBuf, limit: usize) -> Result<Vec<u8>, Failure> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))?;
    if meta.len() > limit as u64 {
        return Err(Failure::Usage(format!(
            "{} is larger than {} MiB",
            path.display(),
            limit >> 20
        )));
    }
    std::fs::read(path).map_err(|e| Failure::Usage(format!("cannot read {}: {e}", path.display())))
}

/// The live MRR report as a table.
pub fn revenue_table(lines: &[crate::revenue::MrrLine]) -> String {
    let mut rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.business_type.clone(),
                l.currency.clone(),
                format!("{} ({})", format_cents(l.active_cents), l.active_count),
                format!("{} ({})", format_cents(l.past_due_cents), l.past_due_count),
                format!("{} ({})", format_cents(l.trialing_cents), l.trialing_count),
            ]
        })
        .collect();
    let mut currencies: Vec<&str> = lines.iter().map(|l| l.currency.as_str()).collect();
    currencies.dedup();
    for cur in currencies {
        let of = |f: fn(&crate::revenue::MrrLine) -> i64| {
            lines
                .iter()
                .filter(|l| l.currency == cur)
                .map(f)
                .sum::<i64>()
        };
        rows.push(vec![
            "TOTAL".into(),
            cur.into(),
            format!(
                "{} ({})",
                format_cents(of(|l| l.active_cents)),
                of(|l| l.active_count)
            ),
            format!(
                "{} ({})",
                format_cents(of(|l| l.past_due_cents)),
                of(|l| l.past_due_count)
            ),
            format!(
                "{} ({})",
                format_cents(of(|l| l.trialing_cents)),
                of(|l| l.trialing_count)
            ),
        ]);
    }
    table(
        &["TYPE", "CURRENCY", "ACTIVE MRR", "PAST DUE", "TRIALING"],
        &rows,
    )
}

fn calculator(n: i64, price: &str, fees: FeeSchedule, json: bool) -> Result<ExitCode, Failure> {
    let cents = parse_dollars(price).ok_or_else(|| {
        Failure::Usage(format!(
            "invalid --price {price:?}: expected dollars such as 5 or 4.99"
        ))
    })?;
    if !(0..=100_000_000).contains(&n) {
        return Err(Failure::Usage(
            "--businesses must be between 0 and 100000000".into(),
        ));
    }
    if !(0..=10_000).contains(&fees.percent_bps) || fees.fixed_cents < 0 {
        return Err(Failure::Usage(
            "fees must be between 0 and 10000 basis points and not negative".into(),
        ));
    }
    let p = project(n, cents, fees);
    if json {
        print_json(&p);
    } else {
        println!("{n} businesses at {}/month", format_cents(cents));
        println!("gross MRR        {}", format_cents(p.gross_mrr_cents));
        println!("Stripe fees      {}", format_cents(p.fees_cents));
        println!("net MRR          {}", format_cents(p.net_mrr_cents));
        println!("annual run rate  {}", format_cents(p.annual_run_rate_cents));
    }
    Ok(ExitCode::SUCCESS)
}

async fn prices(service: &BillingService, cmd: PricesCommand, json: bool) -> Result<(), Failure> {
    let (create, transfer) = match cmd {
        PricesCommand::Sync { transfer } => (true, transfer),
        PricesCommand::List => (false, false),
    };
    let lines = service.sync_prices(create, transfer).await?;
    if json {
        print_json(&lines);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lines
        .iter()
        .map(|l| {
            vec![
                l.business_types.join(","),
                l.lookup_key.clone(),
                format!(
                    "{} {}/{}",
                    format_cents(l.amount_cents),
                    l.currency,
                    l.interval
                ),
                l.trial_days.to_string(),
                l.stripe_price_id.clone().unwrap_or_else(|| "-".into()),
                format!("{:?}", l.status).to_lowercase()
                    + &l.difference
                        .as_deref()
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "TYPES",
                "LOOKUP KEY",
                "PRICE",
                "TRIAL DAYS",
                "STRIPE PRICE",
                "STATUS"
            ],
            &rows
        )
    );
    if create {
        let created = lines
            .iter()
            .filter(|l| l.status == PriceStatus::Created)
            .count();
        let differ = lines
            .iter()
            .filter(|l| l.status == PriceStatus::Differs)
            .count();
        println!(
            "{created} created, {differ} differ from the catalog, {} up to date",
            lines.len() - created - differ
        );
    }
    Ok(())
}

async fn business(
    service: &Arc<BillingService>,
    cmd: BusinessCommand,
    json: bool,
    metrics: &Arc<Metrics>,
) -> Result<ExitCode, Failure> {
    match cmd {
        BusinessCommand::Create(args) if args.count > 1 => {
            create_many(service, args, json, metrics).await?
        }
        BusinessCommand::Create(args) => {
            let (b, _) = service
                .create_business(
                    NewBusiness {
                        name: args.name,
                        business_type: args.business_type,
                        email: args.email,
                    },
                    None,
                )
                .await?;
            if json {
                print_json(&b);
            } else {
                print!("{}", output::business_detail(&b));
            }
        }
        BusinessCommand::Show { id } => match service
            .store()
            .get_business(&id)
            .await
            .context("while reading the record")?
        {
            Some(b) => {
                if json {
                    print_json(&b);
                } else {
                    print!("{}", output::business_detail(&b));
                }
            }
            None => {
                if json {
                    print_json(&serde_json::json!({"error": "not_found", "business_id": id}));
                } else {
                    eprintln!("no business {id}");
                }
                return Ok(ExitCode::from(1));
            }
        },
        BusinessCommand::List {
            status,
            billing,
            limit,
            after,
        } => {
            let status = status
                .map(|s| {
                    Lifecycle::parse(&s).ok_or_else(|| {
                        Failure::Usage(format!(
                            "invalid --status {s:?}: expected active or taken_down"
                        ))
                    })
                })
                .transpose()?;
            let billing = billing
                .map(|s| Billing::parse(&s).ok_or_else(|| Failure::Usage(format!("invalid --billing {s:?}: expected pending, provisioned, skipped, failed or expired"))))
                .transpose()?;
            if limit < 0 {
                return Err(Failure::Usage(
                    "invalid --limit: expected 0 (every business) or a positive number".into(),
                ));
            }
            if let Some(a) = &after {
                // The same rule as the HTTP list's cursor.
                if a.is_empty()
                    || a.len() > 64
                    || !a
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                {
                    return Err(Failure::Usage(
                        "invalid --after: expected a business id".into(),
                    ));
                }
            }
            // Read and printed a page at a time: memory stays one page, whatever the fleet's size.
            let mut left = if limit == 0 { i64::MAX } else { limit };
            let mut pages = BusinessPages::new(BusinessFilter {
                status,
                billing,
                limit: left.min(PAGE),
                after,
            });
            let mut out = BusinessStream::new(json);
            while left > 0 {
                let Some(mut page) = pages
                    .next(service.store())
                    .await
                    .context("while reading records")?
                else {
                    break;
                };
                page.truncate(left.min(page.len() as i64) as usize);
                left -= page.len() as i64;
                out.page(&page);
            }
            out.finish();
        }
        BusinessCommand::Takedown { id, reason } => {
            let summary = service.takedown(&id, reason.as_deref()).await?;
            if json {
                print_json(&summary);
            } else {
                println!(
                    "{}: {} (stripe: {})",
                    summary.business_id, summary.status, summary.stripe
                );
                if let Some(e) = &summary.customer_delete_error {
                    println!("customer not deleted: {e}");
                }
                if let Some(n) = &summary.note {
                    println!("note: {n}");
                }
            }
            if summary.status == "not_found" {
                return Ok(ExitCode::from(1));
            }
        }
        BusinessCommand::Resume => {
            let report = service.resume().await?;
            if json {
                print_json(&report);
            } else {
                let c = &report.counts;
                println!(
                    "provisioned {}, still failing {}, takedowns finished {}, takedowns failing {}, taken over from stopped processes {}",
                    c.provisioned, c.failed, c.takedowns_finished, c.takedowns_failed, c.taken_over
                );
                if c.waiting_for_payments > 0 {
                    println!(
                        "{} businesses wait for payments to be enabled (ENABLE_PAYMENTS)",
                        c.waiting_for_payments
                    );
                }
                if let Some(until) = report.busy_until {
                    // Never "nothing to do" while work is unfinished: say who holds it and until when.
                    println!(
                        "{} businesses held by live workers (or workers on other hosts) until {} at the latest; run resume again then",
                        c.busy,
                        crate::business::rfc3339(until)
                    );
                    for w in report.busy.iter().take(20) {
                        println!(
                            "  {}  held by {} pid {} until {}",
                            w.business_id,
                            w.host.as_deref().unwrap_or("an unrecorded host"),
                            w.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                            crate::business::rfc3339(w.lease_until)
                        );
                    }
                }
            }
        }
        BusinessCommand::CheckoutLink { id } => match service.checkout_link(&id).await {
            Ok(session) => {
                if json {
                    print_json(
                        &serde_json::json!({"business_id": id, "checkout_session": session.id, "url": session.url}),
                    );
                } else {
                    println!("{}", session.url.unwrap_or_default());
                }
            }
            Err(BillingError::NotFound(_)) => {
                eprintln!("no business {id}");
                return Ok(ExitCode::from(1));
            }
            Err(e) => return Err(e.into()),
        },
    }
    Ok(ExitCode::SUCCESS)
}

/// `business create --count N`: N businesses provisioned concurrently through the shared rate limiter.
async fn create_many(
    service: &Arc<BillingService>,
    args: CreateArgs,
    json: bool,
    metrics: &Arc<Metrics>,
) -> Result<(), Failure> {
    let started = Instant::now();
    let bar = progress_bar(u64::from(args.count), "businesses");
    let semaphore = Arc::new(tokio::sync::Semaphore::new(args.concurrency as usize));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.count {
        let (service, semaphore, bar) = (service.clone(), semaphore.clone(), bar.clone());
        let input = NewBusiness {
            name: format!("{} {}", args.name, i + 1),
            business_type: args.business_type.clone(),
            email: args.email.clone(),
        };
        tasks.spawn(async move {
            let _permit = semaphore.acquire_owned().await;
            let result = service.create_business(input, None).await;
            bar.inc(1);
            result
        });
    }
    let mut counts = std::collections::BTreeMap::<String, u64>::new();
    let mut errors = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((b, _))) => *counts.entry(b.billing.to_string()).or_default() += 1,
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(format!("task failed: {e}")),
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed().as_secs_f64();
    let requests = metrics.stripe_attempts();
    let summary = serde_json::json!({
        "requested": args.count,
        "billing": counts,
        "errors": errors.len(),
        "elapsed_seconds": elapsed,
        "businesses_per_second": f64::from(args.count) / elapsed.max(1e-9),
        "stripe_requests": requests,
        "stripe_requests_per_business": requests as f64 / f64::from(args.count),
        "stripe_rate_limited": metrics.stripe_rate_limited_count() as f64,
    });
    if json {
        print_json(&summary);
    } else {
        println!(
            "created {} businesses in {elapsed:.2}s ({:.1}/s); billing {counts:?}; {} Stripe requests ({:.2} per business)",
            args.count,
            f64::from(args.count) / elapsed.max(1e-9),
            requests,
            requests as f64 / f64::from(args.count)
        );
        for e in errors.iter().take(5) {
            eprintln!("error: {e}");
        }
    }
    if !errors.is_empty() {
        return Err(Failure::Failed(anyhow::anyhow!(
            "{} of {} businesses could not be recorded",
            errors.len(),
            args.count
        )));
    }
    Ok(())
}
