//! The Billing Portal configuration genesis-billing keeps for owners: found by its metadata, created
//! when missing, updated when its features drifted (someone changed it in the dashboard, or the operator
//! changed `GENESIS_BILLING_PORTAL_ALLOW_CANCEL`).

use sha2::{Digest, Sha256};

use crate::stripe::{
    PortalConfiguration, PortalConfigurationParams, PortalFeatures, StripeClient, StripeError,
};

/// Metadata key and value that mark our configuration among the account's others.
pub const METADATA_KEY: &str = "genesis_billing";
pub const METADATA_VALUE: &str = "owner_portal";

/// How an owner's cancellation takes effect: at the end of the period they paid for; Stripe then
/// deletes the subscription and the business is taken down like any cancellation from Stripe's side.
pub const CANCEL_MODE: &str = "at_period_end";

/// What `ensure_configuration` had to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ensured {
    Found,
    Updated,
    Created,
}

/// The features our configuration must have.
pub fn desired_features(allow_cancel: bool) -> PortalFeatures {
    PortalFeatures {
        payment_method_update: true,
        invoice_history: true,
        subscription_cancel: allow_cancel,
        cancel_mode: allow_cancel.then(|| CANCEL_MODE.to_owned()),
    }
}

/// Whether `c` already is what we want.
fn matches(c: &PortalConfiguration, features: &PortalFeatures, return_url: &str) -> bool {
    c.active && &c.features == features && c.default_return_url.as_deref() == Some(return_url)
}

/// Finds our configuration (or creates it) and makes it match; returns its id.
pub async fn ensure_configuration(
    stripe: &StripeClient,
    allow_cancel: bool,
    return_url: &str,
) -> Result<(String, Ensured), StripeError> {
    let features = desired_features(allow_cancel);
    let params = PortalConfigurationParams {
        features: features.clone(),
        default_return_url: return_url,
        metadata: vec![(METADATA_KEY, METADATA_VALUE)],
    };
    let mut ours = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = stripe.list_portal_configurations(after.as_deref()).await?;
        after = page.data.last().map(|c| c.id.clone());
        ours.extend(
            page.data.into_iter().filter(|c| {
                c.metadata.get(METADATA_KEY).map(String::as_str) == Some(METADATA_VALUE)
            }),
        );
        if !page.has_more || after.is_none() {
            break;
        }
    }
    // One that already matches wins; else an active one; else any (it is re-activated).
    let pick = ours
        .iter()
        .find(|c| matches(c, &features, return_url))
        .or_else(|| ours.iter().find(|c| c.active))
        .or_else(|| ours.first());
    match pick {
        Some(c) if matches(c, &features, return_url) => Ok((c.id.clone(), Ensured::Found)),
        Some(c) => {
            let key = format!(
                "genesis:billing_portal_configuration:{}:update:{}",
                c.id,
                uuid::Uuid::new_v4()
            );
            let updated = stripe
                .update_portal_configuration(&c.id, &params, key)
                .await?;
            Ok((updated.id, Ensured::Updated))
        }
        None => {
            // Derived from what is created: replicas starting together create one configuration, and a
            // changed setting is a new request rather than an idempotency error.
            let digest = Sha256::digest(format!("{features:?}|{return_url}").as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            let key = format!("genesis:billing_portal_configuration:create:{hex}");
            let created = stripe.create_portal_configuration(&params, key).await?;
            Ok((created.id, Ensured::Created))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_portal_always_updates_cards_and_shows_invoices_and_cancels_only_when_allowed() {
        let off = desired_features(false);
        assert!(off.payment_method_update && off.invoice_history && !off.subscription_cancel);
        assert_eq!(off.cancel_mode, None);
        let on = desired_features(true);
        assert!(on.subscription_cancel);
        assert_eq!(on.cancel_mode.as_deref(), Some(CANCEL_MODE));
    }
}
