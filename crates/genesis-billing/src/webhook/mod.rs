//! The webhook inbox: verify, store by event id, acknowledge, apply — plus background retries of failed
//! applies and gap fill from Stripe's event list.

pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::billing::{Applied, BillingError, BillingService, HANDLED_EVENTS};
use crate::store::{now, EventResult, NewEvent, StoredEvent};
use crate::stripe::{Call, Form};
pub use signature::Rejection;

/// Largest webhook body accepted (SPEC §1.4).
pub const MAX_BODY: usize = 1 << 20;

/// Applies after which a failing event is dead-lettered and only `webhooks replay` retries it.
const MAX_ATTEMPTS: i64 = 8;

/// Events waiting to be committed; beyond this, deliveries wait (back-pressure instead of memory growth).
const COMMIT_QUEUE: usize = 8192;

/// Most events written in one transaction.
const MAX_BATCH: usize = 512;

/// What became of a delivery that passed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored now; it is applied right after.
    Stored,
    /// Already stored by an earlier delivery: acknowledged, not applied again.
    Duplicate,
}

/// Why a delivery was not acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReceiveError {
    /// The delivery is refused (4xx); nothing was stored.
    Rejected(Rejection),
    /// Our database failed; Stripe should deliver again (5xx).
    Unavailable,
}

/// An event to store, its applier lane, and where to answer once it is on disk.
type CommitRequest = (NewEvent, usize, oneshot::Sender<Result<bool, ()>>);

/// Appliers working side by side; each takes the events of its share of customers, in order.
const APPLY_LANES: usize = 4;

/// Stored events waiting for the applier in memory. Beyond this, new events are stored unleased and
/// `retry_due` applies them from the database, so memory stays bounded under any burst.
const APPLY_QUEUE: usize = 4096;

/// The part of a Stripe event the receiver checks before storing it.
#[derive(serde::Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    /// Required to hold an object; read only for the customer it concerns.
    data: EnvelopeData,
}

#[derive(serde::Deserialize)]
struct EnvelopeData {
    object: AnyObject,
}

/// Any JSON object, skipped without building it, except the fields that say which customer it concerns.
#[derive(Default)]
struct AnyObject {
    customer: Option<String>,
    id: Option<String>,
    object: Option<String>,
}

impl AnyObject {
    /// The customer an object concerns (its `customer`, or itself for a customer), for routing.
    fn customer_key(&self) -> Option<&str> {
        match (&self.customer, self.object.as_deref()) {
            (Some(c), _) => Some(c),
            (None, Some("customer")) => self.id.as_deref(),
            _ => None,
        }
    }
}

impl<'de> serde::Deserialize<'de> for AnyObject {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AnyObject;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<AnyObject, A::Error> {
                let mut found = AnyObject::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match &*key {
                        "customer" => &mut found.customer,
                        "id" => &mut found.id,
                        "object" => &mut found.object,
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            continue;
                        }
                    };
                    // An expanded object or a null is not a routing key; skip it.
                    *slot = match map.next_value::<Value>()? {
                        Value::String(v) => Some(v),
                        _ => None,
                    };
                }
                Ok(found)
            }
        }
        d.deserialize_map(Visitor)
    }
}

/// Which applier lane an event goes to: events about one customer keep their order in one lane.
fn lane_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % APPLY_LANES as u64) as usize
}

/// The webhook receiver and its background work.
///
/// One committer task writes every event waiting at that moment in one transaction (group commit): each
/// response is held until its own event is on disk, and one disk sync serves many events. The event is
/// acknowledged once stored — the durable record is what Stripe's retry would otherwise provide — and then
/// applied in arrival order by one applier task. A crash between the two leaves it `pending`, and
/// `retry_due` applies it after restart.
pub struct Inbox {
    applier: Arc<Applier>,
    secrets: Vec<SecretString>,
    tolerance: i64,
    commits: mpsc::Sender<CommitRequest>,
}

/// Applies stored events; a lease in the database keeps two workers off one event.
struct Applier {
    service: Arc<BillingService>,
    lease: Duration,
}

impl Inbox {
    /// Starts the committer and applier tasks; they stop when the inbox is dropped.
    pub fn new(
        service: Arc<BillingService>,
        secrets: Vec<SecretString>,
        tolerance_secs: i64,
    ) -> Self {
        let applier = Arc::new(Applier {
            service,
            lease: Duration::from_secs(60),
        });
        let (commits, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        // Events this inbox stores are leased to it until applied, under this owner id.
        let owner: Arc<str> = uuid::Uuid::new_v4().to_string().into();
        let (outcomes, outcome_rx) = mpsc::unbounded_channel();
        let mut lanes = Vec::with_capacity(APPLY_LANES);
        for _ in 0..APPLY_LANES {
            let (lane, lane_rx) = mpsc::channel(APPLY_QUEUE / APPLY_LANES);
            tokio::spawn(apply_loop(applier.clone(), lane_rx, outcomes.clone()));
            lanes.push(lane);
        }
        tokio::spawn(commit_loop(
            applier.service.clone(),
            owner,
            applier.lease,
            commit_rx,
            lanes,
            outcome_rx,
        ));
        Self {
            applier,
            secrets,
            tolerance: tolerance_secs,
            commits,
        }
    }

    pub fn has_secret(&self) -> bool {
        !self.secrets.is_empty()
    }

    fn service(&self) -> &BillingService {
        &self.applier.service
    }

    fn reject(&self, r: Rejection) -> ReceiveError {
        self.service()
            .metrics()
            .inc("genesis_billing_webhook_rejected_total", &[r.reason()]);
        tracing::warn!(reason = r.reason(), "webhook rejected");
        ReceiveError::Rejected(r)
    }

    /// Handles one delivery: `Ok` only once the event is durably stored.
    pub async fn receive(
        &self,
        signature: Option<&str>,
        body: &[u8],
    ) -> Result<Received, ReceiveError> {
        if body.len() > MAX_BODY {
            return Err(self.reject(Rejection::TooLarge));
        }
        signature::verify(signature, body, &self.secrets, now(), self.tolerance)
            .map_err(|r| self.reject(r))?;
        // Only the envelope is read here; the applier reads the object itself.
        let Ok(Envelope {
            id,
            kind,
            created,
            data,
        }) = serde_json::from_slice::<Envelope>(body)
        else {
            return Err(self.reject(Rejection::BadPayload));
        };
        if !id.starts_with("evt_") || id.len() > 255 || kind.len() > 255 {
            return Err(self.reject(Rejection::BadPayload));
        }
        let lane = lane_of(data.object.customer_key().unwrap_or(&id));
        // serde_json accepted the body, so it is valid UTF-8.
        let payload = String::from_utf8_lossy(body).into_owned();
        let new = NewEvent {
            id,
            event_type: kind.clone(),
            created,
            source: "webhook",
            payload,
        };
        let (reply, stored) = oneshot::channel();
        self.commits
            .send((new, lane, reply))
            .await
            .map_err(|_| ReceiveError::Unavailable)?;
        match stored.await {
            Ok(Ok(true)) => Ok(Received::Stored),
            Ok(Ok(false)) => {
                self.service().metrics().inc(
                    "genesis_billing_webhook_events_total",
                    &[&kind, "duplicate"],
                );
                Ok(Received::Duplicate)
            }
            _ => Err(ReceiveError::Unavailable),
        }
    }

    /// Applies a stored event now unless another worker holds it (`webhooks replay`, tests).
    pub async fn apply(&self, id: &str) {
        self.applier.apply(id).await;
    }

    /// Retries every event whose backoff has passed (and any left pending by a crash).
    pub async fn retry_due(&self) -> usize {
        let due: Vec<StoredEvent> = match self.service().store().due_events(200).await {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot list due webhook events");
                return 0;
            }
        };
        for e in &due {
            self.applier.apply(&e.event_id).await;
        }
        due.len()
    }

    /// Reads Stripe's event list since the newest stored event and applies what webhooks missed.
    pub async fn gap_fill(&self) -> Result<usize, BillingError> {
        let service = self.service();
        let stripe = service.stripe()?;
        // A minute of overlap: events created in the same second as the newest one may not all be stored.
        let since = match service.store().newest_event_created().await? {
            Some(t) => t - 60,
            None => now() - 3600,
        };
        let mut missed = 0;
        let mut after: Option<String> = None;
        for _page in 0..50 {
            let query = Form::new()
                .add("created[gte]", since.to_string())
                .add("limit", "100")
                .add_list("types", HANDLED_EVENTS.iter().copied())
                .add_opt("starting_after", after.clone());
            let page = stripe
                .send(&Call::get("event.list", "/v1/events", query))
                .await?;
            let data = page["data"].as_array().cloned().unwrap_or_default();
            for event in &data {
                let (Some(id), Some(kind), Some(created)) = (
                    event["id"].as_str(),
                    event["type"].as_str(),
                    event["created"].as_i64(),
                ) else {
                    continue;
                };
                if service
                    .store()
                    .insert_event(id, kind, created, "gap_fill", &event.to_string())
                    .await?
                {
                    missed += 1;
                    self.applier.apply(id).await;
                }
            }
            match (
                page["has_more"].as_bool(),
                data.last().and_then(|e| e["id"].as_str()),
            ) {
                (Some(true), Some(last)) => after = Some(last.to_owned()),
                _ => break,
            }
        }
        if missed > 0 {
            tracing::info!(missed, "gap fill applied events that webhooks missed");
        }
        Ok(missed)
    }
}

impl Applier {
    /// Applies one event and says how it went (status, business, error, next attempt). `attempts` counts
    /// earlier tries, for the backoff.
    async fn run(
        &self,
        event_type: &str,
        created: i64,
        payload: &str,
        attempts: i64,
        id: &str,
    ) -> EventResult {
        let result = match serde_json::from_str::<Value>(payload) {
            Ok(v) => self.service.apply_event(&v).await,
            Err(e) => Err(BillingError::Conflict(format!(
                "stored payload unreadable: {e}"
            ))),
        };
        self.outcome(event_type, created, attempts, id, result)
    }

    /// Counts an apply's result and turns it into what the database records.
    fn outcome(
        &self,
        event_type: &str,
        created: i64,
        attempts: i64,
        id: &str,
        result: Result<Applied, BillingError>,
    ) -> EventResult {
        let metrics = self.service.metrics();
        let outcome = |status, business_id, error: Option<String>, retry_at| EventResult {
            event_id: id.to_owned(),
            status,
            business_id,
            error,
            retry_at,
        };
        match result {
            Ok(Applied::Applied { business_id }) => {
                metrics.inc(
                    "genesis_billing_webhook_events_total",
                    &[event_type, "applied"],
                );
                metrics.observe(
                    "genesis_billing_webhook_apply_lag_seconds",
                    &[],
                    (now() - created).max(0) as f64,
                );
                outcome("applied", Some(business_id), None, None)
            }
            Ok(Applied::Ignored { business_id, why }) => {
                metrics.inc(
                    "genesis_billing_webhook_events_total",
                    &[event_type, "ignored"],
                );
                outcome("ignored", business_id, Some(why.to_owned()), None)
            }
            Err(e) => {
                metrics.inc(
                    "genesis_billing_webhook_events_total",
                    &[event_type, "failed"],
                );
                let tries = attempts + 1;
                tracing::warn!(event_id = id, attempts = tries, error = %e, "applying webhook event failed");
                if tries >= MAX_ATTEMPTS {
                    outcome("dead", None, Some(e.to_string()), None)
                } else {
                    outcome(
                        "failed",
                        None,
                        Some(e.to_string()),
                        Some(now() + (5i64 << tries.min(10)).min(3600)),
                    )
                }
            }
        }
    }

    /// Claims a stored event (unless another worker holds it or it is finished), applies it, records it.
    async fn apply(&self, id: &str) {
        let owner = uuid::Uuid::new_v4().to_string();
        let until = now() + self.lease.as_secs() as i64;
        let store = self.service.store();
        let event = match store.claim_event(id, &owner, until).await {
            Ok(Some(e)) => e,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(event_id = id, error = %e, "cannot claim webhook event");
                return;
            }
        };
        // The claim counted this attempt already.
        let r = self
            .run(
                &event.event_type,
                event.created,
                &event.payload,
                event.attempts - 1,
                id,
            )
            .await;
        let finished = store
            .finish_event(
                id,
                &owner,
                r.status,
                r.business_id.as_deref(),
                r.error.as_deref(),
                r.retry_at,
            )
            .await;
        if let Err(e) = finished {
            tracing::error!(event_id = id, error = %e, "cannot record webhook outcome");
        }
    }
}

/// The inbox's single writer: every event waiting at that moment and every apply outcome reported since
/// the last commit go into one transaction. Answers each waiting delivery once its event is on disk, and
/// hands new events to the applier.
async fn commit_loop(
    service: Arc<BillingService>,
    owner: Arc<str>,
    lease: Duration,
    mut queue: mpsc::Receiver<CommitRequest>,
    applies: Vec<mpsc::Sender<NewEvent>>,
    mut outcomes: mpsc::UnboundedReceiver<EventResult>,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    let mut results = Vec::new();
    loop {
        tokio::select! {
            n = queue.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    break;
                }
            }
            n = outcomes.recv_many(&mut results, MAX_BATCH) => {
                // The applier lives as long as this loop holds its queue; zero means it is gone.
                if n == 0 {
                    break;
                }
            }
        }
        while results.len() < MAX_BATCH {
            match outcomes.try_recv() {
                Ok(r) => results.push(r),
                Err(_) => break,
            }
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut routes = Vec::with_capacity(batch.len());
        for (event, lane, reply) in batch.drain(..) {
            events.push(event);
            routes.push((lane, reply));
        }
        // Leased to this inbox and handed over in memory while the applier keeps up; otherwise stored
        // free, for `retry_due` to pick up from the database.
        let keep_up = applies.iter().all(|lane| lane.capacity() >= events.len());
        let until = now() + lease.as_secs() as i64;
        match service
            .store()
            .write_inbox(&events, &owner, keep_up, until, &results)
            .await
        {
            Ok(stored) => {
                for ((event, (lane, reply)), new) in events.into_iter().zip(routes).zip(stored) {
                    let _ = reply.send(Ok(new));
                    if new && keep_up {
                        let _ = applies[lane].try_send(event);
                    }
                }
            }
            Err(e) => {
                // The outcomes are lost with the transaction; their events stay leased and pending, and
                // `retry_due` applies them again once the lease expires.
                tracing::error!(error = %e, count = events.len(), "cannot store webhook events");
                for (_, reply) in routes {
                    let _ = reply.send(Err(()));
                }
            }
        }
        results.clear();
    }
}

/// Applies newly stored events in arrival order, from memory (no claim, no read of the event), and
/// reports each outcome to the writer, which records it with its next commit. Events about businesses the
/// records do not know are set aside a batch at a time, with one query, instead of one lookup each.
async fn apply_loop(
    applier: Arc<Applier>,
    mut queue: mpsc::Receiver<NewEvent>,
    outcomes: mpsc::UnboundedSender<EventResult>,
) {
    let mut batch = Vec::with_capacity(64);
    while queue.recv_many(&mut batch, 64).await > 0 {
        let parsed: Vec<(NewEvent, Option<Value>)> = batch
            .drain(..)
            .map(|e| {
                let v = serde_json::from_str::<Value>(&e.payload).ok();
                (e, v)
            })
            .collect();
        let keys: Vec<Option<crate::billing::EventKeys>> = parsed
            .iter()
            .map(|(_, v)| v.as_ref().and_then(crate::billing::event_keys))
            .collect();
        let wanted: Vec<&str> = keys
            .iter()
            .flatten()
            .flat_map(|k| {
                [
                    k.business_id.as_deref(),
                    k.subscription.as_deref(),
                    k.customer.as_deref(),
                ]
            })
            .flatten()
            .collect();
        // If the lookup fails, every event takes the full path, which reports its own error.
        let known = applier
            .service
            .store()
            .known_business_keys(&wanted)
            .await
            .ok();
        for ((e, value), key) in parsed.into_iter().zip(keys) {
            let unknown = match (&known, &key) {
                (Some(known), Some(k)) => ![&k.business_id, &k.subscription, &k.customer]
                    .into_iter()
                    .flatten()
                    .any(|v| known.contains(v)),
                _ => false,
            };
            let result = match value {
                Some(_) if unknown => applier.outcome(
                    &e.event_type,
                    e.created,
                    0,
                    &e.id,
                    Ok(Applied::Ignored {
                        business_id: None,
                        why: "unknown business",
                    }),
                ),
                Some(v) => {
                    let applied = applier.service.apply_event(&v).await;
                    applier.outcome(&e.event_type, e.created, 0, &e.id, applied)
                }
                None => {
                    applier
                        .run(&e.event_type, e.created, &e.payload, 0, &e.id)
                        .await
                }
            };
            if outcomes.send(result).is_err() {
                return;
            }
        }
    }
}
