//! Durable records behind one storage interface. All SQL lives here.
//!
//! Queries are runtime-checked (`sqlx::query`) through sqlx's `Any` driver with `$n` placeholders, which
//! SQLite and PostgreSQL both accept, so the domain code never knows which backend it runs on. Statements
//! built at run time with many parameters write them with [`Params`] instead.

mod change_marker;
mod coordination;
mod database_url;
mod health;
mod migrate;
mod notice;
mod outbox;
mod reconcile_scratch;
mod sqlite_inbox;
mod webhook_event;

pub use coordination::{BusinessLease, Holder, HolderState, JobLease, UnfinishedBusiness};
pub use database_url::DatabaseUrl;
pub use health::ProbeFailure;
pub use notice::{notice_message_id, NewNotice, Notice, NoticeFilter, NoticeState, Resend};
pub use outbox::{
    now_ms, BadCursor, Cursor, Delivery, NewOutbound, OutboundBacklog, OutboundEvent,
    OutboundFilter, Replay, Settle, SettleOutcome, Settled, BACKLOG_COUNT_CAP, BLOCKED,
    UPDATE_TYPES,
};
pub use reconcile_scratch::StripeRow;
pub use webhook_event::{
    EventResult, HistoryEntry, InboxWrite, Inserted, NewEvent, Reasons, StatusChange, StoredEvent,
    Triage, Unwritten,
};

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor as _, Row};

use crate::business::{Billing, Business, Lifecycle};
pub use crate::revenue::SubscriptionTally;

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database error: {0}")]
    Worker(String),
    #[error("corrupt record {id}: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("duplicate: {0}")]
    Duplicate(String),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error(
        "the database was migrated by a newer genesis-billing: it has migration {version} ({name}), and this \
         binary knows migrations up to {known} only; run a version that knows it"
    )]
    SchemaTooNew {
        version: i64,
        name: String,
        known: i64,
    },
}

impl StoreError {
    /// The database refused what was written (a constraint, a value it cannot store), as opposed to
    /// being unreachable, busy or out of time: writing the same rows again in smaller parts can succeed.
    pub fn is_refusal(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                match db.kind() {
                    sqlx::error::ErrorKind::UniqueViolation
                    | sqlx::error::ErrorKind::ForeignKeyViolation
                    | sqlx::error::ErrorKind::NotNullViolation
                    | sqlx::error::ErrorKind::CheckViolation => true,
                    // PostgreSQL classes: 22 data exception (a NUL in text), 23 integrity, P0 raised by a
                    // trigger. Connection, transaction-rollback, resource and timeout classes are not.
                    _ => {
                        ["22", "23", "P0"].iter().any(|c| code.starts_with(c))
                        // SQLite: constraint (19 and its extended codes), too big, mismatch.
                        || code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 18..=20))
                    }
                }
            }
            Self::Database(
                sqlx::Error::Encode(_)
                | sqlx::Error::InvalidArgument(_)
                | sqlx::Error::ColumnDecode { .. },
            ) => true,
            Self::Sqlite(rusqlite::Error::SqliteFailure(e, _)) => matches!(
                e.code,
                rusqlite::ErrorCode::ConstraintViolation
                    | rusqlite::ErrorCode::TooBig
                    | rusqlite::ErrorCode::TypeMismatch
            ),
            Self::Sqlite(rusqlite::Error::ToSqlConversionFailure(_)) => true,
            _ => false,
        }
    }
}

/// Which database the store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sqlite => "sqlite",
            Self::Postgres => "postgres",
        }
    }
}

/// The state of one Stripe write in the intent log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    pub state: String,
    pub attempts: i64,
    pub result_id: Option<String>,
    pub created_at: i64,
}

/// Filters for listing businesses.
#[derive(Debug, Clone, Default)]
pub struct BusinessFilter {
    pub status: Option<Lifecycle>,
    pub billing: Option<Billing>,
    pub limit: i64,
    /// Business id of the last row of the previous page.
    pub after: Option<String>,
}

/// Most businesses one page of [`Store::list_businesses`] returns to code that walks the whole fleet.
pub const PAGE: i64 = 1000;

/// Walks every business matching a filter, newest first, one bounded page at a time.
#[derive(Debug, Clone)]
pub struct BusinessPages {
    filter: BusinessFilter,
    done: bool,
}

impl BusinessPages {
    /// Pages of at most `filter.limit` businesses ([`PAGE`] when it is not positive), from `filter.after`.
    pub fn new(mut filter: BusinessFilter) -> Self {
        if filter.limit <= 0 {
            filter.limit = PAGE;
        }
        Self {
            filter,
            done: false,
        }
    }

    /// The next page; `None` once every business was returned.
    pub async fn next(&mut self, store: &Store) -> Result<Option<Vec<Business>>, StoreError> {
        if self.done {
            return Ok(None);
        }
        let page = store.list_businesses(&self.filter).await?;
        if (page.len() as i64) < self.filter.limit {
            self.done = true;
        }
        match page.last() {
            Some(last) => self.filter.after = Some(last.business_id.clone()),
            None => return Ok(None),
        }
        Ok(Some(page))
    }
}

/// The billing outcome of a created subscription.
#[derive(Debug, Clone)]
pub struct SubscriptionRecord<'a> {
    pub customer_id: Option<&'a str>,
    pub subscription_id: &'a str,
    pub status: &'a str,
    pub lookup_key: &'a str,
    pub price_id: &'a str,
    pub monthly_price_cents: i64,
    /// The price's own amount and interval, for the `billing.provisioned` event.
    pub amount_cents: i64,
    pub interval: &'a str,
    pub currency: &'a str,
    pub state_at: i64,
}

/// How to size and bound the connection pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreOptions {
    /// Most connections this process opens (every replica opens its own pool: size the server for the sum).
    pub max_connections: u32,
    /// PostgreSQL `statement_timeout` for every connection; `None` leaves the server's default.
    pub statement_timeout: Option<Duration>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 16,
            statement_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// The database: a connection pool plus the queries the domain needs.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The webhook inbox's own writer on a SQLite file; `None` on PostgreSQL and in-memory SQLite.
    inbox: Option<std::sync::Arc<sqlite_inbox::SqliteInbox>>,
    /// Tells whether a SQLite file changed; `None` on PostgreSQL and in-memory SQLite.
    marker: Option<std::sync::Arc<change_marker::SqliteMarker>>,
    /// Wakes the event delivery worker after this process wrote to the outbox.
    outbox: std::sync::Arc<tokio::sync::Notify>,
}

/// A business's billing after its subscription's status becomes `$3`: a subscription that expired unpaid
/// ends it; one that comes back (a payment after Checkout) restarts it.
const BILLING_AFTER_STATUS: &str = "CASE WHEN $3 = 'incomplete_expired' THEN 'expired' \
    WHEN billing = 'expired' AND $3 IN ('active', 'trialing', 'past_due') THEN 'provisioned' ELSE billing END";

pub(crate) const BUSINESS_COLUMNS: &str = "business_id, name, business_type, email, created_at, updated_at, status, billing, \
    billing_error, failed_step, stripe_customer_id, stripe_subscription_id, stripe_payment_intent_id, \
    subscription_status, price_lookup_key, stripe_price_id, monthly_price_cents, currency, generation, \
    stripe_state_at, taken_down_at, takedown_reason, takedown_outcome";

/// Writes the bind parameters of a statement built at run time, numbered in the order they appear.
///
/// SQLite finds a numbered parameter's name (`$7`) by a linear scan, and sqlx asks for every parameter's
/// name when binding, so a statement with thousands of `$n` costs quadratic time: two thirds of the webhook
/// writer's time at 256 events per batch. Plain `?` are bound by position at no cost, so SQLite gets `?`
/// and PostgreSQL `$1`, `$2`, …; either way values are bound in the order their parameters appear.
struct Params {
    backend: Backend,
    written: usize,
}

impl Params {
    fn new(backend: Backend) -> Self {
        Self {
            backend,
            written: 0,
        }
    }

    /// Appends the next parameter to `sql`.
    fn push(&mut self, sql: &mut String) {
        self.written += 1;
        match self.backend {
            Backend::Sqlite => sql.push('?'),
            Backend::Postgres => {
                use std::fmt::Write as _;
                let _ = write!(sql, "${}", self.written);
            }
        }
    }

    /// Appends `n` parameters separated by commas.
    fn list(&mut self, sql: &mut String, n: usize) {
        for k in 0..n {
            if k > 0 {
                sql.push_str(", ");
            }
            self.push(sql);
        }
    }
}

/// A business as the webhook inbox looks it up: the values that name it, and its current subscription.
#[derive(Debug, Clone)]
struct BusinessKeys {
    business_id: String,
    subscription: Option<String>,
    customer: Option<String>,
    created_at: i64,
}

/// The businesses these values name (as their id, Stripe subscription id or customer id), one query per few
/// hundred values.
async fn businesses_named(
    backend: Backend,
    conn: &mut sqlx::AnyConnection,
    keys: &[&str],
) -> Result<Vec<BusinessKeys>, StoreError> {
    let mut found: std::collections::HashMap<String, BusinessKeys> =
        std::collections::HashMap::new();
    for chunk in keys.chunks(300) {
        let mut sql = String::new();
        let mut params = Params::new(backend);
        for (n, column) in [
            "business_id",
            "stripe_subscription_id",
            "stripe_customer_id",
        ]
        .into_iter()
        .enumerate()
        {
            if n > 0 {
                sql.push_str(" UNION ");
            }
            sql.push_str(&format!(
                "SELECT business_id, stripe_subscription_id, stripe_customer_id, created_at FROM business \
                 WHERE {column} IN ("
            ));
            params.list(&mut sql, chunk.len());
            sql.push(')');
        }
        let mut q = sqlx::query(&sql).persistent(false);
        for k in chunk.iter().cycle().take(3 * chunk.len()) {
            q = q.bind(*k);
        }
        for row in q.fetch_all(&mut *conn).await? {
            let b = BusinessKeys {
                business_id: row.try_get(0)?,
                subscription: row.try_get(1)?,
                customer: row.try_get(2)?,
                created_at: row.try_get(3)?,
            };
            found.insert(b.business_id.clone(), b);
        }
    }
    Ok(found.into_values().collect())
}

/// Which of these values name a business (as its id, Stripe subscription id or customer id).
fn known_keys(businesses: &[BusinessKeys]) -> std::collections::HashSet<&str> {
    businesses
        .iter()
        .flat_map(|b| {
            [
                Some(b.business_id.as_str()),
                b.subscription.as_deref(),
                b.customer.as_deref(),
            ]
        })
        .flatten()
        .collect()
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub(crate) fn business_from_row(row: &AnyRow) -> Result<Business, StoreError> {
    let id: String = row.try_get("business_id")?;
    let status: String = row.try_get("status")?;
    let billing: String = row.try_get("billing")?;
    let corrupt = |reason: String| StoreError::Corrupt {
        id: id.clone(),
        reason,
    };
    Ok(Business {
        status: Lifecycle::parse(&status).ok_or_else(|| corrupt(format!("status {status:?}")))?,
        billing: Billing::parse(&billing).ok_or_else(|| corrupt(format!("billing {billing:?}")))?,
        name: row.try_get("name")?,
        business_type: row.try_get("business_type")?,
        email: row.try_get("email")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        billing_error: row.try_get("billing_error")?,
        failed_step: row.try_get("failed_step")?,
        stripe_customer_id: row.try_get("stripe_customer_id")?,
        stripe_subscription_id: row.try_get("stripe_subscription_id")?,
        stripe_payment_intent_id: row.try_get("stripe_payment_intent_id")?,
        subscription_status: row.try_get("subscription_status")?,
        price_lookup_key: row.try_get("price_lookup_key")?,
        stripe_price_id: row.try_get("stripe_price_id")?,
        monthly_price_cents: row.try_get("monthly_price_cents")?,
        currency: row.try_get("currency")?,
        generation: row.try_get("generation")?,
        stripe_state_at: row.try_get("stripe_state_at")?,
        taken_down_at: row.try_get("taken_down_at")?,
        takedown_reason: row.try_get("takedown_reason")?,
        takedown_outcome: row.try_get("takedown_outcome")?,
        business_id: id,
    })
}

/// The one INSERT of a business record, with its request key and work lease when there are any.
fn insert_business_query<'q>(
    b: &'q Business,
    request_key: Option<&'q str>,
    lease: Option<(&'q str, i64)>,
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>> {
    let me = Holder::current();
    sqlx::query(
        "INSERT INTO business (business_id, name, business_type, email, created_at, updated_at, status, billing, \
         billing_error, stripe_customer_id, stripe_subscription_id, stripe_payment_intent_id, subscription_status, \
         monthly_price_cents, currency, generation, request_key, lease_owner, lease_until, lease_host, lease_pid, \
         lease_started) \
         VALUES ($1, $2, $3, $4, $5, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, 0, $15, $16, $17, $18, $19, $20)",
    )
    .bind(&b.business_id)
    .bind(&b.name)
    .bind(&b.business_type)
    .bind(&b.email)
    .bind(b.created_at)
    .bind(b.status.as_str())
    .bind(b.billing.as_str())
    .bind(&b.billing_error)
    .bind(&b.stripe_customer_id)
    .bind(&b.stripe_subscription_id)
    .bind(&b.stripe_payment_intent_id)
    .bind(&b.subscription_status)
    .bind(b.monthly_price_cents)
    .bind(&b.currency)
    .bind(request_key)
    .bind(lease.map(|(owner, _)| owner))
    .bind(lease.map(|(_, until)| until))
    .bind(lease.and(me.host.as_deref()))
    .bind(lease.map(|_| me.pid))
    .bind(lease.and(me.started.as_deref()))
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

impl Store {
    /// Connects with a pool of at most `max_connections` and the default statement timeout.
    pub async fn connect(url: &DatabaseUrl, max_connections: u32) -> Result<Self, StoreError> {
        Self::connect_with(
            url,
            StoreOptions {
                max_connections,
                ..StoreOptions::default()
            },
        )
        .await
    }

    /// Connects, creating a SQLite file if needed (WAL, busy timeout, foreign keys on); on PostgreSQL
    /// every connection gets the statement timeout, so a stuck query cannot hold a connection for ever.
    pub async fn connect_with(
        url: &DatabaseUrl,
        options: StoreOptions,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        let max_connections = options.max_connections.max(1);
        // `SET` takes no bind parameters; the value is a number we formatted ourselves.
        let set_timeout = options
            .statement_timeout
            .map(|t| format!("SET statement_timeout = {}", t.as_millis()));
        let backend = if url.is_postgres() {
            Backend::Postgres
        } else {
            Backend::Sqlite
        };
        let mut conn_url = url.expose().to_owned();
        if backend == Backend::Sqlite && !conn_url.contains("mode=") {
            conn_url.push_str(if conn_url.contains('?') {
                "&mode=rwc"
            } else {
                "?mode=rwc"
            });
        }
        let pool = AnyPoolOptions::new()
            .max_connections(max_connections)
            .acquire_timeout(Duration::from_secs(30))
            .after_connect(move |conn, _meta| {
                let set_timeout = set_timeout.clone();
                Box::pin(async move {
                    if backend == Backend::Sqlite {
                        // 16 KiB pages (only a new file takes them; set before WAL mode creates it) hold
                        // seven 2 KB webhook bodies, where a 4 KiB page holds one and is half empty
                        // (docs/benchmarks.md). WAL lets readers run beside the writer; FULL sync makes a
                        // commit survive power loss; the busy timeout turns writer contention into a short
                        // wait instead of an error.
                        conn.execute(
                            "PRAGMA page_size = 16384; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                             PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                        )
                        .await?;
                    } else if let Some(set) = &set_timeout {
                        conn.execute(set.as_str()).await?;
                    }
                    Ok(())
                })
            })
            .connect(&conn_url)
            .await?;
        let inbox = match backend {
            Backend::Sqlite => {
                sqlite_inbox::SqliteInbox::for_url(&conn_url)?.map(std::sync::Arc::new)
            }
            Backend::Postgres => None,
        };
        let marker = match backend {
            Backend::Sqlite => {
                change_marker::SqliteMarker::for_url(&conn_url).map(std::sync::Arc::new)
            }
            Backend::Postgres => None,
        };
        Ok(Self {
            pool,
            backend,
            inbox,
            marker,
            outbox: std::sync::Arc::default(),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the embedded migrations that are not applied yet.
    pub async fn migrate(&self) -> Result<Vec<&'static str>, StoreError> {
        migrate::run(&self.pool, self.backend).await
    }

    /// A cheap round trip for `/health`.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Inserts a new business. With a `request_key` already used, returns the business it created.
    pub async fn insert_business(
        &self,
        b: &Business,
        request_key: Option<&str>,
    ) -> Result<Business, StoreError> {
        self.insert_business_leased(b, request_key, None).await
    }

    /// As `insert_business`, with the work lease already held by `lease` (owner, until), so no other
    /// worker can start provisioning it between the insert and the creator's claim.
    pub async fn insert_business_leased(
        &self,
        b: &Business,
        request_key: Option<&str>,
        lease: Option<(&str, i64)>,
    ) -> Result<Business, StoreError> {
        let result = insert_business_query(b, request_key, lease)
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(b.clone()),
            Err(e) if is_unique_violation(&e) => match request_key {
                Some(key) => self
                    .business_by_request_key(key)
                    .await?
                    .ok_or_else(|| StoreError::Duplicate(format!("request key {key}"))),
                None => Err(StoreError::Duplicate(format!("business {}", b.business_id))),
            },
            Err(e) => Err(e.into()),
        }
    }

    /// Inserts many businesses atomically: all or none.
    pub async fn insert_businesses(&self, businesses: &[Business]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for b in businesses {
            insert_business_query(b, None, None)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Duplicate(format!("business {} already exists", b.business_id))
                    } else {
                        e.into()
                    }
                })?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn business_by_request_key(&self, key: &str) -> Result<Option<Business>, StoreError> {
        let sql = format!("SELECT {BUSINESS_COLUMNS} FROM business WHERE request_key = $1");
        let row = sqlx::query(&sql)
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(business_from_row).transpose()
    }

    pub async fn get_business(&self, id: &str) -> Result<Option<Business>, StoreError> {
        let sql = format!("SELECT {BUSINESS_COLUMNS} FROM business WHERE business_id = $1");
        let row = sqlx::query(&sql)
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(business_from_row).transpose()
    }

    /// The business owning a Stripe customer or subscription id.
    pub async fn business_by_stripe_id(
        &self,
        customer: Option<&str>,
        subscription: Option<&str>,
    ) -> Result<Option<Business>, StoreError> {
        // Two indexed lookups rather than one `OR`, which SQLite would answer with a full scan.
        for (column, value) in [
            ("stripe_subscription_id", subscription),
            ("stripe_customer_id", customer),
        ] {
            let Some(value) = value else { continue };
            let sql = format!("SELECT {BUSINESS_COLUMNS} FROM business WHERE {column} = $1 ORDER BY created_at DESC LIMIT 1");
            if let Some(row) = sqlx::query(&sql)
                .bind(value)
                .fetch_optional(&self.pool)
                .await?
            {
                return business_from_row(&row).map(Some);
            }
        }
        Ok(None)
    }

    /// The business an event is about, in one round trip: by id (metadata `business_id`), else by
    /// subscription id, else by customer id. Each branch uses its index.
    pub async fn find_business(
        &self,
        business_id: Option<&str>,
        subscription: Option<&str>,
        customer: Option<&str>,
    ) -> Result<Option<Business>, StoreError> {
        if business_id.is_none() && subscription.is_none() && customer.is_none() {
            return Ok(None);
        }
        let sql = format!(
            "SELECT * FROM (SELECT 1 AS rank, {BUSINESS_COLUMNS} FROM business WHERE business_id = $1 \
             UNION ALL SELECT 2 AS rank, {BUSINESS_COLUMNS} FROM business WHERE stripe_subscription_id = $2 \
             UNION ALL SELECT 3 AS rank, {BUSINESS_COLUMNS} FROM business WHERE stripe_customer_id = $3) AS found \
             ORDER BY rank, created_at DESC LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(business_id)
            .bind(subscription)
            .bind(customer)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(business_from_row).transpose()
    }

    /// Newest first, paginated by business id.
    pub async fn list_businesses(&self, f: &BusinessFilter) -> Result<Vec<Business>, StoreError> {
        // A row-value comparison the (created_at, business_id) index can seek to: with the cursor inside an
        // OR, both databases walked the index from the newest end and skipped every earlier page, so paging
        // through a fleet cost O(n) per page.
        let after = if f.after.is_some() {
            "AND (created_at, business_id) < ((SELECT created_at FROM business WHERE business_id = $3), $3)"
        } else {
            "AND $3 IS NULL"
        };
        let sql = format!(
            "SELECT {BUSINESS_COLUMNS} FROM business \
             WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR billing = $2) {after} \
             ORDER BY created_at DESC, business_id DESC LIMIT $4"
        );
        let rows = sqlx::query(&sql)
            .bind(f.status.map(Lifecycle::as_str))
            .bind(f.billing.map(Billing::as_str))
            .bind(&f.after)
            .bind(if f.limit > 0 { f.limit } else { i64::MAX })
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(business_from_row).collect()
    }

    /// A value that changes whenever anything is committed to the database (by any connection or process),
    /// so a result computed from the records stays right while it is unchanged. `None` when there is none
    /// (in-memory SQLite) or it cannot be read; callers then assume a change.
    pub async fn change_marker(&self) -> Option<String> {
        match self.backend {
            Backend::Sqlite => {
                let marker = self.marker.clone()?;
                // A read of SQLite's shared memory: microseconds, never a lock wait.
                marker.read().map(|v| v.to_string())
            }
            // Every commit appends to the write-ahead log first.
            Backend::Postgres => sqlx::query("SELECT CAST(pg_current_wal_insert_lsn() AS TEXT)")
                .fetch_one(&self.pool)
                .await
                .and_then(|r| r.try_get::<String, _>(0))
                .ok(),
        }
    }

    /// How many businesses there are.
    pub async fn count_businesses(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM business")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Active businesses with a subscription status, grouped by type, currency and status: a handful of
    /// rows however large the fleet. SQLite reads the table its triggers keep exact (migration 0010).
    /// PostgreSQL groups over a covering index (migration 0008), one index scan: triggers there would make
    /// every replica's writers queue on the same few tally rows.
    pub async fn subscription_tally(&self) -> Result<Vec<SubscriptionTally>, StoreError> {
        let sql = match self.backend {
            Backend::Sqlite => {
                "SELECT business_type, currency, subscription_status, businesses, priced, monthly_cents \
                 FROM business_tally WHERE businesses > 0"
            }
            // PostgreSQL sums BIGINT into NUMERIC, which the `Any` driver cannot decode.
            Backend::Postgres => {
                "SELECT business_type, currency, subscription_status, COUNT(*), COUNT(monthly_price_cents), \
                 CAST(COALESCE(SUM(monthly_price_cents), 0) AS BIGINT) FROM business \
                 WHERE status = 'active' AND subscription_status IS NOT NULL \
                 GROUP BY business_type, currency, subscription_status"
            }
        };
        let rows = sqlx::query(sql).fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(SubscriptionTally {
                    business_type: r.try_get(0)?,
                    currency: r.try_get(1)?,
                    subscription_status: r.try_get(2)?,
                    businesses: r.try_get(3)?,
                    priced: r.try_get(4)?,
                    monthly_cents: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Takes the business's work lease unless another live worker holds it. Returns whether we got it.
    pub async fn claim_business(
        &self,
        id: &str,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let me = Holder::current();
        let done = sqlx::query(
            "UPDATE business SET lease_owner = $2, lease_until = $3, lease_host = $5, lease_pid = $6, lease_started = $7 \
             WHERE business_id = $1 AND (lease_until IS NULL OR lease_until < $4 OR lease_owner = $2)",
        )
        .bind(id)
        .bind(owner)
        .bind(until)
        .bind(now)
        .bind(me.host.as_deref())
        .bind(me.pid)
        .bind(me.started.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn release_business(&self, id: &str, owner: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE business SET lease_owner = NULL, lease_until = NULL, lease_host = NULL, lease_pid = NULL, \
             lease_started = NULL WHERE business_id = $1 AND lease_owner = $2")
            .bind(id)
            .bind(owner)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Records a Stripe write about to be sent; returns the intent as it was before (if any).
    pub async fn begin_intent(
        &self,
        key: &str,
        business_id: &str,
        step: &str,
    ) -> Result<Option<Intent>, StoreError> {
        let previous = self.intent(key).await?;
        let now = now();
        sqlx::query(
            "INSERT INTO billing_intent (idempotency_key, business_id, step, state, attempts, created_at, updated_at) \
             VALUES ($1, $2, $3, 'started', 1, $4, $4) \
             ON CONFLICT (idempotency_key) DO UPDATE SET attempts = billing_intent.attempts + 1, updated_at = $4, \
             state = CASE WHEN billing_intent.state = 'done' THEN 'done' ELSE 'started' END",
        )
        .bind(key)
        .bind(business_id)
        .bind(step)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(previous)
    }

    pub async fn intent(&self, key: &str) -> Result<Option<Intent>, StoreError> {
        let row = sqlx::query("SELECT state, attempts, result_id, created_at FROM billing_intent WHERE idempotency_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some(Intent {
                state: r.try_get("state")?,
                attempts: r.try_get("attempts")?,
                result_id: r.try_get("result_id")?,
                created_at: r.try_get("created_at")?,
            }),
            None => None,
        })
    }

    /// Of the businesses `ids`, those whose current subscription a roll-back recorded its intent to cancel
    /// (key `genesis:{business}:subscription:{subscription}:rollback_cancel`, not failed), in one query.
    pub async fn rolled_back_among(&self, ids: &[&str]) -> Result<Vec<Business>, StoreError> {
        let mut found = Vec::new();
        for chunk in ids.chunks(300) {
            let mut sql =
                format!("SELECT {BUSINESS_COLUMNS} FROM business b WHERE b.business_id IN (");
            Params::new(self.backend).list(&mut sql, chunk.len());
            sql.push_str(
                ") AND EXISTS (SELECT 1 FROM billing_intent i WHERE i.idempotency_key = \
                 'genesis:' || b.business_id || ':subscription:' || b.stripe_subscription_id || ':rollback_cancel' \
                 AND i.state <> 'failed')",
            );
            let mut q = sqlx::query(&sql).persistent(false);
            for id in chunk {
                q = q.bind(*id);
            }
            for row in q.fetch_all(&self.pool).await? {
                found.push(business_from_row(&row)?);
            }
        }
        Ok(found)
    }

    /// Marks an intent done (with the object it produced) or failed (with the reason).
    pub async fn finish_intent(
        &self,
        key: &str,
        result: Result<&str, &str>,
    ) -> Result<(), StoreError> {
        let (state, result_id, error) = match result {
            Ok(id) => ("done", Some(id), None),
            Err(e) => ("failed", None, Some(e)),
        };
        sqlx::query("UPDATE billing_intent SET state = $2, result_id = COALESCE($3, result_id), last_error = $4, updated_at = $5 WHERE idempotency_key = $1")
            .bind(key)
            .bind(state)
            .bind(result_id)
            .bind(error)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn set_customer(&self, id: &str, customer: &str) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE business SET stripe_customer_id = $2, updated_at = $3 WHERE business_id = $1",
        )
        .bind(id)
        .bind(customer)
        .bind(now())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores a new subscription and marks billing provisioned, with its `billing.provisioned` event.
    pub async fn set_subscription(
        &self,
        id: &str,
        s: &SubscriptionRecord<'_>,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE business SET stripe_subscription_id = $2, subscription_status = $3, price_lookup_key = $4, \
             stripe_price_id = $5, monthly_price_cents = $6, currency = $7, stripe_state_at = $8, \
             billing = 'provisioned', billing_error = NULL, failed_step = NULL, updated_at = $9 WHERE business_id = $1",
        )
        .bind(id)
        .bind(s.subscription_id)
        .bind(s.status)
        .bind(s.lookup_key)
        .bind(s.price_id)
        .bind(s.monthly_price_cents)
        .bind(s.currency)
        .bind(s.state_at)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let customer: Option<String> = match s.customer_id {
            Some(c) => Some(c.to_owned()),
            None => sqlx::query("SELECT stripe_customer_id FROM business WHERE business_id = $1")
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
                .flatten(),
        };
        outbox::emit_on(
            &mut tx,
            &NewOutbound {
                business_id: id.to_owned(),
                update_type: "billing.provisioned",
                data: serde_json::json!({
                    "customer_id": customer,
                    "subscription_id": s.subscription_id,
                    "subscription_status": s.status,
                    "price_lookup_key": s.lookup_key,
                    "amount_cents": s.amount_cents,
                    "currency": s.currency,
                    "interval": s.interval,
                }),
                cause: format!("provisioned:{}", s.subscription_id),
            },
        )
        .await?;
        tx.commit().await?;
        self.outbox_written();
        Ok(())
    }

    /// Records Stripe's subscription status unless newer state is already stored. Returns whether it applied.
    pub async fn set_subscription_status(
        &self,
        id: &str,
        subscription: &str,
        status: &str,
        state_at: i64,
    ) -> Result<bool, StoreError> {
        // Tie settled (1): a status of the same second was already checked with Stripe by the caller.
        let done = sqlx::query(&webhook_event::change_status_sql(false))
            .bind(id)
            .bind(subscription)
            .bind(status)
            .bind(state_at)
            .bind(now())
            .bind(1i64)
            .execute(&self.pool)
            .await?;
        self.outbox_written();
        Ok(done.rows_affected() == 1)
    }

    /// Starts a new subscription generation (the old subscription is over): new idempotency keys.
    pub async fn bump_generation(&self, id: &str) -> Result<i64, StoreError> {
        sqlx::query("UPDATE business SET generation = generation + 1, updated_at = $2 WHERE business_id = $1")
            .bind(id)
            .bind(now())
            .execute(&self.pool)
            .await?;
        let row = sqlx::query("SELECT generation FROM business WHERE business_id = $1")
            .bind(id)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get("generation")?)
    }

    pub async fn set_billing(
        &self,
        id: &str,
        billing: Billing,
        step: Option<&str>,
        error: Option<&str>,
    ) -> Result<(), StoreError> {
        sqlx::query("UPDATE business SET billing = $2, failed_step = $3, billing_error = $4, updated_at = $5 WHERE business_id = $1")
            .bind(id)
            .bind(billing.as_str())
            .bind(step)
            .bind(error)
            .bind(now())
            .execute(&self.pool)
            .await?;
        // A move to `failed` writes `billing.failed` (trigger).
        self.outbox_written();
        Ok(())
    }

    /// Marks billing of an active business `skipped` with `why` because its subscription `subscription`
    /// was rolled back, with its `billing.rolled_back` event; returns false when it already was (or the
    /// subscription is not its current one), so of two concurrent writers only one records it.
    pub async fn set_rolled_back(
        &self,
        id: &str,
        subscription: &str,
        why: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let done = sqlx::query(
            "UPDATE business SET billing = 'skipped', failed_step = NULL, billing_error = $3, updated_at = $4 \
             WHERE business_id = $1 AND stripe_subscription_id = $2 AND status = 'active' \
             AND NOT (billing = 'skipped' AND billing_error IS NOT NULL AND billing_error = $3)",
        )
        .bind(id)
        .bind(subscription)
        .bind(why)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        let changed = done.rows_affected() == 1;
        if changed {
            outbox::emit_on(
                &mut tx,
                &NewOutbound {
                    business_id: id.to_owned(),
                    update_type: "billing.rolled_back",
                    data: serde_json::json!({ "subscription_id": subscription }),
                    cause: format!("rolled_back:{subscription}"),
                },
            )
            .await?;
        }
        tx.commit().await?;
        self.outbox_written();
        Ok(changed)
    }

    /// Marks a business taken down by `initiated_by` (`api`, `cli`, `stripe`, …); returns false when it
    /// already was.
    pub async fn mark_taken_down(
        &self,
        id: &str,
        reason: &str,
        initiated_by: &str,
        at: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE business SET status = 'taken_down', takedown_reason = $2, taken_down_at = $3, takedown_outcome = NULL, \
             takedown_initiator = $4, updated_at = $3 WHERE business_id = $1 AND status = 'active'",
        )
        .bind(id)
        .bind(reason)
        .bind(at)
        .bind(initiated_by)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Who took a business down, as `mark_taken_down` recorded it.
    pub async fn takedown_initiator(&self, id: &str) -> Result<Option<String>, StoreError> {
        Ok(
            sqlx::query("SELECT takedown_initiator FROM business WHERE business_id = $1")
                .bind(id)
                .fetch_optional(&self.pool)
                .await?
                .map(|r| r.try_get(0))
                .transpose()?
                .flatten(),
        )
    }

    /// Records how a takedown's Stripe side ended (`None` leaves it open for a retry), with the takedown's
    /// `business.taken_down` event, written once per takedown: the first attempt reports it.
    pub async fn set_takedown_outcome(
        &self,
        id: &str,
        outcome: Option<&str>,
        subscription_status: Option<&str>,
        event: &NewOutbound,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE business SET takedown_outcome = $2, subscription_status = COALESCE($3, subscription_status), updated_at = $4 \
             WHERE business_id = $1",
        )
        .bind(id)
        .bind(outcome)
        .bind(subscription_status)
        .bind(now())
        .execute(&mut *tx)
        .await?;
        outbox::emit_on(&mut tx, event).await?;
        tx.commit().await?;
        self.outbox_written();
        Ok(())
    }

    /// Appends to a business's billing history.
    pub async fn record_event(
        &self,
        business_id: &str,
        kind: &str,
        detail: &str,
    ) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO billing_event (id, business_id, kind, detail, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(business_id)
            .bind(kind)
            .bind(detail)
            .bind(now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Appends a history line and its event to the meta-agent in one transaction.
    pub async fn record_history(&self, entry: &HistoryEntry) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO billing_event (id, business_id, kind, detail, created_at) VALUES ($1, $2, $3, $4, $5)")
            .bind(uuid::Uuid::new_v4().to_string())
            .bind(&entry.business_id)
            .bind(&entry.kind)
            .bind(&entry.detail)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        if let Some(event) = &entry.outbound {
            outbox::emit_on(&mut tx, event).await?;
        }
        tx.commit().await?;
        self.outbox_written();
        Ok(())
    }

    /// A business's billing history, oldest first.
    pub async fn events_of(
        &self,
        business_id: &str,
    ) -> Result<Vec<(String, String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT kind, detail, created_at FROM billing_event WHERE business_id = $1 ORDER BY created_at, id")
            .bind(business_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok((
                    r.try_get("kind")?,
                    r.try_get("detail")?,
                    r.try_get("created_at")?,
                ))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refused_row_is_worth_writing_again_in_parts() {
        let sqlite = |code| {
            StoreError::Sqlite(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(code),
                None,
            ))
        };
        assert!(sqlite(rusqlite::ffi::SQLITE_CONSTRAINT_TRIGGER).is_refusal());
        assert!(sqlite(rusqlite::ffi::SQLITE_TOOBIG).is_refusal());
        // An outage, a busy database or a timeout would fail every part again, one slow try at a time.
        assert!(!sqlite(rusqlite::ffi::SQLITE_BUSY).is_refusal());
        assert!(!sqlite(rusqlite::ffi::SQLITE_IOERR).is_refusal());
        assert!(!sqlite(rusqlite::ffi::SQLITE_FULL).is_refusal());
        assert!(!StoreError::Database(sqlx::Error::PoolTimedOut).is_refusal());
        assert!(
            !StoreError::Database(sqlx::Error::Io(std::io::ErrorKind::ConnectionReset.into()))
                .is_refusal()
        );
        assert!(!StoreError::Worker("inbox writer stopped".into()).is_refusal());
    }
}
