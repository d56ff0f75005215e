//! Coordination between replicas sharing one database: named job leases for singleton background work,
//! and the fleet-wide Stripe rate budget.
//!
//! Singleton jobs use leases (a row with an owner and an expiry) rather than PostgreSQL advisory locks:
//! - the same portable SQL runs on SQLite, so the domain and the HTTP layer never ask which backend they
//!   are on (with one SQLite process the lease is simply always free);
//! - a lease expires by itself: a replica killed mid-job (SIGKILL, lost network, frozen VM) frees the job
//!   after the lease time without anyone having to notice its death. A session advisory lock is instead
//!   tied to one pooled connection for the whole job, and a transaction-scoped one would hold a
//!   transaction open for minutes of Stripe calls;
//! - the row says who holds the job and until when, which an operator can read.
//!
//! The price is that a holder must renew while it works: [`JobLease`] does that in the background.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sqlx::Row;

use super::{now, Store, StoreError};
use crate::stripe::rate_limit::{BudgetError, SharedBudget};

impl Store {
    /// Takes the named job's lease until `until` (unix seconds) unless another owner holds it past `now`.
    /// Returns whether we got it.
    pub async fn claim_job(
        &self,
        name: &str,
        owner: &str,
        until: i64,
        now: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO job_lease (name, owner, until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET owner = $2, until = $3 \
             WHERE job_lease.until < $4 OR job_lease.owner = $2",
        )
        .bind(name)
        .bind(owner)
        .bind(until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Moves the job's expiry to `until` if `owner` still holds it: renews a lease while working, or,
    /// when the work is done, keeps others off until the next run is due (a past `until` frees it now).
    /// Returns false when the lease was lost to another owner.
    pub async fn extend_job(
        &self,
        name: &str,
        owner: &str,
        until: i64,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE job_lease SET until = $3 WHERE name = $1 AND owner = $2")
            .bind(name)
            .bind(owner)
            .bind(until)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Who holds (or last held) the named job, and until when.
    pub async fn job_holder(&self, name: &str) -> Result<Option<(String, i64)>, StoreError> {
        let row = sqlx::query("SELECT owner, until FROM job_lease WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => Some((r.try_get("owner")?, r.try_get("until")?)),
            None => None,
        })
    }

    /// Reserves the next slot of the named rate budget in one atomic statement (one round trip): the
    /// theoretical arrival time becomes `max(tat, now_us) + interval_us`, and the new value is returned.
    /// Concurrent reservations from any number of replicas queue on the row and each get their own slot.
    pub async fn reserve_rate_slot(
        &self,
        name: &str,
        now_us: i64,
        interval_us: i64,
    ) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "INSERT INTO rate_limit (name, tat_us) VALUES ($1, $2 + $3) \
             ON CONFLICT (name) DO UPDATE SET \
             tat_us = CASE WHEN rate_limit.tat_us > $2 THEN rate_limit.tat_us ELSE $2 END + $3 \
             RETURNING tat_us",
        )
        .bind(name)
        .bind(now_us)
        .bind(interval_us)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get("tat_us")?)
    }

    /// The named rate budget as the Stripe client's shared limiter sees it.
    pub fn rate_budget(&self, name: &str) -> StoreRateBudget {
        StoreRateBudget {
            store: self.clone(),
            name: name.to_owned(),
        }
    }
}

/// A rate budget kept in the database, so every replica draws from the same one (see
/// [`crate::stripe::rate_limit`]).
#[derive(Debug, Clone)]
pub struct StoreRateBudget {
    store: Store,
    name: String,
}

impl SharedBudget for StoreRateBudget {
    fn advance(
        &self,
        now_us: i64,
        interval_us: i64,
    ) -> Pin<Box<dyn Future<Output = Result<i64, BudgetError>> + Send + '_>> {
        Box::pin(async move {
            self.store
                .reserve_rate_slot(&self.name, now_us, interval_us)
                .await
                .map_err(|e| Box::new(e) as BudgetError)
        })
    }
}

/// A held job lease, renewed in the background until [`JobLease::release`]. Dropped without a release
/// (a panic, an aborted task), it stops renewing and expires after the lease time.
#[derive(Debug)]
pub struct JobLease {
    store: Store,
    name: String,
    owner: String,
    claimed_at: i64,
    renewer: tokio::task::JoinHandle<()>,
}

impl JobLease {
    /// Claims the job `name` for `lease` (renewed every third of it while held). `Ok(None)` when another
    /// live replica holds it.
    pub async fn claim(
        store: &Store,
        name: &str,
        lease: Duration,
    ) -> Result<Option<Self>, StoreError> {
        let owner = format!(
            "pid{}-{}",
            std::process::id(),
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let lease_secs = lease.as_secs().max(1) as i64;
        let t = now();
        if !store.claim_job(name, &owner, t + lease_secs, t).await? {
            return Ok(None);
        }
        let renewer = {
            let (store, name, owner) = (store.clone(), name.to_owned(), owner.clone());
            let every = (lease / 3).max(Duration::from_millis(100));
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    match store.extend_job(&name, &owner, now() + lease_secs).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(job = %name, "job lease lost to another replica");
                            return;
                        }
                        Err(e) => tracing::warn!(job = %name, error = %e, "cannot renew job lease"),
                    }
                }
            })
        };
        Ok(Some(Self {
            store: store.clone(),
            name: name.to_owned(),
            owner,
            claimed_at: t,
            renewer,
        }))
    }

    /// As [`JobLease::claim`], waiting (and saying so once) while another holder runs the job: until it
    /// finishes, or until its lease expires if it died.
    pub async fn claim_waiting(
        store: &Store,
        name: &str,
        lease: Duration,
    ) -> Result<Self, StoreError> {
        let mut told = false;
        loop {
            if let Some(held) = Self::claim(store, name, lease).await? {
                return Ok(held);
            }
            if !told {
                let (owner, until) = store.job_holder(name).await?.unwrap_or_default();
                tracing::warn!(
                    job = name,
                    %owner,
                    expires_in_secs = until - now(),
                    "another process runs this job; waiting for it to finish (or for its lease to expire)"
                );
                told = true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// As [`JobLease::claim`] for a background loop: `None` (skip this run) when another replica holds the
    /// job or the database cannot say (logged).
    pub async fn try_claim(store: &Store, name: &str, lease: Duration) -> Option<Self> {
        match Self::claim(store, name, lease).await {
            Ok(Some(l)) => Some(l),
            Ok(None) => {
                tracing::debug!(
                    job = name,
                    "another replica holds the job; skipping this run"
                );
                None
            }
            Err(e) => {
                tracing::warn!(job = name, error = %e, "cannot claim job lease; skipping this run");
                None
            }
        }
    }

    /// The lease owner's id (`pid…-…`), as stored.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Stops renewing and keeps the job for `hold` from when it was claimed, so a periodic job runs once
    /// per interval across the fleet; `Duration::ZERO` frees it at once.
    pub async fn release(self, hold: Duration) {
        self.renewer.abort();
        let until = if hold.is_zero() {
            0
        } else {
            self.claimed_at + hold.as_secs() as i64
        };
        if let Err(e) = self.store.extend_job(&self.name, &self.owner, until).await {
            tracing::warn!(job = %self.name, error = %e, "cannot release job lease; it expires by itself");
        }
    }
}

impl Drop for JobLease {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}
