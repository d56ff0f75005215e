//! `POST /v1/subscriptions`: validation first, then a subscription whose status follows its `payment_behavior`, trial and payment method.

use serde_json::{json, Value};

use super::{
    check_price, item_json, parse_trial_end, BEHAVIORS, COMMON, CREATE_ONLY, MISSING_PM, SAVE_PM,
};
use crate::clock::period_boundary;
use crate::error::{ApiError, ApiResult};
use crate::form::Node;
use crate::params::{node_int, node_str, validate, Params};
use crate::resources::billing::{attempt_payment, create_invoice, finalize_invoice};
use crate::resources::{fetch, payment_method, price, respond};
use crate::state::State;
use crate::store::new_id;

/// Where an item's price comes from, checked before anything is created.
enum PriceSource<'a> {
    Existing(Value),
    Inline(&'a Node, String, String),
}

fn check_items<'a>(
    state: &State,
    p: &Params<'a>,
) -> ApiResult<Vec<(PriceSource<'a>, i64, &'a Node)>> {
    let mut out = Vec::new();
    for (name, node) in p.array("items") {
        let qty = node_int(node, "quantity").unwrap_or(1);
        if qty < 0 {
            return Err(ApiError::invalid(
                "This value must be greater than or equal to 0.",
                Some(&format!("{name}[quantity]")),
            ));
        }
        let source = match (node_str(node, "price"), node.get("price_data")) {
            (Some(id), None) => PriceSource::Existing(check_price(state, id, &format!("{name}[price]"))?),
            (None, Some(pd)) => {
                let prefix = format!("{name}[price_data]");
                let product = node_str(pd, "product").ok_or_else(|| ApiError::missing_param(&format!("{prefix}[product]")))?;
                fetch(state, "product", product, &format!("{prefix}[product]"))?;
                if pd.get("recurring").is_none() {
                    return Err(ApiError::missing_param(&format!("{prefix}[recurring]")));
                }
                PriceSource::Inline(pd, prefix, product.to_owned())
            }
            (Some(_), Some(_)) => {
                return Err(ApiError::invalid_code(
                    "parameters_exclusive",
                    format!("You may only specify one of these parameters: {name}[price], {name}[price_data]."),
                    Some(&format!("{name}[price]")),
                ))
            }
            (None, None) => return Err(ApiError::missing_param(&format!("{name}[price]"))),
        };
        out.push((source, qty, node));
    }
    Ok(out)
}

/// `POST /v1/subscriptions`.
pub fn create(state: &mut State, params: &Node) -> ApiResult<Value> {
    validate(params, &[COMMON, CREATE_ONLY])?;
    let p = Params::root(params);
    let customer = p.req("customer")?.to_owned();
    let cust = crate::resources::customer::live_customer(state, &customer, "customer")?;
    if !p.has("items") {
        return Err(ApiError::missing_param("items"));
    }
    let items = check_items(state, &p)?;
    if items.is_empty() {
        return Err(ApiError::missing_param("items"));
    }
    let behavior = p
        .one_of("payment_behavior", BEHAVIORS)?
        .unwrap_or("allow_incomplete");
    if behavior == "pending_if_incomplete" {
        return Err(ApiError::invalid(
            "payment_behavior=pending_if_incomplete is only supported when updating a subscription.",
            Some("payment_behavior"),
        ));
    }
    let missing = p
        .path_str(&["trial_settings", "end_behavior", "missing_payment_method"])
        .filter(|s| !s.is_empty());
    if missing.is_some_and(|m| !MISSING_PM.contains(&m)) {
        return Err(ApiError::invalid_enum(
            "trial_settings[end_behavior][missing_payment_method]",
            MISSING_PM,
        ));
    }
    let save = p
        .path_str(&["payment_settings", "save_default_payment_method"])
        .filter(|s| !s.is_empty());
    if save.is_some_and(|m| !SAVE_PM.contains(&m)) {
        return Err(ApiError::invalid_enum(
            "payment_settings[save_default_payment_method]",
            SAVE_PM,
        ));
    }
    if let Some(m) = p.nonempty("collection_method") {
        if m != "charge_automatically" {
            return Err(ApiError::invalid(
                "The simulator only supports collection_method=charge_automatically.",
                Some("collection_method"),
            ));
        }
    }
    let now = state.now_for_customer(&customer);
    let trial_end = match p.int("trial_period_days") {
        Some(d) if d < 0 => {
            return Err(ApiError::invalid(
                "This value must be greater than or equal to 0.",
                Some("trial_period_days"),
            ))
        }
        Some(d) if d > 730 => {
            return Err(ApiError::invalid(
                "This value must be less than or equal to 730.",
                Some("trial_period_days"),
            ))
        }
        Some(0) | None => parse_trial_end(&p, now)?,
        Some(d) => Some(now + d * 86_400),
    };
    let dpm_ref = p.nonempty("default_payment_method");
    if let Some(r) = dpm_ref {
        if payment_method::is_test_token(r) {
            payment_method::preflight_attach(state, r, "default_payment_method")?;
        } else {
            let pm = fetch(state, "payment_method", r, "default_payment_method")?;
            if pm["customer"] != customer.as_str() {
                return Err(ApiError::invalid(
                    format!("The customer does not have a payment method with the ID {r}. The payment method must be attached to the customer."),
                    Some("default_payment_method"),
                ));
            }
        }
    }
    let currencies: Vec<String> = items
        .iter()
        .map(|(s, _, _)| match s {
            PriceSource::Existing(v) => v["currency"].as_str().unwrap_or_default().to_owned(),
            PriceSource::Inline(n, _, _) => {
                node_str(n, "currency").unwrap_or_default().to_lowercase()
            }
        })
        .collect();
    if currencies.iter().any(|c| *c != currencies[0]) {
        return Err(ApiError::invalid(
            "All prices on a subscription must have the same `currency`.",
            Some("items"),
        ));
    }
    let amount: i64 = items
        .iter()
        .map(|(s, q, _)| match s {
            PriceSource::Existing(v) => v["unit_amount"].as_i64().unwrap_or(0) * q,
            PriceSource::Inline(n, _, _) => node_int(n, "unit_amount").unwrap_or(0) * q,
        })
        .sum();
    let cust_default = cust["invoice_settings"]["default_payment_method"]
        .as_str()
        .map(str::to_owned);
    let charge_ref = dpm_ref.map(str::to_owned).or(cust_default);
    let due_now = trial_end.is_none() && amount > 0;
    let status = if trial_end.is_some() {
        "trialing"
    } else if !due_now {
        "active"
    } else {
        match (behavior, &charge_ref) {
            ("default_incomplete", _) => "incomplete",
            ("error_if_incomplete", None) => {
                return Err(ApiError::invalid_code(
                    "resource_missing",
                    "This customer has no attached payment source or default payment method. Please consider adding a default payment method. For more information, visit https://docs.stripe.com/billing/subscriptions/payment-methods-setting#payment-method-priority.",
                    None,
                ))
            }
            ("error_if_incomplete", Some(r)) => match payment_method::would_fail(state, r) {
                Some(e) => return Err(e),
                None => "active",
            },
            (_, None) => "incomplete",
            (_, Some(r)) => {
                if payment_method::would_fail(state, r).is_some() {
                    "incomplete"
                } else {
                    "active"
                }
            }
        }
    };

    // Everything is valid: create.
    let id = new_id("sub_");
    let mut resolved = Vec::new();
    for (source, qty, node) in items {
        let price = match source {
            PriceSource::Existing(v) => v,
            PriceSource::Inline(pd, prefix, product) => {
                let pid = price::insert_inline(state, pd, &product, &prefix, now)?;
                let v = state.store.get_mut(&pid).expect("just created");
                v["active"] = json!(false);
                v.clone()
            }
        };
        resolved.push((price, qty, node));
    }
    let dpm = match dpm_ref {
        Some(r) => Some(payment_method::for_customer(
            state,
            r,
            &customer,
            "default_payment_method",
            now,
        )?),
        None => None,
    };
    let interval = resolved[0].0["recurring"]["interval"]
        .as_str()
        .unwrap_or("month")
        .to_owned();
    let count = resolved[0].0["recurring"]["interval_count"]
        .as_i64()
        .unwrap_or(1);
    let (anchor, period, index) = match trial_end {
        Some(t) => (t, (now, t), 0),
        None => (now, (now, period_boundary(now, &interval, count, 1)), 1),
    };
    let items_json: Vec<Value> = resolved
        .into_iter()
        .map(|(price, qty, node)| item_json(&id, price, qty, node, now, period))
        .collect();
    let n_items = items_json.len();
    let charge_pm = dpm.clone().or_else(|| {
        charge_ref
            .clone()
            .filter(|r| r.starts_with("pm_") && !payment_method::is_test_token(r))
    });
    let saved_pm = match (save, status, &charge_pm) {
        (Some("on_subscription"), "active", Some(pm)) if due_now => Some(pm.clone()),
        _ => dpm.clone(),
    };
    let mut sub = json!({
        "id": id,
        "object": "subscription",
        "application": null,
        "application_fee_percent": null,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
        "billing_cycle_anchor": anchor,
        "billing_cycle_anchor_config": null,
        "billing_mode": {"flexible": {"proration_discounts": "included"}, "type": "flexible", "updated_at": now},
        "billing_schedules": [],
        "billing_thresholds": null,
        "cancel_at": null,
        "cancel_at_period_end": p.bool("cancel_at_period_end").unwrap_or(false),
        "canceled_at": null,
        "cancellation_details": {"comment": null, "feedback": null, "feedback_option": null, "reason": null},
        "collection_method": "charge_automatically",
        "created": now,
        "currency": currencies[0],
        "customer": customer,
        "customer_account": null,
        "days_until_due": null,
        "default_payment_method": saved_pm,
        "default_source": null,
        "default_tax_rates": [],
        "description": p.nonempty("description"),
        "discounts": [],
        "ended_at": null,
        "invoice_settings": {"account_tax_ids": null, "custom_fields": null, "description": null, "footer": null, "issuer": {"type": "self"}},
        "items": {"object": "list", "data": items_json, "has_more": false, "total_count": n_items, "url": format!("/v1/subscription_items?subscription={id}")},
        "latest_invoice": null,
        "livemode": false,
        "managed_payments": null,
        "metadata": {},
        "next_pending_invoice_item_invoice": null,
        "on_behalf_of": null,
        "pause_collection": null,
        "payment_settings": {"payment_method_options": null, "payment_method_types": null, "save_default_payment_method": save.unwrap_or("off")},
        "pending_invoice_item_interval": null,
        "pending_setup_intent": null,
        "pending_update": null,
        "schedule": null,
        "start_date": now,
        "status": status,
        "test_clock": state.customer_clock(&customer),
        "transfer_data": null,
        "trial_end": trial_end,
        "trial_settings": {"end_behavior": {"billing_cycle_anchor": null, "missing_payment_method": missing.unwrap_or("create_invoice")}},
        "trial_start": trial_end.map(|_| now),
    });
    if let Some(m) = p.metadata("metadata") {
        m.apply(&mut sub);
    }
    if let Some(c) = p.nonempty("cancel_at").and_then(|s| s.parse::<i64>().ok()) {
        sub["cancel_at"] = json!(c);
    }
    state.store.insert_with(
        sub,
        json!({ "period_index": index, "payment_behavior": behavior }),
    );
    let inv = create_invoice(
        state,
        &id,
        "subscription_create",
        period,
        trial_end.is_some(),
        now,
    );
    let snapshot = {
        let s = state.store.get_mut(&id).expect("just inserted");
        s["latest_invoice"] = json!(inv);
        s.clone()
    };
    state.emit("customer.subscription.created", snapshot, None, now);
    crate::resources::lifecycle::warn_trial_end_if_near(state, &id, now);
    finalize_invoice(state, &inv, now);
    if due_now && behavior != "default_incomplete" {
        if let Some(pm) = charge_pm {
            // The outcome was predicted above; a failure here leaves the subscription `incomplete`.
            let _ = attempt_payment(state, &inv, Some(pm), now);
        }
    }
    respond(state, state.store.get(&id).expect("just inserted"), params)
}
