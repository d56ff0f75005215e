//! Prometheus metrics: the original system's `genesis_meta_agent_*` series and the `genesis_billing_*`
//! table of SPEC §6, rendered in the classic text exposition format (0.0.4).
//!
//! Each family is a typed `prometheus-client` family with a label-set struct, updated through one method
//! per event, so a misspelt family or label does not compile. Counters are atomics; each family keeps its
//! series in a map behind its own read-write lock (a write only for a label set seen the first time), and
//! each histogram series has its own mutex: no lock is shared between families.
//!
//! `FAMILIES` below names every family once (name, type, HELP, labels); `deploy/check.sh` reads it to
//! check the alert rules and the dashboard, and a unit test checks the rendered exposition against it.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One family as Prometheus sees it: exposed name, type, HELP text and label names.
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

// In exposition order: `Metrics::new` registers one family per entry, in this order.
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
    FamilyDef { name: "genesis_billing_outbound_events_total", kind: Kind::Counter, help: "Attempts to push events to the meta-agent, by update type and outcome (delivered, retried, dead_lettered).", labels: &["update_type", "outcome"] },
    FamilyDef { name: "genesis_billing_outbound_oldest_undelivered_age_seconds", kind: Kind::Gauge, help: "Age of the oldest event not yet delivered to the meta-agent (0 when none; set at scrape when delivery is configured).", labels: &[] },
    FamilyDef { name: "genesis_billing_outbound_events_pending", kind: Kind::Gauge, help: "Events not yet delivered to the meta-agent (counted up to 100000).", labels: &[] },
    FamilyDef { name: "genesis_billing_outbound_events_dead", kind: Kind::Gauge, help: "Events dead-lettered and not replayed (counted up to 100000).", labels: &[] },
    FamilyDef { name: "genesis_billing_notices_total", kind: Kind::Counter, help: "Owner notices by kind and outcome (sent, retried, failed, skipped).", labels: &["kind", "outcome"] },
];

/// Writes a closed set of label values as their `as_str` spelling.
macro_rules! label_values {
    ($($ty:ident { $($variant:ident => $text:literal),+ $(,)? })+) => {$(
        impl $ty {
            /// The label value as exposed.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
        impl EncodeLabelValue for $ty {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> std::fmt::Result {
                encoder.write_str(self.as_str())
            }
        }
    )+};
}

/// `status` of `genesis_meta_agent_stripe_subscriptions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SubscriptionOutcome {
    /// A subscription was created.
    Success,
    /// Provisioning failed.
    Failed,
    /// A subscription was cancelled.
    Cancelled,
}

/// `status` of `genesis_meta_agent_takedowns_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TakedownStatus {
    /// Taken down, Stripe side finished.
    Success,
    /// Taken down, Stripe side left unfinished.
    Partial,
    /// No such business.
    NotFound,
    /// Taken down before.
    AlreadyTakenDown,
}

/// `outcome` of `genesis_billing_webhook_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WebhookOutcome {
    /// Applied to a business.
    Applied,
    /// Stored, nothing to apply.
    Ignored,
    /// Seen before.
    Duplicate,
    /// Applying failed (retried later).
    Failed,
}

/// `action` of `genesis_billing_reconcile_drift_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DriftAction {
    /// Drift seen.
    Found,
    /// Drift repaired.
    Fixed,
}

/// `outcome` of `genesis_billing_outbound_events_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutboundOutcome {
    /// The receiver answered 2xx.
    Delivered,
    /// The attempt failed and another follows after a backoff.
    Retried,
    /// Refused for good, or out of time.
    DeadLettered,
}

/// `outcome` of `genesis_billing_notices_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NoticeOutcome {
    /// The SMTP server accepted it.
    Sent,
    /// A temporary failure; tried again later.
    Retried,
    /// Refused for good, or retries ran out.
    Failed,
    /// Not sent: no address, notices off, or its kind turned off.
    Skipped,
}

label_values! {
    OutboundOutcome { Delivered => "delivered", Retried => "retried", DeadLettered => "dead_lettered" }
    NoticeOutcome { Sent => "sent", Retried => "retried", Failed => "failed", Skipped => "skipped" }
    SubscriptionOutcome { Success => "success", Failed => "failed", Cancelled => "cancelled" }
    TakedownStatus {
        Success => "success", Partial => "partial", NotFound => "not_found",
        AlreadyTakenDown => "already_taken_down",
    }
    WebhookOutcome { Applied => "applied", Ignored => "ignored", Duplicate => "duplicate", Failed => "failed" }
    DriftAction { Found => "found", Fixed => "fixed" }
}

/// Labels `{status}` of the subscription counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SubscriptionLabels {
    status: SubscriptionOutcome,
}

/// Labels `{business_type}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BusinessTypeLabels {
    business_type: String,
}

/// Labels `{status}` of the takedown counter.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct TakedownLabels {
    status: TakedownStatus,
}

/// Labels `{business_type, status}` of businesses created (`status` is the billing state reached).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CreatedLabels {
    business_type: String,
    status: String,
}

/// Labels `{business_type, currency}` of the MRR gauge.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MrrLabels {
    /// Business type.
    pub business_type: String,
    /// Lower-case ISO currency.
    pub currency: String,
}

/// Labels `{status}` of the subscription-status gauge (any Stripe status string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StatusLabels {
    status: String,
}

/// Labels `{operation, outcome}` of Stripe request durations.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    operation: String,
    outcome: String,
}

/// Labels `{operation, reason}` of Stripe retries.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RetryLabels {
    operation: String,
    reason: String,
}

/// Labels `{type, outcome}` of webhook events.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookEventLabels {
    r#type: String,
    outcome: WebhookOutcome,
}

/// Labels `{reason}` of webhook rejections.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabels {
    reason: String,
}

/// Labels `{field, action}` of reconcile drift.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DriftLabels {
    field: String,
    action: DriftAction,
}

/// Labels `{version}` of build info.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct VersionLabels {
    version: String,
}

/// Labels `{kind, outcome}` of owner notices.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct NoticeLabels {
    kind: String,
    outcome: NoticeOutcome,
}

/// Labels `{step}` of provisioning failures.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StepLabels {
    step: String,
}

/// Labels `{update_type, outcome}` of pushed events (`update_type` is one of the fixed names).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct OutboundLabels {
    update_type: &'static str,
    outcome: OutboundOutcome,
}

type FloatGauge = Gauge<f64, AtomicU64>;
type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS.iter().copied())
}

/// A gauge family set from an aggregate: the label sets last set, to drop those that disappear.
#[derive(Debug)]
struct Aggregate<L, G> {
    family: Family<L, G>,
    current: Mutex<HashSet<L>>,
}

impl<L, G> Aggregate<L, G>
where
    L: Clone + Eq + std::hash::Hash,
    G: Default,
{
    /// Sets every new value, then removes the label sets that went away: a scrape never sees it empty.
    fn replace(&self, values: Vec<(L, impl FnOnce(&G))>) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        let fresh: HashSet<L> = values.iter().map(|(l, _)| l.clone()).collect();
        for (labels, set) in values {
            set(&self.family.get_or_create(&labels));
        }
        for gone in current.iter().filter(|l| !fresh.contains(l)) {
            self.family.remove(gone);
        }
        *current = fresh;
    }
}

/// The process's metrics. Cheap to update from any task.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    subscriptions: Family<SubscriptionLabels, Counter>,
    revenue: Family<BusinessTypeLabels, Counter<f64, AtomicU64>>,
    takedowns: Family<TakedownLabels, Counter>,
    businesses_created: Family<CreatedLabels, Counter>,
    mrr: Aggregate<MrrLabels, FloatGauge>,
    subscription_statuses: Aggregate<StatusLabels, Gauge>,
    stripe_requests: Histograms<RequestLabels>,
    stripe_retries: Family<RetryLabels, Counter>,
    stripe_rate_limited: Counter,
    webhook_events: Family<WebhookEventLabels, Counter>,
    webhook_rejected: Family<ReasonLabels, Counter>,
    webhook_apply_lag: Histogram,
    drift: Family<DriftLabels, Counter>,
    provision_failures: Family<StepLabels, Counter>,
    outbound_events: Family<OutboundLabels, Counter>,
    outbound_oldest_age: Gauge,
    outbound_pending: Gauge,
    outbound_dead: Gauge,
    notices: Family<NoticeLabels, Counter>,
    /// Stripe attempts over every label set (for summaries; a family cannot be summed cheaply).
    stripe_attempts: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every family registered, build info set and the 429 counter at zero.
    pub fn new() -> Self {
        let m = Self {
            registry: Registry::default(),
            subscriptions: Family::default(),
            revenue: Family::default(),
            takedowns: Family::default(),
            businesses_created: Family::default(),
            mrr: Aggregate {
                family: Family::default(),
                current: Mutex::default(),
            },
            subscription_statuses: Aggregate {
                family: Family::default(),
                current: Mutex::default(),
            },
            stripe_requests: Family::new_with_constructor(latency_histogram),
            stripe_retries: Family::default(),
            stripe_rate_limited: Counter::default(),
            webhook_events: Family::default(),
            webhook_rejected: Family::default(),
            webhook_apply_lag: Histogram::new(LAG_BUCKETS.iter().copied()),
            drift: Family::default(),
            provision_failures: Family::default(),
            outbound_events: Family::default(),
            outbound_oldest_age: Gauge::default(),
            outbound_pending: Gauge::default(),
            outbound_dead: Gauge::default(),
            notices: Family::default(),
            stripe_attempts: AtomicU64::new(0),
        };
        let build_info = Family::<VersionLabels, Gauge>::default();
        build_info
            .get_or_create(&VersionLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })
            .set(1);
        let mut registry = Registry::default();
        let mut defs = FAMILIES.iter();
        let mut add = |metric: &dyn Fn(&mut Registry, &str, &str)| {
            let def = defs.next().expect("one FAMILIES entry per family");
            // The library appends a full stop to HELP.
            metric(
                &mut registry,
                registered_name(def),
                def.help.strip_suffix('.').unwrap_or(def.help),
            );
        };
        add(&|r, n, h| r.register(n, h, m.subscriptions.clone()));
        add(&|r, n, h| r.register(n, h, m.revenue.clone()));
        add(&|r, n, h| r.register(n, h, m.takedowns.clone()));
        add(&|r, n, h| r.register(n, h, m.businesses_created.clone()));
        add(&|r, n, h| r.register(n, h, m.mrr.family.clone()));
        add(&|r, n, h| r.register(n, h, m.subscription_statuses.family.clone()));
        add(&|r, n, h| r.register(n, h, m.stripe_requests.clone()));
        add(&|r, n, h| r.register(n, h, m.stripe_retries.clone()));
        add(&|r, n, h| r.register(n, h, m.stripe_rate_limited.clone()));
        add(&|r, n, h| r.register(n, h, m.webhook_events.clone()));
        add(&|r, n, h| r.register(n, h, m.webhook_rejected.clone()));
        add(&|r, n, h| r.register(n, h, m.webhook_apply_lag.clone()));
        add(&|r, n, h| r.register(n, h, m.drift.clone()));
        add(&|r, n, h| r.register(n, h, build_info.clone()));
        add(&|r, n, h| r.register(n, h, m.provision_failures.clone()));
        add(&|r, n, h| r.register(n, h, m.outbound_events.clone()));
        add(&|r, n, h| r.register(n, h, m.outbound_oldest_age.clone()));
        add(&|r, n, h| r.register(n, h, m.outbound_pending.clone()));
        add(&|r, n, h| r.register(n, h, m.outbound_dead.clone()));
        add(&|r, n, h| r.register(n, h, m.notices.clone()));
        assert!(defs.next().is_none(), "every FAMILIES entry is registered");
        Self { registry, ..m }
    }

    /// Counts a subscription outcome.
    pub fn subscription(&self, status: SubscriptionOutcome) {
        self.subscriptions
            .get_or_create(&SubscriptionLabels { status })
            .inc();
    }

    /// Adds new monthly revenue in USD for a business type.
    pub fn revenue_added(&self, business_type: &str, usd: f64) {
        let labels = BusinessTypeLabels {
            business_type: business_type.to_owned(),
        };
        self.revenue.get_or_create(&labels).inc_by(usd);
    }

    /// Counts a takedown by its overall status.
    pub fn takedown(&self, status: TakedownStatus) {
        self.takedowns
            .get_or_create(&TakedownLabels { status })
            .inc();
    }

    /// Counts a business created, by type and the billing state it reached.
    pub fn business_created(&self, business_type: &str, billing: &str) {
        let labels = CreatedLabels {
            business_type: business_type.to_owned(),
            status: billing.to_owned(),
        };
        self.businesses_created.get_or_create(&labels).inc();
    }

    /// Replaces the MRR gauge with these values; label sets not given disappear.
    pub fn set_mrr(&self, values: impl IntoIterator<Item = (MrrLabels, f64)>) {
        let values = values.into_iter().map(|(l, v)| {
            (l, move |g: &FloatGauge| {
                g.set(v);
            })
        });
        self.mrr.replace(values.collect());
    }

    /// Replaces the subscription-status gauge with these counts; statuses not given disappear.
    pub fn set_subscription_statuses(&self, values: impl IntoIterator<Item = (String, i64)>) {
        let values = values.into_iter().map(|(status, n)| {
            (StatusLabels { status }, move |g: &Gauge| {
                g.set(n);
            })
        });
        self.subscription_statuses.replace(values.collect());
    }

    /// Records one Stripe attempt's duration.
    pub fn stripe_request(&self, operation: &str, outcome: &str, seconds: f64) {
        let labels = RequestLabels {
            operation: operation.to_owned(),
            outcome: outcome.to_owned(),
        };
        self.stripe_requests.get_or_create(&labels).observe(seconds);
        self.stripe_attempts.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a Stripe call retried.
    pub fn stripe_retry(&self, operation: &str, reason: &str) {
        let labels = RetryLabels {
            operation: operation.to_owned(),
            reason: reason.to_owned(),
        };
        self.stripe_retries.get_or_create(&labels).inc();
    }

    /// Counts a Stripe answer 429.
    pub fn stripe_rate_limited(&self) {
        self.stripe_rate_limited.inc();
    }

    /// Counts a webhook event by type and outcome.
    pub fn webhook_event(&self, event_type: &str, outcome: WebhookOutcome) {
        let labels = WebhookEventLabels {
            r#type: event_type.to_owned(),
            outcome,
        };
        self.webhook_events.get_or_create(&labels).inc();
    }

    /// Counts a webhook delivery rejected before storage.
    pub fn webhook_rejected(&self, reason: &str) {
        self.webhook_rejected
            .get_or_create(&ReasonLabels {
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// Records the seconds between an event's creation and its application.
    pub fn webhook_apply_lag(&self, seconds: f64) {
        self.webhook_apply_lag.observe(seconds);
    }

    /// Counts reconcile drift on a field.
    pub fn drift(&self, field: &str, action: DriftAction) {
        self.drift
            .get_or_create(&DriftLabels {
                field: field.to_owned(),
                action,
            })
            .inc();
    }

    /// Counts a provisioning failure at a step.
    pub fn provision_failure(&self, step: &str) {
        self.provision_failures
            .get_or_create(&StepLabels {
                step: step.to_owned(),
            })
            .inc();
    }

    /// Counts one attempt to push an event to the meta-agent.
    pub fn outbound_event(&self, update_type: &'static str, outcome: OutboundOutcome) {
        self.outbound_events
            .get_or_create(&OutboundLabels {
                update_type,
                outcome,
            })
            .inc();
    }

    /// Counts an owner notice's outcome.
    pub fn notice(&self, kind: &str, outcome: NoticeOutcome) {
        self.notices
            .get_or_create(&NoticeLabels {
                kind: kind.to_owned(),
                outcome,
            })
            .inc();
    }

    /// Sets the delivery backlog gauges (pending count, oldest undelivered age in seconds, dead letters).
    pub fn set_outbound_backlog(&self, pending: i64, oldest_age_secs: i64, dead: i64) {
        self.outbound_pending.set(pending);
        self.outbound_oldest_age.set(oldest_age_secs);
        self.outbound_dead.set(dead);
    }

    /// Stripe attempts made so far, over every operation and outcome.
    pub fn stripe_attempts(&self) -> u64 {
        self.stripe_attempts.load(Ordering::Relaxed)
    }

    /// Stripe answers 429 so far.
    pub fn stripe_rate_limited_count(&self) -> u64 {
        self.stripe_rate_limited.get()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let mut open = String::new();
        prometheus_client::encoding::text::encode_registry(&mut open, &self.registry)
            .expect("writing to a String cannot fail");
        to_classic_text(&open)
    }

    /// Value of one series as a scrape shows it (0 when absent; a histogram's count), read from the
    /// exposition. For tests: an undeclared family or a wrong number of labels panics.
    pub fn value(&self, name: &str, labels: &[&str]) -> f64 {
        let def = declared(name);
        assert_eq!(
            def.labels.len(),
            labels.len(),
            "metric {name} takes labels {:?}",
            def.labels
        );
        let sample = match def.kind {
            Kind::Histogram => format!("{name}_count"),
            _ => name.to_owned(),
        };
        let pairs: Vec<String> = def
            .labels
            .iter()
            .zip(labels)
            .map(|(n, v)| format!("{n}=\"{}\"", escape_label(v)))
            .collect();
        let series = if pairs.is_empty() {
            sample
        } else {
            format!("{sample}{{{}}}", pairs.join(","))
        };
        let text = self.render();
        text.lines()
            .find_map(|l| l.strip_prefix(series.as_str())?.strip_prefix(' '))
            .map_or(0.0, |v| v.parse().expect("a sample value is a number"))
    }

    /// Observations of a histogram summed over all its label sets, read from the exposition. For tests:
    /// an undeclared family or one that is not a histogram panics.
    pub fn histogram_total(&self, name: &str) -> u64 {
        assert_eq!(
            declared(name).kind,
            Kind::Histogram,
            "metric {name} is not a histogram"
        );
        let count = format!("{name}_count");
        self.render()
            .lines()
            .filter(|l| l.starts_with(&count) && l[count.len()..].starts_with([' ', '{']))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

fn declared(name: &str) -> &'static FamilyDef {
    FAMILIES
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("metric {name} is not declared"))
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The name a family is registered under: the library appends `_total` to counter samples itself.
fn registered_name(def: &FamilyDef) -> &'static str {
    match def.kind {
        Kind::Counter => def.name.strip_suffix("_total").unwrap_or(def.name),
        _ => def.name,
    }
}

/// Turns the library's OpenMetrics text into the classic text the alert rules, the dashboard and
/// `promtool check metrics` were written against, as the hand-made registry wrote it: every family's HELP
/// and TYPE from `FAMILIES`, even with no series yet (the library leaves an empty family out); counter
/// samples named as declared (the library appends `_total` to the registered name); a histogram series as
/// buckets with `le` last, then `_sum` and `_count` (the library writes `_sum`, `_count`, then buckets with
/// `le` first); whole numbers without a trailing `.0`.
fn to_classic_text(open: &str) -> String {
    let mut blocks: HashMap<&str, Vec<&str>> = HashMap::new();
    let mut family = "";
    for line in open.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            family = rest.split(' ').next().unwrap_or(rest);
        } else if !line.starts_with('#') {
            blocks.entry(family).or_default().push(line);
        }
    }
    let mut out = String::with_capacity(open.len() + 2048);
    for def in FAMILIES {
        let kind = match def.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let _ = writeln!(out, "# HELP {0} {1}\n# TYPE {0} {kind}", def.name, def.help);
        let registered = registered_name(def);
        // A histogram series' buckets, then its `_sum` and `_count`, held until its `+Inf` bucket.
        let (mut buckets, mut held) = (String::new(), String::new());
        for line in blocks.get(registered).into_iter().flatten() {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (name, labels) = series.split_at(series.find('{').unwrap_or(series.len()));
            let name = match def.kind {
                Kind::Counter => def.name,
                _ => name,
            };
            let value = whole(value);
            if def.kind == Kind::Histogram && !name.ends_with("_bucket") {
                let _ = writeln!(held, "{name}{labels} {value}");
                continue;
            }
            let bucket = labels
                .strip_prefix("{le=\"")
                .and_then(|l| l.split_once('"'))
                .filter(|_| def.kind == Kind::Histogram);
            let Some((le, rest)) = bucket else {
                let _ = writeln!(out, "{name}{labels} {value}");
                continue;
            };
            let le = whole(le);
            match rest.strip_prefix(',') {
                Some(others) => {
                    let others = &others[..others.len() - 1];
                    let _ = writeln!(buckets, "{name}{{{others},le=\"{le}\"}} {value}");
                }
                None => {
                    let _ = writeln!(buckets, "{name}{{le=\"{le}\"}} {value}");
                }
            }
            if le == "+Inf" {
                // A series never observed (the label-less one exists from the start) is left out, as
                // before: every other series appears with its first observation.
                if value != "0" {
                    out.push_str(&buckets);
                    out.push_str(&held);
                }
                buckets.clear();
                held.clear();
            }
        }
    }
    out
}

/// `9.0` → `9`; anything else unchanged.
fn whole(v: &str) -> &str {
    v.strip_suffix(".0").unwrap_or(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_gauges_and_histograms_render_in_the_text_format() {
        let m = Metrics::new();
        m.subscription(SubscriptionOutcome::Failed);
        m.subscription(SubscriptionOutcome::Failed);
        m.set_mrr([(
            MrrLabels {
                business_type: "saas".into(),
                currency: "usd".into(),
            },
            12.5,
        )]);
        m.stripe_request("customer.create", "ok", 0.02);
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
        assert!(!text.contains("# EOF"), "{text}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new();
        m.webhook_rejected("a\"b\\c\nd");
        assert!(
            m.render().contains("reason=\"a\\\"b\\\\c\\nd\"} 1"),
            "{}",
            m.render()
        );
        assert_eq!(
            m.value("genesis_billing_webhook_rejected_total", &["a\"b\\c\nd"]),
            1.0
        );
    }

    #[test]
    fn replacing_a_gauge_drops_series_that_went_away() {
        let m = Metrics::new();
        let saas = MrrLabels {
            business_type: "saas".into(),
            currency: "usd".into(),
        };
        let api = MrrLabels {
            business_type: "api".into(),
            currency: "usd".into(),
        };
        m.set_mrr([(saas, 5.0)]);
        m.set_mrr([(api, 5.0)]);
        let text = m.render();
        assert!(!text.contains("business_type=\"saas\""), "{text}");
        assert!(
            text.contains("genesis_billing_mrr_usd{business_type=\"api\",currency=\"usd\"} 5\n")
        );
        m.set_subscription_statuses([("active".to_owned(), 3)]);
        m.set_subscription_statuses([("canceled".to_owned(), 1)]);
        let text = m.render();
        assert!(!text.contains("status=\"active\""), "{text}");
        assert!(text.contains("genesis_billing_subscriptions{status=\"canceled\"} 1\n"));
    }

    #[test]
    #[should_panic(expected = "not declared")]
    fn reading_an_undeclared_metric_panics() {
        Metrics::new().value("genesis_billing_nope_total", &[]);
    }

    /// Every family once, so each has a sample to check.
    fn one_of_each() -> Metrics {
        let m = Metrics::new();
        m.subscription(SubscriptionOutcome::Cancelled);
        m.revenue_added("saas", 9.0);
        m.takedown(TakedownStatus::AlreadyTakenDown);
        m.business_created("saas", "provisioned");
        m.set_mrr([(
            MrrLabels {
                business_type: "saas".into(),
                currency: "usd".into(),
            },
            9.0,
        )]);
        m.set_subscription_statuses([("active".to_owned(), 1)]);
        m.stripe_request("subscription.create", "ok", 1.0);
        m.stripe_retry("customer.create", "rate_limited");
        m.stripe_rate_limited();
        m.webhook_event("invoice.paid", WebhookOutcome::Duplicate);
        m.webhook_rejected("missing_signature");
        m.webhook_apply_lag(2.0);
        m.drift("status", DriftAction::Fixed);
        m.provision_failure("customer");
        m.outbound_event("billing.provisioned", OutboundOutcome::DeadLettered);
        m.set_outbound_backlog(3, 75, 2);
        m.notice("payment_failed", NoticeOutcome::Retried);
        m
    }

    #[test]
    fn every_family_renders_its_help_type_and_samples_as_the_alert_rules_expect() {
        let text = one_of_each().render();
        let version = env!("CARGO_PKG_VERSION");
        let samples = [
            "genesis_meta_agent_stripe_subscriptions_total{status=\"cancelled\"} 1",
            "genesis_meta_agent_stripe_revenue_total_usd{business_type=\"saas\"} 9",
            "genesis_meta_agent_takedowns_total{status=\"already_taken_down\"} 1",
            "genesis_meta_agent_businesses_created_total{business_type=\"saas\",status=\"provisioned\"} 1",
            "genesis_billing_mrr_usd{business_type=\"saas\",currency=\"usd\"} 9",
            "genesis_billing_subscriptions{status=\"active\"} 1",
            "genesis_billing_stripe_request_duration_seconds_bucket{operation=\"subscription.create\",outcome=\"ok\",le=\"1\"} 1",
            "genesis_billing_stripe_retries_total{operation=\"customer.create\",reason=\"rate_limited\"} 1",
            "genesis_billing_stripe_rate_limited_total 1",
            "genesis_billing_webhook_events_total{type=\"invoice.paid\",outcome=\"duplicate\"} 1",
            "genesis_billing_webhook_rejected_total{reason=\"missing_signature\"} 1",
            "genesis_billing_webhook_apply_lag_seconds_bucket{le=\"5\"} 1",
            "genesis_billing_reconcile_drift_total{field=\"status\",action=\"fixed\"} 1",
            &format!("genesis_billing_build_info{{version=\"{version}\"}} 1"),
            "genesis_billing_provision_failures_total{step=\"customer\"} 1",
            "genesis_billing_outbound_events_total{update_type=\"billing.provisioned\",outcome=\"dead_lettered\"} 1",
            "genesis_billing_outbound_oldest_undelivered_age_seconds 75",
            "genesis_billing_outbound_events_pending 3",
            "genesis_billing_outbound_events_dead 2",
            "genesis_billing_notices_total{kind=\"payment_failed\",outcome=\"retried\"} 1",
        ];
        let lines: Vec<&str> = text.lines().collect();
        let mut at = 0;
        for (def, sample) in FAMILIES.iter().zip(samples) {
            let kind = match def.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            // HELP then TYPE, in declaration order, each family's samples before the next family.
            let help = format!("# HELP {} {}", def.name, def.help);
            assert_eq!(lines[at], help, "{text}");
            assert_eq!(
                lines[at + 1],
                format!("# TYPE {} {kind}", def.name),
                "{text}"
            );
            at += 2;
            let end = lines[at..]
                .iter()
                .position(|l| l.starts_with('#'))
                .map_or(lines.len(), |n| at + n);
            assert!(
                lines[at..end].contains(&sample),
                "{sample} not in the {} block:\n{text}",
                def.name
            );
            at = end;
        }
        assert_eq!(at, lines.len(), "{text}");
        // A histogram keeps its buckets, +Inf, sum and count.
        for line in [
            "genesis_billing_webhook_apply_lag_seconds_bucket{le=\"0.01\"} 0",
            "genesis_billing_webhook_apply_lag_seconds_bucket{le=\"3600\"} 1",
            "genesis_billing_webhook_apply_lag_seconds_bucket{le=\"+Inf\"} 1",
            "genesis_billing_webhook_apply_lag_seconds_sum 2",
            "genesis_billing_webhook_apply_lag_seconds_count 1",
            "genesis_billing_stripe_request_duration_seconds_bucket{operation=\"subscription.create\",outcome=\"ok\",le=\"30\"} 1",
            "genesis_billing_stripe_request_duration_seconds_bucket{operation=\"subscription.create\",outcome=\"ok\",le=\"0.005\"} 0",
        ] {
            assert!(lines.contains(&line), "{line} missing:\n{text}");
        }
        let buckets = |name: &str| lines.iter().filter(|l| l.starts_with(name)).count();
        assert_eq!(
            buckets("genesis_billing_stripe_request_duration_seconds_bucket"),
            13
        );
        assert_eq!(
            buckets("genesis_billing_webhook_apply_lag_seconds_bucket"),
            11
        );
    }

    #[test]
    fn a_fresh_registry_declares_every_family_before_any_series_exists() {
        let text = Metrics::new().render();
        let mut expected = String::new();
        for def in FAMILIES {
            let kind = match def.kind {
                Kind::Counter => "counter",
                Kind::Gauge => "gauge",
                Kind::Histogram => "histogram",
            };
            expected += &format!("# HELP {0} {1}\n# TYPE {0} {kind}\n", def.name, def.help);
            if def.name == "genesis_billing_stripe_rate_limited_total" {
                expected += "genesis_billing_stripe_rate_limited_total 0\n";
            }
            if def.kind == Kind::Gauge && def.name.starts_with("genesis_billing_outbound_") {
                expected += &format!("{} 0\n", def.name);
            }
            if def.name == "genesis_billing_build_info" {
                expected += &format!(
                    "genesis_billing_build_info{{version=\"{}\"}} 1\n",
                    env!("CARGO_PKG_VERSION")
                );
            }
        }
        assert_eq!(text, expected);
    }

    #[test]
    fn typed_readers_and_the_test_reader_agree_with_the_exposition() {
        let m = one_of_each();
        m.stripe_request("customer.create", "timeout", 0.1);
        assert_eq!(m.stripe_attempts(), 2);
        assert_eq!(
            m.histogram_total("genesis_billing_stripe_request_duration_seconds"),
            2
        );
        assert_eq!(m.stripe_rate_limited_count(), 1);
        assert_eq!(
            m.value("genesis_billing_stripe_rate_limited_total", &[]),
            1.0
        );
        assert_eq!(
            m.value("genesis_meta_agent_stripe_revenue_total_usd", &["saas"]),
            9.0
        );
        assert_eq!(
            m.value(
                "genesis_billing_webhook_events_total",
                &["invoice.paid", "applied"]
            ),
            0.0
        );
    }
}
