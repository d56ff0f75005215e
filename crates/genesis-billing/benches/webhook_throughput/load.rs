//! The load generator: one hyper HTTP/1.1 client connection per simulated sender, driven closed-loop (send
//! on answer) or open-loop (on a schedule, latency from the scheduled time when behind); one phase of it,
//! with the CPU each party used meanwhile.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::client::conn::http1::SendRequest;
use hyper::header::{HeaderValue, CONTENT_TYPE, HOST};
use hyper::Request;
use hyper_util::rt::TokioIo;

use crate::events::Pool;
use crate::probes::{cpu_secs, machine_busy_secs, postgres_cpu_by_pid, postgres_cpu_since};
use crate::settings::Opts;
use crate::store::Store;
use crate::targets::Target;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

type Sender = SendRequest<Full<Bytes>>;

/// A keep-alive connection to `addr`, its driver spawned.
async fn connect(addr: SocketAddr) -> Result<Sender, BoxError> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// What the phase's requests were: everything the report needs.
#[derive(Default)]
pub struct Tally {
    /// 2xx answers.
    pub ok: u64,
    /// Other answers, by status.
    pub statuses: BTreeMap<u16, u64>,
    /// Requests that failed on the connection.
    pub transport_errors: u64,
    /// Requests not answered within `WEBHOOK_BENCH_TIMEOUT_SECS`.
    pub timeouts: u64,
    /// Latencies of the requests that got an answer, in microseconds.
    pub latencies: Vec<u32>,
    /// When the last request ended: the end of the phase.
    last_done: Option<Instant>,
}

impl Tally {
    /// Adds another connection's tally.
    fn merge(&mut self, other: Tally) {
        self.ok += other.ok;
        for (k, v) in other.statuses {
            *self.statuses.entry(k).or_default() += v;
        }
        self.transport_errors += other.transport_errors;
        self.timeouts += other.timeouts;
        self.latencies.extend(other.latencies);
        self.last_done = self.last_done.max(other.last_done);
    }

    /// Answers other than 2xx.
    pub fn non_2xx(&self) -> u64 {
        self.statuses.values().sum()
    }

    /// Requests whose fate is unknown: transport errors and timeouts.
    pub fn abandoned(&self) -> u64 {
        self.transport_errors + self.timeouts
    }

    /// Requests sent.
    fn sent(&self) -> u64 {
        self.ok + self.non_2xx() + self.abandoned()
    }
}

/// What every connection task of a phase reads.
struct Shared {
    pool: Pool,
    /// Address and `Host` header of each server process (replica).
    replicas: Vec<(SocketAddr, HeaderValue)>,
    path: &'static str,
    timeout: Duration,
    /// Closed loop: the next event, for every connection.
    next: AtomicU64,
    /// Open loop, per replica r: how many of its events (r, r + N, r + 2N, …) were taken.
    next_by_replica: Vec<AtomicU64>,
}

/// Sends event `i` on `conn` to replica `replica` (reconnecting if the connection was lost) and records the
/// outcome; `origin` is when the latency starts.
async fn send_one(
    shared: &Shared,
    replica: usize,
    conn: &mut Option<Sender>,
    i: usize,
    origin: Instant,
    tally: &mut Tally,
) {
    let attempt = async {
        // A connection the server closed while idle is replaced before sending: that is not an error.
        if let Some(sender) = conn.as_mut() {
            if sender.ready().await.is_err() {
                *conn = None;
            }
        }
        if conn.is_none() {
            let mut fresh = connect(shared.replicas[replica].0).await?;
            fresh.ready().await?;
            *conn = Some(fresh);
        }
        let sender = conn.as_mut().expect("connected");
        let request = Request::post(shared.path)
            .header(HOST, shared.replicas[replica].1.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header("stripe-signature", shared.pool.signature_header(i))
            .body(Full::new(shared.pool.body(i)))?;
        let response = sender.send_request(request).await?;
        let status = response.status();
        response.into_body().collect().await?;
        Ok::<_, BoxError>(status)
    };
    let result = tokio::time::timeout(shared.timeout, attempt).await;
    let done = Instant::now();
    match result {
        Ok(Ok(status)) => {
            if status.is_success() {
                tally.ok += 1;
            } else {
                *tally.statuses.entry(status.as_u16()).or_default() += 1;
            }
            tally.latencies.push(
                done.duration_since(origin)
                    .as_micros()
                    .min(u32::MAX as u128) as u32,
            );
        }
        Ok(Err(_)) => {
            tally.transport_errors += 1;
            *conn = None;
        }
        Err(_) => {
            tally.timeouts += 1;
            *conn = None;
        }
    }
    tally.last_done = Some(done);
}

/// How a phase sends.
#[derive(Clone, Copy)]
pub enum Mode {
    /// Each connection sends its next event as soon as the previous one is answered, until `secs`.
    Closed { secs: f64 },
    /// Event i scheduled at start + i/rate, for `secs`; nothing sent after `secs + grace`.
    Open {
        rate: u64,
        secs: f64,
        grace: Duration,
    },
}

/// One phase's requests and the CPU used meanwhile.
pub struct PhaseResult {
    /// How the report names the phase, e.g. "steady 5000/s".
    pub label: String,
    /// Its requests, latencies sorted.
    pub tally: Tally,
    /// From the start to the last answer.
    pub elapsed: Duration,
    /// Open loop: the events scheduled.
    pub scheduled: Option<u64>,
    /// Closed loop: every pre-signed event was sent before the time was up.
    pub pool_exhausted: bool,
    /// Summed over the replicas; per replica in `server_cpu_by_replica`.
    pub server_cpu: f64,
    /// CPU seconds of each server process.
    pub server_cpu_by_replica: Vec<f64>,
    /// 2xx answers from each replica.
    pub ok_by_replica: Vec<u64>,
    /// On PostgreSQL: CPU of the `postgres` processes during the phase.
    pub postgres_cpu: Option<f64>,
    /// CPU used by every other process on the machine during the phase (not the server, not us, not
    /// PostgreSQL when measured).
    pub other_cpu: f64,
    /// CPU seconds of this process, the load generator.
    pub client_cpu: f64,
}

impl PhaseResult {
    /// 2xx answers per second.
    pub fn per_sec(&self) -> f64 {
        self.tally.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
    /// Scheduled events the open loop did not send.
    pub fn unsent(&self) -> u64 {
        self.scheduled
            .map_or(0, |s| s.saturating_sub(self.tally.sent()))
    }
    /// The `p`th percentile latency (nearest rank), in ms.
    pub fn percentile_ms(&self, p: f64) -> Option<f64> {
        let l = &self.tally.latencies;
        if l.is_empty() {
            return None;
        }
        let rank = ((p / 100.0) * l.len() as f64).ceil() as usize;
        Some(l[rank.clamp(1, l.len()) - 1] as f64 / 1000.0)
    }
    /// The largest latency, in ms.
    pub fn max_ms(&self) -> Option<f64> {
        self.tally.latencies.last().map(|&v| v as f64 / 1000.0)
    }
}

/// Sends the events of `pool` to `target` as `mode` says, on `opts.conns` connections opened first.
pub async fn run_phase(
    target: &Target,
    opts: &Opts,
    pool: Pool,
    mode: Mode,
    label: String,
) -> Result<PhaseResult, String> {
    let conns = opts.conns;
    let n_replicas = target.procs.len();
    let shared = Arc::new(Shared {
        pool,
        replicas: target.procs.iter().map(|p| (p.addr, p.host())).collect(),
        path: target.path,
        timeout: opts.timeout,
        next: AtomicU64::new(0),
        next_by_replica: (0..n_replicas).map(|_| AtomicU64::new(0)).collect(),
    });
    // Connections are opened before the clock starts; connection k goes to replica k mod N.
    let mut senders = Vec::with_capacity(conns);
    for k in 0..conns {
        let replica = k % n_replicas;
        senders.push((
            replica,
            connect(shared.replicas[replica].0)
                .await
                .map_err(|e| format!("{}: cannot connect: {e}", target.name))?,
        ));
    }
    let pids: Vec<String> = target.pids().iter().map(u32::to_string).collect();
    let exhausted = Arc::new(AtomicBool::new(false));
    let on_postgres = matches!(target.store, Store::Postgres { .. });
    let postgres_cpu0 = on_postgres.then(postgres_cpu_by_pid);
    let machine0 = machine_busy_secs();
    let server_cpu0: Vec<f64> = pids.iter().map(|p| cpu_secs(p)).collect();
    let client_cpu0 = cpu_secs("self");
    let start = Instant::now();
    let scheduled = match mode {
        Mode::Open { rate, secs, .. } => Some((rate as f64 * secs).round() as u64),
        Mode::Closed { .. } => None,
    };
    let mut handles = Vec::with_capacity(conns);
    for (replica, sender) in senders {
        let shared = shared.clone();
        let exhausted = exhausted.clone();
        handles.push(tokio::spawn(async move {
            let mut conn = Some(sender);
            let mut tally = Tally::default();
            match mode {
                Mode::Closed { secs } => {
                    tally.latencies.reserve(4096);
                    let end = start + Duration::from_secs_f64(secs);
                    loop {
                        if Instant::now() >= end {
                            break;
                        }
                        let i = shared.next.fetch_add(1, Ordering::Relaxed) as usize;
                        if i >= shared.pool.len() {
                            exhausted.store(true, Ordering::Relaxed);
                            break;
                        }
                        send_one(&shared, replica, &mut conn, i, Instant::now(), &mut tally).await;
                    }
                }
                Mode::Open { rate, secs, grace } => {
                    let total = (rate as f64 * secs).round() as u64;
                    let interval_ns = 1e9 / rate as f64;
                    let stop = start + Duration::from_secs_f64(secs) + grace;
                    // This replica's events: replica, replica + N, replica + 2N, … (so with one
                    // replica, every event in order).
                    let n = n_replicas as u64;
                    loop {
                        let i = replica as u64
                            + n * shared.next_by_replica[replica].fetch_add(1, Ordering::Relaxed);
                        if i >= total || Instant::now() >= stop {
                            break;
                        }
                        let scheduled =
                            start + Duration::from_nanos((i as f64 * interval_ns) as u64);
                        let origin = if Instant::now() < scheduled {
                            // On time: wait for the slot, and measure from the moment of sending, so the
                            // timer's millisecond granularity is not counted as server latency.
                            tokio::time::sleep_until(tokio::time::Instant::from_std(scheduled))
                                .await;
                            Instant::now()
                        } else {
                            // Behind schedule (every connection was busy): the wait counts.
                            scheduled
                        };
                        send_one(&shared, replica, &mut conn, i as usize, origin, &mut tally).await;
                    }
                }
            }
            (replica, tally)
        }));
    }
    let mut tally = Tally::default();
    let mut ok_by_replica = vec![0u64; n_replicas];
    for h in handles {
        let (replica, t) = h.await.map_err(|e| format!("load generator task: {e}"))?;
        ok_by_replica[replica] += t.ok;
        tally.merge(t);
    }
    let server_cpu_by_replica: Vec<f64> = pids
        .iter()
        .zip(&server_cpu0)
        .map(|(p, c0)| cpu_secs(p) - c0)
        .collect();
    let server_cpu: f64 = server_cpu_by_replica.iter().sum();
    let machine = machine_busy_secs() - machine0;
    let postgres_cpu = postgres_cpu0.as_ref().map(postgres_cpu_since);
    let client_cpu = cpu_secs("self") - client_cpu0;
    tally.latencies.sort_unstable();
    let elapsed = tally.last_done.unwrap_or(start).duration_since(start);
    Ok(PhaseResult {
        label,
        tally,
        elapsed,
        scheduled,
        pool_exhausted: exhausted.load(Ordering::Relaxed),
        server_cpu,
        server_cpu_by_replica,
        ok_by_replica,
        postgres_cpu,
        other_cpu: (machine - server_cpu - client_cpu - postgres_cpu.unwrap_or(0.0)).max(0.0),
        client_cpu,
    })
}
