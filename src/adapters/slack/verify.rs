//! Slack request signing: the first thing every webhook meets.
//!
//! slack-morphism's verifier does the HMAC (`v0:{timestamp}:{body}`, constant-time compare) and
//! the 5-minute timestamp window; this file only pulls the two headers out of the request and
//! turns every failure into one reason for the operator's log. The handler answers 401 to all
//! of them before anything else happens.

use axum::http::HeaderMap;
use slack_morphism::prelude::SlackSigningSecret;
use slack_morphism::signature_verifier::SlackEventSignatureVerifier;

const SLACK_SIGNED_HASH_HEADER: &str = SlackEventSignatureVerifier::SLACK_SIGNED_HASH_HEADER;
const SLACK_SIGNED_TIMESTAMP: &str = SlackEventSignatureVerifier::SLACK_SIGNED_TIMESTAMP;

/// Checks Slack's signature on a request. Built once from the signing secret.
pub struct SlackVerifier(SlackEventSignatureVerifier);

impl SlackVerifier {
    /// A verifier for this app's signing secret.
    pub fn new(signing_secret: &str) -> Self {
        SlackVerifier(SlackEventSignatureVerifier::new(&SlackSigningSecret::new(
            signing_secret.to_string(),
        )))
    }

    /// `Ok` only for a request Slack signed within the last five minutes.
    pub fn verify(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), &'static str> {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let signature = header(SLACK_SIGNED_HASH_HEADER).ok_or("no signature header")?;
        let timestamp = header(SLACK_SIGNED_TIMESTAMP).ok_or("no timestamp header")?;
        let body = std::str::from_utf8(body).map_err(|_| "body is not UTF-8")?;
        self.0.verify(signature, body, timestamp).map_err(|e| match e {
            slack_morphism::signature_verifier::SlackEventSignatureVerifierError::IncorrectOrExpiredTimestampError(_) => {
                "timestamp missing, malformed or more than 5 minutes off"
            }
            _ => "signature does not match",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hmac::{KeyInit, Mac};
    use proptest::prelude::*;

    fn signed(secret: &str, ts: &str, body: &str) -> HeaderMap {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(format!("v0:{ts}:{body}").as_bytes());
        let sig = format!("v0={}", hex::encode(mac.finalize().into_bytes()));
        let mut h = HeaderMap::new();
        h.insert(SLACK_SIGNED_HASH_HEADER, sig.parse().unwrap());
        h.insert(SLACK_SIGNED_TIMESTAMP, ts.parse().unwrap());
        h
    }

    fn now() -> String {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            .to_string()
    }

    #[test]
    fn good_bad_stale_missing() {
        let v = SlackVerifier::new("s3cret");
        let body = "text=abc&user_id=U1";
        assert!(v
            .verify(&signed("s3cret", &now(), body), body.as_bytes())
            .is_ok());
        assert!(v
            .verify(&signed("other", &now(), body), body.as_bytes())
            .is_err());
        assert!(v
            .verify(&signed("s3cret", &now(), body), b"text=abd&user_id=U1")
            .is_err());
        let stale = (now().parse::<u64>().unwrap() - 301).to_string();
        assert!(v
            .verify(&signed("s3cret", &stale, body), body.as_bytes())
            .is_err());
        assert!(v.verify(&HeaderMap::new(), body.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_headers_never_panic(sig in "\\PC{0,100}", ts in "\\PC{0,30}", body in proptest::collection::vec(any::<u8>(), 0..200)) {
            let v = SlackVerifier::new("s3cret");
            let mut h = HeaderMap::new();
            if let Ok(val) = sig.parse() { h.insert(SLACK_SIGNED_HASH_HEADER, val); }
            if let Ok(val) = ts.parse() { h.insert(SLACK_SIGNED_TIMESTAMP, val); }
            prop_assert!(v.verify(&h, &body).is_err());
        }
    }
}
