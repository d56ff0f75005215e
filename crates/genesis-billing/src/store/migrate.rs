//! Embedded, numbered migrations applied once each, in order, each in its own transaction.
//!
//! Our own runner rather than `sqlx::migrate!`: that macro would compile sqlx's drivers a second time into
//! a proc-macro, which costs minutes on a 2-core machine, for twenty lines of logic.

use sqlx::AnyPool;

use super::{now, Backend, StoreError};

/// (version, name, SQL), in order. Never edit an applied migration: add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "business",
        include_str!("../../migrations/0001_business.sql"),
    ),
    (
        2,
        "webhook_event",
        include_str!("../../migrations/0002_webhook_event.sql"),
    ),
    (
        3,
        "coordination",
        include_str!("../../migrations/0003_coordination.sql"),
    ),
    (
        4,
        "webhook_payload",
        include_str!("../../migrations/0004_webhook_payload.sql"),
    ),
    (
        5,
        "webhook_due",
        include_str!("../../migrations/0005_webhook_due.sql"),
    ),
    (
        6,
        "business_tally",
        include_str!("../../migrations/0006_business_tally.sql"),
    ),
    (
        7,
        "reconcile_scratch",
        include_str!("../../migrations/0007_reconcile_scratch.sql"),
    ),
];

pub(super) async fn run(pool: &AnyPool, backend: Backend) -> Result<Vec<&'static str>, StoreError> {
    let mut tx = pool.begin().await?;
    lock(&mut tx, backend).await?;
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migration (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let mut tx = pool.begin().await?;
        lock(&mut tx, backend).await?;
        let done = sqlx::query("SELECT version FROM schema_migration WHERE version = $1")
            .bind(version)
            .fetch_optional(&mut *tx)
            .await?;
        if done.is_some() {
            continue;
        }
        sqlx::raw_sql(sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| StoreError::Migration(format!("{version} {name}: {e}")))?;
        sqlx::query("INSERT INTO schema_migration (version, name, applied_at) VALUES ($1, $2, $3)")
            .bind(version)
            .bind(*name)
            .bind(now())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        applied.push(*name);
    }
    Ok(applied)
}

/// Serialises replicas migrating one PostgreSQL database: the first migrates, the others wait here and
/// then find the work done. (Even `CREATE TABLE IF NOT EXISTS` races without it.) SQLite's write lock
/// already serialises writers.
async fn lock(
    tx: &mut sqlx::Transaction<'_, sqlx::Any>,
    backend: Backend,
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock(7351001)")
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
