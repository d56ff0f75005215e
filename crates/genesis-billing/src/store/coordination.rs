//! Coordination between replicas sharing one database: named job leases for singleton background work,
//! and the fleet-wide Stripe rate budget's table (the Stripe client reaches it through an adapter in `app`).
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

use std::time::Duration;

use std::sync::OnceLock;

use sqlx::Row;

use super::{business_from_row, now, Store, StoreError, BUSINESS_COLUMNS};
use crate::business::Business;

/// A process as the holder of a business's work lease: which host, which pid, and when it started, so
/// `business resume` on the same host can tell a holder that died from a live one without waiting for
/// the lease to expire. Read from Linux's `/proc`; elsewhere the start is unknown and leases only expire.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Holder {
    /// The host name (`/proc/sys/kernel/hostname`, else `/etc/hostname`); `None` when unreadable.
    pub host: Option<String>,
    pub pid: i64,
    /// `<boot id>:<start time in clock ticks since boot>` (`/proc/<pid>/stat` field 22): a pid reused by
    /// another process has another start; another kernel has another boot id.
    pub started: Option<String>,
}

/// What a live-or-dead check of a lease holder found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HolderState {
    /// A process on this host that no longer exists (or whose pid now names another process).
    Dead,
    /// Running on this host right now.
    Alive,
    /// Another host, or a lease without holder information: only its expiry frees it.
    Unknown,
}

impl Holder {
    /// This process.
    pub fn current() -> &'static Holder {
        static CURRENT: OnceLock<Holder> = OnceLock::new();
        CURRENT.get_or_init(|| {
            let pid = std::process::id();
            Holder {
                host: host_name(),
                pid: i64::from(pid),
                started: process_start(i64::from(pid)),
            }
        })
    }

    /// Whether this holder is alive, judged from this host.
    pub fn state(&self) -> HolderState {
        let here = Holder::current();
        let (Some(host), Some(started)) = (&self.host, &self.started) else {
            return HolderState::Unknown;
        };
        // Another host name, or another kernel under the same name (two machines both called `localhost`,
        // or this one rebooted): its processes cannot be seen from here.
        let boot = |s: &str| s.split(':').next().unwrap_or_default().to_owned();
        let same_kernel = here.started.as_deref().map(boot) == Some(boot(started));
        if here.host.as_deref() != Some(host.as_str()) || !same_kernel {
            return HolderState::Unknown;
        }
        match process_start(self.pid) {
            Some(now) if now == *started => HolderState::Alive,
            _ => HolderState::Dead,
        }
    }
}

fn host_name() -> Option<String> {
    ["/proc/sys/kernel/hostname", "/etc/hostname"]
        .iter()
        .filter_map(|p| std::fs::read_to_string(p).ok())
        .map(|s| s.trim().to_owned())
        .find(|s| !s.is_empty())
}

/// The start of process `pid` as `<boot id>:<start ticks>`; `None` when there is no such process (or no
/// `/proc` to ask).
fn process_start(pid: i64) -> Option<String> {
    static BOOT_ID: OnceLock<Option<String>> = OnceLock::new();
    let boot = BOOT_ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
    });
    if pid <= 0 {
        return None;
    }
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let start = start_ticks(&stat)?;
    Some(format!("{}:{start}", boot.as_deref().unwrap_or("-")))
}

/// Field 22 (starttime) of a `/proc/<pid>/stat` line. The command name (field 2) is in parentheses and
/// may hold spaces or ')': fields are counted from the last ')', after which field 3 comes first.
fn start_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// A business with unfinished work, with its work lease as stored.
#[derive(Debug, Clone)]
pub struct UnfinishedBusiness {
    pub business: Business,
    pub lease: Option<BusinessLease>,
}

/// A business's work lease: its owner token, its expiry, and its holder when recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessLease {
    pub owner: String,
    pub until: i64,
    /// `None` for leases written before holders were recorded.
    pub holder: Option<Holder>,
}

impl Store {
    /// One page of the businesses with unfinished work (billing pending or failed, or a takedown whose
    /// Stripe side is open), leased or not, oldest first after the cursor `after` (created_at, id).
    pub async fn unfinished_page(
        &self,
        after: Option<(i64, &str)>,
        limit: i64,
    ) -> Result<Vec<UnfinishedBusiness>, StoreError> {
        let (at, id) = after.unwrap_or((i64::MIN, ""));
        let sql = format!(
            "SELECT {BUSINESS_COLUMNS}, lease_owner, lease_until, lease_host, lease_pid, lease_started \
             FROM business \
             WHERE ((status = 'active' AND billing IN ('pending', 'failed')) \
                 OR (status = 'taken_down' AND takedown_outcome IS NULL)) \
             AND (created_at, business_id) > ($1, $2) \
             ORDER BY created_at, business_id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(at)
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let owner: Option<String> = r.try_get("lease_owner")?;
                let until: Option<i64> = r.try_get("lease_until")?;
                let pid: Option<i64> = r.try_get("lease_pid")?;
                let lease = match (owner, until) {
                    (Some(owner), Some(until)) => Some(BusinessLease {
                        owner,
                        until,
                        holder: pid
                            .map(|pid| -> Result<Holder, StoreError> {
                                Ok(Holder {
                                    host: r.try_get("lease_host")?,
                                    pid,
                                    started: r.try_get("lease_started")?,
                                })
                            })
                            .transpose()?,
                    }),
                    _ => None,
                };
                Ok(UnfinishedBusiness {
                    business: business_from_row(r)?,
                    lease,
                })
            })
            .collect()
    }

    /// Takes over the work lease `dead_owner` holds (its holder is known to be gone), for `owner` until
    /// `until`. Returns false when the lease changed hands meanwhile.
    pub async fn take_over_business(
        &self,
        id: &str,
        dead_owner: &str,
        owner: &str,
        until: i64,
    ) -> Result<bool, StoreError> {
        let me = Holder::current();
        let done = sqlx::query(
            "UPDATE business SET lease_owner = $3, lease_until = $4, lease_host = $5, lease_pid = $6, \
             lease_started = $7 WHERE business_id = $1 AND lease_owner = $2",
        )
        .bind(id)
        .bind(dead_owner)
        .bind(owner)
        .bind(until)
        .bind(me.host.as_deref())
        .bind(me.pid)
        .bind(me.started.as_deref())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_a_live_holder() {
        let me = Holder::current();
        assert_eq!(me.pid, i64::from(std::process::id()));
        assert!(
            me.host.is_some(),
            "the host name is read from /proc or /etc"
        );
        assert!(me.started.is_some(), "the start time is read from /proc");
        assert_eq!(me.state(), HolderState::Alive);
    }

    #[test]
    fn a_reused_pid_with_another_start_time_is_a_dead_holder() {
        let me = Holder::current();
        let boot = me.started.as_deref().unwrap().split(':').next().unwrap();
        let earlier = Holder {
            started: Some(format!("{boot}:1")),
            ..me.clone()
        };
        assert_eq!(earlier.state(), HolderState::Dead);
    }

    #[test]
    fn a_process_that_is_gone_is_a_dead_holder() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = i64::from(child.id());
        let started = process_start(pid);
        child.wait().unwrap();
        let gone = Holder {
            pid,
            started: started.or_else(|| Holder::current().started.clone()),
            ..Holder::current().clone()
        };
        assert_eq!(gone.state(), HolderState::Dead);
    }

    #[test]
    fn another_host_another_kernel_or_an_unrecorded_start_only_expires() {
        let me = Holder::current();
        let other_host = Holder {
            host: Some(format!("{}-elsewhere", me.host.as_deref().unwrap())),
            ..me.clone()
        };
        assert_eq!(other_host.state(), HolderState::Unknown);
        let other_boot = Holder {
            started: Some("another-boot:1".into()),
            ..me.clone()
        };
        assert_eq!(other_boot.state(), HolderState::Unknown);
        let old_row = Holder {
            started: None,
            ..me.clone()
        };
        assert_eq!(old_row.state(), HolderState::Unknown);
    }

    #[test]
    fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
        let tail = "S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 987654 20 21";
        assert_eq!(
            start_ticks(&format!("42 (evil) 1 2 3) {tail}")),
            Some(987654)
        );
        assert_eq!(start_ticks(&format!("42 (plain) {tail}")), Some(987654));
        assert_eq!(start_ticks("42 (cut short) S 1 2"), None);
        assert_eq!(start_ticks("no parenthesis at all"), None);
        assert_eq!(start_ticks(""), None);
        assert_eq!(process_start(0), None);
        assert_eq!(process_start(-5), None);
    }
}
