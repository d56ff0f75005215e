//! Applying Stripe events to the records (SPEC §1.4). A verified event is Stripe's state at its `created`
//! time; state only moves forward.

use serde_json::Value;

use super::{BillingError, BillingService};
use crate::business::rfc3339;
use crate::business::{Billing, Business, Lifecycle};
use crate::store::{HistoryEntry, NewOutbound, StatusChange, Unwritten};
use crate::stripe::{id_of, CheckoutSession, Subscription};

/// The event types genesis-billing acts on; `webhooks register` subscribes to exactly these.
pub const HANDLED_EVENTS: &[&str] = &[
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "invoice.paid",
    "invoice.payment_succeeded",
    "invoice.payment_failed",
    "invoice.payment_action_required",
    "customer.subscription.trial_will_end",
    "checkout.session.completed",
    "checkout.session.expired",
    "customer.deleted",
];

/// Why an event of a type genesis-billing does not act on is ignored.
pub const UNHANDLED_EVENT: &str = "unhandled event type";

/// Why an event about no business we know is ignored.
pub const UNKNOWN_BUSINESS: &str = "unknown business";

/// Why an event about a subscription the business no longer (or never) had is ignored.
pub const NOT_CURRENT_SUBSCRIPTION: &str = "not the business's current subscription";

/// Why an event older than the state stored for its business is ignored.
pub const OLDER_THAN_STORED: &str = "older than the stored state";

/// Why a status event is due again: another status of its second is stored, and only Stripe can order them.
pub const SAME_SECOND: &str =
    "another status of the same second is stored: to be checked with Stripe";

/// Why an event whose `livemode` differs from the configured key's mode is stored ignored.
pub const LIVEMODE_MISMATCH: &str = "livemode mismatch";

/// Why an event about a connected account (Stripe Connect, which we never use) is stored ignored.
pub const CONNECTED_ACCOUNT: &str = "event from a connected account";

/// Why a stored event nested deeper than the receiver accepts is ignored on apply.
pub const TOO_DEEP: &str = "nested too deep";

/// The reason recorded for what the inbox's writer found in the store (`store::Reasons`).
pub fn reason(fact: Unwritten) -> &'static str {
    match fact {
        Unwritten::UnknownBusiness => UNKNOWN_BUSINESS,
        Unwritten::OtherSubscription => NOT_CURRENT_SUBSCRIPTION,
        Unwritten::NewerState => OLDER_THAN_STORED,
        Unwritten::SameSecond => SAME_SECOND,
    }
}

/// Why an event is not for us though validly signed: a connected account's, or of the other mode than
/// the key's (`key_is_live`: `None` when no key is configured, so there is no mode to hold it to).
pub fn not_ours(
    livemode: Option<bool>,
    account: Option<&str>,
    key_is_live: Option<bool>,
) -> Option<&'static str> {
    if account.is_some() {
        return Some(CONNECTED_ACCOUNT);
    }
    match (livemode, key_is_live) {
        (Some(live), Some(key_live)) if live != key_live => Some(LIVEMODE_MISMATCH),
        _ => None,
    }
}

/// What identifies the business an event is about, read the way each handler reads its object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventKeys {
    /// Metadata `business_id`.
    pub business_id: Option<String>,
    pub subscription: Option<String>,
    pub customer: Option<String>,
}

/// The fields of an event's object that its keys are read from. The webhook receiver fills them while it
/// checks the envelope, without building the object (see `webhook`); appliers read them from the object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyFields {
    /// `id`.
    pub id: Option<String>,
    /// `customer`: an id, or an expanded customer's id.
    pub customer: Option<String>,
    /// `metadata.business_id`.
    pub business_id: Option<String>,
    /// `parent.subscription_details.subscription` (an invoice's subscription).
    pub parent_subscription: Option<String>,
    /// `parent.subscription_details.metadata.business_id`.
    pub parent_business_id: Option<String>,
    /// `status` (a subscription's).
    pub status: Option<String>,
}

impl KeyFields {
    pub fn of(object: &Value) -> Self {
        let meta = |o: &Value| o["metadata"]["business_id"].as_str().map(str::to_owned);
        let details = &object["parent"]["subscription_details"];
        Self {
            id: object["id"].as_str().map(str::to_owned),
            customer: id_of(&object["customer"]),
            business_id: meta(object),
            parent_subscription: id_of(&details["subscription"]),
            parent_business_id: meta(details),
            status: object["status"].as_str().map(str::to_owned),
        }
    }
}

/// The keys of an event of a handled type; `None` for types genesis-billing does not handle.
pub fn event_keys(event: &Value) -> Option<EventKeys> {
    keys_of(
        event["type"].as_str()?,
        KeyFields::of(&event["data"]["object"]),
    )
}

/// The keys of an event of type `kind` whose object has these fields, read the way its handler reads them.
pub fn keys_of(kind: &str, f: KeyFields) -> Option<EventKeys> {
    Some(match kind {
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted"
        | "customer.subscription.trial_will_end" => EventKeys {
            business_id: f.business_id,
            subscription: f.id,
            customer: f.customer,
        },
        "invoice.paid"
        | "invoice.payment_succeeded"
        | "invoice.payment_failed"
        | "invoice.payment_action_required" => EventKeys {
            business_id: f.parent_business_id,
            subscription: f.parent_subscription,
            customer: f.customer,
        },
        "checkout.session.completed" | "checkout.session.expired" => EventKeys {
            business_id: f.business_id,
            subscription: None,
            customer: f.customer,
        },
        "customer.deleted" => EventKeys {
            business_id: f.business_id,
            subscription: None,
            customer: f.id,
        },
        _ => return None,
    })
}

/// What applying one event did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The records changed (or were confirmed) for this business.
    Applied { business_id: String },
    /// Nothing to do: unknown type, unknown business, or state already newer.
    Ignored {
        business_id: Option<String>,
        why: &'static str,
    },
    /// A write left to the caller (`Writes::Deferred`).
    Deferred {
        business_id: String,
        write: Deferred,
    },
}

/// What an apply with `Writes::Deferred` leaves to the webhook inbox's writer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Deferred {
    /// A subscription's new status.
    Status(StatusChange),
    /// A line of the business's history (an invoice paid or failed).
    History(HistoryEntry),
}

/// Who writes a subscription's new status or an invoice's history line: the apply itself, or the webhook
/// inbox's writer, in the transaction that records the event's outcome (see `StatusChange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    Now,
    Deferred,
}

fn ignored(b: Option<&Business>, why: &'static str) -> Applied {
    Applied::Ignored {
        business_id: b.map(|b| b.business_id.clone()),
        why,
    }
}

fn applied(b: &Business) -> Applied {
    Applied::Applied {
        business_id: b.business_id.clone(),
    }
}

impl BillingService {
    /// Applies one event. Idempotent: applying the same event twice leaves the same records. With
    /// `Writes::Deferred`, a subscription status or an invoice's history line (the common events) is
    /// returned instead of written.
    pub async fn apply_event(
        &self,
        event: &Value,
        writes: Writes,
    ) -> Result<Applied, BillingError> {
        let kind = event["type"].as_str().unwrap_or("");
        let created = event["created"].as_i64().unwrap_or(0);
        let object = &event["data"]["object"];
        let Some(keys) = event_keys(event) else {
            return Ok(ignored(None, UNHANDLED_EVENT));
        };
        match kind {
            "customer.subscription.created" | "customer.subscription.updated" => {
                self.on_subscription(object, created, &keys, writes).await
            }
            "customer.subscription.deleted" => {
                self.on_subscription_deleted(object, created, &keys).await
            }
            "invoice.paid" | "invoice.payment_succeeded" => {
                self.on_invoice(object, "invoice_paid", &keys, writes).await
            }
            "invoice.payment_failed" => {
                self.on_invoice(object, "invoice_payment_failed", &keys, writes)
                    .await
            }
            "invoice.payment_action_required" => {
                self.on_invoice(object, "invoice_payment_action_required", &keys, writes)
                    .await
            }
            "customer.subscription.trial_will_end" => {
                self.on_trial_will_end(object, &keys, writes).await
            }
            "checkout.session.completed" => self.on_checkout_completed(object, &keys).await,
            "checkout.session.expired" => self.on_checkout_expired(object, &keys).await,
            "customer.deleted" => self.on_customer_deleted(object, &keys).await,
            _ => Ok(ignored(None, UNHANDLED_EVENT)),
        }
    }

    /// The business an event is about: by metadata `business_id`, then subscription id, then customer id.
    async fn business_for(&self, keys: &EventKeys) -> Result<Option<Business>, BillingError> {
        Ok(self
            .store
            .find_business(
                keys.business_id.as_deref(),
                keys.subscription.as_deref(),
                keys.customer.as_deref(),
            )
            .await?)
    }

    async fn on_subscription(
        &self,
        object: &Value,
        created: i64,
        keys: &EventKeys,
        writes: Writes,
    ) -> Result<Applied, BillingError> {
        let sub = Subscription::from_json(object.clone())?;
        let Some(b) = self.business_for(keys).await? else {
            return Ok(ignored(None, UNKNOWN_BUSINESS));
        };
        match &b.stripe_subscription_id {
            Some(current) if *current == sub.id => {}
            // A subscription created for this business whose creation response we never stored (crash).
            None if b.status == Lifecycle::Active
                && sub
                    .metadata
                    .get("genesis_generation")
                    .map(String::as_str)
                    .unwrap_or("0")
                    == b.generation.to_string() =>
            {
                self.adopt_subscription(&b, &sub).await?;
                return Ok(applied(&b));
            }
            _ => return Ok(ignored(Some(&b), NOT_CURRENT_SUBSCRIPTION)),
        }
        let mut status = sub.status.clone();
        let tie = created == b.stripe_state_at
            && b.subscription_status.as_deref() != Some(status.as_str());
        if tie {
            // Two states within one second: the event order can't tell which is newer, Stripe can.
            status = self.stripe()?.retrieve_subscription(&sub.id).await?.status;
        }
        if writes == Writes::Deferred {
            return Ok(Applied::Deferred {
                business_id: b.business_id.clone(),
                write: Deferred::Status(StatusChange {
                    business_id: b.business_id,
                    subscription_id: sub.id,
                    status,
                    state_at: created,
                    tie_settled: tie,
                }),
            });
        }
        if self
            .store
            .set_subscription_status(&b.business_id, &sub.id, &status, created)
            .await?
        {
            Ok(applied(&b))
        } else {
            Ok(ignored(Some(&b), OLDER_THAN_STORED))
        }
    }

    /// Stores a subscription found in Stripe for a business that has none recorded.
    pub(super) async fn adopt_subscription(
        &self,
        b: &Business,
        sub: &Subscription,
    ) -> Result<(), BillingError> {
        let entry = self.catalog.entry_for(&b.business_type).clone();
        self.store
            .set_subscription(
                &b.business_id,
                &crate::store::SubscriptionRecord {
                    customer_id: sub.customer.as_deref().or(b.stripe_customer_id.as_deref()),
                    amount_cents: entry.amount_cents,
                    interval: &entry.interval,
                    subscription_id: &sub.id,
                    status: &sub.status,
                    lookup_key: &entry.lookup_key,
                    price_id: sub.price_id.as_deref().unwrap_or(""),
                    monthly_price_cents: entry.monthly_cents(),
                    currency: &entry.currency,
                    state_at: sub.created,
                },
            )
            .await?;
        if b.stripe_customer_id.is_none() {
            if let Some(c) = &sub.customer {
                self.store.set_customer(&b.business_id, c).await?;
            }
        }
        Ok(())
    }

    async fn on_subscription_deleted(
        &self,
        object: &Value,
        created: i64,
        keys: &EventKeys,
    ) -> Result<Applied, BillingError> {
        let sub = Subscription::from_json(object.clone())?;
        let Some(b) = self.business_for(keys).await? else {
            return Ok(ignored(None, UNKNOWN_BUSINESS));
        };
        if b.stripe_subscription_id.as_deref() != Some(sub.id.as_str()) {
            return Ok(ignored(Some(&b), NOT_CURRENT_SUBSCRIPTION));
        }
        self.subscription_ended(&b, &sub, created).await?;
        Ok(applied(&b))
    }

    /// Stripe ended the business's current subscription (webhook, or found by reconciliation): our own
    /// roll-back only stops billing; a trial that ran out without a card waits for one; anything else
    /// takes the business down.
    pub(super) async fn subscription_ended(
        &self,
        b: &Business,
        sub: &Subscription,
        at: i64,
    ) -> Result<(), BillingError> {
        self.store
            .set_subscription_status(&b.business_id, &sub.id, "canceled", at)
            .await?;
        if b.status == Lifecycle::TakenDown {
            return Ok(());
        }
        // Our own roll-back reporting back (its intent is recorded before Stripe is called): billing
        // stops, the business stays. Only a cancellation decided in Stripe ends a business.
        if self.cancelled_by_rollback(&b.business_id, &sub.id).await? {
            self.mark_rolled_back(b, &sub.id, at).await?;
            return Ok(());
        }
        // A trial that ended without a payment method is waiting for one (SPEC §1.2), not over.
        let trial_ended_unpaid = b.subscription_status.as_deref() == Some("trialing")
            && sub.default_payment_method.is_none();
        if trial_ended_unpaid {
            self.store
                .set_billing(
                    &b.business_id,
                    Billing::Expired,
                    None,
                    Some("trial ended without a payment method"),
                )
                .await?;
            self.store
                .record_event(
                    &b.business_id,
                    "subscription_cancelled",
                    "trial ended without a payment method",
                )
                .await?;
            let _ = self.refresh_gauges().await;
            return Ok(());
        }
        // Cancelled in Stripe (dashboard, dunning, customer deleted): the business goes down. The
        // subscription is recorded as canceled first, so the takedown calls nothing to cancel it again.
        self.takedown(
            &b.business_id,
            Some("subscription_cancelled"),
            super::Initiator::Stripe,
        )
        .await?;
        Ok(())
    }

    /// A trial ends in three days: the meta-agent (and the owner, when there is no card) is told once
    /// per trial end.
    async fn on_trial_will_end(
        &self,
        object: &Value,
        keys: &EventKeys,
        writes: Writes,
    ) -> Result<Applied, BillingError> {
        let Some(b) = self.business_for(keys).await? else {
            return Ok(ignored(None, UNKNOWN_BUSINESS));
        };
        let (Some(sub), Some(trial_end)) = (object["id"].as_str(), object["trial_end"].as_i64())
        else {
            return Ok(ignored(Some(&b), "no trial end"));
        };
        if b.stripe_subscription_id.as_deref() != Some(sub) {
            return Ok(ignored(Some(&b), NOT_CURRENT_SUBSCRIPTION));
        }
        let mut has_payment_method =
            !object["default_payment_method"].is_null() || !object["default_source"].is_null();
        // Stripe also charges the customer's default card: look there before telling an owner none is on file.
        if let (false, Some(customer)) = (has_payment_method, object["customer"].as_str()) {
            let c = self.stripe()?.retrieve_customer(customer).await?;
            has_payment_method = !c.raw["invoice_settings"]["default_payment_method"].is_null()
                || !c.raw["default_source"].is_null();
        }
        let entry = HistoryEntry {
            business_id: b.business_id.clone(),
            kind: "trial_will_end".to_owned(),
            detail: format!("{sub} {}", rfc3339(trial_end)),
            outbound: Some(NewOutbound {
                business_id: b.business_id.clone(),
                update_type: "billing.trial_ending",
                data: serde_json::json!({
                    "subscription_id": sub,
                    "trial_end": rfc3339(trial_end),
                    "has_payment_method": has_payment_method,
                }),
                cause: format!("trial_ending:{sub}:{trial_end}"),
            }),
        };
        if writes == Writes::Deferred {
            return Ok(Applied::Deferred {
                business_id: b.business_id,
                write: Deferred::History(entry),
            });
        }
        self.store.record_history(&entry).await?;
        Ok(applied(&b))
    }

    async fn on_invoice(
        &self,
        object: &Value,
        kind: &str,
        keys: &EventKeys,
        writes: Writes,
    ) -> Result<Applied, BillingError> {
        let Some(b) = self.business_for(keys).await? else {
            return Ok(ignored(None, UNKNOWN_BUSINESS));
        };
        let detail = format!(
            "{} {} {}",
            object["id"].as_str().unwrap_or("-"),
            object["amount_due"].as_i64().unwrap_or(0),
            object["currency"].as_str().unwrap_or("")
        );
        let outbound = invoice_event(&b.business_id, kind, object);
        // The subscription's own events carry its status; the invoice is history.
        if writes == Writes::Deferred {
            return Ok(Applied::Deferred {
                business_id: b.business_id.clone(),
                write: Deferred::History(HistoryEntry {
                    business_id: b.business_id,
                    kind: kind.to_owned(),
                    detail,
                    outbound,
                }),
            });
        }
        self.store
            .record_history(&HistoryEntry {
                business_id: b.business_id.clone(),
                kind: kind.to_owned(),
                detail,
                outbound,
            })
            .await?;
        Ok(applied(&b))
    }

    async fn on_checkout_completed(
        &self,
        object: &Value,
        keys: &EventKeys,
    ) -> Result<Applied, BillingError> {
        let session = CheckoutSession::from_json(object.clone())?;
        if object["mode"].as_str() != Some("setup") {
            return Ok(ignored(None, "not a setup-mode session"));
        }
        let b = self.business_for(keys).await?;
        match self.apply_checkout_completed(&session).await? {
            super::CheckoutOutcome::Ignored => {
                Ok(ignored(b.as_ref(), "session for no active business"))
            }
            _ => Ok(b
                .as_ref()
                .map(applied)
                .unwrap_or_else(|| ignored(None, UNKNOWN_BUSINESS))),
        }
    }

    async fn on_checkout_expired(
        &self,
        object: &Value,
        keys: &EventKeys,
    ) -> Result<Applied, BillingError> {
        let Some(b) = self.business_for(keys).await? else {
            return Ok(ignored(None, UNKNOWN_BUSINESS));
        };
        self.store
            .record_event(
                &b.business_id,
                "checkout_expired",
                object["id"].as_str().unwrap_or("-"),
            )
            .await?;
        Ok(applied(&b))
    }

    async fn on_customer_deleted(
        &self,
        object: &Value,
        keys: &EventKeys,
    ) -> Result<Applied, BillingError> {
        let customer = id_of(&object["id"]);
        let Some(b) = self.business_for(keys).await? else {
            return Ok(ignored(None, UNKNOWN_BUSINESS));
        };
        if b.stripe_customer_id != customer {
            return Ok(ignored(Some(&b), "not the business's customer"));
        }
        self.store
            .record_event(
                &b.business_id,
                "customer_deleted",
                customer.as_deref().unwrap_or("-"),
            )
            .await?;
        Ok(applied(&b))
    }
}

/// The event to the meta-agent an invoice's history line reports. One per payment (Stripe sends both
/// `invoice.paid` and `invoice.payment_succeeded` for it), one per failed attempt, and one per attempt
/// that needs the owner to authenticate.
fn invoice_event(business_id: &str, kind: &str, invoice: &Value) -> Option<NewOutbound> {
    let id = invoice["id"].as_str()?;
    let currency = invoice["currency"].as_str();
    let (update_type, data, cause) = match kind {
        "invoice_paid" => (
            "billing.payment_succeeded",
            serde_json::json!({
                "invoice_id": id,
                "amount_paid_cents": invoice["amount_paid"].as_i64(),
                "currency": currency,
            }),
            format!("payment_succeeded:{id}"),
        ),
        "invoice_payment_action_required" => (
            "billing.action_required",
            serde_json::json!({
                "invoice_id": id,
                "amount_due_cents": invoice["amount_due"].as_i64(),
                "currency": currency,
                "hosted_invoice_url": invoice["hosted_invoice_url"].as_str(),
            }),
            format!(
                "action_required:{id}:{}",
                invoice["attempt_count"].as_i64().unwrap_or(0)
            ),
        ),
        "invoice_payment_failed" => {
            let attempt = invoice["attempt_count"].as_i64();
            (
                "billing.payment_failed",
                serde_json::json!({
                    "invoice_id": id,
                    "amount_due_cents": invoice["amount_due"].as_i64(),
                    "currency": currency,
                    "attempt_count": attempt,
                    "next_payment_attempt": invoice["next_payment_attempt"].as_i64().map(rfc3339),
                    "hosted_invoice_url": invoice["hosted_invoice_url"].as_str(),
                }),
                format!("payment_failed:{id}:{}", attempt.unwrap_or(0)),
            )
        }
        _ => return None,
    };
    Some(NewOutbound {
        business_id: business_id.to_owned(),
        update_type,
        data,
        cause,
    })
}
