//! Prometheus metrics: the original system's `genesis_meta_agent_*` series and the `genesis_billing_*`
//! table of SPEC §6, rendered in the text exposition format.
//!
//! A small registry of our own: every family is declared once below, so a typo in a name or label set
//! is caught by the tests rather than by a dashboard that silently shows nothing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

struct FamilyDef {
    name: &'static str,
    kind: Kind,
    help: &'static str,
    labels: &'static [&'static str],
}

const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const LAG_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0, 3600.0];

const FAMILIES: &[FamilyDef] = &[
    FamilyDef { name: "genesis_meta_agent_stripe_subscriptions_total", kind: Kind::Counter, help: "Subscriptions by outcome (success, failed, cancelled).", labels: &["status"] },
    FamilyDef { name: "genesis_meta_agent_stripe_revenue_total_usd", kind: Kind::Counter, help: "Monthly recurring revenue added, in USD (never decreases; see genesis_billing_mrr_usd).", labels: &["business_type"] },
    FamilyDef { name: "genesis_meta_agent_takedowns_total", kind: Kind::Counter, help: "Takedowns by overall status.", labels: &["status"] },
    FamilyDef { name: "genesis_meta_agent_businesses_created_total", kind: Kind::Counter, help: "Businesses created, by type and billing outcome.", labels: &["business_type", "status"] },
    FamilyDef { name: "genesis_billing_mrr_usd", kind: Kind::Gauge, help: "Live monthly recurring revenue of active subscriptions.", labels: &["business_type", "currency"] },
    FamilyDef { name: "genesis_billing_subscriptions", kind: Kind::Gauge, help: "Businesses by Stripe subscription status.", labels: &["status"] },
    FamilyDef { name: "genesis_billing_stripe_request_duration_seconds", kind: Kind::Histogram, help: "Duration of Stripe API attempts.", labels: &["operation", "outcome"] },
    FamilyDef { name: "genesis_billing_stripe_retries_total", kind: Kind::Counter, help: "Stripe calls retried, by reason.", labels: &["operation", "reason"] },
    FamilyDef { name: "genesis_billing_stripe_rate_limited_total", kind: Kind::Counter, help: "Stripe calls answered 429.", labels: &[] },
    FamilyDef { name: "genesis_billing_webhook_events_total", kind: Kind::Counter, help: "Webhook events by type and outcome.", labels: &["type", "outcome"] },
    FamilyDef { name: "genesis_billing_webhook_rejected_total", kind: Kind::Counter, help: "Webhook deliveries rejected before storage, by reason.", labels: &["reason"] },
    FamilyDef { name: "genesis_billing_webhook_apply_lag_seconds", kind: Kind::Histogram, help: "Seconds between an event's creation and its application.", labels: &[] },
    FamilyDef { name: "genesis_billing_reconcile_drift_total", kind: Kind::Counter, help: "Drift found and fixed by reconciliation, by field.", labels: &["field", "action"] },
    FamilyDef { name: "genesis_billing_build_info", kind: Kind::Gauge, help: "Build information.", labels: &["version"] },
    FamilyDef { name: "genesis_billing_provision_failures_total", kind: Kind::Counter, help: "Provisioning failures by step (customer, subscription).", labels: &["step"] },
];

#[derive(Debug, Clone, Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

#[derive(Debug, Clone)]
enum Value {
    Scalar(f64),
    Histogram(Histogram),
}

/// The process's metrics. Cheap to update from any task.
#[derive(Debug, Default)]
pub struct Metrics {
    series: Mutex<BTreeMap<(&'static str, Vec<String>), Value>>,
}

fn family(name: &str) -> &'static FamilyDef {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("metric {name} is not declared"))
}

impl Metrics {
    pub fn new() -> Self {
        let m = Self::default();
        m.set(
            "genesis_billing_build_info",
            &[env!("CARGO_PKG_VERSION")],
            1.0,
        );
        m.add("genesis_billing_stripe_rate_limited_total", &[], 0.0);
        m
    }

    fn key(name: &str, labels: &[&str], kind: Kind) -> (&'static str, Vec<String>) {
        let def = family(name);
        assert_eq!(def.kind, kind, "metric {name} used as the wrong kind");
        assert_eq!(
            def.labels.len(),
            labels.len(),
            "metric {name} takes labels {:?}",
            def.labels
        );
        (def.name, labels.iter().map(|l| l.to_string()).collect())
    }

    /// Adds to a counter.
    pub fn add(&self, name: &str, labels: &[&str], by: f64) {
        let key = Self::key(name, labels, Kind::Counter);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        if let Value::Scalar(v) = series.entry(key).or_insert(Value::Scalar(0.0)) {
            *v += by;
        }
    }

    /// Increments a counter by one.
    pub fn inc(&self, name: &str, labels: &[&str]) {
        self.add(name, labels, 1.0);
    }

    /// Sets a gauge.
    pub fn set(&self, name: &str, labels: &[&str], value: f64) {
        let key = Self::key(name, labels, Kind::Gauge);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.insert(key, Value::Scalar(value));
    }

    /// Replaces every series of a gauge family, so label sets that disappeared drop to nothing.
    pub fn replace_gauge(&self, name: &str, values: &[(Vec<String>, f64)]) {
        let def = family(name);
        assert_eq!(def.kind, Kind::Gauge);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series.retain(|(n, _), _| *n != def.name);
        for (labels, v) in values {
            assert_eq!(labels.len(), def.labels.len());
            series.insert((def.name, labels.clone()), Value::Scalar(*v));
        }
    }

    /// Records one observation in a histogram.
    pub fn observe(&self, name: &str, labels: &[&str], value: f64) {
        let key = Self::key(name, labels, Kind::Histogram);
        let bounds = buckets_of(key.0);
        let mut series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let entry = series.entry(key).or_insert_with(|| {
            Value::Histogram(Histogram {
                buckets: vec![0; bounds.len()],
                ..Histogram::default()
            })
        });
        if let Value::Histogram(h) = entry {
            for (i, b) in bounds.iter().enumerate() {
                if value <= *b {
                    h.buckets[i] += 1;
                }
            }
            h.sum += value;
            h.count += 1;
        }
    }

    /// Current value of a counter or gauge series (tests and summaries).
    pub fn value(&self, name: &str, labels: &[&str]) -> f64 {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let key = (
            family(name).name,
            labels.iter().map(|l| l.to_string()).collect::<Vec<_>>(),
        );
        match series.get(&key) {
            Some(Value::Scalar(v)) => *v,
            Some(Value::Histogram(h)) => h.count as f64,
            None => 0.0,
        }
    }

    /// Observations of a histogram summed over all its label sets (e.g. every Stripe request made).
    pub fn histogram_total(&self, name: &str) -> u64 {
        let def = family(name);
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        series
            .range((def.name, Vec::new())..)
            .take_while(|((n, _), _)| *n == def.name)
            .map(|(_, v)| match v {
                Value::Histogram(h) => h.count,
                Value::Scalar(_) => 0,
            })
            .sum()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let series = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        for def in FAMILIES {
            let kind = match def.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            let _ = writeln!(
                out,
                "# HELP {} {}\n# TYPE {} {}",
                def.name, def.help, def.name, kind
            );
            let family_series = series
                .range((def.name, Vec::new())..)
                .take_while(|((name, _), _)| *name == def.name);
            for ((_, values), value) in family_series {
                let labels = format_labels(def.labels, values, None);
                match value {
                    Value::Scalar(v) => {
                        let _ = writeln!(out, "{}{} {}", def.name, labels, fmt_f64(*v));
                    }
                    Value::Histogram(h) => {
                        for (b, count) in buckets_of(def.name).iter().zip(&h.buckets) {
                            let l = format_labels(def.labels, values, Some(&fmt_f64(*b)));
                            let _ = writeln!(out, "{}_bucket{} {}", def.name, l, count);
                        }
                        let l = format_labels(def.labels, values, Some("+Inf"));
                        let _ = writeln!(out, "{}_bucket{} {}", def.name, l, h.count);
                        let _ = writeln!(out, "{}_sum{} {}", def.name, labels, fmt_f64(h.sum));
                        let _ = writeln!(out, "{}_count{} {}", def.name, labels, h.count);
                    }
                }
            }
        }
        out
    }
}

fn buckets_of(name: &str) -> &'static [f64] {
    if name == "genesis_billing_webhook_apply_lag_seconds" {
        LAG_BUCKETS
    } else {
        LATENCY_BUCKETS
    }
}

fn fmt_f64(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

fn format_labels(names: &[&str], values: &[String], le: Option<&str>) -> String {
    let mut parts: Vec<String> = names
        .iter()
        .zip(values)
        .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
        .collect();
    if let Some(le) = le {
        parts.push(format!("le=\"{le}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_the_text_format() {
        let m = Metrics::new();
        m.inc("genesis_meta_agent_stripe_subscriptions_total", &["failed"]);
        m.inc("genesis_meta_agent_stripe_subscriptions_total", &["failed"]);
        m.set("genesis_billing_mrr_usd", &["saas", "usd"], 12.5);
        m.observe(
            "genesis_billing_stripe_request_duration_seconds",
            &["customer.create", "ok"],
            0.02,
        );
        let text = m.render();
        assert!(
            text.contains("genesis_meta_agent_stripe_subscriptions_total{status=\"failed\"} 2\n"),
            "{text}"
        );
        assert!(text
            .contains("genesis_billing_mrr_usd{business_type=\"saas\",currency=\"usd\"} 12.5\n"));
        assert!(text.contains("genesis_billing_stripe_request_duration_seconds_bucket{operation=\"customer.create\",outcome=\"ok\",le=\"0.025\"} 1\n"));
        assert!(text.contains("genesis_billing_stripe_request_duration_seconds_bucket{operation=\"customer.create\",outcome=\"ok\",le=\"0.01\"} 0\n"));
        assert!(text.contains("genesis_billing_stripe_request_duration_seconds_count{operation=\"customer.create\",outcome=\"ok\"} 1\n"));
        assert!(text.contains("genesis_billing_build_info{version=\""));
        assert!(text.contains("genesis_billing_stripe_rate_limited_total 0\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.inc("genesis_billing_webhook_rejected_total", &["a\"b\\c\nd"]);
        assert!(m.render().contains("reason=\"a\\\"b\\\\c\\nd\"} 1"));
    }

    #[test]
    fn replacing_a_gauge_drops_series_that_went_away() {
        let m = Metrics::new();
        m.set("genesis_billing_mrr_usd", &["saas", "usd"], 5.0);
        m.replace_gauge(
            "genesis_billing_mrr_usd",
            &[(vec!["api".into(), "usd".into()], 5.0)],
        );
        let text = m.render();
        assert!(!text.contains("business_type=\"saas\""));
        assert!(text.contains("business_type=\"api\""));
    }

    #[test]
    #[should_panic(expected = "not declared")]
    fn an_undeclared_metric_is_a_programming_error() {
        Metrics::new().inc("genesis_billing_nope_total", &[]);
    }
}
