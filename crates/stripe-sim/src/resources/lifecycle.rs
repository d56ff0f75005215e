//! Time-driven transitions, run in chronological order whenever simulated time passes: incomplete expiry, trial-end
//! warnings, trial ends, renewals, payment retries and dunning, scheduled cancellations, checkout expiry.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use serde_json::{json, Value};

use crate::clock::period_boundary;
use crate::resources::billing::{
    self, attempt_payment_then, cancel_subscription, create_invoice, default_pm, finalize_invoice,
    update_sub,
};
use crate::resources::checkout;
use crate::state::State;

/// How long Stripe leaves a first invoice unpaid before `incomplete_expired`.
pub const INCOMPLETE_EXPIRY_SECS: i64 = 23 * 3600;

/// How long before a trial's end Stripe sends `customer.subscription.trial_will_end`.
pub const TRIAL_WILL_END_SECS: i64 = 3 * 86_400;

#[derive(Debug, Clone, PartialEq)]
enum Action {
    Expire,
    TrialWillEnd,
    TrialEnd,
    Renew,
    Retry(String),
    Cancel,
    ExpireCheckout,
}

fn period_end(sub: &Value) -> Option<i64> {
    sub["items"]["data"][0]["current_period_end"].as_i64()
}

/// The next thing due for an object, and when.
fn next_action(state: &State, id: &str) -> Option<(i64, Action)> {
    let v = state.store.get(id)?;
    if v["object"] == "checkout.session" {
        return (v["status"] == "open").then(|| {
            (
                v["expires_at"].as_i64().unwrap_or(i64::MAX),
                Action::ExpireCheckout,
            )
        });
    }
    match v["status"].as_str()? {
        "incomplete" => Some((
            v["created"].as_i64()? + INCOMPLETE_EXPIRY_SECS,
            Action::Expire,
        )),
        "trialing" => {
            let end = v["trial_end"].as_i64()?;
            let best = match v["cancel_at"].as_i64() {
                Some(c) if c <= end => (c, Action::Cancel),
                _ if v["cancel_at_period_end"] == true => (end, Action::Cancel),
                _ => (end, Action::TrialEnd),
            };
            let warn = end - TRIAL_WILL_END_SECS;
            if !trial_warned(state, id, end) && warn < best.0 {
                return Some((warn, Action::TrialWillEnd));
            }
            Some(best)
        }
        "active" | "past_due" => {
            let end = period_end(v)?;
            let mut best = if v["cancel_at_period_end"] == true {
                (end, Action::Cancel)
            } else {
                (end, Action::Renew)
            };
            if let Some(c) = v["cancel_at"].as_i64() {
                if c <= best.0 {
                    best = (c, Action::Cancel);
                }
            }
            if v["status"] == "past_due" {
                for inv in billing::open_invoices(state, id) {
                    if let Some(t) = state
                        .store
                        .get(&inv)
                        .and_then(|i| i["next_payment_attempt"].as_i64())
                    {
                        if t < best.0 {
                            best = (t, Action::Retry(inv));
                        }
                    }
                }
            }
            Some(best)
        }
        _ => None,
    }
}

/// Runs everything due up to `until` for objects on one clock (`None`: the global clock), earliest first.
pub fn run_due(state: &mut State, clock: Option<&str>, until: i64) {
    let mut heap: BinaryHeap<Reverse<(i64, u64, String)>> = BinaryHeap::new();
    let on_clock = |v: &Value| v["test_clock"].as_str() == clock;
    for (seq, id) in state.store.ids("subscription") {
        let Some(v) = state.store.get(id) else {
            continue;
        };
        if billing::is_terminal(v) || !on_clock(v) {
            continue;
        }
        if let Some((t, _)) = next_action(state, id) {
            if t <= until {
                heap.push(Reverse((t, *seq, id.clone())));
            }
        }
    }
    if clock.is_none() {
        for (seq, id) in state.store.ids("checkout.session") {
            if let Some((t, _)) = next_action(state, id) {
                if t <= until {
                    heap.push(Reverse((t, *seq, id.clone())));
                }
            }
        }
    }
    let mut budget = 1_000_000u32;
    while let Some(Reverse((t, seq, id))) = heap.pop() {
        budget = budget.saturating_sub(1);
        if budget == 0 {
            tracing::warn!("stopping time-driven processing: too many transitions in one advance");
            break;
        }
        let Some((due, action)) = next_action(state, &id) else {
            continue;
        };
        if due != t {
            if due <= until {
                heap.push(Reverse((due, seq, id)));
            }
            continue;
        }
        apply(state, &id, action, t);
        if let Some((next, _)) = next_action(state, &id) {
            if next <= until && next >= t {
                heap.push(Reverse((next, seq, id)));
            }
        }
    }
}

fn apply(state: &mut State, id: &str, action: Action, t: i64) {
    match action {
        Action::Expire => expire_incomplete(state, id, t),
        Action::TrialWillEnd => warn_trial_end(state, id, t),
        Action::TrialEnd => end_trial(state, id, t),
        Action::Renew => renew(state, id, t),
        Action::Retry(inv) => retry(state, id, &inv, t),
        Action::Cancel => cancel_subscription(state, id, t, "cancellation_requested"),
        Action::ExpireCheckout => checkout::expire_session(state, id, t),
    }
}

/// Whether `customer.subscription.trial_will_end` went out for the trial ending at `end` (a moved trial end warns again).
fn trial_warned(state: &State, id: &str, end: i64) -> bool {
    state
        .store
        .entry(id)
        .is_some_and(|e| e.internal["trial_will_end_for"].as_i64() == Some(end))
}

fn warn_trial_end(state: &mut State, id: &str, t: i64) {
    let Some(end) = state.store.get(id).and_then(|s| s["trial_end"].as_i64()) else {
        return;
    };
    if trial_warned(state, id, end) {
        return;
    }
    if let Some(e) = state.store.entry_mut(id) {
        e.internal["trial_will_end_for"] = json!(end);
    }
    let snapshot = state.store.get(id).cloned().unwrap_or_default();
    state.emit("customer.subscription.trial_will_end", snapshot, None, t);
}

/// Sends `customer.subscription.trial_will_end` at once when a trial has three days or less left (a short trial, a
/// trial end moved closer, `trial_end=now`), as Stripe does; longer trials get it from the clock.
pub fn warn_trial_end_if_near(state: &mut State, id: &str, now: i64) {
    let Some(sub) = state.store.get(id) else {
        return;
    };
    let Some(end) = sub["trial_end"].as_i64() else {
        return;
    };
    if sub["status"] == "trialing" && end - now <= TRIAL_WILL_END_SECS {
        warn_trial_end(state, id, now);
    }
}

/// `incomplete` for 23 hours: `incomplete_expired`, the first invoice voided.
fn expire_incomplete(state: &mut State, id: &str, t: i64) {
    let latest = state
        .store
        .get(id)
        .and_then(|s| s["latest_invoice"].as_str().map(str::to_owned));
    if let Some(inv) = latest {
        billing::void_invoice(state, &inv, t);
    }
    update_sub(state, id, t, "customer.subscription.updated", |s| {
        s["status"] = json!("incomplete_expired");
        s["ended_at"] = json!(t);
    });
}

/// Moves the items to the next period, starting at `start`.
fn advance_period(state: &mut State, id: &str, start: i64) -> (i64, i64) {
    let k = state
        .store
        .entry(id)
        .and_then(|e| e.internal["period_index"].as_i64())
        .unwrap_or(1)
        + 1;
    // `period_index` k means the current period ends at the k-th boundary after the anchor.
    let Some(sub) = state.store.get(id) else {
        return (start, start);
    };
    let anchor = sub["billing_cycle_anchor"].as_i64().unwrap_or(start);
    let interval = sub["items"]["data"][0]["price"]["recurring"]["interval"]
        .as_str()
        .unwrap_or("month")
        .to_owned();
    let count = sub["items"]["data"][0]["price"]["recurring"]["interval_count"]
        .as_i64()
        .unwrap_or(1);
    let mut k = k;
    let mut end = period_boundary(anchor, &interval, count, k);
    while end <= start {
        k += 1;
        end = period_boundary(anchor, &interval, count, k);
    }
    if let Some(e) = state.store.entry_mut(id) {
        e.internal["period_index"] = json!(k);
    }
    (start, end)
}

fn set_period(s: &mut Value, period: (i64, i64)) {
    if let Some(items) = s["items"]["data"].as_array_mut() {
        for i in items {
            i["current_period_start"] = json!(period.0);
            i["current_period_end"] = json!(period.1);
        }
    }
}

/// Creates, finalizes and tries to collect the invoice of a new period; a failure makes the subscription `past_due` and schedules retries.
fn bill_period(state: &mut State, id: &str, period: (i64, i64), t: i64, from_status: &str) {
    let inv = create_invoice(state, id, "subscription_cycle", period, false, t);
    update_sub(state, id, t, "customer.subscription.updated", |s| {
        set_period(s, period);
        s["latest_invoice"] = json!(inv);
        if from_status == "trialing" {
            s["status"] = json!("active");
        }
    });
    finalize_invoice(state, &inv, t);
    if state.store.get(&inv).is_some_and(|i| i["status"] == "paid") {
        return;
    }
    let sub = state.store.get(id).cloned().unwrap_or_default();
    let pm = default_pm(state, &sub);
    if attempt_payment_then(state, &inv, pm, t, |st, i| next_retry(st, i, t)).is_err() {
        payment_failed(state, id, &inv, t);
    }
}

/// When Stripe retries an invoice whose automatic collection just failed (`None`: retries are exhausted).
fn next_retry(state: &mut State, inv: &str, t: i64) -> Option<i64> {
    let first = {
        let e = state.store.entry_mut(inv).expect("invoice exists");
        if e.internal["first_failed_at"].is_null() {
            e.internal["first_failed_at"] = json!(t);
        }
        e.internal["first_failed_at"].as_i64().unwrap_or(t)
    };
    let attempts = state
        .store
        .get(inv)
        .and_then(|i| i["attempt_count"].as_i64())
        .unwrap_or(1);
    state
        .settings
        .retry_days
        .get((attempts - 1).max(0) as usize)
        .map(|d| first + d * 86_400)
}

/// After a failed automatic collection: `past_due`, and the next retry (or the dunning outcome when retries are exhausted).
fn payment_failed(state: &mut State, sub: &str, inv: &str, t: i64) {
    let next = next_retry(state, inv, t);
    if let Some(v) = state.store.get_mut(inv) {
        v["next_payment_attempt"] = json!(next);
    }
    let snapshot = state.store.get(inv).cloned().unwrap_or_default();
    state.emit(
        "invoice.updated",
        snapshot,
        Some(json!({ "next_payment_attempt": null })),
        t,
    );
    if next.is_some() {
        update_sub(state, sub, t, "customer.subscription.updated", |s| {
            s["status"] = json!("past_due")
        });
        return;
    }
    match state.settings.dunning.as_str() {
        "unpaid" => update_sub(state, sub, t, "customer.subscription.updated", |s| {
            s["status"] = json!("unpaid")
        }),
        "past_due" => update_sub(state, sub, t, "customer.subscription.updated", |s| {
            s["status"] = json!("past_due")
        }),
        _ => cancel_subscription(state, sub, t, "payment_failed"),
    }
}

/// A renewal at the end of the current period.
fn renew(state: &mut State, id: &str, t: i64) {
    let status = state
        .store
        .get(id)
        .and_then(|s| s["status"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let period = advance_period(state, id, t);
    bill_period(state, id, period, t, &status);
}

/// An automatic retry of a failed invoice.
fn retry(state: &mut State, sub: &str, inv: &str, t: i64) {
    let s = state.store.get(sub).cloned().unwrap_or_default();
    let pm = default_pm(state, &s);
    if attempt_payment_then(state, inv, pm, t, |st, i| next_retry(st, i, t)).is_err() {
        payment_failed(state, sub, inv, t);
    }
}

/// The end of a trial: charge the payment method, or apply `missing_payment_method`.
fn end_trial(state: &mut State, id: &str, t: i64) {
    let Some(sub) = state.store.get(id).cloned() else {
        return;
    };
    let has_pm = default_pm(state, &sub).is_some();
    let behavior = sub["trial_settings"]["end_behavior"]["missing_payment_method"]
        .as_str()
        .unwrap_or("create_invoice");
    if !has_pm && behavior == "cancel" {
        cancel_subscription(state, id, t, "cancellation_requested");
        return;
    }
    if !has_pm && behavior == "pause" {
        update_sub(state, id, t, "customer.subscription.updated", |s| {
            s["status"] = json!("paused")
        });
        let snapshot = state.store.get(id).cloned().unwrap_or_default();
        state.emit("customer.subscription.paused", snapshot, None, t);
        return;
    }
    if let Some(e) = state.store.entry_mut(id) {
        e.internal["period_index"] = json!(0);
    }
    let period = advance_period(state, id, t);
    bill_period(state, id, period, t, "trialing");
}

/// Starts a new period for a resumed (formerly paused) subscription and bills it.
pub fn resume(state: &mut State, id: &str, t: i64) {
    update_sub(state, id, t, "customer.subscription.updated", |s| {
        s["billing_cycle_anchor"] = json!(t);
        s["status"] = json!("active");
    });
    let snapshot = state.store.get(id).cloned().unwrap_or_default();
    state.emit("customer.subscription.resumed", snapshot, None, t);
    if let Some(e) = state.store.entry_mut(id) {
        e.internal["period_index"] = json!(0);
    }
    let period = advance_period(state, id, t);
    bill_period(state, id, period, t, "active");
}
