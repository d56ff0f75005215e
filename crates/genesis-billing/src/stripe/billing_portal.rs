//! Billing Portal configurations and sessions: the Stripe-hosted page where an owner updates a card,
//! reads invoices and (if the operator allows it) cancels.

use std::collections::BTreeMap;

use serde_json::Value;

use super::client::{Call, StripeClient};
use super::error::StripeError;
use super::form::Form;
use super::resources::{id_of, metadata, need_id, page, str_field, Page};

/// The portal features genesis-billing sets; the others are left as Stripe has them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortalFeatures {
    pub payment_method_update: bool,
    pub invoice_history: bool,
    pub subscription_cancel: bool,
    /// `immediately` or `at_period_end`, when cancelling is on.
    pub cancel_mode: Option<String>,
}

impl PortalFeatures {
    /// Read tolerantly from a configuration's `features` (a missing feature reads as off).
    fn from_json(features: &Value) -> Self {
        let on = |f: &str| features[f]["enabled"].as_bool().unwrap_or(false);
        let subscription_cancel = on("subscription_cancel");
        Self {
            payment_method_update: on("payment_method_update"),
            invoice_history: on("invoice_history"),
            subscription_cancel,
            cancel_mode: subscription_cancel
                .then(|| str_field(&features["subscription_cancel"], "mode"))
                .flatten(),
        }
    }

    /// As form parameters (`features[…][enabled]`, and the cancel mode when cancelling is on).
    fn add_to(&self, mut form: Form) -> Form {
        let flag = |b: bool| if b { "true" } else { "false" };
        form = form
            .add(
                "features[payment_method_update][enabled]",
                flag(self.payment_method_update),
            )
            .add(
                "features[invoice_history][enabled]",
                flag(self.invoice_history),
            )
            .add(
                "features[subscription_cancel][enabled]",
                flag(self.subscription_cancel),
            );
        if self.subscription_cancel {
            form = form.add_opt(
                "features[subscription_cancel][mode]",
                self.cancel_mode.clone(),
            );
        }
        form
    }
}

/// A Billing Portal configuration (`bpc_…`).
#[derive(Debug, Clone)]
pub struct PortalConfiguration {
    pub id: String,
    pub active: bool,
    pub default_return_url: Option<String>,
    pub features: PortalFeatures,
    pub metadata: BTreeMap<String, String>,
    pub raw: Value,
}

impl PortalConfiguration {
    pub fn from_json(raw: Value) -> Result<Self, StripeError> {
        Ok(Self {
            id: need_id(&raw)?,
            active: raw["active"].as_bool().unwrap_or(false),
            default_return_url: str_field(&raw, "default_return_url"),
            features: PortalFeatures::from_json(&raw["features"]),
            metadata: metadata(&raw),
            raw,
        })
    }
}

/// What a configuration should be: its features, the page owners return to, and the metadata that
/// marks it as ours.
#[derive(Debug, Clone)]
pub struct PortalConfigurationParams<'a> {
    pub features: PortalFeatures,
    pub default_return_url: &'a str,
    pub metadata: Vec<(&'a str, &'a str)>,
}

impl PortalConfigurationParams<'_> {
    fn form(&self) -> Form {
        self.features
            .add_to(Form::new())
            .add("default_return_url", self.default_return_url)
            .add_map("metadata", self.metadata.iter().copied())
    }
}

/// A Billing Portal session (`bps_…`): a short-lived URL for one customer.
#[derive(Debug, Clone)]
pub struct PortalSession {
    pub id: String,
    pub url: Option<String>,
    pub customer: Option<String>,
    pub configuration: Option<String>,
    /// `flow.type`, when the session opens on a flow.
    pub flow_type: Option<String>,
    pub raw: Value,
}

impl PortalSession {
    pub fn from_json(raw: Value) -> Result<Self, StripeError> {
        Ok(Self {
            id: need_id(&raw)?,
            url: str_field(&raw, "url"),
            customer: id_of(&raw["customer"]),
            configuration: id_of(&raw["configuration"]),
            flow_type: str_field(&raw["flow"], "type"),
            raw,
        })
    }
}

/// Parameters of a new portal session.
#[derive(Debug, Clone)]
pub struct NewPortalSession<'a> {
    pub customer: &'a str,
    pub configuration: &'a str,
    pub return_url: &'a str,
    /// `payment_method_update` opens the portal straight on the card form.
    pub flow: Option<&'a str>,
}

impl StripeClient {
    /// One page of portal configurations, active or not.
    pub async fn list_portal_configurations(
        &self,
        starting_after: Option<&str>,
    ) -> Result<Page<PortalConfiguration>, StripeError> {
        let query = Form::new()
            .add("limit", "100")
            .add_opt("starting_after", starting_after);
        page(
            self.send(&Call::get(
                "billing_portal_configuration.list",
                "/v1/billing_portal/configurations",
                query,
            ))
            .await?,
            PortalConfiguration::from_json,
        )
    }

    pub async fn create_portal_configuration(
        &self,
        params: &PortalConfigurationParams<'_>,
        key: String,
    ) -> Result<PortalConfiguration, StripeError> {
        PortalConfiguration::from_json(
            self.send(&Call::post(
                "billing_portal_configuration.create",
                "/v1/billing_portal/configurations",
                params.form(),
                Some(key),
            ))
            .await?,
        )
    }

    /// Sets the features, return URL and metadata, and makes the configuration active.
    pub async fn update_portal_configuration(
        &self,
        id: &str,
        params: &PortalConfigurationParams<'_>,
        key: String,
    ) -> Result<PortalConfiguration, StripeError> {
        let path = format!("/v1/billing_portal/configurations/{id}");
        PortalConfiguration::from_json(
            self.send(&Call::post(
                "billing_portal_configuration.update",
                &path,
                params.form().add("active", "true"),
                Some(key),
            ))
            .await?,
        )
    }

    pub async fn create_portal_session(
        &self,
        s: &NewPortalSession<'_>,
        key: String,
    ) -> Result<PortalSession, StripeError> {
        let form = Form::new()
            .add("customer", s.customer)
            .add("configuration", s.configuration)
            .add("return_url", s.return_url)
            .add_opt("flow_data[type]", s.flow);
        PortalSession::from_json(
            self.send(&Call::post(
                "billing_portal_session.create",
                "/v1/billing_portal/sessions",
                form,
                Some(key),
            ))
            .await?,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn features_are_read_tolerantly_and_written_as_brackets() {
        let f = PortalFeatures::from_json(&json!({
            "payment_method_update": {"enabled": true, "payment_method_configuration": null},
            "invoice_history": {"enabled": true},
            "subscription_cancel": {"enabled": true, "mode": "at_period_end", "extra": 1},
            "unknown_feature": {"enabled": true}
        }));
        assert_eq!(
            f,
            PortalFeatures {
                payment_method_update: true,
                invoice_history: true,
                subscription_cancel: true,
                cancel_mode: Some("at_period_end".into()),
            }
        );
        let missing = PortalFeatures::from_json(&json!({"invoice_history": {}}));
        assert!(!missing.payment_method_update && !missing.invoice_history);
        assert_eq!(missing.cancel_mode, None);
        let off = PortalFeatures {
            subscription_cancel: false,
            cancel_mode: Some("immediately".into()),
            ..f
        };
        let encoded = off.add_to(Form::new()).encode();
        assert!(encoded.contains("features%5Bsubscription_cancel%5D%5Benabled%5D=false"));
        assert!(!encoded.contains("mode"), "{encoded}");
    }

    #[test]
    fn a_session_without_optional_fields_still_reads() {
        let s = PortalSession::from_json(json!({
            "id": "bps_1", "object": "billing_portal.session", "customer": "cus_1",
            "configuration": {"id": "bpc_1"}, "flow": null, "url": "https://x/s"
        }))
        .unwrap();
        assert_eq!(s.configuration.as_deref(), Some("bpc_1"));
        assert_eq!(s.flow_type, None);
        assert!(PortalSession::from_json(json!({"url": "x"})).is_err());
    }
}
