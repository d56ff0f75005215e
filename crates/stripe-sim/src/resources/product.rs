//! Products: create (optionally with a chosen id), retrieve, update, list, delete.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::{fetch, list, price, respond};
use crate::state::{previous_attributes, State};
use crate::store::new_id;

const COMMON: &[(&str, Spec)] = &[
    ("name", Spec::Str),
    ("active", Spec::Bool),
    ("description", Spec::Str),
    ("metadata", Spec::Meta),
    ("images", Spec::Arr(&Spec::Str)),
    ("marketing_features", Spec::Any),
    ("package_dimensions", Spec::Any),
    ("shippable", Spec::Bool),
    ("statement_descriptor", Spec::Str),
    ("tax_code", Spec::Str),
    ("unit_label", Spec::Str),
    ("url", Spec::Str),
];
const CREATE_ONLY: &[(&str, Spec)] = &[
    ("id", Spec::Str),
    ("default_price_data", Spec::Any),
    ("type", Spec::Str),
];
const UPDATE_ONLY: &[(&str, Spec)] = &[("default_price", Spec::Str)];

fn opt(p: &Params, key: &str) -> Value {
    p.nonempty(key).map_or(Value::Null, |s| json!(s))
}

/// Creates a product object (also used by `product_data` on prices); returns its id.
pub fn insert(state: &mut State, p: &Params, id: Option<&str>, now: i64) -> ApiResult<String> {
    let name = p.req("name")?;
    let id = match id {
        Some(id) if state.store.get(id).is_some() => {
            return Err(ApiError::invalid_code(
                "resource_already_exists",
                "Product already exists.",
                Some("id"),
            ))
        }
        Some(id) => id.to_owned(),
        None => new_id("prod_"),
    };
    let mut v = json!({
        "id": id,
        "object": "product",
        "active": p.bool("active").unwrap_or(true),
        "created": now,
        "default_price": null,
        "description": opt(p, "description"),
        "images": p.strings("images"),
        "livemode": false,
        "marketing_features": [],
        "metadata": {},
        "name": name,
        "package_dimensions": null,
        "shippable": p.bool("shippable"),
        "statement_descriptor": opt(p, "statement_descriptor"),
        "tax_code": opt(p, "tax_code"),
        "tax_details": null,
        "type": "service",
        "unit_label": opt(p, "unit_label"),
        "updated": now,
        "url": opt(p, "url"),
    });
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut v);
    }
    state.store.insert(v.clone());
    state.emit("product.created", v, None, now);
    Ok(id)
}

/// `POST /v1/products`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[COMMON, CREATE_ONLY])?;
    let p = Params::root(params);
    let now = state.global_now();
    let id = insert(state, &p, p.nonempty("id"), now)?;
    if let Some(dp) = params.get("default_price_data") {
        let price = price::insert_inline(state, dp, &id, "default_price_data", now)?;
        let prod = state.store.get_mut(&id).expect("just inserted");
        prod["default_price"] = json!(price);
    }
    respond(state, state.store.get(&id).expect("just inserted"), params)
}

/// `GET /v1/products/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, "product", id, "id")?, params)
}

/// `POST /v1/products/{id}`.
pub fn update(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[COMMON, UPDATE_ONLY])?;
    let p = Params::root(params);
    let old = fetch(state, "product", id, "id")?.clone();
    let mut new = old.clone();
    if let Some(n) = p.str("name") {
        if n.is_empty() {
            return Err(ApiError::empty_param("name"));
        }
        new["name"] = json!(n);
    }
    for key in [
        "description",
        "statement_descriptor",
        "tax_code",
        "unit_label",
        "url",
        "default_price",
    ] {
        if let Some(v) = p.str(key) {
            new[key] = if v.is_empty() { Value::Null } else { json!(v) };
        }
    }
    if let Some(a) = p.bool("active") {
        new["active"] = json!(a);
    }
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut new);
    }
    if let Some(prev) = previous_attributes(&old, &new) {
        let now = state.global_now();
        new["updated"] = json!(now);
        *state.store.get_mut(id).expect("fetched") = new.clone();
        state.emit("product.updated", new.clone(), Some(prev), now);
    }
    respond(state, &new, params)
}

/// `DELETE /v1/products/{id}`: refused while prices use the product, as Stripe refuses it.
pub fn delete(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    let v = fetch(state, "product", id, "id")?.clone();
    if state.store.values("price").any(|p| p["product"] == id) {
        return Err(ApiError::invalid(
            "This product cannot be deleted because it has one or more user-created prices.",
            None,
        ));
    }
    state.store.remove(id);
    let now = state.global_now();
    state.emit("product.deleted", v, None, now);
    Ok(json!({ "id": id, "object": "product", "deleted": true }))
}

/// `GET /v1/products`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let p = Params::root(params);
    let active = p.bool("active");
    let ids = p.strings("ids");
    list(
        state,
        "product",
        params,
        &[&[
            ("active", Spec::Bool),
            ("ids", Spec::Arr(&Spec::Str)),
            ("shippable", Spec::Bool),
            ("url", Spec::Str),
        ]],
        "/v1/products",
        |v| {
            active.is_none_or(|a| v["active"] == a)
                && (ids.is_empty() || ids.iter().any(|i| v["id"] == i.as_str()))
        },
    )
}
