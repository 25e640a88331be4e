//! Webhook signatures (API.md, Events): `X-Signature` is the hex HMAC-SHA256, keyed with the
//! webhook secret, of `POST\n{path}\n{timestamp}\n{nonce}\n{hex sha256(body)}`.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// The string that is signed.
pub fn canonical(method: &str, path: &str, timestamp: i64, nonce: &str, body: &[u8]) -> String {
    let body_sha = hex::encode(Sha256::digest(body));
    format!("{method}\n{path}\n{timestamp}\n{nonce}\n{body_sha}")
}

/// Hex HMAC-SHA256 of the canonical string of a `POST`.
pub fn sign(secret: &[u8], path: &str, timestamp: i64, nonce: &str, body: &[u8]) -> String {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = match HmacSha256::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => return String::new(),
    };
    mac.update(canonical("POST", path, timestamp, nonce, body).as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// Checks a signature in constant time (for receivers written in Rust, and the tests).
pub fn verify(
    secret: &[u8],
    path: &str,
    timestamp: i64,
    nonce: &str,
    body: &[u8],
    signature_hex: &str,
) -> bool {
    let Ok(sig) = hex::decode(signature_hex) else {
        return false;
    };
    let Ok(mut mac) = HmacSha256::new_from_slice(secret) else {
        return false;
    };
    mac.update(canonical("POST", path, timestamp, nonce, body).as_bytes());
    mac.verify_slice(&sig).is_ok()
}

/// A fresh 16-hex-digit nonce.
pub fn nonce() -> String {
    hex::encode(rand::random::<[u8; 8]>())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_canonical_string_is_method_path_timestamp_nonce_and_body_hash_on_lines() {
        let c = canonical("POST", "/hook", 1_704_067_200, "a1b2c3d4", b"{}");
        assert_eq!(
            c,
            "POST\n/hook\n1704067200\na1b2c3d4\n\
             44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a"
        );
    }

    #[test]
    fn a_signature_verifies_and_any_change_breaks_it() {
        let s = sign(b"secret", "/hook", 10, "n", b"body");
        assert_eq!(s.len(), 64);
        assert!(verify(b"secret", "/hook", 10, "n", b"body", &s));
        assert!(!verify(b"other", "/hook", 10, "n", b"body", &s));
        assert!(!verify(b"secret", "/hook2", 10, "n", b"body", &s));
        assert!(!verify(b"secret", "/hook", 11, "n", b"body", &s));
        assert!(!verify(b"secret", "/hook", 10, "m", b"body", &s));
        assert!(!verify(b"secret", "/hook", 10, "n", b"bodY", &s));
        assert!(!verify(b"secret", "/hook", 10, "n", b"body", "zz"));
    }
}
