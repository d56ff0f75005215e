//! Owner notices (migration 12): one row per cause, planned from the outbox, leased by a sender, and the
//! planner's cursor over the outbox. `owners::notice` decides what to plan; this module only stores it.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use super::{now, now_ms, Cursor, Store, StoreError};

/// Where a notice stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NoticeState {
    /// A roll-back's notice, written before its cancellation; pending once the cancellation is recorded.
    Held,
    Pending,
    Sent,
    /// Refused for good (5xx) or retries ran out of time; `notices resend` tries again.
    Failed,
    /// Never sent, for the reason recorded.
    Skipped,
}

impl NoticeState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Held => "held",
            Self::Pending => "pending",
            Self::Sent => "sent",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "held" => Self::Held,
            "pending" => Self::Pending,
            "sent" => Self::Sent,
            "failed" => Self::Failed,
            "skipped" => Self::Skipped,
            _ => return None,
        })
    }
}

/// A notice to plan.
#[derive(Debug, Clone)]
pub struct NewNotice {
    pub cause: String,
    pub business_id: String,
    pub kind: &'static str,
    pub recipient: Option<String>,
    /// `Pending`, `Held` or `Skipped`.
    pub state: NoticeState,
    pub reason: Option<String>,
    pub data: serde_json::Value,
    pub message_id: String,
    /// How long after now it becomes due.
    pub delay_ms: i64,
}

/// A stored notice.
#[derive(Debug, Clone, Serialize)]
pub struct Notice {
    pub id: String,
    pub cause: String,
    pub business_id: String,
    pub kind: String,
    pub recipient: Option<String>,
    pub state: NoticeState,
    pub reason: Option<String>,
    #[serde(skip)]
    pub data: String,
    pub message_id: String,
    pub attempts: i64,
    pub next_attempt_ms: Option<i64>,
    #[serde(skip)]
    pub window_start_ms: i64,
    pub last_error: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub sent_at: Option<i64>,
}

/// Which notices a listing returns: newest first, after `before` (an id), at most `limit`.
#[derive(Debug, Clone, Default)]
pub struct NoticeFilter {
    pub failed_only: bool,
    pub business_id: Option<String>,
    pub before: Option<String>,
    /// 1..=1000.
    pub limit: i64,
}

/// How `notices resend` went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resend {
    Queued,
    NotFound,
    /// Only a failed notice is resent.
    NotFailed(NoticeState),
}

const COLUMNS: &str =
    "id, cause, business_id, kind, recipient, state, reason, data, message_id, attempts, \
    next_attempt_ms, window_start_ms, last_error, created_at, updated_at, sent_at";

fn from_row(r: &AnyRow) -> Result<Notice, StoreError> {
    let id: String = r.try_get("id")?;
    let state: String = r.try_get("state")?;
    Ok(Notice {
        state: NoticeState::parse(&state).ok_or_else(|| StoreError::Corrupt {
            id: id.clone(),
            reason: format!("notice state {state:?}"),
        })?,
        cause: r.try_get("cause")?,
        business_id: r.try_get("business_id")?,
        kind: r.try_get("kind")?,
        recipient: r.try_get("recipient")?,
        reason: r.try_get("reason")?,
        data: r.try_get("data")?,
        message_id: r.try_get("message_id")?,
        attempts: r.try_get("attempts")?,
        next_attempt_ms: r.try_get("next_attempt_ms")?,
        window_start_ms: r.try_get("window_start_ms")?,
        last_error: r.try_get("last_error")?,
        created_at: r.try_get("created_at")?,
        updated_at: r.try_get("updated_at")?,
        sent_at: r.try_get("sent_at")?,
        id,
    })
}

/// The `Message-ID` of the notice of `cause`: the same for every attempt and resend, so a copy sent again
/// after a crash is recognisably the same email.
pub fn notice_message_id(cause: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(cause.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("<{hex}@notices.genesis-billing>")
}

/// A new notice id: sorts by creation time.
fn new_notice_id(at_ms: i64) -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("gbn_{:013x}{}", at_ms.max(0), &random[..12])
}

impl Store {
    /// Plans a notice unless one of the same cause exists; says whether it was new.
    pub async fn insert_notice(&self, n: &NewNotice) -> Result<bool, StoreError> {
        let at = now_ms();
        let done = sqlx::query(
            "INSERT INTO owner_notice (id, cause, business_id, kind, recipient, state, reason, data, message_id, \
             next_attempt_ms, window_start_ms, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $12, $11, $11) ON CONFLICT (cause) DO NOTHING",
        )
        .bind(new_notice_id(at))
        .bind(&n.cause)
        .bind(&n.business_id)
        .bind(n.kind)
        .bind(&n.recipient)
        .bind(n.state.as_str())
        .bind(&n.reason)
        .bind(n.data.to_string())
        .bind(&n.message_id)
        .bind(at + n.delay_ms.max(0))
        .bind(now())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Decides a held notice (its roll-back cancellation is now recorded): pending to `recipient`, or
    /// skipped for `reason`. Says whether one was held.
    pub async fn resolve_held_notice(
        &self,
        cause: &str,
        state: NoticeState,
        recipient: Option<&str>,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let at = now_ms();
        let due = (state == NoticeState::Pending).then_some(at);
        let done = sqlx::query(
            "UPDATE owner_notice SET state = $2, recipient = $3, reason = $4, next_attempt_ms = $5, \
             window_start_ms = $6, updated_at = $7 WHERE cause = $1 AND state = 'held'",
        )
        .bind(cause)
        .bind(state.as_str())
        .bind(recipient)
        .bind(reason)
        .bind(due)
        .bind(at)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The planner's position over the outbox.
    pub async fn notice_cursor(&self) -> Result<Cursor, StoreError> {
        let row = sqlx::query("SELECT txid, seq FROM notice_cursor WHERE name = 'planner'")
            .fetch_optional(&self.pool)
            .await?;
        let (txid, seq): (i64, i64) = match row {
            Some(r) => (r.try_get(0)?, r.try_get(1)?),
            None => (0, 0),
        };
        Ok(format!("{txid}.{seq}").parse().unwrap_or_default())
    }

    /// Moves the planner's cursor forward to `to` (never back: a slower replica's write is a no-op).
    pub async fn advance_notice_cursor(&self, to: Cursor) -> Result<(), StoreError> {
        let text = to.to_string();
        let (txid, seq) = text.split_once('.').unwrap_or(("0", "0"));
        let (txid, seq): (i64, i64) = (txid.parse().unwrap_or(0), seq.parse().unwrap_or(0));
        sqlx::query(
            "UPDATE notice_cursor SET txid = $1, seq = $2, updated_at = $3 \
             WHERE name = 'planner' AND (txid < $1 OR (txid = $1 AND seq < $2))",
        )
        .bind(txid)
        .bind(seq)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Due pending notices not held by a live lease, oldest first.
    pub async fn due_notices(&self, now_ms: i64, limit: i64) -> Result<Vec<Notice>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM owner_notice WHERE state = 'pending' AND next_attempt_ms <= $1 \
             AND (lease_until_ms IS NULL OR lease_until_ms < $1) ORDER BY next_attempt_ms LIMIT $2"
        ))
        .bind(now_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(from_row).collect()
    }

    /// Takes the lease of a pending notice until `until_ms`; false when another sender holds it.
    pub async fn claim_notice(
        &self,
        id: &str,
        owner: &str,
        now_ms: i64,
        until_ms: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            // The due time is re-checked: another replica may have tried it since it was read as due.
            "UPDATE owner_notice SET lease_owner = $2, lease_until_ms = $3 WHERE id = $1 AND state = 'pending' \
             AND (lease_until_ms IS NULL OR lease_until_ms < $4) AND (next_attempt_ms IS NULL OR next_attempt_ms <= $4)",
        )
        .bind(id)
        .bind(owner)
        .bind(until_ms)
        .bind(now_ms)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records the server's acceptance.
    pub async fn notice_sent(&self, id: &str, owner: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE owner_notice SET state = 'sent', sent_at = $3, updated_at = $3, attempts = attempts + 1, \
             last_error = NULL, next_attempt_ms = NULL, lease_owner = NULL, lease_until_ms = NULL \
             WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a failed attempt: retried at `next_attempt_ms`, or `failed` when that is `None`.
    pub async fn notice_attempt_failed(
        &self,
        id: &str,
        owner: &str,
        next_attempt_ms: Option<i64>,
        error: &str,
    ) -> Result<bool, StoreError> {
        let state = if next_attempt_ms.is_some() {
            "pending"
        } else {
            "failed"
        };
        let done = sqlx::query(
            "UPDATE owner_notice SET state = $3, attempts = attempts + 1, next_attempt_ms = $4, last_error = $5, \
             updated_at = $6, lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(state)
        .bind(next_attempt_ms)
        .bind(error)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a notice that cannot be sent after all (e.g. its business has no email any more).
    pub async fn notice_skipped(
        &self,
        id: &str,
        owner: &str,
        reason: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE owner_notice SET state = 'skipped', reason = $3, next_attempt_ms = NULL, updated_at = $4, \
             lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(owner)
        .bind(reason)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Queues a failed notice again, with a fresh retry window.
    pub async fn resend_notice(&self, id: &str) -> Result<Resend, StoreError> {
        let at = now_ms();
        let done = sqlx::query(
            "UPDATE owner_notice SET state = 'pending', next_attempt_ms = $2, window_start_ms = $2, updated_at = $3, \
             lease_owner = NULL, lease_until_ms = NULL WHERE id = $1 AND state = 'failed'",
        )
        .bind(id)
        .bind(at)
        .bind(now())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 1 {
            return Ok(Resend::Queued);
        }
        Ok(match self.notice(id).await? {
            None => Resend::NotFound,
            Some(n) => Resend::NotFailed(n.state),
        })
    }

    /// One notice by id.
    pub async fn notice(&self, id: &str) -> Result<Option<Notice>, StoreError> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM owner_notice WHERE id = $1"))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// One notice by cause.
    pub async fn notice_by_cause(&self, cause: &str) -> Result<Option<Notice>, StoreError> {
        let row = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM owner_notice WHERE cause = $1"
        ))
        .bind(cause)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(from_row).transpose()
    }

    /// A page of notices, newest first.
    pub async fn list_notices(&self, f: &NoticeFilter) -> Result<Vec<Notice>, StoreError> {
        let mut sql = format!("SELECT {COLUMNS} FROM owner_notice WHERE id < $1");
        let mut n = 2;
        if f.failed_only {
            sql.push_str(" AND state = 'failed'");
        }
        if f.business_id.is_some() {
            sql.push_str(&format!(" AND business_id = ${n}"));
            n += 1;
        }
        sql.push_str(&format!(" ORDER BY id DESC LIMIT ${n}"));
        // Every id sorts below `gbo` ("gbn_…" < "gbo").
        let mut q = sqlx::query(&sql)
            .persistent(false)
            .bind(f.before.clone().unwrap_or_else(|| "gbo".to_owned()));
        if let Some(b) = &f.business_id {
            q = q.bind(b);
        }
        let rows = q.bind(f.limit.clamp(1, 1000)).fetch_all(&self.pool).await?;
        rows.iter().map(from_row).collect()
    }

    /// Businesses still up whose subscription Stripe marked `unpaid` (the partial index of migration 12).
    pub async fn unpaid_active(&self, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT business_id FROM business WHERE status = 'active' AND subscription_status = 'unpaid' \
             ORDER BY business_id LIMIT $1",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// How many notices of `kind` are in each state.
    pub async fn count_notices(&self, kind: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT state, COUNT(*) FROM owner_notice WHERE kind = $1 GROUP BY state ORDER BY state",
        )
        .bind(kind)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Pending notices of `kind` due by `until_ms` (leased ones included: another sender has them).
    pub async fn count_due_notices(&self, kind: &str, until_ms: i64) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM owner_notice WHERE kind = $1 AND state = 'pending' AND next_attempt_ms <= $2",
        )
        .bind(kind)
        .bind(until_ms)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?)
    }

    /// Skips the unsent notices of `kind` of a business about invoice `invoice_id` (a later notice of the
    /// same attempt covers them); returns how many. A notice a sender holds right now is left alone.
    pub async fn supersede_notices(
        &self,
        business_id: &str,
        kind: &str,
        invoice_id: &str,
        reason: &str,
    ) -> Result<u64, StoreError> {
        let needle = invoice_needle(invoice_id);
        let at = now_ms();
        let done = sqlx::query(
            "UPDATE owner_notice SET state = 'skipped', reason = $4, next_attempt_ms = NULL, updated_at = $5 \
             WHERE business_id = $1 AND kind = $2 AND state = 'pending' AND data LIKE $3 \
             AND (lease_until_ms IS NULL OR lease_until_ms < $6)",
        )
        .bind(business_id)
        .bind(kind)
        .bind(needle)
        .bind(reason)
        .bind(now())
        .bind(at)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    /// Whether business `business_id` has a notice of `kind` about invoice `invoice_id`.
    pub async fn has_notice_about(
        &self,
        business_id: &str,
        kind: &str,
        invoice_id: &str,
    ) -> Result<bool, StoreError> {
        Ok(sqlx::query(
            "SELECT 1 FROM owner_notice WHERE business_id = $1 AND kind = $2 AND data LIKE $3 LIMIT 1",
        )
        .bind(business_id)
        .bind(kind)
        .bind(invoice_needle(invoice_id))
        .fetch_optional(&self.pool)
        .await?
        .is_some())
    }
}

/// A LIKE pattern matching notice data about `invoice_id`: `data` is compact JSON written by
/// `insert_notice`, so the pair appears exactly like this.
fn invoice_needle(invoice_id: &str) -> String {
    let pair = serde_json::json!({ "invoice_id": invoice_id }).to_string();
    format!("%{}%", pair.trim_start_matches('{').trim_end_matches('}'))
}
