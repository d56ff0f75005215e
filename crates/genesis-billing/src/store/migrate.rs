//! Embedded, numbered migrations applied once each, in order, each in its own transaction.
//!
//! Our own runner rather than `sqlx::migrate!`: that macro would compile sqlx's drivers a second time into
//! a proc-macro, which costs minutes on a 2-core machine, for twenty lines of logic.

use sqlx::AnyPool;

use super::{now, Backend, StoreError};

/// (version, name, SQL), in order. Never edit an applied migration: add a new one.
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (1, "business", include_str!("../../migrations/0001_business.sql")),
    (2, "webhook_event", include_str!("../../migrations/0002_webhook_event.sql")),
];

pub(super) async fn run(pool: &AnyPool, backend: Backend) -> Result<Vec<&'static str>, StoreError> {
    sqlx::raw_sql(
        "CREATE TABLE IF NOT EXISTS schema_migration (version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)",
    )
    .execute(pool)
    .await?;
    let mut applied = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        let mut tx = pool.begin().await?;
        if backend == Backend::Postgres {
            // Replicas starting together: the first migrates, the others wait here, then see it done.
            sqlx::query("SELECT pg_advisory_xact_lock(7351001)").execute(&mut *tx).await?;
        }
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
