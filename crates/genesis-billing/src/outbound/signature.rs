//! The `Genesis-Signature` header: Stripe's webhook scheme (`t=<unix seconds>,v1=<hex HMAC-SHA256 over
//! "<t>.<raw body>">`), so the meta-agent can verify with the code it would use for Stripe. One `v1` per
//! configured secret: while a secret is rotated, a receiver holding either one accepts.

use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;

/// The header's name.
pub const HEADER: &str = "Genesis-Signature";

/// The header value for `body` signed at `t` with every secret, or `None` when no secret is configured.
pub fn sign(secrets: &[SecretString], t: i64, body: &[u8]) -> Option<String> {
    if secrets.is_empty() {
        return None;
    }
    let t = t.to_string();
    let mut header = format!("t={t}");
    for secret in secrets {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.expose_secret().as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(t.as_bytes());
        mac.update(b".");
        mac.update(body);
        header.push_str(",v1=");
        for b in mac.finalize().into_bytes() {
            header.push_str(&format!("{b:02x}"));
        }
    }
    Some(header)
}

#[cfg(test)]
mod tests {
    use super::*;
    use sha2::Digest;

    /// HMAC-SHA256 written out from RFC 2104, independent of the `hmac` crate.
    fn reference(key: &[u8], message: &[u8]) -> String {
        let mut k = [0u8; 64];
        k[..key.len()].copy_from_slice(key);
        let pad = |byte: u8| k.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
        let inner = Sha256::new()
            .chain_update(pad(0x36))
            .chain_update(message)
            .finalize();
        let outer = Sha256::new()
            .chain_update(pad(0x5c))
            .chain_update(inner)
            .finalize();
        outer.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn one_v1_per_secret_over_the_timestamp_a_dot_and_the_raw_body() {
        let secrets = [
            SecretString::from("old-secret-0123456789"),
            SecretString::from("new-secret-0123456789"),
        ];
        let body = br#"{"id":"gbe_1","data":{"x":"\u00e9"}}"#;
        let header = sign(&secrets, 1_800_000_000, body).unwrap();
        let mut message = b"1800000000.".to_vec();
        message.extend_from_slice(body);
        assert_eq!(
            header,
            format!(
                "t=1800000000,v1={},v1={}",
                reference(b"old-secret-0123456789", &message),
                reference(b"new-secret-0123456789", &message)
            )
        );
    }

    #[test]
    fn the_reference_matches_rfc_4231_and_no_secret_means_no_header() {
        assert_eq!(
            reference(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(sign(&[], 1, b"{}"), None);
    }
}
