//! Seals: what the bot puts in shared state and later acts on carries an HMAC under a key the
//! store never holds, so write access to Redis alone can't make a record the bot would trust
//! (a `/go/` id that mints, an edit of a Discord message).
//!
//! The key comes from the operator (`[state] seal_key`, or `PORTAL_BOT_SEAL_KEY`), else it is
//! derived from `[sign_in] cookie_key`, else from the Planhat API token: every replica has
//! them and Redis never does. Each use derives its own key from it (HMAC with a label), so a
//! seal of one kind can never pass for another.
//!
//! Credentials kept in the store (the `/go/` ids) are named there by their keyed digest
//! ([`Sealer::name`]), so reading Redis does not give them away either.

use hmac::{KeyInit, Mac};
use sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// What a seal is for: each has its own derived key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A `/go/` id's record.
    Go,
    /// A scheduled Discord expiry edit.
    DiscordEdit,
    /// An approval request, a decision or a grant (`core::approvals`).
    Approval,
}

impl Purpose {
    fn label(self) -> &'static [u8] {
        match self {
            Purpose::Go => b"portal-bot go record v1",
            Purpose::DiscordEdit => b"portal-bot discord edit v1",
            Purpose::Approval => b"portal-bot approval v1",
        }
    }
}

/// A record whose seal does not verify: written by someone without the key. Refused, audited
/// and counted by the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("a record in shared state does not carry a valid seal")]
pub struct Forged;

/// Seals and checks records, and names credentials by digest. Its `Debug` shows no key.
///
/// Each key is kept as an HMAC already keyed with it, cloned per use: keying HMAC-SHA256 hashes
/// two blocks (the padded key twice), a third of the work of sealing a Discord expiry job
/// (issue 23).
pub struct Sealer {
    go: HmacSha256,
    discord: HmacSha256,
    approval: HmacSha256,
    names: HmacSha256,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer([redacted])")
    }
}

/// HMAC-SHA256 keyed with `key`.
fn keyed(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    <HmacSha256 as KeyInit>::new_from_slice(key).unwrap_or_else(|_| unreachable!())
}

/// HMAC-SHA256 of `parts` under an already keyed `key` (each part length-prefixed, so no two
/// lists of parts collide).
fn mac(key: &HmacSha256, parts: &[&[u8]]) -> HmacSha256 {
    let mut m = key.clone();
    for p in parts {
        m.update(&(p.len() as u64).to_be_bytes());
        m.update(p);
    }
    m
}

/// The key for `label`, derived from `root`, ready to use.
fn derive(root: &HmacSha256, label: &[u8]) -> HmacSha256 {
    let key: [u8; 32] = mac(root, &[label]).finalize().into_bytes().into();
    keyed(&key)
}

impl Sealer {
    /// Derives every key from `root` (a secret every replica shares and the store doesn't).
    pub fn new(root: &[u8]) -> Sealer {
        let root = keyed(root);
        Sealer {
            go: derive(&root, Purpose::Go.label()),
            discord: derive(&root, Purpose::DiscordEdit.label()),
            approval: derive(&root, Purpose::Approval.label()),
            names: derive(&root, b"portal-bot names v1"),
        }
    }

    /// A key of this process alone: right for one replica with nothing to share it with.
    pub fn random() -> Sealer {
        use rand::RngExt;
        let mut root = [0u8; 32];
        rand::rng().fill(&mut root);
        Sealer::new(&root)
    }

    fn key(&self, purpose: Purpose) -> &HmacSha256 {
        match purpose {
            Purpose::Go => &self.go,
            Purpose::DiscordEdit => &self.discord,
            Purpose::Approval => &self.approval,
        }
    }

    /// The name a credential is stored under: its keyed digest (64 hex characters), so the
    /// store never holds the credential itself.
    pub fn name(&self, credential: &str) -> String {
        hex::encode(
            mac(&self.names, &[credential.as_bytes()])
                .finalize()
                .into_bytes(),
        )
    }

    /// A 64-bit keyed digest (for short, non-secret fingerprints such as a browser's).
    pub fn digest64(&self, text: &str) -> u64 {
        let out = mac(&self.names, &[b"d64", text.as_bytes()])
            .finalize()
            .into_bytes();
        let mut first = [0u8; 8];
        first.copy_from_slice(&out[..8]);
        u64::from_be_bytes(first)
    }

    /// `data`, sealed for `purpose` and bound to `name` (the record's key), as
    /// `{mac hex}.{data}`.
    pub fn seal(&self, purpose: Purpose, name: &str, data: &str) -> String {
        let tag = mac(self.key(purpose), &[name.as_bytes(), data.as_bytes()])
            .finalize()
            .into_bytes();
        format!("{}.{data}", hex::encode(tag))
    }

    /// The data of a record sealed by [`Sealer::seal`] for the same `purpose` and `name`.
    /// Compared in constant time.
    pub fn open<'a>(
        &self,
        purpose: Purpose,
        name: &str,
        sealed: &'a str,
    ) -> Result<&'a str, Forged> {
        let (tag, data) = sealed.split_once('.').ok_or(Forged)?;
        let tag = hex::decode(tag).map_err(|_| Forged)?;
        mac(self.key(purpose), &[name.as_bytes(), data.as_bytes()])
            .verify_slice(&tag)
            .map_err(|_| Forged)?;
        Ok(data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_seal_opens_only_for_its_key_purpose_name_and_data() {
        let s = Sealer::new(b"root key of the test");
        let sealed = s.seal(Purpose::Go, "n1", r#"{"a":1}"#);
        assert_eq!(s.open(Purpose::Go, "n1", &sealed), Ok(r#"{"a":1}"#));
        assert_eq!(s.open(Purpose::Go, "n2", &sealed), Err(Forged));
        assert_eq!(s.open(Purpose::DiscordEdit, "n1", &sealed), Err(Forged));
        let other = Sealer::new(b"another root");
        assert_eq!(other.open(Purpose::Go, "n1", &sealed), Err(Forged));
        let tampered = sealed.replace(r#""a":1"#, r#""a":2"#);
        assert_eq!(s.open(Purpose::Go, "n1", &tampered), Err(Forged));
        assert_eq!(s.open(Purpose::Go, "n1", r#"{"a":1}"#), Err(Forged));
    }

    /// Keys kept keyed seal exactly as keying per use did: records written before (by another
    /// replica, say) still open.
    #[test]
    fn seals_are_what_keying_per_use_made() {
        fn hmac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
            let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).unwrap();
            for p in parts {
                m.update(&(p.len() as u64).to_be_bytes());
                m.update(p);
            }
            m.finalize().into_bytes().into()
        }
        let root = b"root key of the test";
        let key = hmac(root, &[Purpose::DiscordEdit.label()]);
        let tag = hmac(&key, &[b"job:1", br#"{"t":"x"}"#]);
        let s = Sealer::new(root);
        assert_eq!(
            s.seal(Purpose::DiscordEdit, "job:1", r#"{"t":"x"}"#),
            format!("{}.{}", hex::encode(tag), r#"{"t":"x"}"#)
        );
        let names = hmac(root, &[b"portal-bot names v1"]);
        assert_eq!(s.name("abc"), hex::encode(hmac(&names, &[b"abc"])));
    }

    #[test]
    fn names_are_stable_per_key_and_hide_the_credential() {
        let s = Sealer::new(b"k");
        assert_eq!(s.name("abc"), s.name("abc"));
        assert_ne!(s.name("abc"), Sealer::new(b"k2").name("abc"));
        assert_eq!(s.name("abc").len(), 64);
        assert!(!s.name("abc").contains("abc"));
    }

    proptest! {
        #[test]
        fn opening_any_text_never_panics(text in ".{0,200}") {
            let s = Sealer::new(b"k");
            let _ = s.open(Purpose::Go, "n", &text);
        }
    }
}
