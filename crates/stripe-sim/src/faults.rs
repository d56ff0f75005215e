//! Fault injection rules (`--faults FILE`, `/_sim/faults`): errors, latency, dropped connections, and commits followed by a failure.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a fault does to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FaultKind {
    /// 500 `api_error` with `Stripe-Should-Retry: true`, nothing done.
    #[serde(rename = "http_500")]
    Http500,
    /// 502, nothing done.
    #[serde(rename = "http_502")]
    Http502,
    /// 503, nothing done.
    #[serde(rename = "http_503")]
    Http503,
    /// 429 `rate_limit`, nothing done.
    #[serde(rename = "http_429")]
    Http429,
    /// Adds `latency_ms` ± `jitter_ms` before the request runs.
    #[serde(rename = "latency")]
    Latency,
    /// Closes the connection without a response, nothing done.
    #[serde(rename = "drop")]
    Drop,
    /// Runs the request, stores a 500 for its idempotency key, and answers 500.
    #[serde(rename = "commit_then_500")]
    CommitThen500,
    /// Runs the request (its success is stored for its idempotency key), then closes the connection without a response.
    #[serde(rename = "commit_then_drop")]
    CommitThenDrop,
}

impl FaultKind {
    /// The snake_case name used in JSON and in counts.
    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Http500 => "http_500",
            FaultKind::Http502 => "http_502",
            FaultKind::Http503 => "http_503",
            FaultKind::Http429 => "http_429",
            FaultKind::Latency => "latency",
            FaultKind::Drop => "drop",
            FaultKind::CommitThen500 => "commit_then_500",
            FaultKind::CommitThenDrop => "commit_then_drop",
        }
    }
}

fn one() -> f64 {
    1.0
}

/// One fault rule: fires with `probability` on requests whose `"METHOD /path"` starts with `operation` (all requests when absent).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FaultRule {
    /// What the fault does.
    pub kind: FaultKind,
    /// Chance per matching request, 0–1 (default 1).
    #[serde(default = "one")]
    pub probability: f64,
    /// Method and path prefix, e.g. `POST /v1/customers`.
    #[serde(default)]
    pub operation: Option<String>,
    /// Added latency for `latency` rules.
    #[serde(default)]
    pub latency_ms: u64,
    /// Random extra latency, up to this much.
    #[serde(default)]
    pub jitter_ms: u64,
}

/// The faults file and `/_sim/faults` body: `{"rules": [...]}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FaultConfig {
    /// The rules, evaluated in order.
    #[serde(default)]
    pub rules: Vec<FaultRule>,
}

/// What to do to one request.
#[derive(Debug, Default, Clone, Copy)]
pub struct Decision {
    /// Delay before running it.
    pub latency_ms: u64,
    /// The first non-latency fault that fired.
    pub fault: Option<FaultKind>,
}

/// Current rules and how often each kind fired.
#[derive(Debug, Default)]
pub struct Faults {
    /// Current rules.
    pub rules: Vec<FaultRule>,
    /// Injected faults per kind.
    pub counts: BTreeMap<String, u64>,
}

impl Faults {
    /// Rolls every matching rule for a request.
    pub fn decide(&mut self, method: &str, path: &str) -> Decision {
        let mut d = Decision::default();
        if self.rules.is_empty() {
            return d;
        }
        let op = format!("{method} {path}");
        for rule in &self.rules {
            if rule
                .operation
                .as_deref()
                .is_some_and(|o| !op.starts_with(o))
            {
                continue;
            }
            if rule.kind != FaultKind::Latency && d.fault.is_some() {
                continue;
            }
            if fastrand::f64() >= rule.probability {
                continue;
            }
            *self.counts.entry(rule.kind.name().to_owned()).or_default() += 1;
            if rule.kind == FaultKind::Latency {
                let jitter = if rule.jitter_ms > 0 {
                    fastrand::u64(0..=rule.jitter_ms)
                } else {
                    0
                };
                d.latency_ms += rule.latency_ms + jitter;
            } else {
                d.fault = Some(rule.kind);
            }
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_from_the_documented_json_shape() {
        let c: FaultConfig = serde_json::from_str(
            r#"{"rules": [{"kind": "commit_then_500", "probability": 0.3, "operation": "POST /v1/customers", "latency_ms": 100, "jitter_ms": 50}, {"kind": "http_503"}]}"#,
        )
        .unwrap();
        assert_eq!(c.rules[0].kind, FaultKind::CommitThen500);
        assert_eq!(c.rules[1].probability, 1.0);
        assert_eq!(
            serde_json::to_value(FaultKind::Http429).unwrap(),
            "http_429"
        );
    }

    #[test]
    fn operation_prefixes_select_requests() {
        let mut f = Faults {
            rules: vec![FaultRule {
                kind: FaultKind::Drop,
                probability: 1.0,
                operation: Some("POST /v1/customers".into()),
                latency_ms: 0,
                jitter_ms: 0,
            }],
            ..Default::default()
        };
        assert_eq!(
            f.decide("POST", "/v1/customers").fault,
            Some(FaultKind::Drop)
        );
        assert_eq!(f.decide("GET", "/v1/customers").fault, None);
        assert_eq!(f.counts["drop"], 1);
    }
}
