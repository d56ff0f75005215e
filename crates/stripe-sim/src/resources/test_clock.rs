//! Stripe test clocks (`/v1/test_helpers/test_clocks`): frozen time for attached customers, advanced on request with everything due run in order.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::lifecycle;
use crate::resources::{fetch, list, respond};
use crate::state::State;
use crate::store::new_id;

const KIND: &str = "test_helpers.test_clock";

/// `POST /v1/test_helpers/test_clocks`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(
        params,
        &[&[("frozen_time", Spec::Int), ("name", Spec::Str)]],
    )?;
    let p = Params::root(params);
    p.req("frozen_time")?;
    let frozen = p.int("frozen_time").unwrap_or(0);
    let now = state.global_now();
    let id = new_id("clock_");
    let v = json!({
        "id": id,
        "object": KIND,
        "created": now,
        "deletes_after": now + 30 * 86_400,
        "frozen_time": frozen,
        "livemode": false,
        "name": p.nonempty("name"),
        "status": "ready",
        "status_details": {},
    });
    state.store.insert(v.clone());
    state.emit("test_helpers.test_clock.created", v.clone(), None, now);
    respond(state, &v, params)
}

/// `GET /v1/test_helpers/test_clocks/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, KIND, id, "id")?, params)
}

/// `GET /v1/test_helpers/test_clocks`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    list(
        state,
        KIND,
        params,
        &[],
        "/v1/test_helpers/test_clocks",
        |_| true,
    )
}

/// `DELETE /v1/test_helpers/test_clocks/{id}`: the clock's customers go with it, as in Stripe.
pub fn delete(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    let v = fetch(state, KIND, id, "id")?.clone();
    let customers: Vec<String> = state
        .store
        .values("customer")
        .filter(|c| c["test_clock"] == id && c["deleted"] != true)
        .filter_map(|c| c["id"].as_str().map(str::to_owned))
        .collect();
    for c in customers {
        crate::resources::customer::delete(state, &Node::empty(), &c)?;
    }
    state.store.remove(id);
    let now = state.global_now();
    state.emit("test_helpers.test_clock.deleted", v, None, now);
    Ok(json!({ "id": id, "object": KIND, "deleted": true }))
}

/// `POST /v1/test_helpers/test_clocks/{id}/advance`: runs everything due up to `frozen_time` before answering; the answer says `advancing` as Stripe's does, and the clock reads `ready` afterwards.
pub fn advance(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[&[("frozen_time", Spec::Int)]])?;
    let p = Params::root(params);
    p.req("frozen_time")?;
    let target = p.int("frozen_time").unwrap_or(0);
    let clock = fetch(state, KIND, id, "id")?.clone();
    let current = clock["frozen_time"].as_i64().unwrap_or(0);
    if target <= current {
        return Err(ApiError::invalid(
            format!("The frozen_time ({target}) must be after the test clock's current frozen_time ({current})."),
            Some("frozen_time"),
        ));
    }
    let now = state.global_now();
    let mut advancing = clock.clone();
    advancing["status"] = json!("advancing");
    state.emit(
        "test_helpers.test_clock.advancing",
        advancing.clone(),
        None,
        now,
    );
    // What happens while time passes is automatic: Stripe records no request on those events.
    let request = state.request.take();
    advance_to(state, id, target);
    state.request = request;
    let ready = state.store.get(id).cloned().unwrap_or_default();
    state.emit("test_helpers.test_clock.ready", ready, None, now);
    let mut out = respond(state, &advancing, params)?;
    out["frozen_time"] = json!(target);
    Ok(out)
}

/// Moves a clock forward, running what becomes due in order; each step sees the clock at that step's time.
pub fn advance_to(state: &mut State, id: &str, target: i64) {
    lifecycle::run_due(state, Some(id), target);
    if let Some(c) = state.store.get_mut(id) {
        c["frozen_time"] = json!(target);
    }
    state.dirty = true;
}
