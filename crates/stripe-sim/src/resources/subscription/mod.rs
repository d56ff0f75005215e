//! Subscriptions: retrieve, update, cancel, resume, list (canceled hidden by default) and search; creation lives in [`create`].

mod create;

pub use create::create;

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{node_int, node_str, validate, Params, Spec};
use crate::resources::billing::{self, update_sub};
use crate::resources::lifecycle;
use crate::resources::search::search as run_search;
use crate::resources::{fetch, list, payment_method, respond};
use crate::state::State;
use crate::store::new_id;

const PRICE_DATA: Spec = Spec::Obj(&[
    ("currency", Spec::Str),
    ("product", Spec::Str),
    (
        "recurring",
        Spec::Obj(&[("interval", Spec::Str), ("interval_count", Spec::Int)]),
    ),
    ("unit_amount", Spec::Int),
    ("unit_amount_decimal", Spec::Str),
    ("tax_behavior", Spec::Str),
]);

const ITEM: Spec = Spec::Obj(&[
    ("id", Spec::Str),
    ("price", Spec::Str),
    ("price_data", PRICE_DATA),
    ("quantity", Spec::Int),
    ("metadata", Spec::Meta),
    ("tax_rates", Spec::Any),
    ("discounts", Spec::Any),
    ("billing_thresholds", Spec::Any),
    ("deleted", Spec::Bool),
    ("clear_usage", Spec::Bool),
]);

const PAYMENT_SETTINGS: Spec = Spec::Obj(&[
    ("save_default_payment_method", Spec::Str),
    ("payment_method_types", Spec::Any),
    ("payment_method_options", Spec::Any),
]);

const TRIAL_SETTINGS: Spec = Spec::Obj(&[(
    "end_behavior",
    Spec::Obj(&[("missing_payment_method", Spec::Str)]),
)]);

const COMMON: &[(&str, Spec)] = &[
    ("items", Spec::Arr(&ITEM)),
    ("metadata", Spec::Meta),
    ("payment_behavior", Spec::Str),
    ("default_payment_method", Spec::Str),
    ("default_source", Spec::Str),
    ("payment_settings", PAYMENT_SETTINGS),
    ("trial_end", Spec::Str),
    ("trial_settings", TRIAL_SETTINGS),
    ("description", Spec::Str),
    ("cancel_at_period_end", Spec::Bool),
    ("cancel_at", Spec::Str),
    ("collection_method", Spec::Str),
    ("off_session", Spec::Bool),
    ("proration_behavior", Spec::Str),
    ("automatic_tax", Spec::Any),
    ("default_tax_rates", Spec::Any),
    ("discounts", Spec::Any),
    ("add_invoice_items", Spec::Any),
    ("trial_from_plan", Spec::Bool),
];

const CREATE_ONLY: &[(&str, Spec)] = &[
    ("customer", Spec::Str),
    ("trial_period_days", Spec::Int),
    ("currency", Spec::Str),
    ("billing_mode", Spec::Any),
];

const UPDATE_ONLY: &[(&str, Spec)] = &[
    (
        "cancellation_details",
        Spec::Obj(&[("comment", Spec::Str), ("feedback", Spec::Str)]),
    ),
    ("pause_collection", Spec::Any),
    ("proration_date", Spec::Int),
];

const BEHAVIORS: &[&str] = &[
    "allow_incomplete",
    "error_if_incomplete",
    "pending_if_incomplete",
    "default_incomplete",
];
const MISSING_PM: &[&str] = &["cancel", "create_invoice", "pause"];
const SAVE_PM: &[&str] = &["off", "on_subscription"];

fn check_price(state: &State, id: &str, param: &str) -> ApiResult<Value> {
    let price = fetch(state, "price", id, param)?.clone();
    if price["type"] != "recurring" {
        return Err(ApiError::invalid(
            "The price specified is set to `type=one_time` but this field only accepts prices with `type=recurring`.",
            Some(param),
        ));
    }
    if price["active"] != true {
        return Err(ApiError::invalid(
            "The price specified is inactive. This field only accepts active prices.",
            Some(param),
        ));
    }
    Ok(price)
}

/// The legacy Plan view of a recurring price, which subscription items still carry at endive.
pub fn plan_of(price: &Value) -> Value {
    let r = &price["recurring"];
    json!({
        "id": price["id"],
        "object": "plan",
        "active": price["active"],
        "amount": price["unit_amount"],
        "amount_decimal": price["unit_amount_decimal"],
        "billing_scheme": price["billing_scheme"],
        "created": price["created"],
        "currency": price["currency"],
        "interval": r["interval"],
        "interval_count": r["interval_count"],
        "livemode": false,
        "metadata": price["metadata"],
        "meter": r["meter"],
        "nickname": price["nickname"],
        "product": price["product"],
        "tiers_mode": price["tiers_mode"],
        "transform_usage": null,
        "trial_period_days": r["trial_period_days"],
        "usage_type": r["usage_type"],
    })
}

fn item_json(
    sub_id: &str,
    price: Value,
    qty: i64,
    node: &Node,
    now: i64,
    period: (i64, i64),
) -> Value {
    let mut item = json!({
        "id": new_id("si_"),
        "object": "subscription_item",
        "billing_thresholds": null,
        "created": now,
        "current_period_end": period.1,
        "current_period_start": period.0,
        "current_trial": null,
        "discounts": [],
        "metadata": {},
        "plan": plan_of(&price),
        "price": price,
        "quantity": qty,
        "subscription": sub_id,
        "tax_rates": [],
    });
    if let Some(m) = (Params { node, prefix: "" }).metadata("metadata") {
        m.apply(&mut item);
    }
    item
}

fn parse_trial_end(p: &Params, now: i64) -> ApiResult<Option<i64>> {
    match p.nonempty("trial_end") {
        None => Ok(None),
        Some("now") => Ok(None),
        Some(s) => {
            let t: i64 = s
                .parse()
                .map_err(|_| ApiError::invalid_integer("trial_end", s))?;
            if t <= now {
                return Err(ApiError::invalid(
                    "Invalid timestamp: must be an integer Unix timestamp in the future.",
                    Some("trial_end"),
                ));
            }
            Ok(Some(t))
        }
    }
}

/// `GET /v1/subscriptions/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, "subscription", id, "id")?, params)
}

const INCOMPLETE_UPDATABLE: &[&str] = &[
    "metadata",
    "default_source",
    "default_payment_method",
    "description",
    "expand",
];

/// `POST /v1/subscriptions/{id}`.
pub fn update(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[COMMON, UPDATE_ONLY])?;
    let p = Params::root(params);
    let old = fetch(state, "subscription", id, "id")?.clone();
    if billing::is_terminal(&old) {
        return Err(ApiError::invalid(
            "You cannot update a subscription that is `canceled` or `incomplete_expired`.",
            None,
        ));
    }
    if old["status"] == "incomplete" {
        if let Node::Map(m) = params {
            if let Some(k) = m
                .keys()
                .find(|k| !INCOMPLETE_UPDATABLE.contains(&k.as_str()))
            {
                return Err(ApiError::invalid(
                    "A subscription with status `incomplete` can only have its `metadata` and `default_source` (or `default_payment_method`) updated until its first invoice is paid.",
                    Some(k),
                ));
            }
        }
    }
    p.one_of("payment_behavior", BEHAVIORS)?;
    let customer = old["customer"].as_str().unwrap_or_default().to_owned();
    let now = state.now_for_customer(&customer);
    let mut new = old.clone();
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut new);
    }
    if let Some(d) = p.str("description") {
        new["description"] = if d.is_empty() { Value::Null } else { json!(d) };
    }
    if let Some(r) = p.str("default_payment_method") {
        new["default_payment_method"] = if r.is_empty() {
            Value::Null
        } else {
            json!(payment_method::for_customer(
                state,
                r,
                &customer,
                "default_payment_method",
                now
            )?)
        };
    }
    if let Some(c) = p.bool("cancel_at_period_end") {
        new["cancel_at_period_end"] = json!(c);
        if c {
            new["cancel_at"] = Value::Null;
        }
    }
    if let Some(c) = p.str("cancel_at") {
        new["cancel_at"] = match c {
            "" => Value::Null,
            s => json!(s
                .parse::<i64>()
                .map_err(|_| ApiError::invalid_integer("cancel_at", s))?),
        };
    }
    if let Some(save) = p.path_str(&["payment_settings", "save_default_payment_method"]) {
        if !SAVE_PM.contains(&save) {
            return Err(ApiError::invalid_enum(
                "payment_settings[save_default_payment_method]",
                SAVE_PM,
            ));
        }
        new["payment_settings"]["save_default_payment_method"] = json!(save);
    }
    if let Some(m) = p.path_str(&["trial_settings", "end_behavior", "missing_payment_method"]) {
        if !MISSING_PM.contains(&m) {
            return Err(ApiError::invalid_enum(
                "trial_settings[end_behavior][missing_payment_method]",
                MISSING_PM,
            ));
        }
        new["trial_settings"]["end_behavior"]["missing_payment_method"] = json!(m);
    }
    for key in ["comment", "feedback"] {
        if let Some(v) = p.path_str(&["cancellation_details", key]) {
            new["cancellation_details"][key] = if v.is_empty() { Value::Null } else { json!(v) };
        }
    }
    update_items(state, &p, &mut new, now)?;
    let end_trial_now = p.str("trial_end") == Some("now") && old["status"] == "trialing";
    if let Some(t) = parse_trial_end(&p, now)? {
        if old["status"] == "trialing" {
            new["trial_end"] = json!(t);
            new["billing_cycle_anchor"] = json!(t);
            if let Some(items) = new["items"]["data"].as_array_mut() {
                for i in items {
                    i["current_period_end"] = json!(t);
                }
            }
        }
    }
    update_sub(state, id, now, "customer.subscription.updated", |s| {
        *s = new
    });
    lifecycle::warn_trial_end_if_near(state, id, now);
    if end_trial_now {
        update_sub(state, id, now, "customer.subscription.updated", |s| {
            s["trial_end"] = json!(now)
        });
        lifecycle::warn_trial_end_if_near(state, id, now);
        let clock = state.customer_clock(&customer);
        lifecycle::run_due(state, clock.as_deref(), now);
    }
    respond(state, state.store.get(id).expect("fetched"), params)
}

/// Applies `items[i][...]` changes: price or quantity swaps by item id, additions, `deleted`. No prorations are billed.
fn update_items(state: &mut State, p: &Params, sub: &mut Value, now: i64) -> ApiResult<()> {
    let changes = p.array("items");
    if changes.is_empty() {
        return Ok(());
    }
    let sub_id = sub["id"].as_str().unwrap_or_default().to_owned();
    let period = (
        sub["items"]["data"][0]["current_period_start"]
            .as_i64()
            .unwrap_or(now),
        sub["items"]["data"][0]["current_period_end"]
            .as_i64()
            .unwrap_or(now),
    );
    let mut items = sub["items"]["data"].as_array().cloned().unwrap_or_default();
    for (name, node) in changes {
        let price = match node_str(node, "price") {
            Some(pid) => Some(check_price(state, pid, &format!("{name}[price]"))?),
            None => None,
        };
        match node_str(node, "id") {
            Some(si) => {
                let pos = items.iter().position(|i| i["id"] == si).ok_or_else(|| {
                    ApiError::no_such("subscription_item", si, &format!("{name}[id]"))
                })?;
                if node_str(node, "deleted") == Some("true") {
                    items.remove(pos);
                    continue;
                }
                if let Some(pr) = price {
                    items[pos]["plan"] = plan_of(&pr);
                    items[pos]["price"] = pr;
                }
                if let Some(q) = node_int(node, "quantity") {
                    items[pos]["quantity"] = json!(q);
                }
                if let Some(m) = (Params { node, prefix: "" }).metadata("metadata") {
                    m.apply(&mut items[pos]);
                }
            }
            None => {
                let pr = price.ok_or_else(|| ApiError::missing_param(&format!("{name}[price]")))?;
                items.push(item_json(
                    &sub_id,
                    pr,
                    node_int(node, "quantity").unwrap_or(1),
                    node,
                    now,
                    period,
                ));
            }
        }
    }
    if items.is_empty() {
        return Err(ApiError::invalid(
            "A subscription must have at least one active plan.",
            Some("items"),
        ));
    }
    sub["items"]["total_count"] = json!(items.len());
    sub["items"]["data"] = Value::Array(items);
    Ok(())
}

/// `DELETE /v1/subscriptions/{id}`: immediate cancellation; an already ended subscription is a 404, as with Stripe.
pub fn cancel(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(
        params,
        &[&[
            ("invoice_now", Spec::Bool),
            ("prorate", Spec::Bool),
            (
                "cancellation_details",
                Spec::Obj(&[("comment", Spec::Str), ("feedback", Spec::Str)]),
            ),
        ]],
    )?;
    let p = Params::root(params);
    let sub = fetch(state, "subscription", id, "id")?.clone();
    if billing::is_terminal(&sub) {
        return Err(ApiError::no_such("subscription", id, "id"));
    }
    let now = state.now_for_customer(sub["customer"].as_str().unwrap_or_default());
    if let Some(s) = state.store.get_mut(id) {
        for key in ["comment", "feedback"] {
            if let Some(v) = p
                .path_str(&["cancellation_details", key])
                .filter(|v| !v.is_empty())
            {
                s["cancellation_details"][key] = json!(v);
            }
        }
    }
    billing::cancel_subscription(state, id, now, "cancellation_requested");
    respond(state, state.store.get(id).expect("fetched"), params)
}

/// `POST /v1/subscriptions/{id}/resume`: a `paused` subscription starts a new period and is billed.
pub fn resume(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(
        params,
        &[&[
            ("billing_cycle_anchor", Spec::Any),
            ("proration_behavior", Spec::Str),
            ("proration_date", Spec::Int),
        ]],
    )?;
    let sub = fetch(state, "subscription", id, "id")?.clone();
    if sub["status"] != "paused" {
        return Err(ApiError::invalid(
            "Only subscriptions with status `paused` can be resumed.",
            None,
        ));
    }
    let now = state.now_for_customer(sub["customer"].as_str().unwrap_or_default());
    lifecycle::resume(state, id, now);
    respond(state, state.store.get(id).expect("fetched"), params)
}

const STATUSES: &[&str] = &[
    "active",
    "all",
    "canceled",
    "ended",
    "incomplete",
    "incomplete_expired",
    "past_due",
    "paused",
    "trialing",
    "unpaid",
];

/// `GET /v1/subscriptions`: canceled subscriptions only with `status=canceled|ended|all`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let p = Params::root(params);
    let status = p.one_of("status", STATUSES)?.map(str::to_owned);
    let customer = p.nonempty("customer").map(str::to_owned);
    let price = p.nonempty("price").map(str::to_owned);
    let clock = p.nonempty("test_clock").map(str::to_owned);
    let extra: &[(&str, Spec)] = &[
        ("status", Spec::Str),
        ("customer", Spec::Str),
        ("price", Spec::Str),
        ("test_clock", Spec::Str),
        ("collection_method", Spec::Str),
        ("current_period_end", Spec::Range),
        ("current_period_start", Spec::Range),
        ("automatic_tax", Spec::Any),
    ];
    list(
        state,
        "subscription",
        params,
        &[extra],
        "/v1/subscriptions",
        |v| {
            let s = v["status"].as_str().unwrap_or_default();
            let status_ok = match status.as_deref() {
                None => s != "canceled",
                Some("all") => true,
                Some("ended") => s == "canceled" || s == "incomplete_expired",
                Some(x) => s == x,
            };
            status_ok
                && customer.as_deref().is_none_or(|c| v["customer"] == c)
                && clock.as_deref().is_none_or(|c| v["test_clock"] == c)
                && price.as_deref().is_none_or(|pr| {
                    v["items"]["data"]
                        .as_array()
                        .is_some_and(|items| items.iter().any(|i| i["price"]["id"] == pr))
                })
        },
    )
}

/// `GET /v1/subscriptions/search`.
pub fn search(state: &mut State, params: &Node) -> ApiResult<Value> {
    run_search(
        state,
        "subscription",
        params,
        "/v1/subscriptions/search",
        &["status", "created", "canceled_at", "ended_at"],
        |_| true,
    )
}
