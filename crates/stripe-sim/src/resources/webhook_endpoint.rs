//! Webhook endpoints: create (the `whsec_` secret is returned only then), retrieve, update, list, delete.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::{fetch, list, respond};
use crate::state::{State, API_VERSION};
use crate::store::new_id;

const COMMON: &[(&str, Spec)] = &[
    ("url", Spec::Str),
    ("enabled_events", Spec::Arr(&Spec::Str)),
    ("description", Spec::Str),
    ("metadata", Spec::Meta),
];
const CREATE_ONLY: &[(&str, Spec)] = &[("api_version", Spec::Str), ("connect", Spec::Bool)];
const UPDATE_ONLY: &[(&str, Spec)] = &[("disabled", Spec::Bool)];

fn check_events(events: &[String]) -> ApiResult<()> {
    for (i, e) in events.iter().enumerate() {
        if e != "*" && !e.contains('.') {
            return Err(ApiError::invalid(
                format!("Invalid enabled_events[{i}]: must be '*' or an event type such as 'customer.created'"),
                Some(&format!("enabled_events[{i}]")),
            ));
        }
    }
    Ok(())
}

fn check_url(url: &str) -> ApiResult<()> {
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ApiError::invalid(
            "Invalid URL: URL must be publicly accessible (http or https).",
            Some("url"),
        ));
    }
    Ok(())
}

/// `POST /v1/webhook_endpoints`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[COMMON, CREATE_ONLY])?;
    let p = Params::root(params);
    let url = p.req("url")?;
    check_url(url)?;
    if !p.has("enabled_events") {
        return Err(ApiError::missing_param("enabled_events"));
    }
    let events = p.strings("enabled_events");
    check_events(&events)?;
    let id = new_id("we_");
    let secret = format!(
        "whsec_{}",
        std::iter::repeat_with(fastrand::alphanumeric)
            .take(32)
            .collect::<String>()
    );
    let mut v = json!({
        "id": id,
        "object": "webhook_endpoint",
        "api_version": p.nonempty("api_version").unwrap_or(API_VERSION),
        "application": null,
        "created": state.global_now(),
        "description": p.nonempty("description"),
        "enabled_events": events,
        "livemode": false,
        "metadata": {},
        "status": "enabled",
        "url": url,
    });
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut v);
    }
    state
        .store
        .insert_with(v.clone(), json!({ "secret": secret }));
    state.dirty = true;
    let mut out = respond(state, &v, params)?;
    out["secret"] = json!(secret);
    Ok(out)
}

/// `GET /v1/webhook_endpoints/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, "webhook_endpoint", id, "id")?, params)
}

/// `POST /v1/webhook_endpoints/{id}`.
pub fn update(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[COMMON, UPDATE_ONLY])?;
    let p = Params::root(params);
    let mut v = fetch(state, "webhook_endpoint", id, "id")?.clone();
    if let Some(url) = p.nonempty("url") {
        check_url(url)?;
        v["url"] = json!(url);
    }
    if p.has("enabled_events") {
        let events = p.strings("enabled_events");
        check_events(&events)?;
        v["enabled_events"] = json!(events);
    }
    if let Some(d) = p.str("description") {
        v["description"] = if d.is_empty() { Value::Null } else { json!(d) };
    }
    if let Some(d) = p.bool("disabled") {
        v["status"] = json!(if d { "disabled" } else { "enabled" });
    }
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut v);
    }
    *state.store.get_mut(id).expect("fetched") = v.clone();
    state.dirty = true;
    respond(state, &v, params)
}

/// `DELETE /v1/webhook_endpoints/{id}`.
pub fn delete(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    fetch(state, "webhook_endpoint", id, "id")?;
    state.store.remove(id);
    state.dirty = true;
    Ok(json!({ "id": id, "object": "webhook_endpoint", "deleted": true }))
}

/// `GET /v1/webhook_endpoints`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    list(
        state,
        "webhook_endpoint",
        params,
        &[],
        "/v1/webhook_endpoints",
        |_| true,
    )
}
