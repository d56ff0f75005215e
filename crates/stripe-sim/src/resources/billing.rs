//! The billing state machine's building blocks: invoices from subscription items, finalization, payment attempts, and the subscription transitions they cause.

use serde_json::{json, Value};

use crate::error::{ApiError, ApiResult};
use crate::resources::payment_intent;
use crate::state::{previous_attributes, State};
use crate::store::new_id;

/// Statuses after which a subscription never changes again.
pub fn is_terminal(sub: &Value) -> bool {
    matches!(
        sub["status"].as_str(),
        Some("canceled" | "incomplete_expired")
    )
}

/// Changes a subscription and emits `customer.subscription.updated` (or another type) with `previous_attributes`.
pub fn update_sub(state: &mut State, id: &str, now: i64, kind: &str, f: impl FnOnce(&mut Value)) {
    let Some(v) = state.store.get_mut(id) else {
        return;
    };
    let before = v.clone();
    f(v);
    let after = v.clone();
    if let Some(prev) = previous_attributes(&before, &after) {
        let prev = if kind.ends_with(".updated") {
            Some(prev)
        } else {
            None
        };
        state.emit(kind, after, prev, now);
    }
}

/// Cancels a subscription now (`DELETE`, customer deletion, dunning, trial end without a payment method).
pub fn cancel_subscription(state: &mut State, id: &str, now: i64, reason: &str) {
    if state.store.get(id).is_none_or(is_terminal) {
        return;
    }
    update_sub(state, id, now, "customer.subscription.deleted", |s| {
        s["status"] = json!("canceled");
        s["canceled_at"] = json!(now);
        s["ended_at"] = json!(now);
        s["cancellation_details"]["reason"] = json!(reason);
    });
    stop_retries(state, id);
}

/// Open invoices of a subscription stop being retried once it is over.
fn stop_retries(state: &mut State, sub: &str) {
    let ids: Vec<String> = open_invoices(state, sub);
    for i in ids {
        if let Some(v) = state.store.get_mut(&i) {
            v["next_payment_attempt"] = Value::Null;
            v["auto_advance"] = json!(false);
        }
    }
}

/// Ids of the open invoices of a subscription.
pub fn open_invoices(state: &State, sub: &str) -> Vec<String> {
    state
        .store
        .values("invoice")
        .filter(|i| {
            i["status"] == "open" && i["parent"]["subscription_details"]["subscription"] == sub
        })
        .filter_map(|i| i["id"].as_str().map(str::to_owned))
        .collect()
}

/// The PaymentMethod an invoice is charged with by default: the subscription's, then the customer's.
pub fn default_pm(state: &State, sub: &Value) -> Option<String> {
    sub["default_payment_method"]
        .as_str()
        .or_else(|| {
            let c = sub["customer"].as_str()?;
            state.store.get(c)?["invoice_settings"]["default_payment_method"].as_str()
        })
        .map(str::to_owned)
}

/// The sum the items of a subscription cost per period.
pub fn period_amount(sub: &Value) -> i64 {
    sub["items"]["data"]
        .as_array()
        .map(|items| {
            items
                .iter()
                .map(|i| {
                    i["price"]["unit_amount"].as_i64().unwrap_or(0)
                        * i["quantity"].as_i64().unwrap_or(1)
                })
                .sum()
        })
        .unwrap_or(0)
}

/// Creates a draft invoice for a subscription's items over a period (`trial` makes every line free).
pub fn create_invoice(
    state: &mut State,
    sub_id: &str,
    reason: &str,
    period: (i64, i64),
    trial: bool,
    now: i64,
) -> String {
    let sub = state.store.get(sub_id).cloned().unwrap_or(Value::Null);
    let id = new_id("in_");
    let customer = sub["customer"].as_str().unwrap_or_default().to_owned();
    let cust = state.store.get(&customer).cloned().unwrap_or(Value::Null);
    let items = sub["items"]["data"].as_array().cloned().unwrap_or_default();
    let currency = sub["currency"].clone();
    let mut lines = Vec::new();
    let mut total = 0;
    for item in &items {
        let price = &item["price"];
        let qty = item["quantity"].as_i64().unwrap_or(1);
        let unit = price["unit_amount"].as_i64().unwrap_or(0);
        let amount = if trial { 0 } else { unit * qty };
        total += amount;
        let product_name = price["product"]
            .as_str()
            .and_then(|p| state.store.get(p))
            .and_then(|p| p["name"].as_str())
            .unwrap_or("Product")
            .to_owned();
        let description = if trial {
            format!("Trial period for {product_name}")
        } else {
            format!("{qty} × {product_name}")
        };
        lines.push(json!({
            "id": new_id("il_"),
            "object": "line_item",
            "amount": amount,
            "currency": currency,
            "description": description,
            "discount_amounts": [],
            "discountable": true,
            "discounts": [],
            "invoice": id,
            "livemode": false,
            "metadata": item["metadata"].clone(),
            "parent": {
                "type": "subscription_item_details",
                "invoice_item_details": null,
                "subscription_item_details": {
                    "invoice_item": null,
                    "proration": false,
                    "proration_details": {"credited_items": null},
                    "subscription": sub_id,
                    "subscription_item": item["id"],
                },
            },
            "period": {"end": period.1, "start": period.0},
            "pretax_credit_amounts": [],
            "pricing": {
                "price_details": {"price": price["id"], "product": price["product"]},
                "type": "price_details",
                "unit_amount_decimal": price["unit_amount_decimal"],
            },
            "quantity": qty,
            "quantity_decimal": qty.to_string(),
            "subscription": sub_id,
            "subtotal": amount,
            "taxes": [],
        }));
    }
    let n_lines = lines.len();
    let v = json!({
        "id": id,
        "object": "invoice",
        "account_country": "US",
        "account_name": "stripe-sim",
        "account_tax_ids": null,
        "amount_due": total,
        "amount_overpaid": 0,
        "amount_paid": 0,
        "amount_remaining": total,
        "amount_shipping": 0,
        "application": null,
        "attempt_count": 0,
        "attempted": false,
        "auto_advance": true,
        "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null, "provider": null, "status": null},
        "automatically_finalizes_at": null,
        "billing_reason": reason,
        "collection_method": "charge_automatically",
        "created": now,
        "currency": currency,
        "custom_fields": null,
        "customer": customer,
        "customer_account": null,
        "customer_address": null,
        "customer_email": cust["email"],
        "customer_name": cust["name"],
        "customer_phone": cust["phone"],
        "customer_shipping": null,
        "customer_tax_exempt": "none",
        "customer_tax_ids": [],
        "default_payment_method": null,
        "default_source": null,
        "default_tax_rates": [],
        "description": null,
        "discounts": [],
        "due_date": null,
        "effective_at": null,
        "ending_balance": null,
        "footer": null,
        "from_invoice": null,
        "hosted_invoice_url": null,
        "invoice_pdf": null,
        "issuer": {"type": "self"},
        "last_finalization_error": null,
        "latest_revision": null,
        "lines": {"object": "list", "data": lines, "has_more": false, "total_count": n_lines, "url": format!("/v1/invoices/{id}/lines")},
        "livemode": false,
        "metadata": {},
        "next_payment_attempt": null,
        "number": null,
        "on_behalf_of": null,
        "parent": {
            "type": "subscription_details",
            "quote_details": null,
            "subscription_details": {"metadata": sub["metadata"].clone(), "subscription": sub_id},
        },
        "payment_settings": {"default_mandate": null, "payment_method_options": null, "payment_method_types": null},
        "period_end": period.1,
        "period_start": period.0,
        "post_payment_credit_notes_amount": 0,
        "pre_payment_credit_notes_amount": 0,
        "receipt_number": null,
        "rendering": null,
        "shipping_cost": null,
        "shipping_details": null,
        "starting_balance": 0,
        "statement_descriptor": null,
        "status": "draft",
        "status_transitions": {"finalized_at": null, "marked_uncollectible_at": null, "paid_at": null, "voided_at": null},
        "subtotal": total,
        "subtotal_excluding_tax": total,
        "test_clock": sub["test_clock"].clone(),
        "total": total,
        "total_discount_amounts": [],
        "total_excluding_tax": total,
        "total_pretax_credit_amounts": [],
        "total_taxes": [],
        "webhooks_delivered_at": now,
    });
    state.store.insert_with(
        v.clone(),
        json!({ "payments": [], "confirmation_secret": null }),
    );
    state.emit("invoice.created", v, None, now);
    id
}

fn invoice_mut<'a>(state: &'a mut State, id: &str) -> &'a mut Value {
    &mut state.store.entry_mut(id).expect("invoice exists").value
}

/// Finalizes a draft: numbered, `open`, with a PaymentIntent when something is due; a zero invoice is paid at once.
pub fn finalize_invoice(state: &mut State, id: &str, now: i64) {
    let Some(inv) = state.store.get(id).cloned() else {
        return;
    };
    if inv["status"] != "draft" {
        return;
    }
    let customer = inv["customer"].as_str().unwrap_or_default().to_owned();
    let number = match state.store.get_mut(&customer) {
        Some(c) => {
            let n = c["next_invoice_sequence"].as_i64().unwrap_or(1);
            c["next_invoice_sequence"] = json!(n + 1);
            format!("{}-{n:04}", c["invoice_prefix"].as_str().unwrap_or("SIM"))
        }
        None => format!("SIM-{}", fastrand::u32(1000..9999)),
    };
    let amount = inv["amount_due"].as_i64().unwrap_or(0);
    let base = state.base_url.clone();
    {
        let v = invoice_mut(state, id);
        v["status"] = json!("open");
        v["number"] = json!(number);
        v["effective_at"] = json!(now);
        v["status_transitions"]["finalized_at"] = json!(now);
        v["ending_balance"] = json!(0);
        v["hosted_invoice_url"] = json!(format!("{base}/invoices/{id}"));
        v["invoice_pdf"] = json!(format!("{base}/invoices/{id}/pdf"));
    }
    if amount > 0 {
        let currency = inv["currency"].as_str().unwrap_or("usd").to_owned();
        let desc = match inv["billing_reason"].as_str() {
            Some("subscription_create") => "Subscription creation",
            Some("subscription_cycle") => "Subscription update",
            _ => "Invoice payment",
        };
        let pi = payment_intent::insert(state, amount, &currency, Some(&customer), Some(desc), now);
        let secret = state
            .store
            .get(&pi)
            .map(|p| p["client_secret"].clone())
            .unwrap_or_default();
        let entry = state.store.entry_mut(id).expect("invoice exists");
        entry.internal["payment_intent"] = json!(pi);
        entry.internal["confirmation_secret"] =
            json!({ "client_secret": secret, "type": "payment_intent" });
        entry.internal["payments"] = json!([{
            "id": new_id("inpay_"),
            "object": "invoice_payment",
            "amount_paid": null,
            "amount_requested": amount,
            "created": now,
            "currency": currency,
            "invoice": id,
            "is_default": true,
            "livemode": false,
            "payment": {"type": "payment_intent", "payment_intent": pi},
            "status": "open",
            "status_transitions": {"canceled_at": null, "paid_at": null},
        }]);
    }
    let snapshot = state.store.get(id).cloned().unwrap_or_default();
    state.emit("invoice.finalized", snapshot, None, now);
    if amount == 0 {
        mark_paid(state, id, None, now);
    }
}

/// Marks an invoice paid and moves its subscription on (`incomplete`/`past_due`/`unpaid` → `active`).
pub fn mark_paid(state: &mut State, id: &str, pm: Option<&str>, now: i64) {
    {
        let entry = state.store.entry_mut(id).expect("invoice exists");
        let amount = entry.value["amount_due"].as_i64().unwrap_or(0);
        let v = &mut entry.value;
        v["status"] = json!("paid");
        v["amount_paid"] = json!(amount);
        v["amount_remaining"] = json!(0);
        v["next_payment_attempt"] = Value::Null;
        v["auto_advance"] = json!(false);
        v["status_transitions"]["paid_at"] = json!(now);
        if let Some(payments) = entry.internal["payments"].as_array_mut() {
            for p in payments {
                p["status"] = json!("paid");
                p["amount_paid"] = json!(amount);
                p["status_transitions"]["paid_at"] = json!(now);
            }
        }
    }
    let snapshot = state.store.get(id).cloned().unwrap_or_default();
    state.emit("invoice.paid", snapshot.clone(), None, now);
    state.emit("invoice.payment_succeeded", snapshot.clone(), None, now);
    let Some(sub_id) = snapshot["parent"]["subscription_details"]["subscription"].as_str() else {
        return;
    };
    let Some(sub) = state.store.get(sub_id).cloned() else {
        return;
    };
    let save = sub["payment_settings"]["save_default_payment_method"] == "on_subscription";
    let reactivate = matches!(
        sub["status"].as_str(),
        Some("incomplete" | "past_due" | "unpaid")
    ) && (sub["latest_invoice"] == id || open_invoices(state, sub_id).is_empty());
    update_sub(state, sub_id, now, "customer.subscription.updated", |s| {
        if reactivate {
            s["status"] = json!("active");
        }
        if let (true, Some(pm)) = (save, pm) {
            s["default_payment_method"] = json!(pm);
        }
    });
}

/// Attempts to collect an open invoice with a PaymentMethod (or the default one); records the attempt either way.
pub fn attempt_payment(state: &mut State, id: &str, pm: Option<String>, now: i64) -> ApiResult<()> {
    attempt_payment_then(state, id, pm, now, |_, _| None)
}

/// As `attempt_payment`, for Stripe's automatic collection: after a failure, `next_retry` says when Stripe tries
/// again, and the invoice carries it in the events of the failure (`invoice.payment_failed` tells when the next
/// attempt is, or that there is none).
pub fn attempt_payment_then(
    state: &mut State,
    id: &str,
    pm: Option<String>,
    now: i64,
    next_retry: impl FnOnce(&mut State, &str) -> Option<i64>,
) -> ApiResult<()> {
    let inv = state
        .store
        .get(id)
        .cloned()
        .ok_or_else(|| ApiError::no_such("invoice", id, "id"))?;
    if inv["amount_remaining"].as_i64().unwrap_or(0) == 0 {
        mark_paid(state, id, pm.as_deref(), now);
        return Ok(());
    }
    {
        let v = invoice_mut(state, id);
        v["attempt_count"] = json!(v["attempt_count"].as_i64().unwrap_or(0) + 1);
        v["attempted"] = json!(true);
    }
    let pi = state
        .store
        .entry(id)
        .and_then(|e| e.internal["payment_intent"].as_str().map(str::to_owned));
    let result = match (pm.as_deref(), pi) {
        (None, _) => Err(ApiError::invalid_code(
            "resource_missing",
            "This customer has no attached payment source or default payment method. Please consider adding a default payment method. For more information, visit https://docs.stripe.com/billing/subscriptions/payment-methods-setting#payment-method-priority.",
            None,
        )),
        (Some(pm), Some(pi)) => payment_intent::charge(state, &pi, pm, now),
        (Some(_), None) => Ok(()),
    };
    match result {
        Ok(()) => {
            mark_paid(state, id, pm.as_deref(), now);
            Ok(())
        }
        Err(e) => {
            let next = next_retry(state, id);
            invoice_mut(state, id)["next_payment_attempt"] = json!(next);
            let snapshot = state.store.get(id).cloned().unwrap_or_default();
            state.emit("invoice.payment_failed", snapshot.clone(), None, now);
            // Stripe reports a charge waiting for 3D Secure as a failed attempt and asks for the customer's action.
            if payment_intent::is_action_required(&e) {
                state.emit("invoice.payment_action_required", snapshot, None, now);
            }
            Err(e)
        }
    }
}

/// What the customer does on the hosted invoice page for a payment waiting for authentication: passes 3D Secure,
/// the intent succeeds and the invoice is paid (its subscription becomes `active`).
pub fn authenticate_invoice(state: &mut State, id: &str) -> ApiResult<Value> {
    let inv = state
        .store
        .get_typed("invoice", id)
        .cloned()
        .ok_or_else(|| ApiError::no_such("invoice", id, "id"))?;
    if inv["status"] != "open" {
        return Err(ApiError::invalid_code(
            "invoice_not_open",
            format!(
                "This invoice has a status of `{}`: only an open invoice can be paid.",
                inv["status"].as_str().unwrap_or_default()
            ),
            None,
        ));
    }
    let pi = state
        .store
        .entry(id)
        .and_then(|e| e.internal["payment_intent"].as_str().map(str::to_owned))
        .filter(|pi| {
            state
                .store
                .get(pi)
                .is_some_and(|p| p["status"] == "requires_action")
        })
        .ok_or_else(|| {
            ApiError::invalid_code(
                "payment_intent_unexpected_state",
                "This invoice's payment is not waiting for authentication.",
                None,
            )
        })?;
    let now = state.now_for_customer(inv["customer"].as_str().unwrap_or_default());
    payment_intent::charge_authenticated(state, &pi, now)?;
    let pm = state
        .store
        .get(&pi)
        .and_then(|p| p["payment_method"].as_str().map(str::to_owned));
    mark_paid(state, id, pm.as_deref(), now);
    Ok(state.store.get(id).cloned().unwrap_or_default())
}

/// Voids an open invoice and cancels its PaymentIntent.
pub fn void_invoice(state: &mut State, id: &str, now: i64) {
    let Some(inv) = state.store.get(id) else {
        return;
    };
    if !matches!(inv["status"].as_str(), Some("open" | "draft")) {
        return;
    }
    {
        let entry = state.store.entry_mut(id).expect("checked");
        entry.value["status"] = json!("void");
        entry.value["amount_remaining"] = json!(0);
        entry.value["next_payment_attempt"] = Value::Null;
        entry.value["auto_advance"] = json!(false);
        entry.value["status_transitions"]["voided_at"] = json!(now);
        if let Some(payments) = entry.internal["payments"].as_array_mut() {
            for p in payments {
                p["status"] = json!("canceled");
                p["status_transitions"]["canceled_at"] = json!(now);
            }
        }
    }
    let pi = state
        .store
        .entry(id)
        .and_then(|e| e.internal["payment_intent"].as_str().map(str::to_owned));
    if let Some(pi) = pi {
        payment_intent::cancel_quietly(state, &pi, "void_invoice", now);
    }
    let snapshot = state.store.get(id).cloned().unwrap_or_default();
    state.emit("invoice.voided", snapshot, None, now);
}
