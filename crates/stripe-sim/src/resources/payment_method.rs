//! PaymentMethods: Stripe's test tokens (`pm_card_visa`, `pm_card_chargeCustomerFail`, `pm_card_visa_chargeDeclined`, `pm_card_authenticationRequired`, ...), attach/detach, and what each card does when charged.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{node_str, validate, Params, Spec};
use crate::resources::{fetch, list, respond};
use crate::state::{previous_attributes, State};
use crate::store::new_id;

/// What a test card does.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Behavior {
    /// Attaches and charges.
    Ok,
    /// Attaches; every charge fails (`pm_card_chargeCustomerFail`).
    FailOnCharge,
    /// Declined when attached and when charged.
    Decline,
    /// Attaches; every charge needs the customer to authenticate (3D Secure) before it succeeds.
    AuthRequired,
}

/// A Stripe test card.
struct TestCard {
    tokens: &'static [&'static str],
    brand: &'static str,
    last4: &'static str,
    behavior: Behavior,
    /// (`code`, `decline_code`, message) of the card error it produces.
    error: (&'static str, &'static str, &'static str),
}

const DECLINED: (&str, &str, &str) = (
    "card_declined",
    "generic_decline",
    "Your card was declined.",
);

/// The error of a charge that needs authentication; code and decline code as Stripe reports them.
pub const AUTHENTICATION_REQUIRED: &str = "authentication_required";

const CARDS: &[TestCard] = &[
    TestCard {
        tokens: &["pm_card_visa", "tok_visa", "4242424242424242"],
        brand: "visa",
        last4: "4242",
        behavior: Behavior::Ok,
        error: DECLINED,
    },
    TestCard {
        tokens: &["pm_card_mastercard", "tok_mastercard", "5555555555554444"],
        brand: "mastercard",
        last4: "4444",
        behavior: Behavior::Ok,
        error: DECLINED,
    },
    TestCard {
        tokens: &["pm_card_amex", "tok_amex", "378282246310005"],
        brand: "amex",
        last4: "0005",
        behavior: Behavior::Ok,
        error: DECLINED,
    },
    TestCard {
        tokens: &["pm_card_visa_debit", "tok_visa_debit", "4000056655665556"],
        brand: "visa",
        last4: "5556",
        behavior: Behavior::Ok,
        error: DECLINED,
    },
    TestCard {
        tokens: &[
            "pm_card_chargeCustomerFail",
            "tok_chargeCustomerFail",
            "4000000000000341",
        ],
        brand: "visa",
        last4: "0341",
        behavior: Behavior::FailOnCharge,
        error: DECLINED,
    },
    TestCard {
        tokens: &[
            "pm_card_authenticationRequired",
            "tok_authenticationRequired",
            "4000002760003184",
        ],
        brand: "visa",
        last4: "3184",
        behavior: Behavior::AuthRequired,
        error: (
            AUTHENTICATION_REQUIRED,
            AUTHENTICATION_REQUIRED,
            "Your card was declined. This transaction requires authentication.",
        ),
    },
    TestCard {
        tokens: &[
            "pm_card_visa_chargeDeclined",
            "pm_card_chargeDeclined",
            "tok_chargeDeclined",
            "4000000000000002",
        ],
        brand: "visa",
        last4: "0002",
        behavior: Behavior::Decline,
        error: DECLINED,
    },
    TestCard {
        tokens: &[
            "pm_card_visa_chargeDeclinedInsufficientFunds",
            "pm_card_chargeDeclinedInsufficientFunds",
            "tok_chargeDeclinedInsufficientFunds",
            "4000000000009995",
        ],
        brand: "visa",
        last4: "9995",
        behavior: Behavior::Decline,
        error: (
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
    },
    TestCard {
        tokens: &[
            "pm_card_chargeDeclinedExpiredCard",
            "tok_chargeDeclinedExpiredCard",
            "4000000000000069",
        ],
        brand: "visa",
        last4: "0069",
        behavior: Behavior::Decline,
        error: ("expired_card", "expired_card", "Your card has expired."),
    },
    TestCard {
        tokens: &[
            "pm_card_chargeDeclinedIncorrectCvc",
            "tok_chargeDeclinedIncorrectCvc",
            "4000000000000127",
        ],
        brand: "visa",
        last4: "0127",
        behavior: Behavior::Decline,
        error: (
            "incorrect_cvc",
            "incorrect_cvc",
            "Your card's security code is incorrect.",
        ),
    },
];

fn test_card(token: &str) -> Option<&'static TestCard> {
    CARDS.iter().find(|c| c.tokens.contains(&token))
}

/// Whether a string is one of Stripe's magic test PaymentMethod tokens.
pub fn is_test_token(s: &str) -> bool {
    s.starts_with("pm_card_") && test_card(s).is_some()
}

fn card_error(card_internal: &Value) -> ApiError {
    ApiError::card_declined(
        card_internal["decline_code"]
            .as_str()
            .unwrap_or("generic_decline"),
        card_internal["code"].as_str().unwrap_or("card_declined"),
        card_internal["message"]
            .as_str()
            .unwrap_or("Your card was declined."),
    )
}

/// Creates a PaymentMethod object from a test card.
fn create_from_card(state: &mut State, card: &TestCard, now: i64) -> String {
    let id = new_id("pm_");
    let value = json!({
        "id": id,
        "object": "payment_method",
        "allow_redisplay": "unspecified",
        "billing_details": {
            "address": {"city": null, "country": null, "line1": null, "line2": null, "postal_code": null, "state": null},
            "email": null, "name": null, "phone": null, "tax_id": null
        },
        "card": {
            "brand": card.brand,
            "checks": {"address_line1_check": null, "address_postal_code_check": null, "cvc_check": "unchecked"},
            "country": "US",
            "display_brand": card.brand,
            "exp_month": 12,
            "exp_year": 2034,
            "fingerprint": format!("fp{}", card.last4),
            "funding": "credit",
            "generated_from": null,
            "last4": card.last4,
            "networks": {"available": [card.brand], "preferred": null},
            "regulated_status": "unregulated",
            "three_d_secure_usage": {"supported": true},
            "wallet": null
        },
        "created": now,
        "customer": null,
        "customer_account": null,
        "livemode": false,
        "metadata": {},
        "type": "card",
    });
    let behavior = match card.behavior {
        Behavior::Ok => "ok",
        Behavior::FailOnCharge => "fail",
        Behavior::Decline => "decline",
        Behavior::AuthRequired => "auth",
    };
    let internal = json!({
        "behavior": behavior,
        "code": card.error.0,
        "decline_code": card.error.1,
        "message": card.error.2,
    });
    state.store.insert_with(value, internal);
    id
}

/// The behaviour of a stored PaymentMethod.
pub fn behavior(state: &State, pm: &str) -> Behavior {
    match state
        .store
        .entry(pm)
        .map(|e| e.internal["behavior"].as_str().unwrap_or("ok"))
    {
        Some("fail") => Behavior::FailOnCharge,
        Some("decline") => Behavior::Decline,
        Some("auth") => Behavior::AuthRequired,
        _ => Behavior::Ok,
    }
}

/// Checks, without changing anything, that a reference could be attached: it exists and is not declined on attach.
pub fn preflight_attach(state: &State, reference: &str, param: &str) -> ApiResult<()> {
    if let Some(card) = test_card(reference).filter(|_| reference.starts_with("pm_card_")) {
        if card.behavior == Behavior::Decline {
            return Err(
                ApiError::card_declined(card.error.1, card.error.0, card.error.2)
                    .with("param", json!(param)),
            );
        }
        return Ok(());
    }
    let pm = fetch(state, "payment_method", reference, param)?;
    if behavior(state, reference) == Behavior::Decline {
        return Err(card_error(
            &state
                .store
                .entry(reference)
                .map(|e| e.internal.clone())
                .unwrap_or_default(),
        ));
    }
    let _ = pm;
    Ok(())
}

/// Turns a reference into a stored PaymentMethod id, creating one for a test token.
pub fn resolve(state: &mut State, reference: &str, param: &str, now: i64) -> ApiResult<String> {
    if reference.starts_with("pm_card_") {
        if let Some(card) = test_card(reference) {
            return Ok(create_from_card(state, card, now));
        }
    }
    fetch(state, "payment_method", reference, param)?;
    Ok(reference.to_owned())
}

/// Attaches a PaymentMethod to a customer; a card that declines on attach is a 402, as with Stripe.
pub fn attach(state: &mut State, pm: &str, customer: &str, now: i64) -> ApiResult<()> {
    let entry = state
        .store
        .entry(pm)
        .ok_or_else(|| ApiError::no_such("payment_method", pm, "payment_method"))?;
    match entry.value["customer"].as_str() {
        Some(c) if c == customer => return Ok(()),
        Some(_) => {
            return Err(ApiError::invalid(
                "The payment method you provided has already been attached to a customer.",
                Some("payment_method"),
            ))
        }
        None => {}
    }
    if behavior(state, pm) == Behavior::Decline {
        return Err(card_error(&entry.internal));
    }
    let v = state.store.get_mut(pm).expect("checked above");
    v["customer"] = json!(customer);
    let snapshot = v.clone();
    state.emit("payment_method.attached", snapshot, None, now);
    Ok(())
}

/// Resolves a reference for use by a customer: test tokens are created and attached; real ids must already be attached to that customer.
pub fn for_customer(
    state: &mut State,
    reference: &str,
    customer: &str,
    param: &str,
    now: i64,
) -> ApiResult<String> {
    if is_test_token(reference) {
        preflight_attach(state, reference, param)?;
        let id = resolve(state, reference, param, now)?;
        attach(state, &id, customer, now)?;
        return Ok(id);
    }
    let pm = fetch(state, "payment_method", reference, param)?;
    if pm["customer"].as_str() != Some(customer) {
        return Err(ApiError::invalid(
            format!("The customer does not have a payment method with the ID {reference}. The payment method must be attached to the customer."),
            Some(param),
        ));
    }
    Ok(reference.to_owned())
}

/// The card error a charge with this reference (test token or stored id) would produce, without changing anything.
pub fn would_fail(state: &State, reference: &str) -> Option<ApiError> {
    if reference.starts_with("pm_card_") {
        if let Some(card) = test_card(reference) {
            return (card.behavior != Behavior::Ok)
                .then(|| ApiError::card_declined(card.error.1, card.error.0, card.error.2));
        }
    }
    charge_error(state, reference)
}

/// The card error a charge on this PaymentMethod produces, if it fails.
pub fn charge_error(state: &State, pm: &str) -> Option<ApiError> {
    match behavior(state, pm) {
        Behavior::Ok => None,
        _ => Some(card_error(
            &state
                .store
                .entry(pm)
                .map(|e| e.internal.clone())
                .unwrap_or_default(),
        )),
    }
}

const CREATE: &[(&str, Spec)] = &[
    ("type", Spec::Str),
    (
        "card",
        Spec::Obj(&[
            ("token", Spec::Str),
            ("number", Spec::Str),
            ("exp_month", Spec::Int),
            ("exp_year", Spec::Int),
            ("cvc", Spec::Str),
        ]),
    ),
    ("billing_details", Spec::Any),
    ("metadata", Spec::Meta),
    ("allow_redisplay", Spec::Str),
    ("customer", Spec::Str),
    ("payment_method", Spec::Str),
];

/// `POST /v1/payment_methods`: only `type=card` with a test `card[token]` or test `card[number]`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[CREATE])?;
    let p = Params::root(params);
    let now = state.global_now();
    if let Some(reference) = p.nonempty("payment_method") {
        let id = resolve(state, reference, "payment_method", now)?;
        return respond(state, state.store.get(&id).expect("just resolved"), params);
    }
    if p.req("type")? != "card" {
        return Err(ApiError::invalid(
            "The simulator only supports PaymentMethods of type card.",
            Some("type"),
        ));
    }
    let card = params
        .get("card")
        .ok_or_else(|| ApiError::missing_param("card"))?;
    let token = node_str(card, "token")
        .or_else(|| node_str(card, "number"))
        .unwrap_or_default();
    let card = test_card(token).ok_or_else(|| {
        ApiError::card_declined(
            "invalid_number",
            "invalid_number",
            "Your card number is incorrect.",
        )
        .with("param", json!("card[number]"))
    })?;
    let id = create_from_card(state, card, now);
    if let Some(m) = p.metadata("metadata") {
        m.apply(state.store.get_mut(&id).expect("just created"));
    }
    respond(state, state.store.get(&id).expect("just created"), params)
}

/// `GET /v1/payment_methods/{id}`.
pub fn retrieve(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(state, fetch(state, "payment_method", id, "id")?, params)
}

/// `POST /v1/payment_methods/{id}`: metadata and billing details.
pub fn update(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(
        params,
        &[&[
            ("metadata", Spec::Meta),
            ("billing_details", Spec::Any),
            ("allow_redisplay", Spec::Str),
        ]],
    )?;
    let old = fetch(state, "payment_method", id, "id")?.clone();
    let mut new = old.clone();
    if let Some(m) = Params::root(params).metadata("metadata") {
        m.apply(&mut new);
    }
    if let Some(prev) = previous_attributes(&old, &new) {
        *state.store.get_mut(id).expect("fetched") = new.clone();
        let now = state.global_now();
        state.emit("payment_method.updated", new.clone(), Some(prev), now);
    }
    respond(state, &new, params)
}

/// `GET /v1/payment_methods` (and `/v1/customers/{id}/payment_methods`).
pub fn list_all(state: &mut State, params: &Node) -> ApiResult<Value> {
    let customer = Params::root(params).nonempty("customer").map(str::to_owned);
    if let Some(c) = &customer {
        fetch(state, "customer", c, "customer")?;
    }
    list(
        state,
        "payment_method",
        params,
        &[&[("customer", Spec::Str), ("type", Spec::Str)]],
        "/v1/payment_methods",
        |v| customer.as_deref().is_none_or(|c| v["customer"] == c) && v["customer"] != Value::Null,
    )
}

/// `GET /v1/customers/{id}/payment_methods`.
pub fn list_for_customer(state: &mut State, params: &Node, customer: &str) -> ApiResult<Value> {
    fetch(state, "customer", customer, "customer")?;
    let url = format!("/v1/customers/{customer}/payment_methods");
    list(
        state,
        "payment_method",
        params,
        &[&[("type", Spec::Str), ("allow_redisplay", Spec::Str)]],
        &url,
        |v| v["customer"] == customer,
    )
}

/// `POST /v1/payment_methods/{id}/attach`.
pub fn attach_route(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[&[("customer", Spec::Str)]])?;
    let customer = Params::root(params).req("customer")?.to_owned();
    super::customer::live_customer(state, &customer, "customer")?;
    let now = state.now_for_customer(&customer);
    preflight_attach(state, id, "payment_method")?;
    let pm = resolve(state, id, "id", now)?;
    attach(state, &pm, &customer, now)?;
    respond(state, state.store.get(&pm).expect("attached"), params)
}

/// `POST /v1/payment_methods/{id}/detach`.
pub fn detach(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    let old = fetch(state, "payment_method", id, "id")?.clone();
    let Some(customer) = old["customer"].as_str().map(str::to_owned) else {
        return Err(ApiError::invalid("The payment method you provided is not attached to a customer so detachment is impossible.", None));
    };
    let now = state.now_for_customer(&customer);
    let v = state.store.get_mut(id).expect("fetched");
    v["customer"] = Value::Null;
    let new = v.clone();
    if let Some(c) = state.store.get_mut(&customer) {
        if c["invoice_settings"]["default_payment_method"] == id {
            let before = c.clone();
            c["invoice_settings"]["default_payment_method"] = Value::Null;
            let after = c.clone();
            state.emit(
                "customer.updated",
                after.clone(),
                previous_attributes(&before, &after),
                now,
            );
        }
    }
    state.emit(
        "payment_method.detached",
        new.clone(),
        Some(json!({ "customer": customer })),
        now,
    );
    respond(state, &new, params)
}
