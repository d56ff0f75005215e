//! Webhook delivery in the background: Stripe's signature scheme, one ordered queue per endpoint, retries with a configurable schedule, and optional duplicates and reordering.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::sync::mpsc;

use crate::clock::wall_now;
use crate::state::{Outgoing, State};

/// Delivery behaviour, set by `POST /_sim/webhooks`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookSettings {
    /// When false, nothing is delivered or queued (events are still recorded).
    pub enabled: bool,
    /// Chance that a delivery is sent twice.
    pub duplicate_probability: f64,
    /// Deliveries gathered and shuffled together (0 or 1: in order).
    pub reorder_window: usize,
    /// Waits before each retry after a failed attempt.
    pub retry_schedule_ms: Vec<u64>,
    /// How long an attempt may take before it counts as failed.
    pub timeout_ms: u64,
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            enabled: true,
            duplicate_probability: 0.0,
            reorder_window: 0,
            retry_schedule_ms: vec![1_000, 10_000, 60_000],
            timeout_ms: 5_000,
        }
    }
}

/// Delivery counters, reported by `GET /_sim/webhooks`.
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// HTTP attempts made.
    pub attempts: AtomicU64,
    /// Attempts answered with 2xx.
    pub delivered: AtomicU64,
    /// Attempts that failed (non-2xx, timeout, connection error).
    pub failed: AtomicU64,
    /// Deliveries abandoned after the last retry.
    pub abandoned: AtomicU64,
    /// Extra copies sent on purpose.
    pub duplicated: AtomicU64,
}

impl WebhookStats {
    /// The counters as JSON.
    pub fn to_json(&self) -> Value {
        json!({
            "attempts": self.attempts.load(Ordering::Relaxed),
            "delivered": self.delivered.load(Ordering::Relaxed),
            "failed": self.failed.load(Ordering::Relaxed),
            "abandoned": self.abandoned.load(Ordering::Relaxed),
            "duplicated": self.duplicated.load(Ordering::Relaxed),
        })
    }
}

/// One delivery of one event to one endpoint.
#[derive(Debug, Clone)]
struct Job {
    event_id: String,
    body: Arc<String>,
    url: String,
    secret: String,
    endpoint_id: String,
    duplicate: bool,
}

/// The `Stripe-Signature` header value for a body at a time: `t=…,v1=hex(HMAC-SHA256(secret, "{t}.{body}"))`.
pub fn signature_header(secret: &str, t: i64, body: &str) -> String {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(t.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let sig = mac.finalize().into_bytes();
    let mut hex = String::with_capacity(64);
    for b in sig {
        hex.push_str(&format!("{b:02x}"));
    }
    format!("t={t},v1={hex}")
}

/// Handle to the background deliverer.
#[derive(Debug, Clone)]
pub struct Webhooks {
    tx: mpsc::UnboundedSender<Outgoing>,
    /// Current settings.
    pub settings: Arc<Mutex<WebhookSettings>>,
    /// Counters.
    pub stats: Arc<WebhookStats>,
}

impl Webhooks {
    /// Starts the dispatcher task.
    pub fn start(state: Arc<Mutex<State>>) -> Webhooks {
        let (tx, rx) = mpsc::unbounded_channel();
        let settings = Arc::new(Mutex::new(WebhookSettings::default()));
        let stats = Arc::new(WebhookStats::default());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent("Stripe/1.0 (+https://stripe.com/docs/webhooks)")
            .build()
            .unwrap_or_default();
        let ctx = Ctx {
            client,
            settings: settings.clone(),
            stats: stats.clone(),
            state,
        };
        tokio::spawn(dispatch(rx, ctx));
        Webhooks {
            tx,
            settings,
            stats,
        }
    }

    /// Queues events for delivery; never blocks.
    pub fn send(&self, events: Vec<Outgoing>) {
        if events.is_empty() {
            return;
        }
        let enabled = self
            .settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .enabled;
        if !enabled {
            return;
        }
        for e in events {
            let _ = self.tx.send(e);
        }
    }
}

#[derive(Clone)]
struct Ctx {
    client: reqwest::Client,
    settings: Arc<Mutex<WebhookSettings>>,
    stats: Arc<WebhookStats>,
    state: Arc<Mutex<State>>,
}

impl Ctx {
    fn settings(&self) -> WebhookSettings {
        self.settings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

fn jobs_of(out: Outgoing, dup_p: f64, stats: &WebhookStats) -> Vec<Job> {
    let mut jobs = Vec::new();
    for t in out.targets {
        let job = Job {
            event_id: out.event_id.clone(),
            body: out.body.clone(),
            url: t.url,
            secret: t.secret,
            endpoint_id: t.endpoint_id,
            duplicate: false,
        };
        if dup_p > 0.0 && fastrand::f64() < dup_p {
            stats.duplicated.fetch_add(1, Ordering::Relaxed);
            jobs.push(Job {
                duplicate: true,
                ..job.clone()
            });
        }
        jobs.push(job);
    }
    jobs
}

async fn dispatch(mut rx: mpsc::UnboundedReceiver<Outgoing>, ctx: Ctx) {
    let mut queues: HashMap<String, mpsc::UnboundedSender<Job>> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let settings = ctx.settings();
        if !settings.enabled {
            continue;
        }
        let mut batch = jobs_of(first, settings.duplicate_probability, &ctx.stats);
        if settings.reorder_window > 1 {
            let deadline = tokio::time::Instant::now() + Duration::from_millis(50);
            while batch.len() < settings.reorder_window {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(o)) => {
                        batch.extend(jobs_of(o, settings.duplicate_probability, &ctx.stats))
                    }
                    _ => break,
                }
            }
            fastrand::shuffle(&mut batch);
        }
        for job in batch {
            let q = queues.entry(job.endpoint_id.clone()).or_insert_with(|| {
                let (tx, rx) = mpsc::unbounded_channel();
                tokio::spawn(endpoint_worker(rx, ctx.clone()));
                tx
            });
            let _ = q.send(job);
        }
    }
}

/// Delivers one endpoint's jobs in order; failures are retried on their own schedule without holding up the queue.
async fn endpoint_worker(mut rx: mpsc::UnboundedReceiver<Job>, ctx: Ctx) {
    while let Some(job) = rx.recv().await {
        if attempt(&ctx, &job).await {
            continue;
        }
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let schedule = ctx.settings().retry_schedule_ms;
            for wait in schedule {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                if !ctx.settings().enabled {
                    return;
                }
                if attempt(&ctx, &job).await {
                    return;
                }
            }
            ctx.stats.abandoned.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(event = %job.event_id, url = %job.url, "webhook delivery abandoned after the last retry");
        });
    }
}

/// One signed POST; true on 2xx.
async fn attempt(ctx: &Ctx, job: &Job) -> bool {
    let timeout = Duration::from_millis(ctx.settings().timeout_ms.max(1));
    ctx.stats.attempts.fetch_add(1, Ordering::Relaxed);
    let t = wall_now();
    let result = ctx
        .client
        .post(&job.url)
        .header("Content-Type", "application/json; charset=utf-8")
        .header(
            "Stripe-Signature",
            signature_header(&job.secret, t, &job.body),
        )
        .header("Accept", "*/*; q=0.5, application/xml")
        .header("Cache-Control", "no-cache")
        .timeout(timeout)
        .body(job.body.to_string())
        .send()
        .await;
    let ok = matches!(&result, Ok(r) if r.status().is_success());
    let result = match result {
        Ok(r) => Ok((r.status(), drain(r).await)),
        Err(e) => Err(e),
    };
    if ok {
        ctx.stats.delivered.fetch_add(1, Ordering::Relaxed);
        if !job.duplicate {
            let mut st = ctx.state.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some(e) = st.store.get_mut(&job.event_id) {
                let n = e["pending_webhooks"].as_u64().unwrap_or(0);
                e["pending_webhooks"] = json!(n.saturating_sub(1));
            }
        }
    } else {
        ctx.stats.failed.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((status, _)) => {
                tracing::debug!(event = %job.event_id, url = %job.url, status = status.as_u16(), "webhook delivery refused")
            }
            Err(e) => {
                tracing::debug!(event = %job.event_id, url = %job.url, error = %e, "webhook delivery failed")
            }
        }
    }
    ok
}

/// Reads the start of the receiver's answer and drops it, as Stripe keeps the start of it for the
/// dashboard; hanging up without reading would break the receiver's write of its body.
async fn drain(mut r: reqwest::Response) -> usize {
    const KEPT: usize = 64 << 10;
    let mut read = 0;
    while let Ok(Some(chunk)) = r.chunk().await {
        read += chunk.len();
        if read >= KEPT {
            break;
        }
    }
    read
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_follow_stripes_scheme() {
        // Expected value from Python: hmac.new(b"whsec_test", b"1700000000.{}", hashlib.sha256).hexdigest().
        let h = signature_header("whsec_test", 1_700_000_000, "{}");
        assert_eq!(
            h,
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }
}
