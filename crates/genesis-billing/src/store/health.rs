//! The database probes behind `/health`: can we read, and can we write.

use super::{now, Store};

/// Why a probe failed, as `/health` may say it (the error itself goes to the log only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeFailure {
    /// No connection: refused, reset, authentication or database missing, pool exhausted.
    Unreachable,
    /// Connected, but the write was refused: locked, read-only, disk full.
    NotWritable,
}

impl Store {
    /// One round trip that reads nothing: the database answers.
    pub async fn probe_read(&self) -> Result<(), (ProbeFailure, sqlx::Error)> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .map(|_| ())
            .map_err(|e| (ProbeFailure::Unreachable, e))
    }

    /// Rewrites the one `health_probe` row in a committed transaction: the database takes writes (a
    /// SQLite write lock held elsewhere waits here, a full disk fails the commit).
    ///
    /// The transaction is plain SQL on one connection, and a connection whose probe failed is closed, not
    /// returned to the pool: after a failed `COMMIT` (disk full) SQLite may or may not have rolled back,
    /// and a pooled connection left inside a transaction would hold the write lock for good.
    pub async fn probe_write(&self) -> Result<(), (ProbeFailure, sqlx::Error)> {
        let mut conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| (classify_write(&e), e))?;
        let write = async {
            sqlx::query("BEGIN").execute(&mut *conn).await?;
            sqlx::query(
                "INSERT INTO health_probe (id, checked_at) VALUES (1, $1) \
                 ON CONFLICT (id) DO UPDATE SET checked_at = $1",
            )
            .bind(now())
            .execute(&mut *conn)
            .await?;
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(())
        };
        let result: Result<(), sqlx::Error> = write.await;
        if result.is_err() {
            conn.close_on_drop();
        }
        result.map_err(|e| (classify_write(&e), e))
    }
}

/// A failed write is `NotWritable` unless no connection could be had at all.
fn classify_write(e: &sqlx::Error) -> ProbeFailure {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Configuration(_) => ProbeFailure::Unreachable,
        // PostgreSQL: connection exceptions (08), authorization (28), no such database (3D), server
        // shutting down (57P).
        sqlx::Error::Database(db)
            if db.code().is_some_and(|c| {
                c.starts_with("08")
                    || c.starts_with("28")
                    || c.starts_with("3D")
                    || c.starts_with("57P")
            }) =>
        {
            ProbeFailure::Unreachable
        }
        _ => ProbeFailure::NotWritable,
    }
}
