//! The report printed at the end: the setup, a summary table (one row per target and steady rate), a table
//! of every phase with the CPU each party used, the goals of issue 4, the durability checks and the notes.
//! Its format is what docs/benchmarks.md quotes.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use crate::load::PhaseResult;
use crate::phases::TargetReport;
use crate::probes::fs_type;
use crate::settings::Opts;
use crate::{plural, BODY_SIZE};

/// `n` rounded, with thousands separators: "21,346".
pub fn thousands(n: f64) -> String {
    let s = format!("{:.0}", n);
    let (sign, digits) = s.strip_prefix('-').map_or(("", s.as_str()), |d| ("-", d));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    format!("{sign}{out}")
}

/// A latency: "1.02 ms", "13.0 ms", or "–" when there was none.
fn ms(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v < 10.0 => format!("{v:.2} ms"),
        Some(v) => format!("{v:.1} ms"),
    }
}

/// What went wrong in a phase: non-2xx answers by status, transport errors, timeouts, unsent; "0" if nothing.
fn errors(r: &PhaseResult) -> String {
    let mut parts: Vec<String> = r
        .tally
        .statuses
        .iter()
        .map(|(s, n)| format!("{n}× {s}"))
        .collect();
    if r.tally.transport_errors > 0 {
        parts.push(format!("{} transport", r.tally.transport_errors));
    }
    if r.tally.timeouts > 0 {
        parts.push(format!("{} timeouts", r.tally.timeouts));
    }
    if r.unsent() > 0 {
        parts.push(format!("{} unsent", r.unsent()));
    }
    if parts.is_empty() {
        "0".into()
    } else {
        parts.join(", ")
    }
}

/// Prints the report on stdout. `postgres`: on PostgreSQL, a description of the database server (version,
/// address, data directory).
pub fn print_report(
    opts: &Opts,
    reports: &[TargetReport],
    dir: &Path,
    fsyncs: [Option<f64>; 2],
    revision: &str,
    postgres: Option<&str>,
) {
    let baseline = reports.iter().find(|r| r.name.starts_with("baseline"));
    let mut out = String::new();
    write_setup(&mut out, opts, dir, fsyncs, revision, postgres);
    write_summary(&mut out, opts, reports, baseline);
    write_phases(&mut out, reports, postgres);
    if let Some(ours) = reports
        .iter()
        .find(|r| r.name.starts_with("genesis-billing"))
    {
        write_goals(&mut out, opts, ours, baseline, postgres);
    }
    write_durability(&mut out, reports);
    write_notes(&mut out, reports);
    print!("{out}");
    let _ = std::io::stdout().flush();
}

/// The heading, the machine, the commit, the workload and the disk probes.
fn write_setup(
    out: &mut String,
    opts: &Opts,
    dir: &Path,
    fsyncs: [Option<f64>; 2],
    revision: &str,
    postgres: Option<&str>,
) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let databases = match postgres {
        None => {
            let _ = writeln!(out, "\n## Webhook throughput");
            format!("databases in {} ({})", dir.display(), fs_type(dir))
        }
        Some(pg) => {
            let _ = writeln!(
                out,
                "\n## Webhook throughput on PostgreSQL, {} replica{}",
                opts.replicas,
                plural(opts.replicas)
            );
            format!(
                "database on {pg}; server logs in {}{}",
                dir.display(),
                if opts.replicas > 1 {
                    format!(
                        "; {} replicas, the connections split evenly, steady-rate events alternating",
                        opts.replicas
                    )
                } else {
                    String::new()
                }
            )
        }
    };
    let _ = writeln!(
        out,
        "\ncommit {revision}; {cores} cores ({cpu}), shared by the load generator and the server{}; {databases}; \
         {} B signed `{}` events about {}; closed loop {} keep-alive connections for {} s; steady rates for {} s.\n",
        match postgres {
            None => "",
            Some(_) => " processes and PostgreSQL",
        },
        BODY_SIZE,
        opts.event.name(),
        match opts.businesses {
            0 => "businesses the service does not know (settled when stored)".to_owned(),
            n => format!("{} imported businesses (applied after the 2xx)", thousands(n as f64)),
        },
        opts.conns,
        opts.secs,
        opts.secs,
    );
    let probe = |v: Option<f64>| v.map_or("–".into(), thousands);
    let _ = writeln!(
        out,
        "Disk: {} / {} appends of {} B + fdatasync per second (1 s probes before / after the run).\n",
        probe(fsyncs[0]),
        probe(fsyncs[1]),
        BODY_SIZE
    );
}

/// One row per target and steady rate: events/s, against the baseline, latencies, errors, RSS, rows.
fn write_summary(
    out: &mut String,
    opts: &Opts,
    reports: &[TargetReport],
    baseline: Option<&TargetReport>,
) {
    let _ = writeln!(
        out,
        "| target | events/s (closed loop) | vs baseline | steady rate | p50 | p99 | max | errors | peak RSS | rows stored / 2xx |"
    );
    let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|---:|---|---:|---:|");
    for r in reports {
        let ratio = baseline
            .map(|b| format!("{:.1}×", r.closed.per_sec() / b.closed.per_sec().max(1e-9)))
            .unwrap_or_else(|| "–".into());
        let rss = rss_mb(&r.peak_rss_kb);
        let rows = format!(
            "{} / {}{}",
            thousands(r.rows as f64),
            thousands(r.acked as f64),
            if r.durability_ok { "" } else { " MISMATCH" }
        );
        for (n, s) in r.steady.iter().enumerate() {
            let _ = writeln!(
                out,
                "| {} | {} | {} | {}/s | {} | {} | {} | {} | {} | {} |",
                r.name,
                if n == 0 {
                    thousands(r.closed.per_sec())
                } else {
                    "″".into()
                },
                if n == 0 { ratio.clone() } else { "″".into() },
                thousands(s.scheduled.unwrap_or(0) as f64 / opts.secs),
                ms(s.percentile_ms(50.0)),
                ms(s.percentile_ms(99.0)),
                ms(s.max_ms()),
                errors(s),
                if n == 0 { rss.clone() } else { "″".into() },
                if n == 0 { rows.clone() } else { "″".into() },
            );
        }
    }
}

/// One row per phase, with the CPU of the server, the load generator, PostgreSQL and everything else.
fn write_phases(out: &mut String, reports: &[TargetReport], postgres: Option<&str>) {
    let _ = writeln!(out, "\nPhases:\n");
    let _ = writeln!(
        out,
        "| target | phase | 2xx | achieved/s | p50 | p99 | max | errors | server CPU | server CPU/event | load generator CPU |{} other processes' CPU |",
        if postgres.is_some() { " PostgreSQL CPU |" } else { "" }
    );
    let _ = writeln!(
        out,
        "|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|{}---:|",
        if postgres.is_some() { "---:|" } else { "" }
    );
    for r in reports {
        for p in std::iter::once(&r.closed).chain(&r.steady) {
            let secs = p.elapsed.as_secs_f64().max(1e-9);
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {:.0}% | {:.0} µs | {:.0}% |{} {:.0}% |",
                r.name,
                p.label,
                thousands(p.tally.ok as f64),
                thousands(p.per_sec()),
                ms(p.percentile_ms(50.0)),
                ms(p.percentile_ms(99.0)),
                ms(p.max_ms()),
                errors(p),
                100.0 * p.server_cpu / secs,
                1e6 * p.server_cpu / (p.tally.ok.max(1) as f64),
                100.0 * p.client_cpu / secs,
                p.postgres_cpu
                    .map_or(String::new(), |c| format!(" {:.0}% |", 100.0 * c / secs)),
                100.0 * p.other_cpu / secs,
            );
        }
    }
    let _ = writeln!(
        out,
        "\n(CPU as % of one core over the phase; 200% is the whole machine. \"Other processes\" is the rest of the \
         machine's busy time meanwhile: other programs, and kernel threads such as the file system's journal and \
         disk flushing on behalf of the server{}.)",
        if postgres.is_some() {
            " and PostgreSQL; \"PostgreSQL CPU\" is every `postgres` process (server and backends)"
        } else {
            ""
        }
    );
}

/// The goals of issue 4, met or not, for our service (`ours`).
fn write_goals(
    out: &mut String,
    opts: &Opts,
    ours: &TargetReport,
    baseline: Option<&TargetReport>,
    postgres: Option<&str>,
) {
    let steady = ours.steady.first();
    let (database, scope) = match postgres {
        None => ("SQLite", ""),
        Some(_) => (
            "PostgreSQL",
            ", set for one process on SQLite; shown for comparison",
        ),
    };
    let _ = writeln!(out, "\nGoals (issue 4{scope}):");
    let eps = ours.closed.per_sec();
    let _ = writeln!(
        out,
        "- ≥ 20,000 events/s durably stored with {database}: {} ({}/s)",
        yes(eps >= 20_000.0),
        thousands(eps)
    );
    match baseline {
        Some(b) => {
            let x = eps / b.closed.per_sec().max(1e-9);
            let _ = writeln!(
                out,
                "- ≥ 7× the baseline measured in the same run: {} ({x:.1}×)",
                yes(x >= 7.0)
            );
        }
        None => {
            let _ = writeln!(
                out,
                "- ≥ 7× the baseline: not measured (WEBHOOK_BENCH_SKIP_BASELINE)"
            );
        }
    }
    if let Some(s) = steady {
        let p99 = s.percentile_ms(99.0).unwrap_or(f64::INFINITY);
        let clean = s.unsent() == 0 && s.tally.non_2xx() == 0 && s.tally.abandoned() == 0;
        let _ = writeln!(
            out,
            "- p99 < 20 ms at a steady {}/s: {} ({})",
            thousands(s.scheduled.unwrap_or(0) as f64 / opts.secs),
            yes(p99 < 20.0 && clean),
            ms(Some(p99))
        );
    }
    if ours.peak_rss_kb.iter().all(Option::is_some) {
        let _ = writeln!(
            out,
            "- RSS < 50 MB{}: {} ({})",
            if ours.peak_rss_kb.len() > 1 {
                " per replica"
            } else {
                ""
            },
            yes(ours.peak_rss_kb.iter().flatten().all(|&kb| kb < 50 * 1024)),
            rss_mb(&ours.peak_rss_kb)
        );
    }
}

/// For each target: rows counted against 2xx answers and abandoned requests.
fn write_durability(out: &mut String, reports: &[TargetReport]) {
    let _ = writeln!(
        out,
        "\nDurability (rows counted by another process after each phase, while the server runs):"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "- {} ({}): {} rows, {} acknowledged, {} requests abandoned by the client: {}",
            r.name,
            r.durability_setting,
            thousands(r.rows as f64),
            thousands(r.acked as f64),
            r.abandoned,
            if r.durability_ok { "ok" } else { "MISMATCH" }
        );
    }
}

/// Every target's notes, and a warning when the rest of the machine was busy.
fn write_notes(out: &mut String, reports: &[TargetReport]) {
    let mut notes: Vec<String> = reports.iter().flat_map(|r| r.notes.clone()).collect();
    let busiest = reports
        .iter()
        .flat_map(|r| std::iter::once(&r.closed).chain(&r.steady))
        .map(|p| 100.0 * p.other_cpu / p.elapsed.as_secs_f64().max(1e-9))
        .fold(0.0f64, f64::max);
    if busiest > 10.0 {
        notes.push(format!(
            "other processes and kernel threads used up to {busiest:.0}% of a core during a phase (see the \
             phases table): if that was another program, the figures are lower than on a quiet machine"
        ));
    }
    if !notes.is_empty() {
        let _ = writeln!(out, "\nNotes:");
        for n in notes {
            let _ = writeln!(out, "- {n}");
        }
    }
}

/// Peak RSS of each process, e.g. "47.4 MB" or "47.4 MB, 45.9 MB".
fn rss_mb(kbs: &[Option<u64>]) -> String {
    kbs.iter()
        .map(|kb| kb.map_or("–".into(), |kb| format!("{:.1} MB", kb as f64 / 1024.0)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "yes", or "NO" to stand out.
fn yes(b: bool) -> &'static str {
    if b {
        "yes"
    } else {
        "NO"
    }
}
