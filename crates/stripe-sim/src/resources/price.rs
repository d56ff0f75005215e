//! Prices: one-time and recurring, `lookup_key` unique per account with `transfer_lookup_key`, list by `lookup_keys[]`.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{node_int, node_str, validate, Params, Spec};
use crate::resources::search::search as run_search;
use crate::resources::{fetch, list, product, respond};
use crate::state::{previous_attributes, State};
use crate::store::new_id;

/// Shape of `recurring`.
pub const RECURRING: Spec = Spec::Obj(&[
    ("interval", Spec::Str),
    ("interval_count", Spec::Int),
    ("usage_type", Spec::Str),
    ("meter", Spec::Str),
    ("trial_period_days", Spec::Int),
]);

const PRODUCT_DATA: Spec = Spec::Obj(&[
    ("name", Spec::Str),
    ("active", Spec::Bool),
    ("id", Spec::Str),
    ("metadata", Spec::Meta),
    ("statement_descriptor", Spec::Str),
    ("tax_code", Spec::Str),
    ("unit_label", Spec::Str),
]);

const CREATE: &[(&str, Spec)] = &[
    ("currency", Spec::Str),
    ("product", Spec::Str),
    ("product_data", PRODUCT_DATA),
    ("unit_amount", Spec::Int),
    ("unit_amount_decimal", Spec::Str),
    ("recurring", RECURRING),
    ("lookup_key", Spec::Str),
    ("transfer_lookup_key", Spec::Bool),
    ("active", Spec::Bool),
    ("nickname", Spec::Str),
    ("metadata", Spec::Meta),
    ("tax_behavior", Spec::Str),
    ("billing_scheme", Spec::Str),
    ("custom_unit_amount", Spec::Any),
    ("tiers", Spec::Any),
    ("tiers_mode", Spec::Str),
    ("transform_quantity", Spec::Any),
    ("currency_options", Spec::Any),
];

const UPDATE: &[(&str, Spec)] = &[
    ("active", Spec::Bool),
    ("lookup_key", Spec::Str),
    ("transfer_lookup_key", Spec::Bool),
    ("metadata", Spec::Meta),
    ("nickname", Spec::Str),
    ("tax_behavior", Spec::Str),
    ("currency_options", Spec::Any),
];

const INTERVALS: &[&str] = &["day", "week", "month", "year"];

/// Releases a lookup key held by another price (`transfer_lookup_key=true`), or refuses as Stripe does.
fn claim_lookup_key(
    state: &mut State,
    key: &str,
    transfer: bool,
    except: Option<&str>,
    now: i64,
) -> ApiResult<()> {
    let holder = state
        .store
        .values("price")
        .find(|p| p["lookup_key"] == key && except.is_none_or(|e| p["id"] != e))
        .and_then(|p| p["id"].as_str())
        .map(str::to_owned);
    let Some(holder) = holder else { return Ok(()) };
    if !transfer {
        return Err(ApiError::invalid(
            format!("A price (`{holder}`) already uses that lookup key."),
            Some("lookup_key"),
        ));
    }
    let p = state.store.get_mut(&holder).expect("found above");
    let before = p.clone();
    p["lookup_key"] = Value::Null;
    let after = p.clone();
    state.emit(
        "price.updated",
        after.clone(),
        previous_attributes(&before, &after),
        now,
    );
    Ok(())
}

/// Builds and stores a price; `prefix` names the parameter hash for errors ("" at the root).
fn build(
    state: &mut State,
    node: &Node,
    prefix: &str,
    product_id: String,
    now: i64,
) -> ApiResult<String> {
    let name = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}[{k}]")
        }
    };
    let currency = node_str(node, "currency")
        .ok_or_else(|| ApiError::missing_param(&name("currency")))?
        .to_lowercase();
    if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_alphabetic()) {
        return Err(ApiError::invalid(
            format!("Invalid currency: {currency}."),
            Some(&name("currency")),
        ));
    }
    let unit_amount = match (
        node_int(node, "unit_amount"),
        node_str(node, "unit_amount_decimal"),
    ) {
        (Some(a), _) => Some(a),
        (None, Some(d)) => Some(
            d.parse::<f64>()
                .map_err(|_| {
                    ApiError::invalid(
                        format!("Invalid decimal: {d}"),
                        Some(&name("unit_amount_decimal")),
                    )
                })?
                .round() as i64,
        ),
        (None, None) if node.get("custom_unit_amount").is_some() || node.get("tiers").is_some() => {
            None
        }
        (None, None) => return Err(ApiError::missing_param(&name("unit_amount"))),
    };
    if unit_amount.is_some_and(|a| a < 0) {
        return Err(ApiError::invalid(
            "This value must be greater than or equal to 0.",
            Some(&name("unit_amount")),
        ));
    }
    let recurring = match node.get("recurring") {
        Some(r) if r.as_str() != Some("") => {
            let interval = node_str(r, "interval").ok_or_else(|| {
                ApiError::missing_param(&format!("{}[interval]", name("recurring")))
            })?;
            if !INTERVALS.contains(&interval) {
                return Err(ApiError::invalid_enum(
                    &format!("{}[interval]", name("recurring")),
                    INTERVALS,
                ));
            }
            let count = node_int(r, "interval_count").unwrap_or(1);
            if count < 1 {
                return Err(ApiError::invalid(
                    "This value must be greater than or equal to 1.",
                    Some(&format!("{}[interval_count]", name("recurring"))),
                ));
            }
            json!({
                "interval": interval,
                "interval_count": count,
                "meter": node_str(r, "meter"),
                "trial_period_days": node_int(r, "trial_period_days"),
                "usage_type": node_str(r, "usage_type").unwrap_or("licensed"),
            })
        }
        _ => Value::Null,
    };
    let lookup_key = node_str(node, "lookup_key").map(str::to_owned);
    if let Some(k) = &lookup_key {
        if k.chars().count() > 200 {
            return Err(ApiError::invalid(
                "Lookup keys can have up to 200 characters.",
                Some(&name("lookup_key")),
            ));
        }
        let transfer = node_str(node, "transfer_lookup_key") == Some("true");
        claim_lookup_key(state, k, transfer, None, now)?;
    }
    let id = new_id("price_");
    let mut v = json!({
        "id": id,
        "object": "price",
        "active": node_str(node, "active") != Some("false"),
        "billing_scheme": node_str(node, "billing_scheme").unwrap_or("per_unit"),
        "created": now,
        "currency": currency,
        "custom_unit_amount": null,
        "livemode": false,
        "lookup_key": lookup_key,
        "metadata": {},
        "nickname": node_str(node, "nickname"),
        "product": product_id,
        "recurring": recurring,
        "tax_behavior": node_str(node, "tax_behavior").unwrap_or("unspecified"),
        "tiers_mode": null,
        "transform_quantity": null,
        "type": if recurring.is_null() { "one_time" } else { "recurring" },
        "unit_amount": unit_amount,
        "unit_amount_decimal": unit_amount.map(|a| a.to_string()),
    });
    if let Some(m) = (Params { node, prefix }).metadata("metadata") {
        m.apply(&mut v);
    }
    state.store.insert(v.clone());
    state.emit("price.created", v, None, now);
    Ok(id)
}

/// Creates a price from an inline hash (`default_price_data`, `price_data`) for a known product.
pub fn insert_inline(
    state: &mut State,
    node: &Node,
    product_id: &str,
    prefix: &str,
    now: i64,
) -> ApiResult<String> {
    build(state, node, prefix, product_id.to_owned(), now)
}

/// `POST /v1/prices`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[CREATE])?;
    let p = Params::root(params);
    let now = state.global_now();
    p.req("currency")?;
    let product_id = match (p.nonempty("product"), params.get("product_data")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid_code(
                "parameters_exclusive",
                "You may only specify one of these parameters: product, product_data.",
                Some("product"),
            ))
        }
        (Some(prod), None) => {
            fetch(state, "product", prod, "product")?;
            prod.to_owned()
        }
        (None, Some(pd)) => {
            let pp = Params {
                node: pd,
                prefix: "product_data",
            };
            if pp.str("name").is_none() {
                return Err(ApiError::missing_param("product_data[name]"));
            }
            product::insert(state, &pp, pp.nonempty("id"), now)?
        }
        (None, None) => return Err(ApiError::missing_param("product")),
    };
    let id = build(state, params, "", product_id, now)?;
    respond(state, state.store.get(&id).expect("just inserted"), params)
}

/// `GET /v1/prices/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, "price", id, "id")?, params)
}

/// `POST /v1/prices/{id}`.
pub fn update(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[UPDATE])?;
    let p = Params::root(params);
    let old = fetch(state, "price", id, "id")?.clone();
    let now = state.global_now();
    let mut new = old.clone();
    if let Some(a) = p.bool("active") {
        new["active"] = json!(a);
    }
    if let Some(n) = p.str("nickname") {
        new["nickname"] = if n.is_empty() { Value::Null } else { json!(n) };
    }
    if let Some(t) = p.nonempty("tax_behavior") {
        new["tax_behavior"] = json!(t);
    }
    if let Some(k) = p.str("lookup_key") {
        if k.is_empty() {
            new["lookup_key"] = Value::Null;
        } else {
            claim_lookup_key(
                state,
                k,
                p.bool("transfer_lookup_key") == Some(true),
                Some(id),
                now,
            )?;
            new["lookup_key"] = json!(k);
        }
    }
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut new);
    }
    if let Some(prev) = previous_attributes(&old, &new) {
        *state.store.get_mut(id).expect("fetched") = new.clone();
        state.emit("price.updated", new.clone(), Some(prev), now);
    }
    respond(state, &new, params)
}

/// `GET /v1/prices`, filterable by `lookup_keys[]`, `product`, `active`, `type`, `currency`, `recurring[interval]`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let p = Params::root(params);
    let keys = p.strings("lookup_keys");
    let product = p.nonempty("product").map(str::to_owned);
    let active = p.bool("active");
    let kind = p.nonempty("type").map(str::to_owned);
    let currency = p.nonempty("currency").map(str::to_owned);
    let interval = p.path_str(&["recurring", "interval"]).map(str::to_owned);
    let extra: &[(&str, Spec)] = &[
        ("lookup_keys", Spec::Arr(&Spec::Str)),
        ("product", Spec::Str),
        ("active", Spec::Bool),
        ("type", Spec::Str),
        ("currency", Spec::Str),
        (
            "recurring",
            Spec::Obj(&[
                ("interval", Spec::Str),
                ("usage_type", Spec::Str),
                ("meter", Spec::Str),
            ]),
        ),
    ];
    list(state, "price", params, &[extra], "/v1/prices", |v| {
        (keys.is_empty() || keys.iter().any(|k| v["lookup_key"] == k.as_str()))
            && product.as_deref().is_none_or(|x| v["product"] == x)
            && active.is_none_or(|a| v["active"] == a)
            && kind.as_deref().is_none_or(|x| v["type"] == x)
            && currency.as_deref().is_none_or(|x| v["currency"] == x)
            && interval
                .as_deref()
                .is_none_or(|x| v["recurring"]["interval"] == x)
    })
}

/// `GET /v1/prices/search`.
pub fn search(state: &mut State, params: &Node) -> ApiResult<Value> {
    run_search(
        state,
        "price",
        params,
        "/v1/prices/search",
        &[
            "active",
            "currency",
            "lookup_key",
            "product",
            "type",
            "created",
        ],
        |_| true,
    )
}
