//! One-time `/go/{id}` links: the button points at the bot, and the signed URL is minted only
//! when the person clicks, so all of Planhat's 30 seconds belong to the browser.
//!
//! Ids are 160 random bits from the OS's CSPRNG, hex-encoded; each is bound to its asker and
//! end user, usable once, and lives ten minutes. They are held in memory only (a restart
//! forgets them: the page then says how to ask again), capped in number, swept periodically,
//! and never logged.

use std::time::{Duration, Instant};

use dashmap::DashMap;
use rand::RngExt;

use super::asker::Asker;
use super::enduser::EndUserId;

/// How long an id can be used.
pub const LIFETIME: Duration = Duration::from_secs(600);

/// Why an id can't be used. `Display` is what the page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GoError {
    #[error("This link was already used. Links open the portal once; ask the bot for a new one.")]
    Used,
    #[error("This link has expired (they last ten minutes). Ask the bot for a new one.")]
    Expired,
    #[error("This link is not known here (it may be mistyped, or the bot restarted). Ask the bot for a new one.")]
    Unknown,
}

#[derive(Clone)]
struct Entry {
    asker: Asker,
    end_user: EndUserId,
    created: Instant,
    used: bool,
}

/// What a valid id stands for.
#[derive(Debug, Clone)]
pub struct Claim {
    pub asker: Asker,
    pub end_user: EndUserId,
}

/// The store of issued ids.
pub struct OneTimeLinks {
    entries: DashMap<String, Entry>,
    cap: usize,
    lifetime: Duration,
}

impl OneTimeLinks {
    /// A store holding at most `cap` ids.
    pub fn new(cap: usize) -> Self {
        Self::with_lifetime(cap, LIFETIME)
    }

    /// A store whose ids live `lifetime` (tests use a short one).
    pub fn with_lifetime(cap: usize, lifetime: Duration) -> Self {
        OneTimeLinks {
            entries: DashMap::new(),
            cap,
            lifetime,
        }
    }

    /// Issues a fresh id for this asker and end user; `None` when the store is full of live ids.
    pub fn issue(&self, asker: &Asker, end_user: &EndUserId) -> Option<String> {
        if self.entries.len() >= self.cap {
            self.sweep();
            if self.entries.len() >= self.cap {
                return None;
            }
        }
        let mut bytes = [0u8; 20];
        rand::rng().fill(&mut bytes);
        let id = hex::encode(bytes);
        self.entries.insert(
            id.clone(),
            Entry {
                asker: asker.clone(),
                end_user: end_user.clone(),
                created: Instant::now(),
                used: false,
            },
        );
        Some(id)
    }

    fn check(&self, entry: &Entry) -> Result<(), GoError> {
        if entry.used {
            Err(GoError::Used)
        } else if entry.created.elapsed() > self.lifetime {
            Err(GoError::Expired)
        } else {
            Ok(())
        }
    }

    /// Whether `id` could be used, without using it (HEAD, link previews).
    pub fn peek(&self, id: &str) -> Result<(), GoError> {
        self.entries
            .get(id)
            .ok_or(GoError::Unknown)
            .and_then(|e| self.check(&e))
    }

    /// Uses `id` up and returns what it stands for.
    pub fn take(&self, id: &str) -> Result<Claim, GoError> {
        let mut entry = self.entries.get_mut(id).ok_or(GoError::Unknown)?;
        self.check(&entry)?;
        entry.used = true;
        Ok(Claim {
            asker: entry.asker.clone(),
            end_user: entry.end_user.clone(),
        })
    }

    /// Makes a taken id usable again: the click failed for a passing reason (Planhat slow or
    /// rate limited), and the person should be able to simply click again.
    pub fn release(&self, id: &str) {
        if let Some(mut entry) = self.entries.get_mut(id) {
            entry.used = false;
        }
    }

    /// Forgets ids older than twice their lifetime (until then, "used"/"expired" stay precise).
    pub fn sweep(&self) {
        let keep = self.lifetime * 2;
        self.entries.retain(|_, e| e.created.elapsed() <= keep);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::enduser::{parse_target, Target};

    fn id(text: &str) -> EndUserId {
        match parse_target(text) {
            Ok(Target::EndUser(id)) => id,
            _ => panic!(),
        }
    }

    #[test]
    fn once_then_used_unknown_and_bounded() {
        let store = OneTimeLinks::new(3);
        let asker = Asker::local_user();
        let a = store.issue(&asker, &id("e1")).unwrap();
        assert_eq!(a.len(), 40);
        assert!(store.peek(&a).is_ok());
        assert!(store.peek(&a).is_ok(), "peeking does not use it");
        assert_eq!(store.take(&a).unwrap().end_user.as_str(), "e1");
        assert_eq!(store.take(&a).unwrap_err(), GoError::Used);
        assert_eq!(store.take("nope").unwrap_err(), GoError::Unknown);
        store.issue(&asker, &id("e2")).unwrap();
        store.issue(&asker, &id("e3")).unwrap();
        assert!(store.issue(&asker, &id("e4")).is_none(), "capped");
        let b = store.issue(&asker, &id("e1"));
        assert!(b.is_none());
    }

    #[test]
    fn expired_ids_say_so() {
        let store = OneTimeLinks::with_lifetime(10, Duration::from_millis(20));
        let a = store.issue(&Asker::local_user(), &id("e1")).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(store.peek(&a).unwrap_err(), GoError::Expired);
        assert_eq!(store.take(&a).unwrap_err(), GoError::Expired);
    }
}
