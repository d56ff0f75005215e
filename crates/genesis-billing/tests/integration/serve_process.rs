//! `genesis-billing serve` as a real process: secrets stay out of every response, log line and metric, and
//! SIGTERM stops it cleanly.

use crate::common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use genesis_billing::webhook::signature::sign;
use serde_json::json;

const KEY: &str = "sk_test_SERVEKEYqwertyDONOTLEAK";
const WEBHOOK_SECRET: &str = "whsec_SERVESECRETzxcvDONOTLEAK";
const ADMIN: &str = "admin-SERVETOKENasdfDONOTLEAK";
const LINK_SECRET: &str = "link-SERVELINKSECRETqwertDONOTLEAK";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_every_secret_out_of_responses_logs_and_metrics_and_stops_on_sigterm() {
    let sim = common::start_sim().await;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("serve.db").display());
    let env = [
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", sim.base_url()),
        ("DATABASE_URL", db),
        (
            "STRIPE_WEBHOOK_SECRET",
            format!("whsec_rotated_old,{WEBHOOK_SECRET}"),
        ),
        ("GENESIS_ADMIN_TOKEN", ADMIN.to_owned()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10".to_owned()),
        (
            "GENESIS_BILLING_LINK_SECRET",
            format!("{LINK_SECRET},link-rotated-old-secret-0123"),
        ),
        (
            "GENESIS_BILLING_PUBLIC_URL",
            "https://billing.example.test".to_owned(),
        ),
    ];
    common::run_ok(&env, &["prices", "sync"]);
    let mut child = common::bin(&env)
        .args(["-vvv", "serve", "--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    tokio::task::block_in_place(|| stdout.read_line(&mut line)).unwrap();
    let base = line.trim().rsplit(' ').next().unwrap().to_owned();
    assert!(base.starts_with("http://127.0.0.1:"), "{line}");

    let client = reqwest::Client::new();
    let mut bodies = Vec::new();
    let created = client
        .post(format!("{base}/v1/businesses"))
        .bearer_auth(ADMIN)
        .json(&json!({"name": "Serve", "business_type": "saas"}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let business: serde_json::Value = created.json().await.unwrap();
    bodies.push(business.to_string());
    let id = business["business_id"].as_str().unwrap();
    // A manage link handed out and opened (and a forged one): the token must not reach the logs.
    let link: serde_json::Value = client
        .post(format!("{base}/v1/businesses/{id}/manage-link"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = link["url"]
        .as_str()
        .unwrap()
        .split_once("?token=")
        .unwrap()
        .1
        .to_owned();
    let no_redirect = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let forged = format!("{}AAAA", &token[..token.len() - 4]);
    for (t, expected) in [(&token, 303), (&forged, 403)] {
        let r = no_redirect
            .get(format!("{base}/billing/manage?token={t}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), expected);
        bodies.push(format!("{:?}", r.headers()));
        bodies.push(r.text().await.unwrap());
    }
    for (method, path, token) in [
        (
            reqwest::Method::GET,
            format!("/v1/businesses/{id}"),
            Some(ADMIN),
        ),
        (
            reqwest::Method::GET,
            "/v1/businesses".to_owned(),
            Some("wrong"),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/businesses/{id}/checkout"),
            Some(ADMIN),
        ),
        (reqwest::Method::GET, "/health".to_owned(), None),
        (reqwest::Method::GET, "/openapi.json".to_owned(), None),
        (
            reqwest::Method::DELETE,
            format!("/v1/businesses/{id}"),
            Some(ADMIN),
        ),
    ] {
        let mut req = client.request(method, format!("{base}{path}"));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.unwrap();
        bodies.push(format!("{:?}", r.headers()));
        bodies.push(r.text().await.unwrap());
    }
    let event = json!({"id": "evt_serve", "object": "event", "type": "invoice.paid", "created": genesis_billing::store::now(), "data": {"object": {"id": "in_1"}}}).to_string();
    let t = genesis_billing::store::now();
    for signature in [
        sign(WEBHOOK_SECRET, t, event.as_bytes()),
        sign("whsec_wrong", t, event.as_bytes()),
        "garbage".to_owned(),
    ] {
        let r = client
            .post(format!("{base}/stripe/webhook"))
            .header("stripe-signature", signature)
            .body(event.clone())
            .send()
            .await
            .unwrap();
        bodies.push(r.text().await.unwrap());
    }
    bodies.push(
        client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
    );

    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "SIGTERM ends serve cleanly: {status:?}");
    let mut logs = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut logs).unwrap();
    assert!(logs.contains("served"), "request logs are on: {logs}");

    // The token's signature part: the credential of the link.
    for fragment in [&token[token.len() - 20..], &forged[forged.len() - 20..]] {
        assert!(!logs.contains(fragment), "a manage-link token in the logs");
    }
    for secret in [
        KEY,
        WEBHOOK_SECRET,
        ADMIN,
        "whsec_rotated_old",
        LINK_SECRET,
        "link-rotated-old-secret-0123",
    ] {
        let fragment = &secret[secret.len() - 12..];
        assert!(!logs.contains(fragment), "{secret} in the logs");
        for b in &bodies {
            assert!(!b.contains(fragment), "{secret} in a response: {b}");
        }
    }
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------
// Slow and hostile clients (issue 11): a real `serve` process, real sockets.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A `serve` process; killed when dropped.
struct Serve {
    child: std::process::Child,
    base: String,
    ops: Option<String>,
    logs: Arc<Mutex<String>>,
}

impl Serve {
    /// Starts `serve` with `env` (and nothing inherited that names a setting) and waits for its address.
    fn start(env: &[(&str, String)]) -> Self {
        let ops = env.iter().any(|(k, _)| *k == "GENESIS_BILLING_OPS_LISTEN");
        let mut child = common::bin(env)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let sink = logs.clone();
        std::thread::spawn(move || {
            let mut line = String::new();
            while stderr.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
                sink.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut read_url = || {
            let mut line = String::new();
            tokio::task::block_in_place(|| stdout.read_line(&mut line)).unwrap();
            let url = line.trim().rsplit(' ').next().unwrap_or("").to_owned();
            assert!(url.starts_with("http://127.0.0.1:"), "{line}");
            url
        };
        let base = read_url();
        let ops = ops.then(&mut read_url);
        Self {
            child,
            base,
            ops,
            logs,
        }
    }

    fn addr(&self) -> SocketAddr {
        self.base.trim_start_matches("http://").parse().unwrap()
    }

    /// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`).
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap()
    }

    /// Open file descriptors of the process.
    fn open_files(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Whether the log shows `needle` within `limit` (the log is read by a thread of its own).
    fn log_shows(&self, needle: &str, limit: Duration) -> bool {
        let started = Instant::now();
        while !self.logs().contains(needle) {
            if started.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        true
    }

    fn terminate(&self) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
    }

    /// Waits for the process to exit, up to `limit`; returns its status and how long it took.
    fn wait_exit(&mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < limit,
                "serve still running {limit:?} after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn sim_env(sim: &stripe_sim::SimHandle, database_url: String) -> Vec<(&'static str, String)> {
    vec![
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", sim.base_url()),
        ("DATABASE_URL", database_url),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
        ("GENESIS_ADMIN_TOKEN", ADMIN.to_owned()),
        ("GENESIS_BILLING_STRIPE_RETRY_BASE_MS", "10".to_owned()),
    ]
}

async fn sim() -> stripe_sim::SimHandle {
    common::start_sim().await
}

fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}", dir.path().join("serve.db").display())
}

/// A signed delivery of a fresh event; returns the status and how long it took.
async fn signed_webhook(client: &reqwest::Client, base: &str) -> (u16, Duration) {
    let id = format!("evt_{}", uuid::Uuid::new_v4().simple());
    let event = json!({"id": id, "object": "event", "type": "invoice.paid", "created": genesis_billing::store::now(), "data": {"object": {"id": "in_1"}}}).to_string();
    let started = Instant::now();
    let r = client
        .post(format!("{base}/stripe/webhook"))
        .header(
            "stripe-signature",
            sign(
                WEBHOOK_SECRET,
                genesis_billing::store::now(),
                event.as_bytes(),
            ),
        )
        .body(event)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), started.elapsed())
}

async fn timed_get(
    client: &reqwest::Client,
    url: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value, Duration) {
    let started = Instant::now();
    let mut req = client.get(url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body, started.elapsed())
}

/// Reads what the server sends until it closes the connection or `limit` passes; `None` on the latter.
async fn read_until_closed(stream: &mut TcpStream, limit: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(got),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn rejected_count(client: &reqwest::Client, base: &str, reason: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!("genesis_billing_webhook_rejected_total{{reason=\"{reason}\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

const WELL_FORMED_BAD_SIGNATURE: &str =
    "v1=0000000000000000000000000000000000000000000000000000000000000000";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_keeps_answering_while_hundreds_of_half_open_and_slow_connections_hold_sockets() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = sim_env(&sim, sqlite_url(&dir));
    env.extend([
        ("GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS", "1".to_owned()),
        ("GENESIS_BILLING_BODY_READ_TIMEOUT_SECS", "4".to_owned()),
        ("GENESIS_BILLING_MAX_CONNECTIONS", "1000".to_owned()),
        ("GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK", "32".to_owned()),
    ]);
    let serve = Serve::start(&env);
    let addr = serve.addr();
    let base = serve.base.clone();
    let client = reqwest::Client::new();
    // One of each first, so the baseline includes warmed-up pools and buffers.
    assert_eq!(
        timed_get(&client, &format!("{base}/health"), None).await.0,
        200
    );
    assert_eq!(signed_webhook(&client, &base).await.0, 200);
    let rss_before = serve.status_kib("VmRSS");
    let missing_before = rejected_count(&client, &base, "missing_signature").await;
    let too_large_before = rejected_count(&client, &base, "too_large").await;

    // 300 connections that send half a header and wait.
    let mut half = Vec::new();
    for _ in 0..300 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Ty")
            .await
            .unwrap();
        half.push(s);
    }
    let half_sent = Instant::now();
    // 100 that announce 960 KiB of unsigned body, send 64 KiB of it and wait.
    let mut unsigned = Vec::new();
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..100 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 983040\r\n\r\n")
            .await
            .unwrap();
        s.write_all(&chunk).await.unwrap();
        unsigned.push(s);
    }
    // 20 with a well-formed (wrong) signature that trickle their 1 MiB body at 10 KiB/s.
    let mut slow = Vec::new();
    for _ in 0..20 {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rd, mut wr) = s.into_split();
        let head = format!(
            "POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nStripe-Signature: t={},{WELL_FORMED_BAD_SIGNATURE}\r\nContent-Length: 1048576\r\n\r\n",
            genesis_billing::store::now()
        );
        let started = Instant::now();
        let writer = tokio::spawn(async move {
            wr.write_all(head.as_bytes()).await?;
            loop {
                wr.write_all(&[b' '; 1024]).await?;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            #[allow(unreachable_code)]
            Ok::<(), std::io::Error>(())
        });
        slow.push(tokio::spawn(async move {
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            loop {
                match tokio::time::timeout(Duration::from_secs(15), rd.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
                    Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
                }
            }
            writer.abort();
            (
                String::from_utf8_lossy(&got).into_owned(),
                started.elapsed(),
            )
        }));
    }

    // Everyone else is still served, promptly.
    let (status, health, took) = timed_get(&client, &format!("{base}/health"), None).await;
    assert_eq!(
        (status, health["database"].as_str()),
        (200, Some("ok")),
        "{health}"
    );
    assert!(took < Duration::from_secs(2), "health took {took:?}");
    let (status, took) = signed_webhook(&client, &base).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "webhook took {took:?}");
    let (status, _, took) = timed_get(&client, &format!("{base}/v1/businesses"), Some(ADMIN)).await;
    assert_eq!(status, 200);
    assert!(took < Duration::from_secs(2), "admin call took {took:?}");

    // A declared length over 1 MiB, and a chunked body that grows past it, are refused as too large.
    let mut declared = TcpStream::connect(addr).await.unwrap();
    declared
        .write_all(format!("POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,{WELL_FORMED_BAD_SIGNATURE}\r\nContent-Length: 5000000\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let answer = read_until_closed(&mut declared, Duration::from_secs(3))
        .await
        .expect("an over-long declared body is answered at once");
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let mut chunked = TcpStream::connect(addr).await.unwrap();
    chunked
        .write_all(format!("POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,{WELL_FORMED_BAD_SIGNATURE}\r\nTransfer-Encoding: chunked\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let piece = format!("10000\r\n{}\r\n", " ".repeat(0x10000));
    for _ in 0..17 {
        if chunked.write_all(piece.as_bytes()).await.is_err() {
            break;
        }
    }
    let answer = read_until_closed(&mut chunked, Duration::from_secs(3))
        .await
        .expect("a chunked body past 1 MiB is cut off");
    assert!(
        answer.starts_with(b"HTTP/1.1 413"),
        "{}",
        String::from_utf8_lossy(&answer)
    );

    // The unsigned bodies were refused from their header alone and their connections closed; they
    // would still be sending 896 KiB each otherwise.
    for s in &mut unsigned {
        let answer = read_until_closed(s, Duration::from_secs(2))
            .await
            .expect("an unsigned webhook is answered and closed without its body");
        assert!(
            answer.is_empty() || answer.starts_with(b"HTTP/1.1 401"),
            "{}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        rejected_count(&client, &base, "missing_signature").await - missing_before,
        100
    );
    assert_eq!(
        rejected_count(&client, &base, "too_large").await - too_large_before,
        2
    );

    // The half headers are closed once the header timeout (1 s) passes.
    for s in &mut half {
        let left = Duration::from_secs(4).saturating_sub(half_sent.elapsed());
        let answer = read_until_closed(s, left)
            .await
            .expect("a half-sent header is cut off after the header timeout");
        assert!(!answer.starts_with(b"HTTP/1.1 2"));
    }
    assert!(half_sent.elapsed() >= Duration::from_secs(1));

    // The trickling bodies get 408 once the body deadline (4 s) passes.
    for task in slow {
        let (answer, took) = task.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            took >= Duration::from_millis(3500) && took < Duration::from_secs(8),
            "408 after {took:?}"
        );
    }

    // Memory: each connection buffers at most 64 KiB (420 × 64 KiB ≈ 26 MiB in the worst case), the
    // trickled bodies hold ~40 KiB each, and no unsigned body is read. 64 MiB of growth leaves room for
    // allocator slack; on the landed main these 400 sockets took RSS from 85 MB to 444 MB.
    let peak = serve.status_kib("VmHWM");
    let growth_mib = peak.saturating_sub(rss_before) / 1024;
    eprintln!(
        "serve RSS before {} MiB, peak {} MiB (+{growth_mib} MiB) with 420 hostile connections",
        rss_before / 1024,
        peak / 1024
    );
    assert!(growth_mib < 64, "RSS grew by {growth_mib} MiB");

    // And all is well afterwards.
    assert_eq!(
        timed_get(&client, &format!("{base}/health"), None).await.0,
        200
    );
    drop(serve);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_bounds_open_sockets_and_queued_clients_are_served_later() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = sim_env(&sim, sqlite_url(&dir));
    env.extend([
        ("GENESIS_BILLING_HEADER_READ_TIMEOUT_SECS", "1".to_owned()),
        ("GENESIS_BILLING_MAX_CONNECTIONS", "50".to_owned()),
    ]);
    let serve = Serve::start(&env);
    let client = reqwest::Client::new();
    assert_eq!(
        timed_get(&client, &format!("{}/health", serve.base), None)
            .await
            .0,
        200
    );
    let files_before = serve.open_files();
    let mut silent = Vec::new();
    for _ in 0..200 {
        silent.push(TcpStream::connect(serve.addr()).await.unwrap());
    }
    // The health check queues behind them; the cap lets 50 in at a time and each waits out 1 s.
    let health = tokio::spawn({
        let url = format!("{}/health", serve.base);
        async move { timed_get(&reqwest::Client::new(), &url, None).await }
    });
    let mut most = 0;
    while !health.is_finished() {
        most = most.max(serve.open_files());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, _, took) = health.await.unwrap();
    assert_eq!(status, 200, "served once a slot was free (after {took:?})");
    assert!(
        most <= files_before + 50 + 8,
        "{most} descriptors open with a cap of 50 (baseline {files_before})"
    );
    drop(silent);
    drop(serve);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_silent_and_slow_connections_open_exits_within_the_grace_period() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = sim_env(&sim, sqlite_url(&dir));
    env.push(("GENESIS_BILLING_SHUTDOWN_GRACE_SECS", "3".to_owned()));
    let mut serve = Serve::start(&env);
    let client = reqwest::Client::new();
    assert_eq!(
        timed_get(&client, &format!("{}/health", serve.base), None)
            .await
            .0,
        200
    );
    // Silent: connected, nothing sent. Half: half a header. Both closed at once on SIGTERM.
    let mut silent = TcpStream::connect(serve.addr()).await.unwrap();
    let mut half = TcpStream::connect(serve.addr()).await.unwrap();
    half.write_all(b"GET /health HTTP/1.1\r\nHo").await.unwrap();
    // Let the server accept both before the signal.
    tokio::time::sleep(Duration::from_millis(200)).await;
    serve.terminate();
    let (status, took) = tokio::task::block_in_place(|| serve.wait_exit(Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    assert!(took < Duration::from_secs(2), "exit took {took:?}");
    assert!(read_until_closed(&mut silent, Duration::from_secs(1))
        .await
        .is_some());
    assert!(read_until_closed(&mut half, Duration::from_secs(1))
        .await
        .is_some());

    // A request in flight (its body trickling) is given the grace period, then cut off.
    let mut serve = Serve::start(&env);
    let mut slow = TcpStream::connect(serve.addr()).await.unwrap();
    slow.write_all(
        format!(
            "POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,{WELL_FORMED_BAD_SIGNATURE}\r\nContent-Length: 1000\r\n\r\nabc"
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    serve.terminate();
    let (status, took) = tokio::task::block_in_place(|| serve.wait_exit(Duration::from_secs(10)));
    assert!(status.success(), "{status:?}");
    assert!(
        took >= Duration::from_millis(2500) && took < Duration::from_secs(5),
        "exit took {took:?} with a 3 s grace"
    );
    assert!(
        serve.log_shows("shutdown grace over", Duration::from_secs(2)),
        "{}",
        serve.logs()
    );
    sim.shutdown().await;
}

// ---------------------------------------------------------------------------------------------------------
// /health: fixed codes, an answer within 2 s, a write probe.

/// Raw error text that must never reach a `/health` body.
const RAW: &[&str] = &[
    "error",
    "Invalid API Key",
    "DONOTLEAK",
    "not permitted",
    "password",
    "authentication",
    "refused",
    "locked",
];

fn assert_no_raw_text(body: &serde_json::Value) {
    let text = body.to_string();
    for raw in RAW {
        assert!(!text.contains(raw), "{raw:?} in /health: {text}");
    }
}

/// Polls `/health` until `done` holds for its body (each answer must come within 2 s), up to `limit`.
async fn health_until(
    client: &reqwest::Client,
    url: &str,
    limit: Duration,
    done: impl Fn(u16, &serde_json::Value) -> bool,
) -> (u16, serde_json::Value) {
    let started = Instant::now();
    loop {
        let (status, body, took) = timed_get(client, url, None).await;
        assert!(
            took < Duration::from_secs(2),
            "/health took {took:?}: {body}"
        );
        assert_no_raw_text(&body);
        if done(status, &body) {
            return (status, body);
        }
        assert!(
            started.elapsed() < limit,
            "/health never got there: {status} {body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_locked_sqlite_file_as_not_writable_within_2_seconds() {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(&sim_env(&sim, sqlite_url(&dir)));
    let client = reqwest::Client::new();
    let url = format!("{}/health", serve.base);
    health_until(&client, &url, Duration::from_secs(10), |s, b| {
        s == 200 && b["database"] == "ok"
    })
    .await;

    // Another connection holds the write lock, as a long import or a stuck writer would.
    let locker = rusqlite::Connection::open(dir.path().join("serve.db")).unwrap();
    locker.execute_batch("BEGIN IMMEDIATE").unwrap();
    // (A result less than a second old may be served first; each answer still comes within 2 s.)
    let (status, body) = health_until(&client, &url, Duration::from_secs(5), |s, _| s != 200).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["database"], "not_writable");

    locker.execute_batch("ROLLBACK").unwrap();
    health_until(&client, &url, Duration::from_secs(15), |s, b| {
        s == 200 && b["database"] == "ok"
    })
    .await;
    drop(serve);
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_a_fixed_code_for_a_refused_stripe_key_never_stripes_message() {
    // A Stripe that refuses the key, as api.stripe.com does (the simulator takes any test key).
    let fake = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let fake_base = format!("http://{}", fake.local_addr().unwrap());
    let fake_task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = fake.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut seen = Vec::new();
                let mut buf = [0u8; 4096];
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"error":{"message":"Invalid API Key provided: sk_test_****DONOTLEAK","type":"invalid_request_error"}}"#;
                let _ = s
                    .write_all(format!("HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).as_bytes())
                    .await;
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let env = vec![
        ("STRIPE_API_KEY", KEY.to_owned()),
        ("STRIPE_API_BASE", fake_base),
        ("DATABASE_URL", sqlite_url(&dir)),
        ("STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET.to_owned()),
    ];
    let serve = Serve::start(&env);
    let client = reqwest::Client::new();
    let (status, body) = health_until(
        &client,
        &format!("{}/health", serve.base),
        Duration::from_secs(10),
        |_, b| b["stripe"] != "unchecked",
    )
    .await;
    assert_eq!(status, 200, "the database is fine: {body}");
    assert_eq!(body["stripe"], "auth_failed");
    assert_eq!(body["status"], "degraded");
    assert_eq!(body["stripe_ready"], false);
    assert_eq!(body["catalog"], "unchecked");
    assert!(
        serve.log_shows("Stripe check failed", Duration::from_secs(5)),
        "the details go to the log"
    );
    drop(serve);
    fake_task.abort();
}

/// A TCP proxy in front of PostgreSQL that can turn hostile: forward, then accept and say nothing, then
/// stop listening. Every change cuts the connections it forwards.
struct PgProxy {
    addr: SocketAddr,
    mode: tokio::sync::watch::Sender<u8>,
}

const FORWARD: u8 = 0;
const SILENT: u8 = 1;
const CLOSED: u8 = 2;

impl PgProxy {
    async fn start(upstream: String) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, rx) = tokio::sync::watch::channel(FORWARD);
        tokio::spawn(async move {
            let mut stop = rx.clone();
            loop {
                let (client, _) = tokio::select! {
                    accepted = listener.accept() => match accepted { Ok(c) => c, Err(_) => continue },
                    _ = stop.wait_for(|m| *m == CLOSED) => return,
                };
                let mut changed = rx.clone();
                let mode = *changed.borrow_and_update();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let mut client = client;
                    if mode == FORWARD {
                        let Ok(mut server) = TcpStream::connect(&upstream).await else {
                            return;
                        };
                        tokio::select! {
                            _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                            _ = changed.changed() => {}
                        }
                    } else {
                        // Silent: hold the socket, answer nothing.
                        let _ = changed.wait_for(|m| *m == CLOSED).await;
                    }
                });
            }
        });
        Self { addr, mode }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_within_2_seconds_with_fixed_codes_when_postgres_refuses_hangs_or_goes_away()
{
    use sqlx::Connection as _;
    let admin_url = common::postgres::admin_url();
    let upstream = admin_url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let db = common::postgres::TestDatabase::create("gb_health").await;
    let role = format!("gb_health_role_{}", uuid::Uuid::new_v4().simple());
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    for sql in [
        format!("CREATE ROLE {role} LOGIN"),
        format!("ALTER DATABASE {} OWNER TO {role}", db.name),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let proxy = PgProxy::start(upstream).await;
    let sim = sim().await;
    let url = format!("postgres://{role}@{}/{}", proxy.addr, db.name);
    let serve = Serve::start(&sim_env(&sim, url));
    let client = reqwest::Client::new();
    let health = format!("{}/health", serve.base);
    let (_, body) = health_until(&client, &health, Duration::from_secs(10), |s, b| {
        s == 200 && b["database"] == "ok"
    })
    .await;
    assert_eq!(body["database_kind"], "postgres");

    // Read-only (as a standby or a full-disk safeguard would make it): reads work, the write probe fails.
    let terminate =
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'");
    for sql in [
        format!(
            "ALTER DATABASE {} SET default_transaction_read_only = on",
            db.name
        ),
        terminate.clone(),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    let (status, _) = health_until(&client, &health, Duration::from_secs(10), |_, b| {
        b["database"] == "not_writable"
    })
    .await;
    assert_eq!(status, 503);
    for sql in [
        format!(
            "ALTER DATABASE {} RESET default_transaction_read_only",
            db.name
        ),
        terminate.clone(),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    health_until(&client, &health, Duration::from_secs(10), |s, b| {
        s == 200 && b["database"] == "ok"
    })
    .await;

    // The role may no longer log in, and its sessions are ended: PostgreSQL refuses every new connection
    // with an error naming the role.
    for sql in [
        format!("ALTER ROLE {role} NOLOGIN"),
        format!("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"),
    ] {
        sqlx::query(&sql).execute(&mut admin).await.unwrap();
    }
    // (The first failures may be the ended sessions; then every new connection is refused, and the
    // refusal, naming the role, goes to the log.)
    let (status, body) = health_until(&client, &health, Duration::from_secs(10), |s, _| {
        s == 503 && serve.logs().contains("not permitted")
    })
    .await;
    assert_eq!(
        (status, body["database"].as_str()),
        (503, Some("unreachable")),
        "{body}"
    );
    assert!(!body.to_string().contains(&role), "{body}");

    // A server that accepts and never answers.
    sqlx::query(&format!("ALTER ROLE {role} LOGIN"))
        .execute(&mut admin)
        .await
        .unwrap();
    proxy.mode.send_replace(SILENT);
    let (status, body) = health_until(&client, &health, Duration::from_secs(10), |_, b| {
        b["database"] == "timeout"
    })
    .await;
    assert_eq!(status, 503, "{body}");

    // Nothing listens any more (the pool keeps retrying a refused connection, so this shows as a
    // timeout or as unreachable, either within 2 s).
    proxy.mode.send_replace(CLOSED);
    for _ in 0..3 {
        let (status, body, took) = timed_get(&client, &health, None).await;
        assert_eq!(status, 503, "{body}");
        assert!(
            ["timeout", "unreachable"].contains(&body["database"].as_str().unwrap()),
            "{body}"
        );
        assert!(took < Duration::from_secs(2), "{took:?}");
        assert_no_raw_text(&body);
    }

    drop(serve);
    drop(db);
    sqlx::query(&format!("DROP ROLE IF EXISTS {role}"))
        .execute(&mut admin)
        .await
        .unwrap();
    sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_move_to_the_ops_listener_and_require_the_metrics_token() {
    const METRICS_TOKEN: &str = "metrics-TOKENqwertyDONOTLEAK";
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = sim_env(&sim, sqlite_url(&dir));
    env.extend([
        ("GENESIS_BILLING_OPS_LISTEN", "127.0.0.1:0".to_owned()),
        ("GENESIS_BILLING_METRICS_TOKEN", METRICS_TOKEN.to_owned()),
    ]);
    let serve = Serve::start(&env);
    let ops = serve
        .ops
        .clone()
        .expect("the ops listener's address is printed");
    assert_ne!(ops, serve.base);
    let client = reqwest::Client::new();
    for path in ["/health", "/metrics"] {
        let main = client
            .get(format!("{}{path}", serve.base))
            .send()
            .await
            .unwrap();
        assert_eq!(main.status(), 404, "{path} is not on the main listener");
        for token in [None, Some("wrong"), Some(&METRICS_TOKEN[..10])] {
            let mut req = client.get(format!("{ops}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            assert_eq!(
                req.send().await.unwrap().status(),
                401,
                "{path} with {token:?}"
            );
        }
        let r = client
            .get(format!("{ops}{path}"))
            .bearer_auth(METRICS_TOKEN)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{path}");
    }
    let admin = client
        .get(format!("{ops}/v1/businesses"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(
        admin.status(),
        404,
        "the admin API is not on the ops listener"
    );
    assert_eq!(signed_webhook(&client, &serve.base).await.0, 200);
    assert!(!serve.logs().contains("DONOTLEAK"));
    drop(serve);

    // The token alone: same listener, closed to anyone without it.
    let env: Vec<_> = env
        .into_iter()
        .filter(|(k, _)| *k != "GENESIS_BILLING_OPS_LISTEN")
        .collect();
    let serve = Serve::start(&env);
    let open = client
        .get(format!("{}/health", serve.base))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), 401);
    let (status, _, _) = timed_get(
        &client,
        &format!("{}/health", serve.base),
        Some(METRICS_TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    drop(serve);
    sim.shutdown().await;
}

/// Sends a request head (it must announce a body) with `Expect: 100-continue`, waits for the server's
/// `100 Continue` — sent once the handler starts reading the body, so the request holds its in-flight slot
/// — then trickles a byte every 100 ms until the server answers; returns the final answer.
async fn trickle(addr: SocketAddr, head: String) -> tokio::task::JoinHandle<String> {
    let head = head.replacen("\r\n\r\n", "\r\nExpect: 100-continue\r\n\r\n", 1);
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), rd.read(&mut buf))
            .await
            .expect("an answer to the head")
            .unwrap();
        assert!(n > 0, "closed before any answer");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 100"),
        "expected 100 Continue: {}",
        String::from_utf8_lossy(&got)
    );
    let writer = tokio::spawn(async move {
        while wr.write_all(b" ").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    tokio::spawn(async move {
        let mut got = Vec::new();
        while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(20), rd.read(&mut buf)).await
        {
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        writer.abort();
        String::from_utf8_lossy(&got).into_owned()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_one_class_leaves_the_others_answering_and_bad_webhooks_are_refused_from_their_header(
) {
    let sim = sim().await;
    let dir = tempfile::tempdir().unwrap();
    let mut env = sim_env(&sim, sqlite_url(&dir));
    env.extend([
        ("GENESIS_BILLING_BODY_READ_TIMEOUT_SECS", "6".to_owned()),
        ("GENESIS_BILLING_MAX_IN_FLIGHT_WEBHOOK", "4".to_owned()),
        ("GENESIS_BILLING_MAX_IN_FLIGHT_ADMIN", "2".to_owned()),
    ]);
    let serve = Serve::start(&env);
    let (addr, base) = (serve.addr(), serve.base.clone());
    let client = reqwest::Client::new();
    assert_eq!(
        timed_get(&client, &format!("{base}/health"), None).await.0,
        200
    );

    // A missing or malformed signature is answered while the announced body has not been sent at all.
    for signature in [
        "",
        "Stripe-Signature: garbage\r\n",
        "Stripe-Signature: t=1,v1=xyz\r\n",
    ] {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("POST /stripe/webhook HTTP/1.1\r\nHost: x\r\n{signature}Content-Length: 900000\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let answer = read_until_closed(&mut s, Duration::from_secs(2))
            .await
            .expect("answered without the body");
        assert!(
            answer.starts_with(b"HTTP/1.1 401"),
            "{signature:?}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    assert_eq!(
        rejected_count(&client, &base, "malformed_signature").await,
        2
    );

    // Two trickling admin calls take the whole admin budget: the next admin call is told to come back...
    let mut admins = Vec::new();
    for _ in 0..2 {
        admins.push(trickle(addr, format!("POST /v1/businesses HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN}\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")).await);
    }
    let r = client
        .get(format!("{base}/v1/revenue"))
        .bearer_auth(ADMIN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503, "the admin budget is full");
    assert_eq!(r.headers()["retry-after"], "1");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "overloaded");
    // ...while webhooks and health answer.
    let (status, took) = signed_webhook(&client, &base).await;
    assert!(
        status == 200 && took < Duration::from_secs(2),
        "{status} {took:?}"
    );
    let (status, _, took) = timed_get(&client, &format!("{base}/health"), None).await;
    assert!(status == 200 && took < Duration::from_secs(2));
    // The trickles end with 408 once the body deadline passes.
    for a in admins {
        let answer = a.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("request_timeout"), "{answer}");
    }

    // Four trickling webhooks take the whole webhook budget: the next webhook is refused at once...
    let mut webhooks = Vec::new();
    for _ in 0..4 {
        webhooks.push(trickle(addr, format!("POST /stripe/webhook HTTP/1.1\r\nHost: x\r\nStripe-Signature: t=1,{WELL_FORMED_BAD_SIGNATURE}\r\nContent-Length: 100000\r\n\r\n")).await);
    }
    let busy = signed_webhook(&client, &base).await;
    assert_eq!(busy.0, 503, "the webhook budget is full");
    assert!(
        busy.1 < Duration::from_secs(1),
        "refused at once: {:?}",
        busy.1
    );
    // ...while health, metrics and the admin API answer.
    let (status, _, took) = timed_get(&client, &format!("{base}/health"), None).await;
    assert!(status == 200 && took < Duration::from_secs(2));
    let (status, _, took) = timed_get(&client, &format!("{base}/v1/businesses"), Some(ADMIN)).await;
    assert!(status == 200 && took < Duration::from_secs(2));
    for w in webhooks {
        let answer = w.await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    }
    assert_eq!(signed_webhook(&client, &base).await.0, 200);
    drop(serve);
    sim.shutdown().await;
}
