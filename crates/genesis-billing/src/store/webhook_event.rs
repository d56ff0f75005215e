//! Queries on stored Stripe events (the webhook inbox). `Store::write_inbox` is the inbox's one write
//! interface: this file's portable path (sqlx: PostgreSQL, in-memory SQLite) or the SQLite file's fast path
//! (`sqlite_inbox`) behind it. The ordering rule for a subscription's status is `over_older_state`, the only
//! place it is written; what the writer finds is returned as facts (`Unwritten`), whose reasons the caller
//! gives (`Reasons`: billing decides why an event is ignored).

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use super::{
    businesses_named, known_keys, now, Backend, BusinessKeys, Params, Store, StoreError,
    BILLING_AFTER_STATUS,
};

/// A stored Stripe event and how applying it went.
#[derive(Debug, Clone, Serialize)]
pub struct StoredEvent {
    pub event_id: String,
    pub event_type: String,
    pub created: i64,
    pub received_at: i64,
    pub source: String,
    pub status: String,
    pub attempts: i64,
    pub last_error: Option<String>,
    pub applied_at: Option<i64>,
    pub business_id: Option<String>,
    #[serde(skip)]
    pub payload: String,
}

const COLUMNS: &str = "e.event_id, e.event_type, e.created, e.received_at, e.source, COALESCE(p.payload, e.payload) AS payload, \
    e.status, e.attempts, e.last_error, e.applied_at, e.business_id";

/// Events with their bodies (kept apart since migration 4; older rows hold theirs in `webhook_event`).
const EVENTS: &str = "webhook_event e LEFT JOIN webhook_payload p ON p.event_id = e.event_id";

fn from_row(r: &AnyRow) -> Result<StoredEvent, StoreError> {
    Ok(StoredEvent {
        event_id: r.try_get("event_id")?,
        event_type: r.try_get("event_type")?,
        created: r.try_get("created")?,
        received_at: r.try_get("received_at")?,
        source: r.try_get("source")?,
        payload: r.try_get("payload")?,
        status: r.try_get("status")?,
        attempts: r.try_get("attempts")?,
        last_error: r.try_get("last_error")?,
        applied_at: r.try_get("applied_at")?,
        business_id: r.try_get("business_id")?,
    })
}

/// How applying one event went, for the inbox's writer.
#[derive(Debug, Clone)]
pub struct EventResult {
    pub event_id: String,
    pub event_type: String,
    /// `applied`, `ignored`, `failed` or `dead`; `pending` again when a change must be re-checked.
    pub status: &'static str,
    pub business_id: Option<String>,
    pub error: Option<String>,
    pub retry_at: Option<i64>,
    /// The write the apply left to the writer; `status` is then `applied` until the writer finds otherwise.
    pub change: Option<StatusChange>,
    /// A history line the apply left to the writer.
    pub history: Option<HistoryEntry>,
    /// The event's `created`, for the apply lag.
    pub created: i64,
}

/// A line of a business's billing history (`billing_event`) that applying an event adds, written by the
/// inbox's writer with the event's outcome, as a `StatusChange` is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    pub business_id: String,
    pub kind: String,
    pub detail: String,
    /// The event to the meta-agent this line reports, written with it.
    pub outbound: Option<super::NewOutbound>,
}

/// Adds a `HistoryEntry` for an event the writer holds. Parameters: id, business, kind, detail, now, event
/// id, writer.
pub(super) const RECORD_HISTORY: &str = "INSERT INTO billing_event (id, business_id, kind, detail, created_at) \
    SELECT $1, $2, $3, $4, $5 WHERE EXISTS (SELECT 1 FROM webhook_event WHERE event_id = $6 AND lease_owner = $7)";

/// A subscription's status read from an event, written by the inbox's writer in the transaction that
/// records the event's outcome: the appliers only read, and every write of the webhook path shares the
/// writer's one disk sync per batch instead of taking the write lock and syncing once per event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusChange {
    pub business_id: String,
    pub subscription_id: String,
    pub status: String,
    /// The event's `created`. The change is written over older state, or over state of the same second
    /// when it is the same status or `tie_settled`.
    pub state_at: i64,
    /// Stripe was asked which of two states of one second is current, and said `status`.
    pub tie_settled: bool,
}

/// What the inbox's write did: per new event, how it was stored; per result, how it was recorded.
#[derive(Debug, Clone)]
pub struct InboxWrite {
    pub stored: Vec<Inserted>,
    pub settled: Vec<EventResult>,
}

/// The ordering rule for a subscription's status, the one place it is written: a status is written only
/// over older state, or over state of the same second when it is the same status or `tie` is 1 (Stripe
/// said which of the two is current). The arguments are SQL expressions for the new status, its
/// `state_at` and the tie flag; the business row is `business`.
pub(super) fn over_older_state(status: &str, state_at: &str, tie: &str) -> String {
    format!(
        "(business.stripe_state_at < {state_at} OR (business.stripe_state_at = {state_at} \
         AND (business.subscription_status = {status} OR {tie} = 1)))"
    )
}

/// Writes a `StatusChange`. Parameters: business, subscription, status, state_at, now, tie_settled (0/1);
/// when `held`, also the event id and the writer, which must hold the event. `Store::set_subscription_status`
/// binds tie_settled 1: its caller has already asked Stripe about a tie.
pub(super) fn change_status_sql(held: bool) -> String {
    format!(
        "UPDATE business SET subscription_status = $3, stripe_state_at = $4, billing = {BILLING_AFTER_STATUS}, \
         updated_at = $5 WHERE business_id = $1 AND stripe_subscription_id = $2 AND {}{}",
        over_older_state("$3", "$4", "$6"),
        if held {
            " AND EXISTS (SELECT 1 FROM webhook_event WHERE event_id = $7 AND lease_owner = $8)"
        } else {
            ""
        }
    )
}

/// The business a `Triage::Status` event is about, looked up as `Store::find_business` does: by metadata
/// id, subscription, then customer. Returns its id and current subscription.
pub(super) const BUSINESS_BY: [&str; 3] = [
    "SELECT business_id, stripe_subscription_id FROM business WHERE business_id = $1",
    "SELECT business_id, stripe_subscription_id FROM business WHERE stripe_subscription_id = $1 \
     ORDER BY created_at DESC LIMIT 1",
    "SELECT business_id, stripe_subscription_id FROM business WHERE stripe_customer_id = $1 \
     ORDER BY created_at DESC LIMIT 1",
];

/// The state a change that was not written is judged against.
pub(super) const BUSINESS_STATE: &str =
    "SELECT stripe_subscription_id, stripe_state_at, subscription_status \
    FROM business WHERE business_id = $1";

/// What the inbox's writer found when it could not settle an event as applied: facts about the stored
/// state. The billing layer says why that means the event is ignored (`Reasons`, e.g. `billing::reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unwritten {
    /// No business is named by the event's keys.
    UnknownBusiness,
    /// The business's current subscription is another one.
    OtherSubscription,
    /// The business holds state newer than the event's.
    NewerState,
    /// The business holds another status of the same second: the event is due again, for an apply that
    /// asks Stripe which is current.
    SameSecond,
}

/// The reason recorded for each `Unwritten` fact (and, for `SameSecond`, the note on the pending event).
pub type Reasons = fn(Unwritten) -> &'static str;

/// What kept a change from being written, from the business's state (subscription, state_at).
pub(super) fn unwritten(change: &StatusChange, state: Option<(Option<String>, i64)>) -> Unwritten {
    match state {
        None => Unwritten::UnknownBusiness,
        Some((sub, _)) if sub.as_deref() != Some(change.subscription_id.as_str()) => {
            Unwritten::OtherSubscription
        }
        Some((_, at)) if at > change.state_at => Unwritten::NewerState,
        Some(_) => Unwritten::SameSecond,
    }
}

/// Records a change the writer could not write: ignored, or due again at once (`SameSecond`).
pub(super) fn not_written(
    r: &mut EventResult,
    change: &StatusChange,
    state: Option<(Option<String>, i64)>,
    reasons: Reasons,
) {
    let fact = unwritten(change, state);
    r.status = if fact == Unwritten::SameSecond {
        "pending"
    } else {
        "ignored"
    };
    r.error = Some(reasons(fact).to_owned());
    r.retry_at = None;
}

impl StatusChange {
    /// The change a `Triage::Status` event makes to business `business_id`.
    pub(super) fn of(event: &NewEvent, business_id: &str) -> Option<Self> {
        match &event.triage {
            Triage::Status {
                subscription_id,
                status,
                ..
            } => Some(Self {
                business_id: business_id.to_owned(),
                subscription_id: subscription_id.clone(),
                status: status.clone(),
                state_at: event.created,
                tie_settled: false,
            }),
            _ => None,
        }
    }
}

/// An event to store.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: String,
    pub event_type: String,
    pub created: i64,
    pub source: &'static str,
    pub payload: String,
    pub triage: Triage,
}

/// How a new event is stored: pending, to be applied, or settled at once as ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Triage {
    /// Pending.
    Apply,
    /// Pending if one of these values names a business (its id, Stripe subscription id or customer id),
    /// looked up in the writing transaction; otherwise ignored as `Unwritten::UnknownBusiness` (SPEC §1.4:
    /// stored and ignored), with no apply to wait for.
    IfKnown(Vec<String>),
    /// Ignored, for this reason.
    Ignore(&'static str),
    /// A subscription's status (`customer.subscription.created|updated`). When the business is known and
    /// this is its current subscription, written with the event, which is stored settled: `applied`, or
    /// `ignored` if the business holds newer state. Otherwise as `IfKnown` over its keys; the appliers then
    /// adopt the subscription, ignore it, or ask Stripe about two states of one second.
    Status {
        business_id: Option<String>,
        subscription_id: String,
        customer: Option<String>,
        status: String,
    },
}

impl Triage {
    /// For `Status`: the queries of `BUSINESS_BY` to run, by index, with the value each looks up.
    pub(super) fn lookups(&self) -> Vec<(usize, &str)> {
        match self {
            Triage::Status {
                business_id,
                subscription_id,
                customer,
                ..
            } => [
                business_id.as_deref(),
                Some(subscription_id.as_str()),
                customer.as_deref(),
            ]
            .into_iter()
            .enumerate()
            .filter_map(|(n, key)| Some((n, key?)))
            .collect(),
            _ => Vec::new(),
        }
    }

    /// The values that may name the business, in `Store::find_business`'s order.
    fn keys(&self) -> Vec<&str> {
        match self {
            Triage::IfKnown(keys) => keys.iter().map(String::as_str).collect(),
            Triage::Status { .. } => self.lookups().into_iter().map(|(_, key)| key).collect(),
            Triage::Apply | Triage::Ignore(_) => Vec::new(),
        }
    }
}

/// What the inbox's write did with one event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// Stored now, pending (leased to the writer if it asked).
    Pending,
    /// Stored now, settled as ignored for this reason.
    Ignored(&'static str),
    /// Stored now and applied with it (`Triage::Status`).
    Applied,
    /// Stored before: a duplicate delivery, left as it was.
    Duplicate,
    /// Not stored: the database refused this event even on its own (the rest of its batch was written).
    Failed,
}

/// The businesses of a batch by each value that names them (the newest, where several share one).
struct BusinessIndex<'a> {
    by: [HashMap<&'a str, &'a BusinessKeys>; 3],
}

impl<'a> BusinessIndex<'a> {
    fn new(businesses: &'a [BusinessKeys]) -> Self {
        let mut by: [HashMap<&'a str, &'a BusinessKeys>; 3] = Default::default();
        for b in businesses {
            let names = [
                Some(b.business_id.as_str()),
                b.subscription.as_deref(),
                b.customer.as_deref(),
            ];
            for (map, name) in by.iter_mut().zip(names) {
                if let Some(name) = name {
                    let slot = map.entry(name).or_insert(b);
                    if b.created_at > slot.created_at {
                        *slot = b;
                    }
                }
            }
        }
        Self { by }
    }

    /// The business a `Triage::Status` event is about, found in `BUSINESS_BY`'s order.
    fn find(&self, triage: &Triage) -> Option<&'a BusinessKeys> {
        triage
            .lookups()
            .into_iter()
            .find_map(|(n, key)| self.by[n].get(key).copied())
    }
}

/// Writes status changes made as their events are stored, a statement per round: each round takes the
/// next change of every business (a business's changes in arrival order; businesses in id order, so
/// replicas lock them in the same order). Returns the settled events: (index, business, what kept the
/// change from being written); events whose change meets another status of the same second are left out,
/// pending, for the appliers.
async fn write_changes(
    backend: Backend,
    conn: &mut sqlx::AnyConnection,
    changes: Vec<(usize, StatusChange)>,
    received: i64,
) -> Result<Vec<(usize, String, Option<Unwritten>)>, StoreError> {
    let mut queues: BTreeMap<String, VecDeque<(usize, StatusChange)>> = BTreeMap::new();
    for (i, c) in changes {
        queues
            .entry(c.business_id.clone())
            .or_default()
            .push_back((i, c));
    }
    let billing = BILLING_AFTER_STATUS.replace("$3", "v.column3");
    // No tie is settled here: a status of the same second that differs is left to the appliers.
    let newer = over_older_state("v.column3", "v.column4", "0");
    let mut settled = Vec::new();
    loop {
        let round: Vec<(usize, StatusChange)> = queues
            .values_mut()
            .filter_map(VecDeque::pop_front)
            .collect();
        if round.is_empty() {
            return Ok(settled);
        }
        for chunk in round.chunks(ROWS_PER_STATEMENT) {
            let mut params = Params::new(backend);
            let mut sql = format!(
                "UPDATE business SET subscription_status = v.column3, stripe_state_at = v.column4, \
                 billing = {billing}, updated_at = "
            );
            params.push(&mut sql);
            sql.push_str(" FROM (VALUES ");
            for k in 0..chunk.len() {
                sql.push_str(if k == 0 { "(" } else { ", (" });
                params.list(&mut sql, 3);
                sql.push_str(", CAST(");
                params.push(&mut sql);
                sql.push_str(" AS BIGINT))");
            }
            sql.push_str(
                ") AS v WHERE business.business_id = v.column1 AND business.stripe_subscription_id = v.column2 AND ",
            );
            sql.push_str(&newer);
            sql.push_str(" RETURNING business.business_id");
            let mut q = sqlx::query(&sql).persistent(false).bind(received);
            for (_, c) in chunk {
                q = q
                    .bind(&c.business_id)
                    .bind(&c.subscription_id)
                    .bind(&c.status)
                    .bind(c.state_at);
            }
            let written: HashSet<String> = q
                .fetch_all(&mut *conn)
                .await?
                .iter()
                .map(|row| row.try_get(0))
                .collect::<Result<_, _>>()?;
            // Why the others were not written, from the state as it now is.
            let missed: Vec<&StatusChange> = chunk
                .iter()
                .map(|(_, c)| c)
                .filter(|c| !written.contains(&c.business_id))
                .collect();
            let mut state: HashMap<String, (Option<String>, i64)> = HashMap::new();
            if !missed.is_empty() {
                let mut params = Params::new(backend);
                let mut sql = String::from(
                    "SELECT business_id, stripe_subscription_id, stripe_state_at FROM business WHERE business_id IN (",
                );
                params.list(&mut sql, missed.len());
                sql.push(')');
                let mut q = sqlx::query(&sql).persistent(false);
                for c in &missed {
                    q = q.bind(&c.business_id);
                }
                for row in q.fetch_all(&mut *conn).await? {
                    state.insert(row.try_get(0)?, (row.try_get(1)?, row.try_get(2)?));
                }
            }
            for (i, c) in chunk {
                if written.contains(&c.business_id) {
                    settled.push((*i, c.business_id.clone(), None));
                } else {
                    match unwritten(c, state.get(&c.business_id).cloned()) {
                        Unwritten::SameSecond => {}
                        fact => settled.push((*i, c.business_id.clone(), Some(fact))),
                    }
                }
            }
        }
        queues.retain(|_, q| !q.is_empty());
    }
}

/// An event due for an attempt at `$1` (now): unsettled, past its backoff, held by no one. Unqualified,
/// so it reads the same with or without the `webhook_payload` join.
const DUE: &str =
    "status IN ('pending', 'failed') AND (next_attempt_at IS NULL OR next_attempt_at <= $1) \
    AND (lease_until IS NULL OR lease_until < $1)";

/// Rows per multi-row statement (at most 10 parameters each: far below SQLite's and PostgreSQL's limits).
const ROWS_PER_STATEMENT: usize = 256;

impl Store {
    /// Stores a batch of events in one transaction (one disk sync for all: group commit). Returns, per
    /// event, whether this call stored it (false: already stored, a duplicate delivery).
    ///
    /// With an `owner`, the rows are stored already leased to it until `until`: the inserting process
    /// applies them right away without a claim of its own, and other replicas' retry loops leave them alone.
    pub async fn insert_events(
        &self,
        events: &[NewEvent],
        owner: Option<&str>,
        until: i64,
        reasons: Reasons,
    ) -> Result<Vec<bool>, StoreError> {
        let done = self
            .write_inbox(
                events,
                owner.unwrap_or_default(),
                owner.is_some(),
                until,
                Vec::new(),
                reasons,
            )
            .await?;
        if done.stored.contains(&Inserted::Failed) {
            return Err(StoreError::Worker(
                "the database refused an event of the batch (the others were stored)".to_owned(),
            ));
        }
        Ok(done
            .stored
            .iter()
            .map(|d| *d != Inserted::Duplicate)
            .collect())
    }

    /// The inbox's one write: new events stored and earlier events' outcomes recorded, in a single
    /// transaction, so ingest and apply share one disk sync instead of contending for the writer.
    /// New pending events are leased to `owner` until `until` when `lease_new`; `results` are for events it
    /// holds, with the status changes they carry (see `StatusChange`); `settled` says how each was recorded.
    /// Within a batch, the first delivery of an id may be new; later ones are duplicates. What the writer
    /// finds (an unknown business, newer state…) is recorded with the reason `reasons` gives it.
    ///
    /// If the database refuses the batch (a row it will not take, not an outage), its outcomes and then its
    /// events are written again one per transaction, so one bad event never fails the others; an event
    /// refused alone is `Inserted::Failed`, and an outcome refused alone is left out of `settled` (its event
    /// stays leased, and `retry_due` applies it again once the lease expires).
    pub async fn write_inbox(
        &self,
        events: &[NewEvent],
        owner: &str,
        lease_new: bool,
        until: i64,
        results: Vec<EventResult>,
        reasons: Reasons,
    ) -> Result<InboxWrite, StoreError> {
        let written = self
            .write_inbox_parts(events, owner, lease_new, until, results, reasons)
            .await;
        // A status or history line written may have written an event to the meta-agent.
        self.outbox_written();
        written
    }

    async fn write_inbox_parts(
        &self,
        events: &[NewEvent],
        owner: &str,
        lease_new: bool,
        until: i64,
        results: Vec<EventResult>,
        reasons: Reasons,
    ) -> Result<InboxWrite, StoreError> {
        if events.len() + results.len() <= 1 {
            return self
                .write_inbox_batch(events, owner, lease_new, until, results, reasons)
                .await;
        }
        // The batch's write changes outcomes as it records them; a retry starts from the originals.
        let err = match self
            .write_inbox_batch(events, owner, lease_new, until, results.clone(), reasons)
            .await
        {
            Ok(written) => return Ok(written),
            Err(e) if !e.is_refusal() => return Err(e),
            Err(e) => e,
        };
        tracing::warn!(
            error = %err,
            events = events.len(),
            outcomes = results.len(),
            "the database refused a webhook batch: writing its events one by one"
        );
        let mut settled = Vec::with_capacity(results.len());
        for r in results {
            let id = r.event_id.clone();
            match self
                .write_inbox_batch(&[], owner, lease_new, until, vec![r], reasons)
                .await
            {
                Ok(written) => settled.extend(written.settled),
                Err(e) => {
                    tracing::error!(event_id = ?id, error = %e, "cannot record a webhook event's outcome")
                }
            }
        }
        let mut stored = Vec::with_capacity(events.len());
        for e in events {
            match self
                .write_inbox_batch(
                    std::slice::from_ref(e),
                    owner,
                    lease_new,
                    until,
                    Vec::new(),
                    reasons,
                )
                .await
            {
                Ok(written) => stored.extend(written.stored),
                Err(err) => {
                    tracing::error!(event_id = ?e.id, error = %err, "cannot store a webhook event");
                    stored.push(Inserted::Failed);
                }
            }
        }
        Ok(InboxWrite { stored, settled })
    }

    /// `write_inbox` for one batch in one transaction.
    async fn write_inbox_batch(
        &self,
        events: &[NewEvent],
        owner: &str,
        lease_new: bool,
        until: i64,
        mut results: Vec<EventResult>,
        reasons: Reasons,
    ) -> Result<InboxWrite, StoreError> {
        let lease = lease_new.then(|| (owner.to_owned(), until));
        if let Some(writer) = &self.inbox {
            return writer
                .write(events.to_vec(), lease, owner.to_owned(), results, reasons)
                .await;
        }
        let received = now();
        let mut done = vec![Inserted::Duplicate; events.len()];
        let mut first: std::collections::HashMap<&str, usize> =
            std::collections::HashMap::with_capacity(events.len());
        for (i, e) in events.iter().enumerate() {
            first.entry(e.id.as_str()).or_insert(i);
        }
        // Rows go in event-id order, whatever the arrival order: two replicas committing batches that share
        // events then take the rows' locks in the same order and queue instead of deadlocking (PostgreSQL
        // would abort one batch, and every event in it would be answered 503).
        let mut unique: Vec<usize> = first.values().copied().collect();
        unique.sort_by(|&a, &b| events[a].id.cmp(&events[b].id));
        let mut tx = self.pool.begin().await?;
        let wanted: Vec<&str> = unique
            .iter()
            .flat_map(|&i| events[i].triage.keys())
            .collect();
        let named = businesses_named(self.backend, &mut tx, &wanted).await?;
        let known = known_keys(&named);
        let state = |e: &NewEvent| match &e.triage {
            Triage::Apply => Inserted::Pending,
            Triage::Ignore(why) => Inserted::Ignored(why),
            t if t.keys().iter().any(|k| known.contains(k)) => Inserted::Pending,
            _ => Inserted::Ignored(reasons(Unwritten::UnknownBusiness)),
        };
        // Multi-row statements: one round trip per few hundred events instead of one per event.
        for chunk in unique.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from(
                "INSERT INTO webhook_event (event_id, event_type, created, received_at, source, status, last_error, \
                 applied_at, lease_owner, lease_until, payload, attempts) VALUES ",
            );
            let mut params = Params::new(self.backend);
            for k in 0..chunk.len() {
                sql.push_str(if k == 0 { "(" } else { ", (" });
                params.list(&mut sql, 10);
                sql.push_str(", '', 0)");
            }
            sql.push_str(" ON CONFLICT (event_id) DO NOTHING RETURNING event_id");
            // Not cached as prepared statements: every batch size is another statement text.
            let mut q = sqlx::query(&sql).persistent(false);
            for &i in chunk {
                let e = &events[i];
                let (status, why, applied_at, lease) = match state(e) {
                    Inserted::Ignored(why) => ("ignored", Some(why), Some(received), None),
                    _ => ("pending", None, None, lease.as_ref()),
                };
                q = q
                    .bind(&e.id)
                    .bind(&e.event_type)
                    .bind(e.created)
                    .bind(received)
                    .bind(e.source)
                    .bind(status)
                    .bind(why)
                    .bind(applied_at)
                    .bind(lease.map(|(o, _)| o.as_str()))
                    .bind(lease.map(|(_, u)| *u));
            }
            for row in q.fetch_all(&mut *tx).await? {
                let id: String = row.try_get("event_id")?;
                if let Some(&i) = first.get(id.as_str()) {
                    done[i] = state(&events[i]);
                }
            }
        }
        let new: Vec<&NewEvent> = events
            .iter()
            .zip(&done)
            .filter(|(_, d)| **d != Inserted::Duplicate)
            .map(|(e, _)| e)
            .collect();
        for chunk in new.chunks(ROWS_PER_STATEMENT) {
            let mut sql = String::from("INSERT INTO webhook_payload (event_id, payload) VALUES ");
            let mut params = Params::new(self.backend);
            for k in 0..chunk.len() {
                sql.push_str(if k == 0 { "(" } else { ", (" });
                params.list(&mut sql, 2);
                sql.push(')');
            }
            let mut q = sqlx::query(&sql).persistent(false);
            for e in chunk {
                q = q.bind(&e.id).bind(&e.payload);
            }
            q.execute(&mut *tx).await?;
        }
        // Status events just stored about a known business whose current subscription they concern: the
        // status is written now and the event settled (`Triage::Status`), a few statements per batch.
        let index = BusinessIndex::new(&named);
        let changes: Vec<(usize, StatusChange)> = unique
            .iter()
            .filter(|&&i| done[i] == Inserted::Pending)
            .filter_map(|&i| {
                let b = index.find(&events[i].triage)?;
                let change = StatusChange::of(&events[i], &b.business_id)?;
                (b.subscription.as_deref() == Some(change.subscription_id.as_str()))
                    .then_some((i, change))
            })
            .collect();
        let settled = write_changes(self.backend, &mut tx, changes, received).await?;
        for chunk in settled.chunks(ROWS_PER_STATEMENT) {
            let mut params = Params::new(self.backend);
            let mut sql = String::from(
                "UPDATE webhook_event SET status = v.column2, last_error = v.column3, business_id = v.column4, \
                 attempts = 1, lease_owner = NULL, lease_until = NULL, applied_at = ",
            );
            params.push(&mut sql);
            sql.push_str(" FROM (VALUES ");
            for k in 0..chunk.len() {
                sql.push_str(if k == 0 { "(" } else { ", (" });
                params.list(&mut sql, 4);
                sql.push(')');
            }
            sql.push_str(") AS v WHERE webhook_event.event_id = v.column1");
            let mut q = sqlx::query(&sql).persistent(false).bind(received);
            for (i, business, fact) in chunk {
                q = q
                    .bind(&events[*i].id)
                    .bind(if fact.is_some() { "ignored" } else { "applied" })
                    .bind(fact.map(reasons))
                    .bind(business);
            }
            q.execute(&mut *tx).await?;
            for (i, _, fact) in chunk {
                done[*i] = fact.map_or(Inserted::Applied, |f| Inserted::Ignored(reasons(f)));
            }
        }
        for r in &results {
            let Some(h) = &r.history else {
                continue;
            };
            let written = sqlx::query(RECORD_HISTORY)
                .bind(uuid::Uuid::new_v4().to_string())
                .bind(&h.business_id)
                .bind(&h.kind)
                .bind(&h.detail)
                .bind(received)
                .bind(&r.event_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            if let (1, Some(event)) = (written.rows_affected(), &h.outbound) {
                super::outbox::emit_on(&mut tx, event).await?;
            }
        }
        let change_status = change_status_sql(true);
        for r in &mut results {
            let Some(change) = r.change.clone() else {
                continue;
            };
            let written = sqlx::query(&change_status)
                .bind(&change.business_id)
                .bind(&change.subscription_id)
                .bind(&change.status)
                .bind(change.state_at)
                .bind(received)
                .bind(i64::from(change.tie_settled))
                .bind(&r.event_id)
                .bind(owner)
                .execute(&mut *tx)
                .await?;
            if written.rows_affected() == 0 {
                let state = sqlx::query(BUSINESS_STATE)
                    .bind(&change.business_id)
                    .fetch_optional(&mut *tx)
                    .await?
                    .map(|row| Ok::<_, sqlx::Error>((row.try_get(0)?, row.try_get(1)?)))
                    .transpose()?;
                not_written(r, &change, state, reasons);
            }
        }
        for chunk in results.chunks(ROWS_PER_STATEMENT) {
            let mut params = Params::new(self.backend);
            let mut sql = String::from(
                "UPDATE webhook_event SET status = v.column2, business_id = COALESCE(v.column3, webhook_event.business_id), \
                 last_error = v.column4, applied_at = CASE WHEN v.column2 IN ('applied', 'ignored') THEN ",
            );
            params.push(&mut sql);
            sql.push_str(
                " ELSE webhook_event.applied_at END, next_attempt_at = v.column5, attempts = webhook_event.attempts + 1, \
                 lease_owner = NULL, lease_until = NULL FROM (VALUES ",
            );
            for k in 0..chunk.len() {
                sql.push_str(if k == 0 { "(" } else { ", (" });
                params.list(&mut sql, 4);
                sql.push_str(", CAST(");
                params.push(&mut sql);
                sql.push_str(" AS BIGINT))");
            }
            sql.push_str(
                ") AS v WHERE webhook_event.event_id = v.column1 AND webhook_event.lease_owner = ",
            );
            params.push(&mut sql);
            let mut q = sqlx::query(&sql).persistent(false).bind(received);
            for r in chunk {
                q = q
                    .bind(&r.event_id)
                    .bind(r.status)
                    .bind(&r.business_id)
                    .bind(&r.error)
                    .bind(r.retry_at);
            }
            q.bind(owner).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(InboxWrite {
            stored: done,
            settled: results,
        })
    }

    /// Stores an event unless its id is already stored. Returns whether this call stored it.
    pub async fn insert_event(
        &self,
        id: &str,
        event_type: &str,
        created: i64,
        source: &str,
        payload: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "INSERT INTO webhook_event (event_id, event_type, created, received_at, source, payload, status, attempts) \
             VALUES ($1, $2, $3, $4, $5, '', 'pending', 0) ON CONFLICT (event_id) DO NOTHING",
        )
        .bind(id)
        .bind(event_type)
        .bind(created)
        .bind(now())
        .bind(source)
        .execute(&mut *tx)
        .await?;
        let stored = done.rows_affected() == 1;
        if stored {
            sqlx::query("INSERT INTO webhook_payload (event_id, payload) VALUES ($1, $2)")
                .bind(id)
                .bind(payload)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(stored)
    }

    /// Takes an event for applying, unless it is finished or another worker holds it.
    pub async fn claim_event(
        &self,
        id: &str,
        owner: &str,
        until: i64,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let t = now();
        let done = sqlx::query(
            "UPDATE webhook_event SET lease_owner = $2, lease_until = $3, attempts = attempts + 1 \
             WHERE event_id = $1 AND status IN ('pending', 'failed') AND (lease_until IS NULL OR lease_until < $4)",
        )
        .bind(id)
        .bind(owner)
        .bind(until)
        .bind(t)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() != 1 {
            return Ok(None);
        }
        self.event(id).await
    }

    /// Records the result of applying an event and releases it.
    pub async fn finish_event(
        &self,
        id: &str,
        owner: &str,
        status: &str,
        business_id: Option<&str>,
        error: Option<&str>,
        retry_at: Option<i64>,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE webhook_event SET status = $3, business_id = COALESCE($4, business_id), last_error = $5, \
             applied_at = CASE WHEN $3 IN ('applied', 'ignored') THEN $6 ELSE applied_at END, next_attempt_at = $7, \
             lease_owner = NULL, lease_until = NULL WHERE event_id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(status)
        .bind(business_id)
        .bind(error)
        .bind(now())
        .bind(retry_at)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn event(&self, id: &str) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM {EVENTS} WHERE e.event_id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Events with the given status (all when `None`), newest first.
    pub async fn list_events(
        &self,
        status: Option<&str>,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let sql = format!("SELECT {COLUMNS} FROM {EVENTS} WHERE ($1 IS NULL OR e.status = $1) ORDER BY e.created DESC, e.event_id DESC LIMIT $2");
        let rows = sqlx::query(&sql)
            .bind(status)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Events due for (another) attempt: pending ones left by a crash, failed ones whose backoff passed.
    pub async fn due_events(&self, limit: i64) -> Result<Vec<StoredEvent>, StoreError> {
        let t = now();
        let sql = format!(
            "SELECT {COLUMNS} FROM {EVENTS} WHERE {DUE} ORDER BY e.created, e.event_id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(t)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Takes up to `limit` due events (see `due_events`) for `owner` until `until`, oldest first, in one
    /// statement; replicas claiming at once each get their own. The attempt is counted when its outcome is
    /// recorded (`write_inbox`).
    pub async fn claim_due(
        &self,
        owner: &str,
        until: i64,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        let t = now();
        // The pick is a materialized CTE: as a subquery, PostgreSQL may run it again for each row it
        // updates, and with SKIP LOCKED each run can pick other rows (the contract test caught a limit of
        // 2 claiming 3).
        let (index, lock) = match self.backend {
            // Without statistics SQLite prefers the status index and sorts every pending event.
            Backend::Sqlite => (" INDEXED BY webhook_event_due_idx", ""),
            // Replicas claiming at once skip each other's rows instead of queueing on them.
            Backend::Postgres => ("", " FOR UPDATE SKIP LOCKED"),
        };
        let sql = format!(
            "WITH picked AS MATERIALIZED (SELECT event_id FROM webhook_event{index} WHERE {DUE} \
             ORDER BY created, event_id LIMIT $2{lock}) \
             UPDATE webhook_event SET lease_owner = $3, lease_until = $4 \
             WHERE event_id IN (SELECT event_id FROM picked) AND {DUE} RETURNING event_id"
        );
        let claimed: Vec<String> = sqlx::query(&sql)
            .bind(t)
            .bind(limit)
            .bind(owner)
            .bind(until)
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(|row| row.try_get(0))
            .collect::<Result<_, _>>()?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut params = Params::new(self.backend);
        let mut sql = format!("SELECT {COLUMNS} FROM {EVENTS} WHERE e.event_id IN (");
        params.list(&mut sql, claimed.len());
        sql.push_str(") ORDER BY e.created, e.event_id");
        let mut q = sqlx::query(&sql).persistent(false);
        for id in &claimed {
            q = q.bind(id);
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Puts an event back to pending so it is applied again (`webhooks replay`).
    pub async fn reset_event(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE webhook_event SET status = 'pending', next_attempt_at = NULL, lease_owner = NULL, lease_until = NULL WHERE event_id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The newest `created` of any stored event: where gap fill resumes reading Stripe's event list.
    pub async fn newest_event_created(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query("SELECT MAX(created) AS newest FROM webhook_event")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("newest")?)
    }
}
