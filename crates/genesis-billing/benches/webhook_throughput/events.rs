//! The events sent: a 2 KiB template of a real Stripe event at API 2026-09-30.endive, one key per event,
//! every one signed before its phase starts so the load generator only copies bytes while measuring.

use hmac::{Hmac, Mac};
use hyper::body::Bytes;
use hyper::header::HeaderValue;
use sha2::Sha256;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::settings::EventKind;
use crate::{BODY_SIZE, SECRET};

type HmacSha256 = Hmac<Sha256>;

/// Stands for the per-event key in the body template; every key has exactly this length.
const KEY_MARK: &str = "KKKKKKKKKKKKKKKK";
/// Stands for the key of the business an event is about (its subscription, customer, `business_id`): the
/// event's own key by default, so every event names a business the service does not know; with
/// `WEBHOOK_BENCH_BUSINESSES=N`, one of N businesses imported before the run.
const BUSINESS_MARK: &str = "BBBBBBBBBBBBBBBB";
const API_VERSION: &str = "2026-09-30.endive";

/// Seconds since 1970: the events' `created` and the signatures' `t`.
fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// A `customer.subscription.updated` event body at API 2026-09-30.endive (a subscription with its fields
/// that matter here, null-valued rarely used ones left out, the description padding the body to exactly
/// `BODY_SIZE`), split where the event's key goes.
fn body_template(created: i64) -> Vec<(String, Option<bool>)> {
    let b = BUSINESS_MARK;
    let period_start = created - 86_400;
    let period_end = period_start + 30 * 86_400;
    let price = serde_json::json!({
        "id": "price_1QbenchSaasStarterMonthly",
        "object": "price",
        "active": true,
        "billing_scheme": "per_unit",
        "created": period_start - 86_400,
        "currency": "usd",
        "livemode": false,
        "lookup_key": "saas_starter_monthly",
        "metadata": {},
        "nickname": null,
        "product": "prod_QbenchSaasStarter",
        "recurring": {"interval": "month", "interval_count": 1, "meter": null, "usage_type": "licensed"},
        "tax_behavior": "unspecified",
        "type": "recurring",
        "unit_amount": 2900,
        "unit_amount_decimal": "2900"
    });
    let build = |description: &str| {
        event_json(
            created,
            "customer.subscription.updated",
            serde_json::json!({
                "object": {
                    "id": format!("sub_1Q{b}"),
                    "object": "subscription",
                    "automatic_tax": {"disabled_reason": null, "enabled": false, "liability": null},
                    "billing_cycle_anchor": period_start,
                    "cancel_at": null,
                    "cancel_at_period_end": false,
                    "canceled_at": null,
                    "collection_method": "charge_automatically",
                    "created": period_start,
                    "currency": "usd",
                    "customer": format!("cus_Q{b}"),
                    "days_until_due": null,
                    "default_payment_method": format!("pm_1Q{b}"),
                    "default_tax_rates": [],
                    "description": description,
                    "discounts": [],
                    "ended_at": null,
                    "items": {
                        "object": "list",
                        "data": [{
                            "id": format!("si_Q{b}"),
                            "object": "subscription_item",
                            "created": period_start,
                            "current_period_end": period_end,
                            "current_period_start": period_start,
                            "discounts": [],
                            "metadata": {},
                            "price": price,
                            "quantity": 1,
                            "subscription": format!("sub_1Q{b}"),
                            "tax_rates": []
                        }],
                        "has_more": false,
                        "total_count": 1,
                        "url": format!("/v1/subscription_items?subscription=sub_1Q{b}")
                    },
                    "latest_invoice": format!("in_1Q{b}"),
                    "livemode": false,
                    "metadata": {"business_id": format!("bench-{b}"), "business_type": "saas"},
                    "pause_collection": null,
                    "schedule": null,
                    "start_date": period_start,
                    "status": "active",
                    "trial_end": null,
                    "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
                    "trial_start": null
                },
                "previous_attributes": {"status": "incomplete"}
            }),
        )
    };
    padded(build)
}

/// An `invoice.paid` event body at API 2026-09-30.endive: a subscription's paid renewal invoice, which names
/// its subscription and business under `parent.subscription_details` (`WEBHOOK_BENCH_EVENT=invoice.paid`).
fn invoice_template(created: i64) -> Vec<(String, Option<bool>)> {
    let (k, b) = (KEY_MARK, BUSINESS_MARK);
    let period_start = created - 30 * 86_400;
    let build = |description: &str| {
        event_json(
            created,
            "invoice.paid",
            serde_json::json!({
                "object": {
                    "id": format!("in_1Q{k}"),
                    "object": "invoice",
                    "account_country": "US",
                    "amount_due": 2900,
                    "amount_paid": 2900,
                    "amount_remaining": 0,
                    "attempt_count": 1,
                    "attempted": true,
                    "billing_reason": "subscription_cycle",
                    "collection_method": "charge_automatically",
                    "created": created,
                    "currency": "usd",
                    "customer": format!("cus_Q{b}"),
                    "description": description,
                    "lines": {
                        "object": "list",
                        "data": [{
                            "id": format!("il_1Q{k}"),
                            "object": "line_item",
                            "amount": 2900,
                            "currency": "usd",
                            "description": "1 × Genesis SaaS (at $29.00 / month)",
                            "period": {"end": created, "start": period_start},
                            "pricing": {"price_details": {"price": "price_1QbenchSaasStarterMonthly", "product": "prod_QbenchSaasStarter"}, "type": "price_details", "unit_amount_decimal": "2900"},
                            "quantity": 1
                        }],
                        "has_more": false,
                        "total_count": 1,
                        "url": format!("/v1/invoices/in_1Q{k}/lines")
                    },
                    "livemode": false,
                    "metadata": {},
                    "parent": {
                        "type": "subscription_details",
                        "quote_details": null,
                        "subscription_details": {
                            "metadata": {"business_id": format!("bench-{b}"), "business_type": "saas"},
                            "subscription": format!("sub_1Q{b}")
                        }
                    },
                    "period_end": created,
                    "period_start": period_start,
                    "status": "paid",
                    "status_transitions": {"finalized_at": created, "paid_at": created},
                    "subtotal": 2900,
                    "total": 2900
                }
            }),
        )
    };
    padded(build)
}

/// A Stripe event envelope about `data` (`object`, and `previous_attributes` for an update), with the
/// per-event key in its id: the part every event type shares.
fn event_json(created: i64, kind: &str, data: serde_json::Value) -> String {
    serde_json::json!({
        "id": format!("evt_1Q{KEY_MARK}"),
        "object": "event",
        "api_version": API_VERSION,
        "created": created,
        "data": data,
        "livemode": false,
        "pending_webhooks": 1,
        "request": {"id": null, "idempotency_key": null},
        "type": kind
    })
    .to_string()
}

/// The event `build` makes with a description that pads it to exactly `BODY_SIZE`, cut at its marks.
fn padded(build: impl Fn(&str) -> String) -> Vec<(String, Option<bool>)> {
    let bare = build("").len();
    assert!(bare < BODY_SIZE, "template alone is {bare} bytes");
    const FILLER: &str =
        "Genesis business subscription, benchmark padding to a realistic event size. ";
    let description: String = FILLER.chars().cycle().take(BODY_SIZE - bare).collect();
    let full = build(&description);
    assert_eq!(full.len(), BODY_SIZE);
    split_marks(&full)
}

/// A template cut at each mark: the text before it, and whether the mark stands for the business's key.
fn split_marks(full: &str) -> Vec<(String, Option<bool>)> {
    let mut out = Vec::new();
    let mut rest = full;
    loop {
        let next = [(KEY_MARK, false), (BUSINESS_MARK, true)]
            .into_iter()
            .filter_map(|(mark, business)| rest.find(mark).map(|at| (at, business)))
            .min();
        match next {
            Some((at, business)) => {
                out.push((rest[..at].to_owned(), Some(business)));
                rest = &rest[at + KEY_MARK.len()..];
            }
            None => {
                out.push((rest.to_owned(), None));
                return out;
            }
        }
    }
}

/// The key of the `n`th imported business (`WEBHOOK_BENCH_BUSINESSES`); as long as an event's key.
pub fn business_key(n: usize) -> String {
    format!("bz{n:014}")
}

/// The events of one phase: bodies are rebuilt from the template on demand, signatures are computed up front.
pub struct Pool {
    /// The template's text between marks, each followed by the mark it was cut at (none after the last).
    segments: Vec<(String, Option<bool>)>,
    /// 0: each event is about a business of its own, unknown to the service; else event i is about imported
    /// business i mod `businesses`.
    businesses: usize,
    /// Distinguishes the phases of one run: `{run:04x}{phase:02}`, completed by a 10-digit index.
    prefix: String,
    t: i64,
    signatures: Vec<[u8; 64]>,
}

impl Pool {
    /// Signs `count` events of phase `phase` of run `run`, on `threads` threads.
    pub fn new(
        run: u16,
        phase: u8,
        count: usize,
        threads: usize,
        businesses: usize,
        event: EventKind,
    ) -> Self {
        let t = unix_now();
        let mut pool = Pool {
            segments: match event {
                EventKind::SubscriptionUpdated => body_template(t),
                EventKind::InvoicePaid => invoice_template(t),
            },
            businesses,
            prefix: format!("{run:04x}{phase:02}"),
            t,
            signatures: Vec::new(),
        };
        let keyed = HmacSha256::new_from_slice(SECRET.as_bytes()).expect("any key length");
        let stamp = format!("{t}.");
        let chunk = count.div_ceil(threads.max(1)).max(1);
        let ranges: Vec<(usize, usize)> = (0..count)
            .step_by(chunk)
            .map(|s| (s, (s + chunk).min(count)))
            .collect();
        let signatures = std::thread::scope(|scope| {
            let handles: Vec<_> = ranges
                .iter()
                .map(|&(from, to)| {
                    let (pool, keyed, stamp) = (&pool, &keyed, &stamp);
                    scope.spawn(move || {
                        let mut out = Vec::with_capacity(to - from);
                        let mut body = Vec::with_capacity(BODY_SIZE);
                        for i in from..to {
                            pool.write_body(i, &mut body);
                            let mut mac = keyed.clone();
                            mac.update(stamp.as_bytes());
                            mac.update(&body);
                            out.push(hex32(&mac.finalize().into_bytes()));
                        }
                        out
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("signing thread"))
                .collect::<Vec<_>>()
        });
        pool.signatures = signatures;
        pool
    }

    /// How many events the pool holds.
    pub fn len(&self) -> usize {
        self.signatures.len()
    }

    /// Writes event `i`'s body into `out`, replacing what it held.
    fn write_body(&self, i: usize, out: &mut Vec<u8>) {
        let key = format!("{}{:010}", self.prefix, i);
        let business = match self.businesses {
            0 => key.clone(),
            n => business_key(i % n),
        };
        debug_assert_eq!(key.len(), KEY_MARK.len());
        debug_assert_eq!(business.len(), BUSINESS_MARK.len());
        out.clear();
        for (seg, mark) in &self.segments {
            out.extend_from_slice(seg.as_bytes());
            match mark {
                Some(false) => out.extend_from_slice(key.as_bytes()),
                Some(true) => out.extend_from_slice(business.as_bytes()),
                None => {}
            }
        }
    }

    /// Event `i`'s body.
    pub fn body(&self, i: usize) -> Bytes {
        let mut v = Vec::with_capacity(BODY_SIZE);
        self.write_body(i, &mut v);
        Bytes::from(v)
    }

    /// Event `i`'s `Stripe-Signature` header: `t=…,v1=…`.
    pub fn signature_header(&self, i: usize) -> HeaderValue {
        let mut s = format!("t={},v1=", self.t).into_bytes();
        s.extend_from_slice(&self.signatures[i]);
        HeaderValue::from_maybe_shared(Bytes::from(s)).expect("ascii header")
    }
}

/// The first 32 bytes of `bytes` in lowercase hex.
fn hex32(bytes: &[u8]) -> [u8; 64] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = [0u8; 64];
    for (n, b) in bytes.iter().take(32).enumerate() {
        out[2 * n] = HEX[(b >> 4) as usize];
        out[2 * n + 1] = HEX[(b & 15) as usize];
    }
    out
}
