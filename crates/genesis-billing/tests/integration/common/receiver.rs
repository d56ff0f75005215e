//! A stand-in for the meta-agent's dashboard: a real HTTP server on 127.0.0.1 that takes
//! `POST /api/businesses/{id}/events`, verifies every `Genesis-Signature` with its own HMAC code (not the
//! service's), records every request, and can be scripted: 503 for the next N requests, 400 for a given
//! event, down (port closed) and up again on the same port.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

/// How far a signature's timestamp may be from the receiver's clock (Stripe's default tolerance).
const TOLERANCE_SECS: i64 = 300;

/// One request as the receiver saw it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The business id from the path, percent-decoded.
    pub path_business: String,
    /// `Genesis-Event-Id`.
    pub event_id: String,
    /// The raw body.
    pub body: String,
    /// The body parsed (Null if it was not JSON).
    pub envelope: Value,
    /// `Genesis-Signature`, as sent.
    pub signature: Option<String>,
    pub content_type: String,
    pub user_agent: String,
    /// What the receiver answered.
    pub status: u16,
}

impl Delivery {
    pub fn update_type(&self) -> &str {
        self.envelope["update_type"].as_str().unwrap_or("")
    }
}

#[derive(Default)]
struct Script {
    /// Requests still to be answered 503.
    fail_next: AtomicUsize,
    /// (business id, update type) pairs answered 400.
    refuse: Mutex<Vec<(String, String)>>,
}

struct Shared {
    secrets: Vec<String>,
    deliveries: Mutex<Vec<Delivery>>,
    script: Script,
    /// Requests whose signature did not verify (answered 401).
    bad_signatures: AtomicUsize,
    /// Businesses with a request in progress, to see two of one business at once.
    in_flight: Mutex<Vec<String>>,
    /// Requests that arrived while another of the same business was in progress.
    overlaps: AtomicUsize,
    /// How long each request takes to answer, in milliseconds (a slow receiver).
    delay_ms: std::sync::atomic::AtomicU64,
}

/// The receiver; dropping it leaves the server running until the test's runtime ends.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    stop: Mutex<
        Option<(
            tokio::sync::oneshot::Sender<()>,
            tokio::task::JoinHandle<()>,
        )>,
    >,
}

/// Hex HMAC-SHA256 of `"<t>.<body>"` with `secret`.
pub fn expected_signature(secret: &str, t: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(t.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `header` (`t=…,v1=…[,v1=…]`) carries a fresh `v1` of `body` made with `secret`.
pub fn verifies(header: &str, secret: &str, body: &[u8]) -> bool {
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        match part.split_once('=') {
            Some(("t", v)) => t = Some(v),
            Some(("v1", v)) => v1.push(v),
            _ => return false,
        }
    }
    let Some(t) = t else { return false };
    let Ok(ts) = t.parse::<i64>() else {
        return false;
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    if (now - ts).abs() > TOLERANCE_SECS {
        return false;
    }
    let want = expected_signature(secret, t, body);
    v1.contains(&want.as_str())
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    Path(business): Path<String>,
    headers: HeaderMap,
    body: String,
) -> (StatusCode, String) {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    {
        let mut busy = shared.in_flight.lock().unwrap();
        if busy.contains(&business) {
            shared.overlaps.fetch_add(1, Ordering::SeqCst);
        }
        busy.push(business.clone());
    }
    let delay = shared.delay_ms.load(Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    {
        let mut busy = shared.in_flight.lock().unwrap();
        let at = busy.iter().position(|b| *b == business).unwrap();
        busy.swap_remove(at);
    }
    let signature = header("genesis-signature");
    let envelope: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    let signed_ok = match &signature {
        None => shared.secrets.is_empty(),
        Some(h) => {
            !shared.secrets.is_empty()
                && shared
                    .secrets
                    .iter()
                    .any(|s| verifies(h, s, body.as_bytes()))
        }
    };
    let update_type = envelope["update_type"].as_str().unwrap_or("").to_owned();
    let (status, answer) = if !signed_ok {
        shared.bad_signatures.fetch_add(1, Ordering::SeqCst);
        (StatusCode::UNAUTHORIZED, "bad signature".to_owned())
    } else if shared
        .script
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "busy, try later".to_owned(),
        )
    } else if shared
        .script
        .refuse
        .lock()
        .unwrap()
        .iter()
        .any(|(b, t)| *b == business && *t == update_type)
    {
        // A long, hostile answer: control characters, and far more than the excerpt may keep.
        let noise = "REFUSED\u{1b}[31m\r\n\t".to_owned() + &"x".repeat(100_000);
        (StatusCode::BAD_REQUEST, noise)
    } else {
        (StatusCode::OK, "{\"ok\":true}".to_owned())
    };
    shared.deliveries.lock().unwrap().push(Delivery {
        path_business: business,
        event_id: header("genesis-event-id").unwrap_or_default(),
        body,
        envelope,
        signature,
        content_type: header("content-type").unwrap_or_default(),
        user_agent: header("user-agent").unwrap_or_default(),
        status: status.as_u16(),
    });
    (status, answer)
}

impl Receiver {
    /// A receiver verifying signatures with `secrets` (none: it requires unsigned requests), on a port
    /// of its own.
    pub async fn start(secrets: &[&str]) -> Self {
        let shared = Arc::new(Shared {
            secrets: secrets.iter().map(|s| s.to_string()).collect(),
            deliveries: Mutex::default(),
            script: Script::default(),
            bad_signatures: AtomicUsize::new(0),
            in_flight: Mutex::default(),
            overlaps: AtomicUsize::new(0),
            delay_ms: std::sync::atomic::AtomicU64::new(0),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let r = Self {
            addr,
            shared,
            stop: Mutex::new(None),
        };
        r.serve(listener);
        r
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let app = Router::new()
            .route("/api/businesses/{id}/events", post(receive))
            .with_state(self.shared.clone());
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        *self.stop.lock().unwrap() = Some((tx, task));
    }

    /// The base URL to configure as `GENESIS_DASHBOARD_URL`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Closes the port and every open connection: the receiver is down.
    pub async fn down(&self) {
        let stop = self.stop.lock().unwrap().take();
        if let Some((tx, task)) = stop {
            let _ = tx.send(());
            task.await.unwrap();
        }
    }

    /// Serves again on the same port.
    pub async fn up(&self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    /// Answers the next `n` requests with 503.
    pub fn fail_next(&self, n: usize) {
        self.shared.script.fail_next.store(n, Ordering::SeqCst);
    }

    /// Answers 400 to every event of `update_type` for `business`.
    pub fn refuse(&self, business: &str, update_type: &str) {
        self.shared
            .script
            .refuse
            .lock()
            .unwrap()
            .push((business.to_owned(), update_type.to_owned()));
    }

    /// Every request so far, in arrival order.
    pub fn all(&self) -> Vec<Delivery> {
        self.shared.deliveries.lock().unwrap().clone()
    }

    /// The requests answered 2xx, in arrival order.
    pub fn accepted(&self) -> Vec<Delivery> {
        self.all().into_iter().filter(|d| d.status == 200).collect()
    }

    /// The accepted events of one business, in arrival order.
    pub fn accepted_of(&self, business: &str) -> Vec<Delivery> {
        self.accepted()
            .into_iter()
            .filter(|d| d.path_business == business)
            .collect()
    }

    /// Answers every request `ms` milliseconds late.
    pub fn slow_down(&self, ms: u64) {
        self.shared.delay_ms.store(ms, Ordering::SeqCst);
    }

    /// Requests that arrived while another of the same business was still being answered.
    pub fn overlaps(&self) -> usize {
        self.shared.overlaps.load(Ordering::SeqCst)
    }

    /// Requests whose signature did not verify.
    pub fn bad_signatures(&self) -> usize {
        self.shared.bad_signatures.load(Ordering::SeqCst)
    }
}
