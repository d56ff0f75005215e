//! Reading a verified delivery: the envelope (id, type, created, livemode, account) and the few fields of
//! `data.object` that name the business, read once from the raw body without building the rest, and checked
//! (nesting, Stripe's character sets, an object under `data`, UTF-8). What it finds goes to the writer as
//! the event's `Triage`; the stored payload stays the raw body.

use crate::billing::{keys_of, not_ours, EventKeys, KeyFields, UNHANDLED_EVENT};
use crate::config::StripeMode;
use crate::store::Triage;

use super::APPLY_LANES;

/// Deepest nesting of arrays and objects in an event, checked on receipt (deeper: 400) and again on apply
/// (ignored), so the applier never meets a stored event it cannot parse. Stripe's events nest about ten
/// levels; serde_json's own limit (128) would stop the applier but not the receiver, which skips values.
pub const MAX_DEPTH: usize = 64;

/// Longest event id accepted.
pub const MAX_ID_LEN: usize = 255;

/// Whether `json` nests arrays and objects deeper than `MAX_DEPTH`. A scan of the bytes that skips
/// strings, not a parse (about 1 µs for a 2 KB event): the receiver reads only the envelope and skips the
/// rest unbuilt, without serde_json's depth limit.
pub fn too_deep(json: &[u8]) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                // Skip the string: to the next quote not escaped.
                i += 1;
                while i < json.len() {
                    match json[i] {
                        b'\\' => i += 2,
                        b'"' => break,
                        _ => i += 1,
                    }
                }
            }
            b'{' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}
/// Stripe's event ids: `evt_` and letters, digits or `_`, at most `MAX_ID_LEN` bytes.
pub fn valid_event_id(id: &str) -> bool {
    id.len() <= MAX_ID_LEN
        && id.strip_prefix("evt_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// Stripe's event types: lowercase letters, digits, `_` and `.`, at most 255 bytes.
pub fn valid_event_type(kind: &str) -> bool {
    !kind.is_empty()
        && kind.len() <= 255
        && kind
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'.')
}

/// A delivery read and checked, ready for the writer.
pub(super) struct Read<'a> {
    pub id: String,
    pub kind: String,
    pub created: i64,
    /// The raw body, stored as it came.
    pub payload: &'a str,
    /// The applier lane of the business it names.
    pub lane: usize,
    /// How the writer stores it.
    pub triage: Triage,
}

/// Whether the configured key is a live one (`None`: no key), as billing's mode rule takes it.
pub(super) fn key_is_live(mode: Option<StripeMode>) -> Option<bool> {
    mode.map(|m| m == StripeMode::Live)
}

/// Reads a signed body's envelope once and decides how it is stored; `None` when it is not a Stripe event
/// we can store unaltered (too deep, not an object, bad id or type, not UTF-8). `mode` is the configured
/// key's: an event of the other mode, or a connected account's, is stored ignored.
pub(super) fn read(body: &[u8], mode: Option<StripeMode>) -> Option<Read<'_>> {
    // Refused before it is stored: the applier could not parse it.
    if too_deep(body) {
        return None;
    }
    // Only the envelope is read here; the applier reads the object itself.
    let Envelope {
        id,
        kind,
        created,
        data,
        livemode,
        account,
    } = serde_json::from_slice::<Envelope>(body).ok()?;
    if !valid_event_id(&id) || !valid_event_type(&kind) {
        return None;
    }
    // The envelope must hold an object; a body that is not UTF-8 is refused rather than stored altered.
    let (Some(ObjectKeys(fields)), Ok(payload)) = (data.object.0, std::str::from_utf8(body)) else {
        return None;
    };
    let status = fields.status.clone();
    let keys = keys_of(&kind, fields);
    let lane = lane_for(&id, keys.as_ref());
    let status = status.filter(|s| crate::business::SUBSCRIPTION_STATUSES.contains(&s.as_str()));
    let status_event = matches!(
        kind.as_str(),
        "customer.subscription.created" | "customer.subscription.updated"
    );
    let triage = match (keys, status) {
        // The common event, a subscription's new status: written as it is stored when it can be.
        (
            Some(EventKeys {
                business_id,
                subscription: Some(subscription_id),
                customer,
            }),
            Some(status),
        ) if status_event => Triage::Status {
            business_id,
            subscription_id,
            customer,
            status,
        },
        (Some(k), _) => Triage::IfKnown(
            [k.business_id, k.subscription, k.customer]
                .into_iter()
                .flatten()
                .collect(),
        ),
        (None, _) => Triage::Ignore(UNHANDLED_EVENT),
    };
    let triage = match not_ours(livemode, account.as_deref(), key_is_live(mode)) {
        Some(why) => Triage::Ignore(why),
        None => triage,
    };
    Some(Read {
        id,
        kind,
        created,
        payload,
        lane,
        triage,
    })
}

/// The applier lane of a stored event, read as the receiver reads it (a retried event).
pub(super) fn stored_lane(id: &str, payload: &str) -> usize {
    let keys = serde_json::from_str::<Envelope>(payload)
        .ok()
        .and_then(|env| Some((env.kind, env.data.object.0?.0)))
        .and_then(|(kind, fields)| keys_of(&kind, fields));
    lane_for(id, keys.as_ref())
}

/// Which applier lane an event goes to: events about one customer (or, without one, one business or
/// subscription) keep their order in one lane.
fn lane_for(id: &str, keys: Option<&EventKeys>) -> usize {
    lane_of(
        keys.and_then(|k| {
            k.customer
                .as_ref()
                .or(k.business_id.as_ref())
                .or(k.subscription.as_ref())
        })
        .map_or(id, String::as_str),
    )
}

fn lane_of(key: &str) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() % APPLY_LANES as u64) as usize
}

/// The part of a Stripe event the receiver checks before storing it.
#[derive(serde::Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
    created: i64,
    /// Required to hold an object; read only for the keys naming the business it concerns.
    data: EnvelopeData,
    livemode: Option<bool>,
    /// Present on events about a connected account.
    account: Option<String>,
}

#[derive(serde::Deserialize)]
struct EnvelopeData {
    object: Lenient<ObjectKeys>,
}

/// A JSON value read for a few fields, skipping the rest without building it. A value of another shape
/// than expected (an expanded object where an id was expected, a null) reads as `None`, as it does for
/// the appliers, which look the same fields up in the full object (`billing::KeyFields::of`).
struct Lenient<T>(Option<T>);

/// What a `Lenient` reads from a string or an object; anything else is skipped.
trait Shape<'de>: Sized {
    fn from_str(_: &str) -> Option<Self> {
        None
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error>;
}

impl<'de, T: Shape<'de>> serde::Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor<T>(std::marker::PhantomData<T>);
        impl<'de, T: Shape<'de>> serde::de::Visitor<'de> for Visitor<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Lenient(T::from_str(v)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<Self::Value, A::Error> {
                T::from_map(map).map(Lenient)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Ok(Lenient(None))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(Lenient(None))
            }
        }
        d.deserialize_any(Visitor(std::marker::PhantomData))
    }
}

/// Reads the fields of a map named by `wanted` into its slots; skips the others.
fn read_fields<'de, A: serde::de::MapAccess<'de>>(
    mut map: A,
    mut wanted: impl FnMut(&str, &mut A) -> Result<bool, A::Error>,
) -> Result<(), A::Error> {
    while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
        if !wanted(&key, &mut map)? {
            map.next_value::<serde::de::IgnoredAny>()?;
        }
    }
    Ok(())
}

/// A string, or an expanded object's `id` (as `stripe::id_of` reads it).
struct Id(String);

impl<'de> Shape<'de> for Id {
    fn from_str(v: &str) -> Option<Self> {
        Some(Id(v.to_owned()))
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut id = None;
        read_fields(map, |key, map| {
            Ok(key == "id" && {
                id = map.next_value::<Lenient<Text>>()?.0.map(|t| Id(t.0));
                true
            })
        })?;
        Ok(id)
    }
}

/// A string and nothing else.
struct Text(String);

impl<'de> Shape<'de> for Text {
    fn from_str(v: &str) -> Option<Self> {
        Some(Text(v.to_owned()))
    }
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        read_fields(map, |_, _| Ok(false))?;
        Ok(None)
    }
}

/// `metadata.business_id`.
struct Metadata(Option<String>);

impl<'de> Shape<'de> for Metadata {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut business = None;
        read_fields(map, |key, map| {
            Ok(key == "business_id" && {
                business = map.next_value::<Lenient<Text>>()?.0.map(|t| t.0);
                true
            })
        })?;
        Ok(Some(Metadata(business)))
    }
}

/// `parent.subscription_details` of an invoice: its subscription and that subscription's metadata.
struct Parent {
    subscription: Option<String>,
    business_id: Option<String>,
}

impl<'de> Shape<'de> for Parent {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut details = None;
        read_fields(map, |key, map| {
            Ok(key == "subscription_details" && {
                details = map.next_value::<Lenient<Details>>()?.0;
                true
            })
        })?;
        Ok(details.map(|d| Parent {
            subscription: d.subscription,
            business_id: d.business_id,
        }))
    }
}

struct Details {
    subscription: Option<String>,
    business_id: Option<String>,
}

impl<'de> Shape<'de> for Details {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut d = Details {
            subscription: None,
            business_id: None,
        };
        read_fields(map, |key, map| {
            match key {
                "subscription" => d.subscription = map.next_value::<Lenient<Id>>()?.0.map(|i| i.0),
                "metadata" => {
                    d.business_id = map.next_value::<Lenient<Metadata>>()?.0.and_then(|m| m.0)
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Some(d))
    }
}

/// The fields of `data.object` that name the business an event concerns.
struct ObjectKeys(KeyFields);

impl<'de> Shape<'de> for ObjectKeys {
    fn from_map<A: serde::de::MapAccess<'de>>(map: A) -> Result<Option<Self>, A::Error> {
        let mut f = KeyFields::default();
        read_fields(map, |key, map| {
            match key {
                "id" => f.id = map.next_value::<Lenient<Text>>()?.0.map(|t| t.0),
                "status" => f.status = map.next_value::<Lenient<Text>>()?.0.map(|t| t.0),
                "customer" => f.customer = map.next_value::<Lenient<Id>>()?.0.map(|i| i.0),
                "metadata" => {
                    f.business_id = map.next_value::<Lenient<Metadata>>()?.0.and_then(|m| m.0)
                }
                "parent" => {
                    if let Some(p) = map.next_value::<Lenient<Parent>>()?.0 {
                        f.parent_subscription = p.subscription;
                        f.parent_business_id = p.business_id;
                    }
                }
                _ => return Ok(false),
            }
            Ok(true)
        })?;
        Ok(Some(ObjectKeys(f)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::billing::{KeyFields, CONNECTED_ACCOUNT, HANDLED_EVENTS, LIVEMODE_MISMATCH};
    use serde_json::Value;

    /// The receiver reads an event's keys from the raw body; the appliers read them from the parsed
    /// object. Both must agree on every shape Stripe may send, or triage would set aside an event its
    /// handler would have applied.
    #[test]
    fn the_receiver_reads_the_same_keys_as_the_appliers() {
        let objects = [
            r#"{"id":"sub_1","object":"subscription","customer":"cus_1","metadata":{"business_id":"b1"}}"#,
            r#"{"id":"sub_1","customer":{"id":"cus_2","object":"customer","metadata":{"business_id":"nested"}}}"#,
            r#"{"id":"in_1","customer":null,"metadata":null,"parent":null}"#,
            r#"{"id":"in_1","customer":7,"metadata":["b1"],"parent":"x"}"#,
            r#"{"id":"in_1","customer":"cus_1","parent":{"type":"subscription_details","subscription_details":{"subscription":"sub_9","metadata":{"business_id":"b9","other":"x"}}}}"#,
            r#"{"id":"in_1","parent":{"subscription_details":{"subscription":{"id":"sub_8","items":{"data":[{"id":"si_1"}]}},"metadata":{"business_id":5}}}}"#,
            r#"{"id":"cs_1","customer":{"id":7},"metadata":{"business_id":"b2","nested":{"a":[1,2,{"b":null}]}},"lines":[[],{}],"amount":1.5,"paid":true}"#,
            r#"{"id":{"x":1},"customer":"cus_\u00e9","metadata":{"business_id":"b\"q"}}"#,
            r#"{"id":"sub_1","status":"past_due","customer":"cus_1"}"#,
            r#"{"id":"sub_1","status":null}"#,
            r#"{"id":"sub_1","status":{"value":"active"}}"#,
            r#"{}"#,
        ];
        for object in objects {
            for kind in HANDLED_EVENTS.iter().chain(&["charge.refunded"]) {
                let body = format!(
                    r#"{{"id":"evt_1","type":"{kind}","created":1,"data":{{"object":{object}}}}}"#
                );
                let envelope: Envelope = serde_json::from_str(&body).unwrap();
                let ObjectKeys(read) = envelope.data.object.0.expect("an object");
                let value: Value = serde_json::from_str(object).unwrap();
                assert_eq!(read, KeyFields::of(&value), "{object}");
                let event: Value = serde_json::from_str(&body).unwrap();
                assert_eq!(
                    crate::billing::keys_of(kind, read),
                    crate::billing::event_keys(&event),
                    "{kind} {object}"
                );
            }
        }
    }

    #[test]
    fn nesting_is_counted_outside_strings_up_to_the_limit() {
        let nested = |n: usize| format!("{}{}", "[".repeat(n), "]".repeat(n));
        assert!(!too_deep(nested(MAX_DEPTH).as_bytes()));
        assert!(too_deep(nested(MAX_DEPTH + 1).as_bytes()));
        let objects = |n: usize| format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
        assert!(!too_deep(objects(MAX_DEPTH).as_bytes()));
        assert!(too_deep(objects(MAX_DEPTH + 1).as_bytes()));
        // Brackets inside strings, escaped quotes and backslashes do not count.
        let in_string = format!(
            r#"{{"a":"{}\"{}\\","b":[1]}}"#,
            "[".repeat(200),
            "{".repeat(200)
        );
        assert!(
            serde_json::from_str::<Value>(&in_string).is_ok(),
            "{in_string}"
        );
        assert!(!too_deep(in_string.as_bytes()));
        // Siblings do not add up.
        let wide = format!("[{}]", vec![nested(MAX_DEPTH - 1); 100].join(","));
        assert!(!too_deep(wide.as_bytes()));
        // Cut-off bodies end the scan without reading past the end.
        for cut in [&b"\"\\"[..], b"[\"abc", b"[\"a\\", b"\\"] {
            assert!(!too_deep(cut));
        }
        // serde_json builds what the receiver accepts.
        assert!(serde_json::from_str::<Value>(&nested(MAX_DEPTH)).is_ok());
    }

    #[test]
    fn event_ids_and_types_are_held_to_stripes_character_set() {
        for id in [
            "evt_1",
            "evt_1QabcDEF_23",
            &format!("evt_{}", "a".repeat(251)),
        ] {
            assert!(valid_event_id(id), "{id}");
        }
        for id in [
            "",
            "evt_",
            "evt",
            "EVT_1",
            "ev_1",
            "evt_a-b",
            "evt_a b",
            "evt_a\0",
            "evt_\u{e9}",
            "evt_a.b",
            "evt_a\n",
            &format!("evt_{}", "a".repeat(252)),
        ] {
            assert!(!valid_event_id(id), "{id:?}");
        }
        for kind in [
            "invoice.paid",
            "customer.subscription.updated",
            "v2.core.event_1",
        ] {
            assert!(valid_event_type(kind), "{kind}");
        }
        for kind in [
            "",
            "Invoice.paid",
            "invoice paid",
            "invoice.paid\0",
            "invoice-paid",
            "invoice.paid\n",
            "invoice/paid",
            &"a".repeat(256),
        ] {
            assert!(!valid_event_type(kind), "{kind:?}");
        }
    }

    #[test]
    fn an_event_of_the_other_mode_or_a_connected_account_is_not_ours() {
        use StripeMode::{Live, Test};
        assert_eq!(not_ours(Some(false), None, key_is_live(Some(Test))), None);
        assert_eq!(not_ours(Some(true), None, key_is_live(Some(Live))), None);
        assert_eq!(
            not_ours(Some(true), None, key_is_live(Some(Test))),
            Some(LIVEMODE_MISMATCH)
        );
        assert_eq!(
            not_ours(Some(false), None, key_is_live(Some(Live))),
            Some(LIVEMODE_MISMATCH)
        );
        assert_eq!(not_ours(None, None, key_is_live(Some(Test))), None);
        assert_eq!(not_ours(Some(true), None, None), None, "no key: no mode");
        assert_eq!(
            not_ours(Some(false), Some("acct_1"), key_is_live(Some(Test))),
            Some(CONNECTED_ACCOUNT)
        );
    }

    #[test]
    fn an_envelope_whose_object_is_not_an_object_reads_as_none() {
        for object in [r#""sub_1""#, "null", "[1]", "3"] {
            let body =
                format!(r#"{{"id":"evt_1","type":"x","created":1,"data":{{"object":{object}}}}}"#);
            let envelope: Envelope = serde_json::from_str(&body).unwrap();
            assert!(envelope.data.object.0.is_none(), "{object}");
        }
    }
}
