//! The `stripe-sim` binary: command-line wiring around [`stripe_sim::start`].

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use stripe_sim::faults::FaultConfig;
use stripe_sim::SimConfig;

/// A stateful local simulator of Stripe's API (version 2026-09-30.endive).
#[derive(Debug, Parser)]
#[command(name = "stripe-sim", version)]
struct Cli {
    /// Address to listen on (loopback by default; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:12111", env = "STRIPE_SIM_LISTEN")]
    listen: SocketAddr,
    /// Persist state to this file (loaded at start, saved after changes and on shutdown).
    #[arg(long)]
    state: Option<PathBuf>,
    /// Requests per second over /v1 (0 turns rate limiting off).
    #[arg(long, default_value_t = 25)]
    rate_limit: u32,
    /// JSON file of fault rules: {"rules": [{"kind": "http_500", "probability": 0.1}]}.
    #[arg(long)]
    faults: Option<PathBuf>,
    /// More logging (repeatable); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "stripe_sim=info",
        1 => "stripe_sim=debug",
        _ => "stripe_sim=trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let faults = match &cli.faults {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("while reading {}", path.display()))?;
            serde_json::from_str::<FaultConfig>(&text)
                .with_context(|| format!("while parsing fault rules in {}", path.display()))?
                .rules
        }
        None => Vec::new(),
    };
    let config = SimConfig {
        listen: cli.listen,
        rate_limit_per_second: cli.rate_limit,
        state_file: cli.state.clone(),
        faults,
    };
    let handle = stripe_sim::start(config).await?;
    {
        let mut out = std::io::stdout().lock();
        writeln!(out, "stripe-sim listening on {}", handle.base_url())
            .context("while printing the address")?;
        out.flush().context("while flushing stdout")?;
    }
    tracing::info!(addr = %handle.addr(), state = ?cli.state, "serving");
    wait_for_signal().await;
    tracing::info!("shutting down");
    handle.shutdown().await;
    Ok(())
}

/// Waits for SIGINT or SIGTERM.
async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
