//! The targets: `genesis-billing serve` (on SQLite, or one or more replicas on PostgreSQL) and the Python
//! baseline, each started as its own process on 127.0.0.1 with its own database.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hyper::header::HeaderValue;

use crate::events::business_key;
use crate::store::{PgDatabase, Store};
use crate::{mkdir, plural, SECRET};

/// One server process.
pub struct Proc {
    child: Child,
    pub addr: SocketAddr,
    /// Its stderr.
    pub log: PathBuf,
}

impl Proc {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its address as a `Host` header.
    pub fn host(&self) -> HeaderValue {
        HeaderValue::from_str(&self.addr.to_string()).expect("ascii")
    }

    /// Sends SIGTERM.
    fn terminate(&self) {
        // SIGTERM for a graceful stop (the workspace forbids unsafe code, so no libc::kill).
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
    }

    /// Waits up to `deadline` for the process to exit after `terminate`, then kills it.
    fn reap(&mut self, deadline: Instant) {
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        self.terminate();
        self.reap(Instant::now() + Duration::from_secs(10));
    }

    /// The last 20 lines of its log.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.alive() {
            self.stop();
        }
    }
}

/// A server under test: its processes, where it takes webhooks and where it stores them.
pub struct Target {
    /// As the tables name it.
    pub name: String,
    /// The server processes: one, or several replicas on one PostgreSQL database.
    pub procs: Vec<Proc>,
    /// Where it takes webhooks.
    pub path: &'static str,
    /// Where it stores them.
    pub store: Store,
    /// The table of stored events.
    pub table: &'static str,
    /// Counts the stored events not yet applied, where the target applies events after acknowledging them.
    pub backlog_sql: Option<&'static str>,
    /// Events the warm-up and measured phases had acknowledged, and requests whose fate is unknown
    /// (transport error or timeout: the server may have stored them).
    pub acked: u64,
    /// Requests whose fate is unknown.
    pub abandoned: u64,
}

impl Target {
    /// The process ids of its processes.
    pub fn pids(&self) -> Vec<u32> {
        self.procs.iter().map(Proc::pid).collect()
    }

    /// Stops every process: all are sent SIGTERM first, so replicas shut down side by side.
    pub fn stop(&mut self) {
        for p in &self.procs {
            p.terminate();
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut self.procs {
            p.reap(deadline);
        }
    }

    /// Every process still running.
    pub fn alive(&mut self) -> bool {
        self.procs.iter_mut().all(Proc::alive)
    }

    /// "" for a single process, else " 2" etc.: how notes name a replica.
    pub fn replica_label(&self, n: usize) -> String {
        if self.procs.len() > 1 {
            format!(" replica {}", n + 1)
        } else {
            String::new()
        }
    }
}

/// The `genesis-billing` binary built with this bench, on `database_url`, with nothing else from our
/// environment but `PATH`.
fn genesis_billing(database_url: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_genesis-billing"));
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url);
    command
}

/// Starts one `serve` process on `database_url` and waits for its listening line (on PostgreSQL the first
/// replica has run the migrations by then).
fn start_service_proc(dir: &Path, database_url: &str) -> Result<Proc, String> {
    let log = dir.join("service.log");
    let mut child = genesis_billing(database_url)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .env("GENESIS_ADMIN_TOKEN", "bench-admin-token-unused")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start genesis-billing: {e}"))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if let Some(rest) = line.strip_prefix("genesis-billing listening on http://") {
                let _ = tx.send(rest.trim().to_owned());
            }
        }
    });
    let addr = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(a) => a,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(format!(
                "genesis-billing printed no listening line; its log:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ));
        }
    };
    Ok(Proc {
        child,
        addr: addr.parse().map_err(|e| format!("{addr}: {e}"))?,
        log,
    })
}

/// Runs `command` (named `name` in errors) to its end; if it fails, its stderr after `failed`.
fn run_to_success(command: &mut Command, name: &str, failed: &str) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {name}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{failed}{}", String::from_utf8_lossy(&out.stderr)));
    }
    Ok(())
}

/// Creates `n` businesses, each with an active subscription, with `genesis-billing import` (no Stripe
/// needed): the businesses the events are about when `WEBHOOK_BENCH_BUSINESSES` is set.
fn import_businesses(dir: &Path, database_url: &str, n: usize) -> Result<(), String> {
    if n == 0 {
        return Ok(());
    }
    let records: serde_json::Map<String, serde_json::Value> = (0..n)
        .map(|i| {
            let b = business_key(i);
            (
                format!("bench-{b}"),
                serde_json::json!({
                    "business_name": format!("Bench {i}"),
                    "business_type": "saas",
                    "stripe_customer_id": format!("cus_Q{b}"),
                    "stripe_subscription_id": format!("sub_1Q{b}"),
                    "subscription_status": "active",
                    "monthly_price_usd": 29.0
                }),
            )
        })
        .collect();
    let file = dir.join("businesses.json");
    std::fs::write(&file, serde_json::Value::Object(records).to_string())
        .map_err(|e| e.to_string())?;
    run_to_success(
        genesis_billing(database_url).arg("import").arg(&file),
        "genesis-billing import",
        "genesis-billing import failed: ",
    )?;
    eprintln!("webhook_throughput: imported {n} businesses; the events are about them");
    Ok(())
}

/// The service on a SQLite file in `dir`.
pub fn start_service(dir: &Path, businesses: usize) -> Result<Target, String> {
    let db = dir.join("bench.db");
    let url = format!("sqlite://{}", db.display());
    import_businesses(dir, &url, businesses)?;
    let proc = start_service_proc(dir, &url)?;
    Ok(service_target(
        "genesis-billing".into(),
        vec![proc],
        Store::Sqlite(db),
    ))
}

/// `replicas` service processes on one PostgreSQL database, started one after the other; their logs go to
/// `dir/replica-N`.
pub fn start_service_postgres(
    dir: &Path,
    pg: &PgDatabase,
    replicas: usize,
    businesses: usize,
) -> Result<Target, String> {
    import_businesses(dir, &pg.url, businesses)?;
    let mut procs = Vec::with_capacity(replicas);
    for n in 1..=replicas {
        procs.push(start_service_proc(
            &mkdir(dir.join(format!("replica-{n}")))?,
            &pg.url,
        )?);
    }
    let name = format!(
        "genesis-billing (PostgreSQL, {replicas} replica{})",
        plural(replicas)
    );
    Ok(service_target(
        name,
        procs,
        Store::Postgres {
            url: pg.url.clone(),
        },
    ))
}

/// The service's target: its webhook path, its inbox table and its backlog query.
fn service_target(name: String, procs: Vec<Proc>, store: Store) -> Target {
    Target {
        name,
        procs,
        path: "/stripe/webhook",
        store,
        table: "webhook_event",
        backlog_sql: Some("SELECT count(*) FROM webhook_event WHERE status = 'pending'"),
        acked: 0,
        abandoned: 0,
    }
}

/// The Python baseline on a SQLite file in `dir`, once it answers `GET /health`.
pub fn start_baseline(dir: &Path, python: &str) -> Result<Target, String> {
    let scripts = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/bench");
    run_to_success(
        Command::new(python).args(["-c", "import fastapi, uvicorn, stripe"]),
        python,
        "the baseline needs its Python packages: pip install -r scripts/bench/requirements.txt\n",
    )?;
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let db = dir.join("baseline.db");
    let log = dir.join("baseline.log");
    // Started directly (no shell, one worker: uvicorn then serves in this very process), so the child's pid
    // is the process whose VmHWM is the receiver's peak RSS.
    let child = Command::new(python)
        .args(["-m", "uvicorn", "baseline_receiver:app", "--app-dir"])
        .arg(&scripts)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args([
            "--workers",
            "1",
            "--log-level",
            "warning",
            "--no-access-log",
        ])
        .env("BASELINE_DB", &db)
        .env("STRIPE_WEBHOOK_SECRET", SECRET)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).map_err(|e| e.to_string())?)
        .spawn()
        .map_err(|e| format!("cannot start the baseline: {e}"))?;
    let mut proc = Proc {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if !proc.alive() {
            return Err(format!(
                "the baseline exited; its log:\n{}",
                proc.log_tail()
            ));
        }
        if health_ok(proc.addr) {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the baseline never answered GET /health; its log:\n{}",
                proc.log_tail()
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(Target {
        name: "baseline (Python)".into(),
        procs: vec![proc],
        path: "/webhook",
        store: Store::Sqlite(db),
        table: "stripe_event",
        backlog_sql: None,
        acked: 0,
        abandoned: 0,
    })
}

/// `GET /health` answered 200, on a plain blocking socket.
fn health_ok(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut head = [0u8; 12];
    s.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.1 200")
}
