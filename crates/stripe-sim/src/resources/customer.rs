//! Customers: create, retrieve (a deleted one is a stub), update, delete (cancelling its subscriptions at once), list and search.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::billing;
use crate::resources::search::search as run_search;
use crate::resources::{fetch, list, payment_method, respond};
use crate::state::{previous_attributes, State};
use crate::store::new_id;

const INVOICE_SETTINGS: Spec = Spec::Obj(&[
    ("default_payment_method", Spec::Str),
    ("custom_fields", Spec::Any),
    ("footer", Spec::Str),
    ("rendering_options", Spec::Any),
]);

const COMMON: &[(&str, Spec)] = &[
    ("name", Spec::Str),
    ("email", Spec::Str),
    ("description", Spec::Str),
    ("phone", Spec::Str),
    ("metadata", Spec::Meta),
    ("payment_method", Spec::Str),
    ("invoice_settings", INVOICE_SETTINGS),
    ("address", Spec::Any),
    ("shipping", Spec::Any),
    ("preferred_locales", Spec::Arr(&Spec::Str)),
    ("tax_exempt", Spec::Str),
    ("balance", Spec::Int),
    ("invoice_prefix", Spec::Str),
    ("next_invoice_sequence", Spec::Int),
    ("tax", Spec::Any),
    ("cash_balance", Spec::Any),
];

const CREATE_ONLY: &[(&str, Spec)] = &[("test_clock", Spec::Str), ("tax_id_data", Spec::Any)];
const UPDATE_ONLY: &[(&str, Spec)] = &[("default_source", Spec::Str)];

fn opt(p: &Params, key: &str) -> Value {
    p.nonempty(key).map_or(Value::Null, |s| json!(s))
}

/// `POST /v1/customers`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[COMMON, CREATE_ONLY])?;
    let p = Params::root(params);
    let clock = p.nonempty("test_clock").map(str::to_owned);
    if let Some(c) = &clock {
        fetch(state, "test_helpers.test_clock", c, "test_clock")?;
    }
    let pm_ref = p.nonempty("payment_method");
    let default_ref = p
        .path_str(&["invoice_settings", "default_payment_method"])
        .filter(|s| !s.is_empty());
    if let Some(r) = pm_ref {
        payment_method::preflight_attach(state, r, "payment_method")?;
    }
    if let Some(d) = default_ref {
        if Some(d) != pm_ref && !payment_method::is_test_token(d) {
            return Err(ApiError::invalid(
                format!("The customer does not have a payment method with the ID {d}. The payment method must be attached to the customer."),
                Some("invoice_settings[default_payment_method]"),
            ));
        }
    }
    let now = state.now_for_clock(clock.as_deref());
    let id = new_id("cus_");
    let prefix: String = std::iter::repeat_with(|| fastrand::alphabetic().to_ascii_uppercase())
        .take(8)
        .collect();
    let mut v = json!({
        "id": id,
        "object": "customer",
        "address": params.get("address").map_or(Value::Null, Node::to_json),
        "balance": p.int("balance").unwrap_or(0),
        "created": now,
        "currency": null,
        "default_source": null,
        "delinquent": false,
        "description": opt(&p, "description"),
        "discount": null,
        "email": opt(&p, "email"),
        "invoice_prefix": p.nonempty("invoice_prefix").map_or(prefix, str::to_owned),
        "invoice_settings": {"custom_fields": null, "default_payment_method": null, "footer": null, "rendering_options": null},
        "livemode": false,
        "metadata": {},
        "name": opt(&p, "name"),
        "next_invoice_sequence": p.int("next_invoice_sequence").unwrap_or(1),
        "phone": opt(&p, "phone"),
        "preferred_locales": p.strings("preferred_locales"),
        "shipping": params.get("shipping").map_or(Value::Null, Node::to_json),
        "tax_exempt": p.nonempty("tax_exempt").unwrap_or("none"),
        "test_clock": clock,
    });
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut v);
    }
    state.store.insert(v.clone());
    state.emit("customer.created", v, None, now);
    let mut attached = None;
    if let Some(r) = pm_ref {
        let pm = payment_method::resolve(state, r, "payment_method", now)?;
        payment_method::attach(state, &pm, &id, now)?;
        attached = Some(pm);
    }
    if let Some(d) = default_ref {
        let pm = match (&attached, Some(d) == pm_ref) {
            (Some(pm), true) => pm.clone(),
            _ => payment_method::for_customer(
                state,
                d,
                &id,
                "invoice_settings[default_payment_method]",
                now,
            )?,
        };
        set_default_pm(state, &id, Some(pm), now);
    }
    respond(state, state.store.get(&id).expect("just inserted"), params)
}

/// Sets a customer's `invoice_settings.default_payment_method`, emitting `customer.updated`.
pub fn set_default_pm(state: &mut State, customer: &str, pm: Option<String>, now: i64) {
    let Some(c) = state.store.get_mut(customer) else {
        return;
    };
    let before = c.clone();
    c["invoice_settings"]["default_payment_method"] = json!(pm);
    let after = c.clone();
    if let Some(prev) = previous_attributes(&before, &after) {
        state.emit("customer.updated", after, Some(prev), now);
    }
}

/// `GET /v1/customers/{id}`: a deleted customer is `{id, object, deleted: true}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, "customer", id, "id")?, params)
}

/// The request's optional `customer` (which must be live) and the time on its clock (the global clock
/// without one).
pub(crate) fn optional_customer(state: &State, p: &Params) -> ApiResult<(Option<String>, i64)> {
    let customer = p.nonempty("customer").map(str::to_owned);
    if let Some(c) = &customer {
        live_customer(state, c, "customer")?;
    }
    let now = customer
        .as_deref()
        .map_or_else(|| state.global_now(), |c| state.now_for_customer(c));
    Ok((customer, now))
}

/// The customer `id` (named by the request's `param`), which must exist and not be deleted.
pub(crate) fn live_customer<'a>(state: &'a State, id: &str, param: &str) -> ApiResult<&'a Value> {
    let c = fetch(state, "customer", id, param)?;
    if c["deleted"] == true {
        return Err(ApiError::no_such("customer", id, param));
    }
    Ok(c)
}

/// `POST /v1/customers/{id}`.
pub fn update(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[COMMON, UPDATE_ONLY])?;
    let p = Params::root(params);
    let old = live_customer(state, id, "id")?.clone();
    let now = state.now_for_customer(id);
    if let Some(r) = p.nonempty("payment_method") {
        payment_method::preflight_attach(state, r, "payment_method")?;
    }
    let mut new = old.clone();
    for key in [
        "name",
        "email",
        "description",
        "phone",
        "tax_exempt",
        "invoice_prefix",
    ] {
        if let Some(v) = p.str(key) {
            new[key] = if v.is_empty() { Value::Null } else { json!(v) };
        }
    }
    for key in ["address", "shipping"] {
        if let Some(n) = params.get(key) {
            new[key] = if n.as_str() == Some("") {
                Value::Null
            } else {
                n.to_json()
            };
        }
    }
    if let Some(b) = p.int("balance") {
        new["balance"] = json!(b);
    }
    if p.has("preferred_locales") {
        new["preferred_locales"] = json!(p.strings("preferred_locales"));
    }
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut new);
    }
    if let Some(d) = p.path_str(&["invoice_settings", "default_payment_method"]) {
        let pm = if d.is_empty() {
            None
        } else {
            Some(payment_method::for_customer(
                state,
                d,
                id,
                "invoice_settings[default_payment_method]",
                now,
            )?)
        };
        new["invoice_settings"]["default_payment_method"] = json!(pm);
    }
    if let Some(r) = p.nonempty("payment_method") {
        let pm = payment_method::resolve(state, r, "payment_method", now)?;
        payment_method::attach(state, &pm, id, now)?;
    }
    if let Some(prev) = previous_attributes(&old, &new) {
        *state.store.get_mut(id).expect("fetched") = new.clone();
        state.emit("customer.updated", new.clone(), Some(prev), now);
    }
    respond(state, &new, params)
}

/// `DELETE /v1/customers/{id}`: cancels the customer's subscriptions immediately, then deletes it.
pub fn delete(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    live_customer(state, id, "id")?;
    let now = state.now_for_customer(id);
    let subs: Vec<String> = state
        .store
        .values("subscription")
        .filter(|s| s["customer"] == id && !billing::is_terminal(s))
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    for s in subs {
        billing::cancel_subscription(state, &s, now, "cancellation_requested");
    }
    let c = state.store.get_mut(id).expect("checked");
    c["deleted"] = json!(true);
    let mut snapshot = c.clone();
    if let Some(o) = snapshot.as_object_mut() {
        o.remove("deleted");
    }
    state.emit("customer.deleted", snapshot, None, now);
    Ok(json!({ "id": id, "object": "customer", "deleted": true }))
}

/// `GET /v1/customers`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let p = Params::root(params);
    let email = p.nonempty("email").map(str::to_owned);
    let clock = p.nonempty("test_clock").map(str::to_owned);
    list(
        state,
        "customer",
        params,
        &[&[("email", Spec::Str), ("test_clock", Spec::Str)]],
        "/v1/customers",
        |v| {
            email.as_deref().is_none_or(|e| v["email"] == e)
                && clock.as_deref().is_none_or(|c| v["test_clock"] == c)
        },
    )
}

/// `GET /v1/customers/search`.
pub fn search(state: &mut State, params: &Node) -> ApiResult<Value> {
    run_search(
        state,
        "customer",
        params,
        "/v1/customers/search",
        &["email", "name", "phone", "created", "description"],
        |v| v["deleted"] != true,
    )
}
