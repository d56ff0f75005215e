//! Client-side rate limit shared by every Stripe caller in the process, so bulk work stays under
//! Stripe's limits instead of provoking 429s.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// A GCRA limiter: each caller reserves the next free slot and sleeps until it, so waiting callers are
/// served in arrival order and the rate holds over any window.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Option<Duration>,
    burst_tolerance: Duration,
    next_slot: Mutex<Instant>,
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

    /// Waits for a slot. Returns the time spent waiting.
    pub async fn acquire(&self) -> Duration {
        let wait = self.reserve();
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }
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

    #[tokio::test(start_paused = true)]
    async fn a_zero_rate_never_waits() {
        let limiter = RateLimiter::new(0, 1);
        assert!((0..1000).all(|_| limiter.reserve().is_zero()));
    }
}
