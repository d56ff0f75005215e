//! `revenue`: the live MRR report, or the calculator with --businesses and --price.

use std::process::ExitCode;

use anyhow::Context as _;

use super::{print_json, table, Failure};
use crate::billing::BillingService;
use crate::revenue::{format_cents, parse_dollars, project, totals, FeeSchedule};

/// The live MRR report as a table.
pub fn revenue_table(lines: &[crate::revenue::MrrLine]) -> String {
    let rows: Vec<Vec<String>> = lines
        .iter()
        .chain(totals(lines).iter())
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
    table(
        &["TYPE", "CURRENCY", "ACTIVE MRR", "PAST DUE", "TRIALING"],
        &rows,
    )
}

pub(super) fn calculator(
    n: i64,
    price: &str,
    fees: FeeSchedule,
    json: bool,
) -> Result<ExitCode, Failure> {
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

/// The live MRR report from the records.
pub(super) async fn live(service: &BillingService, json: bool) -> Result<(), Failure> {
    let lines = service.mrr().await.context("while reading records")?;
    if json {
        print_json(&serde_json::json!({ "mrr": lines }));
    } else {
        print!("{}", revenue_table(&lines));
    }
    Ok(())
}
