//! The price catalog (SPEC §2): which pre-created Stripe Price bills each business type.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A catalog problem; the message names the entry and the field.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog {path}: {reason}")]
    Read { path: String, reason: String },
    #[error("invalid catalog: {0}")]
    Invalid(String),
}

/// What a trial does when it ends without a payment method (Stripe's `missing_payment_method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum MissingPaymentMethod {
    #[default]
    Cancel,
    CreateInvoice,
    Pause,
}

impl MissingPaymentMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cancel => "cancel",
            Self::CreateInvoice => "create_invoice",
            Self::Pause => "pause",
        }
    }
}

/// One catalog entry: a recurring price identified by its `lookup_key`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    pub lookup_key: String,
    /// Amount per interval in the currency's minor unit (cents).
    pub amount_cents: i64,
    #[serde(default = "default_currency")]
    pub currency: String,
    #[serde(default = "default_interval")]
    pub interval: String,
    #[serde(default)]
    pub trial_days: u32,
    #[serde(default)]
    pub missing_payment_method: MissingPaymentMethod,
    /// Name of the Stripe Product created by `prices sync`.
    #[serde(default)]
    pub product_name: Option<String>,
}

fn default_currency() -> String {
    "usd".into()
}
fn default_interval() -> String {
    "month".into()
}

impl Entry {
    /// The amount normalised to one month, in cents (yearly prices divided by 12, rounded half up).
    pub fn monthly_cents(&self) -> i64 {
        match self.interval.as_str() {
            "year" => (self.amount_cents * 10 / 12 + 5) / 10,
            "week" => (self.amount_cents * 52 * 10 / 12 + 5) / 10,
            "day" => (self.amount_cents * 365 * 10 / 12 + 5) / 10,
            _ => self.amount_cents,
        }
    }
}

/// The whole catalog: one entry per business type plus the type that unknown types fall back to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    /// The business type whose entry bills any type not listed.
    pub default_type: String,
    pub prices: BTreeMap<String, Entry>,
}

/// The business types the meta-agent creates today.
pub const KNOWN_TYPES: &[&str] = &["saas", "ecommerce", "content", "api", "tool"];

impl Default for Catalog {
    /// Every type at $5.00/month with no trial, as the first version billed.
    fn default() -> Self {
        let mut prices = BTreeMap::new();
        for t in KNOWN_TYPES.iter().chain(&["default"]) {
            prices.insert(
                (*t).to_owned(),
                Entry {
                    lookup_key: format!("genesis_{t}_monthly"),
                    amount_cents: 500,
                    currency: default_currency(),
                    interval: default_interval(),
                    trial_days: 0,
                    missing_payment_method: MissingPaymentMethod::Cancel,
                    product_name: None,
                },
            );
        }
        Self {
            default_type: "default".into(),
            prices,
        }
    }
}

impl Catalog {
    /// Reads and validates a TOML catalog file.
    pub fn from_file(path: &Path) -> Result<Self, CatalogError> {
        let text = std::fs::read_to_string(path).map_err(|e| CatalogError::Read {
            path: path.display().to_string(),
            reason: e.kind().to_string(),
        })?;
        Self::from_toml(&text)
    }

    pub fn from_toml(text: &str) -> Result<Self, CatalogError> {
        if text.len() > 1 << 20 {
            return Err(CatalogError::Invalid("file larger than 1 MiB".into()));
        }
        let catalog: Self =
            toml::from_str(text).map_err(|e| CatalogError::Invalid(e.message().to_owned()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    fn validate(&self) -> Result<(), CatalogError> {
        let bad = |t: &str, why: String| Err(CatalogError::Invalid(format!("entry {t:?}: {why}")));
        if !self.prices.contains_key(&self.default_type) {
            return Err(CatalogError::Invalid(format!(
                "default_type {:?} has no entry in [prices]",
                self.default_type
            )));
        }
        let mut keys = BTreeMap::new();
        for (t, e) in &self.prices {
            if !crate::business::valid_business_type(t) {
                return bad(
                    t,
                    "business type must be 1-64 characters of a-z, 0-9, _ or -".into(),
                );
            }
            if e.lookup_key.is_empty()
                || e.lookup_key.len() > 200
                || !e
                    .lookup_key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
            {
                return bad(
                    t,
                    "lookup_key must be 1-200 characters of letters, digits, _ - .".into(),
                );
            }
            if let Some(other) = keys.insert(e.lookup_key.as_str(), t.as_str()) {
                return bad(
                    t,
                    format!("lookup_key {:?} is also used by {other:?}", e.lookup_key),
                );
            }
            if !(1..=99_999_999).contains(&e.amount_cents) {
                return bad(t, "amount_cents must be between 1 and 99999999".into());
            }
            if e.currency.len() != 3 || !e.currency.bytes().all(|b| b.is_ascii_lowercase()) {
                return bad(
                    t,
                    "currency must be a lowercase ISO code such as usd".into(),
                );
            }
            if !["day", "week", "month", "year"].contains(&e.interval.as_str()) {
                return bad(t, "interval must be day, week, month or year".into());
            }
            if e.trial_days > 730 {
                return bad(t, "trial_days must be at most 730".into());
            }
        }
        Ok(())
    }

    /// The entry billing `business_type`, falling back to the default entry for unknown types.
    pub fn entry_for(&self, business_type: &str) -> &Entry {
        self.prices
            .get(business_type)
            .unwrap_or_else(|| &self.prices[&self.default_type])
    }

    /// Every distinct lookup key.
    pub fn lookup_keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self
            .prices
            .values()
            .map(|e| e.lookup_key.as_str())
            .collect();
        keys.sort_unstable();
        keys.dedup();
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_catalog_bills_every_type_five_dollars_a_month_without_trial() {
        let c = Catalog::default();
        for t in KNOWN_TYPES {
            let e = c.entry_for(t);
            assert_eq!(
                (
                    e.amount_cents,
                    e.currency.as_str(),
                    e.interval.as_str(),
                    e.trial_days
                ),
                (500, "usd", "month", 0)
            );
        }
        assert_eq!(
            c.entry_for("newsletter").lookup_key,
            "genesis_default_monthly"
        );
    }

    #[test]
    fn a_tiered_catalog_file_is_read() {
        let c = Catalog::from_toml(
            r#"
            default_type = "tool"
            [prices.saas]
            lookup_key = "genesis_saas_monthly"
            amount_cents = 5000
            trial_days = 14
            missing_payment_method = "pause"
            [prices.tool]
            lookup_key = "genesis_tool_monthly"
            amount_cents = 1000
            "#,
        )
        .unwrap();
        assert_eq!(c.entry_for("saas").trial_days, 14);
        assert_eq!(
            c.entry_for("saas").missing_payment_method,
            MissingPaymentMethod::Pause
        );
        assert_eq!(c.entry_for("blog").amount_cents, 1000);
    }

    #[test]
    fn bad_catalogs_are_refused_with_the_entry_named() {
        let cases = [
            ("default_type = \"x\"\n[prices.saas]\nlookup_key = \"k\"\namount_cents = 5", "default_type"),
            ("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"k\"\namount_cents = 0", "\"saas\""),
            ("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"k\"\namount_cents = 5\ncurrency = \"USD\"", "currency"),
            ("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"k\"\namount_cents = 5\ninterval = \"fortnight\"", "interval"),
            ("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"k k\"\namount_cents = 5", "lookup_key"),
            ("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"k\"\namount_cents = 5\n[prices.api]\nlookup_key = \"k\"\namount_cents = 5", "also used"),
            ("default_type = \"saas\"\n[prices.saas]\nlookup_key = \"k\"\namount_cents = 5\nprice = 3", "unknown field"),
            ("default_type = \"Bad Type\"\n[prices.\"Bad Type\"]\nlookup_key = \"k\"\namount_cents = 5", "business type"),
            ("not toml at all [", ""),
        ];
        for (text, want) in cases {
            let err = Catalog::from_toml(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn yearly_prices_are_normalised_to_a_month() {
        let mut e = Catalog::default().entry_for("saas").clone();
        e.interval = "year".into();
        e.amount_cents = 12_000;
        assert_eq!(e.monthly_cents(), 1000);
        e.amount_cents = 1001;
        assert_eq!(e.monthly_cents(), 83);
    }
}
