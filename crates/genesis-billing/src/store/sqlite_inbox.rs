//! The webhook inbox's writes on a SQLite file, on a connection of their own.
//!
//! Through sqlx, each statement is handed to its connection's worker thread and back, and the multi-row
//! statements built for each batch size are parsed anew every time. Here a whole batch is one blocking call
//! on a connection kept for it, with single-row statements prepared once (docs/benchmarks.md). It writes
//! the same rows in the same transaction as the portable path in `webhook_event`, which PostgreSQL and
//! in-memory SQLite use; the store contract tests hold both to the same results.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use rusqlite::{
    params, Connection, OpenFlags, OptionalExtension, Transaction, TransactionBehavior,
};

use super::webhook_event::{
    change_status_sql, not_written, unwritten, EventResult, InboxWrite, Inserted, NewEvent,
    Reasons, StatusChange, Triage, Unwritten, BUSINESS_BY, BUSINESS_STATE, RECORD_HISTORY,
};
use super::{now, StoreError};

/// The writer: one connection, opened at the first write (after the migrations), one batch at a time.
pub(super) struct SqliteInbox {
    path: PathBuf,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl std::fmt::Debug for SqliteInbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteInbox").finish_non_exhaustive()
    }
}

const INSERT_EVENT: &str =
    "INSERT INTO webhook_event (event_id, event_type, created, received_at, source, status, \
    last_error, applied_at, lease_owner, lease_until, business_id, payload, attempts) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, '', ?12) ON CONFLICT (event_id) DO NOTHING";

const STORED: &str = "SELECT EXISTS (SELECT 1 FROM webhook_event WHERE event_id = ?1)";

const INSERT_BODY: &str = "INSERT INTO webhook_payload (event_id, payload) VALUES (?1, ?2)";

/// One lookup per column, so each uses its index.
const KNOWN: &str = "SELECT EXISTS (SELECT 1 FROM business WHERE business_id = ?1) \
    OR EXISTS (SELECT 1 FROM business WHERE stripe_subscription_id = ?1) \
    OR EXISTS (SELECT 1 FROM business WHERE stripe_customer_id = ?1)";

const FINISH: &str = "UPDATE webhook_event SET status = ?3, business_id = COALESCE(?4, business_id), last_error = ?5, \
    applied_at = CASE WHEN ?3 IN ('applied', 'ignored') THEN ?6 ELSE applied_at END, next_attempt_at = ?7, \
    attempts = attempts + 1, lease_owner = NULL, lease_until = NULL WHERE event_id = ?1 AND lease_owner = ?2";

impl SqliteInbox {
    /// The writer for a SQLite URL naming a file; `None` for an in-memory or read-only database.
    pub(super) fn for_url(url: &str) -> Result<Option<Self>, StoreError> {
        let options = sqlx::sqlite::SqliteConnectOptions::from_str(url)?;
        let path = options.get_filename();
        // sqlx names an in-memory database `file:sqlx-in-memory-N`; only the pool's connections share it.
        let in_memory = path.to_string_lossy().starts_with("file:")
            || url.contains("mode=memory")
            || url.contains("mode=ro");
        Ok((!in_memory).then(|| Self {
            path: path.to_owned(),
            conn: Arc::default(),
        }))
    }

    /// Writes one batch (see `Store::write_inbox`) on a blocking thread.
    pub(super) async fn write(
        &self,
        events: Vec<NewEvent>,
        lease: Option<(String, i64)>,
        owner: String,
        results: Vec<EventResult>,
        reasons: Reasons,
    ) -> Result<InboxWrite, StoreError> {
        let (conn, path) = (self.conn.clone(), self.path.clone());
        tokio::task::spawn_blocking(move || {
            let mut slot = conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if slot.is_none() {
                *slot = Some(open(&path)?);
            }
            let conn = slot.as_mut().expect("opened above");
            write_batch(conn, &events, lease.as_ref(), &owner, results, reasons)
        })
        .await
        .map_err(|e| StoreError::Worker(format!("inbox writer stopped: {e}")))?
    }
}

fn open(path: &std::path::Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // As the pool's connections (`Store::connect_with`): a commit survives power loss, and contention with
    // them is a short wait, not an error.
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.busy_handler(Some(retry_soon))?;
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;")?;
    Ok(conn)
}

/// SQLite's own busy handler sleeps 1, 2, 5, 10… ms between tries; the other writers (the admin API, the
/// retry loop, a CLI command) mostly hold the lock for tens of microseconds, so that would hold every
/// waiting delivery a millisecond or more.
fn retry_soon(tries: i32) -> bool {
    const QUICK: i32 = 1_000;
    let pause = if tries < QUICK { 50 } else { 1_000 };
    std::thread::sleep(Duration::from_micros(pause));
    tries < QUICK + 10_000
}

/// The shared statements number their parameters `$n`; rusqlite binds by position, which `?n` keeps.
fn positional(sql: &str) -> String {
    sql.replace('$', "?")
}

// The shared statements in rusqlite's numbering, built once.
static CHANGE_NOW: LazyLock<String> = LazyLock::new(|| positional(&change_status_sql(false)));
static CHANGE_HELD: LazyLock<String> = LazyLock::new(|| positional(&change_status_sql(true)));
static STATE: LazyLock<String> = LazyLock::new(|| positional(BUSINESS_STATE));
static HISTORY: LazyLock<String> = LazyLock::new(|| positional(RECORD_HISTORY));
static OUTBOUND: LazyLock<String> = LazyLock::new(|| positional(super::outbox::INSERT_OUTBOUND));
static LOOKUPS: LazyLock<Vec<String>> =
    LazyLock::new(|| BUSINESS_BY.iter().map(|sql| positional(sql)).collect());

/// Writes a `Triage::Status` event's status as it is stored, where it is for the business's current
/// subscription. Returns the state to store the event in and, when the status was written or found older
/// (the event settled), the business.
fn store_status(
    tx: &Transaction<'_>,
    e: &NewEvent,
    received: i64,
    reasons: Reasons,
) -> Result<(Inserted, Option<String>), StoreError> {
    let mut found = None;
    for (n, key) in e.triage.lookups() {
        found = tx
            .prepare_cached(&LOOKUPS[n])?
            .query_row([key], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, Option<String>>(1)?))
            })
            .optional()?;
        if found.is_some() {
            break;
        }
    }
    let Some((business, current)) = found else {
        return Ok((Inserted::Ignored(reasons(Unwritten::UnknownBusiness)), None));
    };
    let change = match StatusChange::of(e, &business) {
        Some(c) if current.as_deref() == Some(c.subscription_id.as_str()) => c,
        // Not its current subscription: the appliers adopt or ignore it.
        _ => return Ok((Inserted::Pending, None)),
    };
    let written = tx.prepare_cached(&CHANGE_NOW)?.execute(params![
        change.business_id,
        change.subscription_id,
        change.status,
        change.state_at,
        received,
        0i64
    ])? == 1;
    if written {
        return Ok((Inserted::Applied, Some(business)));
    }
    let state = tx
        .prepare_cached(&STATE)?
        .query_row([&business], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(match unwritten(&change, state) {
        Unwritten::SameSecond => (Inserted::Pending, None),
        fact => (Inserted::Ignored(reasons(fact)), Some(business)),
    })
}

fn write_batch(
    conn: &mut Connection,
    events: &[NewEvent],
    lease: Option<&(String, i64)>,
    owner: &str,
    mut results: Vec<EventResult>,
    reasons: Reasons,
) -> Result<InboxWrite, StoreError> {
    let received = now();
    // IMMEDIATE takes the write lock first, so the reads below cannot be invalidated by another writer.
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut done = Vec::with_capacity(events.len());
    {
        let mut insert = tx.prepare_cached(INSERT_EVENT)?;
        let mut body = tx.prepare_cached(INSERT_BODY)?;
        let mut known = tx.prepare_cached(KNOWN)?;
        let mut stored_before = tx.prepare_cached(STORED)?;
        for e in events {
            let mut business = None;
            let state = match &e.triage {
                Triage::Status { .. } => {
                    // An event stored before changes nothing, not even the business.
                    if stored_before.query_row([&e.id], |r| r.get::<_, bool>(0))? {
                        done.push(Inserted::Duplicate);
                        continue;
                    }
                    let (state, settled_for) = store_status(&tx, e, received, reasons)?;
                    business = settled_for;
                    state
                }
                Triage::Apply => Inserted::Pending,
                Triage::IfKnown(keys) => {
                    let mut any = false;
                    for k in keys {
                        if known.query_row([k], |r| r.get::<_, bool>(0))? {
                            any = true;
                            break;
                        }
                    }
                    if any {
                        Inserted::Pending
                    } else {
                        Inserted::Ignored(reasons(Unwritten::UnknownBusiness))
                    }
                }
                Triage::Ignore(why) => Inserted::Ignored(why),
            };
            // A status written (or found older) with the event counts as its one apply.
            let attempts = i64::from(business.is_some());
            let (status, why, applied_at, lease) = match state {
                Inserted::Ignored(why) => ("ignored", Some(why), Some(received), None),
                Inserted::Applied => ("applied", None, Some(received), None),
                _ => ("pending", None, None, lease),
            };
            // A row already there (an earlier delivery, or one earlier in this batch) changes nothing.
            let stored = insert.execute(params![
                e.id,
                e.event_type,
                e.created,
                received,
                e.source,
                status,
                why,
                applied_at,
                lease.map(|(o, _)| o),
                lease.map(|(_, u)| u),
                business,
                attempts,
            ])? == 1;
            if stored {
                body.execute(params![e.id, e.payload])?;
                done.push(state);
            } else {
                done.push(Inserted::Duplicate);
            }
        }
        let mut history = tx.prepare_cached(&HISTORY)?;
        let mut outbound = tx.prepare_cached(&OUTBOUND)?;
        for r in &results {
            if let Some(h) = &r.history {
                let written = history.execute(params![
                    uuid::Uuid::new_v4().to_string(),
                    h.business_id,
                    h.kind,
                    h.detail,
                    received,
                    r.event_id,
                    owner
                ])?;
                if let (1, Some(e)) = (written, &h.outbound) {
                    outbound.execute(params![
                        super::outbox::new_event_id(),
                        e.business_id,
                        e.update_type,
                        e.data_text(),
                        received,
                        e.cause
                    ])?;
                }
            }
        }
        let mut change_held = tx.prepare_cached(&CHANGE_HELD)?;
        let mut state_of = tx.prepare_cached(&STATE)?;
        for r in &mut results {
            let Some(change) = r.change.clone() else {
                continue;
            };
            let written = change_held.execute(params![
                change.business_id,
                change.subscription_id,
                change.status,
                change.state_at,
                received,
                i64::from(change.tie_settled),
                r.event_id,
                owner
            ])?;
            if written == 0 {
                let now_state = state_of
                    .query_row([&change.business_id], |row| Ok((row.get(0)?, row.get(1)?)))
                    .optional()?;
                not_written(r, &change, now_state, reasons);
            }
        }
        let mut finish = tx.prepare_cached(FINISH)?;
        for r in &results {
            finish.execute(params![
                r.event_id,
                owner,
                r.status,
                r.business_id,
                r.error,
                received,
                r.retry_at
            ])?;
        }
    }
    tx.commit()?;
    Ok(InboxWrite {
        stored: done,
        settled: results,
    })
}
