//! `serve`: the service until SIGTERM or Ctrl-C.

use anyhow::Context as _;

use super::Failure;
use crate::app::App;
use crate::config::Settings;

/// The service, until SIGTERM or Ctrl-C.
pub(super) async fn run(app: &App) -> Result<(), Failure> {
    let settings = &app.settings;
    let running = app.start().await?;
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
