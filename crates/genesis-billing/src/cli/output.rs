//! Human output (aligned tables) and machine output (`--json`) for CLI results.

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::business::{rfc3339, Business};
use crate::revenue::format_cents;

/// Prints `value` as JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot encode output: {e}"),
    }
}

/// An aligned text table.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    table_lines(Some(headers), rows, &widths)
}

/// The lines of a table with these column widths, with a header line when there are headers.
fn table_lines(headers: Option<&[&str]>, rows: &[Vec<String>], widths: &[usize]) -> String {
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = String::new();
    if let Some(headers) = headers {
        out = line(headers.to_vec());
        out.push('\n');
    }
    for row in rows {
        out.push_str(&line(row.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

fn opt(v: &Option<String>) -> String {
    v.clone().unwrap_or_else(|| "-".into())
}

/// Key/value lines describing one business.
pub fn business_detail(b: &Business) -> String {
    let price = match (b.monthly_price_cents, &b.currency) {
        (Some(c), Some(cur)) => format!("{} {}/month", format_cents(c), cur),
        _ => "-".into(),
    };
    let mut rows = vec![
        ("business_id", b.business_id.clone()),
        ("name", b.name.clone()),
        ("type", b.business_type.clone()),
        ("email", opt(&b.email)),
        ("created", rfc3339(b.created_at)),
        ("status", b.status.to_string()),
        ("billing", b.billing.to_string()),
        ("stripe customer", opt(&b.stripe_customer_id)),
        ("stripe subscription", opt(&b.stripe_subscription_id)),
        ("subscription status", opt(&b.subscription_status)),
        ("price", price),
        ("lookup key", opt(&b.price_lookup_key)),
    ];
    if let Some(e) = &b.billing_error {
        rows.push((
            "billing error",
            format!(
                "{}{}",
                b.failed_step
                    .as_deref()
                    .map(|s| format!("[{s}] "))
                    .unwrap_or_default(),
                e
            ),
        ));
    }
    if let Some(pi) = &b.stripe_payment_intent_id {
        rows.push(("legacy payment intent", pi.clone()));
    }
    if let Some(at) = b.taken_down_at {
        rows.push((
            "taken down",
            format!("{} ({})", rfc3339(at), opt(&b.takedown_reason)),
        ));
        rows.push((
            "takedown outcome",
            b.takedown_outcome
                .clone()
                .unwrap_or_else(|| "unfinished".into()),
        ));
    }
    let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    rows.iter()
        .map(|(k, v)| format!("{k:<width$}  {v}\n"))
        .collect()
}

/// One row per business.
pub fn business_table(businesses: &[Business]) -> String {
    table(&BUSINESS_HEADERS, &business_rows(businesses))
}

const BUSINESS_HEADERS: [&str; 7] = [
    "BUSINESS",
    "NAME",
    "TYPE",
    "STATUS",
    "BILLING",
    "SUBSCRIPTION",
    "MONTHLY",
];

fn business_rows(businesses: &[Business]) -> Vec<Vec<String>> {
    businesses
        .iter()
        .map(|b| {
            vec![
                b.business_id.clone(),
                b.name.chars().take(30).collect(),
                b.business_type.clone(),
                b.status.to_string(),
                b.billing.to_string(),
                opt(&b.subscription_status),
                b.monthly_price_cents
                    .map(format_cents)
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect()
}

/// Businesses printed a page at a time as they are read, so a list of any length takes one page of memory.
/// Columns are as wide as the first page needs (wider if a later row needs it); JSON is one array, exactly
/// as `print_json` writes it.
#[derive(Debug)]
pub struct BusinessStream {
    json: bool,
    widths: Option<Vec<usize>>,
    written: usize,
}

impl BusinessStream {
    /// A stream writing JSON or a table.
    pub fn new(json: bool) -> Self {
        Self {
            json,
            widths: None,
            written: 0,
        }
    }

    /// Prints one page.
    pub fn page(&mut self, businesses: &[Business]) {
        let mut out = String::new();
        if self.json {
            for b in businesses {
                out.push_str(if self.written == 0 { "[\n" } else { ",\n" });
                let item = serde_json::to_string_pretty(b).unwrap_or_else(|_| "null".into());
                for (i, l) in item.lines().enumerate() {
                    if i > 0 {
                        out.push('\n');
                    }
                    out.push_str("  ");
                    out.push_str(l);
                }
                self.written += 1;
            }
        } else {
            let rows = business_rows(businesses);
            let first = self.widths.is_none();
            let widths = self.widths.get_or_insert_with(|| {
                BUSINESS_HEADERS.iter().map(|h| h.chars().count()).collect()
            });
            for row in &rows {
                for (i, cell) in row.iter().enumerate() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
            out = table_lines(first.then_some(&BUSINESS_HEADERS[..]), &rows, widths);
            self.written += rows.len();
        }
        print!("{out}");
    }

    /// Closes the output (the JSON array) once every page was printed.
    pub fn finish(mut self) {
        if self.json {
            println!("{}", if self.written == 0 { "[]" } else { "\n]" });
        } else if self.widths.is_none() {
            self.page(&[]);
        }
    }
}

/// A progress bar on stderr; invisible when stderr is not a terminal.
pub(super) fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{bar:40}} {{pos}}/{{len}} {what}  {{per_sec}}  eta {{eta}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns() {
        let t = table(
            &["A", "LONG"],
            &[
                vec!["xyz".into(), "1".into()],
                vec!["q".into(), "22".into()],
            ],
        );
        assert_eq!(t, "A    LONG\nxyz  1\nq    22\n");
    }
}
