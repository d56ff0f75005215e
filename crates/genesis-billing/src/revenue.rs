//! Revenue (SPEC §3): live MRR from the records and the audit's calculator, in integer cents.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::business::{Business, Lifecycle};

/// Stripe's card fee: a share of the charge in basis points plus a fixed amount per charge.
#[derive(Debug, Clone, Copy)]
pub struct FeeSchedule {
    pub percent_bps: i64,
    pub fixed_cents: i64,
}

impl Default for FeeSchedule {
    /// US card pricing: 2.9 % + $0.30.
    fn default() -> Self {
        Self {
            percent_bps: 290,
            fixed_cents: 30,
        }
    }
}

/// The calculator's answer for N businesses at one monthly price.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Projection {
    pub businesses: i64,
    pub price_cents: i64,
    pub gross_mrr_cents: i64,
    pub fees_cents: i64,
    pub net_mrr_cents: i64,
    pub annual_run_rate_cents: i64,
}

/// Gross = N·P; fees = 2.9 % of gross (half-cents rounded up) + $0.30 per business; net; 12 × net.
pub fn project(businesses: i64, price_cents: i64, fees: FeeSchedule) -> Projection {
    let gross = businesses * price_cents;
    let percent_part = (gross * fees.percent_bps + 5_000) / 10_000;
    let fees_cents = percent_part + businesses * fees.fixed_cents;
    let net = gross - fees_cents;
    Projection {
        businesses,
        price_cents,
        gross_mrr_cents: gross,
        fees_cents,
        net_mrr_cents: net,
        annual_run_rate_cents: net * 12,
    }
}

/// Parses a dollar amount such as `5`, `5.0` or `4.99` into cents without floating point.
pub fn parse_dollars(s: &str) -> Option<i64> {
    let s = s.trim().trim_start_matches('$');
    let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
    if whole.is_empty() && frac.is_empty()
        || frac.len() > 2
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let whole: i64 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    whole.checked_mul(100)?.checked_add(frac)
}

/// `$1,234.56`.
pub fn format_cents(cents: i64) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let abs = cents.unsigned_abs();
    let dollars = (abs / 100).to_string();
    let mut grouped = String::new();
    for (i, c) in dollars.chars().enumerate() {
        if i > 0 && (dollars.len() - i) % 3 == 0 {
            grouped.push(',');
        }
        grouped.push(c);
    }
    format!("{sign}${grouped}.{:02}", abs % 100)
}

/// Active businesses with a subscription status, counted in the database by type, currency and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionTally {
    pub business_type: String,
    pub currency: Option<String>,
    pub subscription_status: String,
    /// Businesses in the group.
    pub businesses: i64,
    /// Those of them with a monthly price.
    pub priced: i64,
    /// The sum of their monthly prices, in cents.
    pub monthly_cents: i64,
}

/// MRR of one business type in one currency, split by subscription status.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MrrLine {
    pub business_type: String,
    pub currency: String,
    pub active_cents: i64,
    pub active_count: i64,
    pub past_due_cents: i64,
    pub past_due_count: i64,
    pub trialing_cents: i64,
    pub trialing_count: i64,
}

/// Live MRR by type and currency: `active` is revenue; `past_due` and `trialing` are reported apart.
pub fn live_mrr(businesses: &[Business]) -> Vec<MrrLine> {
    let mut lines: BTreeMap<(String, String), MrrLine> = BTreeMap::new();
    for b in businesses.iter().filter(|b| b.status == Lifecycle::Active) {
        let (Some(status), Some(cents), Some(currency)) =
            (&b.subscription_status, b.monthly_price_cents, &b.currency)
        else {
            continue;
        };
        let line = lines
            .entry((b.business_type.clone(), currency.clone()))
            .or_insert_with(|| MrrLine {
                business_type: b.business_type.clone(),
                currency: currency.clone(),
                ..MrrLine::default()
            });
        match status.as_str() {
            "active" => {
                line.active_cents += cents;
                line.active_count += 1;
            }
            "past_due" => {
                line.past_due_cents += cents;
                line.past_due_count += 1;
            }
            "trialing" => {
                line.trialing_cents += cents;
                line.trialing_count += 1;
            }
            _ => {}
        }
    }
    lines
        .into_values()
        .filter(|l| l.active_count + l.past_due_count + l.trialing_count > 0)
        .collect()
}

/// Live MRR from the database's tally: the same lines as [`live_mrr`] over every record, from a few rows.
pub fn mrr_from_tally(tally: &[SubscriptionTally]) -> Vec<MrrLine> {
    let mut lines: BTreeMap<(String, String), MrrLine> = BTreeMap::new();
    for t in tally {
        // As in `live_mrr`: a business counts only with both a price and a currency.
        let Some(currency) = &t.currency else {
            continue;
        };
        let line = lines
            .entry((t.business_type.clone(), currency.clone()))
            .or_insert_with(|| MrrLine {
                business_type: t.business_type.clone(),
                currency: currency.clone(),
                ..MrrLine::default()
            });
        let (cents, count) = match t.subscription_status.as_str() {
            "active" => (&mut line.active_cents, &mut line.active_count),
            "past_due" => (&mut line.past_due_cents, &mut line.past_due_count),
            "trialing" => (&mut line.trialing_cents, &mut line.trialing_count),
            _ => continue,
        };
        *cents += t.monthly_cents;
        *count += t.priced;
    }
    lines
        .into_values()
        .filter(|l| l.active_count + l.past_due_count + l.trialing_count > 0)
        .collect()
}

/// Active businesses by Stripe subscription status, from the database's tally.
pub fn subscriptions_by_status(tally: &[SubscriptionTally]) -> BTreeMap<String, i64> {
    let mut by_status = BTreeMap::new();
    for t in tally {
        *by_status.entry(t.subscription_status.clone()).or_default() += t.businesses;
    }
    by_status
}

/// Per-currency totals of `lines`, in currency order, as lines whose business type is `TOTAL`.
pub fn totals(lines: &[MrrLine]) -> Vec<MrrLine> {
    let mut by_currency: BTreeMap<&str, MrrLine> = BTreeMap::new();
    for l in lines {
        let t = by_currency
            .entry(l.currency.as_str())
            .or_insert_with(|| MrrLine {
                business_type: "TOTAL".into(),
                currency: l.currency.clone(),
                ..MrrLine::default()
            });
        t.active_cents += l.active_cents;
        t.active_count += l.active_count;
        t.past_due_cents += l.past_due_cents;
        t.past_due_count += l.past_due_count;
        t.trialing_cents += l.trialing_cents;
        t.trialing_count += l.trialing_count;
    }
    by_currency.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_give_one_line_per_currency_even_when_types_interleave_currencies() {
        let line = |t: &str, cur: &str, active: i64, trialing: i64| MrrLine {
            business_type: t.into(),
            currency: cur.into(),
            active_cents: active * 500,
            active_count: active,
            trialing_cents: trialing * 500,
            trialing_count: trialing,
            ..MrrLine::default()
        };
        let lines = [
            line("api", "eur", 2, 0),
            line("api", "usd", 1, 1),
            line("saas", "eur", 3, 4),
        ];
        let t = totals(&lines);
        assert_eq!(
            t,
            vec![
                MrrLine {
                    business_type: "TOTAL".into(),
                    ..line("", "eur", 5, 4)
                },
                MrrLine {
                    business_type: "TOTAL".into(),
                    ..line("", "usd", 1, 1)
                },
            ]
        );
    }

    #[test]
    fn the_calculator_matches_the_spec_examples() {
        let cases = [
            (100, 50_000, 4_450, 45_550, 546_600),
            (1_000, 500_000, 44_500, 455_500, 5_466_000),
            (10_000, 5_000_000, 445_000, 4_555_000, 54_660_000),
        ];
        for (n, gross, fees, net, annual) in cases {
            let p = project(n, 500, FeeSchedule::default());
            assert_eq!(
                (
                    p.gross_mrr_cents,
                    p.fees_cents,
                    p.net_mrr_cents,
                    p.annual_run_rate_cents
                ),
                (gross, fees, net, annual),
                "{n}"
            );
        }
        assert_eq!(
            format_cents(project(100, 500, FeeSchedule::default()).net_mrr_cents),
            "$455.50"
        );
        assert_eq!(
            format_cents(project(10_000, 500, FeeSchedule::default()).annual_run_rate_cents),
            "$546,600.00"
        );
    }

    #[test]
    fn half_cents_of_the_percentage_fee_round_up() {
        // 3 × $0.05 = 15¢; 2.9 % of that is 0.435¢, which rounds to 0; 50¢ gives 1.45¢ → 1; 150¢ gives 4.35 → 4;
        // 1 × $0.50 with 3 % is exactly 1.5¢ → 2.
        let fees = FeeSchedule {
            percent_bps: 300,
            fixed_cents: 0,
        };
        assert_eq!(project(1, 50, fees).fees_cents, 2);
        assert_eq!(
            project(
                1,
                150,
                FeeSchedule {
                    fixed_cents: 0,
                    ..FeeSchedule::default()
                }
            )
            .fees_cents,
            4
        );
    }

    #[test]
    fn dollar_amounts_parse_without_floating_point() {
        assert_eq!(parse_dollars("5"), Some(500));
        assert_eq!(parse_dollars("4.99"), Some(499));
        assert_eq!(parse_dollars("$0.5"), Some(50));
        assert_eq!(parse_dollars(".25"), Some(25));
        for bad in [
            "",
            ".",
            "1.234",
            "-5",
            "abc",
            "1e3",
            "5,00",
            "99999999999999999999",
        ] {
            assert_eq!(parse_dollars(bad), None, "{bad}");
        }
    }

    #[test]
    fn cents_format_with_thousands_separators() {
        assert_eq!(format_cents(0), "$0.00");
        assert_eq!(format_cents(123_456_789), "$1,234,567.89");
        assert_eq!(format_cents(-4_450), "-$44.50");
    }
}
