//! Billing Portal: configurations (create, retrieve, update, list), sessions (create only, as in Stripe), and the
//! simulator's steps for what a customer does in the portal (update the card, cancel a subscription).

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{validate, Params, Spec};
use crate::resources::billing::{self, cancel_subscription, update_sub};
use crate::resources::{customer, fetch, list, payment_method, respond};
use crate::state::{previous_attributes, State};
use crate::store::new_id;

/// How long a portal session's URL stays usable. Stripe documents sessions as short-lived without a figure; five
/// minutes of the customer's simulated clock.
pub const SESSION_LIFETIME_SECS: i64 = 300;

const BUSINESS_PROFILE: Spec = Spec::Obj(&[
    ("headline", Spec::Str),
    ("privacy_policy_url", Spec::Str),
    ("terms_of_service_url", Spec::Str),
]);

const CANCELLATION_REASON: Spec = Spec::Obj(&[
    ("enabled", Spec::Bool),
    ("options", Spec::Arr(&Spec::Str)),
    ("feedback_options", Spec::Arr(&Spec::Str)),
]);

const FEATURES: Spec = Spec::Obj(&[
    (
        "customer_update",
        Spec::Obj(&[
            ("enabled", Spec::Bool),
            ("allowed_updates", Spec::Arr(&Spec::Str)),
        ]),
    ),
    ("invoice_history", Spec::Obj(&[("enabled", Spec::Bool)])),
    (
        "payment_method_update",
        Spec::Obj(&[
            ("enabled", Spec::Bool),
            ("payment_method_configuration", Spec::Str),
        ]),
    ),
    (
        "subscription_cancel",
        Spec::Obj(&[
            ("enabled", Spec::Bool),
            ("mode", Spec::Str),
            ("proration_behavior", Spec::Str),
            ("cancellation_reason", CANCELLATION_REASON),
        ]),
    ),
    (
        "subscription_update",
        Spec::Obj(&[
            ("enabled", Spec::Bool),
            ("default_allowed_updates", Spec::Arr(&Spec::Str)),
            ("proration_behavior", Spec::Str),
            ("billing_cycle_anchor", Spec::Str),
            ("products", Spec::Any),
            ("schedule_at_period_end", Spec::Any),
            ("trial_update_behavior", Spec::Str),
        ]),
    ),
]);

const CONFIG_COMMON: &[(&str, Spec)] = &[
    ("business_profile", BUSINESS_PROFILE),
    ("default_return_url", Spec::Str),
    ("features", FEATURES),
    ("login_page", Spec::Obj(&[("enabled", Spec::Bool)])),
    ("metadata", Spec::Meta),
    ("name", Spec::Str),
];
const CONFIG_UPDATE_ONLY: &[(&str, Spec)] = &[("active", Spec::Bool)];

const CANCEL_MODES: &[&str] = &["at_period_end", "immediately"];
const PRORATIONS: &[&str] = &["always_invoice", "create_prorations", "none"];
const ALLOWED_UPDATES: &[&str] = &["address", "email", "name", "phone", "shipping", "tax_id"];
const REASON_OPTIONS: &[&str] = &[
    "customer_service",
    "low_quality",
    "missing_features",
    "other",
    "switched_service",
    "too_complex",
    "too_expensive",
    "unused",
];
const SUB_UPDATES: &[&str] = &["price", "promotion_code", "quantity"];
const ANCHORS: &[&str] = &["now", "unchanged"];
const TRIAL_UPDATE: &[&str] = &["continue_trial", "end_trial"];
const FEATURE_NAMES: &[&str] = &[
    "customer_update",
    "invoice_history",
    "payment_method_update",
    "subscription_cancel",
    "subscription_update",
];

/// A configuration with every feature off, as Stripe renders one created with empty `features`.
fn blank_configuration(id: &str, now: i64, is_default: bool) -> Value {
    json!({
        "id": id,
        "object": "billing_portal.configuration",
        "active": true,
        "application": null,
        "business_profile": {"headline": null, "privacy_policy_url": null, "terms_of_service_url": null},
        "created": now,
        "default_return_url": null,
        "features": {
            "customer_update": {"allowed_updates": [], "enabled": false},
            "invoice_history": {"enabled": false},
            "payment_method_update": {"enabled": false, "payment_method_configuration": null},
            "subscription_cancel": {
                "cancellation_reason": {"enabled": false, "feedback_options": null, "options": []},
                "enabled": false,
                "mode": "at_period_end",
                "proration_behavior": "none",
            },
            "subscription_update": {
                "billing_cycle_anchor": null,
                "default_allowed_updates": [],
                "enabled": false,
                "products": [],
                "proration_behavior": "none",
                "schedule_at_period_end": {"conditions": []},
                "trial_update_behavior": "end_trial",
            },
        },
        "is_default": is_default,
        "livemode": false,
        "login_page": {"enabled": false, "url": null},
        "metadata": {},
        "name": null,
        "updated": now,
    })
}

fn strings_in(node: &Node, param: &str, allowed: &[&str]) -> ApiResult<Vec<String>> {
    let mut out = Vec::new();
    for (i, n) in node.elements() {
        let s = n.as_str().unwrap_or_default();
        if !allowed.contains(&s) {
            return Err(ApiError::invalid_enum(&format!("{param}[{i}]"), allowed));
        }
        out.push(s.to_owned());
    }
    Ok(out)
}

fn set_bool(target: &mut Value, p: &Params, key: &str, required: bool) -> ApiResult<()> {
    match p.bool(key) {
        Some(b) => target[key] = json!(b),
        None if required => return Err(ApiError::missing_param(&p.name(key))),
        None => {}
    }
    Ok(())
}

/// Applies `features[...]` to a configuration; on create each feature hash sent must say `enabled`.
fn apply_features(cfg: &mut Value, params: &Node, creating: bool) -> ApiResult<()> {
    let Some(features) = params.get("features") else {
        return Ok(());
    };
    for name in FEATURE_NAMES {
        let Some(node) = features.get(name) else {
            continue;
        };
        let prefix = format!("features[{name}]");
        let p = Params {
            node,
            prefix: &prefix,
        };
        let f = &mut cfg["features"][*name];
        // `subscription_cancel`, `customer_update` and `subscription_update` may leave `enabled` out on update only.
        set_bool(
            f,
            &p,
            "enabled",
            creating || matches!(*name, "invoice_history" | "payment_method_update"),
        )?;
        match *name {
            "customer_update" => {
                if let Some(n) = p.get("allowed_updates") {
                    f["allowed_updates"] =
                        json!(strings_in(n, &p.name("allowed_updates"), ALLOWED_UPDATES)?);
                }
                if f["enabled"] == true && f["allowed_updates"].as_array().is_none_or(Vec::is_empty)
                {
                    return Err(ApiError::invalid(
                        "You must specify at least one value for `allowed_updates` when enabling `customer_update`.",
                        Some(&p.name("allowed_updates")),
                    ));
                }
            }
            "payment_method_update" => {
                if let Some(s) = p.str("payment_method_configuration") {
                    f["payment_method_configuration"] =
                        if s.is_empty() { Value::Null } else { json!(s) };
                }
            }
            "subscription_cancel" => {
                if let Some(m) = p.one_of("mode", CANCEL_MODES)? {
                    f["mode"] = json!(m);
                }
                if let Some(b) = p.one_of("proration_behavior", PRORATIONS)? {
                    f["proration_behavior"] = json!(b);
                }
                if let Some(r) = node.get("cancellation_reason") {
                    let rp = format!("{prefix}[cancellation_reason]");
                    let rparams = Params {
                        node: r,
                        prefix: &rp,
                    };
                    let target = &mut f["cancellation_reason"];
                    set_bool(target, &rparams, "enabled", true)?;
                    if let Some(o) = r.get("options") {
                        target["options"] =
                            json!(strings_in(o, &rparams.name("options"), REASON_OPTIONS)?);
                    } else if creating {
                        return Err(ApiError::missing_param(&rparams.name("options")));
                    }
                    if let Some(o) = r.get("feedback_options") {
                        let list: Vec<String> = o
                            .elements()
                            .into_iter()
                            .filter_map(|(_, n)| n.as_str().map(str::to_owned))
                            .collect();
                        target["feedback_options"] = json!(list);
                    }
                }
            }
            "subscription_update" => {
                if let Some(n) = p.get("default_allowed_updates") {
                    f["default_allowed_updates"] = json!(strings_in(
                        n,
                        &p.name("default_allowed_updates"),
                        SUB_UPDATES
                    )?);
                }
                if let Some(b) = p.one_of("proration_behavior", PRORATIONS)? {
                    f["proration_behavior"] = json!(b);
                }
                if let Some(a) = p.one_of("billing_cycle_anchor", ANCHORS)? {
                    f["billing_cycle_anchor"] = json!(a);
                }
                if let Some(t) = p.one_of("trial_update_behavior", TRIAL_UPDATE)? {
                    f["trial_update_behavior"] = json!(t);
                }
                if let Some(n) = p.get("products") {
                    f["products"] = products(n)?;
                }
            }
            _ => {}
        }
    }
    Ok(())
}

fn products(node: &Node) -> ApiResult<Value> {
    let mut out = Vec::new();
    for (i, n) in node.elements() {
        let name = format!("features[subscription_update][products][{i}]");
        let product = n
            .get("product")
            .and_then(Node::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::missing_param(&format!("{name}[product]")))?;
        let prices: Vec<String> = n
            .get("prices")
            .map(|p| {
                p.elements()
                    .into_iter()
                    .filter_map(|(_, x)| x.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        if prices.is_empty() {
            return Err(ApiError::missing_param(&format!("{name}[prices]")));
        }
        out.push(json!({
            "adjustable_quantity": {"enabled": false, "maximum": null, "minimum": 1},
            "prices": prices,
            "product": product,
        }));
    }
    Ok(Value::Array(out))
}

fn apply_common(cfg: &mut Value, params: &Node, creating: bool) -> ApiResult<()> {
    let p = Params::root(params);
    if let Some(bp) = params.get("business_profile") {
        for key in ["headline", "privacy_policy_url", "terms_of_service_url"] {
            if let Some(s) = bp.get(key).and_then(Node::as_str) {
                cfg["business_profile"][key] = if s.is_empty() { Value::Null } else { json!(s) };
            }
        }
    }
    for key in ["default_return_url", "name"] {
        if let Some(s) = p.str(key) {
            if key == "default_return_url" && !s.is_empty() {
                check_url(s, key)?;
            }
            cfg[key] = if s.is_empty() { Value::Null } else { json!(s) };
        }
    }
    if let Some(lp) = params.get("login_page") {
        let lp_params = Params {
            node: lp,
            prefix: "login_page",
        };
        set_bool(&mut cfg["login_page"], &lp_params, "enabled", true)?;
        let id = cfg["id"].as_str().unwrap_or_default().to_owned();
        cfg["login_page"]["url"] = if cfg["login_page"]["enabled"] == true {
            json!(format!("https://billing.stripe.com/p/login/test_{id}"))
        } else {
            Value::Null
        };
    }
    if let Some(m) = p.metadata("metadata") {
        m.apply(cfg);
    }
    apply_features(cfg, params, creating)
}

fn check_url(url: &str, param: &str) -> ApiResult<()> {
    if url.starts_with("http://") || url.starts_with("https://") {
        return Ok(());
    }
    Err(ApiError::invalid(
        format!("Not a valid URL: {url}"),
        Some(param),
    ))
}

/// `POST /v1/billing_portal/configurations`.
pub fn create_configuration(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[CONFIG_COMMON])?;
    if !Params::root(params).has("features") {
        return Err(ApiError::missing_param("features"));
    }
    let now = state.global_now();
    let id = new_id("bpc_");
    let mut cfg = blank_configuration(&id, now, false);
    apply_common(&mut cfg, params, true)?;
    state.store.insert(cfg.clone());
    state.emit("billing_portal.configuration.created", cfg, None, now);
    respond(state, state.store.get(&id).expect("just inserted"), params)
}

/// `GET /v1/billing_portal/configurations/{id}`.
pub fn retrieve_configuration(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[])?;
    respond(
        state,
        fetch(state, "billing_portal.configuration", id, "configuration")?,
        params,
    )
}

/// `POST /v1/billing_portal/configurations/{id}`.
pub fn update_configuration(state: &mut State, params: &Node, id: &str) -> ApiResult<Value> {
    validate(params, &[CONFIG_COMMON, CONFIG_UPDATE_ONLY])?;
    let old = fetch(state, "billing_portal.configuration", id, "configuration")?.clone();
    let mut new = old.clone();
    if let Some(a) = Params::root(params).bool("active") {
        if !a && old["is_default"] == true {
            return Err(ApiError::invalid(
                "You cannot deactivate the default configuration.",
                Some("active"),
            ));
        }
        new["active"] = json!(a);
    }
    apply_common(&mut new, params, false)?;
    if let Some(mut prev) = previous_attributes(&old, &new) {
        let now = state.global_now();
        new["updated"] = json!(now);
        if let Some(p) = prev.as_object_mut() {
            p.insert("updated".into(), old["updated"].clone());
        }
        *state.store.get_mut(id).expect("fetched") = new.clone();
        state.emit("billing_portal.configuration.updated", new, Some(prev), now);
    }
    respond(state, state.store.get(id).expect("fetched"), params)
}

/// `GET /v1/billing_portal/configurations`.
pub fn list_configurations(state: &mut State, params: &Node) -> ApiResult<Value> {
    let p = Params::root(params);
    let active = p.bool("active");
    let is_default = p.bool("is_default");
    list(
        state,
        "billing_portal.configuration",
        params,
        &[&[("active", Spec::Bool), ("is_default", Spec::Bool)]],
        "/v1/billing_portal/configurations",
        |v| {
            active.is_none_or(|a| v["active"] == a)
                && is_default.is_none_or(|d| v["is_default"] == d)
        },
    )
}

/// The default configuration, and whether it is new: made on first use with the features Stripe's dashboard
/// starts with (stored by the caller once the request is known to succeed).
fn default_configuration(state: &State) -> (Value, bool) {
    if let Some(c) = state
        .store
        .values("billing_portal.configuration")
        .find(|c| c["is_default"] == true)
    {
        return (c.clone(), false);
    }
    let now = state.global_now();
    let mut cfg = blank_configuration(&new_id("bpc_"), now, true);
    let f = &mut cfg["features"];
    f["customer_update"] = json!({"allowed_updates": ["email", "address"], "enabled": true});
    f["invoice_history"]["enabled"] = json!(true);
    f["payment_method_update"]["enabled"] = json!(true);
    f["subscription_cancel"]["enabled"] = json!(true);
    (cfg, true)
}

const FLOW_DATA: Spec = Spec::Obj(&[
    ("type", Spec::Str),
    (
        "after_completion",
        Spec::Obj(&[
            ("type", Spec::Str),
            ("redirect", Spec::Obj(&[("return_url", Spec::Str)])),
            (
                "hosted_confirmation",
                Spec::Obj(&[("custom_message", Spec::Str)]),
            ),
        ]),
    ),
    (
        "subscription_cancel",
        Spec::Obj(&[("subscription", Spec::Str), ("retention", Spec::Any)]),
    ),
    (
        "subscription_update",
        Spec::Obj(&[("subscription", Spec::Str)]),
    ),
    (
        "subscription_update_confirm",
        Spec::Obj(&[
            ("subscription", Spec::Str),
            (
                "items",
                Spec::Arr(&Spec::Obj(&[
                    ("id", Spec::Str),
                    ("price", Spec::Str),
                    ("quantity", Spec::Int),
                ])),
            ),
            ("discounts", Spec::Any),
        ]),
    ),
]);

const SESSION_CREATE: &[(&str, Spec)] = &[
    ("customer", Spec::Str),
    ("configuration", Spec::Str),
    ("return_url", Spec::Str),
    ("flow_data", FLOW_DATA),
    ("locale", Spec::Str),
    ("on_behalf_of", Spec::Str),
    ("customer_account", Spec::Str),
];

const FLOW_TYPES: &[&str] = &[
    "payment_method_update",
    "subscription_cancel",
    "subscription_update",
    "subscription_update_confirm",
];
const AFTER_TYPES: &[&str] = &["hosted_confirmation", "portal_homepage", "redirect"];
const LOCALES: &[&str] = &[
    "auto", "bg", "cs", "da", "de", "el", "en", "en-AU", "en-CA", "en-GB", "en-IE", "en-IN",
    "en-NZ", "en-SG", "es", "es-419", "et", "fi", "fil", "fr", "fr-CA", "hr", "hu", "id", "it",
    "ja", "ko", "lt", "lv", "ms", "mt", "nb", "nl", "pl", "pt", "pt-BR", "ro", "ru", "sk", "sl",
    "sv", "th", "tr", "vi", "zh", "zh-HK", "zh-TW",
];

fn feature_enabled(cfg: &Value, feature: &str) -> bool {
    cfg["features"][feature]["enabled"] == true
}

/// A live subscription of the customer, named by `param` (a flow's target).
fn customers_subscription<'a>(
    state: &'a State,
    customer: &str,
    id: &str,
    param: &str,
) -> ApiResult<&'a Value> {
    let sub = fetch(state, "subscription", id, param)?;
    if sub["customer"] != customer {
        return Err(ApiError::invalid(
            format!("The subscription {id} does not belong to the customer {customer}."),
            Some(param),
        ));
    }
    if billing::is_terminal(sub) {
        return Err(ApiError::invalid(
            format!(
                "The subscription {id} has a status of `{}` and can no longer be changed in the portal.",
                sub["status"].as_str().unwrap_or_default()
            ),
            Some(param),
        ));
    }
    Ok(sub)
}

fn disabled(feature: &str, flow: &str) -> ApiError {
    ApiError::invalid(
        format!("You cannot create a portal session with a `{flow}` flow because the portal configuration does not have the `features[{feature}]` feature enabled."),
        Some("flow_data[type]"),
    )
}

/// The `flow` of a session from `flow_data`, checked against the customer and the configuration.
fn build_flow(state: &State, flow: &Node, customer: &str, cfg: &Value) -> ApiResult<Value> {
    let p = Params {
        node: flow,
        prefix: "flow_data",
    };
    let kind = match p.req("type")? {
        t if FLOW_TYPES.contains(&t) => t,
        _ => return Err(ApiError::invalid_enum("flow_data[type]", FLOW_TYPES)),
    };
    let mut out = json!({
        "after_completion": {"hosted_confirmation": null, "redirect": null, "type": "portal_homepage"},
        "customer_update": null,
        "subscription_cancel": null,
        "subscription_update": null,
        "subscription_update_confirm": null,
        "type": kind,
    });
    if let Some(ac) = flow.get("after_completion") {
        let acp = Params {
            node: ac,
            prefix: "flow_data[after_completion]",
        };
        let t = match acp.req("type")? {
            t if AFTER_TYPES.contains(&t) => t,
            _ => {
                return Err(ApiError::invalid_enum(
                    "flow_data[after_completion][type]",
                    AFTER_TYPES,
                ))
            }
        };
        out["after_completion"]["type"] = json!(t);
        match t {
            "redirect" => {
                let url = ac
                    .get("redirect")
                    .and_then(|r| r.get("return_url"))
                    .and_then(Node::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| {
                        ApiError::missing_param("flow_data[after_completion][redirect][return_url]")
                    })?;
                check_url(url, "flow_data[after_completion][redirect][return_url]")?;
                out["after_completion"]["redirect"] = json!({ "return_url": url });
            }
            "hosted_confirmation" => {
                let msg = ac
                    .get("hosted_confirmation")
                    .and_then(|h| h.get("custom_message"))
                    .and_then(Node::as_str)
                    .filter(|s| !s.is_empty());
                out["after_completion"]["hosted_confirmation"] = json!({ "custom_message": msg });
            }
            _ => {}
        }
    }
    let target = |key: &str| -> ApiResult<String> {
        let param = format!("flow_data[{key}][subscription]");
        let id = flow
            .get(key)
            .and_then(|n| n.get("subscription"))
            .and_then(Node::as_str)
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::missing_param(&param))?;
        customers_subscription(state, customer, id, &param)?;
        Ok(id.to_owned())
    };
    match kind {
        "payment_method_update" => {
            if !feature_enabled(cfg, "payment_method_update") {
                return Err(disabled("payment_method_update", kind));
            }
        }
        "subscription_cancel" => {
            let sub = target("subscription_cancel")?;
            if !feature_enabled(cfg, "subscription_cancel") {
                return Err(disabled("subscription_cancel", kind));
            }
            if state
                .store
                .get(&sub)
                .is_some_and(|s| s["cancel_at_period_end"] == true)
            {
                return Err(ApiError::invalid(
                    format!("The subscription {sub} is already set to be canceled at the end of its period."),
                    Some("flow_data[subscription_cancel][subscription]"),
                ));
            }
            out["subscription_cancel"] = json!({ "retention": null, "subscription": sub });
        }
        "subscription_update" => {
            let sub = target("subscription_update")?;
            if !feature_enabled(cfg, "subscription_update") {
                return Err(disabled("subscription_update", kind));
            }
            out["subscription_update"] = json!({ "subscription": sub });
        }
        _ => {
            let sub = target("subscription_update_confirm")?;
            if !feature_enabled(cfg, "subscription_update") {
                return Err(disabled("subscription_update", kind));
            }
            let node = flow
                .get("subscription_update_confirm")
                .expect("target found it");
            let mut items = Vec::new();
            for (i, item) in node.get("items").map(Node::elements).unwrap_or_default() {
                let name = format!("flow_data[subscription_update_confirm][items][{i}]");
                let id = item
                    .get("id")
                    .and_then(Node::as_str)
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| ApiError::missing_param(&format!("{name}[id]")))?;
                let price = item
                    .get("price")
                    .and_then(Node::as_str)
                    .filter(|s| !s.is_empty());
                if let Some(pr) = price {
                    fetch(state, "price", pr, &format!("{name}[price]"))?;
                }
                let mut v = json!({ "id": id, "price": price });
                if let Some(q) = item
                    .get("quantity")
                    .and_then(Node::as_str)
                    .and_then(|q| q.parse::<i64>().ok())
                {
                    v["quantity"] = json!(q);
                }
                items.push(v);
            }
            if items.is_empty() {
                return Err(ApiError::missing_param(
                    "flow_data[subscription_update_confirm][items]",
                ));
            }
            out["subscription_update_confirm"] =
                json!({ "discounts": [], "items": items, "subscription": sub });
        }
    }
    Ok(out)
}

/// `POST /v1/billing_portal/sessions`.
pub fn create_session(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[SESSION_CREATE])?;
    let p = Params::root(params);
    if p.has("customer_account") {
        return Err(ApiError::invalid(
            "The simulator does not support Accounts v2 customers; pass `customer`.",
            Some("customer_account"),
        ));
    }
    let customer = p.req("customer")?.to_owned();
    customer::live_customer(state, &customer, "customer")?;
    let locale = p.one_of("locale", LOCALES)?;
    let (cfg, new_default) = match p.nonempty("configuration") {
        Some(c) => {
            let cfg = fetch(state, "billing_portal.configuration", c, "configuration")?;
            if cfg["active"] != true {
                return Err(ApiError::invalid(
                    format!("The configuration {c} is not active. Activate it or use another configuration."),
                    Some("configuration"),
                ));
            }
            (cfg.clone(), false)
        }
        None => default_configuration(state),
    };
    let return_url = match p.nonempty("return_url") {
        Some(u) => {
            check_url(u, "return_url")?;
            Some(u.to_owned())
        }
        None => cfg["default_return_url"].as_str().map(str::to_owned),
    };
    let flow = match params.get("flow_data") {
        Some(f @ Node::Map(_)) => build_flow(state, f, &customer, &cfg)?,
        _ => Value::Null,
    };
    if new_default {
        let created = cfg["created"].as_i64().unwrap_or_default();
        state.store.insert(cfg.clone());
        state.emit(
            "billing_portal.configuration.created",
            cfg.clone(),
            None,
            created,
        );
    }
    let now = state.now_for_customer(&customer);
    let id = new_id("bps_");
    let url = format!("{}/_sim/billing_portal/sessions/{id}", state.base_url);
    let v = json!({
        "id": id,
        "object": "billing_portal.session",
        "configuration": cfg["id"],
        "created": now,
        "customer": customer,
        "customer_account": null,
        "flow": flow,
        "livemode": false,
        "locale": locale,
        "on_behalf_of": p.nonempty("on_behalf_of"),
        "return_url": return_url,
        "url": url,
    });
    state.store.insert_with(
        v.clone(),
        json!({ "expires_at": now + SESSION_LIFETIME_SECS }),
    );
    state.emit("billing_portal.session.created", v, None, now);
    respond(state, state.store.get(&id).expect("just inserted"), params)
}

/// Whether a portal session is still usable, by its customer's clock.
pub fn session_state(state: &State, id: &str) -> Option<(Value, bool)> {
    let entry = state.store.entry(id)?;
    if entry.value["object"] != "billing_portal.session" {
        return None;
    }
    let customer = entry.value["customer"].as_str().unwrap_or_default();
    let expires = entry.internal["expires_at"].as_i64().unwrap_or(0);
    let live = state.now_for_customer(customer) < expires;
    Some((entry.value.clone(), live))
}

fn usable_session(state: &State, id: &str) -> ApiResult<(Value, Value)> {
    let (session, live) = session_state(state, id)
        .ok_or_else(|| ApiError::no_such("billing_portal.session", id, "id"))?;
    if !live {
        return Err(ApiError::invalid_code(
            "session_expired",
            "This portal session has expired. Create a new session for the customer.",
            None,
        ));
    }
    let cfg = session["configuration"]
        .as_str()
        .and_then(|c| state.store.get(c))
        .cloned()
        .unwrap_or_default();
    Ok((session, cfg))
}

/// `POST /_sim/billing_portal/sessions/{id}/payment_method`: the customer enters a new card in the portal. It is
/// attached, made the customer's default and the default of each of the customer's live subscriptions.
pub fn update_payment_method(state: &mut State, id: &str, pm_ref: &str) -> ApiResult<Value> {
    let (session, cfg) = usable_session(state, id)?;
    if !feature_enabled(&cfg, "payment_method_update") {
        return Err(ApiError::invalid(
            "The portal configuration of this session does not allow updating payment methods.",
            None,
        ));
    }
    let customer = session["customer"].as_str().unwrap_or_default().to_owned();
    customer::live_customer(state, &customer, "customer")?;
    let now = state.now_for_customer(&customer);
    let pm = payment_method::for_customer(state, pm_ref, &customer, "payment_method", now)?;
    customer::set_default_pm(state, &customer, Some(pm.clone()), now);
    let subs: Vec<String> = state
        .store
        .values("subscription")
        .filter(|s| s["customer"] == customer.as_str() && !billing::is_terminal(s))
        .filter_map(|s| s["id"].as_str().map(str::to_owned))
        .collect();
    for s in &subs {
        update_sub(state, s, now, "customer.subscription.updated", |v| {
            v["default_payment_method"] = json!(pm)
        });
    }
    Ok(json!({
        "object": "sim.billing_portal.payment_method_update",
        "session": id,
        "customer": customer,
        "payment_method": state.store.get(&pm).cloned(),
        "subscriptions": subs,
    }))
}

/// `POST /_sim/billing_portal/sessions/{id}/cancel`: the customer cancels a subscription in the portal, now or at
/// the period's end as the configuration says.
pub fn cancel(state: &mut State, id: &str, subscription: Option<&str>) -> ApiResult<Value> {
    let (session, cfg) = usable_session(state, id)?;
    if !feature_enabled(&cfg, "subscription_cancel") {
        return Err(ApiError::invalid(
            "The portal configuration of this session does not allow canceling subscriptions.",
            None,
        ));
    }
    let customer = session["customer"].as_str().unwrap_or_default().to_owned();
    let sub = subscription
        .map(str::to_owned)
        .or_else(|| {
            session["flow"]["subscription_cancel"]["subscription"]
                .as_str()
                .map(str::to_owned)
        })
        .ok_or_else(|| ApiError::missing_param("subscription"))?;
    customers_subscription(state, &customer, &sub, "subscription")?;
    let now = state.now_for_customer(&customer);
    match cfg["features"]["subscription_cancel"]["mode"].as_str() {
        Some("immediately") => cancel_subscription(state, &sub, now, "cancellation_requested"),
        _ => update_sub(state, &sub, now, "customer.subscription.updated", |s| {
            s["cancel_at_period_end"] = json!(true);
            s["cancel_at"] = Value::Null;
            s["canceled_at"] = json!(now);
            s["cancellation_details"]["reason"] = json!("cancellation_requested");
        }),
    }
    Ok(state.store.get(&sub).cloned().unwrap_or_default())
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page at a session's `url`: the portal while the session lives, an expired page after (HTTP status, HTML).
pub fn page(state: &State, id: &str) -> (u16, String) {
    let doc = |title: &str, body: String| {
        format!("<!doctype html><html><head><meta charset=\"utf-8\"><title>{title}</title></head><body><h1>{title}</h1>{body}</body></html>")
    };
    let Some((session, live)) = session_state(state, id) else {
        return (
            404,
            doc(
                "Portal session not found",
                "<p>This link is not valid.</p>".into(),
            ),
        );
    };
    if !live {
        return (
            410,
            doc(
                "This portal session has expired",
                "<p>Portal links are short-lived. Return to the site and open the billing portal again.</p>".into(),
            ),
        );
    }
    let customer = session["customer"].as_str().unwrap_or_default();
    let mut body = format!(
        "<p data-customer=\"{}\">Customer {}</p>",
        escape(customer),
        escape(customer)
    );
    if let Some(kind) = session["flow"]["type"].as_str() {
        body.push_str(&format!(
            "<p data-flow=\"{}\">Flow: {}</p>",
            escape(kind),
            escape(kind)
        ));
    }
    if let Some(r) = session["return_url"].as_str() {
        body.push_str(&format!("<p><a href=\"{}\">Return</a></p>", escape(r)));
    }
    (200, doc("Billing portal (stripe-sim)", body))
}
