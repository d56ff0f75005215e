//! The `genesis-billing` command line (SPEC §5): parsing, logging, exit codes, and each command.

mod business;
#[cfg(feature = "simulator")]
pub mod demo;
mod events;
mod notices;
mod operations;
mod output;
mod prices;
mod revenue;
mod serve;
pub mod smoke;
mod webhooks;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand, ValueEnum};
use secrecy::SecretString;

use crate::app::{App, BuildError};
use crate::billing::BillingError;
use crate::config::{ConfigError, Flags, ProcessEnv, Settings};
use crate::revenue::FeeSchedule;
pub use output::{business_table, print_json, table};
pub use revenue::revenue_table;

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
    #[cfg(feature = "simulator")]
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
        /// Tell each affected owner by email that billing stopped (once per cancelled subscription).
        #[arg(long)]
        notify: bool,
    },
    /// Notices to owners by email.
    #[command(subcommand)]
    Notices(notices::NoticesCommand),
    /// Staging check: a throwaway business through create, checkout link and takedown. Refuses live keys.
    Smoke,
    /// The stream of events to the meta-agent: list, replay a dead-lettered one, redeliver.
    #[command(subcommand)]
    Events(events::EventsCommand),
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
    /// A signed manage link for the owner: it opens a fresh Billing Portal (or Checkout) session each time.
    ManageLink { id: String },
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

impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Self {
        match e {
            BuildError::Settings(s) => Self::Usage(s),
            BuildError::Failed(e) => Self::Failed(e),
        }
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

async fn run(cli: Cli) -> Result<ExitCode, Failure> {
    #[cfg(feature = "simulator")]
    if let Command::Demo = cli.command {
        demo::run(cli.json).await?;
        return Ok(ExitCode::SUCCESS);
    }
    if let Command::Revenue(RevenueArgs {
        businesses: Some(n),
        price: Some(p),
        fee_bps,
        fee_fixed_cents,
    }) = &cli.command
    {
        return revenue::calculator(
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
    let app = App::build(settings).await?;
    let (settings, metrics, service) = (&app.settings, &app.metrics, app.service.clone());
    let json = cli.json;
    match cli.command {
        Command::Migrate => {
            // build_service migrated already; report the state.
            if json {
                print_json(
                    &serde_json::json!({"migrated": true, "database": service.database_kind()}),
                );
            } else {
                println!("database {} is up to date", settings.database_url);
            }
        }
        Command::Business(cmd) => {
            let owners = crate::owners::Owners::from_settings(settings);
            return business::run(&service, cmd, json, metrics, &owners).await;
        }
        Command::Prices(cmd) => prices::run(&service, cmd, json).await?,
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
        Command::Revenue(_) => revenue::live(&service, json).await?,
        Command::Serve { .. } => serve::run(&app).await?,
        Command::Reconcile { fix } => {
            return operations::reconcile(settings, service, fix, json).await
        }
        Command::CancelAll {
            confirm,
            concurrency,
            notify,
        } => {
            return operations::cancel_all(settings, service, confirm, concurrency, notify, json)
                .await
        }
        Command::Notices(cmd) => return notices::run(settings, &service, cmd, json).await,
        Command::Smoke => return smoke::run(settings, &service, json).await,
        Command::Webhooks(cmd) => return webhooks::run(settings, service, cmd, json).await,
        Command::Events(cmd) => return events::run(&service, cmd, json).await,
        #[cfg(feature = "simulator")]
        Command::Demo => unreachable!("handled above"),
    }
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
