//! One-time `/go/{id}` links: the button points at the bot, and the signed URL is minted only
//! when the person clicks, so all of Planhat's 30 seconds belong to the browser.
//!
//! Ids are 160 random bits from the OS's CSPRNG, hex-encoded; each is bound to its asker and
//! end user, usable once, and lives ten minutes. Where they are kept is the shared state's
//! business ([`SharedState`]), but what it keeps can't be turned into a link by anyone who
//! writes to it: the store holds each id under its keyed digest (never the id), and the claim
//! sealed ([`Sealer`]) with a key it never sees, its lifetime inside the seal. Ids are never
//! logged.
//!
//! A Slack id without sign-in opens only in a browser that its asker's click in Slack opened:
//! the click reaches the bot as `block_actions` with Slack's time of the click, and a browser
//! opens the id only if its request began after that click and it had not touched the id
//! before (see [`may_open`]). So a copy of the URL kept waiting, or polled, before the click
//! never wins the race against the asker's own browser.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngExt;
use serde::{Deserialize, Serialize};

use super::asker::{Asker, Platform};
use super::enduser::EndUserId;
use super::seal::{Purpose, Sealer};
use super::state::{GoRecord, SharedState, Sighting, StateError};

/// How long an id can be used (the longest `server.go_lifetime`).
pub const LIFETIME: Duration = Duration::from_secs(600);

/// A Slack id opens for a browser only this long after its asker clicked its button in Slack
/// (the click event "arms" it).
pub const ARM_WINDOW: Duration = Duration::from_secs(60);

/// How long a browser that arrives before Slack's click event waits for it.
pub const ARM_WAIT: Duration = Duration::from_secs(3);

/// How much earlier than Slack's time of the click a browser's request may have begun and
/// still count as opened by that click: Slack stamps the click when it reaches Slack, the
/// browser it opened may reach the bot a little sooner (both are one network hop from the
/// person's machine), and clocks differ by milliseconds. A browser first seen earlier than
/// this before the click is refused, whenever it comes back.
pub const CLICK_LEEWAY: Duration = Duration::from_secs(1);

/// Why an id can't be used. `Display` is what the page says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GoError {
    #[error("This link was already used. Links open the portal once; ask the bot for a new one.")]
    Used,
    #[error("This link has expired. Ask the bot for a new one.")]
    Expired,
    #[error("This link is not known here (it may be mistyped, or it is too old). Ask the bot for a new one.")]
    Unknown,
    #[error(
        "The bot can't check this link right now. Try again in a moment: the link still works."
    )]
    Unavailable,
    #[error("This link opens only from the Slack message it came in: click Open portal there. Opened anywhere else it signs no one in, and it stays usable.")]
    NotArmed,
    #[error("This browser had this link open before its Slack button was clicked, so it does not sign in here. Click Open portal in Slack: the browser that click opens will work.")]
    Early,
    /// Shared state held a record the bot did not write (its seal does not verify). The page
    /// says no more than for an unknown id.
    #[error("This link is not known here (it may be mistyped, or it is too old). Ask the bot for a new one.")]
    Forged,
}

impl GoError {
    /// Stable outcome name for the audit trail and metrics.
    pub fn kind(self) -> &'static str {
        match self {
            GoError::Used => "used",
            GoError::Expired => "expired",
            GoError::Unknown => "unknown",
            GoError::Unavailable => "unavailable",
            GoError::NotArmed => "not_armed",
            GoError::Early => "opened_before_click",
            GoError::Forged => "forged",
        }
    }

    /// True when the id stays usable after this refusal.
    pub fn keeps_id(self) -> bool {
        matches!(
            self,
            GoError::Unavailable | GoError::NotArmed | GoError::Early
        )
    }
}

/// What a `/go/` id stands for: who asked, for which end user, until when. Sealed into its
/// record, so the store can't change any of it.
#[derive(Debug, Clone)]
pub struct GoClaim {
    pub asker: Asker,
    pub end_user: EndUserId,
    /// True for Slack without sign-in: the id opens only in a browser its asker's own click on
    /// the button opened ([`may_open`]).
    pub needs_arming: bool,
    /// When it was issued and how long it lives (unix ms), as the issuing replica saw it.
    pub issued_ms: u64,
    pub lifetime_ms: u64,
}

/// The claim as sealed (a plain string for the end user: its type is made only by parsing).
#[derive(Serialize, Deserialize)]
struct Sealed {
    asker: Asker,
    end_user: String,
    needs_arming: bool,
    issued_ms: u64,
    lifetime_ms: u64,
}

/// The browser behind one `/go/` request: a keyed digest of its address and User-Agent (never
/// kept as text) and when its request began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Visit {
    pub client: u64,
    pub began_ms: u64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    unix_ms(SystemTime::now())
}

/// Milliseconds since the Unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A fresh id: 160 bits from the OS's CSPRNG, as 40 hex characters.
pub fn new_id() -> String {
    let mut bytes = [0u8; 20];
    rand::rng().fill(&mut bytes);
    hex::encode(bytes)
}

/// Whether `text` could be an id at all (40 lower-case hex characters): anything else is
/// answered "unknown" without asking the store.
pub fn plausible(text: &str) -> bool {
    text.len() == 40
        && text
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Whether `visit` may open an id with `claim` whose record is `record`, at `now` (unix ms).
/// Pure: the rules in one place.
///
/// A Slack id without sign-in needs its asker's click (`clicked_ms`, Slack's time of it) within
/// [`ARM_WINDOW`]; then the request must have begun after the click (less [`CLICK_LEEWAY`]),
/// and its browser must not have been seen on the id before the click: a copy kept waiting or
/// polled beforehand is refused, whoever clicks. When more browsers touched the id before the
/// click than the store keeps track of, nobody can be told apart, and every one is refused.
pub fn may_open(
    claim: &GoClaim,
    record: &GoRecord,
    visit: &Visit,
    now: u64,
) -> Result<(), GoError> {
    if now >= claim.issued_ms.saturating_add(claim.lifetime_ms) {
        return Err(GoError::Expired);
    }
    if !claim.needs_arming {
        return Ok(());
    }
    let Some(clicked) = record.clicked_ms else {
        return Err(GoError::NotArmed);
    };
    if now > clicked.saturating_add(ARM_WINDOW.as_millis() as u64) {
        return Err(GoError::NotArmed);
    }
    let cutoff = clicked.saturating_sub(CLICK_LEEWAY.as_millis() as u64);
    let seen_before = record
        .sightings
        .iter()
        .any(|s| s.client == visit.client && s.began_ms < cutoff);
    if visit.began_ms < cutoff || seen_before || record.crowded {
        return Err(GoError::Early);
    }
    Ok(())
}

/// The one-time ids: issued sealed, looked at, armed, used up. One per process.
pub struct GoIds {
    state: Arc<dyn SharedState>,
    sealer: Arc<Sealer>,
    lifetime: Duration,
}

impl GoIds {
    /// Ids kept in `state`, sealed by `sealer`, living `lifetime`.
    pub fn new(state: Arc<dyn SharedState>, sealer: Arc<Sealer>, lifetime: Duration) -> Self {
        GoIds {
            state,
            sealer,
            lifetime,
        }
    }

    /// How long a new id lives.
    pub fn lifetime(&self) -> Duration {
        self.lifetime
    }

    /// The browser digest of an address and a User-Agent (the same on every replica).
    pub fn client_digest(&self, address: &str, user_agent: &str) -> u64 {
        self.sealer.digest64(&format!("{address}\n{user_agent}"))
    }

    /// Issues a fresh id for `asker` and `end_user`.
    pub async fn issue(
        &self,
        asker: &Asker,
        end_user: &EndUserId,
        needs_arming: bool,
    ) -> Result<String, StateError> {
        let id = new_id();
        let name = self.sealer.name(&id);
        let sealed = serde_json::to_string(&Sealed {
            asker: asker.clone(),
            end_user: end_user.to_string(),
            needs_arming,
            issued_ms: now_ms(),
            lifetime_ms: self.lifetime.as_millis() as u64,
        })
        .map_err(|e| StateError::Unavailable(e.to_string()))?;
        let record = self.sealer.seal(Purpose::Go, &name, &sealed);
        self.state.issue_go(&name, &record, self.lifetime).await?;
        Ok(id)
    }

    /// What `id` stands for and what happened to it, if it is usable; `visit` is noted as a
    /// sighting (while the id is not armed).
    pub async fn look(
        &self,
        id: &str,
        visit: Option<&Visit>,
    ) -> Result<(GoClaim, GoRecord), GoError> {
        if !plausible(id) {
            return Err(GoError::Unknown);
        }
        let name = self.sealer.name(id);
        let seen = visit.map(|v| Sighting {
            client: v.client,
            began_ms: v.began_ms,
        });
        let record = self.state.look_go(&name, seen, ARM_WINDOW).await?;
        let claim = self.open(&name, &record)?;
        if now_ms() >= claim.issued_ms.saturating_add(claim.lifetime_ms) {
            return Err(GoError::Expired);
        }
        Ok((claim, record))
    }

    /// Uses `id` up (exactly one caller wins), after [`GoIds::look`] and [`may_open`] said yes.
    pub async fn take(&self, id: &str) -> Result<GoClaim, GoError> {
        if !plausible(id) {
            return Err(GoError::Unknown);
        }
        let name = self.sealer.name(id);
        let record = self.state.take_go(&name).await?;
        self.open(&name, &record)
    }

    /// Makes a taken id usable again (its click failed for a passing reason).
    pub async fn release(&self, id: &str) {
        if plausible(id) {
            self.state.release_go(&self.sealer.name(id)).await;
        }
    }

    /// The Slack user `user_id` clicked the button of `id` at `clicked_ms` (Slack's time): if
    /// the id is theirs and usable, a browser that click opened may now open it. False when it
    /// is not theirs, or not usable.
    pub async fn arm(&self, id: &str, user_id: &str, clicked_ms: u64) -> bool {
        let Ok((claim, _)) = self.look(id, None).await else {
            return false;
        };
        if claim.asker.platform != Platform::Slack || claim.asker.user_id != user_id {
            return false;
        }
        self.state.arm_go(&self.sealer.name(id), clicked_ms).await
    }

    fn open(&self, name: &str, record: &GoRecord) -> Result<GoClaim, GoError> {
        let data = self
            .sealer
            .open(Purpose::Go, name, &record.sealed)
            .map_err(|_| GoError::Forged)?;
        let s: Sealed = serde_json::from_str(data).map_err(|_| GoError::Forged)?;
        let end_user = super::portal::id_of(&s.end_user).ok_or(GoError::Forged)?;
        Ok(GoClaim {
            asker: s.asker,
            end_user,
            needs_arming: s.needs_arming,
            issued_ms: s.issued_ms,
            lifetime_ms: s.lifetime_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_fresh_and_plausible() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert!(plausible(&a) && plausible(&b));
        assert!(!plausible("nope"));
        assert!(!plausible(&a.to_uppercase()));
    }

    fn slack_claim(issued_ms: u64) -> GoClaim {
        GoClaim {
            asker: Asker {
                platform: Platform::Slack,
                ..Asker::local_user()
            },
            end_user: super::super::portal::id_of("e1").unwrap(),
            needs_arming: true,
            issued_ms,
            lifetime_ms: 600_000,
        }
    }

    fn record(clicked_ms: Option<u64>, sightings: &[(u64, u64)]) -> GoRecord {
        GoRecord {
            sealed: String::new(),
            clicked_ms,
            sightings: sightings
                .iter()
                .map(|&(client, began_ms)| Sighting { client, began_ms })
                .collect(),
            crowded: false,
        }
    }

    #[test]
    fn a_slack_id_opens_only_for_a_browser_that_came_after_the_click() {
        let t = 1_000_000_000;
        let claim = slack_claim(t);
        let click = t + 60_000;
        let asker = Visit {
            client: 1,
            began_ms: click + 300,
        };
        // Not clicked yet.
        assert_eq!(
            may_open(&claim, &record(None, &[]), &asker, click + 400),
            Err(GoError::NotArmed)
        );
        // The asker's browser, there before Slack's event but after the click: yes.
        let armed = record(Some(click), &[(1, click + 300)]);
        assert_eq!(may_open(&claim, &armed, &asker, click + 500), Ok(()));
        // A request that began well before the click (kept waiting): no.
        let waiting = Visit {
            client: 2,
            began_ms: click - 10_000,
        };
        let polled = record(Some(click), &[(2, click - 10_000), (1, click + 300)]);
        assert_eq!(
            may_open(&claim, &polled, &waiting, click + 500),
            Err(GoError::Early)
        );
        // The same poller's fresh request after the click: still no. The asker's: yes.
        let fresh = Visit {
            client: 2,
            began_ms: click + 200,
        };
        assert_eq!(
            may_open(&claim, &polled, &fresh, click + 500),
            Err(GoError::Early)
        );
        assert_eq!(may_open(&claim, &polled, &asker, click + 500), Ok(()));
        // The click's window closes.
        assert_eq!(
            may_open(&claim, &armed, &asker, click + 61_000),
            Err(GoError::NotArmed)
        );
        // Too many browsers before the click: nobody can be told apart.
        let mut crowded = armed.clone();
        crowded.crowded = true;
        assert_eq!(
            may_open(&claim, &crowded, &asker, click + 500),
            Err(GoError::Early)
        );
        // Past the sealed lifetime, whatever the store says.
        assert_eq!(
            may_open(&claim, &armed, &asker, t + 600_000),
            Err(GoError::Expired)
        );
    }

    proptest! {
        #[test]
        fn plausible_never_panics(s in ".{0,64}") {
            let _ = plausible(&s);
        }

        /// Whatever the record says, a visit that began before the click never opens an id
        /// that needs arming.
        #[test]
        fn no_visit_from_before_the_click_opens(
            click in 10_000u64..1_000_000,
            before in 2_001u64..10_000,
            now_after in 0u64..60_000,
            others in proptest::collection::vec((0u64..4, 0u64..2_000_000), 0..8),
        ) {
            let claim = GoClaim { issued_ms: 0, lifetime_ms: u64::MAX / 2, ..slack_claim(0) };
            let visit = Visit { client: 9, began_ms: click - before };
            let rec = record(Some(click), &others);
            prop_assert_eq!(may_open(&claim, &rec, &visit, click + now_after), Err(GoError::Early));
        }
    }
}
