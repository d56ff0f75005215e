//! Checkout Sessions: create (`setup`, `subscription`, `payment`), retrieve, list, line items, expire, and the simulator's "customer completes the page" step.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{node_int, node_str, validate, Params, Spec};
use crate::resources::{
    customer, fetch, list, payment_intent, payment_method, respond, subscription,
};
use crate::state::State;
use crate::store::new_id;

const LINE_ITEM: Spec = Spec::Obj(&[
    ("price", Spec::Str),
    ("quantity", Spec::Int),
    ("price_data", Spec::Any),
    ("adjustable_quantity", Spec::Any),
    ("dynamic_tax_rates", Spec::Any),
    ("tax_rates", Spec::Any),
]);

const SUBSCRIPTION_DATA: Spec = Spec::Obj(&[
    ("metadata", Spec::Meta),
    ("trial_period_days", Spec::Int),
    ("trial_end", Spec::Int),
    (
        "trial_settings",
        Spec::Obj(&[(
            "end_behavior",
            Spec::Obj(&[("missing_payment_method", Spec::Str)]),
        )]),
    ),
    ("description", Spec::Str),
    ("default_tax_rates", Spec::Any),
    ("billing_mode", Spec::Any),
    ("proration_behavior", Spec::Str),
]);

const CREATE: &[(&str, Spec)] = &[
    ("mode", Spec::Str),
    ("customer", Spec::Str),
    ("customer_email", Spec::Str),
    ("customer_creation", Spec::Str),
    ("success_url", Spec::Str),
    ("cancel_url", Spec::Str),
    ("return_url", Spec::Str),
    ("line_items", Spec::Arr(&LINE_ITEM)),
    ("metadata", Spec::Meta),
    ("currency", Spec::Str),
    ("client_reference_id", Spec::Str),
    ("expires_at", Spec::Int),
    ("subscription_data", SUBSCRIPTION_DATA),
    ("payment_intent_data", Spec::Any),
    ("setup_intent_data", Spec::Any),
    ("ui_mode", Spec::Str),
    ("locale", Spec::Str),
    ("allow_promotion_codes", Spec::Bool),
    ("billing_address_collection", Spec::Str),
    ("automatic_tax", Spec::Any),
    ("payment_method_collection", Spec::Str),
    ("excluded_payment_method_types", Spec::Any),
    ("payment_method_configuration", Spec::Str),
    ("payment_method_options", Spec::Any),
    ("consent_collection", Spec::Any),
    ("custom_fields", Spec::Any),
    ("custom_text", Spec::Any),
    ("customer_update", Spec::Any),
    ("discounts", Spec::Any),
    ("invoice_creation", Spec::Any),
    ("phone_number_collection", Spec::Any),
    ("saved_payment_method_options", Spec::Any),
    ("shipping_address_collection", Spec::Any),
    ("submit_type", Spec::Str),
    ("tax_id_collection", Spec::Any),
    ("redirect_on_completion", Spec::Str),
];

const MODES: &[&str] = &["payment", "setup", "subscription"];

/// `POST /v1/checkout/sessions`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[CREATE])?;
    let p = Params::root(params);
    let mode = match p.req("mode")? {
        m if MODES.contains(&m) => m,
        _ => return Err(ApiError::invalid_enum("mode", MODES)),
    };
    let ui_mode = p.nonempty("ui_mode").unwrap_or("hosted_page");
    let (customer, now) = super::customer::optional_customer(state, &p)?;
    let now = now.max(state.global_now());
    let mut items = Vec::new();
    let mut total = 0;
    let mut currency = p.nonempty("currency").map(str::to_lowercase);
    for (name, node) in p.array("line_items") {
        let pid = node_str(node, "price")
            .ok_or_else(|| ApiError::missing_param(&format!("{name}[price]")))?;
        let price = fetch(state, "price", pid, &format!("{name}[price]"))?;
        let qty = node_int(node, "quantity").unwrap_or(1);
        if mode == "payment" && price["type"] == "recurring" {
            return Err(ApiError::invalid(
                "You specified `payment` mode but passed a recurring price. Either switch to `subscription` mode or use only one-time prices.",
                Some(&format!("{name}[price]")),
            ));
        }
        total += price["unit_amount"].as_i64().unwrap_or(0) * qty;
        currency.get_or_insert_with(|| price["currency"].as_str().unwrap_or("usd").to_owned());
        items.push(json!({ "price": pid, "quantity": qty }));
    }
    match mode {
        "setup" => {
            if currency.is_none() {
                return Err(ApiError::missing_param("currency"));
            }
            if !items.is_empty() {
                return Err(ApiError::invalid(
                    "You cannot pass `line_items` in `setup` mode.",
                    Some("line_items"),
                ));
            }
        }
        _ if items.is_empty() => return Err(ApiError::missing_param("line_items")),
        "subscription" => {
            let any_recurring = items.iter().any(|i| {
                i["price"]
                    .as_str()
                    .and_then(|id| state.store.get(id))
                    .is_some_and(|p| p["type"] == "recurring")
            });
            if !any_recurring {
                return Err(ApiError::invalid(
                    "You must provide at least one recurring price in `subscription` mode when using prices.",
                    Some("line_items"),
                ));
            }
        }
        _ => {}
    }
    let expires_at = match p.int("expires_at") {
        Some(t) if t < now + 1800 || t > now + 86_400 => {
            return Err(ApiError::invalid(
                "The `expires_at` timestamp must be between 30 minutes and 24 hours from Checkout Session creation.",
                Some("expires_at"),
            ))
        }
        Some(t) => t,
        None => now + 86_400,
    };
    let id = format!("cs_test_{}", &new_id("")[..]);
    let url = (ui_mode == "hosted_page").then(|| format!("{}/checkout/{id}", state.base_url));
    let amount = (mode != "setup").then_some(total);
    let mut v = json!({
        "id": id,
        "object": "checkout.session",
        "adaptive_pricing": null,
        "after_expiration": null,
        "allow_promotion_codes": p.bool("allow_promotion_codes"),
        "allowed_payment_method_types": null,
        "amount_subtotal": amount,
        "amount_total": amount,
        "automatic_tax": {"enabled": false, "liability": null, "provider": null, "status": null},
        "billing_address_collection": p.nonempty("billing_address_collection"),
        "cancel_url": p.nonempty("cancel_url"),
        "client_reference_id": p.nonempty("client_reference_id"),
        "client_secret": null,
        "collected_information": null,
        "consent": null,
        "consent_collection": null,
        "created": now,
        "currency": currency,
        "currency_conversion": null,
        "custom_fields": [],
        "custom_text": {"after_submit": null, "shipping_address": null, "submit": null, "terms_of_service_acceptance": null},
        "customer": customer,
        "customer_account": null,
        "customer_creation": if customer.is_some() { Value::Null } else { json!(p.nonempty("customer_creation").unwrap_or("if_required")) },
        "customer_details": null,
        "customer_email": p.nonempty("customer_email"),
        "discounts": [],
        "expires_at": expires_at,
        "integration_identifier": null,
        "invoice": null,
        "invoice_creation": null,
        "livemode": false,
        "locale": p.nonempty("locale"),
        "managed_payments": null,
        "metadata": {},
        "mode": mode,
        "payment_intent": null,
        "payment_link": null,
        "payment_method_collection": p.nonempty("payment_method_collection").unwrap_or("always"),
        "payment_method_configuration_details": null,
        "origin_context": null,
        "payment_method_options": {},
        // Only the create parameter went away at endive; the field still lists the types offered.
        "payment_method_types": ["card"],
        "payment_status": if mode == "setup" { "no_payment_required" } else { "unpaid" },
        "permissions": null,
        "phone_number_collection": {"enabled": false},
        "recovered_from": null,
        "saved_payment_method_options": null,
        "setup_intent": null,
        "shipping_address_collection": null,
        "shipping_cost": null,
        "shipping_options": [],
        "status": "open",
        "submit_type": null,
        "subscription": null,
        "success_url": p.nonempty("success_url"),
        "total_details": {"amount_discount": 0, "amount_shipping": 0, "amount_tax": 0},
        "ui_mode": ui_mode,
        "url": url,
        "wallet_options": null,
    });
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut v);
    }
    let sub_data = params
        .get("subscription_data")
        .map(Node::to_json)
        .unwrap_or(Value::Null);
    state.store.insert_with(
        v,
        json!({ "line_items": items, "subscription_data": sub_data }),
    );
    respond(state, state.store.get(&id).expect("just inserted"), params)
}

/// `GET /v1/checkout/sessions/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, "checkout.session", id, "id")?, params)
}

/// `GET /v1/checkout/sessions/{id}/line_items`.
pub fn line_items(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[crate::params::LIST])?;
    fetch(state, "checkout.session", id, "id")?;
    let items = state
        .store
        .entry(id)
        .map(|e| e.internal["line_items"].clone())
        .unwrap_or_default();
    let data: Vec<Value> = items
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .map(|i| {
            let price = i["price"]
                .as_str()
                .and_then(|p| state.store.get(p))
                .cloned()
                .unwrap_or_default();
            let qty = i["quantity"].as_i64().unwrap_or(1);
            let amount = price["unit_amount"].as_i64().unwrap_or(0) * qty;
            json!({
                "id": new_id("li_"),
                "object": "item",
                "amount_discount": 0,
                "amount_subtotal": amount,
                "amount_tax": 0,
                "amount_total": amount,
                "currency": price["currency"],
                "adjustable_quantity": null,
                "description": price["nickname"],
                "metadata": {},
                "price": price,
                "quantity": qty,
            })
        })
        .collect();
    Ok(
        json!({ "object": "list", "data": data, "has_more": false, "url": format!("/v1/checkout/sessions/{id}/line_items") }),
    )
}

/// `GET /v1/checkout/sessions`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let p = Params::root(params);
    let customer = p.nonempty("customer").map(str::to_owned);
    let status = p.nonempty("status").map(str::to_owned);
    let sub = p.nonempty("subscription").map(str::to_owned);
    let extra: &[(&str, Spec)] = &[
        ("customer", Spec::Str),
        ("status", Spec::Str),
        ("subscription", Spec::Str),
        ("payment_intent", Spec::Str),
        ("payment_link", Spec::Str),
        ("customer_details", Spec::Any),
    ];
    list(
        state,
        "checkout.session",
        params,
        &[extra],
        "/v1/checkout/sessions",
        |v| {
            customer.as_deref().is_none_or(|c| v["customer"] == c)
                && status.as_deref().is_none_or(|s| v["status"] == s)
                && sub.as_deref().is_none_or(|s| v["subscription"] == s)
        },
    )
}

/// Expires an open session (by request or when `expires_at` passes).
pub fn expire_session(state: &mut State, id: &str, now: i64) {
    let Some(v) = state.store.get_mut(id) else {
        return;
    };
    if v["status"] != "open" {
        return;
    }
    v["status"] = json!("expired");
    v["url"] = Value::Null;
    let snapshot = v.clone();
    state.emit("checkout.session.expired", snapshot, None, now);
}

/// `POST /v1/checkout/sessions/{id}/expire`.
pub fn expire(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    let s = fetch(state, "checkout.session", id, "id")?;
    if s["status"] != "open" {
        return Err(ApiError::invalid(
            format!("Only Checkout Sessions with a status in [\"open\"] can be expired. This Checkout Session has a status of \"{}\".", s["status"].as_str().unwrap_or_default()),
            None,
        ));
    }
    let now = state.global_now();
    expire_session(state, id, now);
    respond(state, state.store.get(id).expect("fetched"), params)
}

fn node_map(pairs: Vec<(String, Node)>) -> Node {
    Node::Map(pairs.into_iter().collect::<BTreeMap<_, _>>())
}

fn s(v: impl Into<String>) -> Node {
    Node::Str(v.into())
}

/// `POST /_sim/checkout/sessions/{id}/complete`: what the customer paying on the hosted page does. A declined card is a 402 and the session stays open.
pub fn complete(state: &mut State, id: &str, pm_ref: &str) -> ApiResult<Value> {
    let session = fetch(state, "checkout.session", id, "id")?.clone();
    if session["status"] != "open" {
        return Err(ApiError::invalid(
            format!(
                "This Checkout Session is no longer open (status \"{}\").",
                session["status"].as_str().unwrap_or_default()
            ),
            None,
        ));
    }
    let mode = session["mode"].as_str().unwrap_or_default().to_owned();
    payment_method::preflight_attach(state, pm_ref, "payment_method")?;
    if mode != "setup" {
        if let Some(e) = payment_method::would_fail(state, pm_ref) {
            return Err(e);
        }
    }
    let now = state.global_now();
    let customer = match session["customer"].as_str() {
        Some(c) => c.to_owned(),
        None => {
            let mut pairs = Vec::new();
            if let Some(e) = session["customer_email"].as_str() {
                pairs.push(("email".to_owned(), s(e)));
            }
            let c = customer::create(state, &node_map(pairs))?;
            c["id"].as_str().unwrap_or_default().to_owned()
        }
    };
    let now = state.now_for_customer(&customer).max(now);
    let pm = payment_method::resolve(state, pm_ref, "payment_method", now)?;
    payment_method::attach(state, &pm, &customer, now)?;
    let internal = state
        .store
        .entry(id)
        .map(|e| e.internal.clone())
        .unwrap_or_default();
    let mut changes = json!({});
    match mode.as_str() {
        "setup" => {
            let seti = new_id("seti_");
            let secret: String = std::iter::repeat_with(fastrand::alphanumeric)
                .take(24)
                .collect();
            let si = json!({
                "id": seti,
                "object": "setup_intent",
                "allowed_payment_method_types": null,
                "application": null,
                "automatic_payment_methods": null,
                "cancellation_reason": null,
                "client_secret": format!("{seti}_secret_{secret}"),
                "created": now,
                "customer": customer,
                "description": null,
                "excluded_payment_method_types": null,
                "flow_directions": null,
                "last_setup_error": null,
                "latest_attempt": null,
                "livemode": false,
                "mandate": null,
                "metadata": {},
                "next_action": null,
                "on_behalf_of": null,
                "payment_method": pm,
                "payment_method_configuration_details": null,
                "payment_method_options": {"card": {"mandate_options": null, "network": null, "request_three_d_secure": "automatic"}},
                "payment_method_types": ["card"],
                "single_use_mandate": null,
                "status": "succeeded",
                "usage": "off_session",
            });
            state.store.insert(si.clone());
            state.emit("setup_intent.created", si.clone(), None, now);
            state.emit("setup_intent.succeeded", si, None, now);
            changes["setup_intent"] = json!(seti);
        }
        "subscription" => {
            let mut pairs = vec![
                ("customer".to_owned(), s(&customer)),
                ("default_payment_method".to_owned(), s(&pm)),
                ("payment_behavior".to_owned(), s("error_if_incomplete")),
            ];
            let items: Vec<(String, Node)> = internal["line_items"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, li)| {
                    (
                        i.to_string(),
                        node_map(vec![
                            ("price".into(), s(li["price"].as_str().unwrap_or_default())),
                            (
                                "quantity".into(),
                                s(li["quantity"].as_i64().unwrap_or(1).to_string()),
                            ),
                        ]),
                    )
                })
                .collect();
            pairs.push(("items".into(), node_map(items)));
            let sd = &internal["subscription_data"];
            if let Some(m) = sd["metadata"].as_object() {
                let meta = m
                    .iter()
                    .map(|(k, v)| (k.clone(), s(v.as_str().unwrap_or_default())))
                    .collect();
                pairs.push(("metadata".into(), node_map(meta)));
            }
            if let Some(d) = sd["trial_period_days"].as_str() {
                pairs.push(("trial_period_days".into(), s(d)));
            }
            if let Some(m) = sd["trial_settings"]["end_behavior"]["missing_payment_method"].as_str()
            {
                pairs.push((
                    "trial_settings".into(),
                    node_map(vec![(
                        "end_behavior".into(),
                        node_map(vec![("missing_payment_method".into(), s(m))]),
                    )]),
                ));
            }
            let sub = subscription::create(state, &node_map(pairs))?;
            changes["subscription"] = sub["id"].clone();
            changes["invoice"] = sub["latest_invoice"].clone();
            changes["payment_status"] = json!("paid");
        }
        _ => {
            let amount = session["amount_total"].as_i64().unwrap_or(0);
            let currency = session["currency"].as_str().unwrap_or("usd").to_owned();
            let pi = payment_intent::insert(state, amount, &currency, Some(&customer), None, now);
            payment_intent::charge(state, &pi, &pm, now)?;
            changes["payment_intent"] = json!(pi);
            changes["payment_status"] = json!("paid");
        }
    }
    let email = state
        .store
        .get(&customer)
        .map(|c| c["email"].clone())
        .unwrap_or_default();
    let v = state.store.get_mut(id).expect("fetched");
    v["status"] = json!("complete");
    v["url"] = Value::Null;
    v["customer"] = json!(customer);
    v["customer_details"] = json!({"address": null, "business_name": null, "email": email, "individual_name": null, "name": null, "phone": null, "tax_exempt": "none", "tax_ids": []});
    if let Some(c) = changes.as_object() {
        for (k, val) in c {
            v[k.as_str()] = val.clone();
        }
    }
    let snapshot = v.clone();
    state.emit("checkout.session.completed", snapshot.clone(), None, now);
    Ok(snapshot)
}
