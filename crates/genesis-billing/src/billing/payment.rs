//! Payment method collection (SPEC §1.2): a Checkout link for the owner, and what its completion does.

use serde::Serialize;

use super::{BillingError, BillingService};
use crate::business::Lifecycle;
use crate::store::now;
use crate::stripe::{CheckoutSession, NewSetupCheckout};

/// What a completed Checkout did to the business's billing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CheckoutOutcome {
    /// The open first invoice was paid; the subscription is active.
    Activated,
    /// The old subscription was over; a new one was created and charged.
    Replaced,
    /// The payment method is now the default; the subscription carries on (e.g. trialing).
    DefaultUpdated,
    /// The card was declined; nothing changed but the decline is recorded.
    Declined,
    /// The session belongs to no active business.
    Ignored,
}

impl BillingService {
    /// Creates a setup-mode Checkout Session for the business's customer and returns it (with its URL).
    pub async fn checkout_link(&self, id: &str) -> Result<CheckoutSession, BillingError> {
        let stripe = self.stripe()?;
        let b = self
            .store
            .get_business(id)
            .await?
            .ok_or_else(|| BillingError::NotFound(id.to_owned()))?;
        if b.status != Lifecycle::Active {
            return Err(BillingError::Conflict(format!(
                "business {id} is taken down"
            )));
        }
        let Some(customer) = &b.stripe_customer_id else {
            return Err(BillingError::Conflict(format!(
                "business {id} has no Stripe customer yet (billing {})",
                b.billing
            )));
        };
        let currency = b
            .currency
            .clone()
            .unwrap_or_else(|| self.catalog.entry_for(&b.business_type).currency.clone());
        let success = format!("{}/billing/{id}/done", self.public_url);
        let cancel = format!("{}/billing/{id}/cancelled", self.public_url);
        // Every link is a new session: a fresh key per request, so a second link is not a replay of the first.
        let key = format!("genesis:{id}:checkout:{}", uuid::Uuid::new_v4());
        let session = stripe
            .create_setup_checkout(
                &NewSetupCheckout {
                    customer,
                    currency: &currency,
                    success_url: &success,
                    cancel_url: &cancel,
                    metadata: vec![("business_id", id.to_owned())],
                },
                key,
            )
            .await?;
        self.store
            .record_event(id, "checkout_created", &session.id)
            .await?;
        Ok(session)
    }

    /// Applies a completed setup-mode Checkout Session: default payment method, then whatever the
    /// subscription's state needs (pay the first invoice, replace an expired subscription, or nothing).
    pub async fn apply_checkout_completed(
        &self,
        session: &CheckoutSession,
    ) -> Result<CheckoutOutcome, BillingError> {
        let stripe = self.stripe()?;
        let by_meta = match session.metadata.get("business_id") {
            Some(id) => self.store.get_business(id).await?,
            None => None,
        };
        let b = match by_meta {
            Some(b) => Some(b),
            None => {
                self.store
                    .business_by_stripe_id(session.customer.as_deref(), None)
                    .await?
            }
        };
        let Some(b) = b.filter(|b| b.status == Lifecycle::Active) else {
            return Ok(CheckoutOutcome::Ignored);
        };
        let id = b.business_id.clone();
        let (Some(customer), Some(setup_intent)) = (&b.stripe_customer_id, &session.setup_intent)
        else {
            return Ok(CheckoutOutcome::Ignored);
        };
        let Some(pm) = stripe.setup_intent_payment_method(setup_intent).await? else {
            return Ok(CheckoutOutcome::Ignored);
        };
        stripe
            .set_customer_default_payment_method(
                customer,
                &pm,
                format!("genesis:{id}:customer:default_pm:{pm}"),
            )
            .await?;
        let status = b.subscription_status.as_deref().unwrap_or("");
        let replace = matches!(status, "incomplete_expired" | "canceled");
        // A subscription that still counts takes the card as its default before anything else.
        if let Some(sub) = b.stripe_subscription_id.as_deref().filter(|_| !replace) {
            stripe
                .set_subscription_default_payment_method(
                    sub,
                    &pm,
                    format!("genesis:{id}:subscription:{sub}:default_pm:{pm}"),
                )
                .await?;
        }
        let outcome = match (&b.stripe_subscription_id, status) {
            (Some(sub), "incomplete") => {
                let current = stripe.retrieve_subscription(sub).await?;
                let invoice = current.latest_invoice.clone();
                let paid = match invoice {
                    Some(inv) => stripe
                        .pay_invoice(&inv, &pm, format!("genesis:{id}:invoice:{inv}:pay:{pm}"))
                        .await
                        .map(drop),
                    None => Ok(()),
                };
                if let Err(e) = paid {
                    if e.status() == Some(402) {
                        self.store
                            .record_event(&id, "payment_declined", &e.to_string())
                            .await?;
                        return Ok(CheckoutOutcome::Declined);
                    }
                    return Err(e.into());
                }
                let after = stripe.retrieve_subscription(sub).await?;
                self.store
                    .set_subscription_status(&id, sub, &after.status, now())
                    .await?;
                CheckoutOutcome::Activated
            }
            (Some(_), "incomplete_expired" | "canceled") => {
                let generation = self.store.bump_generation(&id).await?;
                let b = crate::business::Business {
                    generation,
                    ..b.clone()
                };
                let new_sub = self
                    .ensure_subscription(stripe, &b, customer, Some(&pm))
                    .await?;
                if new_sub.status == "incomplete" {
                    self.store
                        .record_event(
                            &id,
                            "payment_declined",
                            "replacement subscription's first payment failed",
                        )
                        .await?;
                }
                CheckoutOutcome::Replaced
            }
            _ => CheckoutOutcome::DefaultUpdated,
        };
        self.store
            .record_event(
                &id,
                "checkout_completed",
                &format!("{} {outcome:?}", session.id),
            )
            .await?;
        let _ = self.refresh_gauges().await;
        Ok(outcome)
    }
}
