//! Webhook throughput benchmark (issue 4, "How it is checked"): `POST /stripe/webhook` of the release
//! `genesis-billing serve` driven on loopback with validly signed, distinct `customer.subscription.updated`
//! events of 2 KiB, against a baseline measured in the same run: the minimal Python receiver of the first
//! proposal (`scripts/bench/baseline_receiver.py`: FastAPI under uvicorn, `stripe.Webhook.construct_event`,
//! one SQLite insert and commit per event).
//!
//! ```text
//! pip install -r scripts/bench/requirements.txt
//! cargo bench -p genesis-billing --bench webhook_throughput
//! ```
//!
//! For each target, in turn (never both at once: the machine has 2 cores, shared by the load generator and
//! the server under test):
//! - a warm-up (closed loop, not reported, but its events count in the durability check);
//! - closed loop: C keep-alive HTTP/1.1 connections, each sending its next event as soon as the previous one
//!   is answered, for D seconds → events/s;
//! - open loop at a steady rate R: event i is scheduled at start + i/R; latency runs from the scheduled time
//!   whenever the generator is behind schedule (no coordinated omission), else from the moment it was sent
//!   (so a timer waking a little late is not charged to the server) → p50 / p99 / max;
//! - after each phase, the rows in the target's SQLite file are counted and compared with the 2xx answers:
//!   every acknowledged event must already be committed (read by another process while the server runs);
//! - peak RSS is `VmHWM` of the server process at the end.
//!
//! Settings (environment):
//! - `WEBHOOK_BENCH_SECS` (10): length of each measured phase.
//! - `WEBHOOK_BENCH_WARMUP_SECS` (1): closed-loop warm-up per target.
//! - `WEBHOOK_BENCH_CONNS` (64): concurrent connections.
//! - `WEBHOOK_BENCH_RATE` (5000): steady rate for both targets.
//! - `WEBHOOK_BENCH_BASELINE_RATE` (auto): a steady rate the baseline can sustain, measured besides RATE;
//!   by default half of what it did in its closed loop (rounded down to a multiple of 10).
//! - `WEBHOOK_BENCH_MAX_RATE` (60000), `WEBHOOK_BENCH_BASELINE_MAX_RATE` (15000): events pre-signed for a
//!   closed-loop phase are MAX_RATE × SECS; a phase that uses them all ends early and says so.
//! - `WEBHOOK_BENCH_GRACE_SECS` (5): an overloaded open loop stops sending this long after its schedule ends;
//!   what it did not send is reported as unsent.
//! - `WEBHOOK_BENCH_TIMEOUT_SECS` (10): per request.
//! - `WEBHOOK_BENCH_CLIENT_THREADS` (1): load-generator threads.
//! - `WEBHOOK_BENCH_BUSINESSES` (0): with N > 0, N businesses with active subscriptions are imported
//!   (`genesis-billing import`) before the service starts, and event i is about business i mod N, so the
//!   service applies it after its 2xx (an update of that business's record) instead of settling it as about
//!   an unknown business when storing it. The run then waits (up to 120 s) for every event to be settled and
//!   reports how long that took and the events by status.
//! - `WEBHOOK_BENCH_EVENT` (`customer.subscription.updated`): or `invoice.paid`, a paid renewal invoice of
//!   2 KiB that names its subscription and business under `parent.subscription_details`.
//! - `WEBHOOK_BENCH_PYTHON` (python3); `WEBHOOK_BENCH_SKIP_BASELINE=1` measures the service alone.
//! - `WEBHOOK_BENCH_PRINT_EVENT=1` prints one signed event and exits.
//! - `WEBHOOK_BENCH_DIR`: where the temporary databases go (default: the system temp dir). It must be a
//!   real disk for "durable" to mean anything; the file system type is printed.
//! - `WEBHOOK_BENCH_DATABASE` (sqlite): `postgres` runs the service on PostgreSQL instead (issue 6). A fresh
//!   database `gb_bench_<random>` is created for the run with `psql … -c 'CREATE DATABASE …'`, the service is
//!   started with `DATABASE_URL=postgres://…/gb_bench_<random>`, the durability check counts the rows with
//!   `psql … -tAc 'SELECT count(*) FROM webhook_event'`, and the database is dropped `WITH (FORCE)` at the
//!   end (also when the run fails). The Python baseline, a SQLite design, is not run in this mode.
//! - `WEBHOOK_BENCH_POSTGRES_URL` (`postgres://postgres@127.0.0.1:5432/postgres`): the admin connection
//!   `psql` uses to create and drop the database; the service's URL is this one with the database replaced.
//! - `WEBHOOK_BENCH_REPLICAS` (1; more only with `postgres`): `serve` processes on the one database. The
//!   closed loop's connections are split evenly between them (connection k goes to replica k mod N); in the
//!   open loop event i goes to replica i mod N, each replica with its share of the connections. Events/s and
//!   latencies are for the whole fleet, server CPU is the sum of the replicas, peak RSS is given per replica.
//!
//! Exit status: non-zero if a target acknowledged an event that is not in its database (or on a setup
//! failure). The goals are reported, not enforced: this is a benchmark, not a timed test.//!
//! Modules, in the order a run uses them: `settings` (the variables above), `events` (the signed event
//! pool), `targets` (the server processes) and `store` (their databases, read from outside), `load` (the
//! hyper load generator and one phase), `phases` (one target's warm-up, closed loop, steady rates and
//! durability checks) with `backlog` (what is left to apply after the 2xx), `probes` (CPU, RSS, disk from
//! /proc and friends) and `report` (the tables printed at the end).

// The event template is one large `json!` literal.
#![recursion_limit = "256"]

mod backlog;
mod events;
mod load;
mod phases;
mod probes;
mod report;
mod settings;
mod store;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;

use events::Pool;
use settings::Opts;
use store::PgDatabase;

/// The webhook signing secret both targets are started with.
const SECRET: &str = "whsec_bench_6f1d0c2a9b8e4f7da3c5e1b2";
/// The size of every event body, in bytes.
const BODY_SIZE: usize = 2048;

fn main() -> ExitCode {
    // `cargo bench` passes `--bench`; a filter argument is accepted and ignored.
    let opts = Opts::from_env();
    if std::env::var_os("WEBHOOK_BENCH_PRINT_EVENT").is_some() {
        let pool = Pool::new(0, 0, 1, 1, opts.businesses, opts.event);
        println!(
            "Stripe-Signature: {}",
            pool.signature_header(0).to_str().unwrap_or("")
        );
        println!("{}", String::from_utf8_lossy(&pool.body(0)));
        return ExitCode::SUCCESS;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.client_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    match runtime.block_on(run(opts)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("webhook_throughput: an acknowledged event was missing from a database");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("webhook_throughput: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The whole run: start the targets, measure each in turn, print the report; false on a durability mismatch.
async fn run(opts: Opts) -> Result<bool, String> {
    if opts.replicas > 1 && opts.postgres_admin.is_none() {
        return Err(format!(
            "WEBHOOK_BENCH_REPLICAS={} needs WEBHOOK_BENCH_DATABASE=postgres (replicas share one PostgreSQL database)",
            opts.replicas
        ));
    }
    let base = opts.dir.clone().unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&base).map_err(|e| e.to_string())?;
    let dir = tempfile::Builder::new()
        .prefix("webhook-bench-")
        .tempdir_in(&base)
        .map_err(|e| e.to_string())?;
    let run = fastrand::u16(..);
    eprintln!(
        "webhook_throughput: {} B events, {} connections, {} s phases, steady {}/s (baseline also {}); data in {}",
        BODY_SIZE,
        opts.conns,
        opts.secs,
        opts.rate,
        opts.baseline_rate
            .map_or("half its closed-loop rate".to_owned(), |r| format!("{r}/s")),
        dir.path().display()
    );

    // What was measured: the commit, and whether the working tree (which the binary was built from) differed.
    let commit = probes::git(&["rev-parse", "--short", "HEAD"]);
    let dirty = !probes::git(&["status", "--porcelain", "--untracked-files=no"]).is_empty();
    let revision = format!(
        "{commit}{}",
        if dirty { " (working tree dirty)" } else { "" }
    );
    let fsync_before = probes::fsync_probe(dir.path(), 1.0);
    // On PostgreSQL: a fresh database for this run, dropped when `pg` goes out of scope, which is after the
    // server processes have been stopped (they are stopped by `bench_target`, or dropped on an early return,
    // before this earlier-declared guard).
    let pg = match &opts.postgres_admin {
        Some(admin) => {
            let db = PgDatabase::create(admin)?;
            eprintln!(
                "webhook_throughput: PostgreSQL database {} ({} replica{})",
                db.name,
                opts.replicas,
                plural(opts.replicas)
            );
            Some(db)
        }
        None => None,
    };
    let postgres = pg
        .as_ref()
        .map(|db| store::describe_postgres(&db.url, &db.name));
    // Both processes are started first (a missing Python package fails before anything is measured), then
    // measured one after the other; the idle one uses no CPU.
    let service = match &pg {
        None => targets::start_service(&mkdir(dir.path().join("service"))?, opts.businesses)?,
        Some(db) => {
            targets::start_service_postgres(dir.path(), db, opts.replicas, opts.businesses)?
        }
    };
    let baseline = if opts.skip_baseline {
        None
    } else if pg.is_some() {
        eprintln!(
            "webhook_throughput: the Python baseline (one SQLite insert per event) is not run on PostgreSQL"
        );
        None
    } else {
        Some(targets::start_baseline(
            &mkdir(dir.path().join("baseline"))?,
            &opts.python,
        )?)
    };

    let mut reports = Vec::new();
    if let Some(b) = baseline {
        let mut rates = vec![opts.baseline_rate];
        if opts.baseline_rate != Some(opts.rate) {
            rates.push(Some(opts.rate));
        }
        reports.push(phases::bench_target(b, &opts, run, &rates, opts.baseline_max_rate).await?);
    }
    reports
        .push(phases::bench_target(service, &opts, run, &[Some(opts.rate)], opts.max_rate).await?);
    // Ours first in the table.
    reports.reverse();
    let fsync_after = probes::fsync_probe(dir.path(), 1.0);
    report::print_report(
        &opts,
        &reports,
        dir.path(),
        [fsync_before, fsync_after],
        &revision,
        postgres.as_deref(),
    );
    Ok(reports.iter().all(|r| r.durability_ok))
}

/// Creates `path` and its parents; the path back.
fn mkdir(path: PathBuf) -> Result<PathBuf, String> {
    std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

/// "s" unless `n` is 1: "1 replica", "2 replicas".
fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}
