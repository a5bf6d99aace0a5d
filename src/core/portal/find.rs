//! Finding the end user by name (`[search]`), as a step of the portal use case: `/portal find
//! <words>`, an argument that is not an id or an email, or one word that the index knows as no
//! end user's id. The answer is the best matches as a choice (pressing one proceeds as
//! `/portal <id>`), the asker's own companies first, and with `scope = "owned"` only those.
//! Suggestions (Discord's autocomplete) come from the same place.

use std::collections::HashSet;

use super::{PortalService, Refusal, Reply};
use crate::core::asker::Asker;
use crate::core::planhat::EndUserSummary;
use crate::core::search::Found;

/// Matches offered as buttons in a chat answer (a screenful).
pub const FIND_CHOICES: usize = super::MAX_CHOICES;

impl From<Found> for EndUserSummary {
    fn from(f: Found) -> Self {
        EndUserSummary {
            id: f.id,
            name: f.name,
            company: f.company,
            company_id: f.company_id,
            email: f.email,
        }
    }
}

/// What a find may show to an asker: their companies, and whether only those.
pub(super) struct Mine {
    pub companies: HashSet<String>,
    pub only: bool,
}

impl PortalService {
    /// The asker's companies (from the index's owners), and whether the scope limits what they
    /// may see to those. `Err`: scoped, and their email can't be established (the refusal).
    pub(super) async fn mine(&self, asker: &Asker) -> Result<Mine, Refusal> {
        let Some(search) = &self.search else {
            return Ok(Mine {
                companies: HashSet::new(),
                only: false,
            });
        };
        let scoped = self.policy.scoped(asker);
        // Under the scope the email must be one the bot goes by (a refusal says why); unscoped
        // it only puts the asker's companies first, so any trouble just leaves them unknown.
        let email = match self.asker_email(asker).await {
            Ok(email) => Some(email),
            Err(refusal) if scoped => return Err(refusal),
            Err(_) => None,
        };
        let companies = email
            .as_deref()
            .map(|e| search.companies_of(e))
            .unwrap_or_default();
        Ok(Mine {
            companies,
            only: scoped,
        })
    }

    /// Suggestions for what the asker is typing (Discord's autocomplete): at most `limit`, never
    /// an error (a cold index, or an asker whose scope can't be established, gets none).
    pub async fn suggest(&self, asker: &Asker, typed: &str, limit: usize) -> Vec<Found> {
        let Some(search) = &self.search else {
            return Vec::new();
        };
        if self.policy.authorize(asker).is_err() || typed.trim().is_empty() {
            return Vec::new();
        }
        let Ok(mine) = self.mine(asker).await else {
            return Vec::new();
        };
        search.suggest(typed, limit, &mine.companies, mine.only)
    }

    /// `/portal find <query>`: the best matches to choose from.
    pub(super) async fn find(&self, asker: &Asker, query: &str) -> Reply {
        let Some(search) = &self.search else {
            return Reply::Refused(Refusal::NoSearch);
        };
        if !search.warm() {
            return Reply::Refused(Refusal::SearchCold);
        }
        let mine = match self.mine(asker).await {
            Ok(m) => m,
            Err(refusal) => return Reply::Refused(refusal),
        };
        let mut matches = search.suggest(query, FIND_CHOICES + 1, &mine.companies, mine.only);
        if matches.is_empty() {
            return Reply::Refused(Refusal::NoMatch);
        }
        let more = matches.len() > FIND_CHOICES;
        matches.truncate(FIND_CHOICES);
        Reply::Choose {
            query: query.trim().to_string(),
            matches: matches.into_iter().map(EndUserSummary::from).collect(),
            more,
        }
    }

    /// One word that is not an id the (warm) index knows: its matches when there are any
    /// (`None`: go on with it as an id; Planhat decides).
    pub(super) async fn find_instead(&self, asker: &Asker, word: &str) -> Option<Reply> {
        let search = self.search.as_ref()?;
        // A word with a digit is an id (Planhat's are hex): names have none.
        if word.bytes().any(|b| b.is_ascii_digit()) || !search.warm() || search.index().knows(word)
        {
            return None;
        }
        match self.find(asker, word).await {
            Reply::Refused(Refusal::NoMatch) => None,
            reply => Some(reply),
        }
    }
}
