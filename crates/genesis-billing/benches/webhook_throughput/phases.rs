//! One target from start to report: a warm-up, the closed loop, the steady rates, and after each phase the
//! durability check (every 2xx so far must be a row another process can read); then peak RSS, the backlog,
//! what the server logged, and how the replicas shared the work.

use crate::backlog::backlog_notes;
use crate::events::Pool;
use crate::load::{run_phase, Mode, PhaseResult};
use crate::probes::proc_status_kb;
use crate::report::thousands;
use crate::settings::Opts;
use crate::store::count_rows;
use crate::targets::Target;

/// What one target did, for the report.
pub struct TargetReport {
    /// The target's name, as the tables show it.
    pub name: String,
    /// The closed loop.
    pub closed: PhaseResult,
    /// The open loops, one per steady rate.
    pub steady: Vec<PhaseResult>,
    /// Per server process (replica).
    pub peak_rss_kb: Vec<Option<u64>>,
    /// Rows stored at the end.
    pub rows: u64,
    /// 2xx answers over every phase, warm-up included.
    pub acked: u64,
    /// Requests whose fate is unknown (transport error or timeout).
    pub abandoned: u64,
    /// Every check found each 2xx stored.
    pub durability_ok: bool,
    /// How the database makes a commit durable, e.g. "journal mode wal".
    pub durability_setting: String,
    /// What the report lists under "Notes".
    pub notes: Vec<String>,
}

/// Counts the rows after a phase and checks them against what was acknowledged so far.
fn check_rows(target: &Target, python: &str) -> Result<(u64, bool), String> {
    let rows = count_rows(&target.store, target.table, python)?;
    // Every 2xx must be stored; a request abandoned by the client may or may not have been.
    let ok = rows >= target.acked && rows <= target.acked + target.abandoned;
    Ok((rows, ok))
}

/// Measures `target` (then stops it): the warm-up, the closed loop with `max_rate` × SECS pre-signed events,
/// then one open loop per rate in `steady_rates` (None: half the closed loop's rate).
pub async fn bench_target(
    mut target: Target,
    opts: &Opts,
    run: u16,
    steady_rates: &[Option<u64>],
    max_rate: u64,
) -> Result<TargetReport, String> {
    let threads = 2;
    let mut notes = Vec::new();
    let mut durability_ok = true;
    let mut phase_no = 0u8;
    let mut next_pool = |count: usize| {
        phase_no += 1;
        Pool::new(run, phase_no, count, threads, opts.businesses, opts.event)
    };

    eprintln!("[{}] warm-up {:.0} s", target.name, opts.warmup_secs);
    let warm = if opts.warmup_secs > 0.0 {
        let pool = next_pool((max_rate as f64 * opts.warmup_secs).ceil() as usize);
        Some(
            run_phase(
                &target,
                opts,
                pool,
                Mode::Closed {
                    secs: opts.warmup_secs,
                },
                "warm-up".into(),
            )
            .await?,
        )
    } else {
        None
    };
    let mut phases: Vec<PhaseResult> = Vec::new();
    let mut account =
        |target: &mut Target, r: &PhaseResult, notes: &mut Vec<String>| -> Result<(), String> {
            target.acked += r.tally.ok;
            target.abandoned += r.tally.abandoned();
            let (rows, ok) = check_rows(target, &opts.python)?;
            if !ok {
                durability_ok = false;
                notes.push(format!(
                    "DURABILITY MISMATCH after {}: {rows} rows, {} acknowledged, {} abandoned",
                    r.label, target.acked, target.abandoned
                ));
            }
            eprintln!(
                "[{}] {}: {} 2xx, {:.0}/s; rows {rows} vs acknowledged {}{}",
                target.name,
                r.label,
                r.tally.ok,
                r.per_sec(),
                target.acked,
                if r.ok_by_replica.len() > 1 {
                    format!(" (2xx per replica: {:?})", r.ok_by_replica)
                } else {
                    String::new()
                }
            );
            Ok(())
        };
    if let Some(w) = &warm {
        account(&mut target, w, &mut notes)?;
    }

    eprintln!(
        "[{}] closed loop: {} connections, {:.0} s",
        target.name, opts.conns, opts.secs
    );
    let pool = next_pool((max_rate as f64 * opts.secs).ceil() as usize);
    let closed = run_phase(
        &target,
        opts,
        pool,
        Mode::Closed { secs: opts.secs },
        format!("closed loop, {} connections", opts.conns),
    )
    .await?;
    if closed.pool_exhausted {
        notes.push(format!(
            "closed loop used all {} pre-signed events before {:.0} s: raise WEBHOOK_BENCH_MAX_RATE",
            (max_rate as f64 * opts.secs).ceil(),
            opts.secs
        ));
    }
    account(&mut target, &closed, &mut notes)?;

    for &rate in steady_rates {
        // A rate it can sustain: half of its closed-loop throughput, rounded down to a multiple of 10.
        let rate =
            rate.unwrap_or_else(|| ((closed.per_sec() / 2.0 / 10.0).floor() as u64 * 10).max(10));
        if !target.alive() {
            notes.push(format!("the process exited before the {rate}/s phase"));
            break;
        }
        eprintln!("[{}] steady {rate}/s for {:.0} s", target.name, opts.secs);
        let count = (rate as f64 * opts.secs).round() as usize;
        let pool = next_pool(count);
        let r = run_phase(
            &target,
            opts,
            pool,
            Mode::Open {
                rate,
                secs: opts.secs,
                grace: opts.grace,
            },
            format!("steady {rate}/s"),
        )
        .await?;
        if r.unsent() > 0 {
            notes.push(format!(
                "{} at {rate}/s fell behind: {} of {} scheduled events not sent by {:.0} s (its p99 is a lower bound)",
                target.name,
                r.unsent(),
                r.scheduled.unwrap_or(0),
                opts.secs + opts.grace.as_secs_f64()
            ));
        }
        account(&mut target, &r, &mut notes)?;
        phases.push(r);
    }
    let peak_rss_kb: Vec<Option<u64>> = target
        .pids()
        .into_iter()
        .map(|pid| proc_status_kb(pid, "VmHWM"))
        .collect();
    for n in 0..target.procs.len() {
        if !target.procs[n].alive() {
            notes.push(format!(
                "{} died during the run; its log:\n{}",
                if target.procs.len() > 1 {
                    format!("replica {}", n + 1)
                } else {
                    "the process".into()
                },
                target.procs[n].log_tail()
            ));
        }
    }
    let (rows, _) = check_rows(&target, &opts.python)?;
    let durability_setting = target.store.durability_setting(&opts.python);
    notes.extend(backlog_notes(&mut target, opts, rows));
    target.stop();
    notes.extend(log_notes(&target));
    if target.procs.len() > 1 {
        notes.extend(replica_split_notes(
            &target.name,
            std::iter::once(&closed).chain(&phases),
        ));
    }
    Ok(TargetReport {
        name: target.name.clone(),
        closed,
        steady: phases,
        peak_rss_kb,
        rows,
        acked: target.acked,
        abandoned: target.abandoned,
        durability_ok,
        durability_setting,
        notes,
    })
}

/// A note for each process that wrote to stderr: how many lines, and the last.
fn log_notes(target: &Target) -> Vec<String> {
    let mut notes = Vec::new();
    for (n, proc) in target.procs.iter().enumerate() {
        let log = std::fs::read_to_string(&proc.log).unwrap_or_default();
        let log_lines = log.lines().filter(|l| !l.trim().is_empty()).count();
        if log_lines > 0 {
            notes.push(format!(
                "{}{} wrote {log_lines} log lines on stderr; the last: {}",
                target.name,
                target.replica_label(n),
                log.lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim()
            ));
        }
    }
    notes
}

/// How evenly the fleet shared the work: per phase, each replica's 2xx and CPU.
fn replica_split_notes<'a>(
    name: &str,
    phases: impl Iterator<Item = &'a PhaseResult>,
) -> Vec<String> {
    phases
        .map(|p| {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            let split: Vec<String> = p
                .ok_by_replica
                .iter()
                .zip(&p.server_cpu_by_replica)
                .enumerate()
                .map(|(n, (ok, cpu))| {
                    format!(
                        "replica {}: {} 2xx, {:.0}% CPU",
                        n + 1,
                        thousands(*ok as f64),
                        100.0 * cpu / secs
                    )
                })
                .collect();
            format!("{name}, {}: {}", p.label, split.join("; "))
        })
        .collect()
}
