//! What genesis-billing gives a business's owner: a manage link that always works.
//!
//! A link is `{GENESIS_BILLING_PUBLIC_URL}/billing/manage?token=…` with a signed, expiring token
//! ([`link`]). Opening it creates a fresh session on our Billing Portal configuration ([`portal`]), or a
//! Checkout session when the subscription needs a first payment, and redirects there: portal URLs are
//! short-lived, so none is ever stored or sent.
//!
//! Notices by email ([`notice`]) tell the owner once per cause when a payment fails, needs authentication,
//! a trial ends without a card, billing ends, or a roll-back stops it.

pub mod email;
pub mod link;
pub mod notice;
pub mod portal;
pub mod smtp;
pub mod templates;

use crate::business::{Billing, Business};
use crate::config::Settings;
use crate::stripe::{NewPortalSession, PortalSession, StripeClient, StripeError};
use link::{LinkKeys, TokenError};

/// The clock links are signed and checked against (unix seconds).
pub fn now() -> i64 {
    crate::store::now()
}

/// Where a verified link sends its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// A setup-mode Checkout: the first invoice is unpaid, or the subscription ended for want of a card.
    Checkout,
    /// The portal, straight on the card form: a renewal failed.
    PaymentMethodUpdate,
    /// The portal's overview.
    Portal,
    /// Nothing to manage yet: no Stripe customer.
    NotReady,
}

impl Destination {
    /// The page for a business's current billing state (SPEC §1.2 for the Checkout cases).
    pub fn of(b: &Business) -> Self {
        if b.stripe_customer_id.is_none() {
            return Self::NotReady;
        }
        match b.subscription_status.as_deref() {
            Some("incomplete" | "incomplete_expired" | "canceled") => Self::Checkout,
            _ if b.billing == Billing::Expired => Self::Checkout,
            Some("past_due" | "unpaid") => Self::PaymentMethodUpdate,
            _ => Self::Portal,
        }
    }
}

/// Why no link could be made: a setting is missing (a configuration error, exit 2 in the CLI).
#[derive(Debug, Clone, thiserror::Error)]
pub enum LinkError {
    #[error("manage links are off: set GENESIS_BILLING_LINK_SECRET (or its _FILE, or link_secrets in the config file)")]
    NoSecret,
    #[error("manage links are off: set GENESIS_BILLING_PUBLIC_URL to the address owners reach this service on")]
    NoPublicUrl,
}

/// A link handed to an owner.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManageLink {
    pub url: String,
    /// Unix seconds.
    pub expires_at: i64,
}

/// Manage links and the Billing Portal configuration behind them.
#[derive(Debug)]
pub struct Owners {
    keys: Option<LinkKeys>,
    /// `None` while `GENESIS_BILLING_PUBLIC_URL` is not set.
    public_url: Option<String>,
    allow_cancel: bool,
    /// Our portal configuration's id once found or created; the lock makes that one flight.
    portal: tokio::sync::Mutex<Option<String>>,
}

impl Owners {
    pub fn new(keys: Option<LinkKeys>, public_url: Option<String>, allow_cancel: bool) -> Self {
        Self {
            keys,
            public_url: public_url.map(|u| u.trim().trim_end_matches('/').to_owned()),
            allow_cancel,
            portal: tokio::sync::Mutex::new(None),
        }
    }

    pub fn from_settings(s: &Settings) -> Self {
        Self::new(
            LinkKeys::new(s.owners.link_secrets.clone(), s.owners.link_ttl_secs),
            s.owners.public_url_set.then(|| s.public_url.clone()),
            s.owners.portal_allow_cancel,
        )
    }

    /// No links (tests and states built without settings).
    pub fn disabled() -> Self {
        Self::new(None, None, false)
    }

    /// Whether links can be made.
    pub fn configured(&self) -> Result<(), LinkError> {
        self.keys.as_ref().ok_or(LinkError::NoSecret)?;
        self.public_url.as_ref().ok_or(LinkError::NoPublicUrl)?;
        Ok(())
    }

    /// A new link for `business_id`, valid for the TTL from `now`.
    pub fn manage_link(&self, business_id: &str, now: i64) -> Result<ManageLink, LinkError> {
        let keys = self.keys.as_ref().ok_or(LinkError::NoSecret)?;
        let base = self.public_url.as_ref().ok_or(LinkError::NoPublicUrl)?;
        let signed = keys
            .sign(business_id, now)
            // Ids come from our records, which only hold valid ids.
            .map_err(|_| LinkError::NoSecret)?;
        Ok(ManageLink {
            url: format!("{base}/billing/manage?token={}", signed.token),
            expires_at: signed.expires_at,
        })
    }

    /// The business a presented token names, if it is genuine and current.
    pub fn verify(&self, token: &str, now: i64) -> Result<String, TokenError> {
        self.keys
            .as_ref()
            .ok_or(TokenError::NoSecret)?
            .verify(token, now)
    }

    /// Where the portal and Checkout send the owner back: a page of ours that says they are done.
    pub fn return_url(&self) -> String {
        format!(
            "{}/billing/manage/done",
            self.public_url.as_deref().unwrap_or("https://example.com")
        )
    }

    /// Our portal configuration's id: found, created or updated now unless known already.
    pub async fn ensure_portal(&self, stripe: &StripeClient) -> Result<String, StripeError> {
        let mut known = self.portal.lock().await;
        if let Some(id) = known.as_ref() {
            return Ok(id.clone());
        }
        let (id, what) =
            portal::ensure_configuration(stripe, self.allow_cancel, &self.return_url()).await?;
        tracing::info!(configuration = %id, outcome = ?what, "Billing Portal configuration ready");
        *known = Some(id.clone());
        Ok(id)
    }

    /// Checks our portal configuration again (the background check): forgets the id, then ensures.
    pub async fn recheck_portal(&self, stripe: &StripeClient) -> Result<String, StripeError> {
        self.portal.lock().await.take();
        self.ensure_portal(stripe).await
    }

    /// A fresh portal session for `customer` (never stored: its URL is short-lived). When Stripe refuses
    /// our configuration (deactivated or changed behind our back), it is ensured again and the session
    /// retried once.
    pub async fn portal_session(
        &self,
        stripe: &StripeClient,
        business_id: &str,
        customer: &str,
        payment_method_update: bool,
    ) -> Result<PortalSession, StripeError> {
        let return_url = self.return_url();
        let mut retried = false;
        loop {
            let configuration = self.ensure_portal(stripe).await?;
            let key = format!(
                "genesis:{business_id}:portal_session:{}",
                uuid::Uuid::new_v4()
            );
            let created = stripe
                .create_portal_session(
                    &NewPortalSession {
                        customer,
                        configuration: &configuration,
                        return_url: &return_url,
                        flow: payment_method_update.then_some("payment_method_update"),
                    },
                    key,
                )
                .await;
            match created {
                Err(StripeError::Api(e))
                    if !retried
                        && e.status == 400
                        && e.param.as_deref() == Some("configuration") =>
                {
                    retried = true;
                    self.portal.lock().await.take();
                }
                other => return other,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::SecretString;

    fn business(status: Option<&str>, billing: Billing, customer: bool) -> Business {
        Business {
            business_id: "b1".into(),
            name: "n".into(),
            business_type: "saas".into(),
            email: None,
            created_at: 0,
            updated_at: 0,
            status: crate::business::Lifecycle::Active,
            billing,
            billing_error: None,
            failed_step: None,
            stripe_customer_id: customer.then(|| "cus_1".to_owned()),
            stripe_subscription_id: Some("sub_1".into()),
            stripe_payment_intent_id: None,
            subscription_status: status.map(str::to_owned),
            price_lookup_key: None,
            stripe_price_id: None,
            monthly_price_cents: None,
            currency: None,
            generation: 0,
            stripe_state_at: 0,
            taken_down_at: None,
            takedown_reason: None,
            takedown_outcome: None,
        }
    }

    #[test]
    fn each_billing_state_goes_to_the_page_that_can_fix_it() {
        use Destination::*;
        for (status, billing, expected) in [
            (Some("incomplete"), Billing::Provisioned, Checkout),
            (Some("incomplete_expired"), Billing::Expired, Checkout),
            (Some("canceled"), Billing::Provisioned, Checkout),
            (Some("active"), Billing::Expired, Checkout),
            (Some("past_due"), Billing::Provisioned, PaymentMethodUpdate),
            (Some("unpaid"), Billing::Provisioned, PaymentMethodUpdate),
            (Some("active"), Billing::Provisioned, Portal),
            (Some("trialing"), Billing::Provisioned, Portal),
            (None, Billing::Failed, Portal),
        ] {
            let b = business(status, billing, true);
            assert_eq!(Destination::of(&b), expected, "{status:?} {billing:?}");
        }
        assert_eq!(
            Destination::of(&business(Some("active"), Billing::Provisioned, false)),
            NotReady
        );
    }

    #[test]
    fn links_need_a_secret_and_a_public_url() {
        let keys = || LinkKeys::new(vec![SecretString::from("s".repeat(32))], 600);
        let none = Owners::new(None, Some("https://x".into()), false);
        assert!(matches!(
            none.manage_link("b1", 0),
            Err(LinkError::NoSecret)
        ));
        assert_eq!(none.verify("v1.b1.1.x", 0), Err(TokenError::NoSecret));
        let no_url = Owners::new(keys(), None, false);
        assert!(matches!(
            no_url.manage_link("b1", 0),
            Err(LinkError::NoPublicUrl)
        ));
        let ok = Owners::new(keys(), Some("https://billing.example.org/ ".into()), false);
        let link = ok.manage_link("b1", 100).unwrap();
        assert!(link
            .url
            .starts_with("https://billing.example.org/billing/manage?token=v1.b1.700."));
        assert_eq!(link.expires_at, 700);
        let token = link.url.split("token=").nth(1).unwrap();
        assert_eq!(ok.verify(token, 100).unwrap(), "b1");
        assert_eq!(
            ok.return_url(),
            "https://billing.example.org/billing/manage/done"
        );
    }
}
