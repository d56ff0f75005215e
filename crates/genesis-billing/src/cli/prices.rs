//! `prices sync | list`.

use super::PricesCommand;
use super::{print_json, table, Failure};
use crate::billing::BillingService;
use crate::billing::PriceStatus;
use crate::revenue::format_cents;

pub(super) async fn run(
    service: &BillingService,
    cmd: PricesCommand,
    json: bool,
) -> Result<(), Failure> {
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
