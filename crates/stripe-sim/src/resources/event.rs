//! Events: retrieve and list, filtered by `type` (with `*` wildcards), `types[]` and `created`.

use serde_json::Value;

use crate::error::ApiResult;
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::{fetch, list, respond};
use crate::state::State;

/// `GET /v1/events/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    fetch(state, "event", id, "id")?;
    let whole = state.store.full(id).unwrap_or_default();
    respond(state, &whole, params)
}

fn type_matches(pattern: &str, kind: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => kind.starts_with(prefix),
        None => pattern == kind,
    }
}

/// `GET /v1/events`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let p = Params::root(params);
    let kind = p.nonempty("type").map(str::to_owned);
    let kinds = p.strings("types");
    let extra: &[(&str, Spec)] = &[
        ("type", Spec::Str),
        ("types", Spec::Arr(&Spec::Str)),
        ("delivery_success", Spec::Bool),
    ];
    list(state, "event", params, &[extra], "/v1/events", |v| {
        let t = v["type"].as_str().unwrap_or_default();
        kind.as_deref().is_none_or(|k| type_matches(k, t))
            && (kinds.is_empty() || kinds.iter().any(|k| type_matches(k, t)))
    })
}
