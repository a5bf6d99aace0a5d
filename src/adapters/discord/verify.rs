//! Discord's Ed25519 request signature, checked with serenity's verifier.
//!
//! Discord probes the endpoint with bad signatures before it accepts the URL and expects 401;
//! the handler answers that to every failure here, before anything is parsed.

use axum::http::HeaderMap;
use serenity::interactions_endpoint::Verifier;

/// How far the signed timestamp may be from now (Slack's window, applied to Discord too).
const MAX_AGE_SECS: u64 = 300;

/// Checks `X-Signature-Ed25519` over `X-Signature-Timestamp` + body.
pub struct DiscordVerifier(Verifier);

impl DiscordVerifier {
    /// From the 32-byte public key (already validated by the config).
    pub fn new(public_key: [u8; 32]) -> Option<Self> {
        Verifier::try_new(public_key).ok().map(DiscordVerifier)
    }

    /// `Ok` only for a request signed with the application's key.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signature = header("x-signature-ed25519").ok_or("no signature header")?;
        let timestamp = header("x-signature-timestamp").ok_or("no timestamp header")?;
        if signature.len() != 128 {
            return Err("signature is not 64 hex bytes");
        }
        self.0
            .verify(signature, timestamp, body)
            .map_err(|()| "signature does not match")?;
        // serenity checks the signature only. A captured request replayed later would still
        // verify, so, as for Slack, the signed timestamp must be within five minutes.
        let signed_at: u64 = timestamp
            .trim()
            .parse()
            .map_err(|_| "timestamp is not a number")?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        if now.abs_diff(signed_at) > MAX_AGE_SECS {
            return Err("timestamp more than 5 minutes off");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use proptest::prelude::*;

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn headers(sig: &str, ts: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-signature-ed25519", sig.parse().unwrap());
        h.insert("x-signature-timestamp", ts.parse().unwrap());
        h
    }

    #[test]
    fn good_and_bad() {
        let v = DiscordVerifier::new(key().verifying_key().to_bytes()).unwrap();
        let body = br#"{"type":1}"#;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let sign = |ts: &str| hex::encode(key().sign(&[ts.as_bytes(), body].concat()).to_bytes());
        let ts = now.to_string();
        assert!(v.verify(&headers(&sign(&ts), &ts), body).is_ok());
        assert!(v
            .verify(&headers(&sign(&ts), &(now + 1).to_string()), body)
            .is_err());
        assert!(v
            .verify(&headers(&sign(&ts), &ts), br#"{"type":2}"#)
            .is_err());
        let old = (now - 301).to_string();
        assert!(
            v.verify(&headers(&sign(&old), &old), body).is_err(),
            "a replay after 5 minutes"
        );
        assert!(v.verify(&HeaderMap::new(), body).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_signatures_never_panic(sig in "\\PC{0,140}", ts in "[ -~]{0,20}", body in proptest::collection::vec(any::<u8>(), 0..100)) {
            let v = DiscordVerifier::new(key().verifying_key().to_bytes()).unwrap();
            let mut h = HeaderMap::new();
            if let Ok(val) = sig.parse() { h.insert("x-signature-ed25519", val); }
            if let Ok(val) = ts.parse() { h.insert("x-signature-timestamp", val); }
            prop_assert!(v.verify(&h, &body).is_err());
        }
    }
}
