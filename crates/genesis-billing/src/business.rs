//! The business record (SPEC §1) and the rules for its fields.

use serde::Serialize;
use sha2::{Digest, Sha256};

/// Lifecycle of the business itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Lifecycle {
    Active,
    TakenDown,
}

/// Outcome of billing provisioning.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Billing {
    Pending,
    Provisioned,
    Skipped,
    Failed,
    /// The first invoice went unpaid for 23 hours: Stripe expired the subscription.
    Expired,
}

macro_rules! str_enum {
    ($t:ty { $($v:ident => $s:literal),+ $(,)? }) => {
        impl $t {
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$v => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some(Self::$v),)+ _ => None }
            }
        }
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(Lifecycle { Active => "active", TakenDown => "taken_down" });
str_enum!(Billing { Pending => "pending", Provisioned => "provisioned", Skipped => "skipped", Failed => "failed", Expired => "expired" });

/// Stripe's subscription statuses at our API version.
pub const SUBSCRIPTION_STATUSES: &[&str] = &[
    "incomplete",
    "incomplete_expired",
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "paused",
];

/// Statuses in which Stripe may still charge the customer: takedown must cancel these.
pub fn is_live_subscription(status: &str) -> bool {
    !matches!(status, "canceled" | "incomplete_expired")
}

/// A business and its billing state, as stored.
#[derive(Debug, Clone, Serialize)]
pub struct Business {
    pub business_id: String,
    pub name: String,
    pub business_type: String,
    pub email: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    pub status: Lifecycle,
    pub billing: Billing,
    pub billing_error: Option<String>,
    pub failed_step: Option<String>,
    pub stripe_customer_id: Option<String>,
    pub stripe_subscription_id: Option<String>,
    pub stripe_payment_intent_id: Option<String>,
    pub subscription_status: Option<String>,
    pub price_lookup_key: Option<String>,
    pub stripe_price_id: Option<String>,
    pub monthly_price_cents: Option<i64>,
    pub currency: Option<String>,
    /// Bumped when a replacement subscription is needed, so its idempotency keys are new.
    pub generation: i64,
    /// `created` of the newest Stripe state applied, so older events never overwrite newer ones.
    pub stripe_state_at: i64,
    pub taken_down_at: Option<i64>,
    pub takedown_reason: Option<String>,
    /// `None` while a takedown's Stripe side is unfinished.
    pub takedown_outcome: Option<String>,
}

/// Input of a new business.
#[derive(Debug, Clone)]
pub struct NewBusiness {
    pub name: String,
    pub business_type: String,
    pub email: Option<String>,
}

/// A rejected input; the message says which field and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: &str) -> InvalidInput {
    InvalidInput {
        field,
        reason: reason.to_owned(),
    }
}

/// `saas`, `ecommerce`, ...: 1–64 characters of lowercase letters, digits, `_` and `-`.
pub fn valid_business_type(t: &str) -> bool {
    (1..=64).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

impl NewBusiness {
    /// Trims and checks the input; nothing is stored when this fails.
    pub fn validate(self) -> Result<Self, InvalidInput> {
        let name = self.name.trim().to_owned();
        if name.is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if name.chars().count() > 500 {
            return Err(invalid("name", "must be at most 500 characters"));
        }
        if name.chars().any(char::is_control) {
            return Err(invalid("name", "must not contain control characters"));
        }
        let business_type = self.business_type.trim().to_owned();
        if !valid_business_type(&business_type) {
            return Err(invalid(
                "business_type",
                "must be 1-64 characters of a-z, 0-9, _ or -",
            ));
        }
        let email = match self
            .email
            .map(|e| e.trim().to_owned())
            .filter(|e| !e.is_empty())
        {
            None => None,
            Some(e) => {
                let ok = e.len() <= 254
                    && !e.chars().any(|c| c.is_whitespace() || c.is_control())
                    && matches!(e.split_once('@'), Some((local, domain)) if !local.is_empty() && domain.contains('.') && !domain.contains('@'));
                if !ok {
                    return Err(invalid(
                        "email",
                        "must be an address like owner@example.com",
                    ));
                }
                Some(e)
            }
        };
        Ok(Self {
            name,
            business_type,
            email,
        })
    }
}

/// Whether a business falls inside a roll-out of `percent` %; stable for a given id.
pub fn in_rollout(business_id: &str, percent: u8) -> bool {
    if percent >= 100 {
        return true;
    }
    let digest = Sha256::digest(business_id.as_bytes());
    let bucket = u64::from_be_bytes(digest[..8].try_into().expect("8 bytes")) % 100;
    bucket < u64::from(percent)
}

/// Truncates to at most `max` characters (not bytes), as Stripe counts them.
pub fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(name: &str, t: &str, email: Option<&str>) -> Result<NewBusiness, InvalidInput> {
        NewBusiness {
            name: name.into(),
            business_type: t.into(),
            email: email.map(Into::into),
        }
        .validate()
    }

    #[test]
    fn good_input_is_trimmed_and_accepted() {
        let b = new("  Acme  ", "saas", Some(" a@b.co ")).unwrap();
        assert_eq!(
            (b.name.as_str(), b.email.as_deref()),
            ("Acme", Some("a@b.co"))
        );
    }

    #[test]
    fn bad_input_names_the_field() {
        let cases = [
            (new("", "saas", None), "name"),
            (new(&"x".repeat(501), "saas", None), "name"),
            (new("a\u{0}b", "saas", None), "name"),
            (new("ok", "SaaS", None), "business_type"),
            (new("ok", "", None), "business_type"),
            (new("ok", &"a".repeat(65), None), "business_type"),
            (
                new("ok", "saas'; DROP TABLE business;--", None),
                "business_type",
            ),
            (new("ok", "saas", Some("no-at-sign")), "email"),
            (new("ok", "saas", Some("a b@c.d")), "email"),
            (
                new("ok", "saas", Some(&format!("{}@x.io", "a".repeat(300)))),
                "email",
            ),
        ];
        for (result, field) in cases {
            assert_eq!(result.unwrap_err().field, field);
        }
    }

    #[test]
    fn truncation_counts_characters_not_bytes() {
        let name = "é".repeat(150);
        let cut = truncate_chars(&name, 100);
        assert_eq!(cut.chars().count(), 100);
        assert_eq!(truncate_chars("short", 100), "short");
    }

    #[test]
    fn rollout_is_deterministic_and_roughly_proportional() {
        let ids: Vec<String> = (0..2000)
            .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
            .collect();
        let included = ids.iter().filter(|id| in_rollout(id, 30)).count();
        assert!((500..700).contains(&included), "{included}");
        assert!(ids
            .iter()
            .all(|id| in_rollout(id, 30) == in_rollout(id, 30)));
        assert!(
            ids.iter()
                .filter(|id| in_rollout(id, 30))
                .all(|id| in_rollout(id, 60)),
            "raising the percentage keeps those already in"
        );
        assert!(ids
            .iter()
            .all(|id| !in_rollout(id, 0) && in_rollout(id, 100)));
    }
}

/// Whether `s` has a business id's shape: 1-64 letters, digits, `-` or `_` (ids, list cursors, import
/// keys all share the rule).
pub fn is_business_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// UTC RFC 3339 (`2026-11-27T08:55:05Z`) for unix seconds, without a date-time crate.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(super::rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(super::rfc3339(1_795_769_705), "2026-11-27T08:55:05Z");
    }
}
