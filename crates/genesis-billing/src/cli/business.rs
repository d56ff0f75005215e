//! `business create | show | list | takedown | resume | checkout-link | manage-link`.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;

use super::{print_json, Failure};
use crate::billing::BillingService;
use std::time::Instant;

use super::output::{self, progress_bar, BusinessStream};
use super::{BusinessCommand, CreateArgs};
use crate::billing::BillingError;
use crate::billing::{BusinessFilter, BusinessPages, PAGE};
use crate::business::{Billing, Lifecycle, NewBusiness};
use crate::metrics::Metrics;
use crate::owners::Owners;

pub(super) async fn run(
    service: &Arc<BillingService>,
    cmd: BusinessCommand,
    json: bool,
    metrics: &Arc<Metrics>,
    owners: &Owners,
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
            .business(&id)
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
                if !crate::business::is_business_id(a) {
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
                let Some(mut page) = service
                    .next_page(&mut pages)
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
            let summary = service
                .takedown(&id, reason.as_deref(), crate::billing::Initiator::Cli)
                .await?;
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
        BusinessCommand::ManageLink { id } => return manage_link(service, owners, &id, json).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// `business manage-link ID`: a missing link secret or public URL is a configuration error (exit 2).
async fn manage_link(
    service: &BillingService,
    owners: &Owners,
    id: &str,
    json: bool,
) -> Result<ExitCode, Failure> {
    owners
        .configured()
        .map_err(|e| Failure::Usage(e.to_string()))?;
    let refusal = match service
        .business(id)
        .await
        .context("while reading the record")?
    {
        None => ("not_found", format!("no business {id}")),
        Some(b) if b.status != Lifecycle::Active => {
            ("taken_down", format!("business {id} is taken down"))
        }
        Some(_) => {
            let link = owners
                .manage_link(id, crate::owners::now())
                .map_err(|e| Failure::Usage(e.to_string()))?;
            if json {
                print_json(&serde_json::json!({
                    "business_id": id,
                    "url": link.url,
                    "expires_at": link.expires_at,
                }));
            } else {
                println!("{}", link.url);
                eprintln!("expires {}", crate::business::rfc3339(link.expires_at));
            }
            return Ok(ExitCode::SUCCESS);
        }
    };
    if json {
        print_json(&serde_json::json!({"error": refusal.0, "business_id": id}));
    } else {
        eprintln!("{}", refusal.1);
    }
    Ok(ExitCode::from(1))
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
