//! Import of records exported from the first Python version: all entries or none.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BillingError, BillingService};
use crate::business::{Billing, Business, Lifecycle, NewBusiness, SUBSCRIPTION_STATUSES};
use crate::store::now;

/// Largest export accepted; far above any real fleet's, small enough to parse in memory.
pub const MAX_IMPORT_BYTES: usize = 64 << 20;

/// A bad import file; the message names the entry and the field.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot read {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("import file is larger than {} MiB", MAX_IMPORT_BYTES >> 20)]
    TooLarge,
    #[error("import file is not a JSON object mapping business_id to records: {0}")]
    Malformed(String),
    #[error("entry {id:?}: {reason}")]
    Entry { id: String, reason: String },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LegacyRecord {
    business_name: String,
    business_type: Option<String>,
    stripe_customer_id: Option<String>,
    stripe_subscription_id: Option<String>,
    stripe_payment_intent_id: Option<String>,
    subscription_status: Option<String>,
    monthly_price_usd: Option<f64>,
}

/// What an import did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub imported: usize,
    pub with_subscription: usize,
    pub legacy_payment_intents: usize,
    pub without_billing: usize,
}

fn check_stripe_id(
    id: &str,
    field: &str,
    value: &Option<String>,
    prefix: &str,
) -> Result<(), ImportError> {
    match value {
        Some(v)
            if !(v.starts_with(prefix)
                && v.len() <= 255
                && v[prefix.len()..].bytes().all(|b| b.is_ascii_alphanumeric())
                && v.len() > prefix.len()) =>
        {
            Err(ImportError::Entry {
                id: id.to_owned(),
                reason: format!("{field} must look like {prefix}…"),
            })
        }
        _ => Ok(()),
    }
}

/// Parses and validates an export into records, without touching the database.
pub fn parse_export(bytes: &[u8], default_type: &str) -> Result<Vec<Business>, ImportError> {
    if bytes.len() > MAX_IMPORT_BYTES {
        return Err(ImportError::TooLarge);
    }
    let map: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(bytes).map_err(|e| ImportError::Malformed(e.to_string()))?;
    let created_at = now();
    let mut out = Vec::with_capacity(map.len());
    for (id, value) in map {
        let bad = |reason: String| ImportError::Entry {
            id: id.clone(),
            reason,
        };
        if !crate::business::is_business_id(&id) {
            return Err(bad(
                "business_id must be 1-64 characters of letters, digits, - or _".into(),
            ));
        }
        let r: LegacyRecord = serde_json::from_value(value).map_err(|e| bad(e.to_string()))?;
        let checked = NewBusiness {
            name: r.business_name,
            business_type: r.business_type.unwrap_or_else(|| default_type.to_owned()),
            email: None,
        }
        .validate()
        .map_err(|e| bad(e.to_string()))?;
        check_stripe_id(&id, "stripe_customer_id", &r.stripe_customer_id, "cus_")?;
        check_stripe_id(
            &id,
            "stripe_subscription_id",
            &r.stripe_subscription_id,
            "sub_",
        )?;
        check_stripe_id(
            &id,
            "stripe_payment_intent_id",
            &r.stripe_payment_intent_id,
            "pi_",
        )?;
        if let Some(s) = &r.subscription_status {
            if !SUBSCRIPTION_STATUSES.contains(&s.as_str()) {
                return Err(bad(format!(
                    "subscription_status {s:?} is not a Stripe subscription status"
                )));
            }
        }
        let cents = match r.monthly_price_usd {
            Some(p) if !(0.0..=1_000_000.0).contains(&p) || !p.is_finite() => {
                return Err(bad("monthly_price_usd must be between 0 and 1000000".into()));
            }
            Some(p) => Some((p * 100.0).round() as i64),
            None => None,
        };
        let billed = r.stripe_subscription_id.is_some() || r.stripe_payment_intent_id.is_some();
        out.push(Business {
            business_id: id,
            name: checked.name,
            business_type: checked.business_type,
            email: None,
            created_at,
            updated_at: created_at,
            status: Lifecycle::Active,
            billing: if billed {
                Billing::Provisioned
            } else {
                Billing::Skipped
            },
            billing_error: (!billed).then(|| "imported without Stripe billing".to_owned()),
            failed_step: None,
            stripe_customer_id: r.stripe_customer_id,
            stripe_subscription_id: r.stripe_subscription_id,
            stripe_payment_intent_id: r.stripe_payment_intent_id,
            subscription_status: r.subscription_status,
            price_lookup_key: None,
            stripe_price_id: None,
            monthly_price_cents: cents,
            currency: cents.map(|_| "usd".to_owned()),
            generation: 0,
            stripe_state_at: 0,
            taken_down_at: None,
            takedown_reason: None,
            takedown_outcome: None,
        });
    }
    Ok(out)
}

impl BillingService {
    /// Imports an export: validates every entry first, then inserts all of them in one transaction.
    pub async fn import(&self, bytes: &[u8]) -> Result<ImportReport, BillingError> {
        let records = parse_export(bytes, &self.catalog.default_type)?;
        self.store.insert_businesses(&records).await?;
        Ok(ImportReport {
            imported: records.len(),
            with_subscription: records
                .iter()
                .filter(|b| b.stripe_subscription_id.is_some())
                .count(),
            legacy_payment_intents: records
                .iter()
                .filter(|b| {
                    b.stripe_subscription_id.is_none() && b.stripe_payment_intent_id.is_some()
                })
                .count(),
            without_billing: records
                .iter()
                .filter(|b| b.billing == Billing::Skipped)
                .count(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_export_parses_with_legacy_and_subscription_records() {
        let json = br#"{
            "b1": {"business_name": "One", "business_type": "saas", "stripe_customer_id": "cus_1", "stripe_subscription_id": "sub_1", "subscription_status": "active", "monthly_price_usd": 5.0},
            "b2": {"business_name": "Two", "stripe_payment_intent_id": "pi_2", "monthly_price_usd": 4.99},
            "b3": {"business_name": "Three"}
        }"#;
        let records = parse_export(json, "default").unwrap();
        assert_eq!(records.len(), 3);
        assert_eq!(records[0].monthly_price_cents, Some(500));
        assert_eq!(records[1].business_type, "default");
        assert_eq!(records[1].monthly_price_cents, Some(499));
        assert_eq!(records[2].billing, Billing::Skipped);
    }

    #[test]
    fn bad_entries_are_named() {
        let cases: &[(&[u8], &str)] = &[
            (b"[]", "not a JSON object"),
            (b"{\"b1\": {}}", "\"b1\""),
            (b"{\"b1\": {\"business_name\": \"\"}}", "name"),
            (
                b"{\"b1\": {\"business_name\": \"x\", \"subscription_status\": \"great\"}}",
                "subscription_status",
            ),
            (
                b"{\"b1\": {\"business_name\": \"x\", \"stripe_subscription_id\": \"cus_1\"}}",
                "stripe_subscription_id",
            ),
            (
                b"{\"b1\": {\"business_name\": \"x\", \"monthly_price_usd\": -1}}",
                "monthly_price_usd",
            ),
            (
                b"{\"b1\": {\"business_name\": \"x\", \"surprise\": 1}}",
                "unknown field",
            ),
            (b"{\"b 1\": {\"business_name\": \"x\"}}", "business_id"),
            (b"\xff\xfe", "not a JSON object"),
        ];
        for (input, want) in cases {
            let err = parse_export(input, "default").unwrap_err().to_string();
            assert!(
                err.contains(want),
                "{}: {err}",
                String::from_utf8_lossy(input)
            );
        }
    }
}
