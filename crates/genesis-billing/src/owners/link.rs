//! Manage-link tokens: a business id and an expiry, signed with HMAC-SHA256 under the link secret(s).
//!
//! Format: `v1.{business_id}.{expires_at}.{mac}`, where `mac` is unpadded base64url of
//! HMAC-SHA256(secret, "genesis-billing manage-link v1\n{business_id}\n{expires_at}"). The first secret
//! signs and any verifies (rotation). The token is the only credential of `GET /billing/manage`, so it is
//! parsed strictly and compared in constant time, and no error ever repeats it.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

use crate::business::is_business_id;

/// Longest token accepted; a real one is about 100 characters (a 64-character id at most, 43 of MAC).
pub const MAX_TOKEN_LEN: usize = 160;

const VERSION: &str = "v1";
const DOMAIN: &str = "genesis-billing manage-link v1";
/// HMAC-SHA256 in unpadded base64url.
const MAC_CHARS: usize = 43;
/// A token's expiry may lie this much beyond now + TTL (clock skew between replicas).
const SKEW_SECS: i64 = 300;

/// Why a token was refused. Deliberately coarse: the page shown is the same for all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is longer than {MAX_TOKEN_LEN} characters")]
    TooLong,
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's signature does not match any link secret")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("no link secret is configured")]
    NoSecret,
}

/// The link secrets and the lifetime of new tokens.
#[derive(Debug, Clone)]
pub struct LinkKeys {
    secrets: Vec<SecretString>,
    ttl_secs: i64,
}

/// A signed token and when it stops working (unix seconds).
#[derive(Debug, Clone)]
pub struct SignedToken {
    pub token: String,
    pub expires_at: i64,
}

impl LinkKeys {
    /// `secrets` in order (the first signs); `None` without any.
    pub fn new(secrets: Vec<SecretString>, ttl_secs: u64) -> Option<Self> {
        (!secrets.is_empty()).then(|| Self {
            secrets,
            ttl_secs: ttl_secs as i64,
        })
    }

    /// How long a new token lives.
    pub fn ttl_secs(&self) -> i64 {
        self.ttl_secs
    }

    /// A token for `business_id` that expires TTL seconds after `now`.
    pub fn sign(&self, business_id: &str, now: i64) -> Result<SignedToken, TokenError> {
        if !is_business_id(business_id) {
            return Err(TokenError::Malformed);
        }
        let expires_at = now + self.ttl_secs;
        let mac = mac(&self.secrets[0], business_id, expires_at).finalize();
        let token = format!(
            "{VERSION}.{business_id}.{expires_at}.{}",
            base64url_encode(&mac.into_bytes())
        );
        Ok(SignedToken { token, expires_at })
    }

    /// The business a token names, if it is well formed, signed by one of the secrets, and not expired
    /// at `now`. A token whose expiry is further away than the current TTL allows (the TTL was shortened
    /// since it was issued) is expired too.
    pub fn verify(&self, token: &str, now: i64) -> Result<String, TokenError> {
        let (business_id, expires_at, presented) = parse(token)?;
        // Every secret is tried, whichever matches: the time taken does not say which one signed.
        let mut ok = false;
        for secret in &self.secrets {
            ok |= mac(secret, business_id, expires_at)
                .verify_slice(&presented)
                .is_ok();
        }
        if !ok {
            return Err(TokenError::BadSignature);
        }
        if now >= expires_at || expires_at - self.ttl_secs > now + SKEW_SECS {
            return Err(TokenError::Expired);
        }
        Ok(business_id.to_owned())
    }
}

fn mac(secret: &SecretString, business_id: &str, expires_at: i64) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
        .expect("HMAC takes a key of any length");
    mac.update(format!("{DOMAIN}\n{business_id}\n{expires_at}").as_bytes());
    mac
}

/// Splits a token into its business id, expiry and MAC bytes, refusing anything not exactly the format.
fn parse(token: &str) -> Result<(&str, i64, [u8; 32]), TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLong);
    }
    if !token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(VERSION), Some(id), Some(exp), Some(mac), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    // Digits only, no sign or leading zero: one spelling per expiry, so one token per signature.
    let canonical = !exp.is_empty()
        && exp.len() <= 12
        && exp.bytes().all(|b| b.is_ascii_digit())
        && !(exp.len() > 1 && exp.starts_with('0'));
    if !is_business_id(id) || !canonical || mac.len() != MAC_CHARS {
        return Err(TokenError::Malformed);
    }
    let expires_at = exp.parse().map_err(|_| TokenError::Malformed)?;
    let bytes = base64url_decode(mac).ok_or(TokenError::Malformed)?;
    let bytes: [u8; 32] = bytes.try_into().map_err(|_| TokenError::Malformed)?;
    Ok((id, expires_at, bytes))
}

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url (RFC 4648 §5).
fn base64url_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// Decodes unpadded base64url; `None` for any other character, a length no encoding has, or unused
/// bits that are not zero (so each value has exactly one spelling).
fn base64url_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 4 == 1 {
        return None;
    }
    let value = |c: u8| ALPHABET.iter().position(|a| *a == c).map(|p| p as u32);
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    for chunk in s.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= value(*c)? << (18 - 6 * i);
        }
        let bytes = chunk.len() - 1;
        // The bits below the last whole byte must be zero.
        if n & ((1u32 << (24 - 8 * bytes)) - 1) != 0 {
            return None;
        }
        for i in 0..bytes {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0b6f3a0e-3f0c-4c39-9d3e-5f8b0d7f1a22";
    const NOW: i64 = 1_800_000_000;

    fn keys(secrets: &[&str], ttl: u64) -> LinkKeys {
        LinkKeys::new(
            secrets
                .iter()
                .map(|s| SecretString::from(s.to_string()))
                .collect(),
            ttl,
        )
        .unwrap()
    }

    #[test]
    fn a_signed_token_names_its_business_until_it_expires() {
        let k = keys(&["first-secret-0123456789"], 3600);
        let t = k.sign(ID, NOW).unwrap();
        assert_eq!(t.expires_at, NOW + 3600);
        assert!(t.token.starts_with(&format!("v1.{ID}.{}.", NOW + 3600)));
        assert_eq!(t.token.len(), 3 + ID.len() + 1 + 10 + 1 + MAC_CHARS);
        assert_eq!(k.verify(&t.token, NOW).unwrap(), ID);
        assert_eq!(k.verify(&t.token, NOW + 3599).unwrap(), ID);
        assert_eq!(k.verify(&t.token, NOW + 3600), Err(TokenError::Expired));
    }

    #[test]
    fn the_first_secret_signs_and_any_verifies() {
        let old = keys(&["old-secret-0123456789"], 3600);
        let rotated = keys(&["new-secret-0123456789", "old-secret-0123456789"], 3600);
        let by_old = old.sign(ID, NOW).unwrap().token;
        let by_new = rotated.sign(ID, NOW).unwrap().token;
        assert_ne!(by_old, by_new);
        assert_eq!(rotated.verify(&by_old, NOW).unwrap(), ID);
        assert_eq!(rotated.verify(&by_new, NOW).unwrap(), ID);
        assert_eq!(old.verify(&by_new, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn a_changed_business_expiry_or_signature_is_refused() {
        let k = keys(&["first-secret-0123456789"], 3600);
        let t = k.sign(ID, NOW).unwrap().token;
        let other = k.sign("another-business", NOW).unwrap().token;
        // Another business's signature on this business's id.
        let swapped = format!(
            "v1.{ID}.{}.{}",
            NOW + 3600,
            other.rsplit('.').next().unwrap()
        );
        assert_eq!(k.verify(&swapped, NOW), Err(TokenError::BadSignature));
        let later = t.replace(&(NOW + 3600).to_string(), &(NOW + 7200).to_string());
        assert_eq!(k.verify(&later, NOW), Err(TokenError::BadSignature));
        let mut flipped = t.clone().into_bytes();
        let last = flipped.len() - 2;
        flipped[last] = if flipped[last] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(k.verify(&flipped, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn malformed_oversized_and_hostile_tokens_are_refused_before_any_mac() {
        let k = keys(&["first-secret-0123456789"], 3600);
        let good = k.sign(ID, NOW).unwrap().token;
        let mac = good.rsplit('.').next().unwrap().to_owned();
        let exp = NOW + 3600;
        for (bad, why) in [
            (String::new(), TokenError::Malformed),
            ("v1".into(), TokenError::Malformed),
            (format!("v2.{ID}.{exp}.{mac}"), TokenError::Malformed),
            (format!("v1.{ID}.{exp}.{mac}.x"), TokenError::Malformed),
            (format!("v1.{ID}.0{exp}.{mac}"), TokenError::Malformed),
            (format!("v1.{ID}.-{exp}.{mac}"), TokenError::Malformed),
            (format!("v1.{ID}.+{exp}.{mac}"), TokenError::Malformed),
            (format!("v1.{ID}..{mac}"), TokenError::Malformed),
            (format!("v1..{exp}.{mac}"), TokenError::Malformed),
            (format!("v1.{ID}.{exp}.{mac}="), TokenError::Malformed),
            (
                format!("v1.{ID}.{exp}.{}", &mac[1..]),
                TokenError::Malformed,
            ),
            (format!("v1.{ID}.{exp}.{mac}A"), TokenError::Malformed),
            (
                format!("v1.{ID}.99999999999999.{mac}"),
                TokenError::Malformed,
            ),
            (format!("v1.{ID} .{exp}.{mac}"), TokenError::Malformed),
            (format!("v1.{ID}%2e.{exp}.{mac}"), TokenError::Malformed),
            (format!("v1.<script>.{exp}.{mac}"), TokenError::Malformed),
            (
                format!("v1.{ID}.{exp}.{}", mac.replace('_', "/")),
                TokenError::Malformed,
            ),
            (good.replace("v1.", "v1.é"), TokenError::Malformed),
            ("x".repeat(MAX_TOKEN_LEN + 1), TokenError::TooLong),
            (format!("{good}{}", "A".repeat(200)), TokenError::TooLong),
        ] {
            assert_eq!(k.verify(&bad, NOW), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn a_token_from_a_longer_ttl_expires_once_the_ttl_is_shortened() {
        let long = keys(&["first-secret-0123456789"], 30 * 86_400);
        let short = keys(&["first-secret-0123456789"], 86_400);
        let t = long.sign(ID, NOW).unwrap().token;
        assert_eq!(short.verify(&t, NOW), Err(TokenError::Expired));
        assert_eq!(long.verify(&t, NOW).unwrap(), ID);
    }

    #[test]
    fn errors_never_repeat_the_token() {
        let k = keys(&["first-secret-0123456789"], 3600);
        let t = k.sign(ID, NOW).unwrap().token;
        for e in [
            k.verify(&t, NOW + 7200).unwrap_err(),
            k.verify(&format!("{t}x"), NOW).unwrap_err(),
        ] {
            let text = format!("{e} {e:?}");
            assert!(
                !text.contains(ID) && !text.contains(&t[t.len() - 10..]),
                "{text}"
            );
        }
        assert!(!format!("{k:?}").contains("first-secret"));
    }

    #[test]
    fn base64url_round_trips_and_has_one_spelling_per_value() {
        for len in 0..40 {
            let bytes: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let s = base64url_encode(&bytes);
            assert!(!s.contains('=') && !s.contains('+') && !s.contains('/'));
            assert_eq!(base64url_decode(&s).unwrap(), bytes, "{len}");
        }
        assert_eq!(base64url_encode(b"\xfb\xff"), "-_8");
        assert_eq!(base64url_encode(b"foobar"), "Zm9vYmFy");
        assert_eq!(base64url_encode(b"fo"), "Zm8");
        // "Zm9" decodes to "fo" with non-zero spare bits: a second spelling, refused.
        assert_eq!(base64url_decode("Zm9"), None);
        assert_eq!(base64url_decode("Z"), None);
        assert_eq!(base64url_decode("Zm8="), None);
    }
}
