//! Client-side rate limit shared by every Stripe caller in the process — or, with a [`SharedBudget`],
//! by every replica of the fleet — so bulk work stays under Stripe's limits instead of provoking 429s.
//!
//! Stripe's limit is per account, not per process: N replicas each limited to the configured rate would
//! together send N times it. So on PostgreSQL the slots come from one budget in the database
//! (`store::coordination`): the same GCRA, with its "theoretical arrival time" (TAT) kept in one row and
//! advanced by one atomic `UPDATE … RETURNING` per request, from which each caller computes its own wait.
//! That is one round trip per Stripe call (milliseconds, against Stripe's tens to hundreds), no lock held
//! while waiting, and callers across the fleet are served in reservation order. The budget sits behind a
//! small trait returning a boxed future, so this module knows nothing of the database. The local limiter
//! stays for SQLite (one process) and is the fallback when the database cannot answer: a Stripe call
//! is never failed for want of a rate-limit row.
//!
//! Shared slots are computed from each replica's wall clock, as the work leases are: replicas' clocks are
//! assumed NTP-synchronised, and a skew of δ lets at most δ × rate requests through early.

use std::error::Error;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Why a shared budget could not answer.
pub type BudgetError = Box<dyn Error + Send + Sync>;

/// A rate budget several processes draw from (the replicas' shared database).
pub trait SharedBudget: Send + Sync + std::fmt::Debug {
    /// Atomically sets the budget's theoretical arrival time to `max(tat, now_us) + interval_us`
    /// (microseconds since the Unix epoch) and returns the new value.
    fn advance(
        &self,
        now_us: i64,
        interval_us: i64,
    ) -> Pin<Box<dyn Future<Output = Result<i64, BudgetError>> + Send + '_>>;
}

/// How long a reservation may take before the local limiter answers instead.
const SHARED_TIMEOUT: Duration = Duration::from_secs(2);

/// A GCRA limiter: each caller reserves the next free slot and sleeps until it, so waiting callers are
/// served in arrival order and the rate holds over any window.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Option<Duration>,
    burst_tolerance: Duration,
    next_slot: Mutex<Instant>,
    /// The fleet's budget, when there is one; `next_slot` is then only the fallback.
    shared: Option<Arc<dyn SharedBudget>>,
    /// Whether the last shared reservation failed (so the fallback is logged once, not per call).
    degraded: AtomicBool,
}

impl RateLimiter {
    /// `per_second == 0` turns limiting off. `burst` requests may go back to back after an idle spell.
    pub fn new(per_second: u32, burst: u32) -> Self {
        let interval = (per_second > 0).then(|| Duration::from_secs(1) / per_second);
        let burst_tolerance = interval
            .map(|i| i * burst.saturating_sub(1))
            .unwrap_or_default();
        Self {
            interval,
            burst_tolerance,
            next_slot: Mutex::new(Instant::now()),
            shared: None,
            degraded: AtomicBool::new(false),
        }
    }

    /// The same rate and burst, drawn from `budget` (shared with other processes) instead of this process.
    pub fn sharing(&self, budget: Arc<dyn SharedBudget>) -> Self {
        Self {
            interval: self.interval,
            burst_tolerance: self.burst_tolerance,
            next_slot: Mutex::new(Instant::now()),
            shared: Some(budget),
            degraded: AtomicBool::new(false),
        }
    }

    /// Reserves a slot and returns how long the caller must wait for it.
    pub fn reserve(&self) -> Duration {
        let Some(interval) = self.interval else {
            return Duration::ZERO;
        };
        let now = Instant::now();
        let mut next = self.next_slot.lock().unwrap_or_else(|e| e.into_inner());
        // GCRA: the theoretical arrival time may run ahead of now by at most the burst tolerance.
        let tat = (*next).max(now);
        let allowed_at = tat.checked_sub(self.burst_tolerance).unwrap_or(now);
        *next = tat + interval;
        allowed_at.saturating_duration_since(now)
    }

    /// Waits for a slot (from the shared budget when there is one). Returns the time spent waiting.
    pub async fn acquire(&self) -> Duration {
        let started = Instant::now();
        let slot = match (&self.shared, self.interval) {
            (Some(budget), Some(interval)) => match self.reserve_shared(budget, interval).await {
                Ok(slot) => {
                    if self.degraded.swap(false, Ordering::Relaxed) {
                        tracing::info!("shared Stripe rate limit reachable again");
                    }
                    slot
                }
                Err(e) => {
                    if !self.degraded.swap(true, Ordering::Relaxed) {
                        tracing::warn!(error = %e, "shared Stripe rate limit unavailable; limiting this replica alone until it is back");
                    } else {
                        tracing::debug!(error = %e, "shared Stripe rate limit unavailable");
                    }
                    Instant::now() + self.reserve()
                }
            },
            _ => started + self.reserve(),
        };
        if slot > Instant::now() {
            tokio::time::sleep_until(slot).await;
        }
        started.elapsed()
    }

    /// Reserves the next slot of the shared budget; returns when it starts.
    async fn reserve_shared(
        &self,
        budget: &Arc<dyn SharedBudget>,
        interval: Duration,
    ) -> Result<Instant, BudgetError> {
        // The wait is counted from this instant, so the round trip is part of it, not added to it.
        let asked = Instant::now();
        let now_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_micros() as i64)
            .unwrap_or(0);
        let interval_us = interval.as_micros() as i64;
        let tat = tokio::time::timeout(SHARED_TIMEOUT, budget.advance(now_us, interval_us))
            .await
            .map_err(|_| format!("no answer within {SHARED_TIMEOUT:?}"))??;
        Ok(asked
            + shared_wait(
                tat,
                now_us,
                interval_us,
                self.burst_tolerance.as_micros() as i64,
            ))
    }
}

/// GCRA on a shared TAT: the slot just reserved starts at `tat - interval`, and may be taken up to the
/// burst tolerance early.
fn shared_wait(new_tat_us: i64, now_us: i64, interval_us: i64, tolerance_us: i64) -> Duration {
    let allowed_at = new_tat_us - interval_us - tolerance_us;
    Duration::from_micros(allowed_at.saturating_sub(now_us).max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn callers_are_spaced_at_the_configured_rate_after_the_burst() {
        let limiter = RateLimiter::new(10, 2);
        let waits: Vec<_> = (0..5).map(|_| limiter.reserve()).collect();
        let ms = Duration::from_millis;
        assert_eq!(waits, vec![ms(0), ms(0), ms(100), ms(200), ms(300)]);
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_spell_earns_back_only_the_burst() {
        let limiter = RateLimiter::new(10, 3);
        tokio::time::advance(Duration::from_secs(60)).await;
        let waits: Vec<_> = (0..4).map(|_| limiter.reserve()).collect();
        let ms = Duration::from_millis;
        assert_eq!(waits, vec![ms(0), ms(0), ms(0), ms(100)]);
    }

    /// The database's row, in memory: the same atomic advance.
    #[derive(Debug, Default)]
    struct MemoryBudget {
        tat: Mutex<i64>,
        down: AtomicBool,
    }

    impl SharedBudget for MemoryBudget {
        fn advance(
            &self,
            now_us: i64,
            interval_us: i64,
        ) -> Pin<Box<dyn Future<Output = Result<i64, BudgetError>> + Send + '_>> {
            Box::pin(async move {
                if self.down.load(Ordering::Relaxed) {
                    return Err("connection refused".into());
                }
                let mut tat = self.tat.lock().unwrap();
                *tat = (*tat).max(now_us) + interval_us;
                Ok(*tat)
            })
        }
    }

    #[test]
    fn a_shared_slot_waits_for_its_turn_less_the_burst_tolerance() {
        let ms = Duration::from_millis;
        // Idle budget: the first slot is now.
        assert_eq!(shared_wait(1_100_000, 1_000_000, 100_000, 0), ms(0));
        // Three reservations ahead of us at 10/s.
        assert_eq!(shared_wait(1_400_000, 1_000_000, 100_000, 0), ms(300));
        assert_eq!(shared_wait(1_400_000, 1_000_000, 100_000, 200_000), ms(100));
        // A TAT in the past never means a negative wait.
        assert_eq!(shared_wait(500_000, 1_000_000, 100_000, 0), ms(0));
    }

    #[tokio::test]
    async fn two_replicas_on_one_budget_share_the_rate() {
        let budget = Arc::new(MemoryBudget::default());
        let a = RateLimiter::new(20, 1).sharing(budget.clone());
        let b = RateLimiter::new(20, 1).sharing(budget);
        let started = Instant::now();
        for _ in 0..5 {
            tokio::join!(a.acquire(), b.acquire());
        }
        // Ten slots at 20/s between two limiters: the ninth interval ends 450 ms after the first slot.
        // Two local limiters would have finished in 200 ms.
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(440), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreachable_budget_falls_back_to_the_local_limit() {
        let budget = Arc::new(MemoryBudget::default());
        budget.down.store(true, Ordering::Relaxed);
        let limiter = RateLimiter::new(10, 1).sharing(budget.clone());
        let started = Instant::now();
        for _ in 0..3 {
            limiter.acquire().await;
        }
        assert_eq!(
            started.elapsed(),
            Duration::from_millis(200),
            "local spacing"
        );
        assert!(limiter.degraded.load(Ordering::Relaxed));
        budget.down.store(false, Ordering::Relaxed);
        limiter.acquire().await;
        assert!(
            !limiter.degraded.load(Ordering::Relaxed),
            "back on the shared budget"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_rate_never_waits() {
        let limiter = RateLimiter::new(0, 1);
        assert!((0..1000).all(|_| limiter.reserve().is_zero()));
    }
}
