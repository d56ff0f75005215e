//! `notices list | resend`, and the sending step of `cancel-all --notify`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Subcommand;

use super::{print_json, table, Failure};
use crate::billing::BillingService;
use crate::business::rfc3339;
use crate::config::Settings;
use crate::owners::notice::{NoticeFilter, Notices, Resend, State};
use crate::owners::Owners;

/// How long `cancel-all --notify` keeps sending before leaving the rest to `serve`.
const ROLLBACK_SEND_BUDGET: Duration = Duration::from_secs(60);

#[derive(Debug, Subcommand)]
pub(super) enum NoticesCommand {
    /// Notices, newest first, one page at a time (`--before` the last id shown for the next page).
    List {
        /// Only notices that could not be sent.
        #[arg(long)]
        failed: bool,
        #[arg(long, value_name = "ID")]
        business: Option<String>,
        #[arg(long, value_name = "NOTICE_ID")]
        before: Option<String>,
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(i64).range(1..=1000))]
        limit: i64,
    },
    /// Send a failed notice again (same Message-ID).
    Resend { id: String },
}

/// Whether `id` looks like a notice id (`gbn_` and hex digits).
fn is_notice_id(id: &str) -> bool {
    id.len() <= 64
        && id
            .strip_prefix("gbn_")
            .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn notices(settings: &Settings, service: &BillingService) -> Result<Notices, Failure> {
    Notices::new(
        settings,
        service.store().clone(),
        Arc::new(Owners::from_settings(settings)),
        service.metrics().clone(),
    )
    .map_err(Failure::Usage)
}

pub(super) async fn run(
    settings: &Settings,
    service: &BillingService,
    cmd: NoticesCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match cmd {
        NoticesCommand::List {
            failed,
            business,
            before,
            limit,
        } => {
            if before.as_deref().is_some_and(|b| !is_notice_id(b)) {
                return Err(Failure::Usage(
                    "--before must be a notice id (gbn_…)".into(),
                ));
            }
            if business
                .as_deref()
                .is_some_and(|b| !crate::business::is_business_id(b))
            {
                return Err(Failure::Usage("--business must be a business id".into()));
            }
            let page = service
                .store()
                .list_notices(&NoticeFilter {
                    failed_only: failed,
                    business_id: business,
                    before,
                    limit,
                })
                .await
                .context("while reading notices")?;
            let next = (page.len() as i64 == limit)
                .then(|| page.last().map(|n| n.id.clone()))
                .flatten();
            if json {
                print_json(&serde_json::json!({"notices": page, "next_before": next}));
            } else {
                let rows: Vec<Vec<String>> = page
                    .iter()
                    .map(|n| {
                        vec![
                            n.id.clone(),
                            n.business_id.clone(),
                            n.kind.clone(),
                            n.state.as_str().to_owned(),
                            n.recipient.clone().unwrap_or_else(|| "-".into()),
                            n.attempts.to_string(),
                            rfc3339(n.created_at),
                            n.last_error
                                .clone()
                                .or_else(|| n.reason.clone())
                                .unwrap_or_default(),
                        ]
                    })
                    .collect();
                print!(
                    "{}",
                    table(
                        &["ID", "BUSINESS", "KIND", "STATE", "TO", "ATTEMPTS", "CREATED", "NOTE"],
                        &rows
                    )
                );
                if let Some(next) = next {
                    println!("more: notices list --before {next}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        NoticesCommand::Resend { id } => {
            if !is_notice_id(&id) {
                return Err(Failure::Usage("expected a notice id (gbn_…)".into()));
            }
            let n = notices(settings, service)?;
            let outcome = service
                .store()
                .resend_notice(&id)
                .await
                .context("while queuing the notice")?;
            let problem = match outcome {
                Resend::Queued => None,
                Resend::NotFound => Some(format!("no notice {id}")),
                Resend::NotFailed(state) => Some(format!(
                    "notice {id} is {}; only a failed notice is resent",
                    state.as_str()
                )),
            };
            if let Some(p) = problem {
                if json {
                    print_json(&serde_json::json!({"id": id, "resent": false, "error": p}));
                } else {
                    eprintln!("error: {p}");
                }
                return Ok(ExitCode::from(1));
            }
            // Sent now when notices are configured here; otherwise `serve` sends it.
            n.send_due().await.context("while sending")?;
            let now = service
                .store()
                .notice(&id)
                .await
                .context("while reading the notice")?
                .context("the notice disappeared")?;
            if json {
                print_json(&serde_json::json!({"id": id, "resent": true, "notice": now}));
            } else {
                println!(
                    "notice {id} queued again: now {}{}",
                    now.state.as_str(),
                    now.last_error
                        .as_deref()
                        .map(|e| format!(" ({e})"))
                        .unwrap_or_default()
                );
            }
            Ok(if now.state == State::Failed {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}

/// Where the roll-back's owner notices stand after `cancel-all --notify` sent what it could.
#[derive(Debug, Default, serde::Serialize)]
pub(super) struct RollbackNotices {
    pub sent: i64,
    pub skipped: i64,
    pub failed: i64,
    /// Waiting for a retry; `serve` finishes them.
    pub pending: i64,
    /// Waiting for their cancellation to be recorded (a cancel Stripe refused stays here).
    pub held: i64,
}

/// Plans and sends the roll-back's notices for up to a minute, then counts them.
pub(super) async fn send_rollback_notices(
    settings: &Settings,
    service: &BillingService,
) -> Result<RollbackNotices, Failure> {
    let n = notices(settings, service)?;
    let deadline = Instant::now() + ROLLBACK_SEND_BUDGET;
    while Instant::now() < deadline {
        let planned = n.plan().await.context("while planning notices")?;
        let round = n.send_due().await.context("while sending notices")?;
        if planned == 0 && round.sent + round.failed + round.skipped + round.retried == 0 {
            // Nothing for us: done, unless another sender (serve) is sending one or a retry is close.
            let soon = crate::owners::notice::now_ms() + 5_000;
            let due = service
                .store()
                .count_due_notices("rolled_back", soon)
                .await
                .context("while counting notices")?;
            if due == 0 || !n.configured() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let mut out = RollbackNotices::default();
    for (state, count) in service
        .store()
        .count_notices("rolled_back")
        .await
        .context("while counting notices")?
    {
        match state.as_str() {
            "sent" => out.sent += count,
            "skipped" => out.skipped += count,
            "failed" => out.failed += count,
            "held" => out.held += count,
            _ => out.pending += count,
        }
    }
    Ok(out)
}
