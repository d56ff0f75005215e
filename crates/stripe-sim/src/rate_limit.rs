//! A token bucket over all `/v1` requests, like Stripe's test-mode limit (25 requests/s by default).

use std::time::Instant;

/// Tokens refill at `per_second` and the bucket holds one second's worth.
#[derive(Debug)]
pub struct TokenBucket {
    per_second: u32,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket; 0 disables limiting.
    pub fn new(per_second: u32) -> Self {
        TokenBucket {
            per_second,
            tokens: per_second as f64,
            last: Instant::now(),
        }
    }

    /// The configured rate.
    pub fn per_second(&self) -> u32 {
        self.per_second
    }

    /// Changes the rate and refills the bucket.
    pub fn set(&mut self, per_second: u32) {
        *self = TokenBucket::new(per_second);
    }

    /// Takes a token if one is available.
    pub fn try_take(&mut self) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let now = Instant::now();
        let rate = self.per_second as f64;
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_allows_a_burst_then_refuses_and_zero_is_unlimited() {
        let mut b = TokenBucket::new(5);
        assert_eq!((0..10).filter(|_| b.try_take()).count(), 5);
        let mut off = TokenBucket::new(0);
        assert!((0..1000).all(|_| off.try_take()));
    }
}
