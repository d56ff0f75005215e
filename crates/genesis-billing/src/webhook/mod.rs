//! The webhook inbox: verify, store by event id, acknowledge, apply — plus background retries of failed
//! applies and gap fill from Stripe's event list.

pub mod signature;

use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};

use crate::billing::{
    Applied, BillingError, BillingService, Deferred, EventKeys, KeyFields, Writes, HANDLED_EVENTS,
};
use crate::config::StripeMode;
use crate::metrics::WebhookOutcome;
use crate::store::{now, EventResult, Inserted, NewEvent, StoredEvent, Triage};
pub use signature::Rejection;

/// Largest webhook body accepted (SPEC §1.4).
pub const MAX_BODY: usize = 1 << 20;

/// Deepest nesting of arrays and objects in an event, checked on receipt (deeper: 400) and again on apply
/// (ignored), so the applier never meets a stored event it cannot parse. Stripe's events nest about ten
/// levels; serde_json's own limit (128) would stop the applier but not the receiver, which skips values.
pub const MAX_DEPTH: usize = 64;

/// Longest event id accepted.
pub const MAX_ID_LEN: usize = 255;

/// Why an event whose `livemode` differs from the configured key's mode is stored ignored.
pub const LIVEMODE_MISMATCH: &str = "livemode mismatch";

/// Why an event about a connected account (Stripe Connect, which we never use) is stored ignored.
pub const CONNECTED_ACCOUNT: &str = "event from a connected account";

/// Why a stored event nested deeper than `MAX_DEPTH` is ignored on apply.
pub const TOO_DEEP: &str = "nested too deep";

/// Whether `json` nests arrays and objects deeper than `MAX_DEPTH`. A scan of the bytes that skips
/// strings, not a parse (about 1 µs for a 2 KB event): the receiver reads only the envelope and skips the
/// rest unbuilt, without serde_json's depth limit.
pub fn too_deep(json: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                // Skip the string: to the next quote not escaped.
                i += 1;
                while i < json.len() {
                    match json[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}
/// Stripe's event ids: `evt_` and letters, digits or `_`, at most `MAX_ID_LEN` bytes.
pub fn valid_event_id(id: &str) -> bool {
    id.len() <= MAX_ID_LEN
        && id.strip_prefix("evt_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// Stripe's event types: lowercase letters, digits, `_` and `.`, at most 255 bytes.
pub fn valid_event_type(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 255
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// Why an event is not for us though validly signed: a connected account's, or of the other mode than
/// the key's (`None`: no key configured, so no mode to hold it to).
fn not_ours(
    livemode: Option<bool>,
    account: Option<&str>,
    mode: Option<StripeMode>,
) -> Option<&'static str> {
    if account.is_some() {
        return Some(CONNECTED_ACCOUNT);
    }
    match (livemode, mode) {
        (Some(live), Some(mode)) if live != (mode == StripeMode::Live) => Some(LIVEMODE_MISMATCH),
        _ => None,
    }
}

/// Applies after which a failing event is dead-lettered and only `webhooks replay` retries it.
const MAX_ATTEMPTS: i64 = 8;

/// Events waiting to be committed; beyond this, deliveries wait (back-pressure instead of memory growth).
const COMMIT_QUEUE: usize = 8192;

/// Most events written in one transaction.
const MAX_BATCH: usize = 512;

/// What became of a delivery that passed verification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Stored now, and applied with it or right after.
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
type CommitRequest = (NewEvent, usize, oneshot::Sender<Result<Inserted, ()>>);

/// Appliers working side by side; each takes the events of its share of customers, in order.
const APPLY_LANES: usize = 4;

/// Stored events waiting for the applier in memory. Beyond this, new events are stored unleased and
/// `retry_due` applies them from the database, so memory stays bounded under any burst.
const APPLY_QUEUE: usize = 4096;

/// Most due events `retry_due` claims at once.
const RETRY_BATCH: usize = 200;

/// A stored event held by this inbox, for an applier lane.
struct Work {
    id: String,
    event_type: String,
    created: i64,
    payload: String,
    /// Earlier attempts, for the backoff.
    attempts: i64,
}

/// The part of a Stripe event the receiver checks before storing it.
#[derive(serde::Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    /// Required to hold an object; read only for the keys naming the business it concerns.
    data: EnvelopeData,
    livemode: Option<bool>,
    /// Present on events about a connected account.
    account: Option<String>,
}

#[derive(serde::Deserialize)]
struct EnvelopeData {
    object: Lenient<ObjectKeys>,
}

/// A JSON value read for a few fields, skipping the rest without building it. A value of another shape
/// than expected (an expanded object where an id was expected, a null) reads as `None`, as it does for
/// the appliers, which look the same fields up in the full object (`billing::KeyFields::of`).
struct Lenient<T>(Option<T>);

/// What a `Lenient` reads from a string or an object; anything else is skipped.
trait Shape<'de>: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error>;
}

impl<'de, T: Shape<'de>> serde::Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Shape<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::from_map(map).map(Lenient)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

/// Reads the fields of a map named by `wanted` into its slots; skips the others.
fn read_fields<'de, A: serde::de::MapAccess<'de>>(
    mut map: A,
    mut wanted: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        if !wanted(&key, &mut map)? {
            map.next_value::<serde::de::IgnoredAny>()?;
        }
    }
    Ok(())
}

/// A string, or an expanded object's `id` (as `stripe::id_of` reads it).
struct Id(String);

impl<'de> Shape<'de> for Id {
    fn from_str(v: &str) -> Option<Self> {
        Some(Id(v.to_owned()))
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut id = None;
        read_fields(map, |key, map| {
            Ok(key == "id" && {
                id = map.next_value::<Lenient<Text>>()?.0.map(|t| Id(t.0));
                true
            })
        })?;
        Ok(id)
    }
}

/// A string and nothing else.
struct Text(String);

impl<'de> Shape<'de> for Text {
    fn from_str(v: &str) -> Option<Self> {
        Some(Text(v.to_owned()))
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        read_fields(map, |_, _| Ok(false))?;
        Ok(None)
    }
}

/// `metadata.business_id`.
struct Metadata(Option<String>);

impl<'de> Shape<'de> for Metadata {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut business = None;
        read_fields(map, |key, map| {
            Ok(key == "business_id" && {
                business = map.next_value::<Lenient<Text>>()?.0.map(|t| t.0);
                true
            })
        })?;
        Ok(Some(Metadata(business)))
    }
}

/// `parent.subscription_details` of an invoice: its subscription and that subscription's metadata.
struct Parent {
    subscription: Option<String>,
    business_id: Option<String>,
}

impl<'de> Shape<'de> for Parent {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut details = None;
        read_fields(map, |key, map| {
            Ok(key == "subscription_details" && {
                details = map.next_value::<Lenient<Details>>()?.0;
                true
            })
        })?;
        Ok(details.map(|d| Parent {
            subscription: d.subscription,
            business_id: d.business_id,
        }))
    }
}

struct Details {
    subscription: Option<String>,
    business_id: Option<String>,
}

impl<'de> Shape<'de> for Details {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut d = Details {
            subscription: None,
            business_id: None,
        };
        read_fields(map, |key, map| {
            match key {
                "subscription" => d.subscription = map.next_value::<Lenient<Id>>()?.0.map(|i| i.0),
                "metadata" => {
                    d.business_id = map.next_value::<Lenient<Metadata>>()?.0.and_then(|m| m.0)
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Some(d))
    }
}

/// The fields of `data.object` that name the business an event concerns.
struct ObjectKeys(KeyFields);

impl<'de> Shape<'de> for ObjectKeys {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut f = KeyFields::default();
        read_fields(map, |key, map| {
            match key {
                "id" => f.id = map.next_value::<Lenient<Text>>()?.0.map(|t| t.0),
                "status" => f.status = map.next_value::<Lenient<Text>>()?.0.map(|t| t.0),
                "customer" => f.customer = map.next_value::<Lenient<Id>>()?.0.map(|i| i.0),
                "metadata" => {
                    f.business_id = map.next_value::<Lenient<Metadata>>()?.0.and_then(|m| m.0)
                }
                "parent" => {
                    if let Some(p) = map.next_value::<Lenient<Parent>>()?.0 {
                        f.parent_subscription = p.subscription;
                        f.parent_business_id = p.business_id;
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Some(ObjectKeys(f)))
    }
}

/// Which applier lane an event goes to: events about one customer (or, without one, one business or
/// subscription) keep their order in one lane.
fn lane_for(id: &str, keys: Option<&EventKeys>) -> usize {
    lane_of(
        keys.and_then(|k| {
            k.customer
                .as_ref()
                .or(k.business_id.as_ref())
                .or(k.subscription.as_ref())
        })
        .map_or(id, String::as_str),
    )
}

fn lane_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % APPLY_LANES as u64) as usize
}

/// The webhook receiver and its background work.
///
/// One committer task writes every event waiting at that moment in one transaction (group commit): each
/// response is held until its own event is on disk, and one disk sync serves many events. An event about
/// no business we know, or of a type we do not handle, is stored already settled as ignored; a subscription
/// status for a business's current subscription is written in the transaction that stores it
/// (`Triage::Status`). Any other is acknowledged once stored — the durable record is what Stripe's retry
/// would otherwise provide — and then applied in arrival order within its customer's lane, a status it finds
/// left to the writer's next commit with the outcome (`Writes::Deferred`). A crash between the two leaves it
/// `pending`, and `retry_due` applies it after restart.
pub struct Inbox {
    applier: Arc<Applier>,
    secrets: Vec<SecretString>,
    tolerance: i64,
    commits: mpsc::Sender<CommitRequest>,
    /// Who holds the events this inbox applies (the lease owner in the database).
    owner: Arc<str>,
    lanes: Vec<mpsc::Sender<Work>>,
}

/// Applies stored events; a lease in the database keeps two workers off one event.
struct Applier {
    service: Arc<BillingService>,
    lease: Duration,
    /// The configured key's mode, which every event's `livemode` must match.
    mode: Option<StripeMode>,
}

impl Inbox {
    /// Starts the committer and applier tasks; they stop when the inbox is dropped. `mode` is the
    /// configured key's (`Settings::key_mode`): events of the other mode are stored ignored.
    pub fn new(
        service: Arc<BillingService>,
        secrets: Vec<SecretString>,
        tolerance_secs: i64,
        mode: Option<StripeMode>,
    ) -> Self {
        let applier = Arc::new(Applier {
            service,
            lease: Duration::from_secs(60),
            mode,
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
            owner.clone(),
            applier.lease,
            commit_rx,
            lanes.clone(),
            outcome_rx,
        ));
        Self {
            applier,
            secrets,
            tolerance: tolerance_secs,
            commits,
            owner,
            lanes,
        }
    }

    pub fn has_secret(&self) -> bool {
        !self.secrets.is_empty()
    }

    fn service(&self) -> &BillingService {
        &self.applier.service
    }

    fn reject(&self, r: Rejection) -> ReceiveError {
        self.service().metrics().webhook_rejected(r.reason());
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
        // Refused before it is stored: the applier could not parse it.
        if too_deep(body) {
            return Err(self.reject(Rejection::BadPayload));
        }
        // Only the envelope is read here; the applier reads the object itself.
        let Ok(Envelope {
            id,
            kind,
            created,
            data,
            livemode,
            account,
        }) = serde_json::from_slice::<Envelope>(body)
        else {
            return Err(self.reject(Rejection::BadPayload));
        };
        if !valid_event_id(&id) || !valid_event_type(&kind) {
            return Err(self.reject(Rejection::BadPayload));
        }
        // The envelope must hold an object; a body that is not UTF-8 is refused rather than stored altered.
        let (Some(ObjectKeys(fields)), Ok(payload)) = (data.object.0, std::str::from_utf8(body))
        else {
            return Err(self.reject(Rejection::BadPayload));
        };
        let status = fields.status.clone();
        let keys = crate::billing::keys_of(&kind, fields);
        let lane = lane_for(&id, keys.as_ref());
        let status =
            status.filter(|s| crate::business::SUBSCRIPTION_STATUSES.contains(&s.as_str()));
        let status_event = matches!(
            kind.as_str(),
            "customer.subscription.created" | "customer.subscription.updated"
        );
        let triage = match (keys, status) {
            // The common event, a subscription's new status: written as it is stored when it can be.
            (
                Some(EventKeys {
                    business_id,
                    subscription: Some(subscription_id),
                    customer,
                }),
                Some(status),
            ) if status_event => Triage::Status {
                business_id,
                subscription_id,
                customer,
                status,
            },
            (Some(k), _) => Triage::IfKnown(
                [k.business_id, k.subscription, k.customer]
                    .into_iter()
                    .flatten()
                    .collect(),
            ),
            (None, _) => Triage::Ignore(crate::billing::UNHANDLED_EVENT),
        };
        let triage = match not_ours(livemode, account.as_deref(), self.applier.mode) {
            Some(why) => Triage::Ignore(why),
            None => triage,
        };
        let new = NewEvent {
            id,
            event_type: kind.clone(),
            created,
            source: "webhook",
            payload: payload.to_owned(),
            triage,
        };
        let (reply, stored) = oneshot::channel();
        self.commits
            .send((new, lane, reply))
            .await
            .map_err(|_| ReceiveError::Unavailable)?;
        let outcome = match stored.await {
            Ok(Ok(Inserted::Duplicate)) => WebhookOutcome::Duplicate,
            Ok(Ok(Inserted::Ignored(_))) => WebhookOutcome::Ignored,
            Ok(Ok(Inserted::Applied)) => {
                self.service()
                    .metrics()
                    .webhook_apply_lag((now() - created).max(0) as f64);
                WebhookOutcome::Applied
            }
            Ok(Ok(Inserted::Pending)) => return Ok(Received::Stored),
            // Not stored (the database refused it even alone, or failed): Stripe delivers it again.
            Ok(Ok(Inserted::Failed) | Err(())) | Err(_) => return Err(ReceiveError::Unavailable),
        };
        self.service().metrics().webhook_event(&kind, outcome);
        Ok(if outcome == WebhookOutcome::Duplicate {
            Received::Duplicate
        } else {
            Received::Stored
        })
    }

    /// Applies a stored event now unless another worker holds it (`webhooks replay`, tests).
    pub async fn apply(&self, id: &str) {
        self.applier.apply(id).await;
    }

    /// Claims a batch of events whose backoff has passed (and any left pending by a crash or a burst) and
    /// hands them to the appliers, whose outcomes the writer records as for new events. Returns how many
    /// it claimed, once the appliers have taken them all (0 if they are gone).
    pub async fn retry_due(&self) -> usize {
        let until = now() + self.applier.lease.as_secs() as i64;
        let store = self.service().store();
        let due: Vec<StoredEvent> = match store
            .claim_due(&self.owner, until, RETRY_BATCH as i64)
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot claim due webhook events");
                return 0;
            }
        };
        let claimed = due.len();
        for e in due {
            let keys = serde_json::from_str::<Envelope>(&e.payload)
                .ok()
                .and_then(|env| Some((env.kind, env.data.object.0?.0)))
                .and_then(|(kind, fields)| crate::billing::keys_of(&kind, fields));
            let work = Work {
                attempts: e.attempts,
                id: e.event_id,
                event_type: e.event_type,
                created: e.created,
                payload: e.payload,
            };
            // Waits while the lane is full: claims never outrun the appliers by more than a batch.
            if self.lanes[lane_for(&work.id, keys.as_ref())]
                .send(work)
                .await
                .is_err()
            {
                // The appliers are gone (shutting down): the rest stay leased and are retried later.
                return 0;
            }
        }
        claimed
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
            let page = stripe
                .list_events(since, HANDLED_EVENTS, after.as_deref())
                .await?;
            let data = page.data;
            for event in &data {
                let (Some(id), Some(kind), Some(created)) = (
                    event["id"].as_str(),
                    event["type"].as_str(),
                    event["created"].as_i64(),
                ) else {
                    continue;
                };
                if !valid_event_id(id) || !valid_event_type(kind) {
                    continue;
                }
                if service
                    .store()
                    .insert_event(id, kind, created, "gap_fill", &event.to_string())
                    .await?
                {
                    missed += 1;
                    self.applier.apply(id).await;
                }
            }
            match (page.has_more, data.last().and_then(|e| e["id"].as_str())) {
                (true, Some(last)) => after = Some(last.to_owned()),
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
        writes: Writes,
    ) -> EventResult {
        let ignored = |why| {
            Ok(Applied::Ignored {
                business_id: None,
                why,
            })
        };
        // Events stored before these checks existed, or read from Stripe's list, meet them here.
        let result = if too_deep(payload.as_bytes()) {
            ignored(TOO_DEEP)
        } else {
            match serde_json::from_str::<Value>(payload) {
                Ok(v) => {
                    match not_ours(v["livemode"].as_bool(), v["account"].as_str(), self.mode) {
                        Some(why) => ignored(why),
                        None => self.service.apply_event(&v, writes).await,
                    }
                }
                Err(e) => Err(BillingError::Conflict(format!(
                    "stored payload unreadable: {e}"
                ))),
            }
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
            event_type: event_type.to_owned(),
            status,
            business_id,
            error,
            retry_at,
            change: None,
            history: None,
            created,
        };
        match result {
            // Counted once the writer has recorded it (`count_outcome`).
            Ok(Applied::Deferred { business_id, write }) => {
                let r = outcome("applied", Some(business_id), None, None);
                match write {
                    Deferred::Status(change) => EventResult {
                        change: Some(change),
                        ..r
                    },
                    Deferred::History(entry) => EventResult {
                        history: Some(entry),
                        ..r
                    },
                }
            }
            Ok(Applied::Applied { business_id }) => {
                let r = outcome("applied", Some(business_id), None, None);
                count_outcome(metrics, &r);
                r
            }
            Ok(Applied::Ignored { business_id, why }) => {
                let r = outcome("ignored", business_id, Some(why.to_owned()), None);
                count_outcome(metrics, &r);
                r
            }
            Err(e) => {
                metrics.webhook_event(event_type, WebhookOutcome::Failed);
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
                Writes::Now,
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

/// Counts an event applied or ignored (the outcomes decided when the apply or the writer recorded it).
fn count_outcome(metrics: &crate::metrics::Metrics, r: &EventResult) {
    let outcome = match r.status {
        "applied" => WebhookOutcome::Applied,
        "ignored" => WebhookOutcome::Ignored,
        _ => return,
    };
    metrics.webhook_event(&r.event_type, outcome);
    if outcome == WebhookOutcome::Applied {
        metrics.webhook_apply_lag((now() - r.created).max(0) as f64);
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
    applies: Vec<mpsc::Sender<Work>>,
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
            .write_inbox(
                &events,
                &owner,
                keep_up,
                until,
                std::mem::take(&mut results),
            )
            .await
        {
            Ok(written) => {
                let metrics = service.metrics();
                let deferred = |r: &&EventResult| r.change.is_some() || r.history.is_some();
                for r in written.settled.iter().filter(deferred) {
                    count_outcome(metrics, r);
                }
                for ((event, (lane, reply)), done) in
                    events.into_iter().zip(routes).zip(written.stored)
                {
                    let _ = reply.send(Ok(done));
                    if done == Inserted::Pending && keep_up {
                        let _ = applies[lane].try_send(Work {
                            id: event.id,
                            event_type: event.event_type,
                            created: event.created,
                            payload: event.payload,
                            attempts: 0,
                        });
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

/// Applies newly stored pending events in arrival order, from memory (no claim, no read of the event),
/// and reports each outcome to the writer, which records it with its next commit. (Events about businesses
/// the records do not know were settled when stored.)
async fn apply_loop(
    applier: Arc<Applier>,
    mut queue: mpsc::Receiver<Work>,
    outcomes: mpsc::UnboundedSender<EventResult>,
) {
    while let Some(e) = queue.recv().await {
        let result = applier
            .run(
                &e.event_type,
                e.created,
                &e.payload,
                e.attempts,
                &e.id,
                Writes::Deferred,
            )
            .await;
        if outcomes.send(result).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The receiver reads an event's keys from the raw body; the appliers read them from the parsed
    /// object. Both must agree on every shape Stripe may send, or triage would set aside an event its
    /// handler would have applied.
    #[test]
    fn the_receiver_reads_the_same_keys_as_the_appliers() {
        let objects = [
            r#"{"id":"sub_1","object":"subscription","customer":"cus_1","metadata":{"business_id":"b1"}}"#,
            r#"{"id":"sub_1","customer":{"id":"cus_2","object":"customer","metadata":{"business_id":"nested"}}}"#,
            r#"{"id":"in_1","customer":null,"metadata":null,"parent":null}"#,
            r#"{"id":"in_1","customer":7,"metadata":["b1"],"parent":"x"}"#,
            r#"{"id":"in_1","customer":"cus_1","parent":{"type":"subscription_details","subscription_details":{"subscription":"sub_9","metadata":{"business_id":"b9","other":"x"}}}}"#,
            r#"{"id":"in_1","parent":{"subscription_details":{"subscription":{"id":"sub_8","items":{"data":[{"id":"si_1"}]}},"metadata":{"business_id":5}}}}"#,
            r#"{"id":"cs_1","customer":{"id":7},"metadata":{"business_id":"b2","nested":{"a":[1,2,{"b":null}]}},"lines":[[],{}],"amount":1.5,"paid":true}"#,
            r#"{"id":{"x":1},"customer":"cus_\u00e9","metadata":{"business_id":"b\"q"}}"#,
            r#"{"id":"sub_1","status":"past_due","customer":"cus_1"}"#,
            r#"{"id":"sub_1","status":null}"#,
            r#"{"id":"sub_1","status":{"value":"active"}}"#,
            r#"{}"#,
        ];
        for object in objects {
            for kind in HANDLED_EVENTS.iter().chain(&["charge.refunded"]) {
                let body = format!(
                    r#"{{"id":"evt_1","type":"{kind}","created":1,"data":{{"object":{object}}}}}"#
                );
                let envelope: Envelope = serde_json::from_str(&body).unwrap();
                let ObjectKeys(read) = envelope.data.object.0.expect("an object");
                let value: Value = serde_json::from_str(object).unwrap();
                assert_eq!(read, KeyFields::of(&value), "{object}");
                let event: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    crate::billing::keys_of(kind, read),
                    crate::billing::event_keys(&event),
                    "{kind} {object}"
                );
            }
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_up_to_the_limit() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!too_deep(nested(MAX_DEPTH).as_bytes()));
        assert!(too_deep(nested(MAX_DEPTH + 1).as_bytes()));
        let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        assert!(!too_deep(objects(MAX_DEPTH).as_bytes()));
        assert!(too_deep(objects(MAX_DEPTH + 1).as_bytes()));
        // Brackets inside strings, escaped quotes and backslashes do not count.
        let in_string = format!(
            r#"{{"a":"{}\"{}\\","b":[1]}}"#,
            "[".repeat(200),
            "{".repeat(200)
        );
        assert!(
            serde_json::from_str::<Value>(&in_string).is_ok(),
            "{in_string}"
        );
        assert!(!too_deep(in_string.as_bytes()));
        // Siblings do not add up.
        let wide = format!("[{}]", vec![nested(MAX_DEPTH - 1); 100].join(","));
        assert!(!too_deep(wide.as_bytes()));
        // Cut-off bodies end the scan without reading past the end.
        for cut in [&b"\"\\"[..], b"[\"abc", b"[\"a\\", b"\\"] {
            assert!(!too_deep(cut));
        }
        // serde_json builds what the receiver accepts.
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH)).is_ok());
    }

    #[test]
    fn event_ids_and_types_are_held_to_stripes_character_set() {
        for id in [
            "evt_1",
            "evt_1QabcDEF_23",
            &format!("evt_{}", "a".repeat(251)),
        ] {
            assert!(valid_event_id(id), "{id}");
        }
        for id in [
            "",
            "evt_",
            "evt",
            "EVT_1",
            "ev_1",
            "evt_a-b",
            "evt_a b",
            "evt_a\0",
            "evt_\u{e9}",
            "evt_a.b",
            "evt_a\n",
            &format!("evt_{}", "a".repeat(252)),
        ] {
            assert!(!valid_event_id(id), "{id:?}");
        }
        for kind in [
            "invoice.paid",
            "customer.subscription.updated",
            "v2.core.event_1",
        ] {
            assert!(valid_event_type(kind), "{kind}");
        }
        for kind in [
            "",
            "Invoice.paid",
            "invoice paid",
            "invoice.paid\0",
            "invoice-paid",
            "invoice.paid\n",
            "invoice/paid",
            &"a".repeat(256),
        ] {
            assert!(!valid_event_type(kind), "{kind:?}");
        }
    }

    #[test]
    fn an_event_of_the_other_mode_or_a_connected_account_is_not_ours() {
        use StripeMode::{Live, Test};
        assert_eq!(not_ours(Some(false), None, Some(Test)), None);
        assert_eq!(not_ours(Some(true), None, Some(Live)), None);
        assert_eq!(
            not_ours(Some(true), None, Some(Test)),
            Some(LIVEMODE_MISMATCH)
        );
        assert_eq!(
            not_ours(Some(false), None, Some(Live)),
            Some(LIVEMODE_MISMATCH)
        );
        assert_eq!(not_ours(None, None, Some(Test)), None);
        assert_eq!(not_ours(Some(true), None, None), None, "no key: no mode");
        assert_eq!(
            not_ours(Some(false), Some("acct_1"), Some(Test)),
            Some(CONNECTED_ACCOUNT)
        );
    }

    #[test]
    fn an_envelope_whose_object_is_not_an_object_reads_as_none() {
        for object in [r#""sub_1""#, "null", "[1]", "3"] {
            let body =
                format!(r#"{{"id":"evt_1","type":"x","created":1,"data":{{"object":{object}}}}}"#);
            let envelope: Envelope = serde_json::from_str(&body).unwrap();
            assert!(envelope.data.object.0.is_none(), "{object}");
        }
    }
}
