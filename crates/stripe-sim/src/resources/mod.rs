//! Stripe resources, one module each, plus what they share: retrieval with Stripe's 404s, list pagination, and `expand[]`.

pub mod billing;
pub mod billing_portal;
pub mod checkout;
pub mod customer;
pub mod event;
pub mod invoice;
pub mod lifecycle;
pub mod payment_intent;
pub mod payment_method;
pub mod price;
pub mod product;
pub mod search;
pub mod subscription;
pub mod test_clock;
pub mod webhook_endpoint;

use std::ops::Bound::{Excluded, Unbounded};

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec, LIST};
use crate::state::State;
use crate::store::OrderKey;

/// A route's work: runs under the state lock with the decoded parameters.
pub type Handler = Box<dyn FnOnce(&mut State, &Node) -> ApiResult<Value> + Send>;

/// Wraps a handler function that takes an id from the path.
pub fn with_id(f: fn(&mut State, &Node, &str) -> ApiResult<Value>, id: &str) -> Handler {
    let id = id.to_owned();
    Box::new(move |s, p| f(s, p, &id))
}

/// Wraps a handler function without path parameters.
pub fn plain(f: fn(&mut State, &Node) -> ApiResult<Value>) -> Handler {
    Box::new(f)
}

/// An object of the given type, or Stripe's 404 (`param` names where the id came from).
pub fn fetch<'a>(state: &'a State, kind: &str, id: &str, param: &str) -> ApiResult<&'a Value> {
    state
        .store
        .get_typed(kind, id)
        .ok_or_else(|| ApiError::no_such(noun(kind), id, param))
}

/// The noun Stripe uses in "No such …" messages.
fn noun(kind: &str) -> &str {
    match kind {
        "checkout.session" => "checkout.session",
        "test_helpers.test_clock" => "test_clock",
        "billing_portal.configuration" => "configuration",
        other => other,
    }
}

/// How an object looks when rendered: a deleted customer is only a stub.
pub fn rendered(v: &Value) -> Value {
    if v["deleted"] == true {
        json!({ "id": v["id"], "object": v["object"], "deleted": true })
    } else {
        v.clone()
    }
}

/// Renders one object with the request's `expand[]`.
pub fn respond(state: &State, v: &Value, params: &Node) -> ApiResult<Value> {
    let mut out = rendered(v);
    expand_all(state, &mut out, params)?;
    Ok(out)
}

/// Applies every `expand[]` path of the request to a response.
pub fn expand_all(state: &State, v: &mut Value, params: &Node) -> ApiResult<()> {
    for path in Params::root(params).strings("expand") {
        let parts: Vec<&str> = path.split('.').collect();
        let levels = parts.iter().filter(|p| **p != "data").count();
        if levels > 4 {
            return Err(ApiError::invalid(
                "You cannot expand more than 4 levels of a property.",
                Some("expand"),
            ));
        }
        expand_path(state, v, &parts, &path)?;
    }
    Ok(())
}

fn cannot_expand(full: &str, key: &str) -> ApiError {
    ApiError::invalid(
        format!("This property cannot be expanded ({key})."),
        Some(full),
    )
    .with("param", json!("expand"))
}

/// Fields Stripe includes only when expanded, built from simulator-only data.
fn includable(state: &State, v: &Value, key: &str) -> Option<Value> {
    let id = v["id"].as_str()?;
    let entry = state.store.entry(id)?;
    match (v["object"].as_str()?, key) {
        ("invoice", "payments") => {
            let data = entry.internal["payments"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            Some(json!({
                "object": "list",
                "data": data,
                "has_more": false,
                "url": format!("/v1/invoice_payments?invoice={id}"),
            }))
        }
        ("invoice", "confirmation_secret") => Some(entry.internal["confirmation_secret"].clone()),
        _ => None,
    }
}

fn expand_path(state: &State, v: &mut Value, parts: &[&str], full: &str) -> ApiResult<()> {
    let Some((key, rest)) = parts.split_first() else {
        return Ok(());
    };
    if matches!(v["object"].as_str(), Some("list" | "search_result")) {
        if *key != "data" {
            return Err(cannot_expand(full, key));
        }
        if let Some(items) = v["data"].as_array_mut() {
            for item in items {
                expand_path(state, item, rest, full)?;
            }
        }
        return Ok(());
    }
    if !v.is_object() {
        return Ok(());
    }
    if v.get(*key).is_none() {
        match includable(state, v, key) {
            Some(x) => v[*key] = x,
            None => return Err(cannot_expand(full, key)),
        }
    }
    let field = &mut v[*key];
    match field {
        Value::String(id) => {
            let target = state
                .store
                .get(id)
                .ok_or_else(|| cannot_expand(full, key))?;
            *field = rendered(target);
        }
        Value::Null => return Ok(()),
        Value::Array(items) => {
            for item in items.iter_mut() {
                if let Value::String(id) = item {
                    if let Some(t) = state.store.get(id) {
                        *item = rendered(t);
                    }
                }
                expand_path(state, item, rest, full)?;
            }
            return Ok(());
        }
        Value::Object(_) => {}
        _ => return Err(cannot_expand(full, key)),
    }
    expand_path(state, field, rest, full)
}

/// Checks a `created`-style range filter against a timestamp.
pub fn in_range(filter: Option<&Node>, t: i64) -> bool {
    let Some(f) = filter else { return true };
    if let Some(s) = f.as_str() {
        return s.parse::<i64>().map_or(true, |x| x == t);
    }
    let get = |k: &str| {
        f.get(k)
            .and_then(Node::as_str)
            .and_then(|s| s.parse::<i64>().ok())
    };
    get("gt").is_none_or(|x| t > x)
        && get("gte").is_none_or(|x| t >= x)
        && get("lt").is_none_or(|x| t < x)
        && get("lte").is_none_or(|x| t <= x)
}

/// The page size of a list or search request (1–100, default 10).
pub fn limit(p: &Params) -> ApiResult<usize> {
    match p.int("limit") {
        None => Ok(10),
        Some(n) if n < 1 => Err(ApiError::invalid(
            "This value must be greater than or equal to 1.",
            Some("limit"),
        )),
        Some(n) if n > 100 => Err(ApiError::invalid(
            "This value must be less than or equal to 100.",
            Some("limit"),
        )),
        Some(n) => Ok(n as usize),
    }
}

/// A Stripe list object over one object type, newest first, with cursor pagination and a filter.
pub fn list(
    state: &State,
    kind: &str,
    params: &Node,
    extra: &[&[(&'static str, Spec)]],
    url: &str,
    filter: impl Fn(&Value) -> bool,
) -> ApiResult<Value> {
    let mut specs: Vec<&[(&'static str, Spec)]> = vec![LIST];
    specs.extend_from_slice(extra);
    validate(params, &specs)?;
    let p = Params::root(params);
    let limit = limit(&p)?;
    let created = params.get("created");
    let after = p.nonempty("starting_after");
    let before = p.nonempty("ending_before");
    if after.is_some() && before.is_some() {
        return Err(ApiError::invalid_code(
            "parameters_exclusive",
            "You may only specify one of these parameters: ending_before, starting_after.",
            Some("ending_before"),
        ));
    }
    let empty = std::collections::BTreeMap::new();
    let index = state.store.by_created(kind).unwrap_or(&empty);
    let keep = |id: &String| {
        state
            .store
            .get(id)
            .filter(|v| {
                v["deleted"] != true
                    && in_range(created, v["created"].as_i64().unwrap_or(0))
                    && filter(v)
            })
            .and_then(|_| state.store.full(id))
    };
    let cursor = |id: &str, param: &str| {
        state
            .store
            .get_typed(kind, id)
            .and_then(|_| state.store.order_of(id))
            .ok_or_else(|| ApiError::no_such(noun(kind), id, param))
    };
    // Newest first by `created`, ties newest inserted first; cursors are positions in that order.
    // ending_before walks towards newer objects, then shows them in the same newest-first order.
    let ordered: Box<dyn Iterator<Item = (&OrderKey, &String)>> = match (before, after) {
        (Some(b), _) => Box::new(index.range((Excluded(cursor(b, "ending_before")?), Unbounded))),
        (None, Some(a)) => Box::new(index.range(..cursor(a, "starting_after")?).rev()),
        (None, None) => Box::new(index.iter().rev()),
    };
    let mut data: Vec<Value> = ordered
        .filter_map(|(_, id)| keep(id))
        .take(limit + 1)
        .collect();
    let has_more = data.len() > limit;
    data.truncate(limit);
    if before.is_some() {
        data.reverse();
    }
    let mut out = json!({ "object": "list", "data": data, "has_more": has_more, "url": url });
    expand_all(state, &mut out, params)?;
    Ok(out)
}
