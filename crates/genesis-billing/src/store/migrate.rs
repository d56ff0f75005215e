//! Embedded, numbered migrations applied once each, in order, each in its own transaction.
//!
//! Our own runner rather than `sqlx::migrate!`: that macro would compile sqlx's drivers a second time into
//! a proc-macro, which costs minutes on a 2-core machine, for twenty lines of logic.

use sqlx::{AnyConnection, AnyPool, Row};

use super::{now, Backend, StoreError};

/// A migration's SQL: the same on both backends, for SQLite only (PostgreSQL records the version and
/// runs nothing, so both keep one numbering and the newer-schema check), or one text per backend.
enum Sql {
    Portable(&'static str),
    SqliteOnly(&'static str),
    PerBackend {
        sqlite: &'static str,
        postgres: &'static str,
    },
}

impl Sql {
    /// What to run on this backend, if anything.
    fn for_backend(&self, backend: Backend) -> Option<&'static str> {
        match (self, backend) {
            (Self::Portable(sql), _) | (Self::SqliteOnly(sql), Backend::Sqlite) => Some(sql),
            (Self::SqliteOnly(_), Backend::Postgres) => None,
            (Self::PerBackend { sqlite, .. }, Backend::Sqlite) => Some(sqlite),
            (Self::PerBackend { postgres, .. }, Backend::Postgres) => Some(postgres),
        }
    }
}

/// (version, name, SQL), in order. Never edit an applied migration: add a new one.
const MIGRATIONS: &[(i64, &str, Sql)] = &[
    (
        1,
        "business",
        Sql::Portable(include_str!("../../migrations/0001_business.sql")),
    ),
    (
        2,
        "webhook_event",
        Sql::Portable(include_str!("../../migrations/0002_webhook_event.sql")),
    ),
    (
        3,
        "coordination",
        Sql::Portable(include_str!("../../migrations/0003_coordination.sql")),
    ),
    (
        4,
        "webhook_payload",
        Sql::Portable(include_str!("../../migrations/0004_webhook_payload.sql")),
    ),
    (
        5,
        "webhook_due",
        Sql::Portable(include_str!("../../migrations/0005_webhook_due.sql")),
    ),
    (
        6,
        "business_lease_holder",
        Sql::Portable(include_str!(
            "../../migrations/0006_business_lease_holder.sql"
        )),
    ),
    (
        7,
        "health_probe",
        Sql::Portable(include_str!("../../migrations/0007_health_probe.sql")),
    ),
    (
        8,
        "business_tally",
        Sql::Portable(include_str!("../../migrations/0008_business_tally.sql")),
    ),
    (
        9,
        "reconcile_scratch",
        Sql::Portable(include_str!("../../migrations/0009_reconcile_scratch.sql")),
    ),
    (
        10,
        "business_tally_table",
        Sql::SqliteOnly(include_str!(
            "../../migrations/0010_business_tally_table.sql"
        )),
    ),
    (
        11,
        "outbound_event",
        Sql::PerBackend {
            sqlite: include_str!("../../migrations/0011_outbound_event.sqlite.sql"),
            postgres: include_str!("../../migrations/0011_outbound_event.postgres.sql"),
        },
    ),
    (
        12,
        "owner_notice",
        Sql::Portable(include_str!("../../migrations/0012_owner_notice.sql")),
    ),
];

/// Applies the migrations not applied yet, each in its own transaction that holds the database's
/// migration lock, so several processes starting at once on one database take turns: the first migrates,
/// the others wait and find the work done. Refuses a database that has a migration this binary does not
/// know (written by a newer genesis-billing), before changing anything.
pub(super) async fn run(pool: &AnyPool, backend: Backend) -> Result<Vec<&'static str>, StoreError> {
    let mut conn = pool.acquire().await?;
    begin(&mut conn, backend).await?;
    let ready = prepare(&mut conn).await;
    end(&mut conn, ready).await?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        begin(&mut conn, backend).await?;
        let done = apply(&mut conn, *version, name, sql.for_backend(backend)).await;
        if end(&mut conn, done).await? {
            applied.push(*name);
        }
    }
    Ok(applied)
}

/// Creates the migration table if needed and refuses a database migrated by a newer binary.
async fn prepare(conn: &mut AnyConnection) -> Result<(), StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migration (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *conn)
    .await?;
    let newest_known = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    let newer = sqlx::query(
        "SELECT version, name FROM schema_migration WHERE version > $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(newest_known)
    .fetch_optional(&mut *conn)
    .await?;
    match newer {
        Some(row) => Err(StoreError::SchemaTooNew {
            version: row.try_get(0)?,
            name: row.try_get(1)?,
            known: newest_known,
        }),
        None => Ok(()),
    }
}

/// Applies one migration unless it is applied already; says whether it applied it.
async fn apply(
    conn: &mut AnyConnection,
    version: i64,
    name: &str,
    sql: Option<&str>,
) -> Result<bool, StoreError> {
    let done = sqlx::query("SELECT version FROM schema_migration WHERE version = $1")
        .bind(version)
        .fetch_optional(&mut *conn)
        .await?;
    if done.is_some() {
        return Ok(false);
    }
    if let Some(sql) = sql {
        sqlx::raw_sql(sql)
            .execute(&mut *conn)
            .await
            .map_err(|e| StoreError::Migration(format!("{version} {name}: {e}")))?;
    }
    sqlx::query("INSERT INTO schema_migration (version, name, applied_at) VALUES ($1, $2, $3)")
        .bind(version)
        .bind(name)
        .bind(now())
        .execute(&mut *conn)
        .await?;
    Ok(true)
}

/// Starts a transaction holding the database's migration lock.
///
/// PostgreSQL: an advisory lock held to the end of the transaction (even `CREATE TABLE IF NOT EXISTS`
/// races without it). SQLite: `BEGIN IMMEDIATE` takes the write lock before the first read, waiting out
/// the busy timeout; a deferred transaction would read, then fail with "database is locked" when another
/// process had written in between.
async fn begin(conn: &mut AnyConnection, backend: Backend) -> Result<(), StoreError> {
    let begin = match backend {
        Backend::Sqlite => "BEGIN IMMEDIATE",
        Backend::Postgres => "BEGIN; SELECT pg_advisory_xact_lock(7351001)",
    };
    sqlx::raw_sql(begin).execute(&mut *conn).await?;
    Ok(())
}

/// Commits the transaction if its work succeeded, else rolls it back and returns the work's error.
async fn end<T>(conn: &mut AnyConnection, work: Result<T, StoreError>) -> Result<T, StoreError> {
    match work {
        Ok(v) => {
            sqlx::raw_sql("COMMIT").execute(&mut *conn).await?;
            Ok(v)
        }
        Err(e) => {
            // Leaves the pooled connection outside any transaction; the work's error is the one to report.
            let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
            Err(e)
        }
    }
}
