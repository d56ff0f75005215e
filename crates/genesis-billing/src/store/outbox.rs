//! The outbox of events to the meta-agent (SPEC §1.6). Each row is written in the transaction that makes
//! the change it reports: by triggers (migration 11) for a subscription's status and a provisioning
//! failure, whichever path writes them, and by the code (`INSERT_OUTBOUND`, deduplicated by `cause`) for
//! the rest. Rows are read in commit order and delivered one business at a time, oldest first.

use std::fmt;
use std::str::FromStr;

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now, Backend, Store, StoreError};
use crate::business::rfc3339;

/// An event for the outbox, written by the code with the change it reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutbound {
    pub business_id: String,
    /// One of [`UPDATE_TYPES`].
    pub update_type: &'static str,
    pub data: serde_json::Value,
    /// Names the change: a second write with the same cause (a duplicate webhook, gap fill and reconcile
    /// finding one change) writes nothing.
    pub cause: String,
}

/// Every `update_type` the meta-agent switches on; the names are fixed.
pub const UPDATE_TYPES: &[&str] = &[
    "billing.provisioned",
    "billing.failed",
    "billing.status_changed",
    "billing.payment_succeeded",
    "billing.payment_failed",
    "billing.action_required",
    "billing.trial_ending",
    "business.taken_down",
    "billing.rolled_back",
];

/// `next_attempt_ms` of an event waiting behind an earlier undelivered event of its business (as the
/// migration 11 triggers write it).
pub const BLOCKED: i64 = 9_000_000_000_000_000_000;

/// Adds an event unless one of the same cause exists, blocked behind its business's undelivered events.
/// Parameters: id, business, update type, data, created_at, cause.
pub(super) const INSERT_OUTBOUND: &str = "INSERT INTO outbound_event (id, business_id, update_type, data, created_at, cause, next_attempt_ms) \
    VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN EXISTS (SELECT 1 FROM outbound_event p WHERE p.business_id = $2 \
    AND p.delivery = 'pending') THEN 9000000000000000000 ELSE 0 END) ON CONFLICT (cause) DO NOTHING";

/// Lets the oldest undelivered event of the business of event `$1` be sent, once the one before it left
/// the queue.
/// Leases pending event `$1` to `$2` until `$3` if it is free and due at `$4`. The due time is re-checked:
/// another replica may have tried it since it was read as due, and its backoff then holds.
const CLAIM: &str = "UPDATE outbound_event SET lease_owner = $2, lease_until_ms = $3 WHERE seq = $1 AND delivery = 'pending' \
    AND (lease_until_ms IS NULL OR lease_until_ms < $4) AND next_attempt_ms <= $4";

const UNBLOCK_NEXT: &str =
    "UPDATE outbound_event SET next_attempt_ms = 0 WHERE next_attempt_ms = 9000000000000000000 \
    AND seq = (SELECT MIN(p.seq) FROM outbound_event p WHERE p.delivery = 'pending' \
    AND p.business_id = (SELECT e.business_id FROM outbound_event e WHERE e.seq = $1))";

/// A new event id: `gbe_` and 32 hex digits, as the triggers write them.
pub(super) fn new_event_id() -> String {
    format!("gbe_{}", uuid::Uuid::new_v4().simple())
}

impl NewOutbound {
    pub(super) fn data_text(&self) -> String {
        self.data.to_string()
    }
}

/// Writes `event` on a connection inside the caller's transaction; says whether it was new.
pub(super) async fn emit_on(
    conn: &mut sqlx::AnyConnection,
    event: &NewOutbound,
) -> Result<bool, StoreError> {
    let done = sqlx::query(INSERT_OUTBOUND)
        .bind(new_event_id())
        .bind(&event.business_id)
        .bind(event.update_type)
        .bind(event.data_text())
        .bind(now())
        .bind(&event.cause)
        .execute(&mut *conn)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// How far an event got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    /// Not delivered yet (or nothing pushes events).
    Pending,
    Delivered,
    /// The receiver refused it for good, or retries ran out of time; `events replay` sends it again.
    Dead,
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Delivered => "delivered",
            Self::Dead => "dead",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(Self::Pending),
            "delivered" => Some(Self::Delivered),
            "dead" => Some(Self::Dead),
            _ => None,
        }
    }
}

/// A stored event and how its delivery stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OutboundEvent {
    #[serde(skip)]
    pub seq: i64,
    #[serde(skip)]
    pub txid: i64,
    pub id: String,
    pub business_id: String,
    pub update_type: String,
    /// The event's `data` as JSON text.
    #[serde(skip)]
    pub data: String,
    pub created_at: i64,
    pub delivery: Delivery,
    pub attempts: i64,
    /// When retries started (Unix seconds): `created_at`, or the last replay or redeliver. Delivery gives up
    /// a window after it.
    pub retry_from: i64,
    pub next_attempt_ms: Option<i64>,
    pub last_error: Option<String>,
    pub delivered_at: Option<i64>,
}

/// The envelope the meta-agent receives, field order fixed.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    business_id: &'a str,
    update_type: &'a str,
    data: serde_json::Value,
    timestamp: String,
}

impl OutboundEvent {
    /// The body pushed and pulled: the same bytes every time it is read (a retry is byte-identical).
    /// `data` is re-serialised so both backends' JSON text gives one form (keys sorted, no spaces).
    pub fn body(&self) -> String {
        let data = serde_json::from_str(&self.data).unwrap_or(serde_json::Value::Null);
        serde_json::to_string(&Envelope {
            id: &self.id,
            business_id: &self.business_id,
            update_type: &self.update_type,
            data,
            timestamp: rfc3339(self.created_at),
        })
        .expect("an envelope of strings and JSON serialises")
    }

    /// The envelope as JSON, for responses that embed events.
    pub fn envelope(&self) -> serde_json::Value {
        serde_json::from_str(&self.body()).expect("body is JSON")
    }

    /// Where a reader that has seen this event continues.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            txid: self.txid,
            seq: self.seq,
        }
    }
}

/// A position in the stream, in commit order: (writing transaction, sequence). SQLite's transaction is
/// always 0, its sequence is commit order. Written as `<txid>.<seq>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Cursor {
    txid: i64,
    seq: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.txid, self.seq)
    }
}

/// A cursor that is not one this service handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cursor must be a `next_cursor` returned by this endpoint")]
pub struct BadCursor;

impl FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Self, BadCursor> {
        if s.len() > 41 {
            return Err(BadCursor);
        }
        let (txid, seq) = s.split_once('.').ok_or(BadCursor)?;
        let number = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(BadCursor);
            }
            p.parse::<i64>().map_err(|_| BadCursor)
        };
        Ok(Self {
            txid: number(txid)?,
            seq: number(seq)?,
        })
    }
}

/// How one delivery attempt ended, for [`Store::settle_outbound`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SettleOutcome {
    Delivered,
    /// Failed; try again at `next_attempt_ms`.
    Retry {
        next_attempt_ms: i64,
        error: String,
    },
    /// Refused for good, or out of time.
    Dead {
        error: String,
    },
}

/// One attempt to record: the event, its business, how it ended, and whether to lease the business's next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settle {
    pub seq: i64,
    pub business_id: String,
    pub outcome: SettleOutcome,
    pub claim_next: bool,
}

/// What [`Store::settle_outbound`] did for one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settled {
    /// The attempt's lease was still held, so its outcome was written.
    pub held: bool,
    /// The business's next event, now leased to the caller.
    pub next: Option<OutboundEvent>,
}

/// Which events a listing returns.
#[derive(Debug, Clone, Default)]
pub struct OutboundFilter {
    pub after: Option<Cursor>,
    pub business_id: Option<String>,
    pub delivery: Option<Delivery>,
    /// 1..=1000.
    pub limit: i64,
}

/// Where delivery stands, for `/health` and the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct OutboundBacklog {
    /// Events not delivered yet, counted up to [`BACKLOG_COUNT_CAP`].
    pub pending: i64,
    /// When the oldest undelivered event was written.
    pub oldest_pending_at: Option<i64>,
    /// Events dead-lettered and not replayed (within the retention).
    pub dead: i64,
}

/// Counting stops here: a scrape must stay cheap when nothing pushes and millions of events wait.
pub const BACKLOG_COUNT_CAP: i64 = 100_000;

/// How `events replay` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replay {
    /// Queued for delivery again.
    Queued,
    NotFound,
    /// Only a dead-lettered event is replayed; this one is `pending` or `delivered`.
    NotDead(Delivery),
}

const COLUMNS: &str =
    "seq, txid, id, business_id, update_type, data, created_at, delivery, attempts, \
    COALESCE(retry_from, created_at) AS retry_from, next_attempt_ms, last_error, delivered_at";

/// Rows from transactions that may still be running are left for a later read: PostgreSQL assigns `seq`
/// before commit, so a reader could otherwise pass a row that commits after it. The horizon is the oldest
/// transaction of this snapshot still running, leaving out those `pg_stat_activity` shows belong to
/// another database of the server (their xids are cluster-wide; an unknown one counts as ours). Empty on
/// SQLite, which commits one writer at a time.
fn committed_before(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "",
        Backend::Postgres => {
            " AND txid < (SELECT COALESCE((SELECT MIN(x::text::bigint) FROM pg_snapshot_xip(snap.s) AS x \
             WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.backend_xid IS NOT NULL \
             AND a.datname IS DISTINCT FROM current_database() \
             AND a.backend_xid::text::bigint = x::text::bigint % 4294967296)), \
             pg_snapshot_xmax(snap.s)::text::bigint) FROM (SELECT pg_current_snapshot() AS s) AS snap)"
        }
    }
}

fn from_row(r: &AnyRow) -> Result<OutboundEvent, StoreError> {
    let delivery: String = r.try_get("delivery")?;
    let id: String = r.try_get("id")?;
    Ok(OutboundEvent {
        seq: r.try_get("seq")?,
        txid: r.try_get("txid")?,
        business_id: r.try_get("business_id")?,
        update_type: r.try_get("update_type")?,
        data: r.try_get("data")?,
        created_at: r.try_get("created_at")?,
        delivery: Delivery::parse(&delivery).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("delivery {delivery:?}"),
        })?,
        attempts: r.try_get("attempts")?,
        retry_from: r.try_get("retry_from")?,
        next_attempt_ms: Some(r.try_get::<i64, _>("next_attempt_ms")?)
            .filter(|&t| t != 0 && t != BLOCKED),
        last_error: r.try_get("last_error")?,
        delivered_at: r.try_get("delivered_at")?,
        id,
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Rows changed per statement by the bulk operations (redeliver, prune), so none holds the write lock long.
const BULK_ROWS: i64 = 1000;

impl Store {
    /// Writes an event in its own transaction (for a change already committed by an earlier statement of
    /// the same caller only when the event is idempotent by `cause`); says whether it was new.
    pub async fn emit(&self, event: &NewOutbound) -> Result<bool, StoreError> {
        let mut conn = self.pool.acquire().await?;
        let new = emit_on(&mut conn, event).await?;
        self.outbox_written();
        Ok(new)
    }

    /// Wakes the delivery worker: an event may have been written.
    pub(crate) fn outbox_written(&self) {
        self.outbox.notify_one();
    }

    /// Notified when this process may have written an event (other replicas' events are found by polling).
    pub fn outbox_signal(&self) -> std::sync::Arc<tokio::sync::Notify> {
        self.outbox.clone()
    }

    /// Events in commit order after `filter.after`, at most `filter.limit`.
    pub async fn list_outbound(
        &self,
        filter: &OutboundFilter,
    ) -> Result<Vec<OutboundEvent>, StoreError> {
        let after = filter.after.unwrap_or_default();
        // SQLite's txid is always 0 and a cursor's never negative, so `txid = $1 AND seq > $2` is the same
        // set there; its row-value form made SQLite scan and sort the whole table every page (38 ms against
        // 0.14 ms for a page of 100 among 300,000 events), where this one seeks the primary key.
        let (key, order) = match self.backend {
            Backend::Sqlite => ("txid = $1 AND seq > $2", "seq"),
            Backend::Postgres => ("(txid, seq) > ($1, $2)", "txid, seq"),
        };
        let mut sql = format!(
            "SELECT {COLUMNS} FROM outbound_event WHERE {key}{}",
            committed_before(self.backend)
        );
        if filter.business_id.is_some() {
            sql.push_str(" AND business_id = $4");
        }
        if filter.delivery.is_some() {
            sql.push_str(if filter.business_id.is_some() {
                " AND delivery = $5"
            } else {
                " AND delivery = $4"
            });
        }
        sql.push_str(&format!(" ORDER BY {order} LIMIT $3"));
        let mut q = sqlx::query(&sql)
            .persistent(false)
            .bind(after.txid)
            .bind(after.seq)
            .bind(filter.limit.clamp(1, 1000));
        if let Some(b) = &filter.business_id {
            q = q.bind(b);
        }
        if let Some(d) = filter.delivery {
            q = q.bind(d.as_str());
        }
        let rows = q.fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// One event by its id.
    pub async fn outbound_event(&self, id: &str) -> Result<Option<OutboundEvent>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM outbound_event WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// Due events at the head of their business's queue (the oldest undelivered one of each business),
    /// oldest first, at most `limit`, not held by a live lease.
    pub async fn due_outbound(
        &self,
        now_ms: i64,
        limit: i64,
    ) -> Result<Vec<OutboundEvent>, StoreError> {
        let sql = format!(
            "SELECT {COLUMNS} FROM outbound_event o WHERE o.delivery = 'pending' \
             AND o.seq = (SELECT MIN(i.seq) FROM outbound_event i WHERE i.business_id = o.business_id AND i.delivery = 'pending') \
             AND o.next_attempt_ms <= $1 \
             AND (o.lease_until_ms IS NULL OR o.lease_until_ms < $1){} \
             ORDER BY o.next_attempt_ms, o.seq LIMIT $2",
            committed_before(self.backend)
        );
        let rows = sqlx::query(&sql)
            .bind(now_ms)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(from_row).collect()
    }

    /// Takes the lease of a pending event until `until_ms`; false when another worker holds it or it is no
    /// longer pending.
    pub async fn claim_outbound(
        &self,
        seq: i64,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(CLAIM)
            .bind(seq)
            .bind(owner)
            .bind(until_ms)
            .bind(now_ms)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the outcomes of several attempts in one transaction (one disk sync for many events), and for
    /// each attempt that lets its business go on, leases that business's next event if it is due and free.
    /// Per attempt: whether its lease was still held, and the next event now leased to `owner`.
    pub async fn settle_outbound(
        &self,
        owner: &str,
        attempts: &[Settle],
        now_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<Settled>, StoreError> {
        let next_sql = format!(
            "SELECT {COLUMNS} FROM outbound_event WHERE business_id = $1 AND delivery = 'pending'{} \
             ORDER BY seq LIMIT 1",
            committed_before(self.backend)
        );
        let mut tx = self.pool.begin().await?;
        let mut settled = Vec::with_capacity(attempts.len());
        for a in attempts {
            let q = match &a.outcome {
                SettleOutcome::Delivered => sqlx::query(
                    "UPDATE outbound_event SET delivery = 'delivered', delivered_at = $3, attempts = attempts + 1, \
                     last_error = NULL, next_attempt_ms = 0, lease_owner = NULL, lease_until_ms = NULL \
                     WHERE seq = $1 AND lease_owner = $2",
                )
                .bind(a.seq)
                .bind(owner)
                .bind(now()),
                SettleOutcome::Retry {
                    next_attempt_ms,
                    error,
                } => sqlx::query(
                    "UPDATE outbound_event SET attempts = attempts + 1, next_attempt_ms = $3, last_error = $4, \
                     lease_owner = NULL, lease_until_ms = NULL WHERE seq = $1 AND lease_owner = $2",
                )
                .bind(a.seq)
                .bind(owner)
                .bind(*next_attempt_ms)
                .bind(error.as_str()),
                SettleOutcome::Dead { error } => sqlx::query(
                    "UPDATE outbound_event SET delivery = 'dead', attempts = attempts + 1, next_attempt_ms = 0, \
                     last_error = $3, lease_owner = NULL, lease_until_ms = NULL WHERE seq = $1 AND lease_owner = $2",
                )
                .bind(a.seq)
                .bind(owner)
                .bind(error.as_str()),
            };
            let held = q.execute(&mut *tx).await?.rows_affected() == 1;
            let goes_on = held && !matches!(a.outcome, SettleOutcome::Retry { .. });
            if goes_on {
                sqlx::query(UNBLOCK_NEXT)
                    .bind(a.seq)
                    .execute(&mut *tx)
                    .await?;
            }
            let mut next = None;
            if goes_on && a.claim_next {
                let row = sqlx::query(&next_sql)
                    .bind(&a.business_id)
                    .fetch_optional(&mut *tx)
                    .await?;
                if let Some(e) = row.as_ref().map(from_row).transpose()? {
                    let claimed = sqlx::query(CLAIM)
                        .bind(e.seq)
                        .bind(owner)
                        .bind(until_ms)
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await?;
                    next = (claimed.rows_affected() == 1).then_some(e);
                }
            }
            settled.push(Settled { held, next });
        }
        tx.commit().await?;
        Ok(settled)
    }

    /// Records a 2xx; false when the lease was lost (another worker took the event over).
    pub async fn outbound_delivered(&self, seq: i64, owner: &str) -> Result<bool, StoreError> {
        self.settle_one(seq, owner, SettleOutcome::Delivered).await
    }

    /// Dead-letters an event: the receiver refused it for good, or retries ran out of time.
    pub async fn outbound_dead(
        &self,
        seq: i64,
        owner: &str,
        error: &str,
    ) -> Result<bool, StoreError> {
        let error = error.to_owned();
        self.settle_one(seq, owner, SettleOutcome::Dead { error })
            .await
    }

    /// `settle_outbound` for one attempt, without leasing the next event.
    async fn settle_one(
        &self,
        seq: i64,
        owner: &str,
        outcome: SettleOutcome,
    ) -> Result<bool, StoreError> {
        let attempt = Settle {
            seq,
            business_id: String::new(),
            outcome,
            claim_next: false,
        };
        let now = now_ms();
        let settled = self.settle_outbound(owner, &[attempt], now, now).await?;
        Ok(settled.first().is_some_and(|s| s.held))
    }

    /// Unblocks the oldest undelivered event of each business whose earlier event left the queue without
    /// unblocking it (pruned, or on PostgreSQL written while the one before it was being settled): a
    /// safety net walked a thousand blocked events per statement. Returns how many it unblocked.
    pub async fn unblock_stranded(&self) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut after = 0i64;
        loop {
            let sql = format!(
                "SELECT o.seq FROM outbound_event o WHERE o.delivery = 'pending' AND o.next_attempt_ms = {BLOCKED} \
                 AND o.seq > $1 ORDER BY o.next_attempt_ms, o.seq LIMIT $2"
            );
            let seqs: Vec<i64> = sqlx::query(&sql)
                .bind(after)
                .bind(BULK_ROWS)
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let Some(&last) = seqs.last() else {
                return Ok(total);
            };
            let done = sqlx::query(&format!(
                "UPDATE outbound_event SET next_attempt_ms = 0 WHERE seq >= $1 AND seq <= $2 \
                 AND delivery = 'pending' AND next_attempt_ms = {BLOCKED} AND NOT EXISTS (SELECT 1 FROM outbound_event p \
                 WHERE p.business_id = outbound_event.business_id AND p.delivery = 'pending' AND p.seq < outbound_event.seq)"
            ))
            .bind(seqs[0])
            .bind(last)
            .execute(&self.pool)
            .await?;
            total += done.rows_affected();
            after = last;
        }
    }

    /// Queues a dead-lettered event for delivery again, with a fresh retry window.
    pub async fn replay_outbound(&self, id: &str) -> Result<Replay, StoreError> {
        let done = sqlx::query(
            "UPDATE outbound_event SET delivery = 'pending', next_attempt_ms = 0, last_error = NULL, attempts = 0, \
             retry_from = $2 WHERE id = $1 AND delivery = 'dead'",
        )
        .bind(id)
        .bind(now())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            self.outbox_written();
            return Ok(Replay::Queued);
        }
        Ok(match self.outbound_event(id).await? {
            None => Replay::NotFound,
            Some(e) => Replay::NotDead(e.delivery),
        })
    }

    /// Queues every delivered or dead-lettered event written at or after `since` (Unix seconds), of one
    /// business or all, for delivery again, a thousand rows per statement; returns how many.
    pub async fn redeliver_outbound(
        &self,
        since: i64,
        business_id: Option<&str>,
    ) -> Result<u64, StoreError> {
        let mut total = 0;
        let mut after = 0i64;
        loop {
            // Walks the sequence once: a statement's rows are found from where the last one stopped.
            let sql = format!(
                "SELECT seq FROM outbound_event WHERE seq > $1 AND created_at >= $2 AND delivery <> 'pending'{} \
                 ORDER BY seq LIMIT $3",
                if business_id.is_some() {
                    " AND business_id = $4"
                } else {
                    ""
                }
            );
            let mut q = sqlx::query(&sql)
                .persistent(false)
                .bind(after)
                .bind(since)
                .bind(BULK_ROWS);
            if let Some(b) = business_id {
                q = q.bind(b);
            }
            let seqs: Vec<i64> = q
                .fetch_all(&self.pool)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            let (Some(&first), Some(&last)) = (seqs.first(), seqs.last()) else {
                break;
            };
            let done = sqlx::query(
                "UPDATE outbound_event SET delivery = 'pending', next_attempt_ms = 0, last_error = NULL, attempts = 0, \
                 retry_from = $5 WHERE seq >= $1 AND seq <= $2 AND created_at >= $3 AND delivery <> 'pending' \
                 AND ($4 = '' OR business_id = $4)",
            )
            .bind(first)
            .bind(last)
            .bind(since)
            .bind(business_id.unwrap_or(""))
            .bind(now())
            .execute(&self.pool)
            .await?;
            total += done.rows_affected();
            after = last;
        }
        if total > 0 {
            self.outbox_written();
        }
        Ok(total)
    }

    /// Deletes events written before `before` (Unix seconds), a thousand per statement; returns how many.
    pub async fn prune_outbound(&self, before: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let done = sqlx::query(
                // An undelivered event replayed or redelivered late keeps its retry window.
                "DELETE FROM outbound_event WHERE seq IN \
                 (SELECT seq FROM outbound_event WHERE created_at < $1 \
                  AND (delivery <> 'pending' OR COALESCE(retry_from, created_at) < $1) ORDER BY created_at LIMIT $2)",
            )
            .bind(before)
            .bind(BULK_ROWS)
            .execute(&self.pool)
            .await?;
            total += done.rows_affected();
            if done.rows_affected() < BULK_ROWS as u64 {
                return Ok(total);
            }
        }
    }

    /// How far behind delivery is: bounded reads on the partial indexes.
    pub async fn outbound_backlog(&self) -> Result<OutboundBacklog, StoreError> {
        let pending: i64 = sqlx::query(
            "SELECT COUNT(*) FROM (SELECT 1 FROM outbound_event WHERE delivery = 'pending' LIMIT $1) AS p",
        )
        .bind(BACKLOG_COUNT_CAP)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let oldest: Option<i64> = sqlx::query(
            "SELECT created_at FROM outbound_event WHERE delivery = 'pending' ORDER BY seq LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        let dead: i64 = sqlx::query(
            "SELECT COUNT(*) FROM (SELECT 1 FROM outbound_event WHERE delivery = 'dead' LIMIT $1) AS d",
        )
        .bind(BACKLOG_COUNT_CAP)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        Ok(OutboundBacklog {
            pending,
            oldest_pending_at: oldest,
            dead,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_reads_back_what_it_wrote_and_refuses_anything_else() {
        let c = Cursor { txid: 7, seq: 42 };
        assert_eq!(c.to_string().parse::<Cursor>(), Ok(c));
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1",
            "a.b",
            "-1.2",
            "1.-2",
            "1.2.3",
            " 1.2",
            "1.2 ",
            "99999999999999999999.1",
            "1.0x10",
            "１.２",
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(BadCursor), "{bad:?}");
        }
        assert_eq!(
            "1".repeat(100).parse::<Cursor>(),
            Err(BadCursor),
            "oversized"
        );
    }

    #[test]
    fn the_body_is_the_fixed_envelope_and_the_same_bytes_every_time() {
        let e = OutboundEvent {
            seq: 1,
            txid: 0,
            id: "gbe_1".into(),
            business_id: "b\"1".into(),
            update_type: "billing.status_changed".into(),
            data: r#"{"to" : "past_due", "from":"active","subscription_id":"sub_1"}"#.into(),
            created_at: 1_800_000_000,
            delivery: Delivery::Pending,
            attempts: 0,
            retry_from: 1_800_000_000,
            next_attempt_ms: None,
            last_error: None,
            delivered_at: None,
        };
        let body = e.body();
        assert_eq!(
            body,
            r#"{"id":"gbe_1","business_id":"b\"1","update_type":"billing.status_changed","data":{"from":"active","subscription_id":"sub_1","to":"past_due"},"timestamp":"2027-01-15T08:00:00Z"}"#
        );
        assert_eq!(e.body(), body);
    }
}
