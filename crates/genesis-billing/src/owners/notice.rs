//! Notices to a business's owner, once per cause (issue 14).
//!
//! The planner reads the outbox after its cursor and writes one `owner_notice` row per cause
//! (`{event id}:{kind}`, unique): the outbox has one event per change, so a duplicate webhook, a replica
//! race, a restart or `events redeliver` plan nothing new. A roll-back's notice is written `held` before
//! its cancellation and released by the `billing.rolled_back` event that records it. Senders lease due
//! rows, render them, and record what the SMTP server answered; a temporary failure is retried with
//! backoff inside a window, a permanent one is `failed` at once (`notices resend` queues it again).
//!
//! A crash between the server's acceptance and our record of it sends that email again, with the same
//! `Message-ID`.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::Value;

use super::email;
use super::smtp::{Mailer, SendError};
use super::templates::Templates;
use super::Owners;
use crate::business::{rfc3339, Business};
use crate::config::{NoticeSettings, Settings};
use crate::metrics::{Metrics, NoticeOutcome};
use crate::store::{
    notice_message_id, NewNotice, Notice, NoticeState, OutboundEvent, OutboundFilter, Store,
    StoreError,
};

pub use crate::store::{
    now_ms, Notice as StoredNotice, NoticeFilter, NoticeState as State, Resend,
};

/// Outbox events read per page.
const PAGE: i64 = 200;
/// Pages planned per round before sending gets its turn.
const PAGES_PER_ROUND: usize = 5;
/// Notices sent per round.
const SEND_BATCH: i64 = 50;
/// A sender's hold on a notice (longer than one SMTP exchange).
const LEASE_MS: i64 = 120_000;
/// Longest wait between two attempts.
const MAX_BACKOFF_MS: i64 = 30 * 60 * 1000;

/// What the planner makes of an outbox event.
#[derive(Debug, Clone, PartialEq)]
pub enum Planned {
    /// A notice of `kind` for this cause.
    Notice {
        kind: &'static str,
        cause: String,
        data: Value,
    },
    /// A roll-back's held notice to decide now.
    ReleaseHeld {
        cause: String,
    },
    Nothing,
}

/// The cause of a roll-back's notice: one per cancelled subscription.
pub fn rollback_cause(subscription: &str) -> String {
    format!("rollback:{subscription}")
}

/// The notice an outbox event calls for, if any.
pub fn plan_for(event: &OutboundEvent) -> Planned {
    let data: Value = serde_json::from_str(&event.data).unwrap_or(Value::Null);
    let kind = match event.update_type.as_str() {
        "billing.payment_failed" => "payment_failed",
        "billing.action_required" => "action_required",
        "billing.trial_ending" if data["has_payment_method"] == Value::Bool(false) => {
            "trial_ending"
        }
        "business.taken_down" if data["initiated_by"] == "stripe" => "billing_ended",
        "billing.rolled_back" => {
            return match data["subscription_id"].as_str() {
                Some(sub) => Planned::ReleaseHeld {
                    cause: rollback_cause(sub),
                },
                None => Planned::Nothing,
            }
        }
        _ => return Planned::Nothing,
    };
    Planned::Notice {
        kind,
        cause: format!("{}:{kind}", event.id),
        data,
    }
}

/// Plans and sends owner notices.
pub struct Notices {
    store: Store,
    owners: Arc<Owners>,
    settings: NoticeSettings,
    templates: Templates,
    mailer: Option<Mailer>,
    metrics: Arc<Metrics>,
    /// This process's name on the leases it takes.
    holder: String,
}

impl std::fmt::Debug for Notices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Notices")
            .field("configured", &self.settings.configured())
            .finish()
    }
}

/// How one sending round went.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub sent: usize,
    pub retried: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Notices {
    /// Notices for these settings: templates read and the SMTP transport built (errors are settings
    /// problems: start-up stops).
    pub fn new(
        settings: &Settings,
        store: Store,
        owners: Arc<Owners>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let n = &settings.notices;
        let templates = Templates::load(n.templates.as_deref()).map_err(|e| e.to_string())?;
        let mailer = match (&n.smtp, &n.from) {
            (Some(endpoint), Some(_)) => Some(Mailer::new(endpoint)?),
            _ => None,
        };
        Ok(Self {
            store,
            owners,
            settings: n.clone(),
            templates,
            mailer,
            metrics,
            holder: format!("notices-{}", uuid::Uuid::new_v4().simple()),
        })
    }

    /// Whether notices are sent at all (SMTP server and From address configured).
    pub fn configured(&self) -> bool {
        self.mailer.is_some() && self.settings.configured()
    }

    /// What an `unpaid` subscription does to its business.
    pub fn unpaid_policy(&self) -> crate::config::UnpaidPolicy {
        self.settings.unpaid_policy
    }

    /// The store notices live in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether a notice of `kind` for `business` is sent, and to whom; or why not.
    fn decide(
        &self,
        kind: &str,
        business: Option<&Business>,
    ) -> (NoticeState, Option<String>, Option<String>) {
        let recipient = business
            .and_then(|b| b.email.as_deref())
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned);
        let skip = |why: &str| {
            (
                NoticeState::Skipped,
                recipient.clone(),
                Some(why.to_owned()),
            )
        };
        if !self.settings.configured() {
            return skip("notices are not configured (GENESIS_SMTP_URL and GENESIS_NOTICE_FROM)");
        }
        if self.settings.disabled.iter().any(|k| k == kind) {
            return skip("this kind of notice is turned off (GENESIS_NOTICE_DISABLE)");
        }
        if business.is_none() {
            return skip("no such business");
        }
        if recipient.is_none() {
            return skip("the business has no email address");
        }
        (NoticeState::Pending, recipient, None)
    }

    /// Plans the notices of every outbox event after the cursor; returns how many were new.
    pub async fn plan(&self) -> Result<usize, StoreError> {
        // The cursor is the fleet's: a process without a mail server (an operator's CLI, a replica whose
        // settings lag) must not decide for the others that every notice is skipped.
        if !self.configured() {
            return Ok(0);
        }
        let mut planned = 0;
        // A few pages per round, so a large backlog does not hold up sending.
        for _ in 0..PAGES_PER_ROUND {
            let after = self.store.notice_cursor().await?;
            let page = self
                .store
                .list_outbound(&OutboundFilter {
                    after: Some(after),
                    limit: PAGE,
                    ..OutboundFilter::default()
                })
                .await?;
            let mut done = None;
            for event in &page {
                match self.plan_one(event).await {
                    Ok(n) => planned += n,
                    // A record that cannot be read would stop every later notice: say so and go on.
                    Err(e @ StoreError::Corrupt { .. }) => {
                        tracing::error!(event_id = %event.id, error = %e, "cannot plan a notice for this event; skipped");
                        self.metrics.notice("unplannable", NoticeOutcome::Failed);
                    }
                    Err(e) => {
                        // Planning is idempotent by cause: the next round starts after the last event done.
                        if let Some(c) = done {
                            self.store.advance_notice_cursor(c).await?;
                        }
                        return Err(e);
                    }
                }
                done = Some(event.cursor());
            }
            // Moved once per page (one write), not once per event.
            if let Some(c) = done {
                self.store.advance_notice_cursor(c).await?;
            }
            if (page.len() as i64) < PAGE {
                break;
            }
        }
        Ok(planned)
    }

    async fn plan_one(&self, event: &OutboundEvent) -> Result<usize, StoreError> {
        match plan_for(event) {
            Planned::Nothing => Ok(0),
            Planned::ReleaseHeld { cause } => {
                let Some(held) = self.store.notice_by_cause(&cause).await? else {
                    return Ok(0);
                };
                if held.state != NoticeState::Held {
                    return Ok(0);
                }
                let business = self.store.get_business(&held.business_id).await?;
                let (state, recipient, reason) = self.decide(&held.kind, business.as_ref());
                let resolved = self
                    .store
                    .resolve_held_notice(&cause, state, recipient.as_deref(), reason.as_deref())
                    .await?;
                if resolved && state == NoticeState::Skipped {
                    self.metrics.notice(&held.kind, NoticeOutcome::Skipped);
                }
                Ok(usize::from(resolved))
            }
            Planned::Notice { kind, cause, data } => {
                let business = self.store.get_business(&event.business_id).await?;
                let (mut state, recipient, mut reason) = self.decide(kind, business.as_ref());
                const COVERED: &str =
                    "the payment needs the owner's authentication: the action-required notice covers it";
                // Stripe reports a charge waiting for 3-D Secure as a failed payment and as an action
                // required, one after the other: the owner gets the one that says what to do.
                if kind == "action_required" {
                    if let Some(invoice) = data["invoice_id"].as_str() {
                        let n = self
                            .store
                            .supersede_notices(
                                &event.business_id,
                                "payment_failed",
                                invoice,
                                COVERED,
                            )
                            .await?;
                        for _ in 0..n {
                            self.metrics
                                .notice("payment_failed", NoticeOutcome::Skipped);
                        }
                    }
                }
                // The same two events out of order: the action-required notice is there already.
                if kind == "payment_failed" && state == NoticeState::Pending {
                    if let Some(invoice) = data["invoice_id"].as_str() {
                        if self
                            .store
                            .has_notice_about(&event.business_id, "action_required", invoice)
                            .await?
                        {
                            state = NoticeState::Skipped;
                            reason = Some(COVERED.to_owned());
                        }
                    }
                }
                let delay_ms = match kind {
                    "payment_failed" => self.settings.payment_failed_hold_ms as i64,
                    _ => 0,
                };
                let new = self
                    .store
                    .insert_notice(&NewNotice {
                        message_id: notice_message_id(&cause),
                        cause,
                        business_id: event.business_id.clone(),
                        kind,
                        recipient,
                        state,
                        reason: reason.clone(),
                        data,
                        delay_ms,
                    })
                    .await?;
                if new {
                    if state == NoticeState::Skipped {
                        self.metrics.notice(kind, NoticeOutcome::Skipped);
                    }
                    tracing::info!(business_id = %event.business_id, kind, state = state.as_str(), reason = reason.as_deref().unwrap_or(""), "owner notice planned");
                }
                Ok(usize::from(new))
            }
        }
    }

    /// Sends the notices that are due (at most one batch).
    pub async fn send_due(&self) -> Result<Round, StoreError> {
        let mut round = Round::default();
        let Some(mailer) = &self.mailer else {
            return Ok(round);
        };
        let now = now_ms();
        for n in self.store.due_notices(now, SEND_BATCH).await? {
            if !self
                .store
                .claim_notice(&n.id, &self.holder, now_ms(), now_ms() + LEASE_MS)
                .await?
            {
                continue;
            }
            self.send_one(mailer, &n, &mut round).await?;
        }
        Ok(round)
    }

    async fn send_one(
        &self,
        mailer: &Mailer,
        n: &Notice,
        round: &mut Round,
    ) -> Result<(), StoreError> {
        let business = self.store.get_business(&n.business_id).await?;
        let (Some(business), Some(to)) = (business, n.recipient.as_deref()) else {
            self.store
                .notice_skipped(
                    &n.id,
                    &self.holder,
                    "the business or its email address is gone",
                )
                .await?;
            self.metrics.notice(&n.kind, NoticeOutcome::Skipped);
            round.skipped += 1;
            return Ok(());
        };
        let outcome = match self.message(n, &business, to) {
            Ok(message) => mailer.send(message).await,
            Err(e) => Err(SendError::Permanent(e)),
        };
        match outcome {
            Ok(()) => {
                self.store.notice_sent(&n.id, &self.holder).await?;
                self.metrics.notice(&n.kind, NoticeOutcome::Sent);
                tracing::info!(business_id = %n.business_id, notice = %n.id, kind = %n.kind, "owner notice sent");
                round.sent += 1;
            }
            Err(e) => {
                let next = match &e {
                    SendError::Temporary(_) => {
                        let at = now_ms() + backoff_ms(self.settings.retry_base_ms, n.attempts);
                        let window_end =
                            n.window_start_ms + self.settings.retry_window_secs as i64 * 1000;
                        (at <= window_end).then_some(at)
                    }
                    SendError::Permanent(_) => None,
                };
                self.store
                    .notice_attempt_failed(&n.id, &self.holder, next, e.message())
                    .await?;
                if next.is_some() {
                    self.metrics.notice(&n.kind, NoticeOutcome::Retried);
                    round.retried += 1;
                    tracing::warn!(business_id = %n.business_id, notice = %n.id, error = %e.message(), "owner notice not sent; retrying");
                } else {
                    self.metrics.notice(&n.kind, NoticeOutcome::Failed);
                    round.failed += 1;
                    tracing::warn!(business_id = %n.business_id, notice = %n.id, error = %e.message(), "owner notice failed");
                }
            }
        }
        Ok(())
    }

    /// The email of notice `n`, rendered with current values (a fresh manage link each attempt).
    fn message(
        &self,
        n: &Notice,
        business: &Business,
        to: &str,
    ) -> Result<lettre::Message, String> {
        let data: Value = serde_json::from_str(&n.data).unwrap_or(Value::Null);
        let mut values: HashMap<&str, String> = HashMap::new();
        values.insert("business_name", business.name.clone());
        values.insert("business_id", business.business_id.clone());
        if let Some(cents) = data["amount_due_cents"].as_i64() {
            values.insert(
                "amount",
                format_amount(cents, data["currency"].as_str().unwrap_or("usd")),
            );
        }
        values.insert(
            "next_attempt",
            instant(&data["next_payment_attempt"]).unwrap_or_else(|| "none scheduled".to_owned()),
        );
        if let Some(t) = instant(&data["trial_end"]) {
            values.insert("trial_end", t);
        }
        if let Some(url) = data["hosted_invoice_url"]
            .as_str()
            .filter(|u| u.starts_with("https://") || u.starts_with("http://"))
        {
            values.insert("hosted_invoice_url", url.to_owned());
        }
        values.insert(
            "reason",
            match data["reason"].as_str() {
                Some("unpaid") => "the invoice stayed unpaid after every retry".to_owned(),
                Some("subscription_cancelled") => "the subscription was cancelled".to_owned(),
                Some(other) => other.to_owned(),
                None => "the subscription ended".to_owned(),
            },
        );
        if matches!(n.kind.as_str(), "payment_failed" | "trial_ending") {
            let link = self
                .owners
                .manage_link(&business.business_id, super::now())
                .map_err(|e| e.to_string())?;
            values.insert("manage_url", link.url);
            values.insert("link_expires", rfc3339(link.expires_at));
        }
        let rendered = self.templates.render(&n.kind, &values);
        let from = self.settings.from.as_deref().unwrap_or_default();
        email::build(from, to, &n.message_id, &rendered).map_err(|e| e.to_string())
    }
}

/// An instant as the outbox writes it (RFC 3339 text, or unix seconds), for owners to read.
fn instant(v: &Value) -> Option<String> {
    match v {
        Value::Number(n) => n.as_i64().map(rfc3339),
        Value::String(s) => Some(s.chars().take(40).collect()),
        _ => None,
    }
}

/// The wait before attempt `attempts + 1`: `base` doubled per earlier attempt, at most 30 minutes, with
/// up to a tenth of jitter so replicas' retries spread out.
pub fn backoff_ms(base_ms: u64, attempts: i64) -> i64 {
    let exp = attempts.clamp(0, 20) as u32;
    let wait = (base_ms as i64)
        .saturating_mul(1i64 << exp)
        .min(MAX_BACKOFF_MS);
    wait + fastrand::i64(0..=wait / 10)
}

/// An amount as owners read it: `USD 5.00` (`JPY 500` for zero-decimal currencies).
pub fn format_amount(cents: i64, currency: &str) -> String {
    const ZERO_DECIMAL: &[&str] = &[
        "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "ugx", "vnd", "vuv",
        "xaf", "xof", "xpf",
    ];
    let code: String = currency
        .chars()
        .filter(char::is_ascii_alphabetic)
        .take(3)
        .collect::<String>()
        .to_ascii_uppercase();
    if ZERO_DECIMAL.contains(&code.to_ascii_lowercase().as_str()) {
        return format!("{code} {cents}");
    }
    let sign = if cents < 0 { "-" } else { "" };
    let c = cents.unsigned_abs();
    format!("{code} {sign}{}.{:02}", c / 100, c % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Delivery;

    fn event(update_type: &str, data: &str) -> OutboundEvent {
        OutboundEvent {
            seq: 1,
            txid: 0,
            id: "gbe_1".into(),
            business_id: "b1".into(),
            update_type: update_type.into(),
            data: data.into(),
            created_at: 0,
            delivery: Delivery::Pending,
            attempts: 0,
            retry_from: 0,
            next_attempt_ms: None,
            last_error: None,
            delivered_at: None,
        }
    }

    #[test]
    fn each_event_that_concerns_the_owner_plans_one_notice_named_by_its_cause() {
        let kind = |t: &str, d: &str| match plan_for(&event(t, d)) {
            Planned::Notice { kind, cause, .. } => {
                assert_eq!(cause, format!("gbe_1:{kind}"));
                Some(kind)
            }
            _ => None,
        };
        assert_eq!(kind("billing.payment_failed", "{}"), Some("payment_failed"));
        assert_eq!(
            kind("billing.action_required", "{}"),
            Some("action_required")
        );
        assert_eq!(
            kind("billing.trial_ending", r#"{"has_payment_method":false}"#),
            Some("trial_ending")
        );
        assert_eq!(
            kind("billing.trial_ending", r#"{"has_payment_method":true}"#),
            None
        );
        assert_eq!(
            kind(
                "business.taken_down",
                r#"{"initiated_by":"stripe","reason":"unpaid"}"#
            ),
            Some("billing_ended")
        );
        assert_eq!(
            kind("business.taken_down", r#"{"initiated_by":"api"}"#),
            None
        );
        assert_eq!(kind("billing.status_changed", "{}"), None);
        assert_eq!(kind("billing.payment_succeeded", "not json"), None);
        assert_eq!(
            plan_for(&event(
                "billing.rolled_back",
                r#"{"subscription_id":"sub_9"}"#
            )),
            Planned::ReleaseHeld {
                cause: "rollback:sub_9".into()
            }
        );
    }

    #[test]
    fn retries_start_within_a_minute_double_and_stop_growing_at_thirty_minutes() {
        let first = backoff_ms(30_000, 0);
        assert!((30_000..=33_000).contains(&first), "{first}");
        let second = backoff_ms(30_000, 1);
        assert!((60_000..=66_000).contains(&second), "{second}");
        let late = backoff_ms(30_000, 1000);
        assert!((MAX_BACKOFF_MS..=MAX_BACKOFF_MS * 11 / 10).contains(&late));
    }

    #[test]
    fn amounts_read_as_owners_expect() {
        assert_eq!(format_amount(500, "usd"), "USD 5.00");
        assert_eq!(format_amount(1999, "eur"), "EUR 19.99");
        assert_eq!(format_amount(500, "jpy"), "JPY 500");
        assert_eq!(format_amount(5, "<b>x"), "BX 0.05");
    }
}
