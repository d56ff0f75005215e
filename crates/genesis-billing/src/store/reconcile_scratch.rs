//! Reconciliation's scratch copy of Stripe's lists (migration 0009): written as the lists are read, looked up
//! a page of businesses at a time, deleted at the end of the run.

use sqlx::Row;

use super::{Params, Store, StoreError};

/// One Stripe subscription or customer as reconciliation compares it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StripeRow {
    pub object_id: String,
    /// Metadata `business_id`.
    pub business_id: Option<String>,
    pub status: Option<String>,
    /// Metadata `genesis_generation`.
    pub generation: Option<String>,
    pub customer: Option<String>,
    pub price_id: Option<String>,
    pub default_payment_method: Option<String>,
    pub created: i64,
    /// A customer whose metadata says it is ours.
    pub ours: bool,
}

const COLUMNS: &str =
    "object_id, business_id, status, generation, customer, price_id, default_payment_method, \
    created, ours, seq";

fn row_of(r: &sqlx::any::AnyRow) -> Result<(i64, StripeRow), StoreError> {
    Ok((
        r.try_get(9)?,
        StripeRow {
            object_id: r.try_get(0)?,
            business_id: r.try_get(1)?,
            status: r.try_get(2)?,
            generation: r.try_get(3)?,
            customer: r.try_get(4)?,
            price_id: r.try_get(5)?,
            default_payment_method: r.try_get(6)?,
            created: r.try_get(7)?,
            ours: r.try_get::<i64, _>(8)? != 0,
        },
    ))
}

impl Store {
    /// Deletes one run's rows, or (with `None`) those of runs started before `before`.
    pub async fn scratch_clear(&self, run: Option<&str>, before: i64) -> Result<(), StoreError> {
        match run {
            Some(run) => sqlx::query("DELETE FROM reconcile_stripe WHERE run_id = $1").bind(run),
            None => sqlx::query("DELETE FROM reconcile_stripe WHERE started < $1").bind(before),
        }
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Stores one page of a Stripe list; `first_seq` is the position of its first object.
    pub async fn scratch_put(
        &self,
        run: &str,
        started: i64,
        kind: &str,
        first_seq: i64,
        rows: &[StripeRow],
    ) -> Result<(), StoreError> {
        for (n, chunk) in rows.chunks(100).enumerate() {
            let mut sql = String::from(
                "INSERT INTO reconcile_stripe (run_id, started, kind, object_id, seq, business_id, status, \
                 generation, customer, price_id, default_payment_method, created, ours) VALUES ",
            );
            let mut params = Params::new(self.backend);
            for k in 0..chunk.len() {
                sql.push_str(if k == 0 { "(" } else { ", (" });
                params.list(&mut sql, 13);
                sql.push(')');
            }
            sql.push_str(" ON CONFLICT (run_id, kind, object_id) DO NOTHING");
            let mut q = sqlx::query(&sql).persistent(false);
            for (k, r) in chunk.iter().enumerate() {
                q = q
                    .bind(run)
                    .bind(started)
                    .bind(kind)
                    .bind(&r.object_id)
                    .bind(first_seq + (n * 100 + k) as i64)
                    .bind(&r.business_id)
                    .bind(&r.status)
                    .bind(&r.generation)
                    .bind(&r.customer)
                    .bind(&r.price_id)
                    .bind(&r.default_payment_method)
                    .bind(r.created)
                    .bind(i64::from(r.ours));
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// The run's objects of one kind whose id (`by_business` false) or metadata business_id is one of `keys`,
    /// in Stripe's list order.
    pub async fn scratch_lookup(
        &self,
        run: &str,
        kind: &str,
        by_business: bool,
        keys: &[&str],
    ) -> Result<Vec<StripeRow>, StoreError> {
        let column = if by_business {
            "business_id"
        } else {
            "object_id"
        };
        let mut found = Vec::new();
        for chunk in keys.chunks(500) {
            let mut sql = format!("SELECT {COLUMNS} FROM reconcile_stripe WHERE run_id = ");
            let mut params = Params::new(self.backend);
            params.push(&mut sql);
            sql.push_str(" AND kind = ");
            params.push(&mut sql);
            sql.push_str(&format!(" AND {column} IN ("));
            params.list(&mut sql, chunk.len());
            sql.push(')');
            let mut q = sqlx::query(&sql).persistent(false).bind(run).bind(kind);
            for k in chunk {
                q = q.bind(*k);
            }
            for r in q.fetch_all(&self.pool).await? {
                found.push(row_of(&r)?);
            }
        }
        found.sort_by_key(|(seq, _)| *seq);
        Ok(found.into_iter().map(|(_, r)| r).collect())
    }

    /// Marks customers of the run as recorded by their business.
    pub async fn scratch_account(&self, run: &str, customers: &[&str]) -> Result<(), StoreError> {
        for chunk in customers.chunks(500) {
            let mut sql = String::from("UPDATE reconcile_stripe SET accounted = 1 WHERE run_id = ");
            let mut params = Params::new(self.backend);
            params.push(&mut sql);
            sql.push_str(" AND kind = 'customer' AND object_id IN (");
            params.list(&mut sql, chunk.len());
            sql.push(')');
            let mut q = sqlx::query(&sql).persistent(false).bind(run);
            for c in chunk {
                q = q.bind(*c);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Customers of ours that no business recorded, by id after `after`, at most `limit`.
    pub async fn scratch_orphans(
        &self,
        run: &str,
        after: &str,
        limit: i64,
    ) -> Result<Vec<StripeRow>, StoreError> {
        // Byte order, as Rust sorts strings, whatever the PostgreSQL database's collation.
        let collate = match self.backend {
            super::Backend::Postgres => " COLLATE \"C\"",
            super::Backend::Sqlite => "",
        };
        let sql = format!(
            "SELECT {COLUMNS} FROM reconcile_stripe WHERE run_id = $1 AND kind = 'customer' AND ours = 1 \
             AND accounted = 0 AND object_id{collate} > $2 ORDER BY object_id{collate} LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(run)
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(|r| row_of(r).map(|(_, r)| r)).collect()
    }
}
