//! `events list | replay | redeliver`: the stream of events to the meta-agent, for an operator.

use std::process::ExitCode;

use anyhow::Context as _;
use clap::Subcommand;

use super::{print_json, Failure};
use crate::billing::{
    events_filter, BillingService, Delivery, OutboundEvent, OutboundFilter, Replay,
    DEFAULT_EVENTS_PAGE, MAX_EVENTS_PAGE,
};
use crate::business::{is_business_id, rfc3339};

/// `events …`: what an operator does with the stream.
#[derive(Debug, Subcommand)]
pub(super) enum EventsCommand {
    /// Events in commit order from the start (or after --after), with their delivery state; prints the
    /// cursor to continue from.
    List {
        /// Only dead-lettered events (the receiver refused them, or retries ran out of time).
        #[arg(long)]
        failed: bool,
        /// Only this business's events.
        #[arg(long, value_name = "ID")]
        business: Option<String>,
        /// Start after this cursor (the `next cursor` a previous list or `GET /v1/events` printed).
        #[arg(long, value_name = "CURSOR")]
        after: Option<String>,
        /// Most events to print; read a page of at most 1,000 at a time.
        #[arg(long, default_value_t = DEFAULT_EVENTS_PAGE, value_name = "N")]
        limit: i64,
    },
    /// Send a dead-lettered event again (with a fresh retry window), by its id.
    Replay { id: String },
    /// Send again every delivered or dead-lettered event written since a time, for a receiver that lost
    /// its data.
    Redeliver {
        /// RFC 3339 time (2026-12-05T10:00:00Z) or Unix seconds.
        #[arg(long, value_name = "TIME")]
        since: String,
        /// Only this business's events.
        #[arg(long, value_name = "ID")]
        business: Option<String>,
    },
}

/// Runs one `events` command; exit 1 when a replay finds nothing to send.
pub(super) async fn run(
    service: &BillingService,
    cmd: EventsCommand,
    json: bool,
) -> Result<ExitCode, Failure> {
    match cmd {
        EventsCommand::List {
            failed,
            business,
            after,
            limit,
        } => list(service, failed, business, after, limit, json).await,
        EventsCommand::Replay { id } => replay(service, &id, json).await,
        EventsCommand::Redeliver { since, business } => {
            let since = parse_since(&since).map_err(Failure::Usage)?;
            if let Some(b) = &business {
                check_business(b)?;
            }
            let queued = service
                .redeliver_outbound(since, business.as_deref())
                .await?;
            if json {
                print_json(&serde_json::json!({
                    "queued": queued,
                    "since": rfc3339(since),
                    "business_id": business,
                }));
            } else {
                println!(
                    "queued {queued} event{} written since {}{} for delivery again",
                    if queued == 1 { "" } else { "s" },
                    rfc3339(since),
                    business.map(|b| format!(" by {b}")).unwrap_or_default()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn check_business(b: &str) -> Result<(), Failure> {
    if is_business_id(b) {
        Ok(())
    } else {
        Err(Failure::Usage(
            "invalid --business: expected a business id (1-64 letters, digits, '-' and '_')".into(),
        ))
    }
}

async fn list(
    service: &BillingService,
    failed: bool,
    business: Option<String>,
    after: Option<String>,
    limit: i64,
    json: bool,
) -> Result<ExitCode, Failure> {
    if limit < 1 {
        return Err(Failure::Usage(
            "invalid --limit: expected a positive number".into(),
        ));
    }
    if let Some(b) = &business {
        check_business(b)?;
    }
    let delivery = failed.then_some(Delivery::Dead);
    let mut filter = events_filter(
        after.as_deref(),
        business.as_deref(),
        delivery,
        limit.min(MAX_EVENTS_PAGE),
    )
    .map_err(|_| {
        Failure::Usage("invalid --after: expected a cursor such as 0.42 (a `next cursor`)".into())
    })?;
    // Read and printed a page at a time: memory stays one page whatever the stream's length.
    let mut out = EventStream::new(json);
    let mut left = limit;
    while left > 0 {
        filter.limit = left.min(MAX_EVENTS_PAGE);
        let page = service
            .events_page(&filter)
            .await
            .context("while reading events")?;
        left -= page.len() as i64;
        out.page(&page);
        let full = page.len() as i64 == filter.limit;
        if let Some(last) = page.last() {
            filter.after = Some(last.cursor());
        }
        if !full {
            break;
        }
    }
    let next = filter.after.unwrap_or_default().to_string();
    // Whether more follow, so the operator knows to continue rather than poll later.
    let more = left == 0
        && !service
            .events_page(&OutboundFilter {
                limit: 1,
                ..filter.clone()
            })
            .await
            .context("while reading events")?
            .is_empty();
    out.finish(&next, more);
    Ok(ExitCode::SUCCESS)
}

async fn replay(service: &BillingService, id: &str, json: bool) -> Result<ExitCode, Failure> {
    // An id is `gbe_` and hex; anything else is shown shortened and never sent to the database.
    let shown: String = id.chars().take(64).collect();
    let plausible = id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    let outcome = if plausible {
        service
            .replay_outbound(id)
            .await
            .context("while replaying the event")?
    } else {
        Replay::NotFound
    };
    let (status, delivery, code) = match outcome {
        Replay::Queued => ("queued", None, ExitCode::SUCCESS),
        Replay::NotFound => ("not_found", None, ExitCode::from(1)),
        Replay::NotDead(d) => ("not_dead", Some(d), ExitCode::from(1)),
    };
    if json {
        print_json(&serde_json::json!({"id": shown, "status": status, "delivery": delivery}));
    }
    match (status, delivery) {
        ("queued", _) if !json => {
            println!(
                "{shown}: queued for delivery again (sent by `serve` when delivery is configured)"
            )
        }
        ("not_found", _) => eprintln!("error: no event {shown}"),
        (_, Some(d)) => eprintln!(
            "error: event {shown} is {}, not dead-lettered: only a dead-lettered event is replayed \
             (`events redeliver --since` sends delivered events again)",
            d.as_str()
        ),
        _ => {}
    }
    Ok(code)
}

/// Events printed as they are read: a table (columns as wide as the first page needs, wider when a later
/// row needs it) or one JSON object `{"data": [...], "next_cursor", "more"}`.
struct EventStream {
    json: bool,
    widths: Option<Vec<usize>>,
    written: usize,
}

const HEADERS: [&str; 8] = [
    "EVENT",
    "CURSOR",
    "BUSINESS",
    "TYPE",
    "CREATED",
    "DELIVERY",
    "ATTEMPTS",
    "LAST ERROR",
];

/// One event as `--json` prints it: the envelope's fields plus where its delivery stands.
fn event_json(e: &OutboundEvent) -> serde_json::Value {
    serde_json::json!({
        "id": e.id,
        "cursor": e.cursor().to_string(),
        "business_id": e.business_id,
        "update_type": e.update_type,
        "timestamp": rfc3339(e.created_at),
        "delivery": e.delivery,
        "attempts": e.attempts,
        "next_attempt_ms": e.next_attempt_ms,
        "last_error": e.last_error,
        "delivered_at": e.delivered_at.map(rfc3339),
        "data": e.envelope()["data"],
    })
}

fn row(e: &OutboundEvent) -> Vec<String> {
    vec![
        e.id.clone(),
        e.cursor().to_string(),
        e.business_id.clone(),
        e.update_type.clone(),
        rfc3339(e.created_at),
        e.delivery.as_str().to_owned(),
        e.attempts.to_string(),
        // One line, short: a receiver's answer never spreads over the table.
        e.last_error
            .as_deref()
            .unwrap_or("-")
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(80)
            .collect(),
    ]
}

impl EventStream {
    fn new(json: bool) -> Self {
        Self {
            json,
            widths: None,
            written: 0,
        }
    }

    fn page(&mut self, events: &[OutboundEvent]) {
        let mut out = String::new();
        if self.json {
            for e in events {
                out.push_str(if self.written == 0 {
                    "{\n  \"data\": [\n    "
                } else {
                    ",\n    "
                });
                let item =
                    serde_json::to_string_pretty(&event_json(e)).unwrap_or_else(|_| "null".into());
                out.push_str(&item.replace('\n', "\n    "));
                self.written += 1;
            }
        } else {
            let rows: Vec<Vec<String>> = events.iter().map(row).collect();
            let first = self.widths.is_none();
            let widths = self
                .widths
                .get_or_insert_with(|| HEADERS.iter().map(|h| h.chars().count()).collect());
            for r in &rows {
                for (i, cell) in r.iter().enumerate() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
            let line = |cells: Vec<&str>| {
                let mut l = cells
                    .iter()
                    .zip(widths.iter())
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_owned();
                l.push('\n');
                l
            };
            if first {
                out.push_str(&line(HEADERS.to_vec()));
            }
            for r in &rows {
                out.push_str(&line(r.iter().map(String::as_str).collect()));
            }
            self.written += rows.len();
        }
        print!("{out}");
    }

    fn finish(mut self, next_cursor: &str, more: bool) {
        if self.json {
            let tail = format!(
                "\"next_cursor\": {},\n  \"more\": {more}\n}}",
                serde_json::Value::String(next_cursor.to_owned())
            );
            if self.written == 0 {
                println!("{{\n  \"data\": [],\n  {tail}");
            } else {
                println!("\n  ],\n  {tail}");
            }
            return;
        }
        if self.widths.is_none() {
            self.page(&[]);
        }
        if more {
            println!("next cursor: {next_cursor} (more events follow: --after {next_cursor})");
        } else {
            println!("next cursor: {next_cursor} (no more events yet)");
        }
    }
}

/// `--since`: Unix seconds, or an RFC 3339 time (`2026-12-05T10:00:00Z`, `…+02:00`, fractions ignored).
fn parse_since(s: &str) -> Result<i64, String> {
    let bad = || {
        format!(
            "invalid --since {:?}: expected an RFC 3339 time such as 2026-12-05T10:00:00Z, or Unix seconds",
            s.chars().take(40).collect::<String>()
        )
    };
    if !s.is_empty() && s.len() <= 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().map_err(|_| bad());
    }
    parse_rfc3339(s).ok_or_else(bad)
}

/// Unix seconds of an RFC 3339 date-time, without a date-time crate.
fn parse_rfc3339(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if !s.is_ascii() || b.len() < 20 || b.len() > 40 {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = &s[r];
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())
            .flatten()
    };
    let sep = |i: usize, c: &[u8]| c.contains(&b[i]);
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt ") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if !(1..=12).contains(&month)
        || day < 1
        || day > month_days[(month - 1) as usize]
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &s[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest.as_bytes() {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), _, _, b':', _, _] => {
            let (h, m) = (num_of(&rest[1..3])?, num_of(&rest[4..6])?);
            if h > 23 || m > 59 {
                return None;
            }
            let o = h * 3600 + m * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return None,
    };
    // Howard Hinnant's days_from_civil.
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset)
}

fn num_of(part: &str) -> Option<i64> {
    part.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| part.parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_reads_unix_seconds_and_rfc_3339_and_round_trips_with_the_formatter() {
        assert_eq!(parse_since("0"), Ok(0));
        assert_eq!(parse_since("1800000000"), Ok(1_800_000_000));
        assert_eq!(parse_since("2027-01-15T08:00:00Z"), Ok(1_800_000_000));
        assert_eq!(parse_since("2027-01-15t08:00:00.999z"), Ok(1_800_000_000));
        assert_eq!(parse_since("2027-01-15T10:30:00+02:30"), Ok(1_800_000_000));
        assert_eq!(parse_since("2027-01-15T05:00:00-03:00"), Ok(1_800_000_000));
        assert_eq!(parse_since("2024-02-29T00:00:00Z"), Ok(1_709_164_800));
        for t in [0, 951_782_400, 1_709_164_799, 1_800_000_000, 4_102_444_800] {
            assert_eq!(parse_since(&rfc3339(t)), Ok(t), "{t}");
        }
    }

    #[test]
    fn since_refuses_anything_else_with_a_short_message() {
        for bad in [
            "",
            "-1",
            "1e9",
            "yesterday",
            "2027-01-15",
            "2027-01-15T08:00:00",
            "2027-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2027-01-15T24:00:00Z",
            "2027-01-15T08:00:00+24:00",
            "2027-01-15T08:00:00.Z",
            "2027-01-15T08:00:00Zjunk",
            "２０２７-01-15T08:00:00Z",
            "99999999999999999999999",
        ] {
            assert!(parse_since(bad).is_err(), "{bad:?}");
        }
        let huge = "9".repeat(10_000);
        let message = parse_since(&huge).unwrap_err();
        assert!(message.len() < 200, "{message}");
    }
}
