//! What is left to apply once the load stops. The service acknowledges an event once it is stored; events
//! about businesses it knows (`WEBHOOK_BENCH_BUSINESSES`) may still be applied after the 2xx, so the run
//! waits for them and says how long it took; events about unknown businesses are settled as they are
//! stored, so only what is still pending at the end is reported.

use std::time::{Duration, Instant};

use crate::report::thousands;
use crate::settings::Opts;
use crate::targets::Target;

/// How long the run waits for the backlog of events about known businesses.
const SETTLE_DEADLINE: Duration = Duration::from_secs(120);

/// Notes on the target's backlog after its last phase; `rows` is the events it stored.
pub fn backlog_notes(target: &mut Target, opts: &Opts, rows: u64) -> Vec<String> {
    match (target.backlog_sql, opts.businesses > 0) {
        (Some(sql), true) => settle_known_businesses(target, opts, sql),
        (Some(sql), false) => pending_at_end(target, opts, sql, rows)
            .into_iter()
            .collect(),
        (None, _) => Vec::new(),
    }
}

/// Events about known businesses are applied after their 2xx: how long until every one is settled, and the
/// stored events by status.
fn settle_known_businesses(target: &mut Target, opts: &Opts, sql: &str) -> Vec<String> {
    let started = Instant::now();
    let deadline = started + SETTLE_DEADLINE;
    let pending = |target: &Target| {
        target
            .store
            .scalar(sql, &opts.python)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
    };
    let at_end = pending(target);
    let mut left = at_end;
    while left.is_some_and(|n| n > 0) && Instant::now() < deadline && target.alive() {
        std::thread::sleep(Duration::from_millis(100));
        left = pending(target);
    }
    let mut notes = vec![format!(
        "{}: {} events pending when the last phase ended; {} {:.1} s later",
        target.name,
        at_end.map_or("?".into(), |n| thousands(n as f64)),
        match left {
            Some(0) => "all settled".to_owned(),
            Some(n) => format!("{} still pending", thousands(n as f64)),
            None => "pending count unreadable".to_owned(),
        },
        started.elapsed().as_secs_f64()
    )];
    let by_status: Vec<String> = ["applied", "ignored", "pending", "failed", "dead"]
        .into_iter()
        .filter_map(|status| {
            let n = target
                .store
                .scalar(
                    &format!("SELECT count(*) FROM webhook_event WHERE status = '{status}'"),
                    &opts.python,
                )
                .ok()?;
            Some(format!(
                "{status} {}",
                n.parse::<f64>().map_or(n, thousands)
            ))
        })
        .collect();
    notes.push(format!(
        "{}: stored events by status: {}",
        target.name,
        by_status.join(", ")
    ));
    notes
}

/// Acknowledged is not applied: how far applying lags behind at the end of the run.
fn pending_at_end(target: &Target, opts: &Opts, sql: &str, rows: u64) -> Option<String> {
    let pending = target.store.scalar(sql, &opts.python).ok()?;
    Some(format!(
        "{}: {} of {} stored events were still pending (stored, not yet applied) when the run ended",
        target.name,
        pending.parse::<f64>().map_or(pending.clone(), thousands),
        thousands(rows as f64)
    ))
}
