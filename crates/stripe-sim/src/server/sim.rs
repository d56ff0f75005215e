//! Simulator-only controls under `/_sim/` (JSON in and out): faults, rate limit, webhook delivery behaviour, dunning settings, global time, and what a customer does on Stripe's pages (checkout completion, the billing portal, invoice authentication).

use serde_json::{json, Value};

use crate::faults::FaultConfig;
use crate::form::{self, Node};
use crate::resources::lifecycle;
use crate::resources::{billing_portal, checkout};
use crate::server::{lock, ping, sim_error, App};
use crate::state::Settings;
use crate::webhook::WebhookSettings;

fn parse_json(body: &[u8]) -> Result<Value, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    serde_json::from_slice(body).map_err(|e| format!("Invalid JSON body: {e}"))
}

fn unrecognized(method: &str, path: &str, request_id: &str) -> (u16, Value) {
    sim_error(
        404,
        format!("Unrecognized request URL ({method}: {path}). See the stripe-sim README for the /_sim routes."),
        request_id,
    )
}

/// Dispatches a `/_sim` request.
pub async fn handle(
    app: &App,
    method: &str,
    path: &str,
    body: &[u8],
    content_type: &str,
    request_id: &str,
) -> (u16, Value) {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let bad = |m: String| sim_error(400, m, request_id);
    match (method, segs.as_slice()) {
        ("GET", ["_sim", "ping"]) => (200, ping()),
        ("GET", ["_sim", "faults"]) => (200, faults_json(app)),
        ("POST", ["_sim", "faults"]) => {
            let cfg: FaultConfig = match parse_json(body)
                .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string()))
            {
                Ok(c) => c,
                Err(e) => return bad(format!("Invalid fault rules: {e}")),
            };
            if cfg
                .rules
                .iter()
                .any(|r| !(0.0..=1.0).contains(&r.probability))
            {
                return bad("Fault probabilities must be between 0 and 1.".into());
            }
            lock(&app.faults).rules = cfg.rules;
            (200, faults_json(app))
        }
        ("DELETE", ["_sim", "faults"]) => {
            lock(&app.faults).rules.clear();
            (200, faults_json(app))
        }
        ("GET", ["_sim", "rate_limit"]) => {
            (200, json!({ "per_second": lock(&app.bucket).per_second() }))
        }
        ("POST", ["_sim", "rate_limit"]) => {
            let n = match parse_json(body).map(|v| v["per_second"].as_u64()) {
                Ok(Some(n)) if n <= u32::MAX as u64 => n as u32,
                Ok(_) => {
                    return bad(
                        "Expected {\"per_second\": N} with N ≥ 0 (0 turns limiting off).".into(),
                    )
                }
                Err(e) => return bad(e),
            };
            lock(&app.bucket).set(n);
            (200, json!({ "per_second": n }))
        }
        ("GET", ["_sim", "webhooks"]) => (200, webhooks_json(app)),
        ("POST", ["_sim", "webhooks"]) => {
            let patch = match parse_json(body) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return bad("Expected a JSON object.".into()),
                Err(e) => return bad(e),
            };
            let current = lock(&app.webhooks.settings).clone();
            let mut merged = serde_json::to_value(current).unwrap_or_default();
            for (k, v) in patch {
                merged[k] = v;
            }
            match serde_json::from_value::<WebhookSettings>(merged) {
                Ok(s) if (0.0..=1.0).contains(&s.duplicate_probability) => {
                    *lock(&app.webhooks.settings) = s
                }
                Ok(_) => return bad("duplicate_probability must be between 0 and 1.".into()),
                Err(e) => return bad(format!("Invalid webhook settings: {e}")),
            }
            (200, webhooks_json(app))
        }
        ("GET", ["_sim", "settings"]) => (200, json!(lock(&app.state).settings.clone())),
        ("POST", ["_sim", "settings"]) => {
            let patch = match parse_json(body) {
                Ok(Value::Object(m)) => m,
                Ok(_) => return bad("Expected a JSON object.".into()),
                Err(e) => return bad(e),
            };
            let mut st = lock(&app.state);
            let mut merged = serde_json::to_value(st.settings.clone()).unwrap_or_default();
            for (k, v) in patch {
                if !matches!(k.as_str(), "dunning" | "retry_days") {
                    return bad(format!("Unknown setting: {k}"));
                }
                merged[k] = v;
            }
            match serde_json::from_value::<Settings>(merged) {
                Ok(s) if matches!(s.dunning.as_str(), "cancel" | "unpaid" | "past_due") => {
                    st.settings = s
                }
                Ok(_) => return bad("dunning must be one of cancel, unpaid, past_due.".into()),
                Err(e) => return bad(format!("Invalid settings: {e}")),
            }
            st.dirty = true;
            app.after_change(&mut st);
            (200, json!(st.settings.clone()))
        }
        ("GET", ["_sim", "clock"]) => {
            let st = lock(&app.state);
            (
                200,
                json!({ "now": st.global_now(), "offset": st.time_offset }),
            )
        }
        ("POST", ["_sim", "clock", "advance"]) => {
            let secs = match parse_json(body).map(|v| v["seconds"].as_i64()) {
                Ok(Some(s)) if s >= 0 => s,
                Ok(_) => return bad("Expected {\"seconds\": N} with N ≥ 0.".into()),
                Err(e) => return bad(e),
            };
            (200, advance_global(app, secs))
        }
        ("POST", ["_sim", "checkout", "sessions", id, "complete"]) => {
            let pm = match body_param(body, content_type, "payment_method", request_id) {
                Ok(v) => v,
                Err(e) => return e,
            };
            let pm = pm.unwrap_or_else(|| "pm_card_visa".to_owned());
            run_step(app, request_id, |st| checkout::complete(st, id, &pm))
        }
        ("POST", ["_sim", "billing_portal", "sessions", id, "payment_method"]) => {
            let pm = match body_param(body, content_type, "payment_method", request_id) {
                Ok(Some(v)) => v,
                Ok(None) => return bad("Missing required param: payment_method.".into()),
                Err(e) => return e,
            };
            run_step(app, request_id, |st| {
                billing_portal::update_payment_method(st, id, &pm)
            })
        }
        ("POST", ["_sim", "billing_portal", "sessions", id, "cancel"]) => {
            let sub = match body_param(body, content_type, "subscription", request_id) {
                Ok(v) => v,
                Err(e) => return e,
            };
            run_step(app, request_id, |st| {
                billing_portal::cancel(st, id, sub.as_deref())
            })
        }
        _ => unrecognized(method, path, request_id),
    }
}

/// A string parameter of a `/_sim` step, from a JSON or a form body; `None` when absent or empty.
fn body_param(
    body: &[u8],
    content_type: &str,
    key: &str,
    request_id: &str,
) -> Result<Option<String>, (u16, Value)> {
    let v = if content_type.starts_with("application/json") {
        match parse_json(body) {
            Ok(v) => v[key].as_str().map(str::to_owned),
            Err(e) => return Err(sim_error(400, e, request_id)),
        }
    } else {
        match form::parse(body) {
            Ok(n) => n.get(key).and_then(Node::as_str).map(str::to_owned),
            Err(e) => return Err((e.status, e.to_json(request_id))),
        }
    };
    Ok(v.filter(|s| !s.is_empty()))
}

/// Runs a `/_sim` step that acts as a customer would, under the state lock, delivering the events it emits.
fn run_step(
    app: &App,
    request_id: &str,
    f: impl FnOnce(&mut crate::state::State) -> crate::error::ApiResult<Value>,
) -> (u16, Value) {
    let mut st = lock(&app.state);
    st.request = Some(crate::state::RequestInfo {
        id: request_id.to_owned(),
        idempotency_key: None,
    });
    let r = f(&mut st);
    st.request = None;
    st.dirty = true;
    app.after_change(&mut st);
    match r {
        Ok(v) => (200, v),
        Err(e) => (e.status, e.to_json(request_id)),
    }
}

/// Moves global simulated time forward, running what becomes due; also used by `SimHandle::advance_time`.
pub fn advance_global(app: &App, secs: i64) -> Value {
    let mut st = lock(&app.state);
    let target = st.global_now() + secs;
    lifecycle::run_due(&mut st, None, target);
    st.time_offset += secs;
    st.dirty = true;
    app.after_change(&mut st);
    json!({ "now": st.global_now(), "offset": st.time_offset })
}

fn faults_json(app: &App) -> Value {
    let f = lock(&app.faults);
    json!({ "rules": f.rules, "counts": f.counts })
}

fn webhooks_json(app: &App) -> Value {
    let s = lock(&app.webhooks.settings).clone();
    let mut v = serde_json::to_value(s).unwrap_or_default();
    v["stats"] = app.webhooks.stats.to_json();
    v
}
