//! `reconcile` and `cancel-all`: fleet-wide operations with a progress bar.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::output::progress_bar;
use super::{print_json, table, Failure};
use crate::billing::BillingService;
use crate::config::Settings;

pub(super) async fn reconcile(
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

pub(super) async fn cancel_all(
    settings: &Settings,
    service: Arc<BillingService>,
    confirm: bool,
    concurrency: u32,
    notify: bool,
    json: bool,
) -> Result<ExitCode, Failure> {
    if !confirm {
        return cancel_all_dry_run(&service, json).await;
    }
    // Telling the owners needs a mail server here: a run without one would record their notices as
    // skipped for the whole fleet.
    if notify && !settings.notices.configured() {
        return Err(Failure::Usage(
            "--notify needs owner notices configured (GENESIS_SMTP_URL and GENESIS_NOTICE_FROM)"
                .into(),
        ));
    }
    // One roll-back at a time across the fleet: a job lease (see store::coordination), renewed while we
    // run and released at the end. A second run waits for the first; a run that was killed holds it for
    // at most 10 s (the lease is short because it is renewed), so a rerun after a crash starts quickly.
    let lease = service.lease().min(std::time::Duration::from_secs(10));
    let lease = service
        .claim_job_waiting("cancel_all", lease)
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
            let held = match notify {
                true => service.hold_rollback_notice(s).await,
                false => Ok(()),
            };
            if let Err(e) = held {
                tally.error(&s.subscription_id, &e.to_string());
            } else if let Err(e) = service.record_rollback(s).await {
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
                let held = match notify {
                    true => service.hold_rollback_notice(&s).await,
                    false => Ok(()),
                };
                let result = match held {
                    Ok(()) => service.cancel_for_rollback(&s).await,
                    Err(e) => Err(e),
                }
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
    let notices = match notify {
        true => Some(super::notices::send_rollback_notices(settings, &service).await?),
        false => None,
    };
    if json {
        print_json(&serde_json::json!({
            "cancelled": cancelled,
            "live": tally.live,
            "records_updated": tally.records_updated,
            "failed": tally.failed,
            "errors": tally.errors,
            "notices": notices,
        }));
    } else {
        println!(
            "cancelled {cancelled} of {} live subscriptions ({} records of already cancelled ones updated)",
            tally.live, tally.records_updated
        );
        if let Some(n) = &notices {
            println!(
                "owner notices: {} sent, {} skipped, {} failed, {} left for serve to retry, {} waiting for their cancellation to be recorded",
                n.sent, n.skipped, n.failed, n.pending, n.held
            );
        }
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
