//! Verification of Stripe's `Stripe-Signature` header (SPEC §1.4), before anything else touches the body.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// Why a delivery was refused; the label is the `reason` of `genesis_billing_webhook_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    NoSecret,
    TooLarge,
    MissingSignature,
    MalformedSignature,
    BadSignature,
    StaleTimestamp,
    FutureTimestamp,
    BadPayload,
}

impl Rejection {
    pub fn reason(self) -> &'static str {
        match self {
            Self::NoSecret => "no_secret",
            Self::TooLarge => "too_large",
            Self::MissingSignature => "missing_signature",
            Self::MalformedSignature => "malformed_signature",
            Self::BadSignature => "bad_signature",
            Self::StaleTimestamp => "stale_timestamp",
            Self::FutureTimestamp => "future_timestamp",
            Self::BadPayload => "bad_payload",
        }
    }

    /// A sentence for the HTTP response; never echoes the header or the body.
    pub fn message(self) -> &'static str {
        match self {
            Self::NoSecret => "no webhook signing secret is configured; every event is refused",
            Self::TooLarge => "body larger than 1 MiB",
            Self::MissingSignature => "missing Stripe-Signature header",
            Self::MalformedSignature => {
                "malformed Stripe-Signature header: expected t=<unix time>,v1=<hex>"
            }
            Self::BadSignature => "no v1 signature matches a configured secret",
            Self::StaleTimestamp => "signature timestamp is older than the tolerance",
            Self::FutureTimestamp => "signature timestamp is too far in the future",
            Self::BadPayload => "body is not a Stripe event",
        }
    }
}

const MAX_HEADER: usize = 8 * 1024;

/// Parses `t=…,v1=…[,v1=…][,v0=…]` into the timestamp and the decoded `v1` signatures.
fn parse_header(header: &str) -> Result<(i64, Vec<[u8; 32]>), Rejection> {
    if header.len() > MAX_HEADER {
        return Err(Rejection::MalformedSignature);
    }
    let mut t = None;
    let mut v1 = Vec::new();
    for part in header.split(',') {
        let (k, v) = part
            .trim()
            .split_once('=')
            .ok_or(Rejection::MalformedSignature)?;
        match k {
            "t" => {
                if t.is_some() {
                    return Err(Rejection::MalformedSignature);
                }
                t = Some(
                    v.parse::<i64>()
                        .map_err(|_| Rejection::MalformedSignature)?,
                );
            }
            "v1" => v1.push(decode_hex32(v).ok_or(Rejection::MalformedSignature)?),
            // v0 (test-mode fake) and future schemes are ignored, as Stripe's SDKs do.
            _ => {}
        }
    }
    match (t, v1.is_empty()) {
        (Some(t), false) => Ok((t, v1)),
        _ => Err(Rejection::MalformedSignature),
    }
}

/// Checks only the header's shape, so a delivery with a malformed header is refused before its body is read.
pub fn check_header(header: &str) -> Result<(), Rejection> {
    parse_header(header).map(|_| ())
}

fn decode_hex32(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = (hi * 16 + lo) as u8;
    }
    Some(out)
}

/// Checks the signature against every secret (rotation), then the timestamp against `tolerance` seconds
/// either way. Returns the signed timestamp.
pub fn verify(
    header: Option<&str>,
    body: &[u8],
    secrets: &[SecretString],
    now: i64,
    tolerance: i64,
) -> Result<i64, Rejection> {
    if secrets.is_empty() {
        return Err(Rejection::NoSecret);
    }
    let header = header.ok_or(Rejection::MissingSignature)?;
    let (t, signatures) = parse_header(header)?;
    let matched = secrets.iter().any(|secret| {
        signatures.iter().any(|sig| {
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            else {
                return false;
            };
            mac.update(t.to_string().as_bytes());
            mac.update(b".");
            mac.update(body);
            // verify_slice compares in constant time.
            mac.verify_slice(sig).is_ok()
        })
    });
    if !matched {
        return Err(Rejection::BadSignature);
    }
    if t < now.saturating_sub(tolerance) {
        return Err(Rejection::StaleTimestamp);
    }
    if t > now.saturating_add(tolerance) {
        return Err(Rejection::FutureTimestamp);
    }
    Ok(t)
}

/// Signs a payload as Stripe does; for tests and the demo's own deliveries.
pub fn sign(secret: &str, t: i64, body: &[u8]) -> String {
    // The scheme is the one our own events are signed with.
    crate::outbound::signature::sign(&[SecretString::from(secret.to_owned())], t, body)
        .expect("one secret gives a header")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "whsec_test_secret";
    const NOW: i64 = 1_800_000_000;

    fn secrets(list: &[&str]) -> Vec<SecretString> {
        list.iter()
            .map(|s| SecretString::from(s.to_string()))
            .collect()
    }

    #[test]
    fn a_valid_signature_is_accepted_with_any_configured_secret() {
        let body = br#"{"id":"evt_1"}"#;
        let header = sign(SECRET, NOW, body);
        assert_eq!(
            verify(
                Some(&header),
                body,
                &secrets(&["whsec_old", SECRET]),
                NOW,
                300
            ),
            Ok(NOW)
        );
    }

    #[test]
    fn any_v1_may_match_during_rotation() {
        let body = b"{}";
        let good = sign(SECRET, NOW, body);
        let other = sign("whsec_other", NOW, body);
        let header = format!(
            "{},v1={},v0=deadbeef",
            other,
            good.split("v1=").nth(1).unwrap()
        );
        assert_eq!(
            verify(Some(&header), body, &secrets(&[SECRET]), NOW, 300),
            Ok(NOW)
        );
    }

    #[test]
    fn hostile_deliveries_are_refused_with_the_right_reason() {
        let body = br#"{"id":"evt_1"}"#;
        let good = sign(SECRET, NOW, body);
        let s = secrets(&[SECRET]);
        type Case<'a> = (Option<String>, &'a [u8], &'a [SecretString], i64, Rejection);
        let cases: Vec<Case> = vec![
            (Some(good.clone()), body, &[], NOW, Rejection::NoSecret),
            (None, body, &s, NOW, Rejection::MissingSignature),
            (
                Some("garbage".into()),
                body,
                &s,
                NOW,
                Rejection::MalformedSignature,
            ),
            (
                Some(format!("t={NOW}")),
                body,
                &s,
                NOW,
                Rejection::MalformedSignature,
            ),
            (
                Some(format!("t=abc,v1={}", "0".repeat(64))),
                body,
                &s,
                NOW,
                Rejection::MalformedSignature,
            ),
            (
                Some(format!("t={NOW},v1=zz")),
                body,
                &s,
                NOW,
                Rejection::MalformedSignature,
            ),
            (
                Some(format!("t={NOW},t={NOW},v1={}", "0".repeat(64))),
                body,
                &s,
                NOW,
                Rejection::MalformedSignature,
            ),
            (
                Some("t=1,".repeat(5000)),
                body,
                &s,
                NOW,
                Rejection::MalformedSignature,
            ),
            (
                Some(sign("whsec_wrong", NOW, body)),
                body,
                &s,
                NOW,
                Rejection::BadSignature,
            ),
            (
                Some(good.clone()),
                br#"{"id":"evt_2"}"#,
                &s,
                NOW,
                Rejection::BadSignature,
            ),
            (
                Some(sign(SECRET, NOW - 301, body)),
                body,
                &s,
                NOW,
                Rejection::StaleTimestamp,
            ),
            (
                Some(sign(SECRET, NOW + 301, body)),
                body,
                &s,
                NOW,
                Rejection::FutureTimestamp,
            ),
        ];
        for (header, body, secrets, now, want) in cases {
            assert_eq!(
                verify(header.as_deref(), body, secrets, now, 300),
                Err(want),
                "{header:?}"
            );
        }
    }

    #[test]
    fn the_tolerance_is_inclusive_at_its_edges() {
        let body = b"{}";
        let s = secrets(&[SECRET]);
        assert!(verify(Some(&sign(SECRET, NOW - 300, body)), body, &s, NOW, 300).is_ok());
        assert!(verify(Some(&sign(SECRET, NOW + 300, body)), body, &s, NOW, 300).is_ok());
    }
}
