//! PaymentIntents: create, retrieve, update, confirm (charging a test card), cancel with `cancellation_reason`, list; also the charge path invoices use.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::{fetch, list, payment_method, respond};
use crate::state::{previous_attributes, State};
use crate::store::new_id;

/// Creates a PaymentIntent object and returns its id.
pub fn insert(
    state: &mut State,
    amount: i64,
    currency: &str,
    customer: Option<&str>,
    description: Option<&str>,
    now: i64,
) -> String {
    let id = new_id("pi_");
    let secret: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(24)
        .collect();
    let v = json!({
        "id": id,
        "object": "payment_intent",
        "amount": amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "allowed_payment_method_types": null,
        "application": null,
        "application_fee_amount": null,
        "automatic_payment_methods": {"allow_redirects": "always", "enabled": true},
        "canceled_at": null,
        "cancellation_reason": null,
        "capture_method": "automatic_async",
        "client_secret": format!("{id}_secret_{secret}"),
        "confirmation_method": "automatic",
        "created": now,
        "currency": currency,
        "customer": customer,
        "customer_account": null,
        "description": description,
        "excluded_payment_method_types": null,
        "last_payment_error": null,
        "latest_charge": null,
        "livemode": false,
        "managed_payments": null,
        "metadata": {},
        "next_action": null,
        "on_behalf_of": null,
        "payment_method": null,
        "payment_method_configuration_details": null,
        "payment_method_options": {"card": {"request_three_d_secure": "automatic"}},
        "payment_method_types": ["card"],
        "payment_record": null,
        "processing": null,
        "receipt_email": null,
        "review": null,
        "setup_future_usage": null,
        "shipping": null,
        "source": null,
        "statement_descriptor": null,
        "statement_descriptor_suffix": null,
        "status": "requires_payment_method",
        "transfer_data": null,
        "transfer_group": null,
    });
    state.store.insert(v.clone());
    state.emit("payment_intent.created", v, None, now);
    id
}

/// Charges a PaymentIntent with a PaymentMethod; on a decline the intent goes back to `requires_payment_method` and the 402 names it.
/// A card that needs authentication leaves the intent `requires_action` (no charge yet) and returns a 402 with code
/// `authentication_required`.
pub fn charge(state: &mut State, pi: &str, pm: &str, now: i64) -> ApiResult<()> {
    charge_with(state, pi, pm, now, false)
}

/// Completes an intent waiting for authentication, as the customer passing 3D Secure does.
pub fn charge_authenticated(state: &mut State, pi: &str, now: i64) -> ApiResult<()> {
    let pm = state
        .store
        .get(pi)
        .and_then(|v| v["payment_method"].as_str().map(str::to_owned))
        .ok_or_else(|| ApiError::no_such("payment_intent", pi, "payment_intent"))?;
    charge_with(state, pi, &pm, now, true)
}

fn charge_with(
    state: &mut State,
    pi: &str,
    pm: &str,
    now: i64,
    authenticated: bool,
) -> ApiResult<()> {
    let needs_auth = payment_method::behavior(state, pm) == payment_method::Behavior::AuthRequired;
    if needs_auth && !authenticated {
        return require_action(state, pi, pm, now);
    }
    let failure = if needs_auth {
        None
    } else {
        payment_method::charge_error(state, pm)
    };
    let pm_json = state.store.get(pm).cloned().unwrap_or(Value::Null);
    let billing_details = pm_json["billing_details"].clone();
    let Some(v) = state.store.get_mut(pi) else {
        return Err(ApiError::no_such("payment_intent", pi, "payment_intent"));
    };
    let amount = v["amount"].as_i64().unwrap_or(0);
    let customer = v["customer"].clone();
    let currency = v["currency"].clone();
    let description = v["description"].clone();
    let card = &pm_json["card"];
    let payment_method_details = json!({
        "type": "card",
        "card": {
            "amount_authorized": if failure.is_none() { json!(amount) } else { Value::Null },
            "authorization_code": null, "brand": card["brand"], "checks": card["checks"],
            "country": card["country"], "electronic_commerce_indicator": null,
            "exp_month": card["exp_month"], "exp_year": card["exp_year"],
            "fingerprint": card["fingerprint"], "funding": card["funding"], "installments": null,
            "last4": card["last4"], "mandate": null, "network": card["brand"],
            "network_transaction_id": null, "regulated_status": card["regulated_status"],
            "three_d_secure": null, "transaction_link_id": null, "wallet": null,
        },
    });
    v["payment_method"] = json!(pm);
    v["next_action"] = Value::Null;
    let charge_id = new_id("ch_");
    v["latest_charge"] = json!(charge_id);
    let charge = |status: &str, err: Option<&ApiError>| {
        json!({
            "id": charge_id,
            "object": "charge",
            "amount": amount,
            "amount_captured": if err.is_none() { amount } else { 0 },
            "amount_refunded": 0,
            "application": null,
            "application_fee": null,
            "application_fee_amount": null,
            "balance_transaction": null,
            "billing_details": billing_details,
            "calculated_statement_descriptor": "STRIPE-SIM",
            "captured": err.is_none(),
            "created": now,
            "currency": currency,
            "customer": customer,
            "description": description,
            "disputed": false,
            "failure_balance_transaction": null,
            "failure_code": err.and_then(|e| e.code.clone()),
            "failure_message": err.map(|e| e.message.clone()),
            "fraud_details": {},
            "livemode": false,
            "metadata": {},
            "on_behalf_of": null,
            "outcome": {
                "advice_code": null,
                "network_advice_code": null,
                "network_decline_code": null,
                "network_status": if err.is_none() { "approved_by_network" } else { "declined_by_network" },
                "reason": err.and_then(|e| e.decline_code.clone()),
                "risk_level": "normal",
                "seller_message": if err.is_none() { "Payment complete." } else { "The bank did not return any further details with this decline." },
                "type": if err.is_none() { "authorized" } else { "issuer_declined" },
            },
            "paid": err.is_none(),
            "payment_intent": pi,
            "payment_method": pm,
            "payment_method_details": payment_method_details,
            "receipt_email": null,
            "receipt_number": null,
            "receipt_url": null,
            "refunded": false,
            "review": null,
            "shipping": null,
            "source": null,
            "source_transfer": null,
            "statement_descriptor": null,
            "statement_descriptor_suffix": null,
            "status": status,
            "transfer_data": null,
            "transfer_group": null,
        })
    };
    match failure {
        None => {
            v["status"] = json!("succeeded");
            v["amount_received"] = json!(amount);
            v["last_payment_error"] = Value::Null;
            let snapshot = v.clone();
            let ch = charge("succeeded", None);
            state.store.insert(ch.clone());
            state.emit("charge.succeeded", ch, None, now);
            state.emit("payment_intent.succeeded", snapshot, None, now);
            Ok(())
        }
        Some(err) => {
            v["status"] = json!("requires_payment_method");
            v["last_payment_error"] = json!({
                "charge": charge_id,
                "code": err.code,
                "decline_code": err.decline_code,
                "doc_url": "https://stripe.com/docs/error-codes/card-declined",
                "message": err.message,
                "payment_method": pm_json,
                "type": "card_error",
            });
            let snapshot = v.clone();
            let ch = charge("failed", Some(&err));
            state.store.insert(ch.clone());
            state.emit("charge.failed", ch, None, now);
            state.emit("payment_intent.payment_failed", snapshot.clone(), None, now);
            Err(err
                .with("charge", json!(charge_id))
                .with("payment_intent", snapshot)
                .with("payment_method", pm_json))
        }
    }
}

/// The intent waits for the customer to authenticate: `requires_action` with a 3D Secure `next_action`.
fn require_action(state: &mut State, pi: &str, pm: &str, now: i64) -> ApiResult<()> {
    let err = payment_method::charge_error(state, pm).unwrap_or_else(|| {
        ApiError::card_declined(
            "authentication_required",
            "authentication_required",
            "Your card was declined. This transaction requires authentication.",
        )
    });
    let Some(v) = state.store.get_mut(pi) else {
        return Err(ApiError::no_such("payment_intent", pi, "payment_intent"));
    };
    v["payment_method"] = json!(pm);
    v["status"] = json!("requires_action");
    v["last_payment_error"] = Value::Null;
    v["next_action"] = json!({
        "type": "use_stripe_sdk",
        "use_stripe_sdk": {
            "type": "three_d_secure_redirect",
            "source": pm,
        },
    });
    let snapshot = v.clone();
    state.emit(
        "payment_intent.requires_action",
        snapshot.clone(),
        None,
        now,
    );
    Err(err.with("payment_intent", snapshot))
}

/// Whether an error is a charge waiting for authentication rather than a decline.
pub fn is_action_required(e: &ApiError) -> bool {
    e.code.as_deref() == Some(payment_method::AUTHENTICATION_REQUIRED)
}

/// Cancels an intent if it still can be (used when its invoice is voided).
pub fn cancel_quietly(state: &mut State, pi: &str, reason: &str, now: i64) {
    let Some(v) = state.store.get_mut(pi) else {
        return;
    };
    if matches!(v["status"].as_str(), Some("succeeded" | "canceled")) {
        return;
    }
    v["status"] = json!("canceled");
    v["canceled_at"] = json!(now);
    v["cancellation_reason"] = json!(reason);
    let snapshot = v.clone();
    state.emit("payment_intent.canceled", snapshot, None, now);
}

const CREATE: &[(&str, Spec)] = &[
    ("amount", Spec::Int),
    ("currency", Spec::Str),
    ("customer", Spec::Str),
    ("description", Spec::Str),
    ("metadata", Spec::Meta),
    ("payment_method", Spec::Str),
    ("confirm", Spec::Bool),
    ("off_session", Spec::Bool),
    (
        "automatic_payment_methods",
        Spec::Obj(&[("enabled", Spec::Bool), ("allow_redirects", Spec::Str)]),
    ),
    ("allowed_payment_method_types", Spec::Arr(&Spec::Str)),
    ("capture_method", Spec::Str),
    ("receipt_email", Spec::Str),
    ("return_url", Spec::Str),
    ("setup_future_usage", Spec::Str),
    ("statement_descriptor", Spec::Str),
    ("statement_descriptor_suffix", Spec::Str),
    ("payment_method_options", Spec::Any),
    ("shipping", Spec::Any),
    ("mandate_data", Spec::Any),
    ("error_on_requires_action", Spec::Bool),
];

fn reject_payment_method_types(params: &Node) -> ApiResult<()> {
    if params.get("payment_method_types").is_some() {
        return Err(ApiError::invalid_code(
            "payment_method_types_no_longer_supported",
            "The `payment_method_types` parameter is no longer supported in this API version. Use `allowed_payment_method_types` instead.",
            Some("payment_method_types"),
        ));
    }
    Ok(())
}

/// `POST /v1/payment_intents`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    reject_payment_method_types(params)?;
    validate(params, &[CREATE])?;
    let p = Params::root(params);
    let amount = p.req("amount").map(|_| p.int("amount").unwrap_or(0))?;
    if amount < 50 {
        return Err(ApiError::invalid_code(
            "amount_too_small",
            "Amount must be at least $0.50 usd",
            Some("amount"),
        ));
    }
    let currency = p.req("currency")?.to_lowercase();
    let (customer, now) = super::customer::optional_customer(state, &p)?;
    let pm = match p.nonempty("payment_method") {
        Some(r) => Some(payment_method::resolve(state, r, "payment_method", now)?),
        None => None,
    };
    let id = insert(
        state,
        amount,
        &currency,
        customer.as_deref(),
        p.nonempty("description"),
        now,
    );
    {
        let v = state.store.get_mut(&id).expect("just inserted");
        if let Some(m) = p.metadata("metadata") {
            m.apply(v);
        }
        if let Some(pm) = &pm {
            v["payment_method"] = json!(pm);
            v["status"] = json!("requires_confirmation");
        }
        for key in [
            "receipt_email",
            "setup_future_usage",
            "statement_descriptor",
        ] {
            if let Some(x) = p.nonempty(key) {
                v[key] = json!(x);
            }
        }
    }
    if p.bool("confirm") == Some(true) {
        let Some(pm) = pm else {
            return Err(ApiError::invalid_code(
                "payment_intent_unexpected_state",
                "You cannot confirm this PaymentIntent because it's missing a payment method. To confirm the PaymentIntent with cus_..., specify a payment method attached to this customer along with the customer ID.",
                Some("payment_method"),
            ));
        };
        on_session(charge(state, &id, &pm, now), &p)?;
    }
    respond(state, state.store.get(&id).expect("just inserted"), params)
}

/// `GET /v1/payment_intents/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[&[("client_secret", Spec::Str)]])?;
    respond(state, fetch(state, "payment_intent", id, "id")?, params)
}

/// `POST /v1/payment_intents/{id}`: metadata, description, payment method.
pub fn update(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    reject_payment_method_types(params)?;
    validate(
        params,
        &[&[
            ("metadata", Spec::Meta),
            ("description", Spec::Str),
            ("payment_method", Spec::Str),
            ("receipt_email", Spec::Str),
            ("amount", Spec::Int),
        ]],
    )?;
    let p = Params::root(params);
    let old = fetch(state, "payment_intent", id, "id")?.clone();
    let now = state.global_now();
    let mut new = old.clone();
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut new);
    }
    if let Some(d) = p.str("description") {
        new["description"] = if d.is_empty() { Value::Null } else { json!(d) };
    }
    if let Some(a) = p.int("amount") {
        new["amount"] = json!(a);
    }
    if let Some(r) = p.nonempty("payment_method") {
        let pm = payment_method::resolve(state, r, "payment_method", now)?;
        new["payment_method"] = json!(pm);
        if new["status"] == "requires_payment_method" {
            new["status"] = json!("requires_confirmation");
        }
    }
    if let Some(prev) = previous_attributes(&old, &new) {
        *state.store.get_mut(id).expect("fetched") = new.clone();
        state.emit("payment_intent.updated", new.clone(), Some(prev), now);
    }
    respond(state, &new, params)
}

/// `POST /v1/payment_intents/{id}/confirm`.
pub fn confirm(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    reject_payment_method_types(params)?;
    validate(
        params,
        &[&[
            ("payment_method", Spec::Str),
            ("off_session", Spec::Bool),
            ("return_url", Spec::Str),
            ("mandate_data", Spec::Any),
            ("payment_method_options", Spec::Any),
            ("receipt_email", Spec::Str),
            ("setup_future_usage", Spec::Str),
            ("error_on_requires_action", Spec::Bool),
        ]],
    )?;
    let p = Params::root(params);
    let pi = fetch(state, "payment_intent", id, "id")?.clone();
    let status = pi["status"].as_str().unwrap_or_default();
    if !matches!(
        status,
        "requires_payment_method" | "requires_confirmation" | "requires_action"
    ) {
        return Err(ApiError::invalid_code(
            "payment_intent_unexpected_state",
            format!("You cannot confirm this PaymentIntent because it has a status of {status}."),
            None,
        )
        .with("payment_intent", pi));
    }
    let now = state.global_now();
    let pm = match p.nonempty("payment_method") {
        Some(r) => payment_method::resolve(state, r, "payment_method", now)?,
        None => pi["payment_method"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                ApiError::invalid_code(
                    "payment_intent_unexpected_state",
                    "You cannot confirm this PaymentIntent because it's missing a payment method.",
                    Some("payment_method"),
                )
            })?,
    };
    on_session(charge(state, id, &pm, now), &p)?;
    respond(state, state.store.get(id).expect("fetched"), params)
}

/// A confirmation needing authentication answers the intent in `requires_action` (the client then runs 3D Secure),
/// unless the payment is off session or `error_on_requires_action` is set.
fn on_session(r: ApiResult<()>, p: &Params) -> ApiResult<()> {
    match r {
        Err(e)
            if is_action_required(&e)
                && p.bool("off_session") != Some(true)
                && p.bool("error_on_requires_action") != Some(true) =>
        {
            Ok(())
        }
        other => other,
    }
}

const REASONS: &[&str] = &[
    "duplicate",
    "fraudulent",
    "requested_by_customer",
    "abandoned",
];

/// `POST /v1/payment_intents/{id}/cancel`.
pub fn cancel(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[&[("cancellation_reason", Spec::Str)]])?;
    let p = Params::root(params);
    let reason = p.one_of("cancellation_reason", REASONS)?;
    let pi = fetch(state, "payment_intent", id, "id")?.clone();
    let status = pi["status"].as_str().unwrap_or_default();
    if matches!(status, "succeeded" | "canceled") {
        return Err(ApiError::invalid_code(
            "payment_intent_unexpected_state",
            format!("You cannot cancel this PaymentIntent because it has a status of {status}. Only a PaymentIntent with one of the following statuses may be canceled: requires_payment_method, requires_capture, requires_confirmation, requires_action, processing."),
            None,
        )
        .with("payment_intent", pi));
    }
    let now = state.global_now();
    let v = state.store.get_mut(id).expect("fetched");
    v["status"] = json!("canceled");
    v["canceled_at"] = json!(now);
    v["cancellation_reason"] = json!(reason);
    let snapshot = v.clone();
    state.emit("payment_intent.canceled", snapshot.clone(), None, now);
    respond(state, &snapshot, params)
}

/// `GET /v1/payment_intents`.
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let customer = Params::root(params).nonempty("customer").map(str::to_owned);
    list(
        state,
        "payment_intent",
        params,
        &[&[("customer", Spec::Str)]],
        "/v1/payment_intents",
        |v| customer.as_deref().is_none_or(|c| v["customer"] == c),
    )
}
