//! Idempotency records as Stripe keeps them: the first response per key for 24 h, parameter checks, and in-flight detection.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// How long a key is kept, in simulated seconds.
pub const RETENTION_SECS: i64 = 24 * 3600;

/// A response kept for replay.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status.
    pub status: u16,
    /// The exact body.
    pub body: String,
    /// The `Stripe-Should-Retry` header that came with it.
    pub should_retry: Option<bool>,
}

/// One key's record.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Record {
    /// Method, path and canonical parameters of the first request.
    fingerprint: String,
    /// Simulated time of the first request.
    created: i64,
    /// `None` while the first request is still running.
    response: Option<StoredResponse>,
}

/// What to do with a request that carries an `Idempotency-Key`.
#[derive(Debug)]
pub enum Begin {
    /// First use (or expired): run it; it is now in flight.
    Fresh,
    /// Seen before with the same parameters: send this again.
    Replay(StoredResponse),
    /// Seen before with other parameters: 400 `idempotency_error`.
    Mismatch,
    /// The first request with this key has not finished: 409.
    InFlight,
}

/// All idempotency records, scoped per API key (the key itself is stored only as a hash).
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Idempotency {
    records: HashMap<String, Record>,
    #[serde(skip)]
    inserts_since_prune: usize,
}

/// The record key: a hash of the API key, then the idempotency key.
pub fn scope_key(api_key: &str, key: &str) -> String {
    let digest = Sha256::digest(api_key.as_bytes());
    let mut s = String::with_capacity(16 + 1 + key.len());
    for b in &digest[..8] {
        s.push_str(&format!("{b:02x}"));
    }
    s.push(':');
    s.push_str(key);
    s
}

impl Idempotency {
    /// Looks a key up and, when it is new, marks it in flight.
    pub fn begin(&mut self, scoped: &str, fingerprint: &str, now: i64) -> Begin {
        if let Some(rec) = self.records.get(scoped) {
            let expired = rec.created + RETENTION_SECS <= now && rec.response.is_some();
            if !expired {
                if rec.fingerprint != fingerprint {
                    return Begin::Mismatch;
                }
                return match &rec.response {
                    Some(r) => Begin::Replay(r.clone()),
                    None => Begin::InFlight,
                };
            }
        }
        self.prune(now);
        self.records.insert(
            scoped.to_owned(),
            Record {
                fingerprint: fingerprint.to_owned(),
                created: now,
                response: None,
            },
        );
        Begin::Fresh
    }

    /// Stores the response of a request begun with [`Idempotency::begin`], or forgets the key (`None`) when Stripe would not store it.
    pub fn finish(&mut self, scoped: &str, response: Option<StoredResponse>) {
        match response {
            Some(r) => {
                if let Some(rec) = self.records.get_mut(scoped) {
                    rec.response = Some(r);
                }
            }
            None => {
                self.records.remove(scoped);
            }
        }
    }

    /// Drops in-flight records (after a restart nothing is in flight any more).
    pub fn drop_in_flight(&mut self) {
        self.records.retain(|_, r| r.response.is_some());
    }

    /// Forgets keys older than the retention now and then, so memory stays bounded.
    fn prune(&mut self, now: i64) {
        self.inserts_since_prune += 1;
        if self.inserts_since_prune < 10_000 {
            return;
        }
        self.inserts_since_prune = 0;
        self.records
            .retain(|_, r| r.response.is_none() || r.created + RETENTION_SECS > now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> StoredResponse {
        StoredResponse {
            status: 200,
            body: "{}".into(),
            should_retry: None,
        }
    }

    #[test]
    fn a_key_replays_matches_rejects_and_expires() {
        let mut i = Idempotency::default();
        assert!(matches!(i.begin("k", "a", 0), Begin::Fresh));
        assert!(matches!(i.begin("k", "a", 1), Begin::InFlight));
        i.finish("k", Some(ok()));
        assert!(matches!(i.begin("k", "a", 2), Begin::Replay(_)));
        assert!(matches!(i.begin("k", "b", 2), Begin::Mismatch));
        assert!(matches!(
            i.begin("k", "b", RETENTION_SECS + 1),
            Begin::Fresh
        ));
    }

    #[test]
    fn a_forgotten_key_counts_as_new() {
        let mut i = Idempotency::default();
        assert!(matches!(i.begin("k", "a", 0), Begin::Fresh));
        i.finish("k", None);
        assert!(matches!(i.begin("k", "b", 0), Begin::Fresh));
    }
}
